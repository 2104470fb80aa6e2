"""A virtual BMC on pyghmi's own IPMI server, for the demo, tests and benches.

One process per simulated host (``Bmc.listen()`` never returns). It speaks
real RMCP+ on a loopback UDP port; chassis power commands change its power
state. pyghmi's client proposes cipher suite 17 first, which pyghmi's server
would accept with SHA-1 data and crash the client (notes/limits.md): this
BMC refuses every suite but 3, so the client falls back.

The power state is also mirrored to ``--state-file`` so a test can read what
the BMC did without an IPMI session of its own.

Sensors and the System Event Log come from ``--sensors-file``, a JSON file
the BMC re-reads whenever it changes (write it with :func:`write_sensors`,
which replaces it atomically)::

    {"sensors": [
        {"name": "CPU1 Temp", "type": "temperature", "value": 45, "unc": 80, "uc": 90},
        {"name": "FAN1", "type": "fan", "value": 5400, "m": 100, "lc": 1000},
        {"name": "PSU1", "type": "power_supply", "states": [0]},
        {"name": "PSU2", "type": "power_supply", "absent": true}],
     "sel": [{"sensor": "DIMM A1", "offset": 0}, {"sensor": "DIMM A1", "offset": 0, "deassert": true}]}

A sensor with ``value`` is a threshold sensor (full SDR record; thresholds
``unc``/``uc``/``unr`` above, ``lnc``/``lc``/``lnr`` below, the BMC computes
which are crossed, ``m`` scales the one-byte raw reading); one with
``states`` is a discrete sensor (compact record, sensor-specific offsets of
IPMI table 42-3, e.g. power supply 0 present / 1 failure / 2 predictive
failure, memory 0 correctable ECC / 1 uncorrectable ECC, processor 0 IERR /
7 present). ``absent`` answers "not present" (pyghmi skips the sensor),
``unavailable`` sets the reading-unavailable bit; ``"sel_supported": false``
makes every SEL command answer "invalid command". SEL entries name a sensor
and an event offset; record ids are their position + 1. A SEL that is no
longer an extension of the previous one counts as erased (Get SEL Info's
erase time changes), as after ``ipmitool sel clear``.

Commands served besides power: Get Device ID, Get SDR Repository Info,
Reserve SDR Repository, Get SDR, Get Sensor Reading, Get SEL Info, Reserve
SEL, Get SEL Entry, Clear SEL, Get SEL Time: what pyghmi's
``get_sensor_data()`` and ``get_event_log()`` use.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from pyghmi.ipmi import bmc as ipmi_bmc
from pyghmi.ipmi.private import serversession
from pyghmi.ipmi.private import session as ipmisession

from doctor_common import __version__

_AUTH_ALGO_OFFSET = 12  # open-session request: 4 bytes header, 4 session id, then the auth payload
_RMCP_NO_MATCHING_SUITE = 0x11
_NOT_PRESENT = 0xCB      # completion code: requested sensor, data or record not present
_INVALID_FIELD = 0xCC

# sensor type name -> (IPMI sensor type code, entity id, unit code of SDR table 43-15)
SENSOR_TYPES: dict[str, tuple[int, int, int]] = {
    "temperature": (0x01, 7, 1), "voltage": (0x02, 7, 4), "current": (0x03, 7, 5), "fan": (0x04, 29, 18),
    "processor": (0x07, 3, 0), "power_supply": (0x08, 10, 0), "power_unit": (0x09, 19, 0),
    "memory": (0x0C, 32, 0), "watts": (0x0B, 10, 6),
}
# threshold name -> bit of the Get Sensor Reading status byte; SEL offset when crossed
_THRESHOLDS = (("lnc", 0, 0), ("lc", 1, 2), ("lnr", 2, 4), ("unc", 3, 7), ("uc", 4, 9), ("unr", 5, 11))
_THRESHOLD_ORDER = ("unr", "uc", "unc", "lnr", "lc", "lnc")  # SDR bytes 37-42


def write_sensors(path: Path, sensors: list[dict[str, Any]], sel: list[dict[str, Any]] | None = None,
                  **extra: Any) -> None:
    """Replace the sensors file atomically (the BMC never reads half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"sensors": sensors, "sel": sel or [], **extra}))
    os.replace(tmp, path)


