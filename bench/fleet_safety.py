#!/usr/bin/env python3
"""Fleet safety: what gets powered off when the inspector loses sight of its hosts, and how fast owners hear.

Scenarios, each on six lab hosts (network namespaces, agents as processes, a
virtual BMC per host that counts the power-offs it receives):

* ``mass_silence``: every agent frozen at once (the inspector's own network
  failing). Power-offs counted while they are held, and after they return.
* ``rack``: every host behind one switch loses its data link at once.
* ``single``: one frozen agent among healthy ones: must still be fenced.
* ``notices``: one host's link cut, ``--runs`` times, 1 and 50 servers with
  the embedded controller, and 50 with the OpenStack backend against the
  local test cloud answering every call 20 ms late: the suspected notice's
  latency (owner holds it, from the inspector's receipt of the fault) and the
  fenced notice's (owner holds it, from the BMC's confirmation of the
  power-off).
* ``overload``: a standalone inspector in this process, ``--agents``
  simulated agent streams (Hello, then a heartbeat every 500 ms, the default)
  from load-generator processes at lower priority (nice 10). Counts hosts
  declared unreachable while their generator kept sending.

The load generators and this process share the machine's cores (2 here); the
agents and BMCs of the lab scenarios are processes of their own too. Needs
root (network namespaces). Prints each figure, then one JSON line.

    python bench/fleet_safety.py            # 20 runs per size, 5,000 simulated agents
    python bench/fleet_safety.py --quick    # 5 runs, 1,500 agents: under a minute
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from doctor_common.api import agent_pb2, agent_pb2_grpc, fault_pb2  # noqa: E402
from doctor_common.client import DoctorClient  # noqa: E402
from doctor_common.lab.cloud import NO_FENCING_BUDGET, Lab, free_port, wait_for  # noqa: E402
from doctor_common.timeline import Stage, as_dict, percentile  # noqa: E402

P = fault_pb2.IncidentPhase
HOSTS = [f"compute-{i}" for i in range(1, 7)]


class Inbox:
    """A consumer's subscription, its notifications kept."""

    def __init__(self, lab: Lab, principal: str) -> None:
        self.client = DoctorClient(lab.endpoint, lab.tokens[principal])
        self.faults: list[fault_pb2.FaultNotification] = []
        self.ready = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self.client.subscribe_once():
            if msg.WhichOneof("kind") == "subscribed":
                self.ready.set()
            else:
                self.faults.append(msg.fault)

    def phases(self, host: str) -> list[int]:
        return [n.phase for n in self.faults if any(v.physical_resource_id == host for v in n.virtual_resource_info)]

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.client.close()


async def with_lab(run: Any, lab: Lab | None = None, **kw: Any) -> Any:
    """Runs ``run(lab, inbox)`` on a started lab (``lab`` if given, else ``Lab(**kw)``) and closes both."""
    lab = lab or Lab(**kw)
    await lab.start()
    inbox = Inbox(lab, "tenant")
    try:
        await asyncio.wait_for(inbox.ready.wait(), 10)
        return await run(lab, inbox)
    finally:
        await inbox.close()
        await lab.close()


def power_offs(lab: Lab) -> int:
    return sum(lab.power(h)[1] for h in lab.hosts)


async def watch_power(lab: Lab, seconds: float) -> int:
    """The most power-offs seen over ``seconds`` (absence can only be observed over a period)."""
    worst, until = 0, time.monotonic() + seconds
    while time.monotonic() < until:
        worst = max(worst, power_offs(lab))
        await asyncio.sleep(0.02)
    return worst


async def mass_silence(lab: Lab, inbox: Inbox) -> dict[str, Any]:
    for h in HOSTS:
        lab.freeze_agent(h)
    try:
        held = True
        try:
            await wait_for(lambda: all(P.INCIDENT_PHASE_HELD in inbox.phases(h) for h in HOSTS), 10, what="held")
        except TimeoutError:
            held = False
        during = await watch_power(lab, 1.0)
    finally:
        for h in HOSTS:
            lab.thaw_agent(h)
    await wait_for(lambda: all(P.INCIDENT_PHASE_WITHDRAWN in inbox.phases(h) for h in HOSTS), 15, what="withdrawn")
    after = await watch_power(lab, 1.5)
    suspected = [latency(n, Stage.STAGE_RECEIVED) for n in inbox.faults if n.phase == P.INCIDENT_PHASE_SUSPECTED]
    return {"mass_silence_power_offs": max(during, after), "mass_silence_all_held": held,
            "mass_silence_suspected_notice_p50_ms": round(percentile(suspected, 50), 2)}


