"""`make demo`: a whole small cloud on this machine, one NIC failure, and what everyone saw.

Three compute hosts (network namespaces with a veth link each, an agent
inside, a virtual BMC on a loopback port), the inspector with the embedded
controller, and one consumer per project plus an administrator. It cuts
compute-1's link, prints what each consumer received and the fault's
per-stage latency, then removes everything it created.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from doctor_common.api import common_pb2, fault_pb2
from doctor_common.client import DoctorClient
from doctor_common.lab import Lab, wait_for
from doctor_common.timeline import format_table, profile_table, stage_durations, stage_name, total_ms

PROJECTS = ("project-a", "project-b", "project-c")


def say(text: str = "") -> None:
    print(text, flush=True)


def _hs(v: int) -> str:
    return common_pb2.HostStatus.Name(v).removeprefix("HOST_STATUS_")


async def _consume(client: DoctorClient, inbox: list[fault_pb2.FaultNotification], ready: asyncio.Event) -> None:
    async for msg in client.subscribe_once():
        if msg.WhichOneof("kind") == "subscribed":
            ready.set()
        else:
            inbox.append(msg.fault)


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
        lab.cut_link("compute-1")
        expected = {lab.server_owner[s] for s in lab.hosts["compute-1"].servers} | {"admin"}
        await wait_for(lambda: all(inboxes[w] for w in expected), 10, what="the owners' notifications")
        bystanders = [w for w in inboxes if w not in expected]
        if bystanders:  # give a wrongly addressed notification every chance to show up
            await asyncio.sleep(0.2)

        say("\n== what each consumer received")
        for who, inbox in inboxes.items():
            if not inbox:
                say(f"   {who:<10} nothing (owns nothing on compute-1)")
                continue
            n = inbox[0]
            say(f"   {who:<10} notification {n.notification_id[:12]}… seq {n.sequence} fenced={n.fenced}")
            for p in n.physical_resource_info:
                f = p.faults[0]
                say(f"     host   {p.physical_resource_id:<12} {p.physical_resource_state:<6} {_hs(p.host_status):<5} "
                    f"{f.fault_type} ({common_pb2.Severity.Name(f.severity).removeprefix('SEVERITY_').lower()}, root cause)")
            for v in n.virtual_resource_info:
                say(f"     {v.virtual_resource_type:<6} {v.virtual_resource_id:<12} {v.virtual_resource_state:<6} "
                    f"host {v.physical_resource_id} {_hs(v.host_status)}  {v.faults[0].fault_type}: {v.faults[0].probable_cause}")

        ctl = lab.inspector.controller
        host = await ctl.get_host("compute-1")
        power, offs = lab.power("compute-1")
        servers = await ctl.servers_on_host("compute-1")
        say("\n== the system's state afterwards")
        say(f"   BMC of compute-1: power {power} ({offs} power-off over IPMI)")
        say(f"   controller: compute-1 host_status {host.status.value}; servers "
            + ", ".join(f"{s.id}={s.state.value}" for s in servers))

        n = inboxes[lab.server_owner["vm-1-1"]][0]
        say("\n== the fault's timeline (as its owner received it)")
        for stage, ms in stage_durations(n.timeline):
            say(f"   +{ms:7.3f} ms  {stage_name(stage)}")
        say(f"   total {total_ms(n.timeline):.2f} ms from the kernel's link event to the consumer holding it")
        say("\n== per-stage latency (the seeds' performance profiler; `doctorctl profile` shows the same)")
        say("   " + format_table(profile_table([n.timeline])).replace("\n", "\n   "))
        ok = power == "off" and host.status.value == "DOWN" and not any(inboxes[w] for w in bystanders)
        say("\n== " + ("done: fenced, marked down, only the owners told" if ok else "UNEXPECTED RESULT: see above"))
        return 0 if ok else 1
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.close()
        await lab.close()
        say("   removed the namespaces, links, processes and files the demo created")


def main() -> int:
    if os.geteuid() != 0:
        say("make demo needs root: it creates network namespaces and veth links (one per simulated host).\n"
            "Run it as root, e.g. `sudo make demo`.")
        return 2
    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
