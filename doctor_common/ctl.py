"""doctorctl: look at and operate a running nfv-doctor (status, hosts, faults, subscribe, profile, maintenance).

Given every inspector replica (--endpoint A,B or $DOCTOR_ENDPOINTS), each
command finds the leader: a follower's hint is followed, an endpoint that does
not answer is passed over, within --timeout seconds (doctor_common/failover.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from datetime import datetime, timezone

from google.protobuf import json_format

from doctor_common import __version__
from doctor_common.api import agent_pb2, diagnostics_pb2, fault_pb2
from doctor_common.api import maintenance_pb2 as mpb
from doctor_common.client import DoctorClient
from doctor_common.ctl_shell import (
    EXIT_CODES,
    OK,
    ROLLED_BACK,
    Parser,
    UsageError,
    count,
    endpoint_list,
    endpoints_from,
    read_token,
    run,
    seconds,
)
from doctor_common.faults import host_status_name, severity_from_name, severity_name
from doctor_common.tls import ClientTls, TlsFileError
from doctor_common.timeline import format_table, profile_table, stage_durations, stage_name, total_ms


def _when(ns: int) -> str:
    if not ns:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def cmd_status(c: DoctorClient, args: argparse.Namespace) -> None:
    s = await c.status(at_leader=not args.here)
    print(f"node {s.node_id}  role {s.role}  leader {s.leader_endpoint or '-'}  version {s.version}  "
          f"controller {s.controller}  protobuf {s.protobuf_implementation}  log seq {s.last_sequence}")
    _print_guard(s.guard)
    print(f"\nagents ({len(s.agents)}):")
    for a in s.agents:
        bad = [x.component for x in a.components if x.status != agent_pb2.COMPONENT_STATUS_OK]
        print(f"  {a.host_id:<16} {a.liveness:<12} {'connected' if a.connected else 'disconnected':<12} "
              f"seq {a.last_sequence:<6} last seen {_when(a.last_seen_unix_nanos)}  {'faulty: ' + ', '.join(bad) if bad else ''}")
        if args.checks:
            _print_health(a.health if a.HasField("health") else None)
    print(f"\nactive alarms ({len(s.active_alarms)}):")
    for f in s.active_alarms:
        print(f"  {f.fault_id[:12]} {f.managed_object_id:<16} {f.fault_type:<32} {severity_name(f.severity):<9} "
              f"raised {_when(f.raised_time_unix_nanos)}")
    print(f"\nsubscriptions ({len(s.subscriptions)}):")
    for sub in s.subscriptions:
        print(f"  {sub.subscription_id[:12]} {sub.principal:<16} queued {sub.queue_depth:<5} delivered {sub.delivered}")


def _print_guard(g: diagnostics_pb2.GuardStatus) -> None:
    """Whether the fleet guard holds fencing, and why; how far behind the inspector runs."""
    if not g.enabled:
        state = "OFF (every suspicion is fenced at once: [guard] enabled = false)"
    elif g.causes:
        state = f"HOLDS: {len(g.causes)} shared cause(s), {g.held} host(s) held, not fenced"
    else:
        state = "clear: a suspected host is fenced once nothing shared explains it"
    print(f"\nfleet guard: {state}")
    for c in g.causes:
        print(f"  {c.cause:<24} {c.description}: {', '.join(c.hosts)}")
    print(f"  loop lag {g.loop_lag_ms:.0f} ms (worst {g.worst_loop_lag_ms:.0f}), heartbeat read delay "
          f"{g.read_delay_ms:.0f} ms, not counted as silence {g.lost_ms:.0f} ms"
          + ("  BEHIND: nobody is declared unreachable" if g.behind else "")
          + f"; fences allowed {g.fences_allowed}, waiting for their zone's budget {g.waiting}")


def _print_health(h: agent_pb2.AgentHealth | None) -> None:
    """The agent's own report: per checker its crashes, per check its runs (``status --checks``)."""
    if h is None:
        print("      (no health report from this agent yet)")
        return
    print(f"      reported {_when(h.collected_unix_nanos)}"
          + (f"  loops not alive: {'; '.join(h.loops_not_alive)}" if h.loops_not_alive else ""))
    for c in h.checkers:
        crashed = f"  restarts {c.restarts}, last crash: {c.last_crash}" if c.restarts else ""
        if not c.checks:
            print(f"      {c.checker:<28}{crashed or '  (event-driven: no runs)'}")
        for k in c.checks:
            last = k.recent[-1] if k.recent else None
            tail = f"last {last.outcome} at {_when(last.started_unix_nanos)}" if last else "not run yet"
            detail = f" ({last.detail})" if last and last.detail else ""
            print(f"      {c.checker + '/' + k.check:<28} runs {k.runs:<6} failures {k.failures:<4} "
                  f"mean {k.mean_duration_ms:7.1f} ms  {tail}{detail}{crashed}")


