"""Scale of one inspector process: agents, subscribers (idle and matching), ingest.

* agents (root: a network namespace): ``--agent-count`` simulated agents
  (generator processes at nice 10, one TCP connection each, heartbeats every
  5 s, their own keepalive ping every second unless the inspector pinged
  them within it, as the agent does; ``--agent-ping-always`` for agents that
  ping whatever they receive) on an inspector with the liveness timeout at 1.5 s and the transport's
  keepalive at 750 ms (the default), plus one real agent in a network namespace over its
  own veth. ``connect_all_s``: until every agent is in (admission bounds the
  handshakes); ``inspector_cpu_pct`` over a steady window; ``false_unreachable``
  healthy hosts declared unreachable from the first connection on, the connect
  storm included (``false_unreachable_connect`` of them during it; likewise
  ``false_agent_down``: healthy agents' streams judged dead); ``silence_detect_ms`` (median)
  and ``silence_detect_max_ms`` from cutting the real agent's link to its host
  being unreachable, over 7 cuts (3 with ``--quick``) at random points of the
  keepalive's period (the link restored and the agent back in between).
  ``silence_detect_stalled_ms``: one more cut, with the inspector's loop
  blocked past the keepalive's close (a GC pause, a storm), so the close is
  read while it is behind and judged afresh once it is on time
  (``silence_detect_stalled_verdict``: what the probe was declared).
  ``inspector_cpu_by_thread``: [user, system] % per thread name over the
  steady window (``python`` is the event loop's, ``event_engine`` gRPC
  core's); ``lag_worst_steady_ms`` and ``lag_worst_connect_ms`` the loop's
  worst lag in each phase; per cut, ``silence_detect_each_ms``,
  ``silence_closed_each_ms`` (when the stream's end was read) and
  ``silence_rto_each_ms`` (the connection's retransmission timeout).
  ``gc_thaw_pause_ms``: the full collection after a thaw of GC pacing
  (``doctor_common/gc_pacing.py``: once 1,000 streams ended, at most every
  600 s, or once a day), forced and timed with every agent held;
  ``gc_frozen`` the objects it thawed, ``gc_thaw_swept`` the garbage it found.

The inspector (standalone, embedded controller, no agents) runs in this
process; subscribers are opened by generator processes at nice 10
(``--subscribe``), each holding its share of the streams over channels of
100 streams each (their own TCP connections). Notifications are published
in-process through the real ``Publisher`` (log, registry, fan-out, the
Subscribe handlers writing to the streams), so the figures are the
notification path from the log append to the consumer's socket.

* idle: ``--subscribers`` subscribers of 100 other projects, one owner in its
  own process; 30 notifications for the owner, 50 ms apart. ``owner_p99_ms``
  is publish → the owner holds it; ``idle_inspector_cpu_pct`` the inspector's CPU meanwhile; ``idle_kb_per_subscriber`` the inspector's
  RSS growth per idle subscriber (``idle_kb_per_subscriber_reusing_heap``
  after the agents phase, whose freed heap they reuse: read it with
  ``--only subscribers``); ``kb_kept_by_inspector`` what is still held
  per subscriber once they all left, as the inspector left it (its own heap
  trim, doctor_common/heap_trim.py, included); ``kb_kept_after_leaving`` the
  same after the bench's own GC and malloc_trim.
* matching: ``--subscribers`` subscribers that all see every notification
  (one project owning the server); 10 notifications, back to back.
  ``deliveries_per_s`` is deliveries / (last delivery − first publish), with
  consumers accepting batches of up to 256 (``SubscribeRequest.max_batch``,
  DoctorClient's default: what is queued for a consumer goes in one message);
  ``deliveries_per_s_unbatched`` the same with one notification per message.
* ingest: 200 agent streams (``--ingest`` generators) sending batches of 20
  events, the next once the last is acknowledged, for 8 s: ``events_per_s``
  acknowledged, and per second of the inspector's CPU.

    sudo .venv/bin/python bench/scale.py              # 10,000 agents, 10,000 subscribers
    sudo .venv/bin/python bench/scale.py --quick      # 2,000 of each: 43 s here
    sudo .venv/bin/python bench/scale.py --only agents --agent-count 10000
    sudo .venv/bin/python bench/scale.py --metrics    # the metrics listener on, scraped every second throughout
    .venv/bin/python bench/scale.py --only subscribers   # no root needed (no namespace)

The generators share this machine's cores with the inspector (at lower
priority). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from doctor_common.api import common_pb2, fault_pb2, fault_pb2_grpc  # noqa: E402
from doctor_common.client import MAX_BATCH  # noqa: E402
from doctor_common.grpcutil import auth_metadata  # noqa: E402
from doctor_common.heap_trim import HeapTrim  # noqa: E402
from doctor_common.lab.cloud import free_port, wait_for  # noqa: E402

PER_CHANNEL = 100
IDLE_PROJECTS = 100
INGEST_STREAMS = 200       # agent streams sending events, in the generator processes
INGEST_BATCH = 20          # events per message
INGEST_SECONDS = 8.0
# the default, said aloud (docs/agent.md, "Liveness"); DOCTOR_BENCH_NO_GC_FREEZE=1 for the A/B without it
# the A/B of the inspector's heap trim after subscribers leave (doctor_common/heap_trim.py): =1 for without it
NO_HEAP_TRIM = bool(os.environ.get("DOCTOR_BENCH_NO_HEAP_TRIM"))
GC_FREEZE = f'gc_freeze = {"false" if os.environ.get("DOCTOR_BENCH_NO_GC_FREEZE") else "true"}\n'


# -- a generator process ---------------------------------------------------------------------------

async def subscribe(endpoint: str, token: str, count: int, expect: int, max_batch: int = 0) -> None:
    """``count`` subscriptions (accepting ``max_batch`` notifications per message); READY once every snapshot
    arrived; then, if ``expect``, the receipt time of each notification sequence by the last of its subscribers,
    and every latency (JSON), then wait for EOF."""
    import grpc

    tokens = token.split(",")  # round robin: several projects' subscribers from one process
    channels = [grpc.aio.insecure_channel(endpoint, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(max(1, -(-count // PER_CHANNEL)))]
    ready = 0
    last_seen: dict[int, int] = {}
    latencies: list[float] = []
    all_ready = asyncio.Event()
    done = asyncio.Event()
    got = [0]

    async def one(i: int) -> None:
        nonlocal ready
        stub = fault_pb2_grpc.FaultManagementStub(channels[i // PER_CHANNEL])
        call = stub.Subscribe(fault_pb2.SubscribeRequest(max_batch=max_batch),
                              metadata=auth_metadata(tokens[i % len(tokens)]))
        async for msg in call:
            kind = msg.WhichOneof("kind")
            if kind == "subscribed":
                if not msg.subscribed.more:
                    ready += 1
                    if ready == count:
                        all_ready.set()
                continue
            now = time.time_ns()
            for n in ([m.fault for m in msg.batch.messages] if kind == "batch" else [msg.fault]):
                last_seen[n.sequence] = max(last_seen.get(n.sequence, 0), now)
                latencies.append((now - n.event_time_unix_nanos) / 1e6)
                got[0] += 1
            if expect and got[0] >= expect * count:
                done.set()

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    await all_ready.wait()
    print("READY", flush=True)
    if expect:
        await done.wait()
        print(json.dumps({"last_seen": last_seen, "latencies": latencies}), flush=True)
    await asyncio.to_thread(sys.stdin.read)  # until the bench closes our stdin
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in channels:
        await c.close()


async def ingest(endpoint: str, first: int, streams: int, seconds: float, batch: int) -> None:
    """``streams`` agent streams sending batches of ``batch`` events, each batch once the previous one is acked,
    for ``seconds``; prints the events acknowledged (JSON)."""
    import grpc

    from doctor_common.api import agent_pb2, agent_pb2_grpc

    channels = [grpc.aio.insecure_channel(endpoint, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(max(1, -(-streams // PER_CHANNEL)))]
    acked = [0]
    end = time.monotonic() + seconds

    async def agent(i: int) -> None:
        call = agent_pb2_grpc.AgentGatewayStub(channels[i // PER_CHANNEL]).Connect()
        host = f"sim-{first + i}"
        await call.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(host_id=host, boot_id=f"b{first + i}",
                                                                       agent_version="bench")))
        seq = 0
        while time.monotonic() < end:
            events = []
            for _ in range(batch):
                seq += 1
                events.append(agent_pb2.Event(sequence=seq, observed_unix_nanos=time.time_ns(), state=agent_pb2.
                                              ComponentState(component=f"bench:{seq % 8}", checker="bench",
                                                             status=agent_pb2.COMPONENT_STATUS_OK,
                                                             description=f"reading {seq}")))
            await call.write(agent_pb2.AgentMessage(events=agent_pb2.EventBatch(events=events)))
            while True:  # the ack of this batch (config hints and the like pass by)
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    return
                if msg.WhichOneof("kind") == "ack" and msg.ack.sequence >= seq:
                    break
            if time.monotonic() < end:
                acked[0] += batch
        await call.done_writing()

    await asyncio.gather(*(agent(i) for i in range(streams)), return_exceptions=True)
    print(json.dumps({"acked": acked[0]}), flush=True)
    for c in channels:
        await c.close()


async def agents(endpoint: str, first: int, count: int, heartbeat_ms: int, ping_ms: int = 0,
                 ping_always: bool = False) -> None:
    """``count`` simulated agents (bench/sim_agents.py: one TCP connection each, HTTP/2 by hand, every PING
    answered): Hello, then a heartbeat every ``heartbeat_ms``. At EOF on stdin, prints how many streams ended after
    all had connected once (JSON)."""
    from bench.sim_agents import Fleet
    from doctor_common.gc_pacing import PACING

    PACING.install()  # the generator's thousands of connections are not walked by every full collection either
    host, port = endpoint.rsplit(":", 1)
    fleet = Fleet(host, int(port), first, count, heartbeat_ms, ping_ms, ping_always)
    held = asyncio.create_task(fleet.hold())
    lags: list[float] = []

    async def lag() -> None:  # how late this generator's loop runs: its simulated hosts answer pings that late
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.05)
            lags.append(time.monotonic() - t - 0.05)
    lagging = asyncio.create_task(lag())
    await asyncio.to_thread(sys.stdin.read)
    lagging.cancel()
    print(json.dumps({"ended": fleet.lost, "why": fleet.reasons, "lag_max_ms": round(max(lags, default=0) * 1000),
                      "lag_p99_ms": round(percentile(lags, 99) * 1000) if lags else 0}), flush=True)
    held.cancel()
    await asyncio.gather(held, lagging, return_exceptions=True)


def pin_this_process(cpus: set[int]) -> None:
    """Every thread of this process (the inspector's loop and gRPC core's threads) on ``cpus``; threads they
    start later inherit it."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass  # a thread that just ended