class _Sensor:
    def __init__(self, spec: dict[str, Any], number: int) -> None:
        self.name = str(spec["name"])[:16]
        kind = spec.get("type", "temperature")
        self.type_code, self.entity, self.unit = SENSOR_TYPES[kind] if isinstance(kind, str) else (int(kind), 7, 0)
        self.number = int(spec.get("number", number))
        self.threshold = "value" in spec
        self.m = int(spec.get("m", 1))
        self.spec = spec

    def raw(self, value: float) -> int:
        return max(0, min(255, round(value / self.m)))

    def sdr(self, record_id: int) -> bytes:
        name = self.name.encode("ascii", "replace")
        key = [0x20, 0x00, self.number, self.entity, 1, 0x7F]
        if self.threshold:
            present = [t for t in _THRESHOLD_ORDER if t in self.spec]
            mask = sum(1 << bit for t, bit, _ in _THRESHOLDS if t in present)
            body = bytes(key + [0x44, self.type_code, 0x01, 0, 0, 0, 0, mask, mask,
                                0x00, self.unit, 0, 0,                       # units, linearization
                                self.m & 0xFF, (self.m >> 8 & 0x3) << 6, 0, 0, 0, 0,  # M, B, exponents
                                0, 0, 0, 0, 0xFF, 0]
                         + [self.raw(self.spec[t]) if t in self.spec else 0 for t in _THRESHOLD_ORDER]
                         + [0, 0, 0, 0, 0, 0xC0 | len(name)]) + name
            rectype = 0x01
        else:
            body = bytes(key + [0x40, self.type_code, 0x6F, 0xFF, 0x7F, 0xFF, 0x7F, 0xFF, 0x7F,
                                0xC0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xC0 | len(name)]) + name
            rectype = 0x02
        return struct.pack("<HBBB", record_id, 0x51, rectype, len(body)) + body

    def reading(self) -> tuple[int, list[int]]:
        """(completion code, Get Sensor Reading data)."""
        if self.spec.get("absent"):
            return _NOT_PRESENT, []
        flags = 0x40 | (0x20 if self.spec.get("unavailable") else 0)
        if self.threshold:
            value = float(self.spec["value"])
            status = 0
            for name, bit, _ in _THRESHOLDS:
                if name in self.spec and (value >= self.spec[name] if name[0] == "u" else value <= self.spec[name]):
                    status |= 1 << bit
            return 0, [self.raw(value), flags, status, 0xC0]
        states = sum(1 << int(s) for s in self.spec.get("states", ()))
        return 0, [0, flags, states & 0xFF, 0x80 | (states >> 8 & 0x7F)]

    def sel_event(self, offset: int, deassert: bool) -> tuple[int, int, int, int]:
        """(sensor type, event dir|type, event data 1-3 packed) for a SEL record."""
        if self.threshold:
            crossed = next((t for t, _, o in _THRESHOLDS if o == offset), "uc")
            data = (0x50 | offset, self.raw(float(self.spec["value"])), self.raw(self.spec.get(crossed, 0)))
            evtype = 0x01
        else:
            data, evtype = (offset & 0x0F, 0xFF, 0xFF), 0x6F
        return self.type_code, (0x80 if deassert else 0) | evtype, data[0], data[1] << 8 | data[2]


class _Suite3Session(serversession.ServerSession):
    def create_open_session_response(self, request):  # type: ignore[no-untyped-def]
        if len(request) > _AUTH_ALGO_OFFSET and request[_AUTH_ALGO_OFFSET] != 1:
            # not HMAC-SHA1: say so, and the client retries with suite 3
            return bytearray([request[0], _RMCP_NO_MATCHING_SUITE, 0, 0]) + request[4:8]
        return super().create_open_session_response(request)


