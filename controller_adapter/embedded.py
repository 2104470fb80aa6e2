"""The embedded controller: a real resource map from an inventory file, persisted in SQLite.

For everyone without OpenStack: hosts (with their BMCs), servers with owners
and ports come from a TOML inventory; their state (forced down, disabled,
server state, port data-plane status) lives in SQLite, so a restart keeps it.
One thread owns the connection; calls are queued to it, so the event loop
never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from controller_adapter.base import (
    Bmc,
    ControllerError,
    Host,
    HostStatus,
    NotFound,
    Port,
    Server,
    ServerState,
)
from doctor_common.config import ConfigError, Section

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
    name TEXT PRIMARY KEY, zone TEXT NOT NULL DEFAULT '', bmc TEXT,
    forced_down INTEGER NOT NULL DEFAULT 0, disabled INTEGER NOT NULL DEFAULT 0,
    disabled_reason TEXT NOT NULL DEFAULT '', alive INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS servers (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, host TEXT NOT NULL, project_id TEXT NOT NULL,
    user_id TEXT NOT NULL DEFAULT '', state TEXT NOT NULL DEFAULT 'active');
CREATE INDEX IF NOT EXISTS servers_host ON servers(host);
CREATE INDEX IF NOT EXISTS servers_project ON servers(project_id);
CREATE TABLE IF NOT EXISTS ports (
    id TEXT PRIMARY KEY, host TEXT NOT NULL, project_id TEXT NOT NULL,
    device_id TEXT NOT NULL DEFAULT '', data_plane_status TEXT);
CREATE INDEX IF NOT EXISTS ports_host ON ports(host);
"""


def load_inventory(path: Path) -> tuple[list[Host], list[Server], list[Port]]:
    """Parse an inventory file; errors name the file and the key."""
    root = Section.load(path)
    hosts: list[Host] = []
    for h in root.sections("hosts"):
        bmc = None
        b = h.section("bmc")
        if b.data:
            bmc = Bmc(
                address=b.str("address"),
                port=b.int("port", 623, min=1, max=65535),
                username=b.str("username", "admin"),
                password=b.secret("password") or "",
            )
            b.done()
        hosts.append(Host(name=h.str("name"), zone=h.str("zone", ""), switch=h.str("switch", ""), bmc=bmc))
        h.done()
    names = {h.name for h in hosts}
    if len(names) != len(hosts):
        raise ConfigError(path, "hosts", "host names must be unique")
    servers: list[Server] = []
    for s in root.sections("servers"):
        server = Server(
            id=s.str("id"), name=s.str("name", ""), host=s.str("host"),
            project_id=s.str("project_id"), user_id=s.str("user_id", ""), domain=s.str("domain", ""),
        )
        if server.host not in names:
            raise s.error("host", f"unknown host {server.host!r}")
        s.done()
        servers.append(server)
    ports: list[Port] = []
    for p in root.sections("ports"):
        port = Port(id=p.str("id"), host=p.str("host"), project_id=p.str("project_id"), device_id=p.str("device_id", ""))
        if port.host not in names:
            raise p.error("host", f"unknown host {port.host!r}")
        p.done()
        ports.append(port)
    root.done()
    return hosts, servers, ports


