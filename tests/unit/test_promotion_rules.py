"""Which gate decisions let a version become champion (the registry moves: tests/integration/test_registry.py)."""

from __future__ import annotations

import json

import pytest

from evertune.errors import ConfigError, QualityGateFailed
from evertune.tuning.gate import GateDecision
from evertune.tuning.promotion import decision_fields, gate_verdict, manual_verdict


def test_decisions_read_from_gate_objects_mappings_or_nothing() -> None:
    gate = GateDecision(passed=True, action="promote", reasons=("f1 up",))
    assert decision_fields(gate) == (True, "promote", ["f1 up"])
    assert decision_fields({"passed": False, "reasons": None}) == (False, "reject", [])
    assert decision_fields({"passed": True}) == (True, "promote", [])
    assert decision_fields(None) == (False, "manual", [])


@pytest.mark.parametrize(
    ("decision", "approved_by", "allowed"),
    [
        ({"passed": True, "action": "promote"}, None, True),
        ({"passed": False, "action": "reject"}, "ops", False),
        ({"passed": False, "action": "require_approval"}, None, False),
        ({"passed": False, "action": "require_approval"}, "ops", True),
    ],
)
def test_gate_verdict(decision: dict, approved_by: str | None, allowed: bool) -> None:
    verdict = gate_verdict(decision, approved_by)
    assert verdict.allowed is allowed and verdict.action == decision["action"]


def test_manual_verdict_follows_the_recorded_decision_unless_forced() -> None:
    reasons = json.dumps(["needs a human"])
    for recorded in ("promote", "require_approval"):
        verdict = manual_verdict("m", 3, {"gate.action": recorded, "gate.reasons": reasons}, "ops", False)
        assert verdict.allowed and verdict.action == "manual" and verdict.reasons == ["needs a human"]
    with pytest.raises(QualityGateFailed, match="was rejected"):
        manual_verdict("m", 3, {"gate.action": "reject"}, "ops", False)
    with pytest.raises(QualityGateFailed, match="no recorded gate decision"):
        manual_verdict("m", 3, {}, "ops", False)
    assert manual_verdict("m", 3, {"gate.action": "reject"}, "ops", True).allowed
    with pytest.raises(ConfigError, match="approved_by"):
        manual_verdict("m", 3, {"gate.action": "promote"}, None, True)