async def cmd_hosts(c: DoctorClient, args: argparse.Namespace) -> None:
    r = await c.hosts()
    print(f"{'host':<16} {'status':<12} {'liveness':<12} {'servers':>7}  alarms")
    for h in r.hosts:
        print(f"{h.host_id:<16} {host_status_name(h.host_status):<12} {h.liveness:<12} {h.servers:>7}  "
              f"{', '.join(f.fault_type for f in h.active_alarms) or '-'}")


async def cmd_enable_host(c: DoctorClient, args: argparse.Namespace) -> None:
    h = await c.enable_host(args.host, force=args.force)
    print(f"{h.host_id}: {host_status_name(h.host_status)}")


def _filter(args: argparse.Namespace, cls: type) -> object:
    f = cls(virtual_resource_id=args.resource or [], fault_type=args.type or [],
            virtual_resource_type=args.resource_type or [])
    if args.min_severity:
        f.min_severity = severity_from_name(args.min_severity)
    return f


async def cmd_faults(c: DoctorClient, args: argparse.Namespace) -> None:
    r = await c.query_faults(_filter(args, fault_pb2.FaultQueryFilter))  # type: ignore[arg-type]
    if args.json:
        print(json_format.MessageToJson(r))
        return
    for p in r.physical_resource_info:
        for f in p.faults:
            print(f"host   {p.physical_resource_id:<24} {f.fault_type:<32} {severity_name(f.severity):<9} {p.physical_resource_state}")
    for v in r.virtual_resource_info:
        for f in v.faults:
            print(f"{v.virtual_resource_type:<6} {v.virtual_resource_id:<24} {f.fault_type:<32} {severity_name(f.severity):<9} "
                  f"{v.virtual_resource_state} (host {v.physical_resource_id} {host_status_name(v.host_status)})")


async def cmd_subscribe(c: DoctorClient, args: argparse.Namespace) -> None:
    count = 0
    async for msg in c.subscribe(_filter(args, fault_pb2.SubscribeFilter), args.resume_after):  # type: ignore[arg-type]
        print(json_format.MessageToJson(msg, indent=None), flush=True)
        if msg.WhichOneof("kind") in ("fault", "maintenance"):
            count += 1
            if args.count and count >= args.count:
                return


async def cmd_profile(c: DoctorClient, args: argparse.Namespace) -> None:
    r = await c.timelines(args.last)
    if not r.timelines:
        print("no fault timelines yet")
        return
    for t in r.timelines:
        steps = "  ".join(f"{stage_name(st)} +{ms:.2f}" for st, ms in stage_durations(t.timeline))
        print(f"{t.fault_id[:12]} {t.host_id:<14} {t.fault_type:<28} servers {t.servers:<4} "
              f"fenced {'yes' if t.fenced else 'NO'}  total {total_ms(t.timeline) or 0:.2f} ms\n    {steps}")
    print(f"\nper stage, median of the last {len(r.timelines)} faults:\n")
    print(format_table(profile_table(t.timeline for t in r.timelines)))


def _session_state(state: int) -> str:
    return mpb.SessionState.Name(state).removeprefix("SESSION_STATE_").lower()


def _print_progress(msg: mpb.MaintenanceProgress) -> None:
    s = msg.session
    print(f"{_when(msg.time_unix_nanos)}  session {s.session_id}  {_session_state(s.state):<22} {msg.event}", flush=True)


def _session_result(s: mpb.SessionInfo) -> int:
    """OK when the session reached what was asked (in maintenance, or completed), ROLLED_BACK when it rolled back
    or failed."""
    if s.state in (mpb.SESSION_STATE_ROLLED_BACK, mpb.SESSION_STATE_FAILED):
        print(f"session {s.session_id} {_session_state(s.state)}: {s.detail}", file=sys.stderr)
        for o in s.servers:
            print(f"  server {o.server_id} ({o.project_id}) on {o.host or 'nowhere (deleted)'}"
                  + (f": {o.error}" if o.error else ""), file=sys.stderr)
        return ROLLED_BACK
    return OK