class EmbeddedController:
    name = "embedded"

    def __init__(self, inventory: Path, state: Path | None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedded-ctl")
        self.inventory = inventory
        hosts, servers, ports = load_inventory(inventory)
        self._db = self._pool.submit(self._open, str(state) if state else ":memory:", hosts, servers, ports).result()

    async def reload(self) -> tuple[int, int, int]:
        """Read the inventory file again (a SIGHUP): what is new is added, state already kept stays; a file with
        a mistake raises ConfigError (naming it) and changes nothing. Returns (hosts, servers, ports) read."""
        hosts, servers, ports = await asyncio.to_thread(load_inventory, self.inventory)
        await self._run(self._add, self._db, hosts, servers, ports)
        return len(hosts), len(servers), len(ports)

    @classmethod
    def from_config(cls, cfg: Section) -> "EmbeddedController":
        inventory = cfg.path("inventory")
        state = cfg.path("state", None)
        cfg.done()
        return cls(inventory, state)

    @staticmethod
    def _open(path: str, hosts: list[Host], servers: list[Server], ports: list[Port]) -> sqlite3.Connection:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        if "switch" not in {r[1] for r in db.execute("PRAGMA table_info(hosts)")}:  # a state file from before
            db.execute("ALTER TABLE hosts ADD COLUMN switch TEXT NOT NULL DEFAULT ''")
        if "domain" not in {r[1] for r in db.execute("PRAGMA table_info(servers)")}:
            db.execute("ALTER TABLE servers ADD COLUMN domain TEXT NOT NULL DEFAULT ''")
        EmbeddedController._add(db, hosts, servers, ports)
        return db

    @staticmethod
    def _add(db: sqlite3.Connection, hosts: list[Host], servers: list[Server], ports: list[Port]) -> None:
        with db:
            db.execute("BEGIN")
            # the inventory adds what is new; state already persisted is kept
            for h in hosts:
                bmc = json.dumps(h.bmc.__dict__) if h.bmc else None
                db.execute("INSERT INTO hosts(name, zone, switch, bmc) VALUES (?,?,?,?) ON CONFLICT(name) DO UPDATE "
                           "SET zone=excluded.zone, switch=excluded.switch, bmc=excluded.bmc",
                           (h.name, h.zone, h.switch, bmc))
            db.executemany("INSERT INTO servers(id, name, host, project_id, user_id, domain) VALUES (?,?,?,?,?,?) "
                           "ON CONFLICT(id) DO UPDATE SET domain=excluded.domain",
                           [(s.id, s.name, s.host, s.project_id, s.user_id, s.domain) for s in servers])
            db.executemany("INSERT OR IGNORE INTO ports(id, host, project_id, device_id) VALUES (?,?,?,?)",
                           [(p.id, p.host, p.project_id, p.device_id) for p in ports])

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- reads -----------------------------------------------------------------------------

    @staticmethod
    def _host(row: tuple[Any, ...]) -> Host:
        name, zone, bmc, forced_down, disabled, reason, alive, switch = row
        return Host(name=name, zone=zone, bmc=Bmc(**json.loads(bmc)) if bmc else None, forced_down=bool(forced_down),
                    disabled=bool(disabled), disabled_reason=reason, alive=bool(alive), switch=switch)

    @staticmethod
    def _server(row: tuple[Any, ...]) -> Server:
        return Server(id=row[0], name=row[1], host=row[2], project_id=row[3], user_id=row[4], state=ServerState(row[5]),
                      domain=row[6])

    _HOST_COLS = "name, zone, bmc, forced_down, disabled, disabled_reason, alive, switch"
    _SERVER_COLS = "id, name, host, project_id, user_id, state, domain"

    # rows become objects in the controller's thread too: thousands of them would stall the event loop
    async def list_hosts(self) -> list[Host]:
        return await self._run(lambda: [self._host(r) for r in self._db.execute(
            f"SELECT {self._HOST_COLS} FROM hosts ORDER BY name")])

    async def get_host(self, host: str) -> Host:
        row = await self._run(lambda: self._db.execute(f"SELECT {self._HOST_COLS} FROM hosts WHERE name=?", (host,)).fetchone())
        if row is None:
            raise NotFound(f"host {host!r} is not in the inventory")
        return self._host(row)

    async def servers_on_host(self, host: str) -> list[Server]:
        rows = await self._run(lambda: self._db.execute(
            f"SELECT {self._SERVER_COLS} FROM servers WHERE host=? ORDER BY id", (host,)).fetchall())
        return [self._server(r) for r in rows]

    async def list_servers(self, project_id: str | None = None) -> list[Server]:
        def q() -> list[Server]:
            if project_id is None:
                rows = self._db.execute(f"SELECT {self._SERVER_COLS} FROM servers ORDER BY id")
            else:
                rows = self._db.execute(f"SELECT {self._SERVER_COLS} FROM servers WHERE project_id=? ORDER BY id",
                                        (project_id,))
            return [self._server(r) for r in rows]
        return await self._run(q)

    async def ports_on_host(self, host: str) -> list[Port]:
        return await self._run(lambda: [Port(id=r[0], host=r[1], project_id=r[2], device_id=r[3], data_plane_status=r[4])
                                        for r in self._db.execute("SELECT id, host, project_id, device_id, data_plane_status "
                                                                  "FROM ports WHERE host=? ORDER BY id", (host,))])

    async def list_ports(self) -> list[Port]:
        return await self._run(lambda: [Port(id=r[0], host=r[1], project_id=r[2], device_id=r[3], data_plane_status=r[4])
                                        for r in self._db.execute("SELECT id, host, project_id, device_id, data_plane_status "
                                                                  "FROM ports WHERE host != '' ORDER BY id")])

    async def server_host_status(self, server_id: str) -> tuple[str, HostStatus]:
        def q() -> Any:
            return self._db.execute(f"SELECT s.host, {', '.join('h.' + c.strip() for c in self._HOST_COLS.split(','))} "
                                    "FROM servers s LEFT JOIN hosts h ON h.name = s.host WHERE s.id=?", (server_id,)).fetchone()
        row = await self._run(q)
        if row is None:
            raise NotFound(f"server {server_id!r} does not exist")
        if row[1] is None:
            return row[0], HostStatus.NONE
        return row[0], self._host(row[1:]).status

    async def host_is_empty(self, host: str) -> bool:
        await self.get_host(host)
        n = await self._run(lambda: self._db.execute("SELECT count(*) FROM servers WHERE host=?", (host,)).fetchone()[0])
        return n == 0

    # -- writes ----------------------------------------------------------------------------

    def _update_host(self, host: str, sql: str, args: tuple[Any, ...]) -> None:
        cur = self._db.execute(f"UPDATE hosts SET {sql} WHERE name=?", (*args, host))
        if cur.rowcount == 0:
            raise NotFound(f"host {host!r} is not in the inventory")

    async def force_down(self, host: str, down: bool = True) -> None:
        await self._run(self._update_host, host, "forced_down=?", (int(down),))

    async def set_disabled(self, host: str, disabled: bool, reason: str = "") -> None:
        await self._run(self._update_host, host, "disabled=?, disabled_reason=?", (int(disabled), reason if disabled else ""))

    async def set_alive(self, host: str, alive: bool) -> None:
        """Whether the host's compute service reports (the embedded stand-in for Nova's service heartbeat)."""
        await self._run(self._update_host, host, "alive=?", (int(alive),))

    async def reset_servers_state(self, server_ids: list[str], state: ServerState) -> dict[str, ControllerError]:
        def tx() -> dict[str, ControllerError]:
            failed: dict[str, ControllerError] = {}
            with self._db:
                self._db.execute("BEGIN")
                for sid in server_ids:
                    if self._db.execute("UPDATE servers SET state=? WHERE id=?", (state.value, sid)).rowcount == 0:
                        failed[sid] = NotFound(f"server {sid!r} does not exist")
            return failed
        return await self._run(tx)

    async def set_servers_running(self, server_ids: list[str], running: bool) -> dict[str, ControllerError]:
        frm, to = (ServerState.STOPPED, ServerState.ACTIVE) if running else (ServerState.ACTIVE, ServerState.STOPPED)

        def tx() -> dict[str, ControllerError]:
            failed: dict[str, ControllerError] = {}
            with self._db:
                self._db.execute("BEGIN")
                for sid in server_ids:
                    row = self._db.execute("SELECT state FROM servers WHERE id=?", (sid,)).fetchone()
                    if row is None:
                        failed[sid] = NotFound(f"server {sid!r} does not exist")
                    elif row[0] == frm.value:
                        self._db.execute("UPDATE servers SET state=? WHERE id=?", (to.value, sid))
                    elif row[0] != to.value:
                        failed[sid] = ControllerError(f"server {sid!r} is {row[0]}: it cannot be "
                                                      f"{'started' if running else 'shut down'}")
            return failed
        return await self._run(tx)

    async def set_ports_data_plane_status(self, port_ids: list[str], status: str) -> dict[str, ControllerError]:
        if status not in ("ACTIVE", "DOWN"):
            raise ControllerError(f"data_plane_status must be ACTIVE or DOWN, not {status!r}")

        def tx() -> dict[str, ControllerError]:
            failed: dict[str, ControllerError] = {}
            with self._db:
                self._db.execute("BEGIN")
                for pid in port_ids:
                    if self._db.execute("UPDATE ports SET data_plane_status=? WHERE id=?", (status, pid)).rowcount == 0:
                        failed[pid] = NotFound(f"port {pid!r} does not exist")
            return failed
        return await self._run(tx)

    async def migrate_server(self, server_id: str, target_host: str | None = None, live: bool = True,
                             wait: bool = False) -> None:  # done when it returns: nothing to wait for
        def tx() -> None:
            row = self._db.execute("SELECT host FROM servers WHERE id=?", (server_id,)).fetchone()
            if row is None:
                raise NotFound(f"server {server_id!r} does not exist")
            source = row[0]
            if target_host is not None:
                ok = self._db.execute("SELECT 1 FROM hosts WHERE name=? AND forced_down=0 AND disabled=0 AND alive=1",
                                      (target_host,)).fetchone()
                if ok is None or target_host == source:
                    raise ControllerError(f"host {target_host!r} cannot take server {server_id!r}")
                target = target_host
            else:
                # the least loaded usable host, as a scheduler would
                pick = self._db.execute(
                    "SELECT h.name FROM hosts h LEFT JOIN servers s ON s.host = h.name "
                    "WHERE h.name != ? AND h.forced_down=0 AND h.disabled=0 AND h.alive=1 "
                    "GROUP BY h.name ORDER BY count(s.id), h.name LIMIT 1", (source,)).fetchone()
                if pick is None:
                    raise ControllerError(f"no valid host to move server {server_id!r} to")
                target = pick[0]
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute("UPDATE servers SET host=? WHERE id=?", (target, server_id))
                self._db.execute("UPDATE ports SET host=? WHERE device_id=?", (target, server_id))
        await self._run(tx)

    async def settle_migrations(self, host: str) -> int:
        return 0  # its moves are done when migrate_server returns

    async def close(self) -> None:
        db = self._db
        await self._run(db.close)
        self._pool.shutdown(wait=True)
