"""The built-in checker table and the packaging's entry points name the same classes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from agent.checkers import BUILT_IN, checker_class

ROOT = Path(__file__).resolve().parents[3]


def test_built_ins_match_the_entry_points() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["doctor.checkers"]
    assert declared == BUILT_IN
    for name in BUILT_IN:
        assert checker_class(name).name == name


def test_an_unknown_checker_lists_what_is_installed() -> None:
    with pytest.raises(LookupError, match=r"unknown checker 'smart'; installed: exec, hypervisor, ipmi, nic"):
        checker_class("smart")
