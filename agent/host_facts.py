"""What the host runs, for the seeds' PhysicalResourceInfoClass: firmware and hypervisor versions, kernel.

Read once when the agent starts (a firmware or hypervisor update means a
reboot or a restart of the agent anyway); each probe is bounded in time and
a missing one is simply absent.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

DMI = Path("/sys/class/dmi/id")
PROBE_TIMEOUT_S = 2.0
HYPERVISORS = (("qemu", ("qemu-system-x86_64", "qemu-system-aarch64", "qemu-kvm")),
               ("libvirt", ("libvirtd", "virtqemud")))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()[:128]
    except OSError:
        return ""


def _version_of(binary: str) -> str:
    """``<binary> --version``'s first version number, or "" (not installed, no answer in time)."""
    path = shutil.which(binary) or next((p for p in (f"/usr/sbin/{binary}", f"/usr/libexec/{binary}")
                                         if Path(p).exists()), None)
    if path is None:
        return ""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, errors="replace",
                             timeout=PROBE_TIMEOUT_S).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    m = re.search(r"\d+\.\d+(?:\.\d+)?", out)
    return m.group(0) if m else ""


def host_facts(dmi: Path = DMI) -> dict[str, str]:
    facts = {"kernel": platform.release()}
    bios = " ".join(x for x in (_read(dmi / "bios_vendor"), _read(dmi / "bios_version")) if x)
    if bios:
        date = _read(dmi / "bios_date")
        facts["firmware_version"] = f"{bios} ({date})" if date else bios
    parts = []
    for name, binaries in HYPERVISORS:
        version = next((v for v in map(_version_of, binaries) if v), "")
        if version:
            parts.append(f"{name} {version}")
    if parts:
        facts["hypervisor_version"] = ", ".join(parts)
    return facts
