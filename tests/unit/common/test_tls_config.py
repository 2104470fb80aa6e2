"""TLS configuration is checked at start-up: bad files, mismatched pairs and plaintext beyond loopback are refused
naming the file and the key; client credentials are read again when their files change."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_agent_config
from doctor_common.config import ConfigError
from doctor_common.grpc_tls import channel_credentials
from doctor_common.tls import ClientTls
from inspector.config import load_inspector_config
from inspector.tls import is_local
from tests.tls_certs import Pki

INVENTORY = '[[hosts]]\nname = "c1"\n'


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def _inspector(tmp_path: Path, tls: str, listen: str = '"127.0.0.1:50051"') -> Path:
    (tmp_path / "inv.toml").write_text(INVENTORY)
    p = tmp_path / "inspector.toml"
    p.write_text(f'[inspector]\nnode_id = "n"\nlisten = [{listen}]\n[controller.embedded]\ninventory = "inv.toml"\n'
                 f'[tls]\n{tls}')
    return p


def _error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load_inspector_config(path)
    assert err.value.path == str(path) and str(path) in str(err.value)
    return err.value


async def test_a_good_tls_table_loads(tmp_path: Path, pki: Pki) -> None:
    """Certificate, key and client CA load; the replica's probe dials with its own certificate."""
    s = pki.issue("inspector", ("inspector.test",), ("127.0.0.1",))
    cfg = load_inspector_config(_inspector(tmp_path, f'cert_file = "{s.cert}"\nkey_file = "{s.key}"\n'
                                           f'client_ca_file = "{pki.ca_file}"\nrequire_client_cert_for = "all"\n',
                                           '"0.0.0.0:50051"'))
    try:
        assert cfg.tls.enabled and cfg.tls.require_client_cert_for == "all" and cfg.tls.agents_need_cert
        peer = cfg.tls.peer_tls()
        assert peer is not None and peer.ca_file == pki.ca_file and peer.cert_file == s.cert
    finally:
        await cfg.controller.close()


def test_bad_certificate_files_name_the_file_and_the_key(tmp_path: Path, pki: Pki) -> None:
    """A missing certificate, a key that is not the certificate's, a CA file that is no PEM, a world-readable key:
    each fails at start-up with the key and the file that is wrong."""
    s = pki.issue("inspector", ("inspector.test",))
    other = pki.issue("other", ("other.test",))
    missing = tmp_path / "nope.pem"
    err = _error(_inspector(tmp_path, f'cert_file = "{missing}"\nkey_file = "{s.key}"\n'))
    assert err.key == "tls.cert_file" and str(missing) in str(err) and "does not exist" in str(err)

    err = _error(_inspector(tmp_path, f'cert_file = "{s.cert}"\nkey_file = "{other.key}"\n'))
    assert err.key == "tls.key_file" and str(other.key) in str(err) and "not the private key" in str(err)

    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    err = _error(_inspector(tmp_path, f'cert_file = "{s.cert}"\nkey_file = "{s.key}"\nclient_ca_file = "{garbage}"\n'
                                      'require_client_cert_for = "agents"\nclient_cert_listen = ["127.0.0.1:50052"]\n'))
    assert err.key == "tls.client_ca_file" and str(garbage) in str(err)

    not_pem = tmp_path / "cert.txt"
    not_pem.write_text("hello\n")
    err = _error(_inspector(tmp_path, f'cert_file = "{not_pem}"\nkey_file = "{s.key}"\n'))
    assert err.key == "tls.cert_file" and "no PEM certificate" in str(err)

    s.key.chmod(0o644)
    err = _error(_inspector(tmp_path, f'cert_file = "{s.cert}"\nkey_file = "{s.key}"\n'))
    assert err.key == "tls.key_file" and "readable by others" in str(err)


