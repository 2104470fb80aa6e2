"""A leadership candidate in its own process, so tests and benches can SIGKILL / SIGSTOP a real leader.

Child: ``python -m tests.integration.etcd.candidate --endpoints A,B --prefix P --node-id n1``
campaigns with ``Election``; as leader it makes one fenced write (``EtcdStore.put``)
and then, with ``--append-every-ms``, appends notifications to the ``EtcdLog``.
It reports on stdout as JSON lines, times on the system-wide monotonic clock:
``ready``, ``leader`` (token), ``wrote``, ``appending`` (id), ``appended`` (id,
seq), ``rejected`` (a fenced write refused), ``lost``.

Parent: ``Candidate`` starts one and collects those events.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[3]


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


async def child(args: argparse.Namespace) -> None:
    from doctor_common.api import fault_pb2
    from doctor_common.etcd_guard import EtcdError
    from inspector.ha.election import Election
    from inspector.ha.etcd_config import EtcdConfig, connect
    from inspector.ha.etcd_store import EtcdStore
    from notifier.etcd_log import EtcdLog

    cfg = EtcdConfig(endpoints=tuple(args.endpoints.split(",")), prefix=args.prefix, lease_ttl_s=args.ttl,
                     step_down_margin_s=args.margin, call_timeout_s=args.call_timeout, write_deadline_s=3.0)
    async with connect(cfg) as client:
        election = Election(client, cfg, node_id=args.node_id, endpoint=f"{args.node_id}.example:50051")
        store = EtcdStore(client, cfg.prefix, election, node_id=args.node_id, write_deadline_s=3.0)
        elog = EtcdLog(client, cfg.prefix, guard=election, retention=100_000, call_timeout_s=cfg.call_timeout_s,
                       write_deadline_s=3.0)

        async def lead() -> None:
            await store.put("leader-proof", args.node_id.encode())
            emit("wrote")
            if args.append_every_ms <= 0:
                await asyncio.Event().wait()
            for n in range(args.max_appends):
                nid = f"{args.node_id}-{os.getpid()}-{n}"
                emit("appending", id=nid)
                try:
                    seq = await elog.append(fault_pb2.FaultNotification(notification_id=nid))
                except EtcdError as exc:
                    emit("rejected", id=nid, error=type(exc).__name__)
                    raise
                emit("appended", id=nid, seq=seq)
                await asyncio.sleep(args.append_every_ms / 1000)

        async with election:
            emit("ready", pid=os.getpid())
            while True:
                term = await election.wait_leader()
                emit("leader", token=term.token, ttl=term.granted_ttl)
                for _ in range(100):  # bounded: a write that keeps failing without losing the term
                    try:
                        await term.run(lead())
                    except EtcdError:
                        pass
                    if not term.valid:
                        break
                    await asyncio.sleep(0.1)
                await term.lost.wait()
                emit("lost", token=term.token, reason=term.reason)


class Candidate:
    """The parent's handle on one candidate process."""

    def __init__(self, endpoints: list[str], prefix: str, node_id: str, *, ttl: int = 1, margin: float = 0.2,
                 call_timeout: float = 1.0, append_every_ms: int = 0) -> None:
        self.node_id = node_id
        self.argv = [sys.executable, "-m", "tests.integration.etcd.candidate", "--endpoints", ",".join(endpoints),
                     "--prefix", prefix, "--node-id", node_id, "--ttl", str(ttl), "--margin", str(margin),
                     "--call-timeout", str(call_timeout), "--append-every-ms", str(append_every_ms)]
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> "Candidate":
        self.proc = await asyncio.create_subprocess_exec(*self.argv, cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
                                                         stdout=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            async with self._changed:
                self.events.append(ev)
                self._changed.notify_all()
        async with self._changed:
            self.events.append({"event": "exited", "t": time.monotonic()})
            self._changed.notify_all()

    async def wait_event(self, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The first event (past or future) matching ``pred``; TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                while True:
                    for ev in self.events:
                        if pred(ev):
                            return ev
                    await self._changed.wait()

    def last(self, name: str) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e["event"] == name), None)

    @property
    def leading(self) -> bool:
        """Reported leadership (the last leader/lost event is a leader one) and still running."""
        for e in reversed(self.events):
            if e["event"] in ("leader", "lost", "exited"):
                return e["event"] == "leader" and self.running
        return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def kill(self) -> float:
        """SIGKILL; the monotonic time it was sent."""
        t = time.monotonic()
        if self.running:
            self.signal(signal.SIGKILL)
        if self.proc is not None:
            await asyncio.wait_for(self.proc.wait(), 10)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)
        return t

    async def stop(self) -> None:
        """SIGCONT (in case it was stopped) then SIGKILL and reap."""
        if self.running:
            self.signal(signal.SIGCONT)
        await self.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--endpoints", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--node-id", required=True)
    p.add_argument("--ttl", type=int, default=1)
    p.add_argument("--margin", type=float, default=0.2)
    p.add_argument("--call-timeout", type=float, default=1.0)
    p.add_argument("--append-every-ms", type=int, default=0)
    p.add_argument("--max-appends", type=int, default=100_000)
    args = p.parse_args()
    # die with the parent: a test that crashes must not leave candidates campaigning
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    try:
        asyncio.run(child(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
