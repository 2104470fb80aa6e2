"""deploy/systemd/ as an operator installs it: absolute commands, documentation, reload where the daemon
reloads, the venv drop-ins, and the sandbox kept (docs/install.md)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
DOCS = "file:/usr/share/doc/nfv-doctor/"  # where docs/install.md copies docs/*.md
# the daemon each unit runs, and the source that says whether it handles SIGHUP
DAEMONS = {"doctor-agent": ROOT / "agent", "doctor-inspector": ROOT / "inspector"}
SANDBOX = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
           "CapabilityBoundingSet": "", "RestrictNamespaces": "yes", "SystemCallFilter": "@system-service",
           "RestrictSUIDSGID": "yes", "LockPersonality": "yes"}


def parse(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file's sections as (key, value) lists: keys repeat (After=, ExecStart= resets)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if m := re.fullmatch(r"\[(\w+)\]", line):
            current = sections.setdefault(m.group(1), [])
            continue
        assert current is not None and "=" in line, f"{path.name}: {raw!r}"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


@pytest.mark.parametrize("daemon", sorted(DAEMONS))
def test_unit_runs_the_installed_command_by_absolute_path(daemon: str) -> None:
    """ExecStart= and ExecStartPre= name /usr/local/bin/<daemon> (no /usr/bin/env and PATH lookup), with the
    config in /etc/doctor; ExecStartPre checks it first."""
    service = parse(UNITS / f"{daemon}.service")["Service"]
    (start,) = values(service, "ExecStart")
    (pre,) = values(service, "ExecStartPre")
    assert start == f"/usr/local/bin/{daemon} --config /etc/doctor/{daemon.removeprefix('doctor-')}.toml"
    assert pre.startswith(f"{start} --check-config")
    assert not any("/usr/bin/env" in v for k, v in service if k.startswith("Exec"))


@pytest.mark.parametrize("daemon", sorted(DAEMONS))
def test_unit_points_at_documents_that_exist(daemon: str) -> None:
    docs = " ".join(values(parse(UNITS / f"{daemon}.service")["Unit"], "Documentation")).split()
    assert f"{DOCS}install.md" in docs
    for uri in docs:
        assert uri.startswith(DOCS) and (ROOT / "docs" / uri.removeprefix(DOCS)).is_file(), uri


@pytest.mark.parametrize("daemon", sorted(DAEMONS))
def test_reload_is_offered_exactly_where_the_daemon_handles_sighup(daemon: str) -> None:
    """systemctl reload sends SIGHUP: a daemon that does not handle it would die of it."""
    handles = any("signal.SIGHUP" in p.read_text() for p in DAEMONS[daemon].rglob("*.py"))
    reload = values(parse(UNITS / f"{daemon}.service")["Service"], "ExecReload")
    assert reload == (["/bin/kill -HUP $MAINPID"] if handles else [])
    assert handles == (daemon == "doctor-inspector")


@pytest.mark.parametrize("daemon", sorted(DAEMONS))
def test_the_venv_drop_in_replaces_both_commands(daemon: str) -> None:
    """The drop-in clears ExecStartPre= and ExecStart= (an empty value) and runs the same command lines from
    /opt/nfv-doctor/bin."""
    unit = parse(UNITS / f"{daemon}.service")["Service"]
    drop_in = parse(UNITS / f"{daemon}.service.d" / "venv.conf.example")
    assert list(drop_in) == ["Service"]
    for key in ("ExecStartPre", "ExecStart"):
        (orig,) = values(unit, key)
        assert values(drop_in["Service"], key) == ["", orig.replace("/usr/local/bin/", "/opt/nfv-doctor/bin/")]


@pytest.mark.parametrize("daemon", sorted(DAEMONS))
def test_the_sandbox_is_kept(daemon: str) -> None:
    service = dict(parse(UNITS / f"{daemon}.service")["Service"])
    assert {k: service.get(k) for k in SANDBOX} == SANDBOX
    assert service["Type"] == "notify" and service["RestartPreventExitStatus"] == "2"


@pytest.mark.parametrize("venv", [False, True])
def test_systemd_reads_the_units_and_drop_ins_as_meant(tmp_path: Path, venv: bool) -> None:
    """systemd-analyze verify over a copy (with the drop-ins installed as venv.conf, or not): nothing to say
    but that the commands are not installed on this machine, and only those of the chosen install."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    for daemon in DAEMONS:
        shutil.copy(UNITS / f"{daemon}.service", tmp_path)
        if venv:
            (tmp_path / f"{daemon}.service.d").mkdir()
            shutil.copy(UNITS / f"{daemon}.service.d" / "venv.conf.example", tmp_path / f"{daemon}.service.d" /
                        "venv.conf")
    out = subprocess.run([analyze, "verify", *(str(tmp_path / f"{d}.service") for d in DAEMONS)],
                         env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}, capture_output=True, text=True,
                         timeout=60)
    bindir = "/opt/nfv-doctor/bin" if venv else "/usr/local/bin"
    said = {line for line in (out.stdout + out.stderr).splitlines() if line.strip()}
    assert said == {f"{d}.service: Command {bindir}/{d} is not executable: No such file or directory"
                    for d in DAEMONS if not Path(bindir, d).exists()}  # (silent about one that is installed)
