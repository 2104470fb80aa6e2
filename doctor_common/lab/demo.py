"""`make demo`: a whole small cloud on this machine, one NIC failure, and what everyone saw.

Three compute hosts (network namespaces with a veth link each, an agent
inside, a virtual BMC on a loopback port), the inspector with the embedded
controller, and one consumer per project plus an administrator. It cuts
compute-1's link, prints what each consumer received and the fault's
per-stage latency, then removes everything it created.

Then the same cloud with two inspector replicas on a one-member etcd
(Debian's etcd, a temporary directory, loopback ports): it SIGKILLs the
leader, cuts compute-2's link while nobody leads, and shows the other replica
taking over and the fault still reaching its owners, once. Without etcd it
says so and the standalone run is the whole demo.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from doctor_common.api import fault_pb2
from doctor_common.client import DoctorClient
from doctor_common.faults import host_status_name, phase_name, severity_name
from doctor_common.lab.cloud import Lab, wait_for
from doctor_common.lab.replicated import HaLab, LocalEtcd
from doctor_common.timeline import Stage, as_dict, format_table, profile_table, stage_durations, stage_name, total_ms

PROJECTS = ("project-a", "project-b", "project-c")
P = fault_pb2.IncidentPhase
SUSPECTED, HELD, FENCED = P.INCIDENT_PHASE_SUSPECTED, P.INCIDENT_PHASE_HELD, P.INCIDENT_PHASE_FENCED
MARKED_DOWN, WITHDRAWN = P.INCIDENT_PHASE_MARKED_DOWN, P.INCIDENT_PHASE_WITHDRAWN


def say(text: str = "") -> None:
    print(text, flush=True)


async def _consume(client: DoctorClient, inbox: list[fault_pb2.FaultNotification], ready: asyncio.Event) -> None:
    async for msg in client.subscribe_once():
        if msg.WhichOneof("kind") == "subscribed":
            ready.set()
        else:
            inbox.append(msg.fault)


async def _stop_consumers(tasks: list[asyncio.Task[None]], clients: list[DoctorClient]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in clients:
        await c.close()


async def run() -> int:
    lab = Lab(hosts=3, servers_per_host=2, projects=PROJECTS)
    clients: list[DoctorClient] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        say("== starting a small cloud: 3 hosts (netns + veth + agent + virtual BMC), inspector, consumers")
        t0 = time.monotonic()
        await lab.start()
        say(f"   up in {time.monotonic() - t0:.1f}s; inspector on {lab.endpoint}, agents on unix:{lab.socket}")
        for name, h in lab.hosts.items():
            owners = ", ".join(f"{s} ({lab.server_owner[s]})" for s in h.servers)
            say(f"   {name:<10} netns {h.netns:<10} BMC 127.0.0.1:{h.bmc_port:<5} servers: {owners}")

        inboxes: dict[str, list[fault_pb2.FaultNotification]] = {}
        for who in (*PROJECTS, "admin"):
            client = DoctorClient(lab.endpoint, lab.tokens[who])
            clients.append(client)
            inboxes[who] = []
            ready = asyncio.Event()
            tasks.append(asyncio.create_task(_consume(client, inboxes[who], ready)))
            await asyncio.wait_for(ready.wait(), 10)
        say(f"   {len(inboxes)} consumers subscribed: {', '.join(inboxes)}")

        say("\n== cutting compute-1's link (ip link set down on its veth peer)")
        cut_ns = lab.cut_link("compute-1")
        expected = {lab.server_owner[s] for s in lab.hosts["compute-1"].servers} | {"admin"}
        await wait_for(lambda: all(any(n.phase == MARKED_DOWN for n in inboxes[w]) for w in expected), 10,
                       what="the owners' notifications")
        bystanders = [w for w in inboxes if w not in expected]
        if bystanders:  # give a wrongly addressed notification every chance to show up
            await asyncio.sleep(0.2)

        say("\n== what each consumer received: told at once, then as it was confirmed")
        for who, inbox in inboxes.items():
            if not inbox:
                say(f"   {who:<10} nothing (owns nothing on compute-1)")
                continue
            notices = ", ".join(f"{phase_name(n.phase)} +{(as_dict(n.timeline)[Stage.STAGE_DELIVERED] - cut_ns) / 1e6:.1f} ms"
                                for n in inbox)
            say(f"   {who:<10} {notices}  (after the link went down)")
            n = inbox[-1]
            say(f"   {'':<10} the last: notification {n.notification_id[:12]}… seq {n.sequence} fenced={n.fenced}")
            for p in n.physical_resource_info:
                f = p.faults[0]
                say(f"     host   {p.physical_resource_id:<12} {p.physical_resource_state:<6} {host_status_name(p.host_status):<5} "
                    f"{f.fault_type} ({severity_name(f.severity)}, root cause)")
            for v in n.virtual_resource_info:
                say(f"     {v.virtual_resource_type:<6} {v.virtual_resource_id:<12} {v.virtual_resource_state:<6} "
                    f"host {v.physical_resource_id} {host_status_name(v.host_status)}  {v.faults[0].fault_type}: {v.faults[0].probable_cause}")

        ctl = lab.inspector.controller
        host = await ctl.get_host("compute-1")
        power, offs = lab.power("compute-1")
        servers = await ctl.servers_on_host("compute-1")
        say("\n== the system's state afterwards")
        say(f"   BMC of compute-1: power {power} ({offs} power-off over IPMI)")
        say(f"   controller: compute-1 host_status {host.status.value}; servers "
            + ", ".join(f"{s.id}={s.state.value}" for s in servers))

        n = inboxes[lab.server_owner["vm-1-1"]][-1]
        say("\n== the fault's timeline (as its owner received the last notice)")
        for stage, ms in stage_durations(n.timeline):
            say(f"   +{ms:7.3f} ms  {stage_name(stage)}")
        say(f"   total {total_ms(n.timeline):.2f} ms from the kernel's link event to the consumer holding it")
        say("\n== per-stage latency (the seeds' performance profiler; `doctorctl profile` shows the same)")
        say("   " + format_table(profile_table([n.timeline])).replace("\n", "\n   "))
        ok = power == "off" and host.status.value == "DOWN" and not any(inboxes[w] for w in bystanders)
        say("\n== " + ("done: fenced, marked down, only the owners told" if ok else "UNEXPECTED RESULT: see above"))
        return 0 if ok and await mass_silence(lab, inboxes) else 1
    finally:
        await _stop_consumers(tasks, clients)
        await lab.close()
        say("   removed the namespaces, links, processes and files the demo created")


async def mass_silence(lab: Lab, inboxes: dict[str, list[fault_pb2.FaultNotification]]) -> bool:
    """Both remaining agents frozen at once, as when the inspector's own network fails: nobody is fenced."""
    survivors = ["compute-2", "compute-3"]
    say("\n== freezing every remaining agent at once (what the inspector sees when its own network fails)")
    for inbox in inboxes.values():
        inbox.clear()
    for h in survivors:
        lab.freeze_agent(h)
    try:
        await wait_for(lambda: sum(1 for n in inboxes["admin"] if n.phase == HELD) >= len(survivors), 10,
                       what="the hosts held")
        await asyncio.sleep(1.0)  # every chance for a power-off to happen
        root = next(p for n in inboxes["admin"] for p in n.physical_resource_info if p.physical_resource_id == "inspector")
        say(f"   administrators: {root.faults[0].fault_type} ({severity_name(root.faults[0].severity)}): "
            f"{root.faults[0].probable_cause}")
        for who in PROJECTS:
            told = list(dict.fromkeys(f"{v.virtual_resource_id} {phase_name(n.phase)} {host_status_name(v.host_status)}"
                                      for n in inboxes[who] for v in n.virtual_resource_info
                                      if v.virtual_resource_type == "server"))
            say(f"   {who:<10} {'; '.join(told) or 'nothing'}")
        offs = {h: lab.power(h)[1] for h in survivors}
        say(f"   power-offs: {offs}")
    finally:
        for h in survivors:
            lab.thaw_agent(h)
    await wait_for(lambda: sum(1 for n in inboxes["admin"] if n.phase == WITHDRAWN) >= len(survivors), 15,
                   what="the suspicions withdrawn")
    say("   agents back: every suspicion withdrawn (cleared to the same owners), the root cause cleared")
    ok = all(lab.power(h) == ("on", 0) for h in survivors)
    say("\n== " + ("done: silence judged against the fleet, nobody powered off" if ok else "UNEXPECTED RESULT"))
    return ok


