"""A bad config file fails at start-up naming the file and the key."""

from pathlib import Path

import pytest

from doctor_common.config import ConfigError
from inspector.config import load_inspector_config

INVENTORY = '[[hosts]]\nname = "c1"\n[[servers]]\nid = "s1"\nhost = "c1"\nproject_id = "p"\n'


def _write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "inv.toml").write_text(INVENTORY)
    p = tmp_path / "inspector.toml"
    p.write_text('[inspector]\nnode_id = "n"\n[controller.embedded]\ninventory = "inv.toml"\n' + body)
    return p


@pytest.mark.parametrize("body, key, words", [
    ("[fencing]\ntimeout_s = \"fast\"\n", "fencing.timeout_s", "expected a number"),
    ("[notifier]\nqueue_limt = 5\n", "notifier.queue_limt", "unknown key"),
    ("[[auth.consumers]]\ntoken = \"t\"\n", "auth.consumers[0].project", "either project"),
    ("[[auth.consumers]]\nproject = \"p\"\n", "auth.consumers[0].token", "required"),
    ("[fencing.bmc.c1]\nport = 623\n", "fencing.bmc.c1.address", "required"),
    ('[[auth.consumers]]\ntoken = "t"\nproject = "p"\n[[auth.consumers]]\ntoken = "t"\nadmin = true\n',
     "auth.consumers[1].token", "also given to auth.consumers[0].token"),
    ('[[auth.consumers]]\ntoken = "t"\nadmin = true\n[[auth.agents]]\nhost = "c1"\ntoken = "t"\n',
     "auth.agents[0].token", "one token must stand for one identity"),
    ("[guard]\nmax_silent_share = 1.5\n", "guard.max_silent_share", "at most 1.0"),
    ('[guard]\nlink_fault_types = ["compute.host.*"]\n', "guard.link_fault_types[0]", "exact fault types"),
    ('[metrics]\nlisten = "9464"\n', "metrics.listen", "host:port"),
    ('[metrics]\nlisten = "127.0.0.1:99999"\n', "metrics.listen", "port 0 to 65535"),
    ('[metrics]\nlistne = "127.0.0.1:9464"\n', "metrics.listne", "unknown key"),
])
def test_bad_inspector_config_names_file_and_key(tmp_path: Path, body: str, key: str, words: str) -> None:
    """Each mistake is reported with the file's path and the dotted key, and says what is wrong."""
    with pytest.raises(ConfigError) as err:
        load_inspector_config(_write(tmp_path, body))
    assert err.value.key == key
    assert str(tmp_path / "inspector.toml") in str(err.value) and words in str(err.value)