async def _follow(stream: object, cancel_ok: bool = False) -> int:
    """Print the progress; exit status of the outcome (``cancel_ok``: ending a session still in progress rolls it
    back, which is what was asked)."""
    last: mpb.SessionInfo | None = None
    async for msg in stream:  # type: ignore[attr-defined]
        _print_progress(msg)
        last = msg.session
    if last is None or (cancel_ok and last.state == mpb.SESSION_STATE_ROLLED_BACK):
        return 0
    return _session_result(last)


async def cmd_maintenance(c: DoctorClient, args: argparse.Namespace) -> int:
    if args.action == "start":
        return await _follow(c.maintenance_start(args.hosts, args.reason, args.reply_timeout, args.empty_timeout,
                                                 dict(args.meta or [])))
    if args.action == "retire":
        return await _follow(c.retire(args.servers, args.reason, args.reply_timeout, args.empty_timeout))
    if args.action == "end":
        return await _follow(c.maintenance_end(args.hosts, force=args.force), cancel_ok=True)
    if args.action == "watch":
        return await _follow(c.maintenance_watch(args.session))
    r = await c.maintenance_query(args.hosts, args.state or "", args.zone or "")
    if args.json:
        print(json_format.MessageToJson(r))
        return 0
    print(f"{'host':<16} {'state':<12} {'zone':<8} {'session':<13} {'session state':<22} detail")
    for h in r.physical_resource_info:
        s = h.session if h.HasField("session") else None
        print(f"{h.physical_resource_id:<16} {h.physical_resource_state:<12} {h.zone_id or '-':<8} "
              f"{s.session_id if s else '-':<13} {_session_state(s.state) if s else '-':<22} "
              f"{(s.detail or s.reason) if s else ''}")
    return 0


_INSTRUCTIONS = {"migrate": mpb.INSTRUCTION_MIGRATE, "live-migrate": mpb.INSTRUCTION_LIVE_MIGRATE,
                 "leave": mpb.INSTRUCTION_LEAVE, "own-action": mpb.INSTRUCTION_OWN_ACTION, "nack": mpb.INSTRUCTION_NACK}


