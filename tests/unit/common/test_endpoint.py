"""Inspector endpoints: what the agent accepts, and a bad one fails at start naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_agent_config
from doctor_common.config import ConfigError
from doctor_common.endpoint import parse_endpoint


@pytest.mark.parametrize("target, parsed", [
    ("127.0.0.1:50051", ("127.0.0.1", 50051, None)),
    ("inspector.example:7000", ("inspector.example", 7000, None)),
    ("dns:///inspector.example:7000", ("inspector.example", 7000, None)),
    ("[::1]:50051", ("::1", 50051, None)),
    ("unix:/run/doctor/agent.sock", (None, None, "/run/doctor/agent.sock")),
    ("unix:///run/doctor/agent.sock", (None, None, "/run/doctor/agent.sock")),
])
def test_endpoints_the_agent_understands(target: str, parsed: tuple[object, ...]) -> None:
    assert parse_endpoint(target) == parsed


@pytest.mark.parametrize("target, says", [
    ("inspector.example", "expected host:port"),
    ("::1:50051", "expected host:port"),
    ("[not-v6]:1", "is not an IPv6 address"),
    ("host:http", "'http' is not a number from 1 to 65535"),
    ("host:70000", "'70000' is not a number"),
    ("unix:", "unix: needs an absolute socket path"),
    ("unix://run/x.sock", "unix: needs an absolute socket path"),
    ("[::1]x:80", "expected host:port"),
    ("host:+80", "port '\\+80' is not a number"),
    ("a..b:50051", "'a..b' is not a valid host name"),
    ("ipv4:10.0.0.1:50051", "gRPC's ipv4: form is not supported"),
    ("unix-abstract:doctor", "gRPC's unix-abstract: form is not supported"),
])
def test_bad_endpoints_say_what_is_expected(target: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_endpoint(target)


def test_a_bad_endpoint_in_the_config_names_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[agent]\nhost_id = "h1"\ninspector = ["10.0.0.1:50051", "10.0.0.2"]\n[checkers.nic]\n'
                   'interfaces = ["lo"]\n')
    with pytest.raises(ConfigError) as err:
        load_agent_config(cfg)
    assert str(err.value).startswith(f"{cfg}: agent.inspector: endpoint '10.0.0.2': expected host:port")


@pytest.mark.parametrize("token", ["s3cr\u00e9t", "two words ", "tab\tinside"])
def test_a_token_that_cannot_be_a_header_names_the_key(tmp_path: Path, token: str) -> None:
    """The bearer token travels as an HTTP/2 header: a non-printable or non-ASCII one fails at start."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nhost_id = "h1"\ninspector = ["10.0.0.1:50051"]\ntoken = "{token}"\n'
                   '[checkers.nic]\ninterfaces = ["lo"]\n')
    with pytest.raises(ConfigError) as err:
        load_agent_config(cfg)
    assert err.value.key == "agent.token" and "printable ASCII" in str(err.value)
    assert token not in str(err.value)