class VirtualBmc(ipmi_bmc.Bmc):
    def __init__(self, authdata: dict[str, str], port: int, address: str, state_file: Path | None, power: str,
                 sensors_file: Path | None = None) -> None:
        super().__init__(authdata, port=port, address=address)
        self.additionaldevices = 0x0F  # sensor device, SDR repository, SEL, FRU inventory
        self.power = power
        self.state_file = state_file
        self.power_off_count = 0
        self.sensors_file = sensors_file
        self._file_key: tuple[int, int, int] | None = None
        self.sensors: list[_Sensor] = []
        self.sdrs: list[bytes] = []
        self.sdr_stamp = 0
        self.sel: list[bytes] = []
        self._sel_keys: list[str] = []
        self.sel_added = self.sel_erased = 0
        self.sel_supported = True
        self._write()
        self._reload()

    def _write(self) -> None:
        if self.state_file:
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(f"{self.power} {self.power_off_count}\n")
            os.replace(tmp, self.state_file)

    # -- sensors and SEL from the sensors file -------------------------------------------------

    def _tick(self, last: int) -> int:
        # a virtual BMC's clock only has to move: Get SEL Info must change on every change
        return max(int(time.time()), last + 1)

    def _reload(self) -> None:
        if self.sensors_file is None:
            return
        try:
            st = self.sensors_file.stat()
        except FileNotFoundError:
            return
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._file_key:
            return
        try:
            data = json.loads(self.sensors_file.read_text())
            sensors = [_Sensor(spec, i + 1) for i, spec in enumerate(data.get("sensors", []))]
            sel_specs = list(data.get("sel", []))
            sel_supported = data.get("sel_supported", True) is not False
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"vbmc: ignoring bad {self.sensors_file}: {exc}", file=sys.stderr, flush=True)
            return
        self._file_key = key
        self.sel_supported = sel_supported
        self.sensors = sensors
        self.sdrs = [s.sdr(i + 1) for i, s in enumerate(sensors)]
        self.sdr_stamp = zlib.crc32(b"".join(self.sdrs))  # pyghmi caches SDRs per (device, this stamp)
        keys = [json.dumps(e, sort_keys=True) for e in sel_specs]
        if keys[:len(self._sel_keys)] != self._sel_keys:
            self.sel, self._sel_keys = [], []
            self.sel_erased = self._tick(self.sel_erased)
        for spec, k in zip(sel_specs[len(self._sel_keys):], keys[len(self._sel_keys):]):
            self.sel.append(self._sel_record(len(self.sel) + 1, spec))
            self._sel_keys.append(k)
            self.sel_added = self._tick(self.sel_added)

    def _sel_record(self, record_id: int, spec: dict[str, Any]) -> bytes:
        sensor = next((s for s in self.sensors if s.name == spec.get("sensor")), None)
        if sensor is not None:
            stype, evtype, d1, d23 = sensor.sel_event(int(spec.get("offset", 0)), bool(spec.get("deassert")))
            number = sensor.number
        else:
            number = int(spec.get("sensor_number", 0))
            stype, evtype, d1, d23 = int(spec.get("sensor_type", 0)), 0x6F, int(spec.get("offset", 0)), 0xFFFF
        stamp = int(spec.get("timestamp", time.time()))
        return struct.pack("<HBIHBBBBBBB", record_id, 0x02, stamp, 0x0020, 0x04, stype, number, evtype,
                           d1, d23 >> 8, d23 & 0xFF)

    def _clear_sel(self) -> None:
        self.sel, self._sel_keys = [], []
        self.sel_erased = self._tick(self.sel_erased)
        if self.sensors_file is not None and self.sensors_file.exists():
            data = json.loads(self.sensors_file.read_text())
            write_sensors(self.sensors_file, data.get("sensors", []), [])
            st = self.sensors_file.stat()
            self._file_key = (st.st_ino, st.st_mtime_ns, st.st_size)

    @staticmethod
    def _record(records: list[bytes], data: bytes) -> tuple[int, list[int]]:
        """Get SDR / Get SEL Entry: (code, next record id + the requested bytes of the record)."""
        if len(data) < 6 or not records:
            return _NOT_PRESENT, []
        _, record_id, offset, count = struct.unpack("<HHBB", bytes(data[:6]))
        index = len(records) - 1 if record_id == 0xFFFF else max(record_id, 1) - 1
        if index >= len(records):
            return _NOT_PRESENT, []
        record = records[index]
        chunk = record[offset:] if count == 0xFF else record[offset:offset + count]
        following = index + 2 if index + 1 < len(records) else 0xFFFF
        return 0, list(struct.pack("<H", following) + chunk)

    def handle_raw_request(self, request: dict[str, Any], session: Any) -> None:
        netfn, command, data = request["netfn"], request["command"], bytes(request.get("data") or b"")
        if netfn not in (0x04, 0x0A):
            return super().handle_raw_request(request, session)
        try:
            self._reload()
            code, out = self._storage(command, data) if netfn == 0x0A else self._sensor(command, data)
        except Exception as exc:  # answer, never die: the BMC serves power too
            print(f"vbmc: netfn {netfn:#x} cmd {command:#x} failed: {exc!r}", file=sys.stderr, flush=True)
            code, out = 0xFF, []
        session.send_ipmi_response(code=code, data=out)

    def _sensor(self, command: int, data: bytes) -> tuple[int, list[int]]:
        if command == 0x2D and data:  # Get Sensor Reading
            sensor = next((s for s in self.sensors if s.number == data[0]), None)
            return sensor.reading() if sensor else (_NOT_PRESENT, [])
        return 0xC1, []

    def _storage(self, command: int, data: bytes) -> tuple[int, list[int]]:
        if command == 0x20:  # Get SDR Repository Info
            return 0, list(struct.pack("<BHHIIB", 0x51, len(self.sdrs), 0xFFFF, self.sdr_stamp, 0, 0x02))
        if command in (0x22, 0x42):  # Reserve SDR Repository / Reserve SEL
            return 0, [0x01, 0x00]
        if command == 0x23:  # Get SDR
            return self._record(self.sdrs, data)
        if 0x40 <= command <= 0x48 and not self.sel_supported:
            return 0xC1, []  # a BMC without a SEL
        if command == 0x40:  # Get SEL Info
            free = max(0, 0xFFFF - 16 * len(self.sel))
            return 0, list(struct.pack("<BHHIIB", 0x51, len(self.sel), free, self.sel_added, self.sel_erased, 0x0A))
        if command == 0x43:  # Get SEL Entry
            return self._record(self.sel, data)
        if command == 0x47:  # Clear SEL: initiate erase, or ask its status
            if len(data) >= 6 and bytes(data[2:5]) == b"CLR":
                if data[5] == 0xAA:
                    self._clear_sel()
                return 0, [0x01]  # erasure completed
            return _INVALID_FIELD, []
        if command == 0x48:  # Get SEL Time
            return 0, list(struct.pack("<I", int(time.time())))
        return 0xC1, []

    # -- power ---------------------------------------------------------------------------------

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

    def lose_power(self) -> None:
        """The host loses power by itself (SIGUSR1): off, without an IPMI power-off to count."""
        self.power = "off"
        self._write()

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