async def rack(lab: Lab, inbox: Inbox) -> dict[str, Any]:
    for h in HOSTS:
        lab.cut_link(h)
    await wait_for(lambda: all(P.INCIDENT_PHASE_HELD in inbox.phases(h) for h in HOSTS), 10, what="held")
    offs = await watch_power(lab, 1.0)
    for h in HOSTS:
        lab.restore_link(h)
    await wait_for(lambda: all(P.INCIDENT_PHASE_WITHDRAWN in inbox.phases(h) for h in HOSTS), 10, what="withdrawn")
    return {"rack_power_offs": max(offs, await watch_power(lab, 1.0))}


async def single(lab: Lab, inbox: Inbox) -> dict[str, Any]:
    started = time.monotonic()
    lab.freeze_agent("compute-4")
    try:
        await wait_for(lambda: P.INCIDENT_PHASE_MARKED_DOWN in inbox.phases("compute-4"), 15, what="fenced")
    finally:
        lab.thaw_agent("compute-4")
    return {"single_host_fenced": lab.power("compute-4") == ("off", 1) and power_offs(lab) == 1,
            "single_host_fenced_after_s": round(time.monotonic() - started, 2)}


def latency(n: fault_pb2.FaultNotification, since: int) -> float:
    stamps = as_dict(n.timeline)
    return (stamps[Stage.STAGE_DELIVERED] - stamps[since]) / 1e6


async def notices(runs: int, servers: int, openstack_latency_s: float | None = None) -> dict[str, list[float]]:
    """``openstack_latency_s``: the OpenStack backend against the local test cloud answering each Nova and
    Neutron call that late (the side-by-side's 20 ms), instead of the embedded controller."""
    async def run(lab: Lab, inbox: Inbox) -> dict[str, list[float]]:
        insp, host = lab.inspector, "compute-1"
        out: dict[str, list[float]] = {"suspected": [], "fenced": []}
        for _ in range(runs):
            inbox.faults.clear()
            lab.cut_link(host)
            await wait_for(lambda: P.INCIDENT_PHASE_MARKED_DOWN in inbox.phases(host), 10, 0.0005, "marked down")
            by_phase = {n.phase: n for n in inbox.faults}
            out["suspected"].append(latency(by_phase[P.INCIDENT_PHASE_SUSPECTED], Stage.STAGE_RECEIVED))
            out["fenced"].append(latency(by_phase[P.INCIDENT_PHASE_FENCED], Stage.STAGE_FENCED))
            lab.restore_link(host)
            await insp.fencer.power_on(insp.responder.bmc_for(host))
            await insp.responder.enable_host(host)
            nic = insp.liveness.hosts[host].components
            await wait_for(lambda: nic.get("nic:eth0") is not None and nic["nic:eth0"].status == 1
                           and len(insp.alarms) == 0, 10, 0.001, "re-arm")
        return out
    # the same host fenced again and again: the fencing budgets would pace it
    kw: dict[str, Any] = dict(hosts=1, servers_per_host=servers, projects=("tenant",))
    if openstack_latency_s is None:
        return await with_lab(run, extra_config=NO_FENCING_BUDGET, **kw)
    from tests.integration.test_fault_chain_openstack import OpenStackLab
    from tests.openstack_cloud import FakeCloud

    cloud = FakeCloud().start()
    try:
        lab = OpenStackLab(cloud, **kw)
        lab.extra_config += NO_FENCING_BUDGET
        cloud.latency_s = openstack_latency_s
        return await with_lab(run, lab=lab)
    finally:
        cloud.stop()


# -- overload: thousands of simulated agents ------------------------------------------------------

async def generate(endpoint: str, first: int, count: int, seconds: float, interval_s: float) -> None:
    """One load-generator process: ``count`` agent streams; prints its worst heartbeat lateness (JSON)."""
    import grpc

    worst = [0.0]
    channels = [grpc.aio.insecure_channel(endpoint) for _ in range(max(1, count // 100))]

    async def agent(i: int) -> None:
        stub = agent_pb2_grpc.AgentGatewayStub(channels[i % len(channels)])
        backoff = 0.05
        for _ in range(200):  # bounded: as the agent, retried with backoff while admission says busy
            call = stub.Connect()
            try:
                await call.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(
                    host_id=f"sim-{first + i}", boot_id=f"b{first + i}", agent_version="sim")))
                await call.read()  # the inspector's answer to the Hello: admitted
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                call.cancel()
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 2.0)
        drain = asyncio.create_task(_drain(call))
        await asyncio.sleep(random.random() * interval_s)
        end = time.monotonic() + seconds
        due = time.monotonic()
        while time.monotonic() < end:
            late = time.monotonic() - due
            worst[0] = max(worst[0], late)
            await call.write(agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(sent_unix_nanos=time.time_ns())))
            due += interval_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        await call.done_writing()
        drain.cancel()

    await asyncio.gather(*(agent(i) for i in range(count)), return_exceptions=True)
    print(json.dumps({"worst_late_ms": round(worst[0] * 1e3, 1)}), flush=True)
    for c in channels:
        await c.close()


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


