"""The embedded controller in replicated mode: the inventory file says what exists, etcd holds its state.

With ``[etcd]`` every inspector replica must see the same resource map, so
what the leader changes (forced down, disabled, a server's state or host, a
port's data-plane status) is written to etcd, never to a per-replica file.
Keys under the cluster prefix ``P``::

    P/controller/host/<name>     {"forced_down", "disabled", "disabled_reason", "alive"}
    P/controller/server/<id>     {"host", "state"}
    P/controller/port/<id>       {"host", "data_plane_status"}

Only state is stored: names, zones, switches, owners and BMC credentials stay
in the inventory file (so no secret reaches etcd, and a SIGHUP that edits a
zone takes effect). An absent key means "as the inventory says", so a new
replica never has to seed anything and can never overwrite live state.

Writes are guarded transactions (``doctor_common/etcd_guard.py``): applied
only while the writer's fencing token still names the leader, and only if
each key is still at the revision this process last saw (else it re-reads
and tries again), so a deposed leader's write is refused and two writers
never lose each other's change. Reads come from a cache kept current by a
watch from the revision of the initial range, re-created on any stream error
and re-read after a quiet minute; ``sync()`` reads etcd afresh (a takeover).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aetcd
from aetcd import exceptions as aetcd_exc
from aetcd.utils import prefix_range_end

from controller_adapter.base import (
    BackendUnavailable,
    ControllerError,
    Host,
    HostStatus,
    NotFound,
    Port,
    Server,
    ServerState,
)
from controller_adapter.embedded import load_inventory
from doctor_common.config import Section
from doctor_common.etcd_guard import TRANSIENT, EtcdUnavailable, Guard, NotLeader

log = logging.getLogger("doctor.controller.embedded")

KINDS = ("host", "server", "port")
CHUNK = 50          # entities per transaction: 2 ops each stays under etcd's default --max-txn-ops (128)
QUIET_RESYNC_S = 60.0
CONFLICT_RETRIES = 5


class ControllerNotLeader(ControllerError, NotLeader):
    """A write refused by the fencing token: this replica no longer leads (both trees, so callers that stop on
    ``NotLeader`` stop, and those that answer a ``ControllerError`` answer it)."""


@dataclasses.dataclass
class _Entry:
    revision: int           # the key's mod_revision (0: absent, the inventory's state)
    state: dict[str, Any]


class EtcdEmbeddedController:
    name = "embedded"

    def __init__(self, inventory: Path) -> None:
        self.inventory = inventory
        self._static: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
        self._load_static(*load_inventory(inventory))
        self._cache: dict[str, dict[str, _Entry]] = {k: {} for k in KINDS}
        self._client: aetcd.Client | None = None
        self._guard: Guard | None = None
        self._base = b""
        self._timeout_s = 2.5
        self._deadline_s = 6.0
        self._revision = 0
        self._ready: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._write = asyncio.Lock()

    @classmethod
    def from_config(cls, cfg: Section) -> "EtcdEmbeddedController":
        inventory = cfg.path("inventory")
        if "state" in cfg.data:
            raise cfg.error("state", "with [etcd] the embedded controller keeps its state in etcd, one truth for "
                                     "every replica; remove this key")
        cfg.done()
        return cls(inventory)

    def bind(self, client: aetcd.Client, prefix: str, guard: Guard | None, *, call_timeout_s: float = 2.5,
             write_deadline_s: float = 6.0) -> None:
        """Where the state lives and who may write it (``guard``: the election; None: read only)."""
        self._client, self._guard = client, guard
        self._base = (prefix.rstrip("/") + "/controller/").encode()
        self._timeout_s, self._deadline_s = call_timeout_s, write_deadline_s

    def _load_static(self, hosts: list[Host], servers: list[Server], ports: list[Port]) -> None:
        self._static = {"host": {h.name: h for h in hosts}, "server": {s.id: s for s in servers},
                        "port": {p.id: p for p in ports}}

    async def reload(self) -> tuple[int, int, int]:
        """Read the inventory again (SIGHUP): new entries appear, edited zones and BMCs take effect; state stays."""
        hosts, servers, ports = await asyncio.to_thread(load_inventory, self.inventory)
        self._load_static(hosts, servers, ports)
        return len(hosts), len(servers), len(ports)

    # -- the cache ---------------------------------------------------------------------------

    def _key(self, kind: str, ident: str) -> bytes:
        return self._base + f"{kind}/{ident}".encode()

    def _split(self, key: bytes) -> tuple[str, str] | None:
        kind, _, ident = key[len(self._base):].decode(errors="replace").partition("/")
        return (kind, ident) if kind in KINDS and ident else None

    def _apply(self, key: bytes, value: bytes | None, revision: int) -> None:
        where = self._split(key)
        if where is None:
            return
        kind, ident = where
        current = self._cache[kind].get(ident)
        if current is not None and current.revision >= revision:
            return  # our own write, already applied from its transaction's answer
        if value is None:
            self._cache[kind].pop(ident, None)
            return
        try:
            state = json.loads(value)
        except ValueError:
            log.error("ignoring %r: not JSON", key)
            return
        self._cache[kind][ident] = _Entry(revision, state if isinstance(state, dict) else {})

    async def sync(self) -> None:
        """Read every state key afresh (a takeover reads what the last leader left, whatever the watch saw).
        Merged key by key: a watch event newer than this read is kept."""
        client = self._require()
        try:  # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation (gh-86296)
            async with asyncio.timeout(self._timeout_s):
                r = await client.get_prefix(self._base)
        except TRANSIENT as exc:
            raise BackendUnavailable(f"etcd: cannot read the controller's state: {exc}") from exc
        at = r.header.revision
        seen: set[tuple[str, str]] = set()
        for kv in r:
            where = self._split(kv.key)
            if where is not None:
                seen.add(where)
                self._apply(kv.key, kv.value, kv.mod_revision)
        for kind, entries in self._cache.items():
            for ident in [i for i, e in entries.items() if (kind, i) not in seen and e.revision <= at]:
                del entries[ident]  # deleted in etcd
        self._revision = max(self._revision, at)

    def _require(self) -> aetcd.Client:
        if self._client is None:
            raise ControllerError("the embedded controller has no etcd bound (bind() before use)")
        return self._client

    async def _current(self) -> None:
        """The first call loads the state and starts the watch; later calls read the cache."""
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
            try:
                await self.sync()
            except BaseException as exc:
                self._ready.set_exception(exc)
                ready, self._ready = self._ready, None
                ready.exception()  # retrieved: the next call tries again
                raise
            self._ready.set_result(None)
            self._tasks = [asyncio.create_task(self._watch(), name="embedded-controller-watch"),
                           asyncio.create_task(self._resync(), name="embedded-controller-resync")]
        await asyncio.shield(self._ready)

    async def _watch(self) -> None:
        client = self._require()
        delay = 0.05
        while True:
            try:
                watch = await client.watch_prefix(self._base, start_revision=self._revision + 1)
                try:
                    async for ev in watch:
                        self._apply(ev.kv.key, None if ev.kind == "DELETE" else ev.kv.value, ev.kv.mod_revision)
                        self._revision = max(self._revision, ev.kv.mod_revision)
                        delay = 0.05
                finally:
                    await watch.cancel()
            except asyncio.CancelledError:
                raise
            except aetcd_exc.RevisionCompactedError:
                pass  # compacted past us: read everything again below
            except Exception as exc:  # noqa: BLE001 - aetcd watches die on any stream error and never resume
                log.warning("the controller state's watch failed (%s); re-reading in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            try:
                await self.sync()
            except BackendUnavailable:
                await asyncio.sleep(delay)

    async def _resync(self) -> None:
        """A watch that went quiet without an error (a stream stuck behind a proxy) is caught up here."""
        while True:
            await asyncio.sleep(QUIET_RESYNC_S)
            try:
                await self.sync()
            except BackendUnavailable as exc:
                log.warning("could not re-read the controller's state: %s", exc)

    # -- effective entities ------------------------------------------------------------------

    def _host(self, name: str) -> Host:
        h = self._static["host"].get(name)
        if h is None:
            raise NotFound(f"host {name!r} is not in the inventory")
        e = self._cache["host"].get(name)
        if e is None:
            return h
        s = e.state
        return dataclasses.replace(h, forced_down=bool(s.get("forced_down", False)),
                                   disabled=bool(s.get("disabled", False)),
                                   disabled_reason=str(s.get("disabled_reason", "")), alive=bool(s.get("alive", True)))

    def _server(self, ident: str) -> Server:
        srv = self._static["server"].get(ident)
        if srv is None:
            raise NotFound(f"server {ident!r} does not exist")
        e = self._cache["server"].get(ident)
        if e is None:
            return srv
        try:
            state = ServerState(e.state.get("state", srv.state.value))
        except ValueError:
            state = srv.state
        return dataclasses.replace(srv, host=str(e.state.get("host", srv.host)), state=state)

    def _port(self, ident: str) -> Port:
        p = self._static["port"].get(ident)
        if p is None:
            raise NotFound(f"port {ident!r} does not exist")
        e = self._cache["port"].get(ident)
        if e is None:
            return p
        dps = e.state.get("data_plane_status")
        return dataclasses.replace(p, host=str(e.state.get("host", p.host)), data_plane_status=dps)

    def _servers(self) -> list[Server]:
        return [self._server(i) for i in sorted(self._static["server"])]

    def _ports(self) -> list[Port]:
        return [self._port(i) for i in sorted(self._static["port"])]

    # -- reads -------------------------------------------------------------------------------

    async def list_hosts(self) -> list[Host]:
        await self._current()
        return [self._host(n) for n in sorted(self._static["host"])]

    async def get_host(self, host: str) -> Host:
        await self._current()
        return self._host(host)

    async def servers_on_host(self, host: str) -> list[Server]:
        await self._current()
        return [s for s in self._servers() if s.host == host]

    async def list_servers(self, project_id: str | None = None) -> list[Server]:
        await self._current()
        return [s for s in self._servers() if project_id is None or s.project_id == project_id]

    async def ports_on_host(self, host: str) -> list[Port]:
        await self._current()
        return [p for p in self._ports() if p.host == host]

    async def list_ports(self) -> list[Port]:
        await self._current()
        return [p for p in self._ports() if p.host]

    async def server_host_status(self, server_id: str) -> tuple[str, HostStatus]:
        await self._current()
        srv = self._server(server_id)
        if srv.host not in self._static["host"]:
            return srv.host, HostStatus.NONE
        return srv.host, self._host(srv.host).status

    async def host_is_empty(self, host: str) -> bool:
        await self._current()
        self._host(host)
        return not any(s.host == host for s in self._servers())

    # -- writes ------------------------------------------------------------------------------

    @staticmethod
    def _host_state(h: Host) -> dict[str, Any]:
        return {"forced_down": h.forced_down, "disabled": h.disabled, "disabled_reason": h.disabled_reason,
                "alive": h.alive}

    async def _write_many(self, changes: Callable[[], list[tuple[str, str, dict[str, Any]]]]) -> None:
        """Apply ``changes()`` — (kind, id, new state) computed from the cache — in one guarded transaction
        comparing each key's revision with the cache's. On a conflict (someone wrote meanwhile) re-read and
        compute again; a write whose outcome etcd left unknown is retried the same way until the deadline."""
        client = self._require()
        if self._guard is None:
            raise ControllerNotLeader("this replica's controller is read-only: only the leader writes")
        await self._current()
        t = client.transactions
        deadline = time.monotonic() + self._deadline_s
        delay, conflicts = 0.02, 0
        async with self._write:
            while True:
                todo = changes()
                if not todo:
                    return
                keys = [self._key(kind, ident) for kind, ident, _ in todo]
                compare = []
                for (kind, ident, _), key in zip(todo, keys):
                    seen = self._cache[kind].get(ident)
                    compare.append(t.mod(key) == seen.revision if seen else t.version(key) == 0)
                success = [op for (_, _, state), key in zip(todo, keys)
                           for op in (t.put(key, json.dumps(state, sort_keys=True).encode()), t.get(key))]
                try:
                    ok, resp = await self._guard.txn(compare, success, [t.get(k) for k in keys])
                except NotLeader as exc:
                    raise ControllerNotLeader(f"not written, this replica no longer leads: {exc}") from exc
                except EtcdUnavailable as exc:
                    if time.monotonic() + delay >= deadline:
                        raise BackendUnavailable(f"etcd: {exc}") from exc
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    await self._refresh(keys)
                    continue
                got = [r.response_range.kvs for r in (resp[1::2] if ok else resp)]
                for key, kvs in zip(keys, got):
                    if kvs:
                        self._apply(key, kvs[0].value, kvs[0].mod_revision)
                    else:
                        self._apply(key, None, 1 << 62)
                if ok:
                    return
                conflicts += 1
                if conflicts > CONFLICT_RETRIES:
                    raise ControllerError(f"etcd: {len(keys)} controller keys kept changing under this writer")

    async def _write_each(self, ids: list[str], failed: dict[str, ControllerError],
                          change: Callable[[str], tuple[str, str, dict[str, Any]] | None]) -> dict[str, ControllerError]:
        """``change(id)`` (None: already so) for every id not in ``failed``, in transactions of CHUNK entities;
        a chunk etcd refuses is reported by id (a lost leadership is raised)."""
        known = [i for i in dict.fromkeys(ids) if i not in failed]
        for start in range(0, len(known), CHUNK):
            chunk = known[start:start + CHUNK]

            def changes(chunk: list[str] = chunk) -> list[tuple[str, str, dict[str, Any]]]:
                return [c for c in map(change, chunk) if c is not None]
            try:
                await self._write_many(changes)
            except ControllerNotLeader:
                raise
            except ControllerError as exc:
                failed.update({i: exc for i in chunk})
        return failed

    async def _refresh(self, keys: Iterable[bytes]) -> None:
        """After an unknown outcome: the keys' current values (so the next compare is against the truth)."""
        client = self._require()
        for key in keys:
            try:
                async with asyncio.timeout(self._timeout_s):
                    kv = await client.get(key)
            except TRANSIENT:
                return
            where = self._split(key)
            if where is None:
                continue
            if kv is None:
                self._cache[where[0]].pop(where[1], None)
            else:
                self._apply(key, kv.value, kv.mod_revision)

    async def _update_host(self, host: str, **fields: Any) -> None:
        await self._current()
        self._host(host)  # NotFound before any write

        def change() -> list[tuple[str, str, dict[str, Any]]]:
            new = self._host_state(dataclasses.replace(self._host(host), **fields))
            return [] if new == self._host_state(self._host(host)) else [("host", host, new)]
        await self._write_many(change)

    async def force_down(self, host: str, down: bool = True) -> None:
        await self._update_host(host, forced_down=down)

    async def set_disabled(self, host: str, disabled: bool, reason: str = "") -> None:
        await self._update_host(host, disabled=disabled, disabled_reason=reason if disabled else "")

    async def set_alive(self, host: str, alive: bool) -> None:
        """Whether the host's compute service reports (the embedded stand-in for Nova's service heartbeat)."""
        await self._update_host(host, alive=alive)

    async def reset_servers_state(self, server_ids: list[str], state: ServerState) -> dict[str, ControllerError]:
        await self._current()
        failed: dict[str, ControllerError] = {
            sid: NotFound(f"server {sid!r} does not exist") for sid in server_ids if sid not in self._static["server"]}
        def change(sid: str) -> tuple[str, str, dict[str, Any]] | None:
            srv = self._server(sid)
            return ("server", sid, {"host": srv.host, "state": state.value}) if srv.state is not state else None
        return await self._write_each(server_ids, failed, change)

    async def set_servers_running(self, server_ids: list[str], running: bool) -> dict[str, ControllerError]:
        frm, to = (ServerState.STOPPED, ServerState.ACTIVE) if running else (ServerState.ACTIVE, ServerState.STOPPED)
        await self._current()
        failed: dict[str, ControllerError] = {
            sid: NotFound(f"server {sid!r} does not exist") for sid in server_ids if sid not in self._static["server"]}
        for sid in dict.fromkeys(server_ids):
            if sid not in failed and self._server(sid).state not in (frm, to):
                failed[sid] = ControllerError(f"server {sid!r} is {self._server(sid).state.value}: it cannot be "
                                              f"{'started' if running else 'shut down'}")
        def change(sid: str) -> tuple[str, str, dict[str, Any]] | None:
            srv = self._server(sid)
            return ("server", sid, {"host": srv.host, "state": to.value}) if srv.state is frm else None
        return await self._write_each(server_ids, failed, change)

    async def set_ports_data_plane_status(self, port_ids: list[str], status: str) -> dict[str, ControllerError]:
        if status not in ("ACTIVE", "DOWN"):
            raise ControllerError(f"data_plane_status must be ACTIVE or DOWN, not {status!r}")
        await self._current()
        failed: dict[str, ControllerError] = {
            pid: NotFound(f"port {pid!r} does not exist") for pid in port_ids if pid not in self._static["port"]}
        def change(pid: str) -> tuple[str, str, dict[str, Any]] | None:
            port = self._port(pid)
            return ("port", pid, {"host": port.host, "data_plane_status": status}) \
                if port.data_plane_status != status else None
        return await self._write_each(port_ids, failed, change)

    def _usable(self, name: str) -> bool:
        h = self._host(name)
        return not h.forced_down and not h.disabled and h.alive

    async def migrate_server(self, server_id: str, target_host: str | None = None, live: bool = True,
                             wait: bool = False) -> None:  # done when it returns: nothing to wait for
        await self._current()
        source = self._server(server_id).host

        def change() -> list[tuple[str, str, dict[str, Any]]]:
            srv = self._server(server_id)
            if srv.host != source:
                return []  # moved already: an earlier try of this very call was applied (outcome was unknown)
            if target_host is not None:
                if target_host not in self._static["host"] or target_host == srv.host or not self._usable(target_host):
                    raise ControllerError(f"host {target_host!r} cannot take server {server_id!r}")
                target = target_host
            else:
                load: dict[str, int] = {n: 0 for n in self._static["host"] if n != srv.host and self._usable(n)}
                if not load:
                    raise ControllerError(f"no valid host to move server {server_id!r} to")
                for s in self._servers():
                    if s.host in load:
                        load[s.host] += 1
                target = min(sorted(load), key=lambda n: load[n])  # the least loaded, as a scheduler would
            out = [("server", server_id, {"host": target, "state": srv.state.value}),
                   # the target's own key is compared too: a host disabled meanwhile refuses the move
                   ("host", target, self._host_state(self._host(target)))]
            out += [("port", p.id, {"host": target, "data_plane_status": p.data_plane_status})
                    for p in self._ports() if p.device_id == server_id]
            return out
        await self._write_many(change)

    async def settle_migrations(self, host: str) -> int:
        return 0  # its moves are done when migrate_server returns

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            # bounded: a cancel that lands while aetcd creates the watch can leave it waiting on the stream,
            # which the client's close then ends
            _, stuck = await asyncio.wait(self._tasks, timeout=1.0)
            if stuck:
                log.debug("the controller state's watch did not stop within 1 s; the client's close ends it")
        self._tasks = []
        self._ready = None