def start_vbmc(port: int, password_file: Path, *, state_file: Path | None = None, sensors_file: Path | None = None,
               python: str = sys.executable, timeout_s: float = 15.0) -> subprocess.Popen[bytes]:
    """Start a virtual BMC subprocess on 127.0.0.1:``port`` and wait until it listens (caller stops it)."""
    cmd = [python, "-m", "doctor_common.lab.vbmc", "--port", str(port), "--password-file", str(password_file)]
    if state_file is not None:
        cmd += ["--state-file", str(state_file)]
    if sensors_file is not None:
        cmd += ["--sensors-file", str(sensors_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    ready = threading.Event()
    line: list[bytes] = []

    def read() -> None:
        line.append(proc.stdout.readline())  # type: ignore[union-attr]
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout_s) or b"listening" not in line[0]:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"virtual BMC on port {port} did not start: {line[:1]!r}")
    proc.stdout.close()
    return proc


def serve(port: int, address: str, username: str, password: str, state_file: Path | None, power: str,
          sensors_file: Path | None = None) -> None:
    serversession.ServerSession = _Suite3Session  # type: ignore[misc]
    # pyghmi's server creates sessions through this module attribute
    bmc = VirtualBmc({username: password}, port, address, state_file, power, sensors_file)
    signal.signal(signal.SIGUSR1, lambda *_: bmc.lose_power())
    sys.stdout.write(f"vbmc listening on {address}:{port}\n")
    sys.stdout.flush()
    while True:
        ipmisession.Session.wait_for_rsp(30)
        assert bmc.power in ("on", "off")


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="doctor-vbmc", description="A virtual BMC on pyghmi's IPMI server.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--username", default="admin")
    p.add_argument("--password-file", type=Path, help="file holding the password (never on a command line)")
    p.add_argument("--state-file", type=Path)
    p.add_argument("--power", choices=("on", "off"), default="on")
    p.add_argument("--sensors-file", type=Path,
                   help="JSON file of sensors and SEL entries, re-read when it changes (see the module docstring)")
    args = p.parse_args(argv)
    password = args.password_file.read_text().strip() if args.password_file else os.environ.get("VBMC_PASSWORD", "")
    if not password:
        p.error("give --password-file or VBMC_PASSWORD")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    threading.current_thread().name = "vbmc"
    serve(args.port, args.address, args.username, password, args.state_file, args.power, args.sensors_file)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
