"""A virtual BMC on pyghmi's own IPMI server, for the demo, tests and benches.

One process per simulated host (``Bmc.listen()`` never returns). It speaks
real RMCP+ on a loopback UDP port; chassis power commands change its power
state. pyghmi's client proposes cipher suite 17 first, which pyghmi's server
would accept with SHA-1 data and crash the client (notes/limits.md): this
BMC refuses every suite but 3, so the client falls back.

The power state is also mirrored to ``--state-file`` so a test can read what
the BMC did without an IPMI session of its own.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from pyghmi.ipmi import bmc as ipmi_bmc
from pyghmi.ipmi.private import serversession
from pyghmi.ipmi.private import session as ipmisession

_AUTH_ALGO_OFFSET = 12  # open-session request: 4 bytes header, 4 session id, then the auth payload
_RMCP_NO_MATCHING_SUITE = 0x11


class _Suite3Session(serversession.ServerSession):
    def create_open_session_response(self, request):  # type: ignore[no-untyped-def]
        if len(request) > _AUTH_ALGO_OFFSET and request[_AUTH_ALGO_OFFSET] != 1:
            # not HMAC-SHA1: say so, and the client retries with suite 3
            return bytearray([request[0], _RMCP_NO_MATCHING_SUITE, 0, 0]) + request[4:8]
        return super().create_open_session_response(request)


class VirtualBmc(ipmi_bmc.Bmc):
    def __init__(self, authdata: dict[str, str], port: int, address: str, state_file: Path | None, power: str) -> None:
        super().__init__(authdata, port=port, address=address)
        self.power = power
        self.state_file = state_file
        self.power_off_count = 0
        self._write()

    def _write(self) -> None:
        if self.state_file:
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(f"{self.power} {self.power_off_count}\n")
            os.replace(tmp, self.state_file)

    def get_power_state(self) -> str:
        return self.power

    def power_off(self) -> int:
        if self.power == "on":
            self.power_off_count += 1
        self.power = "off"
        self._write()
        return 0

    def power_shutdown(self) -> int:
        return self.power_off()

    def power_on(self) -> int:
        self.power = "on"
        self._write()
        return 0

    def power_cycle(self) -> int:
        self.power_off()
        return self.power_on()

    def power_reset(self) -> int:
        return self.power_on()

    def is_active(self) -> bool:
        return self.power == "on"


def read_state(state_file: Path) -> tuple[str, int]:
    """(power, number of on→off transitions) as last written by the BMC."""
    power, count = state_file.read_text().split()
    return power, int(count)


def serve(port: int, address: str, username: str, password: str, state_file: Path | None, power: str) -> None:
    serversession.ServerSession = _Suite3Session  # type: ignore[misc]
    # pyghmi's server creates sessions through this module attribute
    bmc = VirtualBmc({username: password}, port, address, state_file, power)
    sys.stdout.write(f"vbmc listening on {address}:{port}\n")
    sys.stdout.flush()
    while True:
        ipmisession.Session.wait_for_rsp(30)
        assert bmc.power in ("on", "off")


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="doctor-vbmc", description="A virtual BMC on pyghmi's IPMI server.")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--username", default="admin")
    p.add_argument("--password-file", type=Path, help="file holding the password (never on a command line)")
    p.add_argument("--state-file", type=Path)
    p.add_argument("--power", choices=("on", "off"), default="on")
    args = p.parse_args(argv)
    password = args.password_file.read_text().strip() if args.password_file else os.environ.get("VBMC_PASSWORD", "")
    if not password:
        p.error("give --password-file or VBMC_PASSWORD")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    threading.current_thread().name = "vbmc"
    serve(args.port, args.address, args.username, password, args.state_file, args.power)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
