"""The failure policy: default rules, aggregation, and a policy file's errors."""

from pathlib import Path

import pytest

from doctor_common.api import common_pb2
from doctor_common.config import ConfigError
from doctor_common.faults import severity_from_name
from inspector.response.policy import FENCE_ALL, default_policy, load_policy

CRIT, MAJOR, WARN = common_pb2.SEVERITY_CRITICAL, common_pb2.SEVERITY_MAJOR, common_pb2.SEVERITY_WARNING


def test_default_policy_fences_nic_and_silence_but_never_agent_death() -> None:
    """NIC down and unreachable fence; agent down only tells administrators; a warning only notifies."""
    p = default_policy()
    assert p.decide("h", "compute.host.nic.down", CRIT).fences  # type: ignore[union-attr]
    assert p.decide("h", "compute.host.unreachable", CRIT).fences  # type: ignore[union-attr]
    agent = p.decide("h", "compute.host.agent.down", MAJOR)
    assert agent is not None and agent.actions == {"notify_admin"}
    warn = p.decide("h", "compute.hypervisor.libvirtd.down", WARN)
    assert warn is not None and not warn.fences and "notify" in warn.actions
    assert p.decide("h", "compute.host.nic.down", WARN).name == "other"  # type: ignore[union-attr]


def test_aggregation_acts_on_the_nth_event_within_the_window(tmp_path: Path) -> None:
    """count=3 within 10 s: the third event in the window acts, spread-out events never do."""
    f = tmp_path / "policy.toml"
    f.write_text('[[rule]]\nname="flap"\nmatch=["compute.host.nic.*"]\ncount=3\nwindow_s=10\nactions=["notify"]\n')
    p = load_policy(f)
    assert [p.decide("h", "compute.host.nic.down", CRIT, now=t) for t in (0, 1)] == [None, None]
    assert p.decide("h", "compute.host.nic.down", CRIT, now=2) is not None
    q = load_policy(f)
    assert all(q.decide("h", "compute.host.nic.down", CRIT, now=t) is None for t in (0, 20, 40, 60))


@pytest.mark.parametrize("rule, key, words", [
    ('match=["x"]\nactions=["explode"]', "rule[0].actions", "unknown action"),
    ('match=["x"]\nactions=["mark_down"]', "rule[0].actions", "need fence"),
    ('match=["a b"]\nactions=["notify"]', "rule[0].match[0]", "may hold only"),
    ('match=["x"]\nactions=["notify"]\nmin_severity="huge"', "rule[0].min_severity", "unknown severity"),
    ('match=["x"]\nactions=["notify"]\ncount=2', "rule[0].window_s", "needs a window_s"),
])
def test_bad_policy_file_names_the_rule_and_key(tmp_path: Path, rule: str, key: str, words: str) -> None:
    """Policy mistakes fail at load, naming the file and the rule's key."""
    f = tmp_path / "policy.toml"
    f.write_text(f"[[rule]]\n{rule}\n")
    with pytest.raises(ConfigError) as err:
        load_policy(f)
    assert err.value.key == key and words in str(err.value) and str(f) in str(err.value)


@pytest.mark.parametrize("fault_type, severity, actions", [
    ("compute.host.down", "critical", FENCE_ALL),                       # the seeds' southbound example
    ("compute.host.nic.down", "critical", FENCE_ALL),
    ("compute.host.memory.failure", "critical", frozenset({"notify"})),  # the annex: switch to hot standby
    ("compute.host.ipmi.fan", "warning", frozenset({"notify"})),        # fault prediction reaches the owners
    ("compute.host.disk.crash", "indeterminate", frozenset({"notify_admin"})),  # the annex: inform OAM
    ("compute.host.agent.misconfigured", "warning", frozenset({"notify_admin"})),
])
def test_the_default_policy_for_the_seeds_faults(fault_type: str, severity: str, actions: frozenset[str]) -> None:
    """The seeds' southbound types and the annex's host faults map to sensible default actions."""
    rule = default_policy().decide("h", fault_type, severity_from_name(severity))
    assert rule is not None and rule.actions == actions, (fault_type, rule)
