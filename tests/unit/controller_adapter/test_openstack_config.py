"""Configuring the OpenStack backend: the [controller.openstack] table, clouds.yaml, OS_CLOUD, pins, laziness."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from controller_adapter import backend_class
from controller_adapter.openstack import OpenStackController, Settings
from doctor_common.config import ConfigError, Section
from inspector.config import load_inspector_config
from tests.openstack_cloud import FakeCloud
from tests.unit.controller_adapter.conftest import calls, seed

MakeCloud = Callable[..., FakeCloud]


def table(tmp_path: Path, body: str) -> Section:
    """The [controller.openstack] section of an inspector-style TOML file."""
    path = tmp_path / "inspector.toml"
    path.write_text("[controller.openstack]\n" + body)
    return Section.load(path).section("controller").section("openstack")


def test_entry_point_is_registered() -> None:
    """The backend is found by name through the doctor.controllers entry point."""
    assert backend_class("openstack") is OpenStackController


def test_defaults(tmp_path: Path) -> None:
    """An empty table means: the SDK's clouds.yaml search and OS_CLOUD, 10 s per request, 8 workers, 2 retries."""
    ctl = OpenStackController.from_config(table(tmp_path, ""))
    assert ctl.settings == Settings()
    assert (ctl.settings.timeout_s, ctl.settings.max_workers, ctl.settings.retries) == (10.0, 8, 2)


def test_every_key(tmp_path: Path) -> None:
    """Every documented key is read; clouds_yaml is relative to the TOML file."""
    (tmp_path / "clouds.yaml").write_text("clouds: {}\n")
    cfg = table(tmp_path, 'cloud = "prod"\nclouds_yaml = "clouds.yaml"\ntimeout_s = 2.5\nmax_workers = 16\n'
                          'retries = 0\ncompute_api_version = "2.60"\nserver_cache_s = 1\n')
    ctl = OpenStackController.from_config(cfg)
    assert ctl.settings == Settings(cloud="prod", clouds_yaml=tmp_path / "clouds.yaml", timeout_s=2.5, max_workers=16,
                                    retries=0, compute_api_version="2.60", server_cache_s=1.0)


@pytest.mark.parametrize(("body", "key", "words"), [
    ('colud = "prod"\n', "controller.openstack.colud", "unknown key"),
    ('clouds_yaml = "missing.yaml"\n', "controller.openstack.clouds_yaml", "no such file"),
    ("timeout_s = 0\n", "controller.openstack.timeout_s", "at least"),
    ("max_workers = 0\n", "controller.openstack.max_workers", "at least"),
    ('compute_api_version = "latest"\n', "controller.openstack.compute_api_version", "2.N"),
    ("cloud = 3\n", "controller.openstack.cloud", "expected a string"),
])
def test_bad_table_names_file_and_key(tmp_path: Path, body: str, key: str, words: str) -> None:
    """Mistakes in the table fail at start-up with the file and the dotted key."""
    with pytest.raises(ConfigError) as err:
        OpenStackController.from_config(table(tmp_path, body))
    assert err.value.key == key and words in str(err.value) and str(tmp_path / "inspector.toml") in str(err.value)


async def test_inspector_config_builds_the_backend(tmp_path: Path, make_cloud: MakeCloud) -> None:
    """[controller] backend = "openstack" in the inspector's file builds a working OpenStackController."""
    cloud = seed(make_cloud())
    cloud.write_clouds_yaml(tmp_path)
    path = tmp_path / "inspector.toml"
    path.write_text('[inspector]\nnode_id = "n1"\n[controller]\nbackend = "openstack"\n'
                    '[controller.openstack]\ncloud = "fake"\nclouds_yaml = "clouds.yaml"\ntimeout_s = 3\n')
    cfg = load_inspector_config(path)
    try:
        assert isinstance(cfg.controller, OpenStackController)
        assert [h.name for h in await cfg.controller.list_hosts()] == ["c1", "c2", "c3"]
    finally:
        await cfg.controller.close()


async def test_os_cloud_and_standard_search_path(tmp_path: Path, make_cloud: MakeCloud,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """With an empty table the operator's environment decides: OS_CLIENT_CONFIG_FILE and OS_CLOUD."""
    cloud = seed(make_cloud())
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(cloud.write_clouds_yaml(tmp_path, cloud="mine")))
    monkeypatch.setenv("OS_CLOUD", "mine")
    ctl = OpenStackController.from_config(table(tmp_path, ""))
    try:
        assert (await ctl.get_host("c2")).name == "c2"
    finally:
        await ctl.close()


async def test_compute_api_version_pin(tmp_path: Path, make_cloud: MakeCloud) -> None:
    """A pinned compute_api_version is the microversion of every Nova call, and picks the API forms."""
    cloud = seed(make_cloud(compute_max="2.90"))
    ctl = OpenStackController(Settings(cloud="fake", clouds_yaml=cloud.write_clouds_yaml(tmp_path),
                                       compute_api_version="2.60"))
    try:
        await ctl.connect()
        cloud.clear_requests()
        await ctl.servers_on_host("c1")
        await ctl.force_down("c1")
        assert {c[4] for c in calls(cloud)} == {"2.60"}
        assert calls(cloud)[-1][1] == f"/compute/v2.1/os-services/{cloud.service('c1').uuid}"
    finally:
        await ctl.close()


async def test_pin_above_the_cloud_fails_clearly(tmp_path: Path, make_cloud: MakeCloud) -> None:
    """A pin the cloud cannot serve is a ControllerError naming the microversions, at the first call."""
    from controller_adapter.base import ControllerError

    cloud = seed(make_cloud(compute_max="2.52"))
    ctl = OpenStackController(Settings(cloud="fake", clouds_yaml=cloud.write_clouds_yaml(tmp_path),
                                       compute_api_version="2.60"))
    try:
        with pytest.raises(ControllerError, match="2.60"):
            await ctl.list_hosts()
    finally:
        await ctl.close()


def test_openstacksdk_is_imported_lazily(tmp_path: Path) -> None:
    """Loading the backend and reading its config does not import openstacksdk (~0.25 s): first use does."""
    (tmp_path / "i.toml").write_text('[controller.openstack]\ncloud = "x"\n')
    code = ("import sys\n"
            "from controller_adapter import backend_class\n"
            "from doctor_common.config import Section\n"
            f"cfg = Section.load({str(tmp_path / 'i.toml')!r}).section('controller').section('openstack')\n"
            "backend_class('openstack').from_config(cfg)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('openstack', 'keystoneauth1')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