async def _follow(client: DoctorClient, snapshots: list[str], inbox: list[fault_pb2.FaultNotification]) -> None:
    """A consumer given every replica: it reconnects, follows the leader and resumes by itself."""
    async for msg in client.subscribe(max_backoff_s=0.2):
        if msg.WhichOneof("kind") == "subscribed":
            snapshots.append(msg.subscribed.subscription_id)
        else:
            inbox.append(msg.fault)


async def run_ha() -> int:
    if LocalEtcd.binary() is None:
        say("\n== replicated inspectors: skipped, etcd is not installed (apt-get install etcd-server);\n"
            "   the standalone run above is the whole demo")
        return 0
    say("\n== replicated: one etcd member, two inspector replicas; the leader is SIGKILLed, then a link cut")
    etcd = LocalEtcd()
    lab: HaLab | None = None
    clients: list[DoctorClient] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        await etcd.start()
        lab = HaLab(etcd.endpoints, replicas=2, hosts=3, servers_per_host=2, projects=PROJECTS)
        await lab.start()
        old = await lab.status(0)
        assert old is not None and old.role == "leader"
        say(f"   etcd on {etcd.endpoints[0]}; replica-0 on {lab.replicas[0].endpoint} leads (fencing token "
            f"{old.leader_token}), replica-1 on {lab.replicas[1].endpoint} follows; agents list both")
        snapshots: dict[str, list[str]] = {}
        inboxes: dict[str, list[fault_pb2.FaultNotification]] = {}
        for who in (*PROJECTS, "admin"):
            clients.append(DoctorClient(lab.endpoints, lab.tokens[who]))
            snapshots[who], inboxes[who] = [], []
            tasks.append(asyncio.create_task(_follow(clients[-1], snapshots[who], inboxes[who])))
        await wait_for(lambda: all(snapshots.values()), 10, what="the subscriptions")
        t0 = time.monotonic()
        await lab.kill_replica(0)
        say("   +0.000 s  SIGKILL replica-0, the leader: no goodbye, its lease simply stops being renewed")
        lab.cut_link("compute-2")
        say(f"   +{time.monotonic() - t0:.3f} s  cut compute-2's link while nobody leads: its agent holds the event")
        await lab.wait_leader(exclude=(0,))
        new = await lab.status(1)
        assert new is not None
        say(f"   +{time.monotonic() - t0:.3f} s  replica-1 leads (token {new.leader_token}): state read from etcd, "
            "agents and consumers reconnect to it")
        expected = {lab.server_owner[s] for s in lab.hosts["compute-2"].servers} | {"admin"}
        await wait_for(lambda: all(any(n.phase == MARKED_DOWN for n in inboxes[w]) for w in expected), 15,
                       what="the owners' notifications")
        say(f"   +{time.monotonic() - t0:.3f} s  the owners of compute-2's servers hold the notification")
        for who, inbox in inboxes.items():
            resumed = "same subscription" if len(set(snapshots[who])) == 1 else "NEW subscription"
            got = ", ".join(f"seq {n.sequence} {phase_name(n.phase)}" for n in inbox) or "nothing (owns nothing there)"
            say(f"   {who:<10} {got}; reconnected {len(snapshots[who]) - 1}x, {resumed}")
        async with DoctorClient(lab.replicas[1].endpoint, lab.tokens["admin"]) as c:
            host = next(h for h in (await c.hosts()).hosts if h.host_id == "compute-2")
        power, offs = lab.power("compute-2")
        say(f"   BMC of compute-2: power {power} ({offs} power-off); host_status {host_status_name(host.host_status)}")
        bystanders = [w for w in inboxes if w not in expected]
        ok = (power == "off" and offs == 1 and host.forced_down
              and all([n.phase for n in inboxes[w]] == [SUSPECTED, FENCED, MARKED_DOWN] for w in expected)
              and not any(inboxes[w] for w in bystanders) and all(len(set(v)) == 1 for v in snapshots.values()))
        say("\n== " + ("done: the leader died, the other replica took over, the owners were told each notice once"
                        if ok else "UNEXPECTED RESULT: see above"))
        return 0 if ok else 1
    finally:
        await _stop_consumers(tasks, clients)
        if lab is not None:
            await lab.close()
        await etcd.stop()
        say("   removed the replicas, etcd and everything else the replicated run created")


def main() -> int:
    if os.geteuid() != 0:
        say("make demo needs root: it creates network namespaces and veth links (one per simulated host).\n"
            "Run it as root, e.g. `sudo make demo`.")
        return 2
    return asyncio.run(run()) or asyncio.run(run_ha())


if __name__ == "__main__":
    sys.exit(main())
