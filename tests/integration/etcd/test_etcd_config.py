"""The [etcd] configuration table and the client it builds (TLS, several endpoints, credentials)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aetcd import exceptions as aetcd_exc

from doctor_common.config import ConfigError
from inspector.ha.election import Election
from inspector.ha.etcd_config import DEFAULT_PREFIX, EtcdConfig, connect, grpc_target, load_etcd_config
from inspector.ha.etcd_store import EtcdStore
from tests.etcd_cluster import EtcdCluster, make_tls_files


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "doctor.toml"
    p.write_text(text)
    return p


def test_defaults(tmp_path: Path) -> None:
    """An empty [etcd] table gives local etcd, the default prefix, TTL 2 and deadlines longer than a raft election."""
    cfg = load_etcd_config(write(tmp_path, "[etcd]\n"))
    assert cfg == EtcdConfig()
    assert cfg.endpoints == ("127.0.0.1:2379",) and cfg.prefix == DEFAULT_PREFIX == "/nfv-doctor/default"
    assert cfg.lease_ttl_s == 2 and cfg.call_timeout_s > 1.6 and not cfg.tls


def test_full_table_with_password_file(tmp_path: Path) -> None:
    """Every key is read; the password comes from a file relative to the config and never shows in repr."""
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "pw").chmod(0o600)
    for name in ("ca.pem", "c.pem", "c.key"):
        (tmp_path / name).write_text("x")
    cfg = load_etcd_config(write(tmp_path, """