def test_bad_inventory_names_the_inventory_file(tmp_path: Path) -> None:
    """A server on an unknown host is an error in the inventory file, not the inspector's."""
    p = _write(tmp_path, "")
    (tmp_path / "inv.toml").write_text(INVENTORY.replace('host = "c1"', 'host = "c9"'))
    with pytest.raises(ConfigError) as err:
        load_inspector_config(p)
    assert err.value.path.endswith("inv.toml") and err.value.key == "servers[0].host"


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    """Unparseable or absent files say so, with the path."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[inspector\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_inspector_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_inspector_config(tmp_path / "nope.toml")


async def test_good_config_loads(tmp_path: Path) -> None:
    """The minimal config works and defaults are applied."""
    cfg = load_inspector_config(_write(tmp_path, ""))
    try:
        assert cfg.node_id == "n" and cfg.controller.name == "embedded" and cfg.liveness_timeout_s == 1.5
        assert cfg.metrics_listen == "" and cfg.log_format == "text", "metrics are off unless configured"
    finally:
        await cfg.controller.close()


def test_an_unknown_log_format_names_the_key(tmp_path: Path) -> None:
    p = _write(tmp_path, "")
    p.write_text(p.read_text().replace('node_id = "n"', 'node_id = "n"\nlog_format = "xml"'))
    with pytest.raises(ConfigError) as err:
        load_inspector_config(p)
    assert err.value.key == "inspector.log_format" and "one of text, json" in str(err.value)


@pytest.mark.parametrize("listen, key, words", [
    (":50051", "inspector.advertise", "is a wildcard"),
    ("0.0.0.0:50051", "inspector.advertise", "is a wildcard"),
    ("localhost:http", "inspector.listen[0]", "port"),
])
def test_a_replicated_inspector_must_be_reachable_where_it_says(tmp_path: Path, listen: str, key: str,
                                                                words: str) -> None:
    """With [etcd] and no advertise, the listen address is advertised: a wildcard is refused as such, and a listen
    address that does not parse is reported as that, not as a wildcard."""
    (tmp_path / "inv.toml").write_text(INVENTORY)
    p = tmp_path / "inspector.toml"
    p.write_text(f'[inspector]\nnode_id = "n"\nlisten = ["{listen}"]\n[controller.embedded]\ninventory = "inv.toml"\n'
                 '[etcd]\n')
    with pytest.raises(ConfigError) as err:
        load_inspector_config(p)
    assert err.value.key == key and words in str(err.value), str(err.value)


@pytest.mark.parametrize("listen, words", [
    ("127.0.0.1", "expected host:port"),      # gRPC would listen on 443
    (":http", "is not a number"),
    ("unix:relative.sock", "absolute socket path"),
])
def test_a_listen_address_needs_a_port(tmp_path: Path, listen: str, words: str) -> None:
    """A listen address without a port (gRPC would take 443) or otherwise malformed is refused, naming which."""
    (tmp_path / "inv.toml").write_text(INVENTORY)
    p = tmp_path / "inspector.toml"
    p.write_text(f'[inspector]\nnode_id = "n"\nlisten = ["127.0.0.1:50051", "{listen}"]\n'
                 '[controller.embedded]\ninventory = "inv.toml"\n')
    with pytest.raises(ConfigError) as err:
        load_inspector_config(p)
    assert err.value.key == "inspector.listen[1]" and words in str(err.value), str(err.value)


def test_a_secret_file_open_to_others_is_refused(tmp_path: Path) -> None:
    """A token file readable by group or others is refused, saying to chmod 600 it (as ssh does with a private
    key); at 0600 it is read."""
    secret = tmp_path / "admin.token"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    p = _write(tmp_path, f'[[auth.consumers]]\ntoken_file = "{secret}"\nadmin = true\n')
    with pytest.raises(ConfigError) as err:
        load_inspector_config(p)
    assert err.value.key == "auth.consumers[0].token_file" and "chmod 600" in str(err.value)
    assert "0644" in str(err.value)
    secret.chmod(0o600)
    cfg = load_inspector_config(p)
    try:
        assert len(cfg.auth._consumers) == 1
    finally:
        import asyncio
        asyncio.run(cfg.controller.close())


@pytest.mark.parametrize("keys, key, words", [
    ("liveness_timeout_ms = 1000\nkeepalive_ms = 1000\n", "inspector.keepalive_ms", "shorter than liveness_timeout_ms"),
    ("keepalive_ms = 10\n", "inspector.keepalive_ms", "at least 50"),
    ("liveness_timeout_ms = 1000\nping_timeout_ms = 1500\n", "inspector.ping_timeout_ms",
     "not be longer than liveness_timeout_ms"),
])
def test_the_transport_keepalive_must_fit_the_liveness_timeout(tmp_path: Path, keys: str, key: str,
                                                               words: str) -> None:
    """The keepalive finds a silent peer within the timeout plus one interval: an interval as long as the
    timeout is refused, naming the key; heartbeats rarer than the timeout are fine (the transport detects)."""
    (tmp_path / "inv.toml").write_text(INVENTORY)
    p = tmp_path / "inspector.toml"
    p.write_text(f'[inspector]\nnode_id = "n"\n{keys}[controller.embedded]\ninventory = "inv.toml"\n')
    with pytest.raises(ConfigError) as err:
        load_inspector_config(p)
    assert err.value.key == key and words in str(err.value)
    p.write_text('[inspector]\nnode_id = "n"\nheartbeat_interval_ms = 5000\nliveness_timeout_ms = 1000\n'
                 '[controller.embedded]\ninventory = "inv.toml"\n')
    cfg = load_inspector_config(p)
    # the keepalive defaults to half the timeout (at most a second)
    assert (cfg.keepalive_ms, cfg.heartbeat_interval_ms, cfg.liveness_timeout_s) == (500, 5000, 1.0)
    assert cfg.ping_timeout_ms == 500  # timeout − keepalive: a silent peer is found within the liveness timeout
    assert cfg.gc_freeze is True        # full collections skip what survived the last one (gc_pacing.py)
    assert cfg.guard.silence_settle_s == 1.1  # spread shows within two keepalive intervals, not a heartbeat's