def _key_value(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: give KEY=VALUE")
    return key, value


def _instruction(text: str) -> tuple[str, int | tuple[int, str]]:
    server, _, how = text.partition("=")
    kind, _, target = how.partition(":")
    if not server or kind not in _INSTRUCTIONS:
        raise argparse.ArgumentTypeError(f"{text!r}: give SERVER=INSTRUCTION[:TARGET_HOST], INSTRUCTION one of "
                                         f"{', '.join(_INSTRUCTIONS)}")
    return server, (_INSTRUCTIONS[kind], target) if target else _INSTRUCTIONS[kind]


def _severity(text: str) -> str:
    try:
        severity_from_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


async def cmd_reply(c: DoctorClient, args: argparse.Namespace) -> int:
    instructions: dict[str, int | tuple[int, str]] = dict(args.server or [])
    if not instructions and not args.nack:
        raise UsageError("reply needs --server SERVER=INSTRUCTION for each of your servers, or --nack")
    ack = await c.reply(args.session, instructions, nack=args.nack, reason=args.reason or "")
    print(f"session {ack.session_id}: {_session_state(ack.state)}")
    return 0


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError("give seconds between 0 (the inspector's default) and 86400")
    return value


def _tls(args: argparse.Namespace) -> ClientTls | None:
    if not (args.ca_file or args.cert_file or args.key_file):
        return None
    if bool(args.cert_file) != bool(args.key_file):
        raise UsageError("give both --cert-file and --key-file")
    tls = ClientTls(*(Path(f) if f else None for f in (args.ca_file, args.cert_file, args.key_file)))
    try:
        tls.check("--")
    except TlsFileError as exc:
        raise UsageError(f"--{exc.key.replace('_', '-')}: {exc}") from None
    return tls


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="doctorctl", description=__doc__, epilog=EXIT_CODES,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--endpoint", action="append", type=endpoint_list, metavar="HOST:PORT[,HOST:PORT...]",
                   help="the inspector replicas (repeatable or comma-separated; else $DOCTOR_ENDPOINTS, "
                        "$DOCTOR_ENDPOINT, 127.0.0.1:50051)")
    p.add_argument("--timeout", type=seconds(0, 3600), default=10.0, metavar="SECONDS",
                   help="how long a request may take to find the replica that serves it and be answered; for a "
                        "stream, until its first message (default 10)")
    p.add_argument("--token-file", help="file holding the bearer token (or env DOCTOR_TOKEN)")
    p.add_argument("--ca-file", help="TLS: the CA that signed the inspector's certificate (docs/tls.md)")
    p.add_argument("--cert-file", help="TLS: a client certificate, when the inspector asks for one")
    p.add_argument("--key-file", help="TLS: the client certificate's key")
    sub = p.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="role, leader, agents, alarms, subscriptions (the leader's)")
    st.add_argument("--checks", action="store_true", help="also each agent's checkers: runs, failures, crashes")
    st.add_argument("--here", action="store_true", help="the first replica that answers, in its own words, not "
                                                        "the leader's report (a follower's role and leader)")
    sub.add_parser("hosts", help="hosts with their status and liveness")
    e = sub.add_parser("enable-host", help="declare a fenced host repaired (clears its alarms); refused, saying "
                                            "why, while its agent or BMC says it is not")
    e.add_argument("host")
    e.add_argument("--force", action="store_true", help="enable although its agent or BMC says it is not repaired")
    for name, helptext in (("faults", "active faults you may see"), ("subscribe", "stream notifications")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--resource", action="append", help="virtual resource id (repeatable)")
        s.add_argument("--resource-type", action="append", choices=("server", "port"))
        s.add_argument("--type", action="append", help="fault type pattern, e.g. 'compute.host.*' (repeatable)")
        s.add_argument("--min-severity", type=_severity, help="warning, minor, major, critical ...")
        if name == "faults":
            s.add_argument("--json", action="store_true")
        else:
            s.add_argument("--resume-after", type=count(0), default=0)
            s.add_argument("--count", type=count(0), default=0, help="exit after this many notifications")
    pr = sub.add_parser("profile", help="per-stage latency of the last faults (the seeds' profiler)")
    pr.add_argument("--last", type=count(1), default=10)
    m = sub.add_parser("maintenance", help="planned maintenance of hosts: start, status, watch, end")
    ma = m.add_subparsers(dest="action", required=True)
    ms = ma.add_parser("start", help="disable the hosts, ask their servers' owners, empty them; live progress "
                                     f"(exit {ROLLED_BACK} when it rolls back)")
    ms.add_argument("hosts", nargs="+")
    ms.add_argument("--reason", default="")
    ms.add_argument("--reply-timeout", type=_seconds, default=0, help="seconds owners have to answer (default: the "
                                                                 "inspector's [maintenance] reply_timeout_s)")
    ms.add_argument("--empty-timeout", type=_seconds, default=0, help="seconds to empty the hosts once answered")
    ms.add_argument("--meta", action="append", type=_key_value, help="KEY=VALUE kept with the session (repeatable)")
    mr = ma.add_parser("retire", help="VM retirement: ask the owners of these servers, move them off their hosts "
                                      f"(no host disabled; exit {ROLLED_BACK} when it rolls back)")
    mr.add_argument("servers", nargs="+")
    mr.add_argument("--reason", default="")
    mr.add_argument("--reply-timeout", type=_seconds, default=0)
    mr.add_argument("--empty-timeout", type=_seconds, default=0)
    mq = ma.add_parser("status", help="hosts with their state and maintenance session")
    mq.add_argument("hosts", nargs="*")
    mq.add_argument("--state", help="normal, maintenance, down, unknown, error")
    mq.add_argument("--zone")
    mq.add_argument("--json", action="store_true")
    mw = ma.add_parser("watch", help="a session's progress until it settles")
    mw.add_argument("session")
    me = ma.add_parser("end", help="back to normal: hosts enabled, owners told (cancels a session in progress)")
    me.add_argument("hosts", nargs="+")
    me.add_argument("--force", action="store_true", help="although a host's agent or BMC says it is not fit")
    r = sub.add_parser("reply", help="a consumer's answer to a maintenance notification")
    r.add_argument("session")
    r.add_argument("--server", action="append", type=_instruction, metavar="SERVER=INSTRUCTION[:TARGET]",
                   help=f"one per server of yours; INSTRUCTION: {', '.join(_INSTRUCTIONS)} (repeatable)")
    r.add_argument("--nack", action="store_true", help="refuse: the session rolls back")
    r.add_argument("--reason")
    return p


def cli(argv: list[str] | None = None) -> int:
    """doctorctl; returns its exit status (ctl_shell.py lists them)."""
    args = parser().parse_args(argv)
    handler = globals()[f"cmd_{args.command.replace('-', '_')}"]
    async def main() -> int:
        endpoints, token = endpoints_from(args.endpoint), read_token(args.token_file)
        async with DoctorClient(endpoints, token, deadline_s=args.timeout, tls=_tls(args)) as c:
            return await handler(c, args) or OK
    return run(main)


if __name__ == "__main__":
    sys.exit(cli())