[etcd]
endpoints = ["10.0.0.1:2379", "10.0.0.2:2379"]
prefix = "/nfv-doctor/site-a"
lease_ttl_s = 3
step_down_margin_s = 0.3
call_timeout_s = 2.0
write_deadline_s = 5
ca_file = "ca.pem"
cert_file = "c.pem"
key_file = "c.key"
tls_server_name = "etcd.example"
username = "doctor"
password_file = "pw"
"""))
    assert cfg.endpoints == ("10.0.0.1:2379", "10.0.0.2:2379") and cfg.prefix == "/nfv-doctor/site-a"
    assert (cfg.lease_ttl_s, cfg.step_down_margin_s, cfg.call_timeout_s, cfg.write_deadline_s) == (3, 0.3, 2.0, 5.0)
    assert cfg.ca_file == tmp_path / "ca.pem" and cfg.tls and cfg.tls_server_name == "etcd.example"
    assert (cfg.username, cfg.password) == ("doctor", "s3cret")
    assert "s3cret" not in repr(cfg)


@pytest.mark.parametrize("body, key, message", [
    ('endpoints = ["nohost"]', "etcd.endpoints[0]", "host:port"),
    ("endpoints = []", "etcd.endpoints", "at least one"),
    ('prefix = "nfv/"', "etcd.prefix", "leading /"),
    ("lease_ttl_s = 0", "etcd.lease_ttl_s", "at least 1"),
    ("lease_ttl_s = 1\nstep_down_margin_s = 0.5", "etcd.step_down_margin_s", "half"),
    ('cert_file = "c.pem"', "etcd.key_file", "both"),
    ('username = "u"', "etcd.password", "both"),
    ('password = "p"\npassword_file = "pw"', "etcd.password", "not both"),
    ('ca_file = "missing.pem"', "etcd.ca_file", "not a readable file"),
    ("lease_tll_s = 2", "etcd.lease_tll_s", "unknown key"),
])
def test_errors_name_file_and_key(tmp_path: Path, body: str, key: str, message: str) -> None:
    """A wrong value fails at load time with the file, the key and what is wrong."""
    (tmp_path / "c.pem").write_text("x")
    path = write(tmp_path, f"[etcd]\n{body}\n")
    with pytest.raises(ConfigError) as info:
        load_etcd_config(path)
    assert info.value.key == key and message in str(info.value) and str(path) in str(info.value)


def test_grpc_target_puts_every_member_in_one_channel() -> None:
    """One endpoint is dialled as is; several become one ipv4:/ipv6: target the channel balances and fails over on."""
    assert grpc_target(["etcd.example:2379"]) == "etcd.example:2379"
    assert grpc_target(["127.0.0.1:1", "127.0.0.2:2"]) == "ipv4:127.0.0.1:1,127.0.0.2:2"
    assert grpc_target(["[::1]:1", "[::1]:2"]) == "ipv6:[::1]:1,[::1]:2"
    assert grpc_target(["localhost:1", "127.0.0.1:2"]).startswith("ipv4:127.0.0.1:1")


async def test_tls_with_client_certificates(needs_etcd: str, tmp_path: Path) -> None:
    """Against an etcd that demands client certificates, the configured CA/cert/key work for election and writes,
    and a client without them is refused."""
    tls = make_tls_files(tmp_path / "pki")
    with EtcdCluster(1, tls=tls) as cluster:
        base = dict(endpoints=tuple(cluster.endpoints), prefix="/nfv-doctor-test/tls", lease_ttl_s=1,
                    call_timeout_s=1.0)
        cfg = EtcdConfig(**base, ca_file=tls.ca_file, cert_file=tls.client_cert, key_file=tls.client_key)  # type: ignore[arg-type]
        async with connect(cfg) as client:
            async with Election(client, cfg, node_id="tls", endpoint="tls:1") as e:
                await e.wait_leader(timeout=5)
                await EtcdStore(client, cfg.prefix, e).put("k", b"v")
            assert (await client.get(b"/nfv-doctor-test/tls/state/k")).value == b"v"  # type: ignore[union-attr]
        async with connect(EtcdConfig(**base, ca_file=tls.ca_file)) as anonymous:  # type: ignore[arg-type]
            with pytest.raises(aetcd_exc.ConnectionFailedError):  # the TLS handshake fails
                await anonymous.get(b"/nfv-doctor-test/tls/state/k")


async def test_username_and_password(needs_etcd: str, tmp_path: Path) -> None:
    """With etcd authentication on, the configured user (password from a file) campaigns and writes, logs in again
    when etcd has forgotten its auth token, and a wrong password is refused."""
    from aetcd import rpc

    # tokens unused for 1 s expire (etcd's default is 300 s; a restart forgets them too)
    with EtcdCluster(1, extra_args=("--auth-token-ttl", "1")) as cluster:
        base = dict(endpoints=tuple(cluster.endpoints), prefix="/nfv-doctor-test/auth", lease_ttl_s=1,
                    call_timeout_s=1.0)
        async with connect(EtcdConfig(**base)) as root:  # type: ignore[arg-type]
            await root.connect()
            auth = rpc.AuthStub(root.channel)
            await auth.UserAdd(rpc.AuthUserAddRequest(name="root", password="rootpw"), timeout=2)
            await auth.RoleAdd(rpc.AuthRoleAddRequest(name="root"), timeout=2)
            await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"), timeout=2)
            await auth.AuthEnable(rpc.AuthEnableRequest(), timeout=2)
        (tmp_path / "pw").write_text("rootpw\n")
        (tmp_path / "pw").chmod(0o600)
        path = write(tmp_path, f'[etcd]\nendpoints = ["{cluster.endpoints[0]}"]\nprefix = "/nfv-doctor-test/auth"\n'
                               'username = "root"\npassword_file = "pw"\nlease_ttl_s = 1\n')
        cfg = load_etcd_config(path)
        async with connect(cfg) as client:
            await client.put(b"/nfv-doctor-test/auth/probe", b"1")  # logged in
            await asyncio.sleep(2.5)  # the fault: leave the token unused until etcd expires it (checked each 1 s)
            with pytest.raises(aetcd_exc.UnauthenticatedError):
                await client.get(b"/nfv-doctor-test/auth/probe")
            async with Election(client, cfg, node_id="auth", endpoint="auth:1") as e:
                await e.wait_leader(timeout=5)  # only after logging in again
                await EtcdStore(client, cfg.prefix, e).put("k", b"v")
        bad = connect(EtcdConfig(**base, username="root", password="wrong"))  # type: ignore[arg-type]
        try:
            with pytest.raises(aetcd_exc.ClientError, match="authentication failed"):
                await bad.connect()
        finally:
            await bad.close()
