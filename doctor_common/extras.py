"""The distribution's optional parts (pyproject.toml extras, docs/install.md) and what to say when one is missing.

A compute node installs only the agent's dependencies; a feature that needs an extra (the OpenStack backend,
consumers' Keystone tokens) checks for it when its configuration is read, so a missing package is a
configuration error naming the key and the command that fixes it, not an ImportError at the first fault.
"""

from __future__ import annotations

from importlib.util import find_spec


def missing(extra: str, modules: dict[str, str]) -> str | None:
    """None when every module (import name -> distribution name) is importable, else what to install."""
    absent = [dist for name, dist in modules.items() if find_spec(name) is None]
    if not absent:
        return None
    return f"needs {', '.join(absent)}, not installed here: pip install 'nfv-doctor[{extra}]'"


OPENSTACK = {"openstack": "openstacksdk", "keystoneauth1": "keystoneauth1"}
INSPECTOR = {"grpc": "grpcio", "grpc_health": "grpcio-health-checking", "grpc_reflection": "grpcio-reflection",
             "aetcd": "aetcd", "aiohttp": "aiohttp", "prometheus_client": "prometheus-client"}
