"""Promotion gate: a table of cases over floors, tolerances, improvement + CI and the drift policy."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from evertune.config import DriftParams, GateParams
from evertune.tuning.gate import GateDecision, decide

GATE = GateParams(
    primary_metric="token_f1",
    min_improvement=0.01,
    require_ci_above_zero=False,
    floors={"token_f1": 0.2, "perplexity": 50.0},
    tolerances={"token_f1": 0.02, "exact_match": 0.02, "rougeL": 0.02, "perplexity": 2.0},
    lower_is_better=["perplexity"],
)
CHAMPION = {"token_f1": 0.40, "exact_match": 0.20, "rougeL": 0.45, "perplexity": 20.0}
GOOD = {"token_f1": 0.45, "exact_match": 0.21, "rougeL": 0.46, "perplexity": 19.0}
SEVERE = SimpleNamespace(severity="severe")

CASES = [
    # id, challenger, champion, ci, drift, gate overrides, drift overrides, action, failing rules
    ("first-model-ok", GOOD, None, None, None, {}, {}, "promote", set()),
    ("first-model-below-floor", {**GOOD, "token_f1": 0.1}, None, None, None, {}, {}, "reject", {"floor"}),
    ("first-model-ceiling", {**GOOD, "perplexity": 80.0}, None, None, None, {}, {}, "reject", {"floor"}),
    ("first-model-missing-floor-metric", {"token_f1": 0.5}, None, None, None, {}, {}, "reject", {"floor"}),
    ("first-model-severe-drift-block", GOOD, None, None, SEVERE, {}, {}, "reject", {"drift"}),
    ("first-model-severe-drift-approval", GOOD, None, None, SEVERE, {}, {"policy": "require_approval"},
     "require_approval", set()),
    ("better-than-champion", GOOD, CHAMPION, None, None, {}, {}, "promote", set()),
    ("regression-within-tolerance", {**GOOD, "exact_match": 0.185}, CHAMPION, None, None, {}, {}, "promote", set()),
    ("regression-beyond-tolerance", {**GOOD, "exact_match": 0.15}, CHAMPION, None, None, {}, {}, "reject",
     {"regression"}),
    ("perplexity-worse-beyond-tolerance", {**GOOD, "perplexity": 23.0}, CHAMPION, None, None, {}, {}, "reject",
     {"regression"}),
    ("perplexity-much-better", {**GOOD, "perplexity": 5.0}, CHAMPION, None, None, {}, {}, "promote", set()),
    ("gain-too-small", {**GOOD, "token_f1": 0.405}, CHAMPION, None, None, {}, {}, "reject", {"improvement"}),
    ("primary-worse", {**GOOD, "token_f1": 0.30}, CHAMPION, None, None, {}, {}, "reject",
     {"improvement", "regression"}),
    ("ci-above-zero", GOOD, CHAMPION, {"token_f1": (0.01, 0.09)}, None, {"require_ci_above_zero": True}, {},
     "promote", set()),
    ("ci-straddles-zero", GOOD, CHAMPION, {"token_f1": (-0.01, 0.11)}, None, {"require_ci_above_zero": True}, {},
     "reject", {"confidence"}),
    ("ci-missing", GOOD, CHAMPION, None, None, {"require_ci_above_zero": True}, {}, "reject", {"confidence"}),
    ("ci-ignored-when-not-required", GOOD, CHAMPION, {"token_f1": (-0.5, -0.1)}, None, {}, {}, "promote", set()),
    ("lower-is-better-primary", GOOD, CHAMPION, {"perplexity": (-2.0, -0.5)}, None,
     {"primary_metric": "perplexity", "require_ci_above_zero": True, "min_improvement": 0.5}, {}, "promote", set()),
    ("lower-is-better-primary-ci-wrong-side", GOOD, CHAMPION, {"perplexity": (0.1, 2.0)}, None,
     {"primary_metric": "perplexity", "require_ci_above_zero": True}, {}, "reject", {"confidence"}),
    ("champion-lacks-metric", GOOD, {k: v for k, v in CHAMPION.items() if k != "rougeL"}, None, None, {}, {},
     "promote", set()),
    ("moderate-drift-passes", GOOD, CHAMPION, None, {"severity": "moderate"}, {}, {}, "promote", set()),
    ("severe-drift-block", GOOD, CHAMPION, None, SEVERE, {}, {}, "reject", {"drift"}),
    ("severe-drift-approval", GOOD, CHAMPION, None, {"severity": "severe"}, {}, {"policy": "require_approval"},
     "require_approval", set()),
    ("approval-never-rescues-a-failure", {**GOOD, "token_f1": 0.1}, CHAMPION, None, SEVERE, {},
     {"policy": "require_approval"}, "reject", {"floor", "improvement", "regression"}),
    ("nan-metric-fails", {**GOOD, "token_f1": float("nan")}, CHAMPION, None, None, {}, {}, "reject",
     {"floor", "improvement", "regression"}),
]


@pytest.mark.parametrize(
    ("challenger", "champion", "ci", "drift", "gate_update", "drift_update", "action", "failing"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decision_table(challenger, champion, ci, drift, gate_update, drift_update, action, failing) -> None:
    decision = decide(challenger, champion, ci, drift, GATE.model_copy(update=gate_update),
                      DriftParams().model_copy(update=drift_update))
    assert decision.action == action, decision.reasons
    assert decision.passed is (action == "promote")
    assert {check["rule"] for check in decision.checks if not check["passed"]} == failing
    # Every check, passing or not, has its reason listed, in order.
    assert decision.reasons == tuple(check["reason"] for check in decision.checks)
    assert len(decision.failed_reasons) == sum(not check["passed"] for check in decision.checks)
    assert all(reason.startswith(("PASS", "FAIL", "HOLD")) for reason in decision.reasons)


def test_no_champion_says_only_floors_and_drift_apply() -> None:
    decision = decide(GOOD, None, None, None, GATE, DriftParams())
    rules = [check["rule"] for check in decision.checks]
    assert "regression" not in rules and "improvement" not in rules
    assert any("no champion yet" in reason for reason in decision.reasons)
    assert any("drift not checked" in reason for reason in decision.reasons)


def test_reasons_are_human_readable_and_complete() -> None:
    decision = decide({**GOOD, "exact_match": 0.15}, CHAMPION, None, {"severity": "none"}, GATE, DriftParams())
    text = "\n".join(decision.reasons)
    # One check per floor, per tolerance, the improvement and the drift rule.
    assert len(decision.checks) == len(GATE.floors) + len(GATE.tolerances) + 2
    assert "FAIL regression: exact_match 0.2 -> 0.15 (worse by 0.05; tolerance 0.02)" in text
    assert "PASS improvement: primary token_f1 0.4 -> 0.45" in text
    assert "PASS ceiling: perplexity = 19 <= 50 (lower is better)" in text
    assert decision.failed_reasons == ["FAIL regression: exact_match 0.2 -> 0.15 (worse by 0.05; tolerance 0.02)"]
    as_dict = decision.to_dict()
    assert as_dict["action"] == "reject" and as_dict["passed"] is False
    assert len(as_dict["checks"]) == len(decision.checks)


def test_accepts_a_drift_report_and_a_bootstrap_interval() -> None:
    from evertune.tuning.drift import DriftReport
    from evertune.tuning.metrics import paired_bootstrap_ci

    challenger_items = [1.0, 0.8, 0.9, 1.0, 0.7, 0.9, 1.0, 0.8] * 5
    champion_items = [0.5, 0.6, 0.4, 0.7, 0.5, 0.6, 0.5, 0.4] * 5
    ci = {"token_f1": paired_bootstrap_ci(challenger_items, champion_items, n=500, seed=1)}
    report = DriftReport(method="domain_classifier", severity="moderate", reasons=[], n_reference=1, n_current=1)
    decision = decide({**GOOD, "token_f1": 0.89}, {**CHAMPION, "token_f1": 0.53}, ci, report,
                      GATE.model_copy(update={"require_ci_above_zero": True}), DriftParams())
    assert decision.action == "promote", decision.reasons
    assert isinstance(decision, GateDecision)


def test_invalid_drift_severity_is_an_error() -> None:
    with pytest.raises(ValueError, match="severity"):
        decide(GOOD, None, None, {"severity": "huge"}, GATE, DriftParams())


def test_default_params_promote_a_clear_improvement() -> None:
    from evertune.config import load_params

    params = load_params()
    decision = decide({"token_f1": 0.5, "exact_match": 0.3, "rougeL": 0.5},
                      {"token_f1": 0.4, "exact_match": 0.3, "rougeL": 0.5}, None, None, params.gate, params.drift)
    assert decision.action == "promote", decision.reasons
