"""Consumers' Keystone tokens: the validator (cache, single-flight, outages) against the test cloud's Keystone
over real HTTP, and the ``[auth.keystone]`` table's start-up errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from doctor_common.auth import keystone_principal
from doctor_common.config import ConfigError
from doctor_common.keystone import KeystoneSettings, KeystoneUnavailable, KeystoneValidator
from inspector.config import load_inspector_config
from tests.openstack_cloud import FakeCloud


@pytest.fixture
def cloud() -> Iterator[FakeCloud]:
    with FakeCloud() as c:
        yield c


def validator(cloud: FakeCloud, tmp_path: Path, **kw: object) -> KeystoneValidator:
    return KeystoneValidator(KeystoneSettings(cloud="fake", clouds_yaml=cloud.write_clouds_yaml(tmp_path),
                                              **kw))  # type: ignore[arg-type]


async def until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.02)


async def test_a_valid_token_gives_its_project_and_roles(cloud: FakeCloud, tmp_path: Path) -> None:
    """Keystone's answer (GET /v3/auth/tokens, X-Subject-Token, our own service token) becomes the principal:
    the project id, admin only with an admin role; the validation asked for no catalog."""
    v = validator(cloud, tmp_path, admin_roles=("admin", "cloud-admin"))
    try:
        member = await v.validate(cloud.issue_token("alice", "project-a", ("member", "reader")))
        boss = await v.validate(cloud.issue_token("carol", "project-x", ("Cloud-Admin",)))
        assert member is not None and boss is not None
        assert (member.project_id, member.user_name, member.roles) == ("project-a", "alice", {"member", "reader"})
        assert keystone_principal(member, v.settings.admin_roles).admin is False
        assert keystone_principal(member, v.settings.admin_roles).owns("project-a")
        assert not keystone_principal(member, v.settings.admin_roles).owns("project-b")
        assert keystone_principal(boss, v.settings.admin_roles).admin is True
        checks = cloud.validations()
        assert len(checks) == 2 and all(r.headers["x-auth-token"] == cloud.token and "nocatalog" in r.query
                                        for r in checks)
        unscoped = await v.validate(cloud.issue_token("dave", None))
        assert unscoped is not None and unscoped.project_id is None
    finally:
        v.close()


async def test_single_flight_one_request_for_a_hundred_callers(cloud: FakeCloud, tmp_path: Path) -> None:
    """100 concurrent validations of one new token make one Keystone request, and all get its answer."""
    v = validator(cloud, tmp_path)
    try:
        token = cloud.issue_token("alice", "project-a")
        stall = cloud.stall("GET", r"^/identity/v3/auth/tokens$", 5.0)  # all hundred are waiting when it answers
        waiting = [asyncio.create_task(v.validate(token)) for _ in range(100)]
        await asyncio.to_thread(stall.entered.wait, 5)
        stall.release()
        answers = await asyncio.gather(*waiting)
        assert {a.project_id for a in answers if a is not None} == {"project-a"} and None not in answers
        assert [r.headers["x-subject-token"] for r in cloud.validations()] == [token]
    finally:
        v.close()


async def test_revocation_counts_once_the_entry_ages_out(cloud: FakeCloud, tmp_path: Path) -> None:
    """A revoked token is still accepted from the cache, then refused once the entry is older than cache_s;
    the refusal is cached too (one request for repeated tries)."""
    v = validator(cloud, tmp_path, cache_s=0.3, negative_cache_s=30.0)
    try:
        token = cloud.issue_token("alice", "project-a")
        assert await v.validate(token) is not None
        cloud.revoke_token(token)

        async def refused() -> bool:
            return await v.validate(token) is None
        await until(refused)
        before = len(cloud.validations())
        assert [await v.validate(token) for _ in range(20)] == [None] * 20
        assert len(cloud.validations()) == before, "a refused token is answered from the cache"
    finally:
        v.close()


async def test_never_trusted_past_expires_at(cloud: FakeCloud, tmp_path: Path) -> None:
    """A token that expires before cache_s is over is refused once expired, however long the cache is."""
    v = validator(cloud, tmp_path, cache_s=3600.0)
    try:
        token = cloud.issue_token("alice", "project-a", expires_in=0.5)
        info = await v.validate(token)
        assert info is not None and info.expires_at <= time.time() + 0.6

        async def refused() -> bool:
            return await v.validate(token) is None
        await until(refused)
    finally:
        v.close()


async def test_outage_is_unavailable_and_cached_tokens_keep_working(cloud: FakeCloud, tmp_path: Path) -> None:
    """Keystone failing (503) or not answering (timeout) is KeystoneUnavailable, never "invalid", and is not
    cached; a token validated before keeps working from the cache."""
    v = validator(cloud, tmp_path, timeout_s=0.5)
    try:
        known = cloud.issue_token("alice", "project-a")
        assert await v.validate(known) is not None
        cloud.fail("GET", r"^/identity/v3/auth/tokens$", 503, times=1000)
        fresh = cloud.issue_token("bob", "project-b")
        with pytest.raises(KeystoneUnavailable, match="HTTP 503"):
            await v.validate(fresh)
        assert (await v.validate(known)) is not None
        cloud.clear_rules()
        cloud.stall("GET", r"^/identity/v3/auth/tokens$", 5.0)
        with pytest.raises(KeystoneUnavailable, match="Timeout"):
            await v.validate(fresh)
        cloud.clear_rules()
        assert (await v.validate(fresh)) is not None, "the failure was not cached"
    finally:
        v.close()


async def test_own_credentials_refused_is_unavailable(cloud: FakeCloud, tmp_path: Path) -> None:
    """The inspector's own account being refused says so (a configuration fault), not "invalid token"."""
    path = cloud.write_clouds_yaml(tmp_path)
    path.write_text(path.read_text().replace("fake-cloud-password", "wrong"))
    v = KeystoneValidator(KeystoneSettings(cloud="fake", clouds_yaml=path))
    try:
        with pytest.raises(KeystoneUnavailable, match="Unauthorized"):
            await v.validate(cloud.issue_token("alice", "project-a"))
    finally:
        v.close()


