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
