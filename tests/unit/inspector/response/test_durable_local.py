"""Standalone's journal in SQLite (inspector/response/durable.py, LocalDurable): a step is recorded if and only
if the transaction that carries it is applied."""

from __future__ import annotations

from pathlib import Path

from doctor_common.api import common_pb2
from inspector.ha.etcd_store import Step
from inspector.response.alarms import Alarm, new_fault
from inspector.response.durable import LocalDurable
from notifier.sqlite_log import SqliteState, SqliteStore


async def test_a_step_applied_with_an_append_is_found_recorded(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.sqlite")
    try:
        journal = LocalDurable(SqliteState(store), "node-a")
        alarm = Alarm("c1", "nic:eth0", new_fault("c1", "compute.host.nic.down", common_pb2.SEVERITY_CRITICAL, 1,
                                                  "down", {}), fences=True)
        await journal.open_incident(alarm, ["fence"])
        assert not await journal.recorded(alarm.id, Step.NOTIFY_SUSPECTED)
        await journal.state.apply(*journal.publish_ops(alarm, step=Step.NOTIFY_SUSPECTED))  # as the log's append does
        assert await journal.recorded(alarm.id, Step.NOTIFY_SUSPECTED)
        assert not await journal.recorded(alarm.id, Step.FENCE)
        await journal.close_incident(alarm.id)
        assert not await journal.recorded(alarm.id, Step.NOTIFY_SUSPECTED)
    finally:
        await store.close()
