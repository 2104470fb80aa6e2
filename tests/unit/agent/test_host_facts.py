"""The host facts an agent reports in its Hello: firmware from DMI, hypervisor versions, kernel."""

from __future__ import annotations

import os
import platform
import stat
from pathlib import Path

import pytest

from agent import host_facts as hf


def test_firmware_from_dmi_and_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bios_vendor").write_text("SeaBIOS\n")
    (tmp_path / "bios_version").write_text("1.16.2-debian\n")
    (tmp_path / "bios_date").write_text("04/01/2014\n")
    monkeypatch.setattr(hf, "HYPERVISORS", ())
    facts = hf.host_facts(tmp_path)
    assert facts == {"kernel": platform.release(), "firmware_version": "SeaBIOS 1.16.2-debian (04/01/2014)"}


def test_hypervisor_versions_from_the_binaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each hypervisor part's ``--version``; a missing binary or one without a version is left out."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, out in (("qemu-system-x86_64", "QEMU emulator version 7.2.9 (Debian 1:7.2+dfsg-7)"),
                      ("virtqemud", "virtqemud (libvirt) 9.0.0"), ("libvirtd", "no version here")):
        f = bin_dir / name
        f.write_text(f"#!/bin/sh\necho '{out}'\n")
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/nonexistent")
    facts = hf.host_facts(tmp_path / "no-dmi")
    assert facts["hypervisor_version"] == "qemu 7.2.9, libvirt 9.0.0"
    assert "firmware_version" not in facts


def test_nothing_installed_is_no_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No DMI, no hypervisor binaries: the kernel alone, no exception."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(hf, "HYPERVISORS", (("qemu", ("doctor-no-such-qemu",)),))
    assert set(hf.host_facts(tmp_path / "no-dmi")) == {"kernel"}
