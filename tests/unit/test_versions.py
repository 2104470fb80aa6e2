"""Every command says its version (what an operator pastes into a bug report)."""

import subprocess
import sys

import pytest

from doctor_common import __version__


@pytest.mark.parametrize("module", ["agent", "inspector.main", "doctor_common.ctl", "doctor_common.lab.vbmc"])
def test_version(module: str) -> None:
    out = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().endswith(__version__), (out.stdout, out.stderr)
