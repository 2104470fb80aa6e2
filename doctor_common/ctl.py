"""doctorctl: look at and operate a running nfv-doctor (status, hosts, faults, subscribe, profile, maintenance)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import grpc
from google.protobuf import json_format

from doctor_common import __version__
from doctor_common.api import agent_pb2, diagnostics_pb2, fault_pb2
from doctor_common.api import maintenance_pb2 as mpb
from doctor_common.client import DoctorClient
from doctor_common.faults import host_status_name, severity_from_name, severity_name
from doctor_common.tls import ClientTls, TlsFileError
from doctor_common.timeline import format_table, profile_table, stage_durations, stage_name, total_ms


def _when(ns: int) -> str:
    if not ns:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def cmd_status(c: DoctorClient, args: argparse.Namespace) -> None:
    s = await c.status()
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
    """0 when the session reached what was asked (in maintenance, or completed), 2 when it rolled back or failed."""
    if s.state in (mpb.SESSION_STATE_ROLLED_BACK, mpb.SESSION_STATE_FAILED):
        print(f"session {s.session_id} {_session_state(s.state)}: {s.detail}", file=sys.stderr)
        for o in s.servers:
            print(f"  server {o.server_id} ({o.project_id}) on {o.host or 'nowhere (deleted)'}"
                  + (f": {o.error}" if o.error else ""), file=sys.stderr)
        return 2
    return 0


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
        bad = [kv for kv in args.meta or [] if "=" not in kv or kv.startswith("=")]
        if bad:
            raise SystemExit(f"doctorctl: --meta {bad[0]!r}: give KEY=VALUE")
        metadata = dict(kv.split("=", 1) for kv in args.meta or [])
        return await _follow(c.maintenance_start(args.hosts, args.reason, args.reply_timeout, args.empty_timeout,
                                                 metadata))
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


async def cmd_reply(c: DoctorClient, args: argparse.Namespace) -> int:
    instructions: dict[str, int | tuple[int, str]] = {}
    for item in args.server or []:
        server, _, how = item.partition("=")
        kind, _, target = how.partition(":")
        if not server or kind not in _INSTRUCTIONS:
            raise SystemExit(f"doctorctl: --server {item!r}: give SERVER=INSTRUCTION[:TARGET_HOST], INSTRUCTION one "
                             f"of {', '.join(_INSTRUCTIONS)}")
        instructions[server] = (_INSTRUCTIONS[kind], target) if target else _INSTRUCTIONS[kind]
    if not instructions and not args.nack:
        raise SystemExit("doctorctl: reply needs --server SERVER=INSTRUCTION for each of your servers, or --nack")
    ack = await c.reply(args.session, instructions, nack=args.nack, reason=args.reason or "")
    print(f"session {ack.session_id}: {_session_state(ack.state)}")
    return 0


def _seconds(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError("give seconds between 0 (the inspector's default) and 86400")
    return value


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        return Path(args.token_file).read_text().strip()
    return os.environ.get("DOCTOR_TOKEN")


def _tls(args: argparse.Namespace) -> ClientTls | None:
    if not (args.ca_file or args.cert_file or args.key_file):
        return None
    if bool(args.cert_file) != bool(args.key_file):
        raise ValueError("give both --cert-file and --key-file")
    tls = ClientTls(*(Path(f) if f else None for f in (args.ca_file, args.cert_file, args.key_file)))
    try:
        tls.check("--")
    except TlsFileError as exc:
        raise ValueError(f"{exc.key.replace('_', '-')}: {exc}") from None
    return tls


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="doctorctl", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--endpoint", default=os.environ.get("DOCTOR_ENDPOINT", "127.0.0.1:50051"),
                   help="inspector address (env DOCTOR_ENDPOINT)")
    p.add_argument("--token-file", help="file holding the bearer token (or env DOCTOR_TOKEN)")
    p.add_argument("--ca-file", help="TLS: the CA that signed the inspector's certificate (docs/tls.md)")
    p.add_argument("--cert-file", help="TLS: a client certificate, when the inspector asks for one")
    p.add_argument("--key-file", help="TLS: the client certificate's key")
    sub = p.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="role, leader, agents, alarms, subscriptions")
    st.add_argument("--checks", action="store_true", help="also each agent's checkers: runs, failures, crashes")
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
        s.add_argument("--min-severity", help="warning, minor, major, critical ...")
        if name == "faults":
            s.add_argument("--json", action="store_true")
        else:
            s.add_argument("--resume-after", type=int, default=0)
            s.add_argument("--count", type=int, default=0, help="exit after this many notifications")
    pr = sub.add_parser("profile", help="per-stage latency of the last faults (the seeds' profiler)")
    pr.add_argument("--last", type=int, default=10)
    m = sub.add_parser("maintenance", help="planned maintenance of hosts: start, status, watch, end")
    ma = m.add_subparsers(dest="action", required=True)
    ms = ma.add_parser("start", help="disable the hosts, ask their servers' owners, empty them; live progress "
                                     "(exit 2 when it rolls back)")
    ms.add_argument("hosts", nargs="+")
    ms.add_argument("--reason", default="")
    ms.add_argument("--reply-timeout", type=_seconds, default=0, help="seconds owners have to answer (default: the "
                                                                 "inspector's [maintenance] reply_timeout_s)")
    ms.add_argument("--empty-timeout", type=_seconds, default=0, help="seconds to empty the hosts once answered")
    ms.add_argument("--meta", action="append", help="KEY=VALUE kept with the session (repeatable)")
    mr = ma.add_parser("retire", help="VM retirement: ask the owners of these servers, move them off their hosts "
                                      "(no host disabled; exit 2 when it rolls back)")
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
    r.add_argument("--server", action="append", metavar="SERVER=INSTRUCTION[:TARGET]",
                   help=f"one per server of yours; INSTRUCTION: {', '.join(_INSTRUCTIONS)} (repeatable)")
    r.add_argument("--nack", action="store_true", help="refuse: the session rolls back")
    r.add_argument("--reason")
    args = p.parse_args(argv)
    handler = globals()[f"cmd_{args.command.replace('-', '_')}"]
    try:
        tls = _tls(args)
    except ValueError as exc:
        print(f"doctorctl: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        async with DoctorClient(args.endpoint, _token(args), tls) as c:
            return await handler(c, args) or 0
    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as exc:
        print(f"doctorctl: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(cli())
