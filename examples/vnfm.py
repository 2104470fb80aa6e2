#!/usr/bin/env python3
"""A small ACT-STBY VNFM on nfv-doctor's northbound: the consumer of docs/consumer.md, written to be read.

It manages two servers of its project, one active and one standby, and
subscribes to the notices of those two only. It

- switches over when its active server is in trouble (host status UNKNOWN or
  DOWN, server in error, or a critical fault): the standby becomes active,
  and it prints the time from the fault's detection and from the notice's
  receipt to the switchover;
- reports lost redundancy when its standby is in trouble (no switchover),
  and restored redundancy when that clears;
- answers maintenance notices with ``Maintenance.Reply`` (switching first
  when its active server is to be moved);
- writes its state file (roles, servers lost, the last notice handled)
  atomically with each decision, so after a disconnect or a restart it
  resumes right after the last notice it handled: none missed, none twice.

    .venv/bin/python examples/vnfm.py --endpoint 127.0.0.1:50051 --token-file project-a.token \\
        --active vm-1-1 --standby vm-3-1 --state-file vnfm-a.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from doctor_common.api import common_pb2, fault_pb2
from doctor_common.api import maintenance_pb2 as mpb
from doctor_common.client import DoctorClient
from doctor_common.endpoint import parse_endpoint

UNKNOWN, DOWN = common_pb2.HOST_STATUS_UNKNOWN, common_pb2.HOST_STATUS_DOWN
CLEARED = common_pb2.ALARM_STATE_CLEARED
INSTRUCTIONS = {"live-migrate": [mpb.INSTRUCTION_LIVE_MIGRATE, mpb.INSTRUCTION_MIGRATE],
                "migrate": [mpb.INSTRUCTION_MIGRATE, mpb.INSTRUCTION_LIVE_MIGRATE],
                "nack": []}


class VnfmError(Exception):
    """A mistake in the command line or the state file; the message says what to fix."""


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def name(enum: object, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower() if value in enum.values() else str(value)  # type: ignore[attr-defined]


@dataclass
class State:
    """What the VNFM remembers across restarts (its state file)."""

    active: str
    standby: str
    lost: dict[str, str] = field(default_factory=dict)  # server -> why it cannot serve
    cursor: int = 0                                      # the last log sequence handled
    subscription_id: str = ""                            # resumed by name: a cursor of 0 is resumable too
    switchovers: list[dict[str, object]] = field(default_factory=list)
    replies: list[dict[str, object]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        """Atomically: a crash leaves the old file or the new one, never half of one."""
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(self), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, active: str, standby: str) -> "State":
        if not path.exists():
            return cls(active, standby)
        try:
            state = cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise VnfmError(f"state file {path}: cannot read it ({exc}); remove it to start afresh") from None
        if {state.active, state.standby} != {active, standby}:
            raise VnfmError(f"state file {path} manages {state.active} and {state.standby}, not {active} and "
                            f"{standby}: give the same servers or another --state-file")
        return state


def trouble(vr: common_pb2.VirtualResourceInfo, switch_on: str) -> str | None:
    """Why this server cannot serve, by what the notice (or snapshot) says of it; None when it can."""
    faults = [f for f in vr.faults if f.state != CLEARED]
    what = f" ({faults[0].fault_type})" if faults else ""
    if vr.host_status == DOWN:
        return f"host {vr.physical_resource_id} DOWN{what}"
    if vr.host_status == UNKNOWN and switch_on == "suspected":
        return f"host {vr.physical_resource_id} UNKNOWN{what}"
    if vr.virtual_resource_state == "error":
        return f"server in error{what}"
    critical = [f for f in faults if f.severity >= common_pb2.SEVERITY_CRITICAL and vr.host_status != UNKNOWN]
    return f"{critical[0].fault_type} (critical)" if critical else None


def detected_ns(vr: common_pb2.VirtualResourceInfo) -> int:
    """When the monitor first observed the fault behind it (0: not said)."""
    return min((f.event_time_unix_nanos for f in vr.faults if f.event_time_unix_nanos), default=0)


class Vnfm:
    def __init__(self, client: DoctorClient, state: State, path: Path, switch_on: str, maintenance: str) -> None:
        self.client = client
        self.state = state
        self.path = path
        self.switch_on = switch_on
        self.maintenance = maintenance
        self.replayed_until = 0  # notices up to this sequence are history the last snapshot already reflects
        self.resyncing = False
        self._snapshot: list[common_pb2.VirtualResourceInfo] = []

    @property
    def pair(self) -> tuple[str, str]:
        return self.state.active, self.state.standby

    def on_resync(self, reason: str) -> None:
        say(f"cannot resume after #{self.state.cursor}: {reason}; resynchronising from a new snapshot "
            "(notices in between are lost to us: the snapshot is the truth)")
        self.resyncing = True

    async def handle(self, msg: fault_pb2.SubscribeStreamMessage, received_ns: int) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "subscribed":
            self.snapshot(msg.subscribed, received_ns)
            return
        n = msg.fault if kind == "fault" else msg.maintenance
        if n.sequence <= self.state.cursor:
            say(f"notice #{n.sequence} already handled: skipped")  # DoctorClient never sends one; belt and braces
            return
        replayed = n.sequence <= self.replayed_until
        if kind == "fault":
            self.fault(msg.fault, received_ns, replayed)
        else:
            await self.maintenance_notice(msg.maintenance, received_ns)
        self.state.cursor = n.sequence
        self.state.save(self.path)

    # -- the snapshot: the truth as of its log position ------------------------------------------------

    def snapshot(self, part: fault_pb2.SubscribeResponse, received_ns: int) -> None:
        self._snapshot.extend(part.virtual_resource_info)
        if part.more:
            return  # a large snapshot comes in parts; ours (two servers) never does
        # a new subscription starts at its snapshot; a resumed one (by its id, or from a cursor) is replayed from
        # the cursor: a cursor of 0 resumes only by id, since resume_after=0 means "from now on" for a new one
        resumed = bool(self.state.subscription_id) and part.subscription_id == self.state.subscription_id
        fresh = self.resyncing or (self.state.cursor == 0 and not resumed)
        if fresh:
            self.state.cursor = part.last_sequence
        self.state.subscription_id = part.subscription_id
        self.replayed_until = part.last_sequence
        self.resyncing = False
        self.state.save(self.path)  # the cursor to resume from, should we stop before the first notice
        cursor, last = self.state.cursor, part.last_sequence
        resume = f"resumed after #{cursor}: " + (f"replaying #{cursor + 1}-#{last}" if last > cursor else "nothing missed")
        say(f"subscribed ({part.subscription_id[:12]}): snapshot at #{last}, {'starting there' if fresh else resume}; "
            f"active {self.state.active}, standby {self.state.standby}")
        for vr in self._snapshot:
            self.judge(vr, None, received_ns, "the snapshot")
        self._snapshot = []
        self.state.save(self.path)

    # -- faults ----------------------------------------------------------------------------------------

    def fault(self, n: fault_pb2.FaultNotification, received_ns: int, replayed: bool) -> None:
        for vr in n.virtual_resource_info:
            if vr.virtual_resource_id not in self.pair:
                continue
            f = vr.faults[0] if vr.faults else common_pb2.Fault()
            phase = name(fault_pb2.IncidentPhase, n.phase, "INCIDENT_PHASE_") if n.phase else "-"
            say(f"notice #{n.sequence}{' (replayed)' if replayed else ''}: {vr.virtual_resource_id} "
                f"{f.fault_type} {name(common_pb2.AlarmState, f.state, 'ALARM_STATE_')} phase {phase} host "
                f"{vr.physical_resource_id} {name(common_pb2.HostStatus, vr.host_status, 'HOST_STATUS_')} "
                f"fenced {'yes' if n.fenced else 'no'}{' fencing error: ' + n.fencing_error if n.fencing_error else ''}")
            if not replayed:  # a replayed notice is older than the snapshot that already told us where it ended
                self.judge(vr, n.sequence, received_ns, f"notice #{n.sequence}")

    def judge(self, vr: common_pb2.VirtualResourceInfo, seq: int | None, received_ns: int, source: str) -> None:
        server = vr.virtual_resource_id
        if server not in self.pair:
            return
        why = trouble(vr, self.switch_on)
        if why is None:
            if server in self.state.lost:
                del self.state.lost[server]
                say(f"{server} can serve again: {'redundancy restored' if server == self.state.standby else 'active'}")
            elif vr.faults and vr.host_status == UNKNOWN:
                say(f"{server}: its host is suspected; waiting for the fence before acting (--switch-on fenced)")
            elif [f for f in vr.faults if f.state != CLEARED]:
                say(f"{server}: {vr.faults[0].fault_type} noted, nothing to do")
            return
        if server in self.state.lost:
            return  # already known (the fenced and marked-down notices follow the suspected one)
        self.state.lost[server] = why
        if server == self.state.standby:
            say(f"REDUNDANCY LOST: standby {server} cannot serve ({why}); active {self.state.active} stays active")
            self.state.save(self.path)
            return
        self.switchover(why, detected_ns(vr), received_ns, seq, source)

    def switchover(self, why: str, detected: int, received_ns: int, seq: int | None, source: str) -> None:
        old, new = self.state.active, self.state.standby
        if new in self.state.lost:
            say(f"SERVICE DOWN: active {old} cannot serve ({why}) and standby {new} is lost too "
                f"({self.state.lost[new]}): nothing to switch to")
            self.state.save(self.path)
            return
        self.state.active, self.state.standby = new, old
        self.state.save(self.path)  # the switchover: from here on this VNFM serves from the standby
        done = time.time_ns()
        record = {"from": old, "to": new, "why": why, "source": source, "sequence": seq, "at_unix_nanos": done,
                  "ms_since_detection": round((done - detected) / 1e6, 3) if detected else None,
                  "ms_since_receipt": round((done - received_ns) / 1e6, 3)}
        self.state.switchovers.append(record)
        since = f"{record['ms_since_detection']:.1f} ms after detection, " if detected else ""
        say(f"SWITCHOVER: standby {new} is now active ({old}: {why}; from {source}); "
            f"{since}{record['ms_since_receipt']:.2f} ms after receipt")

    # -- maintenance -----------------------------------------------------------------------------------

    async def maintenance_notice(self, m: mpb.MaintenanceNotification, received_ns: int) -> None:
        mine = [v.virtual_resource_id for v in m.virtual_resource_info if v.virtual_resource_id in self.pair]
        state = name(mpb.SessionState, m.state, "SESSION_STATE_")
        where = ", ".join(f"{o.server_id} on {o.host or '-'}" for o in m.servers)
        say(f"notice #{m.sequence}: maintenance session {m.session_id} {state} for {', '.join(mine)}"
            f"{' (' + m.reason + ')' if m.reason else ''}{'; ' + where if where else ''}")
        if m.state != mpb.SESSION_STATE_OWNERS_NOTIFIED or not mine:
            return
        if m.reply_deadline_unix_nanos and time.time_ns() > m.reply_deadline_unix_nanos:
            say(f"session {m.session_id}: its reply deadline has passed; not answering")
            return
        if self.state.active in mine and self.state.standby not in mine:
            # ACT-STBY: the active server is not moved while it serves (the seeds' "switch to STBY, then reply")
            if self.state.standby in self.state.lost:
                say(f"standby {self.state.standby} is lost: active {self.state.active} is moved while it serves")
            else:
                self.switchover(f"maintenance {m.session_id}", 0, received_ns, m.sequence,
                                f"maintenance notice #{m.sequence}")
        kinds = [k for k in INSTRUCTIONS[self.maintenance] if k in m.allowed]
        nack = not kinds
        reason = "" if kinds else "this VNFM refuses maintenance (--maintenance nack)" if self.maintenance == "nack" \
            else "neither live-migrate nor migrate is allowed"
        try:
            ack = await self.reply(m.session_id, {s: kinds[0] for s in mine} if kinds else {}, nack, reason)
        except grpc.aio.AioRpcError as exc:
            say(f"session {m.session_id}: reply refused: {exc.code().name}: {exc.details()}")
            return
        answer = "NACK" if nack else name(mpb.Instruction, kinds[0], "INSTRUCTION_")
        self.state.replies.append({"session": m.session_id, "servers": mine, "answer": answer,
                                   "sequence": m.sequence})
        say(f"REPLIED to session {m.session_id}: {answer} for {', '.join(mine)} "
            f"(session now {name(mpb.SessionState, ack.state, 'SESSION_STATE_')})")

    async def reply(self, session: str, instructions: dict[str, int], nack: bool,
                    reason: str) -> mpb.MaintenanceReplyAck:
        """Reply, tried again a few times while the inspector is unreachable (a failover under way)."""
        for attempt in range(5):
            try:
                return await self.client.reply(session, instructions, nack=nack, reason=reason)  # type: ignore[arg-type]
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 4:
                    raise
                await asyncio.sleep(0.2 * 2 ** attempt)
        raise AssertionError("unreachable")


async def run(args: argparse.Namespace, token: str) -> None:
    path = Path(args.state_file)
    state = State.load(path, args.active, args.standby)
    state.save(path)  # a state file that cannot be written fails now, not at the first switchover
    flt = fault_pb2.SubscribeFilter(virtual_resource_type=["server"], virtual_resource_id=[args.active, args.standby])
    async with DoctorClient(args.endpoint, token) as client:
        vnfm = Vnfm(client, state, path, args.switch_on, args.maintenance)
        say(f"VNFM {state.active} (active) / {state.standby} (standby) at {', '.join(args.endpoint)}"
            + (f", resuming after #{state.cursor}" if state.cursor else ""))
        async for msg in client.subscribe(flt, resume_after=state.cursor, on_resync=vnfm.on_resync,
                                          subscription_id=state.subscription_id):
            await vnfm.handle(msg, time.time_ns())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vnfm", description=__doc__.split("\n\n")[0],
                                epilog="See docs/consumer.md.")
    p.add_argument("--endpoint", action="append",
                   help="an inspector replica, host:port (repeat for each replica; default: env DOCTOR_ENDPOINT or "
                        "127.0.0.1:50051)")
    p.add_argument("--token-file", required=True, help="file holding the project's bearer token")
    p.add_argument("--active", required=True, help="the server that is active now")
    p.add_argument("--standby", required=True, help="the standby server")
    p.add_argument("--state-file", default="vnfm-state.json",
                   help="where the VNFM keeps its roles and cursor (default %(default)s); once it exists it wins "
                        "over --active/--standby")
    p.add_argument("--switch-on", choices=("suspected", "fenced"), default="suspected",
                   help="switch over on the first, suspected notice (host UNKNOWN: fastest) or only once the host "
                        "is fenced (host DOWN: never two actives) (default %(default)s)")
    p.add_argument("--maintenance", choices=tuple(INSTRUCTIONS), default="live-migrate",
                   help="the answer to a maintenance notice (default %(default)s)")
    args = p.parse_args(argv)
    args.endpoint = args.endpoint or [os.environ.get("DOCTOR_ENDPOINT", "127.0.0.1:50051")]
    for e in args.endpoint:
        try:
            parse_endpoint(e)
        except ValueError as exc:
            p.error(f"--endpoint: {exc}")
    if args.active == args.standby:
        p.error("--active and --standby name the same server")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s vnfm: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("doctor.client").setLevel(logging.INFO)  # reconnects, resumes, resyncs
    try:
        token = Path(args.token_file).read_text().strip()
        if not token:
            raise VnfmError(f"--token-file {args.token_file}: the file is empty")

        async def serve() -> None:
            task = asyncio.current_task()
            assert task is not None
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
            await run(args, token)
        asyncio.run(serve())
    except OSError as exc:
        print(f"vnfm: {exc.filename or args.token_file}: {exc.strerror}", file=sys.stderr)
        return 2
    except VnfmError as exc:
        print(f"vnfm: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        print(f"vnfm: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