async def overload(agents: int, seconds: float, procs: int) -> dict[str, Any]:
    from inspector.config import load_inspector_config
    from inspector.core import Inspector
    from inspector.southbound.liveness import UNREACHABLE, UP

    d = Path(tempfile.mkdtemp(prefix="doctor-overload-"))
    port = free_port()
    (d / "inventory.toml").write_text("".join(f'[[hosts]]\nname = "sim-{i}"\n' for i in range(agents)))
    (d / "inspector.toml").write_text(
        f'[inspector]\nlisten = ["127.0.0.1:{port}"]\nlog_level = "warning"\n'
        f'[controller.embedded]\ninventory = "inventory.toml"\n[auth]\nallow_anonymous_agents = true\n')
    insp = Inspector(load_inspector_config(d / "inspector.toml"))
    await insp.start()
    unreachable: set[str] = set()
    on_change = insp.liveness.on_change

    async def spy(rec: Any, old: str, new: str) -> None:
        if new == UNREACHABLE:
            unreachable.add(rec.host_id)
        await on_change(rec, old, new)
    insp.liveness.on_change = spy
    per = agents // procs
    gens = [subprocess.Popen(["nice", "-n", "10", sys.executable, __file__, "--generate", f"127.0.0.1:{port}",
                              str(k * per), str(per if k < procs - 1 else agents - k * per), str(seconds)],
                             stdout=subprocess.PIPE, text=True) for k in range(procs)]
    try:
        up = await wait_for(lambda: sum(1 for r in insp.liveness.hosts.values() if r.liveness == UP) >= agents * 0.99,
                            120, 0.2, "the simulated agents to connect")
        assert up
        outs = [await asyncio.to_thread(g.communicate, None, seconds + 120) for g in gens]
        lateness = [json.loads(o[0].strip().splitlines()[-1])["worst_late_ms"] for o in outs if o[0].strip()]
    finally:
        for g in gens:
            if g.poll() is None:
                g.kill()
        insp.liveness.on_change = on_change
        await insp.stop(0.2)
        shutil.rmtree(d, ignore_errors=True)
    return {"overload_agents": agents, "overload_false_unreachable": len(unreachable),
            "overload_worst_loop_lag_ms": round(insp.lag.worst_s * 1e3, 1),
            "overload_lost_ms": round(insp.lag.lost_s * 1e3, 1),
            "overload_generator_worst_late_ms": max(lateness) if lateness else None}


async def main(args: argparse.Namespace) -> None:
    runs = args.runs or (5 if args.quick else 20)
    agents = args.agents or (1500 if args.quick else 5000)
    result: dict[str, Any] = {"bench": "fleet_safety", "hosts": len(HOSTS)}
    result.update(await with_lab(mass_silence, hosts=6, servers_per_host=1, projects=("tenant",)))
    print(f"mass silence: {result['mass_silence_power_offs']} power-offs; held: {result['mass_silence_all_held']}")
    result.update(await with_lab(rack, hosts=6, servers_per_host=1, projects=("tenant",), switch="tor-1"))
    print(f"a rack's links cut: {result['rack_power_offs']} power-offs")
    result.update(await with_lab(single, hosts=6, servers_per_host=1, projects=("tenant",)))
    print(f"one silent host among six: fenced {result['single_host_fenced']} "
          f"after {result['single_host_fenced_after_s']} s")
    for servers, backend in ((1, "embedded"), (50, "embedded"), (50, "openstack")):
        lat = await notices(runs, servers, 0.02 if backend == "openstack" else None)
        for kind in ("suspected", "fenced"):
            p50, p99 = percentile(lat[kind], 50), percentile(lat[kind], 99)
            print(f"{servers} server(s), {backend}: {kind} notice held by the owner p50 {p50:.2f} ms, "
                  f"p99 {p99:.2f} ms ({len(lat[kind])} runs)")
            key = f"{kind}_notice_p99_ms"
            result[key] = round(max(result.get(key, 0.0), p99), 2)
            result[f"{kind}_notice_p50_ms_{servers}_{backend}"] = round(p50, 2)
    result.update(await overload(agents, args.seconds or (12 if args.quick else 30), args.procs))
    print(f"overload: {agents} simulated agents, {result['overload_false_unreachable']} declared unreachable; "
          f"worst loop lag {result['overload_worst_loop_lag_ms']} ms, generators' worst lateness "
          f"{result['overload_generator_worst_late_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--generate":
        endpoint, first, count, seconds = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        asyncio.run(generate(endpoint, first, count, seconds, 0.5))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs and agents: under a minute")
    parser.add_argument("--runs", type=int, default=0, help="link cuts per size for the notice latencies")
    parser.add_argument("--agents", type=int, default=0, help="simulated agents for the overload scenario")
    parser.add_argument("--seconds", type=float, default=0, help="how long the simulated agents keep sending")
    parser.add_argument("--procs", type=int, default=4, help="load-generator processes")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("fleet_safety needs root: it creates network namespaces and veth links")
    asyncio.run(main(args))
