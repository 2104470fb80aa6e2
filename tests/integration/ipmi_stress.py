"""Threads logging in to several BMCs at once and retransmitting every 0.5 ms, for test_fencing (in its own
process, so that a deadlock cannot hang the test session). Prints one JSON line: answers per BMC, errors,
and which threads were still stuck at the end."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

from doctor_common.ipmi_session import credentials, discard, lan_sessions


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--password-file", type=Path, required=True)
    p.add_argument("ports", type=int, nargs="+")
    args = p.parse_args()
    lan_sessions()
    from pyghmi.ipmi import command

    user, password = credentials("admin", args.password_file.read_text().strip())
    answers, errors = [0] * len(args.ports), [0] * len(args.ports)
    stop = time.monotonic() + args.seconds

    def work(i: int) -> None:
        for _ in range(1000):  # logins; bounded in count and in time
            if time.monotonic() > stop:
                return
            cmd = None
            try:
                cmd = command.Command(bmc="127.0.0.1", userid=user, password=password, port=args.ports[i])
                for _ in range(10):
                    if "error" not in cmd.raw_command(netfn=0, command=1, timeout=0.0005):
                        answers[i] += 1
            except Exception:  # noqa: BLE001 - a failed login or command under load is not what is measured
                errors[i] += 1
            finally:
                if cmd is not None:
                    discard(cmd)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(args.ports))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, stop + 10 - time.monotonic()))
    stuck = [i for i, t in enumerate(threads) if t.is_alive()]
    print(json.dumps({"answers": answers, "errors": errors, "stuck": stuck}), flush=True)


if __name__ == "__main__":
    main()
