"""The whole fault chain with ``[controller] backend = "openstack"``: netns link cut -> agent -> inspector ->
IPMI fence -> Nova force-down, os-resetState, Neutron data_plane_status (openstacksdk against tests.openstack_cloud)
-> owners."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from controller_adapter.base import HostStatus
from doctor_common.api import common_pb2, fault_pb2
from doctor_common.lab.cloud import Lab, wait_for
from doctor_common.timeline import Stage, as_dict
from tests.integration.chain.conftest import Consumer
from tests.openstack_cloud import FakeCloud, Recorded

MARKED_DOWN = fault_pb2.INCIDENT_PHASE_MARKED_DOWN

PROJECTS = ("project-a", "project-b", "project-c")


class OpenStackLab(Lab):
    """The chain lab with its controller swapped for the OpenStack backend, pointed at a local cloud.

    The cloud is seeded with the lab's hosts, servers and ports; the BMCs (which the embedded inventory
    would have carried) go into the inspector's own ``[fencing.bmc.<host>]`` tables.
    """

    def __init__(self, cloud: FakeCloud, **kw: Any) -> None:
        super().__init__(**kw)
        self.cloud = cloud
        for h in self.hosts.values():
            cloud.add_host(h.name, zone="lab")
            for sid in h.servers:
                cloud.add_server(sid, host=h.name, project_id=self.server_owner[sid], user_id="u-" + sid)
                cloud.add_port(f"port-{sid}", host=h.name, project_id=self.server_owner[sid], device_id=sid)
        self.extra_config = "".join(
            f'[fencing.bmc.{h.name}]\naddress = "127.0.0.1"\nport = {h.bmc_port}\nusername = "admin"\n'
            f'password_file = "{"bad.pass" if h.name in self.unfenceable else "bmc.pass"}"\n' for h in self.hosts.values())

    def write_files(self) -> Path:
        cfg = super().write_files()
        self.cloud.write_clouds_yaml(self.dir)
        text, n = re.subn(r'\[controller\]\nbackend = "embedded"\n\[controller\.embedded\]\n(?:[^\[\n][^\n]*\n)*',
                          '[controller]\nbackend = "openstack"\n[controller.openstack]\ncloud = "fake"\n'
                          'clouds_yaml = "clouds.yaml"\ntimeout_s = 5\n', cfg.read_text())
        assert n == 1, "the lab's inspector.toml no longer has the expected [controller] block"
        cfg.write_text(text)
        return cfg


@pytest.fixture
async def openstack_lab(needs_root: None) -> AsyncIterator[Callable[..., Any]]:
    """``await make(compute_max=..., data_plane_status=..., **lab options)`` -> (lab, cloud); consumers via
    ``make.consumer(lab, principal)``. Everything is torn down afterwards."""
    clouds: list[FakeCloud] = []
    labs: list[Lab] = []
    consumers: list[Consumer] = []

    async def make(compute_max: str = "2.90", data_plane_status: bool = True, **kw: Any) -> tuple[Lab, FakeCloud]:
        cloud = FakeCloud(compute_max=compute_max, data_plane_status=data_plane_status).start()
        clouds.append(cloud)
        lab = OpenStackLab(cloud, **kw)
        labs.append(lab)
        await lab.start()
        return lab, cloud

    async def consumer(lab: Lab, principal: str) -> Consumer:
        c = await Consumer(lab, principal).start()
        consumers.append(c)
        return c

    make.consumer = consumer  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        for c in consumers:
            await c.close()
        for lab in labs:
            await lab.close()
        for cloud in clouds:
            cloud.stop()


def api_calls(cloud: FakeCloud, method: str, pattern: str) -> list[Recorded]:
    return [r for r in cloud.requests() if r.method == method and re.search(pattern, r.path)]


@pytest.mark.parametrize("compute_max", ["2.90", "2.52"])
async def test_nic_down_reaches_nova_and_neutron(compute_max: str, openstack_lab: Any) -> None:
    """Cutting compute-1's link fences it, then really sends Nova's force-down (the form of the cloud's
    microversion), one os-resetState per server and one data_plane_status PUT per port; Nova's host_status of
    its servers is DOWN, and only their owners are notified."""
    lab, cloud = await openstack_lab(compute_max=compute_max, hosts=3, servers_per_host=2, projects=PROJECTS)
    consumers = {p: await openstack_lab.consumer(lab, p) for p in (*PROJECTS, "admin")}
    victims = lab.hosts["compute-1"].servers
    cloud.clear_requests()

    lab.cut_link("compute-1")
    await wait_for(lambda: all(consumers[p].of_phase(MARKED_DOWN) for p in ("project-a", "project-b", "admin")),
                   15, what="notifications")
    assert lab.power("compute-1") == ("off", 1), "the BMC was really powered off, once"

    # the calls really arrived, with the bodies and microversions Nova expects
    if compute_max == "2.90":
        downs = api_calls(cloud, "PUT", r"^/compute/v2\.1/os-services/" + cloud.service("compute-1").uuid + "$")
        assert [(r.body, r.microversion) for r in downs] == [({"forced_down": True}, "2.69")]
    else:
        downs = api_calls(cloud, "PUT", r"^/compute/v2\.1/os-services/force-down$")
        assert [(r.body, r.microversion) for r in downs] == [
            ({"host": "compute-1", "binary": "nova-compute", "forced_down": True}, "2.11")]
    resets = api_calls(cloud, "POST", r"^/compute/v2\.1/servers/[^/]+/action$")
    assert sorted((r.path, str(r.body), r.microversion) for r in resets) == [
        (f"/compute/v2.1/servers/{v}/action", "{'os-resetState': {'state': 'error'}}", compute_max) for v in victims]
    ports = api_calls(cloud, "PUT", r"^/network/v2\.0/ports/")
    assert sorted((r.path, str(r.body)) for r in ports) == [
        (f"/network/v2.0/ports/port-{v}", "{'port': {'data_plane_status': 'DOWN'}}") for v in victims]
    assert all(r.status in (200, 202) for r in [*downs, *resets, *ports])

    # the cloud's own state, as an operator would see it
    assert cloud.service("compute-1").forced_down and not cloud.service("compute-2").forced_down
    assert {cloud.server(v).status for v in victims} == {"ERROR"}
    assert {cloud.port(f"port-{v}").data_plane_status for v in victims} == {"DOWN"}
    assert {cloud.server(s).status for s in lab.hosts["compute-2"].servers} == {"ACTIVE"}
    ctl = lab.inspector.controller
    assert ctl.name == "openstack"
    assert {await ctl.server_host_status(v) for v in victims} == {("compute-1", HostStatus.DOWN)}

    # owners only, fence before declare
    a = consumers["project-a"]
    assert a.resource_ids() == {"vm-1-1", "port-vm-1-1"}
    assert consumers["project-b"].resource_ids() == {"vm-1-2", "port-vm-1-2"}
    final = a.of_phase(MARKED_DOWN)[0]
    vm = next(v for v in final.virtual_resource_info if v.virtual_resource_id == "vm-1-1")
    assert vm.virtual_resource_state == "error" and vm.host_status == common_pb2.HOST_STATUS_DOWN
    stamps = as_dict(final.timeline)
    assert stamps[Stage.STAGE_FENCED] <= stamps[Stage.STAGE_MARKED_DOWN] <= stamps[Stage.STAGE_PUBLISHED]
    await wait_for(lambda: len(lab.inspector.registry) == 4, 5, what="subscriptions")
    assert consumers["project-c"].faults == []


async def test_without_data_plane_status_the_chain_still_acts(openstack_lab: Any) -> None:
    """A Neutron without the data-plane-status extension: no port is touched, the fault says why, and the
    host is still forced down and its servers reset."""
    lab, cloud = await openstack_lab(data_plane_status=False, hosts=2, servers_per_host=1, projects=("project-a",))
    admin = await openstack_lab.consumer(lab, "admin")
    cloud.clear_requests()
    lab.cut_link("compute-2")
    await wait_for(lambda: admin.of_phase(MARKED_DOWN), 15, what="notification")
    assert api_calls(cloud, "PUT", r"^/network/") == []
    details = admin.of_phase(MARKED_DOWN)[0].physical_resource_info[0].faults[0].fault_details
    assert details["ports_down"].startswith("unsupported:") and "data_plane_status" in details["ports_down"]
    assert cloud.service("compute-2").forced_down
    assert cloud.server("vm-2-1").status == "ERROR"


async def test_enable_host_forces_it_up_in_nova(openstack_lab: Any) -> None:
    """The operator's enable-host lifts Nova's forced_down for the repaired host (a PUT that really arrives)."""
    lab, cloud = await openstack_lab(hosts=2, servers_per_host=1, projects=("project-a",))
    admin = await openstack_lab.consumer(lab, "admin")
    lab.cut_link("compute-1")
    await wait_for(lambda: admin.of_phase(MARKED_DOWN), 15, what="notification")
    assert cloud.service("compute-1").forced_down
    cloud.clear_requests()
    await lab.inspector.responder.enable_host("compute-1")
    assert [r.body for r in api_calls(cloud, "PUT", r"^/compute/v2\.1/os-services/")] == [{"forced_down": False}]
    assert not cloud.service("compute-1").forced_down


async def test_the_cloud_calls_of_a_fault_leave_together(openstack_lab: Any) -> None:
    """Once fencing is confirmed (and the owners' fenced notice published), the force-down, every server's reset
    and every port's update are in flight at once: with each call answered only after 0.3 s, the cloud holds all
    five of compute-1's (1 + 2 + 2) at the same time, and the incident ends in well under five calls' time."""
    lab, cloud = await openstack_lab(hosts=2, servers_per_host=2, projects=PROJECTS[:1])
    admin = await openstack_lab.consumer(lab, "admin")
    assert lab.inspector.controller._ids.get("compute-1") is not None  # its service id known from the listing
    cloud.latency_s = 0.3
    with cloud._lock:
        cloud.max_in_flight = 0
    lab.cut_link("compute-1")
    await wait_for(lambda: admin.of_phase(MARKED_DOWN), 15, what="the marked-down notice")
    assert cloud.max_in_flight == 5, cloud.max_in_flight
    stamps = as_dict(admin.of_phase(MARKED_DOWN)[0].timeline)
    assert (stamps[Stage.STAGE_MARKED_DOWN] - stamps[Stage.STAGE_FENCED]) / 1e9 < 2 * 0.3 + 0.25  # not 5 × 0.3 s
