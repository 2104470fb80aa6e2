"""The inspector daemon as systemd runs it (deploy/systemd/doctor-inspector.service, Type=notify)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import NotifySocket, notify_until


def test_doctor_inspector_is_a_notify_service(tmp_path: Path, notify: NotifySocket) -> None:
    """The real daemon under a NOTIFY_SOCKET: READY=1 once it serves, WATCHDOG=1 pings while its event loop
    turns, STOPPING=1 and exit 0 on SIGTERM (deploy/systemd/doctor-inspector.service is Type=notify)."""
    (tmp_path / "inv.toml").write_text('[[hosts]]\nname = "c1"\n')
    cfg = tmp_path / "inspector.toml"
    cfg.write_text(f'[inspector]\nnode_id = "n"\nlisten = ["unix:{tmp_path / "gw.sock"}"]\n'
                   '[controller.embedded]\ninventory = "inv.toml"\n')
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="400000")
    proc = subprocess.Popen([sys.executable, "-m", "inspector.main", "--config", str(cfg)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ready = notify.recv(20)
        assert ready.startswith("READY=1") and "serving on unix:" in ready, ready
        assert [notify.recv() for _ in range(3)] == ["WATCHDOG=1"] * 3  # every ~0.2 s
        proc.send_signal(signal.SIGTERM)
        *pings, _ = notify_until(notify.recv, "STOPPING=1")
        assert set(pings) <= {"WATCHDOG=1"}
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
    assert "Traceback" not in stderr, stderr


def test_sighup_reloads_tokens_and_inventory_and_refuses_a_bad_file(tmp_path: Path, notify: NotifySocket) -> None:
    """SIGHUP (systemctl reload): a consumer token and a host added to the files work without a restart; a file
    with a mistake is refused, naming its key, and the running configuration (and the daemon) stay; a token the
    files no longer give ends the subscription opened with it."""
    import asyncio

    import grpc

    from doctor_common.client import DoctorClient
    from tests.conftest import free_port

    port = free_port()
    (tmp_path / "inv.toml").write_text('[[hosts]]\nname = "c1"\n')
    cfg = tmp_path / "inspector.toml"
    base = (f'[inspector]\nnode_id = "n"\nlisten = ["127.0.0.1:{port}"]\n'
            '[controller.embedded]\ninventory = "inv.toml"\n'
            '[[auth.consumers]]\nname = "noc"\nadmin = true\ntoken = "first"\n')
    cfg.write_text(base)
    env = dict(os.environ, NOTIFY_SOCKET=notify.path)
    logfile = tmp_path / "inspector.log"
    with logfile.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "inspector.main", "--config", str(cfg)], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)

    async def logged(words: str) -> None:
        async with asyncio.timeout(15):
            while words not in logfile.read_text():
                await asyncio.sleep(0.05)

    async def hosts(token: str) -> list[str]:
        async with DoctorClient(f"127.0.0.1:{port}", token) as c:
            return [h.host_id for h in (await c.hosts()).hosts]

    async def until(token: str, want: list[str]) -> None:
        async with asyncio.timeout(15):
            while True:
                try:
                    if await hosts(token) == want:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)

    try:
        assert notify.recv(20).startswith("READY=1")
        assert asyncio.run(hosts("first")) == ["c1"]
        cfg.write_text(base + '[[auth.consumers]]\nname = "ops"\nadmin = true\ntoken = "second"\n')
        (tmp_path / "inv.toml").write_text('[[hosts]]\nname = "c1"\n[[hosts]]\nname = "c2"\n')
        proc.send_signal(signal.SIGHUP)
        asyncio.run(until("second", ["c1", "c2"]))
        cfg.write_text(base + '[notifier]\nqueue_limt = 5\n')  # a typo
        proc.send_signal(signal.SIGHUP)
        asyncio.run(logged("reload refused"))
        assert asyncio.run(hosts("second")) == ["c1", "c2"], "the running configuration is kept"
        assert proc.poll() is None

        async def withdrawn() -> grpc.StatusCode:
            """The first token's open subscription, when a reload drops that token."""
            async with DoctorClient(f"127.0.0.1:{port}", "first") as c:
                stream = c.subscribe_once()
                assert (await anext(stream)).WhichOneof("kind") == "subscribed"
                cfg.write_text(base.replace('token = "first"', 'token = "second"'))
                proc.send_signal(signal.SIGHUP)
                try:
                    async with asyncio.timeout(15):
                        async for _ in stream:
                            pass
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                raise AssertionError("the stream went on")
        assert asyncio.run(withdrawn()) == grpc.StatusCode.UNAUTHENTICATED
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = logfile.read_text()
    assert "configuration reloaded" in stderr and "notifier.queue_limt" in stderr and "kept" in stderr, stderr
    assert "Traceback" not in stderr, stderr


def test_json_logs_and_the_metrics_listener_of_the_daemon(tmp_path: Path, notify: NotifySocket) -> None:
    """log_format = "json": every line the daemon writes is one JSON object (time, level, logger, message); the
    metrics listener on port 0 says where it bound, answers a scrape, and a rejected token is one audit line
    (with its kind and reason, not the token) and one count."""
    import asyncio
    import json
    import urllib.request

    import grpc
    from prometheus_client.parser import text_string_to_metric_families

    from doctor_common.client import DoctorClient
    from tests.conftest import free_port

    port = free_port()
    (tmp_path / "inv.toml").write_text('[[hosts]]\nname = "c1"\n')
    cfg = tmp_path / "inspector.toml"
    cfg.write_text(f'[inspector]\nnode_id = "n"\nlisten = ["127.0.0.1:{port}"]\nlog_format = "json"\n'
                   '[controller.embedded]\ninventory = "inv.toml"\n[metrics]\nlisten = "127.0.0.1:0"\n'
                   '[[auth.consumers]]\nname = "noc"\nadmin = true\ntoken = "the-admin-token"\n')
    logfile = tmp_path / "inspector.log"
    with logfile.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "inspector.main", "--config", str(cfg)],
                                env=dict(os.environ, NOTIFY_SOCKET=notify.path), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=log)

    def lines() -> list[dict[str, object]]:
        return [json.loads(line) for line in logfile.read_text().splitlines()]

    def scrape(metrics_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    async def stranger() -> grpc.StatusCode:
        async with DoctorClient(f"127.0.0.1:{port}", "a-token-nobody-gave") as c:
            try:
                await c.query_faults()
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        raise AssertionError("an unknown token was served")

    try:
        assert notify.recv(20).startswith("READY=1")
        bound = [str(e["message"]) for e in lines() if str(e["message"]).startswith("metrics served on http://")]
        assert len(bound) == 1, lines()
        metrics_port = int(bound[0].rsplit(":", 1)[1].split("/")[0])
        assert metrics_port > 0
        assert scrape(metrics_port)[("doctor_inspector_leader", ())] == 1
        assert asyncio.run(stranger()) == grpc.StatusCode.UNAUTHENTICATED
        assert scrape(metrics_port)[("doctor_rejected_clients_total", (("kind", "unknown_token"),))] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    entries = lines()
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in entries), entries
    rejected = [e for e in entries if e["logger"] == "doctor.audit" and e.get("event") == "rejected"]
    assert [(e["level"], e["kind"]) for e in rejected] == [("warning", "unknown_token")], entries
    assert "a-token-nobody-gave" not in logfile.read_text() and "the-admin-token" not in logfile.read_text()