async def test_cache_is_bounded(cloud: FakeCloud, tmp_path: Path) -> None:
    """No more than cache_size entries, good or bad: the least recently used leave."""
    v = validator(cloud, tmp_path, cache_size=3)
    try:
        for i in range(8):
            await v.validate(cloud.issue_token(f"u{i}", "project-a") if i % 2 else f"bogus-{i}")
            assert v.cache_len() <= 3
        assert v.cache_len() == 3
    finally:
        v.close()


INVENTORY = '[[hosts]]\nname = "c1"\n[[servers]]\nid = "s1"\nhost = "c1"\nproject_id = "p"\n'


@pytest.mark.parametrize("body, key, words", [
    ('[auth.keystone]\nclouds_yaml = "nowhere.yaml"\n', "auth.keystone.clouds_yaml", "no such file"),
    ('[auth.keystone]\ncloud = "elsewhere"\nclouds_yaml = "clouds.yaml"\n', "auth.keystone.cloud", "not found"),
    ('[auth.keystone]\ncloud = "fake"\nclouds_yaml = "clouds.yaml"\nadmin_roles = []\n', "auth.keystone.admin_roles",
     "role names"),
    ('[auth.keystone]\ncloud = "fake"\nclouds_yaml = "clouds.yaml"\ncache_s = -1\n', "auth.keystone.cache_s",
     "at least"),
    ('[auth.keystone]\ncloud = "fake"\nclouds_yaml = "clouds.yaml"\ncache_sec = 5\n', "auth.keystone.cache_sec",
     "unknown key"),
    ('[[auth.consumers]]\nname = "keystone:me"\ntoken = "t"\nproject = "p"\n', "auth.consumers[0].name",
     "choose another"),
])
def test_bad_keystone_config_names_file_and_key(cloud: FakeCloud, tmp_path: Path, body: str, key: str,
                                                words: str) -> None:
    """Each mistake in [auth.keystone] fails at start-up with the file and the dotted key."""
    cloud.write_clouds_yaml(tmp_path)
    (tmp_path / "inv.toml").write_text(INVENTORY)
    p = tmp_path / "inspector.toml"
    p.write_text('[inspector]\nnode_id = "n"\n[controller.embedded]\ninventory = "inv.toml"\n' + body)
    with pytest.raises(ConfigError) as err:
        load_inspector_config(p)
    assert err.value.key == key
    assert str(p) in str(err.value) and words in str(err.value)


def test_keystone_reuses_the_controllers_cloud(cloud: FakeCloud, tmp_path: Path) -> None:
    """Without a cloud of its own, [auth.keystone] takes [controller.openstack]'s; enabled = false turns it off."""
    cloud.write_clouds_yaml(tmp_path)
    p = tmp_path / "inspector.toml"
    head = ('[inspector]\nnode_id = "n"\n[controller]\nbackend = "openstack"\n'
            '[controller.openstack]\ncloud = "fake"\nclouds_yaml = "clouds.yaml"\n')
    p.write_text(head + '[auth.keystone]\ncache_s = 5\nadmin_roles = ["admin", "cloud-admin"]\n')
    cfg = load_inspector_config(p, build_controller=False)
    assert cfg.auth.keystone is not None
    assert cfg.auth.keystone.settings == KeystoneSettings(cloud="fake", clouds_yaml=tmp_path / "clouds.yaml",
                                                          cache_s=5.0, admin_roles=("admin", "cloud-admin"))
    p.write_text(head + '[auth.keystone]\nenabled = false\n')
    assert load_inspector_config(p, build_controller=False).auth.keystone is None


def test_the_examples_keystone_table_loads(cloud: FakeCloud, tmp_path: Path) -> None:
    """examples/inspector.toml's commented [auth.keystone] table, uncommented, is valid and means the defaults."""
    example = (Path(__file__).resolve().parents[3] / "examples" / "inspector.toml").read_text()
    block = example[example.index("# [auth.keystone]"):].split("\n\n")[0]
    table = "\n".join(line.removeprefix("# ") for line in block.splitlines())
    table = table.replace('"prod"', '"fake"').replace("/etc/openstack/clouds.yaml", str(tmp_path / "clouds.yaml"))
    cloud.write_clouds_yaml(tmp_path)
    (tmp_path / "inv.toml").write_text(INVENTORY)
    p = tmp_path / "inspector.toml"
    p.write_text('[inspector]\nnode_id = "n"\n[controller.embedded]\ninventory = "inv.toml"\n' + table + "\n")
    cfg = load_inspector_config(p, build_controller=False)
    assert cfg.auth.keystone is not None
    assert cfg.auth.keystone.settings == KeystoneSettings(cloud="fake", clouds_yaml=tmp_path / "clouds.yaml")
