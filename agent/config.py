"""The agent's TOML configuration, validated at start-up (errors name the file and key)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doctor_common.endpoint import parse_endpoint
from doctor_common.config import ConfigError, Section
from doctor_common.logs import FORMATS
from doctor_common.tls import ClientTls


@dataclass(frozen=True)
class AgentConfig:
    host_id: str
    endpoints: tuple[str, ...]
    token: str | None = field(default=None, repr=False)
    heartbeat_interval_s: float = 0.5
    max_backoff_s: float = 2.0
    keepalive_ms: int = 1000
    health_interval_s: float = 30.0
    log_level: str = "info"
    log_format: str = "text"         # "json": one JSON object per line (doctor_common/logs.py)
    checkers: tuple[Any, ...] = ()  # built Checker instances
    tls: ClientTls | None = None    # ca_file, cert_file, key_file, tls_server_name (docs/tls.md); None: plaintext
    path: str = ""


def load_agent_config(path: Path | str) -> AgentConfig:
    from agent.checkers import checker_class

    root = Section.load(path)
    a = root.section("agent", required=True)
    host_id = a.str("host_id", "") or socket.gethostname()
    endpoints = a.str_list("inspector")
    if not endpoints:
        raise a.error("inspector", "list at least one inspector endpoint (host:port or unix:/path)")
    token = a.secret("token")
    if token is not None and not (token.isascii() and token.isprintable() and token.strip() == token and token):
        raise a.error("token_file" if a.data.get("token") is None else "token",
                      "the token must be printable ASCII (it travels as an HTTP/2 header)")
    for endpoint in endpoints:
        try:
            parse_endpoint(endpoint)
        except ValueError as exc:
            raise a.error("inspector", str(exc)) from None
    tls = ClientTls.from_section(a)
    if tls is not None and tls.server_name is None and any(e.startswith("unix:") for e in endpoints):
        raise a.error("tls_server_name", "TLS over a unix socket: give the name the inspector's certificate holds "
                                         "(a socket path is no host name to check it against)")
    cfg = dict(
        tls=tls,
        host_id=host_id,
        endpoints=tuple(endpoints),
        token=token,
        heartbeat_interval_s=a.int("heartbeat_interval_ms", 500, min=10, max=60000) / 1000,
        max_backoff_s=a.float("max_backoff_s", 2.0, min=0.1),
        keepalive_ms=a.int("keepalive_ms", 1000, min=50, max=600_000),
        health_interval_s=a.float("health_interval_s", 30.0, min=0.1),
        log_level=a.choice("log_level", ("debug", "info", "warning", "error"), "info"),
        log_format=a.choice("log_format", FORMATS, "text"),
    )
    a.done()
    checkers = []
    for name, section in root.table("checkers").items():
        try:
            cls = checker_class(name)
        except LookupError as exc:
            raise ConfigError(path, f"checkers.{name}", str(exc)) from None
        except Exception as exc:  # a plug-in that cannot even be imported (missing library)
            raise ConfigError(path, f"checkers.{name}", f"cannot load the checker: {type(exc).__name__}: {exc}") from None
        try:
            checkers.append(cls.from_config(section, host_id))
        except ValueError as exc:
            raise ConfigError(path, f"checkers.{name}", str(exc)) from None
    if not checkers:
        raise ConfigError(path, "checkers", "configure at least one checker (e.g. [checkers.nic])")
    root.done()
    return AgentConfig(**cfg, checkers=tuple(checkers), path=str(path))
