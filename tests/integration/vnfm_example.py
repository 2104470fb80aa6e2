"""examples/vnfm.py as a test drives it: a real subprocess, its output and its state file."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

from doctor_common.api import fault_pb2
from doctor_common.lab.cloud import Lab, wait_for

VNFM = Path(__file__).resolve().parents[2] / "examples" / "vnfm.py"
NOTICE = re.compile(r"notice #(\d+)( \(replayed\))?:")


class Vnfm:
    """The example VNFM as a subprocess: its stdout (a file, read as it grows) and its state file."""

    def __init__(self, lab: Lab, project: str, active: str, standby: str, workdir: Path, *extra: str,
                 endpoints: list[str] | None = None) -> None:
        self.lab, self.extra = lab, extra
        self.token = workdir / f"{project}.token"
        self.token.write_text(lab.tokens[project])
        self.token.chmod(0o600)
        self.state_file = workdir / f"vnfm-{project}.json"
        self.out = workdir / f"vnfm-{project}.out"
        listed = [a for e in endpoints or [lab.endpoint] for a in ("--endpoint", e)]
        self.args = [*listed, "--token-file", str(self.token), "--active", active,
                     "--standby", standby, "--state-file", str(self.state_file), *extra]
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0

    async def start(self) -> "Vnfm":
        self.runs += 1
        with open(self.out, "a") as out:
            out.write(f"=== run {self.runs}\n")
            out.flush()
            self.proc = await asyncio.create_subprocess_exec(sys.executable, str(VNFM), *self.args,
                                                             stdout=out, stderr=out)
        await wait_for(lambda: "subscribed (" in self.run_text(), 15, 0.01, "the VNFM's subscription")
        return self

    def text(self) -> str:
        return self.out.read_text() if self.out.exists() else ""

    def run_text(self, run: int = 0) -> str:
        """The output of run ``run`` (default: the latest)."""
        return self.text().split(f"=== run {run or self.runs}\n", 1)[-1].split("=== run", 1)[0]

    def notices(self, run: int | None = None) -> list[tuple[int, bool]]:
        """(sequence, replayed) of every notice it printed (in run ``run``, or across all runs)."""
        text = self.text() if run is None else self.run_text(run)
        return [(int(m[1]), bool(m[2])) for m in NOTICE.finditer(text)]

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                await self.kill()


async def run_once(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, str(VNFM), *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def server_filter(*servers: str) -> fault_pb2.SubscribeFilter:
    return fault_pb2.SubscribeFilter(virtual_resource_type=["server"], virtual_resource_id=list(servers))


def sequences(consumer: Any) -> list[int]:
    return [n.sequence for n in consumer.faults]