async def run_agents(n: int, procs: int, seconds: float, keepalive_ms: int = 300,
                     heartbeat_ms: int = 5000, ping_timeout_ms: int = 0, cuts: int = 5,
                     pin: bool = False, agent_ping_ms: int = 1000, agent_ping_always: bool = False) -> dict[str, Any]:
    """``n`` simulated agents (heartbeats every 5 s, liveness timeout 1.5 s, the transport's keepalive every
    ``keepalive_ms``) on one inspector; a real agent in a network namespace, over its own veth, whose link is then cut."""
    from inspector.config import load_inspector_config
    from inspector.core import Inspector
    from inspector.southbound.liveness import UNREACHABLE, UP

    d = Path(tempfile.mkdtemp(prefix="doctor-scale-agents-"))
    tag = os.urandom(2).hex()
    ns, link = f"dsa{tag}", f"dsa{tag}r"
    port, agent_port = free_port(), free_port()
    endpoint = f"127.0.0.1:{port}"
    timeout_ms = 1500
    (d / "inventory.toml").write_text('[[hosts]]\nname = "probe"\n' + "".join(f'[[hosts]]\nname = "sim-{i}"\n'
                                                                             for i in range(n)))
    (d / "inspector.toml").write_text(
        f'[inspector]\nlisten = ["{endpoint}", "169.254.250.1:{agent_port}"]\nlog_level = "warning"\n'
        # (max_handshakes: twice the default, as every 10,000-agent figure in the README was measured)
        f'heartbeat_interval_ms = {heartbeat_ms}\nliveness_timeout_ms = {timeout_ms}\nmax_handshakes = 512\n'
        f'keepalive_ms = {keepalive_ms}\n{GC_FREEZE}'
        + (f'ping_timeout_ms = {ping_timeout_ms}\n' if ping_timeout_ms else '') +
        f'[controller.embedded]\ninventory = "inventory.toml"\n[tls]\nplaintext = true  # the bench\'s own veth\n'
        f'[auth]\nallow_anonymous_agents = true\n')
    (d / "probe.toml").write_text(
        f'[agent]\nhost_id = "probe"\ninspector = ["169.254.250.1:{agent_port}"]\n'
        f'heartbeat_interval_ms = {heartbeat_ms}\nlog_level = "warning"\n'
        '[checkers.exec.commands.alive]\nargv = ["true"]\n')
    for cmd in (["netns", "add", ns], ["link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns],
                ["addr", "add", "169.254.250.1/30", "dev", link], ["link", "set", link, "up"],
                ["-n", ns, "addr", "add", "169.254.250.2/30", "dev", "eth0"], ["-n", ns, "link", "set", "eth0", "up"],
                ["-n", ns, "link", "set", "lo", "up"]):
        subprocess.run(["ip", *cmd], check=True, capture_output=True)
    insp = Inspector(load_inspector_config(d / "inspector.toml"))
    changes: list[tuple[str, str, float]] = []
    original = insp.liveness.on_change

    async def spy(rec: Any, old: str, new: str) -> None:
        changes.append((rec.host_id, new, time.monotonic()))
        await original(rec, old, new)
    insp.liveness.on_change = spy
    probe_closed: list[float] = []  # when the inspector read the end of the probe's stream
    detach = insp.liveness.detach

    async def detach_spy(rec: Any, stream: object) -> None:
        if rec.host_id == "probe":
            probe_closed.append(time.monotonic())
        await detach(rec, stream)
    insp.liveness.detach = detach_spy  # type: ignore[method-assign]
    await insp.start()
    me = psutil.Process()
    gens: list[subprocess.Popen[str]] = []
    probe: subprocess.Popen[bytes] | None = None
    out: dict[str, Any] = {"agents": n, "heartbeat_ms": heartbeat_ms, "liveness_timeout_ms": timeout_ms,
                           "agent_ping_ms": agent_ping_ms,
                           "agent_pings": "always" if agent_ping_always else "unless pinged within the interval",
                           "keepalive_ms": insp.cfg.keepalive_ms, "ping_timeout_ms": insp.cfg.ping_timeout_ms}
    cpus = sorted(os.sched_getaffinity(0))
    pinned: list[str] = []
    if pin and len(cpus) >= 2:
        # the inspector on one core, the simulated hosts on the others: hosts then answer the keepalive on their
        # own CPU as real ones do, instead of at nice 10 behind the inspector they load
        pin_this_process({cpus[0]})
        pinned = ["taskset", "-c", ",".join(map(str, cpus[1:]))]
        out["pinned"] = f"inspector on cpu {cpus[0]}, generators and the probe on {','.join(map(str, cpus[1:]))}"
    try:
        t0 = time.monotonic()
        per = n // procs
        for k in range(procs):
            count = per if k < procs - 1 else n - per * (procs - 1)
            gens.append(subprocess.Popen([*pinned, "nice", "-n", "10", sys.executable, __file__, "--agents", endpoint,
                                          str(k * per), str(count), str(heartbeat_ms), str(agent_ping_ms),
                                          "always" if agent_ping_always else "skip"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        def connected() -> int:
            return sum(1 for r in insp.liveness.hosts.values() if r.connected)
        try:
            await wait_for(lambda: connected() >= n, 120, 0.1, "every simulated agent connected")
            out["connect_all_s"] = round(time.monotonic() - t0, 1)
        except TimeoutError:
            out["connect_all_s"] = None  # the generators could not hold them all (they share the cores)
        out["agents_connected"] = connected()
        with open(d / "probe.log", "wb") as plog:
            probe = subprocess.Popen([*pinned, "ip", "netns", "exec", ns, sys.executable, "-m", "agent", "--config",
                                      str(d / "probe.toml")], stdout=plog, stderr=plog)
        try:
            await wait_for(lambda: "probe" in insp.liveness.hosts and insp.liveness.hosts["probe"].liveness == UP,
                           60, 0.05, "the probe agent")
        except TimeoutError:
            print((d / "probe.log").read_text()[-3000:], file=sys.stderr)
            raise
        # the connect storm's own verdicts, counted before the steady phase starts its count
        connect_false = sum(1 for h, new, _ in changes if new == UNREACHABLE and h != "probe")
        connect_agent_down = sum(1 for h, new, _ in changes if new == "agent_down")
        changes.clear()
        lag_connect_s, insp.lag.worst_s = insp.lag.worst_s, 0.0  # the connect storm's lag, apart from the steady one
        cpu0, w0, threads0 = me.cpu_times(), time.monotonic(), thread_cpu_s()
        await asyncio.sleep(seconds)  # the steady state: heartbeats and the transport's pings, nothing else
        cpu1, w1, threads1 = me.cpu_times(), time.monotonic(), thread_cpu_s()
        out["inspector_cpu_pct"] = round(100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (w1 - w0), 1)
        out["inspector_cpu_user_sys_pct"] = [round(100 * (cpu1.user - cpu0.user) / (w1 - w0), 1),
                                             round(100 * (cpu1.system - cpu0.system) / (w1 - w0), 1)]
        out["inspector_cpu_by_thread"] = thread_cpu_pct(threads0, threads1, w1 - w0)
        out["lag_worst_steady_ms"] = round(insp.lag.worst_s * 1000, 1)
        out["steady_s"] = seconds
        out["rss_mb"] = round(me.memory_info().rss / 2**20)
        detect_ms: list[float] = []
        closed_ms: list[int | None] = []  # cut → the stream's end read (the keepalive's part of each detection)
        rto_ms: list[int | None] = []     # the probe connection's retransmission timeout at each cut
        async def probe_back() -> None:
            """The link restored and the probe up again, then a random point of the keepalive's period (each cut
            falls at a different one); TimeoutError: its reconnects were refused or timed out."""
            subprocess.run(["ip", "link", "set", link, "up"], check=True)
            await wait_for(lambda: insp.liveness.hosts["probe"].liveness == UP, 30, 0.01, "the probe back")
            await asyncio.sleep(random.uniform(0, insp.cfg.keepalive_ms / 1000))

        def cut_link() -> float:
            cut = time.monotonic()
            subprocess.run(["ip", "link", "set", link, "down"], check=True)
            return cut

        for k in range(cuts):
            if k:
                try:
                    await probe_back()
                except TimeoutError:
                    break  # the cuts measured so far are reported
            rto_ms.append(probe_rto_ms(insp.liveness.hosts["probe"].peer))
            cut = cut_link()
            try:
                await wait_for(lambda: insp.liveness.hosts["probe"].liveness == UNREACHABLE, 30, 0.002,
                               "the probe's silence")
                detect_ms.append((time.monotonic() - cut) * 1000)
                closed_ms.append(round((probe_closed[-1] - cut) * 1000) if probe_closed and probe_closed[-1] > cut
                                 else None)
            except TimeoutError:
                break  # not within 30 s: the figures before it still stand
        if len(detect_ms) == cuts:
            # a cut the inspector misses while stalled: its loop blocked past the keepalive's close (as a GC pause
            # or a storm does), so the close is read, unanswered, while it is behind — judged afresh once on time
            try:
                await probe_back()
                cut = cut_link()
                time.sleep((insp.cfg.keepalive_ms + insp.cfg.ping_timeout_ms) / 1000 + 0.3)  # the stall itself
                await wait_for(lambda: insp.liveness.hosts["probe"].liveness != UP, 30, 0.002, "the probe judged")
                out["silence_detect_stalled_ms"] = round((time.monotonic() - cut) * 1000)
                out["silence_detect_stalled_verdict"] = insp.liveness.hosts["probe"].liveness
            except TimeoutError:
                out["silence_detect_stalled_ms"] = None
        out["silence_detect_ms"] = round(statistics.median(detect_ms)) if detect_ms else None
        out["silence_detect_max_ms"] = round(max(detect_ms)) if detect_ms else None
        out["silence_detect_each_ms"] = [round(x) for x in detect_ms]
        out["silence_closed_each_ms"] = closed_ms
        out["silence_rto_each_ms"] = rto_ms
        out["silence_cuts"] = len(detect_ms)  # fewer than asked: the probe did not come back in time
        if insp.cfg.gc_freeze:
            # what a thaw costs (gc_pacing.py): one full collection walking every object once more
            out["gc_frozen"] = gc.get_freeze_count()
            gc.unfreeze()
            t = time.perf_counter()
            out["gc_thaw_swept"] = gc.collect()  # gc_pacing freezes what survives, as after any full collection
            out["gc_thaw_pause_ms"] = round((time.perf_counter() - t) * 1000)
        # from the first connection on: the connect storm, the steady state and the cuts (the probe's are not false)
        out["false_unreachable"] = connect_false + sum(1 for h, new, _ in changes if new == UNREACHABLE and h != "probe")
        out["false_unreachable_connect"] = connect_false
        out["false_agent_down"] = connect_agent_down + sum(1 for h, new, _ in changes if new == "agent_down")
        out["false_agent_down_connect"] = connect_agent_down
        out["lag_worst_ms"] = round(max(lag_connect_s, insp.lag.worst_s) * 1000, 1)
        out["lag_worst_connect_ms"] = round(lag_connect_s * 1000, 1)
    finally:
        if probe is not None:
            probe.kill()
            await asyncio.to_thread(probe.wait)
        ended, reasons, gen_lag_max, gen_lag_p99 = 0, {}, 0, 0
        for g in gens:  # waited for in threads: the inspector's loop (this one) keeps running meanwhile
            try:  # closing its stdin ends it: its last line says how many of its streams were lost
                text, _ = await asyncio.to_thread(g.communicate, None, 30)
                lines = [x for x in text.splitlines() if x.startswith("{")]
                last = json.loads(lines[-1]) if lines else {}
                ended += last.get("ended", 0)
                gen_lag_max = max(gen_lag_max, last.get("lag_max_ms", 0))
                gen_lag_p99 = max(gen_lag_p99, last.get("lag_p99_ms", 0))
                for why, k in last.get("why", {}).items():
                    reasons[why] = reasons.get(why, 0) + k
            except (subprocess.TimeoutExpired, ValueError):
                g.kill()
                g.wait()
        out["streams_lost"] = ended
        out["generator_lag_p99_ms"], out["generator_lag_max_ms"] = gen_lag_p99, gen_lag_max  # the worst generator's
        if reasons:
            out["streams_lost_why"] = reasons
        await insp.stop(0.5)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", link], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)
    return out


# -- the bench -------------------------------------------------------------------------------------

class Generator:
    def __init__(self, endpoint: str, token: str, count: int, expect: int = 0, max_batch: int = 0) -> None:
        self.proc = subprocess.Popen(["nice", "-n", "10", sys.executable, __file__, "--subscribe", endpoint, token,
                                      str(count), str(expect), "--max-batch", str(max_batch)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    async def line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        out = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout)
        if not out:
            raise RuntimeError(f"generator {self.proc.pid} ended (exit {self.proc.poll()})")
        return out.strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def probe_rto_ms(peer: str) -> int | None:
    """The kernel's current retransmission timeout of the inspector's connection to ``peer`` (/proc/net/tcp's
    13th field, in clock ticks): how soon a cut shows as retransmissions (inspector/southbound/tcp_peer.py)."""
    from inspector.southbound.tcp_peer import TABLES, proc_keys
    keys = set(proc_keys(peer))
    for table in TABLES:
        with open(table) as f:
            for line in f:
                fields = line.split()
                if len(fields) > 12 and fields[2] in keys and fields[3] == "01":
                    return int(fields[12]) * 1000 // os.sysconf("SC_CLK_TCK")
    return None


def thread_cpu_s() -> dict[str, tuple[float, float]]:
    """This process's CPU seconds (user, system) by thread name: the event loop's thread is ``python``, gRPC
    core's are its own (``grpc_global_tim``, ``default-executo``, ...)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, tuple[float, float]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # ended meanwhile
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        u, s = out.get(name, (0.0, 0.0))
        out[name] = (u + int(fields[11]) / tick, s + int(fields[12]) / tick)
    return out


def thread_cpu_pct(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]],
                   seconds: float) -> dict[str, list[float]]:
    """[user, system] % of a core per thread name between two ``thread_cpu_s`` readings (threads that ended
    meanwhile are not counted)."""
    out = {}
    for name, (u, s) in after.items():
        u0, s0 = before.get(name, (0.0, 0.0))
        if u - u0 + s - s0 > 0:
            out[name] = [round(100 * (u - u0) / seconds, 1), round(100 * (s - s0) / seconds, 1)]
    return dict(sorted(out.items(), key=lambda kv: -sum(kv[1])))


def rss_kb() -> float:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return psutil.Process().memory_info().rss / 1024


def notification(seq_hint: int, owner: str) -> fault_pb2.FaultNotification:
    now = time.time_ns()
    f = common_pb2.Fault(fault_id=f"bench-{seq_hint}", fault_type="compute.host.sensor.warning",
                         severity=common_pb2.SEVERITY_WARNING, event_time_unix_nanos=now,
                         state=common_pb2.ALARM_STATE_FIRED)
    return fault_pb2.FaultNotification(
        notification_id=f"bench-{seq_hint}", event_time_unix_nanos=now,
        virtual_resource_info=[common_pb2.VirtualResourceInfo(
            virtual_resource_id="vm-1", virtual_resource_type="server", project_id=owner,
            virtual_resource_state="normal", physical_resource_id="compute-1", faults=[f])],
        physical_resource_info=[common_pb2.PhysicalResourceInfo(physical_resource_id="compute-1", faults=[f])])


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def scraper(port: int, times_ms: list[float], stop: asyncio.Event) -> None:
    """Scrape /metrics every second (Prometheus does every 15-60 s), timing each answer."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            t = time.perf_counter()
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                await resp.read()
            times_ms.append((time.perf_counter() - t) * 1e3)
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass


async def run(subscribers: int, procs: int, metrics: bool = False) -> dict[str, Any]:
    from inspector.config import load_inspector_config
    from inspector.core import Inspector

    d = Path(tempfile.mkdtemp(prefix="doctor-scale-"))
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    tokens = {"owner": "tok-owner", **{f"idle-{k}": f"tok-idle-{k}" for k in range(IDLE_PROJECTS)}}
    (d / "inventory.toml").write_text('[[hosts]]\nname = "compute-1"\n[[servers]]\nid = "vm-1"\nhost = "compute-1"\n'
                                      'project_id = "owner"\n' + "".join(f'[[hosts]]\nname = "sim-{i}"\n'
                                                                          for i in range(INGEST_STREAMS)))
    consumers = "".join(f'[[auth.consumers]]\nname = "{p}"\nproject = "{p}"\ntoken = "{t}"\n'
                        for p, t in tokens.items())
    (d / "inspector.toml").write_text(
        f'[inspector]\nlisten = ["{endpoint}"]\nlog_level = "warning"\n{GC_FREEZE}'
        f'[controller.embedded]\ninventory = "inventory.toml"\n[notifier]\nqueue_limit = 1000\n'
        + ('[metrics]\nlisten = "127.0.0.1:0"\n' if metrics else "")
        + f'[auth]\nallow_anonymous_agents = true\n{consumers}')
    insp = Inspector(load_inspector_config(d / "inspector.toml"))
    if NO_HEAP_TRIM:
        insp.heap_trim = HeapTrim(after=sys.maxsize)  # never trims
    await insp.start()
    me = psutil.Process()
    out: dict[str, Any] = {"subscribers": subscribers, "metrics": metrics, "heap_trim": not NO_HEAP_TRIM}
    gens: list[Generator] = []
    scrapes: list[float] = []
    stop_scraping = asyncio.Event()
    scraping = asyncio.create_task(scraper(insp.metrics.port, scrapes, stop_scraping)) if metrics else None
    try:
        # -- idle subscribers of other projects, one owner ------------------------------------------
        base = rss_kb()
        per = subscribers // procs
        for k in range(procs):
            n = per if k < procs - 1 else subscribers - per * (procs - 1)
            gens.append(Generator(endpoint, ",".join(tokens[f"idle-{j}"] for j in range(IDLE_PROJECTS)), n))
        await asyncio.gather(*(g.line(180) for g in gens))
        await wait_for(lambda: len(insp.registry) >= subscribers, 60, 0.1, "every idle subscriber registered")
        held = rss_kb()
        out["idle_kb_per_subscriber"] = round((held - base) / subscribers, 1)
        owner = Generator(endpoint, tokens["owner"], 1, expect=30)
        await owner.line(60)
        cpu0 = me.cpu_times()
        t0 = time.monotonic()
        for i in range(30):
            await insp.publisher.publish(notification(i, "owner"))
            await asyncio.sleep(0.05)
        report = json.loads(await owner.line(60))
        elapsed = time.monotonic() - t0
        cpu1 = me.cpu_times()
        out["idle_inspector_cpu_pct"] = round(100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / elapsed, 1)
        lat = report["latencies"]
        out["owner_p50_ms"] = round(statistics.median(lat), 2)
        out["owner_p99_ms"] = round(percentile(lat, 99), 2)
        owner.stop()
        for g in gens:
            g.stop()
        gens = []
        await wait_for(lambda: len(insp.registry) == 0, 60, 0.1, "every subscriber gone")
        trims = getattr(insp, "heap_trim", None)
        try:  # the inspector's own trim after they left (doctor_common/heap_trim.py), if it has one
            await wait_for(lambda: trims is not None and trims.trims > 0, 5, 0.1, "the inspector's heap trim")
        except TimeoutError:
            pass
        out["kb_kept_by_inspector"] = round(max(0.0, me.memory_info().rss / 1024 - base) / subscribers, 1)
        out["kb_kept_after_leaving"] = round(max(0.0, rss_kb() - base) / subscribers, 1)

        # -- every subscriber matches: consumers accepting batches (DoctorClient's default), then not ----
        expect = 10
        for suffix, max_batch in (("", MAX_BATCH), ("_unbatched", 0)):
            for k in range(procs):
                n = per if k < procs - 1 else subscribers - per * (procs - 1)
                gens.append(Generator(endpoint, tokens["owner"], n, expect=expect, max_batch=max_batch))
            await asyncio.gather(*(g.line(180) for g in gens))
            await wait_for(lambda: len(insp.registry) >= subscribers, 60, 0.1, "every matching subscriber registered")
            cpu0 = me.cpu_times()
            first = time.time_ns()
            for i in range(expect):
                await insp.publisher.publish(notification(100 + i, "owner"))
            await wait_for(lambda: all(s.depth == 0 for s in insp.registry), 300, 0.005, "every queue written out")
            cpu1 = me.cpu_times()
            reports = [json.loads(await g.line(300)) for g in gens]
            last = max(max(r["last_seen"].values()) for r in reports)
            out["deliveries_per_s" + suffix] = round(subscribers * expect / ((last - first) / 1e9))
            out["matching_last_delivery_ms" + suffix] = round((last - first) / 1e6, 1)
            cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
            out["deliveries_per_inspector_cpu_s" + suffix] = round(subscribers * expect / cpu)
            for g in gens:
                g.stop()
            gens = []
            await wait_for(lambda: len(insp.registry) == 0, 60, 0.1, "every subscriber gone")

        # -- ingest: agents sending batches of events ----------------------------------------------
        per_proc = INGEST_STREAMS // procs
        cpu0 = me.cpu_times()
        t0 = time.monotonic()
        ingesters = [subprocess.Popen(["nice", "-n", "10", sys.executable, __file__, "--ingest", endpoint,
                                       str(k * per_proc), str(per_proc), str(INGEST_SECONDS), str(INGEST_BATCH)],
                                      stdout=subprocess.PIPE, text=True) for k in range(procs)]
        outs = [await asyncio.to_thread(g.communicate, None, INGEST_SECONDS + 60) for g in ingesters]
        elapsed = time.monotonic() - t0
        cpu1 = me.cpu_times()
        acked = sum(json.loads(o[0].strip().splitlines()[-1])["acked"] for o in outs if o[0].strip())
        out["events_per_s"] = round(acked / INGEST_SECONDS)
        out["events_per_inspector_cpu_s"] = round(acked / ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)))
        out["ingest"] = f"{procs * per_proc} streams, batches of {INGEST_BATCH}, {INGEST_SECONDS:.0f} s"
        if scraping is not None:
            stop_scraping.set()
            await scraping
            out["scrapes"] = len(scrapes)
            out["scrape_p50_ms"] = round(statistics.median(scrapes), 2)
            out["scrape_max_ms"] = round(max(scrapes), 2)
    finally:
        if scraping is not None:
            scraping.cancel()
            await asyncio.gather(scraping, return_exceptions=True)
        for g in gens:
            g.stop()
        await insp.stop(0.5)
        shutil.rmtree(d, ignore_errors=True)
    return out


async def main() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a timeout's SIGTERM still cleans up (netns, procs)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 subscribers")
    ap.add_argument("--subscribers", type=int, default=0)
    ap.add_argument("--procs", type=int, default=4, help="generator processes")
    ap.add_argument("--metrics", action="store_true", help="metrics listener on, scraped every second")
    ap.add_argument("--subscribe", nargs=4, metavar=("ENDPOINT", "TOKEN", "COUNT", "EXPECT"), help=argparse.SUPPRESS)
    ap.add_argument("--ingest", nargs=5, metavar=("ENDPOINT", "FIRST", "STREAMS", "SECONDS", "BATCH"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--agents", nargs=6, metavar=("ENDPOINT", "FIRST", "COUNT", "HEARTBEAT_MS", "PING_MS", "PINGS"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--agent-ping-ms", type=int, default=1000,
                    help="the simulated agents' own keepalive (the agent's default keepalive_ms; 0: none)")
    ap.add_argument("--agent-ping-always", action="store_true",
                    help="agents ping even when the inspector pinged them within the interval (agents before 2026-12)")
    ap.add_argument("--max-batch", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--agent-count", type=int, default=0, help="simulated agents (default 10,000; --quick 2,000)")
    ap.add_argument("--only", choices=("agents", "subscribers"), help="run one phase")
    ap.add_argument("--keepalive-ms", type=int, default=750, help="the inspector's transport keepalive (agents phase; "
                                                                  "750: the default for its 1.5 s timeout)")
    ap.add_argument("--heartbeat-ms", type=int, default=5000, help="the agents' heartbeat interval (agents phase)")
    ap.add_argument("--ping-timeout-ms", type=int, default=0,
                    help="the inspector's ping_timeout_ms (agents phase; default: timeout − keepalive)")
    ap.add_argument("--pin", action="store_true",
                    help="agents phase: the inspector on the first CPU, the generators on the others")
    args = ap.parse_args()
    if args.agents:
        endpoint, first, count, heartbeat_ms, ping_ms, pings = args.agents
        await agents(endpoint, int(first), int(count), int(heartbeat_ms), int(ping_ms), pings == "always")
        return
    if args.ingest:
        endpoint, first, streams, seconds, batch = args.ingest
        await ingest(endpoint, int(first), int(streams), float(seconds), int(batch))
        return
    if args.subscribe:
        endpoint, token, count, expect = args.subscribe
        await subscribe(endpoint, token, int(count), int(expect), args.max_batch)
        return
    a: dict[str, Any] = {}
    if args.only != "subscribers":
        if os.geteuid() != 0:
            raise SystemExit("the agents phase needs root (a network namespace for the probe agent): run as root, "
                             "or --only subscribers")
        a = await run_agents(args.agent_count or (2000 if args.quick else 10_000), args.procs,
                             5.0 if args.quick else 15.0, args.keepalive_ms, args.heartbeat_ms, args.ping_timeout_ms,
                             3 if args.quick else 7, args.pin, args.agent_ping_ms, args.agent_ping_always)
        print(f"{a['agents']} agents (heartbeats every {a['heartbeat_ms']} ms, transport keepalive every "
              f"{a['keepalive_ms']} ms): {a['agents_connected']} connected (all in {a['connect_all_s']} s); "
              f"inspector {a['inspector_cpu_pct']} % "
              f"of a core over {a['steady_s']} s, {a['rss_mb']} MB; {a['false_unreachable']} declared unreachable "
              f"falsely, {a['streams_lost']} streams lost; a cut link found in {a['silence_detect_ms']} ms "
              f"(median of {a['silence_cuts']} cuts, max {a['silence_detect_max_ms']} ms; timeout "
              f"{a['liveness_timeout_ms']} ms, pings unanswered for {a['ping_timeout_ms']} ms end a stream)", flush=True)
    if args.only == "agents":
        print(json.dumps({"bench": "scale", "cpus": os.cpu_count(),
                          "shared": f"{args.procs} agent generator processes at nice 10", **a}))
        return
    subscribers = args.subscribers or (2000 if args.quick else 10_000)
    r = await run(subscribers, args.procs, args.metrics)
    if a:  # the agents phase left heap behind that the subscribers reuse: their memory reads low (8.5 KB for 25)
        r["idle_kb_per_subscriber_reusing_heap"] = r.pop("idle_kb_per_subscriber")
        r["idle_kb_note"] = "after the agents phase: measure memory with --only subscribers"
    print(f"{r['subscribers']} idle subscribers: owner's copy p50 {r['owner_p50_ms']} ms, p99 {r['owner_p99_ms']} ms; "
          f"inspector {r['idle_inspector_cpu_pct']} % of a core; "
          f"{r.get('idle_kb_per_subscriber', str(r.get('idle_kb_per_subscriber_reusing_heap')) + ' (heap reused)')} KB each, "
          f"{r['kb_kept_by_inspector']} KB each kept after they left ({r['kb_kept_after_leaving']} KB after a GC and "
          f"malloc_trim)")
    for suffix, how in (("", f"accepting batches of {MAX_BATCH}"), ("_unbatched", "one notification per message")):
        print(f"{r['subscribers']} matching subscribers, {how}: {r['deliveries_per_s' + suffix]} deliveries/s "
              f"(10 notifications, last delivered {r['matching_last_delivery_ms' + suffix]} ms after the first "
              f"publish; {r['deliveries_per_inspector_cpu_s' + suffix]} per second of the inspector's CPU)")
    print(f"ingest ({r['ingest']}): {r['events_per_s']} events/s acknowledged "
          f"({r['events_per_inspector_cpu_s']} per second of the inspector's CPU)")
    if args.metrics:
        print(f"metrics: {r['scrapes']} scrapes, p50 {r['scrape_p50_ms']} ms, max {r['scrape_max_ms']} ms")
    print(json.dumps({"bench": "scale", "cpus": os.cpu_count(),
                      "shared": f"{args.procs} generator processes (agents, subscribers, ingest) at nice 10",
                      **{k: v for k, v in a.items() if k != "agents"}, "agents": a.get("agents", 0), **r}))


if __name__ == "__main__":
    if "--agents" in sys.argv:
        # a generator of simulated hosts runs on uvloop: the standard loop's per-callback cost made 10,000 of them
        # answer the inspector's pings seconds late on these cores (generator_lag_*); the inspector stays on asyncio
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
