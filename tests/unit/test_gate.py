"""Promotion gate: tables of cases over floors, the base model, tolerances, improvement + CI, freshness and drift."""

from __future__ import annotations

import dataclasses
import random
import re
from types import SimpleNamespace

import pytest

from evertune.config import DriftParams, GateParams
from evertune.tuning import gate
from evertune.tuning.gate import (
    RULES,
    GateDecision,
    GateInput,
    RuleOutcome,
    base_rule,
    borderline_rule,
    champion_rule,
    check,
    confidence_rule,
    decide,
    drift_rule,
    evaluate,
    floor_rule,
    freshness_rule,
    improvement_rule,
    regression_rule,
)

GATE = GateParams(
    primary_metric="token_f1",
    min_improvement=0.01,
    require_ci_above_zero=False,
    floors={"token_f1": 0.2, "perplexity": 50.0},
    tolerances={"token_f1": 0.02, "exact_match": 0.02, "rougeL": 0.02, "perplexity": 2.0},
    lower_is_better=["perplexity"],
    min_improvement_over_base=0.05,
    freshness_tolerance=0.05,
    borderline_ci_low=None,  # the borderline band has its own table (BORDERLINE_CASES)
    uncertain_regression="reject",  # holding an unestablished shortfall has its own table (UNCERTAIN_CASES)
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
    # One check per floor, per tolerance, the base, improvement, freshness and drift rule.
    assert len(decision.checks) == len(GATE.floors) + len(GATE.tolerances) + 4
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


# --- The rule table: each rule alone, on one record -------------------------------------------------------------


def record(challenger=GOOD, champion=CHAMPION, ci=None, drift=None, gate=None, policy="block", **inputs) -> GateInput:
    """A GateInput over the module's GATE (with ``gate`` overrides); ``champion=None`` means no champion."""
    return GateInput.build(challenger, champion, ci, drift, GATE.model_copy(update=gate or {}),
                           DriftParams(policy=policy), **inputs)


def summary(outcome: RuleOutcome) -> list[tuple]:
    return [(item["rule"], item["metric"], item["passed"]) for item in outcome.checks]


def test_rules_table_has_the_documented_order() -> None:
    names = [rule.__name__ for rule in RULES]
    assert names == ["floor_rule", "champion_rule", "base_rule", "regression_rule", "improvement_rule",
                     "confidence_rule", "freshness_rule", "drift_rule", "borderline_rule"]
    # The module docstring's numbered list names the rules in the same order.
    documented = re.findall(r"^\d+\. :func:`(\w+)`", gate.__doc__, flags=re.MULTILINE)
    assert documented == names


def test_record_is_frozen_and_reads_the_severity() -> None:
    rec = record(drift=SEVERE)
    assert rec.drift_severity == "severe"
    assert record(drift={"severity": "none"}).drift_severity == "none"
    assert record().drift_severity is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.champion = None  # type: ignore[misc]
    with pytest.raises(ValueError, match="severity"):
        record(drift=SimpleNamespace(severity=None))


def test_record_gain_is_direction_aware() -> None:
    rec = record()
    assert rec.gain("token_f1") == pytest.approx(0.05)
    assert rec.gain("perplexity") == pytest.approx(1.0)  # 20 -> 19 is better for a lower-is-better metric
    assert record(champion=None).gain("token_f1") is None
    assert record(challenger={**GOOD, "token_f1": float("nan")}).gain("token_f1") is None


def test_floor_rule() -> None:
    outcome = floor_rule(record(challenger={"token_f1": 0.1, "perplexity": 20.0}))
    assert summary(outcome) == [("floor", "perplexity", True), ("floor", "token_f1", False)]
    assert outcome.checks[0]["reason"] == "PASS ceiling: perplexity = 20 <= 50 (lower is better)"
    assert outcome.checks[1]["reason"] == "FAIL floor: token_f1 = 0.1 < 0.2"
    assert (outcome.checks[1]["value"], outcome.checks[1]["threshold"]) == (0.1, 0.2)
    assert not outcome.hold
    assert summary(floor_rule(record(challenger={"token_f1": 0.3, "perplexity": 51.0}))) == [
        ("floor", "perplexity", False), ("floor", "token_f1", True)]
    missing = floor_rule(record(challenger={"perplexity": 20.0}))
    assert missing.checks[1]["reason"] == "FAIL floor: token_f1 is missing from the challenger's metrics"
    empty = floor_rule(record(gate={"floors": {}}))
    assert summary(empty) == [("floor", None, True)] and "no floors configured" in empty.checks[0]["reason"]


def test_champion_rule() -> None:
    assert champion_rule(record()) == RuleOutcome()
    outcome = champion_rule(record(champion=None))
    assert summary(outcome) == [("champion", None, True)]
    assert "no champion yet" in outcome.checks[0]["reason"]


def test_regression_rule() -> None:
    assert regression_rule(record(champion=None)) == RuleOutcome()
    outcome = regression_rule(record(challenger={**GOOD, "exact_match": 0.15, "perplexity": 23.0}))
    assert summary(outcome) == [("regression", "exact_match", False), ("regression", "perplexity", False),
                                ("regression", "rougeL", True), ("regression", "token_f1", True)]
    assert outcome.checks[1]["reason"] == "FAIL regression: perplexity 20 -> 23 (worse by 3; tolerance 2)"
    assert outcome.checks[3]["reason"] == "PASS regression: token_f1 0.4 -> 0.45 (better by 0.05; tolerance 0.02)"
    # Exactly at the tolerance (up to float rounding: 0.2 - 0.18 > 0.02 in binary) passes.
    assert summary(regression_rule(record(challenger={**GOOD, "exact_match": 0.18})))[0] == (
        "regression", "exact_match", True)
    partial = regression_rule(record(challenger={k: v for k, v in GOOD.items() if k != "rougeL"},
                                     champion={k: v for k, v in CHAMPION.items() if k != "exact_match"}))
    assert [item["reason"] for item in partial.checks[:3]] == [
        "PASS regression: exact_match not compared (the champion has no exact_match)",
        "PASS regression: perplexity 20 -> 19 (better by 1; tolerance 2)",
        "FAIL regression: rougeL is missing from the challenger's metrics",
    ]


def test_improvement_rule() -> None:
    assert improvement_rule(record(champion=None)) == RuleOutcome()
    ok = improvement_rule(record())
    assert summary(ok) == [("improvement", "token_f1", True)]
    assert ok.checks[0]["value"] == pytest.approx(0.05) and ok.checks[0]["threshold"] == 0.01
    small = improvement_rule(record(challenger={**GOOD, "token_f1": 0.405}))
    assert small.checks[0]["reason"] == "FAIL improvement: primary token_f1 0.4 -> 0.405, gain 0.005 < required 0.01"
    lower = improvement_rule(record(gate={"primary_metric": "perplexity", "min_improvement": 1.5}))
    assert summary(lower) == [("improvement", "perplexity", False)] and lower.checks[0]["value"] == pytest.approx(1.0)
    missing = improvement_rule(record(champion={"exact_match": 0.2}))
    assert missing.checks[0]["reason"] == "FAIL improvement: primary metric token_f1 is missing from the champion's metrics"
    assert missing.checks[0]["value"] == 0.45


def test_confidence_rule() -> None:
    required = {"require_ci_above_zero": True}
    assert confidence_rule(record(ci={"token_f1": (-1.0, -0.5)})) == RuleOutcome()  # not required
    assert confidence_rule(record(champion=None, gate=required)) == RuleOutcome()
    ok = confidence_rule(record(ci={"token_f1": SimpleNamespace(low=0.01, high=0.09)}, gate=required))
    assert summary(ok) == [("confidence", "token_f1", True)] and ok.checks[0]["value"] == [0.01, 0.09]
    assert ok.checks[0]["reason"] == "PASS confidence: CI of token_f1 difference [0.01, 0.09] lower bound > 0"
    straddles = confidence_rule(record(ci={"token_f1": (-0.01, 0.11)}, gate=required))
    assert summary(straddles) == [("confidence", "token_f1", False)]
    touches = confidence_rule(record(ci={"token_f1": (0.0, 0.11)}, gate=required))  # zero is not excluded
    assert touches.checks[0]["reason"] == "FAIL confidence: CI of token_f1 difference [0, 0.11] lower bound <= 0"
    missing = confidence_rule(record(ci={"rougeL": (0.1, 0.2)}, gate=required))
    assert "no CI was given for token_f1" in missing.checks[0]["reason"] and not missing.checks[0]["passed"]
    lower = {"require_ci_above_zero": True, "primary_metric": "perplexity"}
    assert summary(confidence_rule(record(ci={"perplexity": (-2.0, -0.5)}, gate=lower)))[0][2] is True
    assert summary(confidence_rule(record(ci={"perplexity": (-2.0, 0.0)}, gate=lower)))[0][2] is False
    wrong_side = confidence_rule(record(ci={"perplexity": (-2.0, 0.5)}, gate=lower))
    assert wrong_side.checks[0]["reason"] == (
        "FAIL confidence: CI of perplexity difference [-2, 0.5] upper bound >= 0 (lower is better)")


def test_drift_rule() -> None:
    assert summary(drift_rule(record())) == [("drift", None, True)]
    assert drift_rule(record()).checks[0]["reason"] == "PASS drift: no drift report given; drift not checked"
    moderate = drift_rule(record(drift={"severity": "moderate"}))
    assert summary(moderate) == [("drift", None, True)] and not moderate.hold
    blocked = drift_rule(record(drift=SEVERE))
    assert summary(blocked) == [("drift", None, False)] and not blocked.hold
    assert (blocked.checks[0]["value"], blocked.checks[0]["threshold"]) == ("severe", "block")
    held = drift_rule(record(drift=SEVERE, policy="require_approval"))
    assert summary(held) == [("drift", None, True)] and held.hold
    assert held.checks[0]["reason"].startswith("HOLD drift:")


def test_evaluate_combines_the_table_in_order() -> None:
    def hold_rule(rec: GateInput) -> RuleOutcome:
        return RuleOutcome((check("extra", None, True, None, None, "HOLD extra: ask a human"),), hold=True)

    def fail_rule(rec: GateInput) -> RuleOutcome:
        return RuleOutcome((check("extra", None, False, None, None, "FAIL extra: no"),))

    rec = record()
    assert evaluate(rec).action == "promote"
    held = evaluate(rec, (*RULES, hold_rule))
    assert held.action == "require_approval" and held.reasons[-1] == "HOLD extra: ask a human"
    first = evaluate(rec, (fail_rule, *RULES))
    assert first.action == "reject" and first.reasons[0] == "FAIL extra: no"
    assert evaluate(rec, (hold_rule, fail_rule)).action == "reject"  # a hold never rescues a failure
    assert evaluate(rec, ()).action == "promote" and evaluate(rec, ()).checks == []


BORDERLINE_CASES = [
    # id, challenger, champion, ci (challenger - champion), gate overrides, drift, action, failing rules, held
    ("ci-straddles-zero-holds", GOOD, CHAMPION, {"token_f1": (-0.01, 0.11)}, {}, None, "require_approval", set(), True),
    ("ci-above-zero-promotes", GOOD, CHAMPION, {"token_f1": (0.01, 0.09)}, {}, None, "promote", set(), False),
    ("ci-lower-bound-exactly-zero-promotes", GOOD, CHAMPION, {"token_f1": (0.0, 0.1)}, {}, None, "promote", set(),
     False),
    ("band-above-zero-holds-a-small-sure-gain", GOOD, CHAMPION, {"token_f1": (0.01, 0.09)},
     {"borderline_ci_low": 0.02}, None, "require_approval", set(), True),
    ("band-off", GOOD, CHAMPION, {"token_f1": (-0.01, 0.11)}, {"borderline_ci_low": None}, None, "promote", set(),
     False),
    ("no-ci-not-applied", GOOD, CHAMPION, None, {}, None, "promote", set(), False),
    ("first-model-not-applied", GOOD, None, {"token_f1": (-0.5, 0.5)}, {}, None, "promote", set(), False),
    ("a-failure-still-rejects", {**GOOD, "exact_match": 0.1}, CHAMPION, {"token_f1": (-0.01, 0.11)}, {}, None,
     "reject", {"regression"}, True),
    ("with-require-ci-the-confidence-rule-rejects", GOOD, CHAMPION, {"token_f1": (-0.01, 0.11)},
     {"require_ci_above_zero": True}, None, "reject", {"confidence"}, True),
    ("lower-is-better-primary-ci-straddles", GOOD, CHAMPION, {"perplexity": (-2.0, 0.5)},
     {"primary_metric": "perplexity", "min_improvement": 0.5}, None, "require_approval", set(), True),
    ("lower-is-better-primary-sure-gain", GOOD, CHAMPION, {"perplexity": (-2.0, -0.5)},
     {"primary_metric": "perplexity", "min_improvement": 0.5}, None, "promote", set(), False),
    ("with-severe-drift-both-hold", GOOD, CHAMPION, {"token_f1": (-0.01, 0.11)}, {}, SEVERE, "require_approval", set(),
     True),
]


@pytest.mark.parametrize(("challenger", "champion", "ci", "gate_update", "drift", "action", "failing", "held"),
                         [case[1:] for case in BORDERLINE_CASES], ids=[case[0] for case in BORDERLINE_CASES])
def test_borderline_table(challenger, champion, ci, gate_update, drift, action, failing, held) -> None:
    gate_params = GATE.model_copy(update={"borderline_ci_low": 0.0, **gate_update})
    decision = decide(challenger, champion, ci, drift, gate_params, DriftParams(policy="require_approval"))
    assert decision.action == action, decision.reasons
    assert {item["rule"] for item in decision.checks if not item["passed"]} == failing
    holds = [reason for reason in decision.reasons if reason.startswith("HOLD borderline:")]
    assert bool(holds) is held, decision.reasons


def test_borderline_rule() -> None:
    straddles = record(ci={"token_f1": (-0.02, 0.08)}, gate={"borderline_ci_low": 0.0})
    outcome = borderline_rule(straddles)
    assert outcome.hold and summary(outcome) == [("borderline", "token_f1", True)]
    assert "CI of the token_f1 gain [-0.02, 0.08] reaches below 0" in outcome.checks[0]["reason"]
    sure = borderline_rule(record(ci={"token_f1": (0.01, 0.08)}, gate={"borderline_ci_low": 0.0}))
    assert not sure.hold and sure.checks[0]["reason"].startswith("PASS borderline:")
    assert borderline_rule(record(champion=None, ci={"token_f1": (-1, 1)}, gate={"borderline_ci_low": 0.0})) \
        == RuleOutcome()
    assert borderline_rule(record(ci={"token_f1": (-1, 1)})) == RuleOutcome()  # GATE has the band off


def test_default_params_hold_a_gain_whose_ci_straddles_zero() -> None:
    from evertune.config import load_params

    params = load_params()
    assert params.gate.borderline_ci_low == 0.0 and params.drift.policy == "require_approval"
    metrics = ({"token_f1": 0.5, "exact_match": 0.3, "rougeL": 0.5}, {"token_f1": 0.4, "exact_match": 0.3, "rougeL": 0.5})
    held = decide(*metrics, {"token_f1": (-0.02, 0.2)}, None, params.gate, params.drift)
    assert held.action == "require_approval", held.reasons
    assert decide(*metrics, {"token_f1": (0.02, 0.2)}, None, params.gate, params.drift).action == "promote"


# --- gate.uncertain_regression: a shortfall the CI does not establish holds instead of failing ----------------

UNCERTAIN_CASES = [
    # id, challenger, ci (challenger - champion), gate overrides, drift, action, failing rules, held rules
    ("uncertain-drop-holds", {**GOOD, "exact_match": 0.15}, {"exact_match": (-0.12, 0.03)}, {}, None,
     "require_approval", set(), {"regression"}),
    ("established-drop-rejects", {**GOOD, "exact_match": 0.15}, {"exact_match": (-0.09, -0.03)}, {}, None,
     "reject", {"regression"}, set()),
    ("drop-without-ci-rejects", {**GOOD, "exact_match": 0.15}, None, {}, None, "reject", {"regression"}, set()),
    ("reject-mode-rejects-an-uncertain-drop", {**GOOD, "exact_match": 0.15}, {"exact_match": (-0.12, 0.03)},
     {"uncertain_regression": "reject"}, None, "reject", {"regression"}, set()),
    ("drop-within-tolerance-passes", {**GOOD, "exact_match": 0.19}, {"exact_match": (-0.5, -0.3)}, {}, None,
     "promote", set(), set()),
    ("uncertain-primary-shortfall-holds-both", {**GOOD, "token_f1": 0.35}, {"token_f1": (-0.12, 0.03)}, {}, None,
     "require_approval", set(), {"regression", "improvement"}),
    ("gain-below-min-improvement-ci-short-of-it-rejects", {**GOOD, "token_f1": 0.405}, {"token_f1": (-0.01, 0.008)},
     {}, None, "reject", {"improvement"}, set()),
    ("established-primary-shortfall-rejects", {**GOOD, "token_f1": 0.30}, {"token_f1": (-0.15, -0.05)}, {}, None,
     "reject", {"regression", "improvement"}, set()),
    ("lower-is-better-uncertain-holds", {**GOOD, "perplexity": 23.0}, {"perplexity": (-1.0, 5.0)}, {}, None,
     "require_approval", set(), {"regression"}),
    ("lower-is-better-established-rejects", {**GOOD, "perplexity": 23.0}, {"perplexity": (2.5, 4.0)}, {}, None,
     "reject", {"regression"}, set()),
    ("a-hold-never-rescues-a-floor-failure", {**GOOD, "token_f1": 0.1}, {"token_f1": (-0.6, 0.05)}, {}, None,
     "reject", {"floor"}, {"regression", "improvement"}),
    ("with-severe-drift-everything-holds", {**GOOD, "exact_match": 0.15}, {"exact_match": (-0.12, 0.03)}, {},
     SEVERE, "require_approval", set(), {"regression", "drift"}),
]

FRESHNESS_UNCERTAIN_CASES = [
    # id, new share, old share, n, paired CI of the fresh-share difference, gate overrides, action, failing, held
    ("two-probes-one-flip-holds", 0.5, 1.0, 2, (-1.0, 0.0), {}, "require_approval", set(), {"freshness"}),
    ("established-forgetting-rejects", 0.5, 0.75, 40, (-0.4, -0.1), {}, "reject", {"freshness"}, set()),
    ("no-paired-ci-rejects", 0.5, 1.0, 2, None, {}, "reject", {"freshness"}, set()),
    ("reject-mode-rejects", 0.5, 1.0, 2, (-1.0, 0.0), {"uncertain_regression": "reject"}, "reject", {"freshness"},
     set()),
    ("within-tolerance-passes", 0.68, 0.70, 40, (-0.3, -0.2), {}, "promote", set(), set()),
]


@pytest.mark.parametrize(("new", "old", "n", "ci", "gate_update", "action", "failing", "held"),
                         [case[1:] for case in FRESHNESS_UNCERTAIN_CASES],
                         ids=[case[0] for case in FRESHNESS_UNCERTAIN_CASES])
def test_uncertain_freshness_drop_table(new, old, n, ci, gate_update, action, failing, held) -> None:
    gate_params = GATE.model_copy(update={"uncertain_regression": "hold", **gate_update})
    decision = decide(GOOD, CHAMPION, None, None, gate_params, DriftParams(), base=BASE,
                      freshness_new=fresh(new, n), freshness_old=fresh(old, n), ci_freshness=ci)
    assert decision.action == action, decision.reasons
    assert {item["rule"] for item in decision.checks if not item["passed"]} == failing
    holding = {reason.split(":")[0].split()[1] for reason in decision.reasons if reason.startswith("HOLD ")}
    assert holding == held, decision.reasons


@pytest.mark.parametrize(("challenger", "ci", "gate_update", "drift", "action", "failing", "held"),
                         [case[1:] for case in UNCERTAIN_CASES], ids=[case[0] for case in UNCERTAIN_CASES])
def test_uncertain_regression_table(challenger, ci, gate_update, drift, action, failing, held) -> None:
    gate_params = GATE.model_copy(update={"uncertain_regression": "hold", **gate_update})
    decision = decide(challenger, CHAMPION, ci, drift, gate_params, DriftParams(policy="require_approval"))
    assert decision.action == action, decision.reasons
    assert {item["rule"] for item in decision.checks if not item["passed"]} == failing
    holding = {reason.split(":")[0].split()[1] for reason in decision.reasons if reason.startswith("HOLD ")}
    assert holding == held, decision.reasons


def test_uncertain_shortfall_reasons_name_the_evidence() -> None:
    uncertain = record(challenger={**GOOD, "exact_match": 0.15}, ci={"exact_match": (-0.12, 0.03)},
                       gate={"uncertain_regression": "hold"})
    outcome = regression_rule(uncertain)
    assert outcome.hold and summary(outcome)[0] == ("regression", "exact_match", True)
    assert outcome.checks[0]["reason"] == (
        "HOLD regression: exact_match 0.2 -> 0.15 (worse by 0.05; tolerance 0.02); CI of the gain [-0.12, 0.03] "
        "reaches -0.02, so the shortfall is not established (gate.uncertain_regression: hold): a human decides")
    established = regression_rule(record(challenger={**GOOD, "exact_match": 0.15}, ci={"exact_match": (-0.09, -0.03)},
                                         gate={"uncertain_regression": "hold"}))
    assert not established.hold and established.checks[0]["reason"].endswith(
        "; CI of the gain [-0.09, -0.03] lies below -0.02: the shortfall is established")
    short = improvement_rule(record(challenger={**GOOD, "token_f1": 0.38}, ci={"token_f1": (-0.1, 0.05)},
                                    gate={"uncertain_regression": "hold"}))
    assert short.hold and short.checks[0]["reason"].startswith(
        "HOLD improvement: primary token_f1 0.4 -> 0.38, gain -0.02 < required 0.01; CI of the gain [-0.1, 0.05]")


def test_default_params_hold_the_drift_day_candidate_of_the_demo() -> None:
    """The numbers of the session-5 demo's drift-day candidate: worse on every metric, none of it established."""
    from evertune.config import load_params

    params = load_params()
    assert params.gate.uncertain_regression == "hold"
    champion = {"token_f1": 0.3917, "exact_match": 0.2045, "rougeL": 0.4100}
    challenger = {"token_f1": 0.3535, "exact_match": 0.1591, "rougeL": 0.3740}
    ci = {"token_f1": (-0.118, 0.034), "exact_match": (-0.136, 0.045), "rougeL": (-0.105, 0.031)}
    held = decide(challenger, champion, ci, SEVERE, params.gate, params.drift)
    assert held.action == "require_approval", held.reasons
    established = {**ci, "rougeL": (-0.07, -0.021)}
    assert decide(challenger, champion, established, SEVERE, params.gate, params.drift).action == "reject"
    # The session-6 demo's: within the noise on every metric, and one of two changed-fact probes answered stale.
    champion = {"token_f1": 0.3638, "exact_match": 0.0682, "rougeL": 0.3891}
    challenger = {"token_f1": 0.3420, "exact_match": 0.0455, "rougeL": 0.3652}
    ci = {"token_f1": (-0.075, 0.031), "exact_match": (-0.068, 0.0), "rougeL": (-0.076, 0.026)}
    probes = {"freshness_new": {"n": 2, "fresh_share": 0.5}, "freshness_old": {"n": 2, "fresh_share": 1.0}}
    held = decide(challenger, champion, ci, SEVERE, params.gate, params.drift, ci_freshness=(-1.0, 0.0), **probes)
    assert held.action == "require_approval", held.reasons
    assert decide(challenger, champion, ci, SEVERE, params.gate, params.drift, **probes).action == "reject"


# --- The base model and freshness inputs ------------------------------------------------------------------------

BASE = {"token_f1": 0.30, "exact_match": 0.10, "rougeL": 0.30, "perplexity": 30.0}  # GOOD beats it by 0.15


def fresh(share, n=40):
    """A freshness score as ``score_freshness`` returns it (only the fields the gate reads matter)."""
    return {"n": n, "fresh": None if share is None else round(share * n), "fresh_share": share, "ci": None}


INPUT_CASES = [
    # id, challenger, champion, inputs (decide kwargs), gate overrides, action, failing rules
    ("first-model-beats-base", GOOD, None, {"base": BASE}, {}, "promote", set()),
    ("first-model-below-base-plus-margin", {**GOOD, "token_f1": 0.33}, None, {"base": BASE}, {}, "reject", {"base"}),
    ("first-model-below-base", {**GOOD, "token_f1": 0.25}, None, {"base": BASE}, {}, "reject", {"base"}),
    ("first-model-exactly-the-margin", {**GOOD, "token_f1": 0.35}, None, {"base": BASE}, {}, "promote", set()),
    ("base-rule-off", {**GOOD, "token_f1": 0.25}, None, {"base": BASE}, {"min_improvement_over_base": None},
     "promote", set()),
    ("base-not-evaluated", {**GOOD, "token_f1": 0.25}, None, {}, {}, "promote", set()),
    ("base-lacks-primary", GOOD, None, {"base": {"rougeL": 0.3}}, {}, "reject", {"base"}),
    ("beats-champion-not-base", GOOD, CHAMPION, {"base": {**BASE, "token_f1": 0.43}}, {}, "reject", {"base"}),
    ("base-lower-is-better-primary", GOOD, None, {"base": BASE},
     {"primary_metric": "perplexity", "min_improvement_over_base": 12.0}, "reject", {"base"}),
    ("freshness-regresses-beyond-tolerance", GOOD, CHAMPION,
     {"base": BASE, "freshness_new": fresh(0.55), "freshness_old": fresh(0.70)}, {}, "reject", {"freshness"}),
    ("freshness-regresses-within-tolerance", GOOD, CHAMPION,
     {"base": BASE, "freshness_new": fresh(0.675), "freshness_old": fresh(0.70)}, {}, "promote", set()),
    ("freshness-regresses-by-the-tolerance", GOOD, CHAMPION,
     {"freshness_new": fresh(0.65), "freshness_old": fresh(0.70)}, {}, "promote", set()),
    ("freshness-improves", GOOD, CHAMPION, {"freshness_new": fresh(0.9), "freshness_old": fresh(0.5)}, {},
     "promote", set()),
    ("freshness-not-measured", GOOD, CHAMPION, {"freshness_new": None, "freshness_old": None}, {}, "promote", set()),
    ("freshness-no-probes", GOOD, CHAMPION, {"freshness_new": fresh(None, 0), "freshness_old": fresh(None, 0)}, {},
     "promote", set()),
    ("freshness-first-model", GOOD, None, {"freshness_new": fresh(0.1)}, {}, "promote", set()),
    ("freshness-and-base-both-fail", {**GOOD, "token_f1": 0.41}, CHAMPION,
     {"base": {**BASE, "token_f1": 0.40}, "freshness_new": fresh(0.2), "freshness_old": fresh(0.8)}, {}, "reject",
     {"base", "freshness"}),
]


@pytest.mark.parametrize(("challenger", "champion", "inputs", "gate_update", "action", "failing"),
                         [case[1:] for case in INPUT_CASES], ids=[case[0] for case in INPUT_CASES])
def test_base_and_freshness_table(challenger, champion, inputs, gate_update, action, failing) -> None:
    decision = decide(challenger, champion, None, None, GATE.model_copy(update=gate_update), DriftParams(), **inputs)
    assert decision.action == action, decision.reasons
    assert {check["rule"] for check in decision.checks if not check["passed"]} == failing
    rules = [check["rule"] for check in decision.checks]
    assert rules.count("base") == 1 and rules.count("freshness") == 1  # always one stated check each
    assert all(reason.startswith(("PASS", "FAIL", "HOLD")) for reason in decision.reasons)


def test_base_rule() -> None:
    ok = base_rule(record(champion=None, base=BASE, ci_base={"token_f1": (0.1, 0.2)}))
    assert summary(ok) == [("base", "token_f1", True)]
    assert ok.checks[0]["reason"] == ("PASS base: primary token_f1 base model 0.3 -> challenger 0.45, gain 0.15 >= "
                                      "required 0.05; CI of the difference [0.1, 0.2]")
    assert ok.checks[0]["value"] == pytest.approx(0.15) and ok.checks[0]["threshold"] == 0.05
    below = base_rule(record(challenger={**GOOD, "token_f1": 0.33}, base=BASE))
    assert below.checks[0]["reason"] == ("FAIL base: primary token_f1 base model 0.3 -> challenger 0.33, gain 0.03 < "
                                         "required 0.05")
    assert base_rule(record()).checks[0]["reason"] == "PASS base: the base model was not evaluated; not compared"
    off = base_rule(record(base=BASE, gate={"min_improvement_over_base": None}))
    assert off.checks[0]["reason"] == "PASS base: gate.min_improvement_over_base is null; not compared"
    missing = base_rule(record(challenger={"rougeL": 0.5}, base=BASE))
    assert missing.checks[0]["reason"] == "FAIL base: primary metric token_f1 is missing from the challenger's metrics"
    nan = base_rule(record(base={**BASE, "token_f1": float("nan")}))
    assert not nan.checks[0]["passed"] and "base model's metrics" in nan.checks[0]["reason"]
    lower = base_rule(record(base=BASE, gate={"primary_metric": "perplexity", "min_improvement_over_base": 10.0}))
    assert summary(lower) == [("base", "perplexity", True)] and lower.checks[0]["value"] == pytest.approx(11.0)


def test_freshness_rule() -> None:
    worse = freshness_rule(record(freshness_new=fresh(0.5), freshness_old=fresh(0.75)))
    assert summary(worse) == [("freshness", "fresh_share", False)]
    assert worse.checks[0]["reason"] == ("FAIL freshness: fresh share 0.75 -> 0.5 on 40 changed-fact probes "
                                         "(worse by 0.25; tolerance 0.05)")
    better = freshness_rule(record(freshness_new=fresh(0.9), freshness_old=fresh(0.5)))
    assert better.checks[0]["reason"].endswith("(better by 0.4; tolerance 0.05)") and better.checks[0]["passed"]
    skipped = {
        "no champion freshness was measured": freshness_rule(record(champion=None, freshness_new=fresh(0.2))),
        "the challenger's freshness was not measured": freshness_rule(record(freshness_old=fresh(0.5))),
        "no changed-fact probe since the champion's training data (n = 0)": freshness_rule(
            record(freshness_new=fresh(None, 0), freshness_old=fresh(None, 0))),
        "a fresh share is missing": freshness_rule(record(freshness_new=fresh(None), freshness_old=fresh(0.5))),
    }
    for why, outcome in skipped.items():
        assert outcome.checks[0]["reason"] == f"PASS freshness: {why}; not compared"
        assert outcome.checks[0]["passed"] and not outcome.hold


LEGACY_RULES = tuple(rule for rule in RULES if rule not in (base_rule, freshness_rule))


def _random_metrics(rng: random.Random, names=("token_f1", "exact_match", "rougeL", "perplexity")) -> dict:
    values = {name: rng.choice([rng.random(), rng.random() * 60, float("nan")]) if name == "perplexity"
              else rng.choice([rng.random(), rng.random(), float("nan")]) for name in names}
    return {k: v for k, v in values.items() if rng.random() > 0.05}  # sometimes a metric is missing


def test_new_rules_only_add_their_own_failures_over_30000_random_cases() -> None:
    """The pre-freshness gate (the six legacy rules) is the reference: on random metrics, CIs, drift, policies and
    random base/freshness inputs, the decision is the legacy one, plus a reject exactly when the base or the
    freshness condition (computed here from plain arithmetic) fails. With neutral inputs (no base, no freshness)
    the action is always the legacy one."""
    rng = random.Random(20261201)
    for _ in range(30_000):
        gate = GATE.model_copy(update={"min_improvement": rng.choice([0.0, 0.01, 0.05]),
                                       "require_ci_above_zero": rng.random() < 0.3,
                                       "min_improvement_over_base": rng.choice([None, 0.0, 0.05, 0.1]),
                                       "freshness_tolerance": rng.choice([0.0, 0.05, 0.2])})
        challenger, champion = _random_metrics(rng), _random_metrics(rng) if rng.random() < 0.7 else None
        ci = {"token_f1": sorted((rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2)))} if rng.random() < 0.5 else None
        drift = rng.choice([None, {"severity": "none"}, {"severity": "moderate"}, SEVERE])
        policy = rng.choice(["block", "require_approval"])
        base = _random_metrics(rng) if rng.random() < 0.7 else None
        new_share, old_share = rng.choice([None, rng.random()]), rng.choice([None, rng.random()])
        n = rng.choice([0, 40])
        inputs = {"base": base, "freshness_new": fresh(new_share, n) if rng.random() < 0.8 else None,
                  "freshness_old": fresh(old_share, n) if champion is not None and rng.random() < 0.8 else None}
        legacy = evaluate(GateInput.build(challenger, champion, ci, drift, gate, DriftParams(policy=policy)),
                          LEGACY_RULES)
        neutral = decide(challenger, champion, ci, drift, gate, DriftParams(policy=policy))
        assert neutral.action == legacy.action
        decision = decide(challenger, champion, ci, drift, gate, DriftParams(policy=policy), **inputs)
        c, b = challenger.get("token_f1"), (base or {}).get("token_f1")
        base_fails = (gate.min_improvement_over_base is not None and base is not None
                      and not (c is not None and b is not None and c == c and b == b
                               and c - b >= gate.min_improvement_over_base - 1e-12))
        fresh_fails = (inputs["freshness_new"] is not None and inputs["freshness_old"] is not None and n > 0
                       and new_share is not None and old_share is not None
                       and old_share - new_share > gate.freshness_tolerance + 1e-12)
        expected = "reject" if base_fails or fresh_fails else legacy.action
        assert decision.action == expected, (decision.reasons, legacy.reasons)
        legacy_checks = [item for item in decision.checks if item["rule"] not in ("base", "freshness", "champion")]
        assert legacy_checks == [item for item in legacy.checks if item["rule"] != "champion"]


def test_gate_params_validate_the_base_margin_and_the_freshness_tolerance() -> None:
    from pydantic import ValidationError

    from evertune.config import load_params

    defaults = load_params().gate
    assert defaults.min_improvement_over_base == 0.05 and defaults.freshness_tolerance == 0.05  # docs/gate.md
    assert GateParams(min_improvement_over_base=None).min_improvement_over_base is None  # the rule off
    for bad in ({"min_improvement_over_base": -0.1}, {"freshness_tolerance": 1.5}, {"freshness_tolerance": -0.01}):
        with pytest.raises(ValidationError):
            GateParams(**bad)