@pytest.mark.parametrize("listen, tls, key, words", [
    ('"0.0.0.0:50051"', "", "tls.plaintext", "'0.0.0.0:50051' is not loopback"),
    ('":50051"', "", "tls.plaintext", "not loopback"),
    ('"10.0.0.1:50051"', "", "tls.plaintext", "set plaintext = true"),
    ('"127.0.0.1:50051"', "insecure = true\n", "tls.insecure", "plaintext = true"),
    ('"127.0.0.1:50051"', 'require_client_cert_for = "all"\n', "tls.require_client_cert_for", "need TLS"),
])
def test_plaintext_beyond_loopback_must_be_asked_for(tmp_path: Path, listen: str, tls: str, key: str,
                                                     words: str) -> None:
    """Without a certificate only loopback and unix sockets are served in plaintext; any other address needs
    ``plaintext = true``."""
    err = _error(_inspector(tmp_path, tls, listen))
    assert err.key == key and words in str(err), str(err)


async def test_plaintext_true_and_loopback_load(tmp_path: Path) -> None:
    """An explicit ``plaintext = true`` serves any address in clear; loopback and unix sockets need nothing."""
    for listen, tls in (('"0.0.0.0:50051"', "plaintext = true\n"), ('"127.0.0.1:1", "[::1]:2", "unix:/run/x.sock", '
                                                                   '"localhost:3"', "")):
        cfg = load_inspector_config(_inspector(tmp_path, tls, listen))
        await cfg.controller.close()
        assert not cfg.tls.enabled


@pytest.mark.parametrize("extra, key, words", [
    ('require_client_cert_for = "agents"\n', "tls.client_ca_file", "needs the CA"),
    ('client_ca_file = "CA"\nrequire_client_cert_for = "agents"\n', "tls.client_cert_listen", "list the addresses"),
    ('client_ca_file = "CA"\n', "tls.require_client_cert_for", "say whose certificates"),
    ('client_ca_file = "CA"\nrequire_client_cert_for = "agents"\nclient_cert_listen = ["127.0.0.1:50051"]\n',
     "tls.client_cert_listen[0]", "in [inspector] listen too"),
    ('client_ca_file = "CA"\nrequire_client_cert_for = "agents"\nclient_cert_listen = ["127.0.0.1"]\n',
     "tls.client_cert_listen[0]", "expected host:port"),
    ("plaintext = true\n", "tls.plaintext", "contradicts cert_file"),
])
def test_client_certificate_settings_are_consistent(tmp_path: Path, pki: Pki, extra: str, key: str,
                                                    words: str) -> None:
    s = pki.issue("inspector", ("inspector.test",))
    err = _error(_inspector(tmp_path, f'cert_file = "{s.cert}"\nkey_file = "{s.key}"\n'
                                      + extra.replace("CA", str(pki.ca_file))))
    assert err.key == key and words in str(err), str(err)


def test_loopback_is_told_apart() -> None:
    assert all(map(is_local, ("127.0.0.1:1", "127.3.4.5:1", "[::1]:1", "localhost:1", "unix:/x")))
    assert not any(map(is_local, (":1", "0.0.0.0:1", "[::]:1", "10.0.0.1:1", "controller-1:1")))


def test_agent_tls_keys(tmp_path: Path, pki: Pki) -> None:
    """The agent's ca_file/cert_file/key_file are checked at start-up; TLS over a unix socket needs the name the
    inspector's certificate holds."""
    c = pki.issue("c1", ("c1",))
    p = tmp_path / "agent.toml"
    base = '[agent]\nhost_id = "c1"\ninspector = ["{ep}"]\n{tls}[checkers.exec.commands.alive]\nargv = ["true"]\n'
    p.write_text(base.format(ep="127.0.0.1:50051", tls=f'ca_file = "{pki.ca_file}"\ncert_file = "{c.cert}"\n'
                                                        f'key_file = "{c.key}"\n'))
    cfg = load_agent_config(p)
    assert cfg.tls is not None and cfg.tls.cert_file == c.cert
    p.write_text(base.format(ep="127.0.0.1:50051", tls=f'ca_file = "{pki.ca_file}"\ncert_file = "{c.cert}"\n'))
    with pytest.raises(ConfigError) as err:
        load_agent_config(p)
    assert err.value.key == "agent.key_file"
    p.write_text(base.format(ep="127.0.0.1:50051", tls=f'ca_file = "{tmp_path / "none.pem"}"\n'))
    with pytest.raises(ConfigError) as err:
        load_agent_config(p)
    assert err.value.key == "agent.ca_file" and "none.pem" in str(err.value)
    p.write_text(base.format(ep=f"unix:{tmp_path}/a.sock", tls=f'ca_file = "{pki.ca_file}"\n'))
    with pytest.raises(ConfigError) as err:
        load_agent_config(p)
    assert err.value.key == "agent.tls_server_name"


