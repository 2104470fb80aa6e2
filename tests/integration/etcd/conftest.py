"""Fixtures for the etcd integration tests: real etcd clusters on loopback and per-test key prefixes."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from inspector.ha.etcd_config import EtcdClient, EtcdConfig, connect
from tests.conftest import _unavailable, etcd_binary
from tests.etcd_cluster import EtcdCluster


@pytest.fixture(scope="module")
def etcd1() -> Iterator[EtcdCluster]:
    """One fast-timing member shared by a module's tests (each test has its own prefix)."""
    if etcd_binary() is None:
        _unavailable("needs Debian's etcd-server (make setup installs it)")
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture
def etcd3(needs_etcd: str) -> Iterator[EtcdCluster]:
    """Three fast-timing members of the test's own, for killing members."""
    with EtcdCluster(3) as cluster:
        yield cluster


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:60]
    return f"/nfv-doctor-test/{name}-{uuid.uuid4().hex[:8]}"


def make_config(cluster: EtcdCluster, prefix: str, **overrides: Any) -> EtcdConfig:
    """Test timing: TTL 1 s (fast etcd grants it), short call deadlines."""
    opts: dict[str, Any] = dict(endpoints=tuple(cluster.endpoints), prefix=prefix, lease_ttl_s=1,
                                step_down_margin_s=0.2, call_timeout_s=1.0, write_deadline_s=4.0)
    opts.update(overrides)
    return EtcdConfig(**opts)


@pytest.fixture
async def admin(etcd1: EtcdCluster, prefix: str) -> AsyncIterator[EtcdClient]:
    """A plain client on etcd1 for inspecting the keyspace; deletes the test's prefix afterwards."""
    async with connect(make_config(etcd1, prefix)) as client:
        yield client
        await client.delete_prefix(prefix.encode())


async def keys_under(client: EtcdClient, prefix: str) -> list[str]:
    r = await client.get_prefix(prefix.encode() + b"/")
    return sorted(kv.key.decode()[len(prefix) + 1:] for kv in r)
