"""The example configuration files in examples/ stay valid."""

import shutil
from pathlib import Path

import pytest

from agent.config import load_agent_config
from doctor_common.config import ConfigError
from inspector.config import load_inspector_config
from inspector.response.policy import load_policy

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_example_policy_loads() -> None:
    """examples/policy.toml parses and its first rule fences on NIC down."""
    policy = load_policy(EXAMPLES / "policy.toml")
    assert policy.rules[0].fences and policy.rules[2].fences and policy.rules[3].count == 3
    # a steady IPMI warning reaches its owners (fault prediction): nothing aggregates it away
    assert policy.decide("h", "compute.host.ipmi.fan", 3).actions == frozenset({"notify"})


async def test_example_inspector_config_loads(tmp_path: Path) -> None:
    """examples/inspector.toml validates once its token files exist (state redirected to a temp dir)."""
    for name in ("inspector.toml", "inventory.toml", "policy.toml"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    text = (tmp_path / "inspector.toml").read_text()
    text = text.replace("/var/lib/doctor/embedded.sqlite", str(tmp_path / "state.sqlite"))
    text = text.replace("/etc/doctor/tokens/", str(tmp_path) + "/tok-")
    (tmp_path / "inspector.toml").write_text(text)
    inv = (tmp_path / "inventory.toml").read_text().replace("/etc/doctor/bmc/", str(tmp_path) + "/bmc-")
    (tmp_path / "inventory.toml").write_text(inv)
    for name in ("tok-epc-vnfm", "tok-noc", "tok-agent-compute-1", "tok-agent-compute-2",
                 "bmc-compute-1.pass", "bmc-compute-2.pass"):
        (tmp_path / name).write_text(name)
        (tmp_path / name).chmod(0o600)  # as the docs install them
    cfg = load_inspector_config(tmp_path / "inspector.toml")
    try:
        assert cfg.controller.name == "embedded" and cfg.fencing_retry_s == 0.05
        assert cfg.metrics_listen == "127.0.0.1:9464" and cfg.log_format == "text"
        assert len(await cfg.controller.list_hosts()) == 2
        assert cfg.http_events is None, "HTTP events are off unless configured"
    finally:
        await cfg.controller.close()
    # the commented [http_events] block, taken as written
    lines = text.splitlines()
    start = lines.index("# [http_events]")
    end = lines.index("", start)
    (tmp_path / "inspector.toml").write_text("\n".join(
        [*lines[:start], *(line[2:] for line in lines[start:end]), *lines[end:]]))
    http = load_inspector_config(tmp_path / "inspector.toml", build_controller=False).http_events
    assert http is not None and (http.host, http.port, http.max_body_bytes, http.max_connections, http.max_waiting) == \
        ("127.0.0.1", 12345, 1048576, 16, 256) and (http.request_timeout_s, http.idle_timeout_s) == (5.0, 10.0)


def test_example_agent_config_loads(tmp_path: Path) -> None:
    """examples/agent.toml validates once its token file exists."""
    text = (EXAMPLES / "agent.toml").read_text().replace("/etc/doctor/agent.token", str(tmp_path / "t"))
    (tmp_path / "t").write_text("token")
    (tmp_path / "t").chmod(0o600)
    (tmp_path / "agent.toml").write_text(text)
    cfg = load_agent_config(tmp_path / "agent.toml")
    assert cfg.host_id == "compute-1" and len(cfg.endpoints) == 2 and cfg.log_format == "text"
    (tmp_path / "agent.toml").write_text(text.replace('log_format = "text"', 'log_format = "yaml"'))
    with pytest.raises(ConfigError) as err:
        load_agent_config(tmp_path / "agent.toml")
    assert err.value.key == "agent.log_format" and "one of text, json" in str(err.value)