def test_client_credentials_follow_renewed_files(tmp_path: Path, pki: Pki) -> None:
    """A client's TLS context is built once and again only when a file changed: a renewed certificate is used by
    the next connection without a restart."""
    c = pki.issue("c1", ("c1",))
    tls = ClientTls(pki.ca_file, c.cert, c.key)
    first = tls.ssl_context()
    assert tls.ssl_context() is first
    pki.issue("c1", ("c1",), file="c1-new")
    (pki.dir / "c1-new.pem").replace(c.cert)
    (pki.dir / "c1-new.key").replace(c.key)
    assert tls.ssl_context() is not first
    assert channel_credentials(tls) is channel_credentials(tls)


async def test_the_example_tls_table_loads(tmp_path: Path, pki: Pki) -> None:
    """examples/inspector.toml's commented [tls] table, uncommented (without plaintext, its alternative) and with
    real files in place of its paths, is a valid configuration."""
    s = pki.issue("controller-1", ("controller-1",), ("10.0.0.1",))
    text = (Path(__file__).resolve().parents[3] / "examples" / "inspector.toml").read_text()
    block = text.split("# [tls]\n", 1)[1].split("\n\n", 1)[0]
    lines = [line.removeprefix("# ") for line in block.splitlines() if not line.startswith("# plaintext")]
    body = "\n".join(lines).replace("/etc/doctor/tls/controller-1.pem", str(s.cert)).replace(
        "/etc/doctor/tls/controller-1.key", str(s.key)).replace("/etc/doctor/tls/ca.pem", str(pki.ca_file))
    cfg = load_inspector_config(_inspector(tmp_path, body + "\n"))
    try:
        assert cfg.tls.require_client_cert_for == "agents" and cfg.tls.client_cert_listen == ("10.0.0.1:50052",)
    finally:
        await cfg.controller.close()


def test_the_agent_loads_ssl_only_when_its_configuration_asks_for_tls(tmp_path: Path) -> None:
    """agent/__main__.py keeps Python's ssl out unless [agent] names a TLS file (or the file cannot be read: its
    own checks then say why)."""
    from agent.__main__ import wants_tls

    plain, tls = tmp_path / "plain.toml", tmp_path / "tls.toml"
    plain.write_text('[agent]\ninspector = ["127.0.0.1:1"]\n')
    tls.write_text('[agent]\ninspector = ["127.0.0.1:1"]\nca_file = "ca.pem"\n')
    assert wants_tls(["--config", str(plain)]) is False
    assert wants_tls([f"--config={tls}"]) is True and wants_tls(["-c", str(tls), "--check-config"]) is True
    assert wants_tls(["--config", str(tmp_path / "missing.toml")]) is True


def test_check_config_says_how_it_listens(tmp_path: Path, pki: Pki) -> None:
    """``doctor-inspector --check-config`` says whether the listeners serve TLS, and exits 2 naming file and key
    when a certificate file is missing."""
    import subprocess
    import sys

    s = pki.issue("inspector", ("inspector.test",))
    good = _inspector(tmp_path, f'cert_file = "{s.cert}"\nkey_file = "{s.key}"\nclient_ca_file = "{pki.ca_file}"\n'
                                'require_client_cert_for = "all"\n')
    run = [sys.executable, "-m", "inspector.main", "--check-config", "--config"]
    out = subprocess.run([*run, str(good)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "TLS, client certificates: all" in out.stdout, out.stderr
    bad = _inspector(tmp_path, f'cert_file = "{tmp_path / "gone.pem"}"\nkey_file = "{s.key}"\n')
    out = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and f"{bad}: tls.cert_file: {tmp_path / 'gone.pem'} does not exist" in out.stderr
