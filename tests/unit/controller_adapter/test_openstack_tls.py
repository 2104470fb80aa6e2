"""The fault path's raw HTTP (``_openstack_http``) takes clouds.yaml's TLS settings as the SDK does: a private
CA (``cacert``), ``verify: false``, a client certificate (``cert``/``key``) — against the test cloud over HTTPS —
and the environment's proxies as requests does; it is set up when the controller connects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller_adapter._openstack_http import HttpPath
from controller_adapter.base import BackendUnavailable, ControllerError, ServerState
from controller_adapter.openstack import OpenStackController, Settings
from tests.openstack_cloud import FakeCloud
from tests.tls_certs import Pki
from tests.unit.controller_adapter.conftest import seed


def fast_path_writes(cloud: FakeCloud) -> list[tuple[str, str, int]]:
    """The fault path's writes sent by the raw HTTP path (its User-Agent), with the cloud's answer."""
    return [(r.method, r.path, r.status) for r in cloud.requests()
            if r.headers.get("user-agent", "").startswith("nfv-doctor") and r.method in ("PUT", "POST")]


@pytest.mark.parametrize("how", ["cacert", "verify-false", "client-certificate"])
async def test_the_fault_path_speaks_tls_as_clouds_yaml_says(tmp_path: Path, how: str) -> None:
    pki = Pki(tmp_path / "pki")
    server = pki.issue("cloud", ips=("127.0.0.1",))
    extra: dict[str, Any] = {"verify": False} if how == "verify-false" else {"cacert": str(pki.ca_file)}
    client_ca = None
    if how == "client-certificate":
        client = pki.issue("doctor-client")
        extra |= {"cert": str(client.cert), "key": str(client.key)}
        client_ca = pki.ca_file
    cloud = seed(FakeCloud(tls=(server.cert, server.key), client_ca=client_ca).start())
    ctl = OpenStackController(Settings(cloud="fake", clouds_yaml=cloud.write_clouds_yaml(tmp_path, **extra),
                                       timeout_s=5.0))
    try:
        assert cloud.url.startswith("https://")
        await ctl.connect()
        await ctl.force_down("c1", False)  # through the SDK: the service's id is learnt
        cloud.clear_requests()
        await ctl.force_down("c1")
        assert await ctl.reset_servers_state(["s1", "s3"], ServerState.ERROR) == {}
        assert await ctl.set_ports_data_plane_status(["port-1"], "DOWN") == {}
        sent = fast_path_writes(cloud)
        assert len(sent) == 4 and all(status < 400 for _, _, status in sent), sent
    finally:
        await ctl.close()
        cloud.stop()


async def test_a_cloud_whose_certificate_is_not_trusted_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """The SDK was told the cloud's CA; the raw path is handed a bundle without it (as if clouds.yaml's cacert
    had changed under it): the write fails as a controller error naming the certificate, never silently."""
    pki, other = Pki(tmp_path / "pki"), Pki(tmp_path / "other", name="other-ca")
    server = pki.issue("cloud", ips=("127.0.0.1",))
    cloud = seed(FakeCloud(tls=(server.cert, server.key)).start())
    ctl = OpenStackController(Settings(cloud="fake", clouds_yaml=cloud.write_clouds_yaml(
        tmp_path, cacert=str(pki.ca_file)), timeout_s=2.0))
    try:
        await ctl.connect()
        await ctl.force_down("c1", False)  # through the SDK: the service's id is learnt
        cloud.clear_requests()
        assert ctl._http is not None
        ep = await ctl._http.endpoints()
        from dataclasses import replace
        ctl._http._endpoints = replace(ep, verify=str(other.ca_file))
        await ctl._http.close()  # its client is made again, with that bundle
        with pytest.raises(ControllerError, match="certificate is not trusted") as refused:
            await ctl.force_down("c1")
        assert not isinstance(refused.value, BackendUnavailable)  # not retried: it will not pass by itself
        assert fast_path_writes(cloud) == []
    finally:
        await ctl.close()
        cloud.stop()


def test_clouds_yaml_written_for_tls(tmp_path: Path) -> None:
    """The test's clouds.yaml carries the TLS keys as openstacksdk reads them."""
    cloud = FakeCloud()
    cloud.start()
    try:
        entry = json.loads(cloud.write_clouds_yaml(tmp_path, cacert="/x/ca.pem", verify=False).read_text())
        assert entry["clouds"]["fake"]["cacert"] == "/x/ca.pem" and entry["clouds"]["fake"]["verify"] is False
    finally:
        cloud.stop()


def test_the_proxy_is_the_one_requests_would_take(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY/HTTP_PROXY and NO_PROXY as requests (the SDK) reads them, found once per endpoint."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "neutron.example")
    path = HttpPath(None, None, 1.0, 1, 0)  # type: ignore[arg-type]
    assert path._proxy("https://nova.example:8774/v2.1") == "http://proxy.example:3128"
    assert path._proxy("https://neutron.example:9696") is None
    assert path._proxy("http://nova.example:8774/v2.1") is None  # no HTTP_PROXY given
    monkeypatch.setenv("HTTPS_PROXY", "http://other.example:3128")
    assert path._proxy("https://nova.example:8774/v2.1") == "http://proxy.example:3128"  # found once


async def test_connecting_sets_up_the_fault_path_ahead_of_the_first_fault(tmp_path: Path) -> None:
    cloud = seed(FakeCloud().start())
    ctl = OpenStackController(Settings(cloud="fake", clouds_yaml=cloud.write_clouds_yaml(tmp_path), timeout_s=5.0))
    try:
        assert ctl._http is not None and ctl._http._session is None
        await ctl.connect()
        assert ctl._http._endpoints is not None and ctl._http._session is not None
    finally:
        await ctl.close()
        cloud.stop()
