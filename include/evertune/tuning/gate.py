"""The promotion gate: a pure decision over evaluation metrics, their confidence intervals and drift.

:func:`decide` packs its arguments into one frozen :class:`GateInput` record, runs every rule of the
table :data:`RULES` on it in order, and combines what they return into a :class:`GateDecision`. A rule is a
plain function ``GateInput -> RuleOutcome``: the checks it made (passing and failing alike, each with a
human-readable reason) and whether it asks for a human decision (``hold``). The table, in order:

1. :func:`floor_rule` (``gate.floors``): an absolute bound per metric. For higher-is-better metrics the
   challenger must reach the floor; for metrics in ``gate.lower_is_better`` (perplexity, ...) the "floor" is a
   ceiling.
2. :func:`champion_rule`: without a champion, one passing check says that only floors, the base model and drift
   apply.
3. :func:`base_rule` (``gate.min_improvement_over_base``): the challenger beats the untuned base model (answering
   through the same path, spec and contexts) by at least that margin on the primary metric, with or without a
   champion.
4. :func:`regression_rule` (``gate.tolerances``): vs the champion, no listed metric may get worse by more than
   its tolerance (in the metric's own units, direction-aware).
5. :func:`improvement_rule` (``gate.primary_metric``): the challenger improves on the champion by at least
   ``gate.min_improvement``.
   With ``gate.uncertain_regression: hold``, a shortfall in rules 4, 5 and 7 that the metric's paired-bootstrap CI
   does not establish (the CI of the gain reaches the requirement) holds for a human instead of failing; an
   established one, or one without a CI, fails.
6. :func:`confidence_rule` (``gate.require_ci_above_zero``): the paired-bootstrap CI of the primary metric's
   difference (challenger - champion) must exclude zero on the good side.
7. :func:`freshness_rule` (``gate.freshness_tolerance``): on the changed-fact probes, the challenger's fresh
   share may not fall below the champion's by more than the tolerance.
8. :func:`drift_rule` (``drift.policy``): severe drift rejects (``block``) or holds for a human
   (``require_approval``).
9. :func:`borderline_rule` (``gate.borderline_ci_low``): a challenger whose gain over the champion is not
   established, because the CI of the primary metric's difference reaches below ``borderline_ci_low`` (0: the CI
   straddles zero), is held for a human instead of promoted.

Without a champion, rules 4-6 and 9 return no checks and rule 7 one passing check saying freshness was not compared.
Action precedence: any failed check -> ``reject``; else any rule's hold -> ``require_approval``; else ``promote``.
docs/gate.md explains the defaults (how the base margin was chosen).

Adding a rule is one function and one entry in :data:`RULES` (its position sets where its reasons appear);
:func:`borderline_rule` is the model of a rule that holds instead of failing.

A rule that needs an input the record does not carry yet (the deleted training documents, ...) also adds that
field to :class:`GateInput` (with a default), a keyword argument of the same name to :func:`decide` and
:meth:`GateInput.build`, and the line that passes it in ``evertune.tuning.evaluation.gate_candidate``
(``base``, ``ci_base``, ``freshness_new`` and ``freshness_old`` came in that way).
The record :class:`GateInput`, the check dicts, :class:`RuleOutcome` and the number readers live in
:mod:`evertune.tuning.gate_record`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from evertune.tuning.gate_record import (
    EPS,
    Action,
    Check,
    GateDecision,
    GateInput,
    RuleOutcome,
    bounds_of,
    check,
    fmt,
    interval_of,
    number,
)

if TYPE_CHECKING:
    from evertune.config import DriftParams, GateParams

#: A gate rule: reads the record, returns its checks and hold flag.
Rule = Callable[[GateInput], RuleOutcome]


def _floor_check(record: GateInput, metric: str) -> Check:
    """Check the challenger's ``metric`` against its floor (or ceiling, for lower-is-better metrics)."""
    bound = float(record.params.floors[metric])
    value = record.new(metric)
    if value is None:
        return check("floor", metric, False, None, bound, f"FAIL floor: {metric} is missing from the challenger's metrics")
    if record.lower_is_better(metric):
        ok = value <= bound
        return check("floor", metric, ok, value, bound,
                     f"{'PASS' if ok else 'FAIL'} ceiling: {metric} = {fmt(value)} "
                     f"{'<=' if ok else '>'} {fmt(bound)} (lower is better)")
    ok = value >= bound
    return check("floor", metric, ok, value, bound,
                 f"{'PASS' if ok else 'FAIL'} floor: {metric} = {fmt(value)} {'>=' if ok else '<'} {fmt(bound)}")


def floor_rule(record: GateInput) -> RuleOutcome:
    """One check per ``gate.floors`` entry, in metric-name order; one passing check when no floors are set."""
    if not record.params.floors:
        return RuleOutcome((check("floor", None, True, None, None,
                                  "PASS floor: no floors configured (gate.floors is empty)"),))
    return RuleOutcome(tuple(_floor_check(record, metric) for metric in sorted(record.params.floors)))


def champion_rule(record: GateInput) -> RuleOutcome:
    """Without a champion, one passing check saying that only floors, the base model and drift apply; else no check."""
    if record.champion is not None:
        return RuleOutcome()
    return RuleOutcome((check("champion", None, True, None, None,
                              "PASS champion: no champion yet, so only floors, the base model and drift apply "
                              "(no regression, improvement or freshness checks)"),))


def base_rule(record: GateInput) -> RuleOutcome:
    """Check the primary metric's gain over the untuned base model against ``gate.min_improvement_over_base``.

    Applies with or without a champion; the check's ``value`` is the direction-aware gain. A missing primary
    metric fails. Without base metrics (not evaluated) or with ``min_improvement_over_base: null``, one passing
    check says the base model was not compared.
    """
    primary, required = record.params.primary_metric, record.params.min_improvement_over_base
    if required is None or record.base is None:
        why = "gate.min_improvement_over_base is null" if required is None else "the base model was not evaluated"
        return RuleOutcome((check("base", primary, True, None, required, f"PASS base: {why}; not compared"),))
    gain = record.gain(primary, over="base")
    if gain is None:
        missing = "challenger's" if record.new(primary) is None else "base model's"
        return RuleOutcome((check("base", primary, False, None, required,
                                  f"FAIL base: primary metric {primary} is missing from the {missing} metrics"),))
    ok = gain >= required - EPS
    bounds = interval_of(record.ci_base, primary)
    shown = f"; CI of the difference [{fmt(bounds[0])}, {fmt(bounds[1])}]" if bounds else ""
    return RuleOutcome((check("base", primary, ok, gain, required,
                              f"{'PASS' if ok else 'FAIL'} base: primary {primary} base model "
                              f"{fmt(number(record.base, primary))} -> challenger {fmt(record.new(primary))}, gain "
                              f"{fmt(gain)} {'>=' if ok else '<'} required {fmt(required)}{shown}"),))


def _regression_check(record: GateInput, metric: str) -> tuple[Check, bool]:
    """Check that the challenger is not worse than the champion on ``metric`` by more than its tolerance.

    A metric the challenger lacks fails; one the champion lacks passes without comparison. A drop beyond the
    tolerance fails, unless ``gate.uncertain_regression`` is ``hold`` and the metric's CI does not establish it
    (:func:`_unestablished`): then the check passes and holds for a human.

    Returns:
        The check and whether it holds.
    """
    tolerance = float(record.params.tolerances[metric])
    new, old = record.new(metric), record.old(metric)
    if new is None:
        return check("regression", metric, False, None, tolerance,
                     f"FAIL regression: {metric} is missing from the challenger's metrics"), False
    if old is None:
        return check("regression", metric, True, new, tolerance,
                     f"PASS regression: {metric} not compared (the champion has no {metric})"), False
    worse_by = -record.gain(metric)  # positive is always "worse"
    ok = worse_by <= tolerance + EPS
    change = (f"worse by {fmt(worse_by)}" if worse_by > 0
              else f"better by {fmt(-worse_by)}" if worse_by < 0 else "unchanged")
    said = f"regression: {metric} {fmt(old)} -> {fmt(new)} ({change}; tolerance {fmt(tolerance)})"
    if ok:
        return check("regression", metric, True, new, tolerance, f"PASS {said}"), False
    held, evidence = _unestablished(record, record.gain_interval(metric), -tolerance)
    return check("regression", metric, held, new, tolerance, f"{'HOLD' if held else 'FAIL'} {said}{evidence}"), held


def regression_rule(record: GateInput) -> RuleOutcome:
    """With a champion, one check per ``gate.tolerances`` entry, in metric-name order; else no check."""
    if record.champion is None:
        return RuleOutcome()
    results = [_regression_check(record, metric) for metric in sorted(record.params.tolerances)]
    return RuleOutcome(tuple(item for item, _ in results), hold=any(held for _, held in results))


def _unestablished(record: GateInput, bounds: Sequence[float] | None, required_gain: float) -> tuple[bool, str]:
    """Whether a gain below ``required_gain`` is within the noise, so it holds instead of failing.

    With ``gate.uncertain_regression: hold`` and ``bounds``, the CI of the direction-aware gain, a shortfall is
    *established* only when the whole CI lies below ``required_gain`` (its upper bound is below it). Otherwise
    the data cannot tell the challenger from one that meets the requirement: a human decides.

    Returns:
        ``(held, evidence)``: the evidence is the text appended to the check's reason ("" without a CI).
    """
    if bounds is None:
        return False, ""
    shown = f"[{fmt(bounds[0])}, {fmt(bounds[1])}]"
    if record.params.uncertain_regression == "hold" and bounds[1] >= required_gain - EPS:
        return True, (f"; CI of the gain {shown} reaches {fmt(required_gain)}, so the shortfall is not established "
                      "(gate.uncertain_regression: hold): a human decides")
    return False, f"; CI of the gain {shown} lies below {fmt(required_gain)}: the shortfall is established"


def improvement_rule(record: GateInput) -> RuleOutcome:
    """With a champion, check the primary metric's gain against ``gate.min_improvement``; else no check.

    The check fails when either side lacks the primary metric; its ``value`` is the direction-aware gain.
    """
    if record.champion is None:
        return RuleOutcome()
    primary, required = record.params.primary_metric, record.params.min_improvement
    new, old = record.new(primary), record.old(primary)
    gain = record.gain(primary)
    if gain is None:
        missing = "challenger" if new is None else "champion"
        return RuleOutcome((check("improvement", primary, False, new, required,
                                  f"FAIL improvement: primary metric {primary} is missing from the {missing}'s metrics"),))
    ok = gain >= required - EPS
    said = f"improvement: primary {primary} {fmt(old)} -> {fmt(new)}, gain {fmt(gain)}"
    if ok:
        return RuleOutcome((check("improvement", primary, True, gain, required,
                                  f"PASS {said} >= required {fmt(required)}"),))
    held, evidence = _unestablished(record, record.gain_interval(primary), required)
    return RuleOutcome((check("improvement", primary, held, gain, required,
                              f"{'HOLD' if held else 'FAIL'} {said} < required {fmt(required)}{evidence}"),), hold=held)


def confidence_rule(record: GateInput) -> RuleOutcome:
    """With a champion and ``gate.require_ci_above_zero``, check that the primary CI excludes zero on the good side.

    The good side is above zero, or below it for a lower-is-better primary metric. A missing CI fails.
    Without a champion or with the setting off, the rule makes no check.
    """
    if record.champion is None or not record.params.require_ci_above_zero:
        return RuleOutcome()
    primary = record.params.primary_metric
    bounds = record.interval(primary)
    if bounds is None:
        return RuleOutcome((check("confidence", primary, False, None, 0.0,
                                  f"FAIL confidence: gate.require_ci_above_zero is set but no CI was given for {primary}"),))
    shown = f"[{fmt(bounds[0])}, {fmt(bounds[1])}]"
    if record.lower_is_better(primary):
        ok = bounds[1] < 0.0
        reason = f"CI of {primary} difference {shown} upper bound {'<' if ok else '>='} 0 (lower is better)"
    else:
        ok = bounds[0] > 0.0
        reason = f"CI of {primary} difference {shown} lower bound {'>' if ok else '<='} 0"
    return RuleOutcome((check("confidence", primary, ok, list(bounds), 0.0,
                              f"{'PASS' if ok else 'FAIL'} confidence: {reason}"),))


def _fresh_share(score: Mapping[str, Any] | None) -> tuple[int, float | None]:
    """``(n, fresh_share)`` of a freshness score; ``(0, None)`` for ``None``."""
    if score is None:
        return 0, None
    return int(score.get("n") or 0), number(score, "fresh_share")


def freshness_rule(record: GateInput) -> RuleOutcome:
    """Check that the challenger is not less fresh than the champion beyond ``gate.freshness_tolerance``.

    Both fresh shares come from the same changed-fact probes (questions whose fact changed after the champion's
    training data). Without a champion's score, or with no probe (``n == 0``) or no share on either side, one
    passing check says why freshness was not compared. A drop beyond the tolerance that the paired CI
    (``ci_freshness``) does not establish holds under ``gate.uncertain_regression: hold``, like a regression.
    """
    tolerance = record.params.freshness_tolerance
    (n, new), (_, old) = _fresh_share(record.freshness_new), _fresh_share(record.freshness_old)
    skipped = ("no champion freshness was measured" if record.freshness_old is None
               else "the challenger's freshness was not measured" if record.freshness_new is None
               else "no changed-fact probe since the champion's training data (n = 0)" if n == 0
               else "a fresh share is missing" if new is None or old is None else None)
    if skipped:
        return RuleOutcome((check("freshness", "fresh_share", True, None, tolerance,
                                  f"PASS freshness: {skipped}; not compared"),))
    worse_by = old - new
    ok = worse_by <= tolerance + EPS
    change = (f"worse by {fmt(worse_by)}" if worse_by > 0 else f"better by {fmt(-worse_by)}" if worse_by < 0
              else "unchanged")
    said = f"freshness: fresh share {fmt(old)} -> {fmt(new)} on {n} changed-fact probes ({change}; tolerance " \
           f"{fmt(tolerance)})"
    if ok:
        return RuleOutcome((check("freshness", "fresh_share", True, new, tolerance, f"PASS {said}"),))
    held, evidence = _unestablished(record, bounds_of(record.ci_freshness), -tolerance)
    return RuleOutcome((check("freshness", "fresh_share", held, new, tolerance,
                              f"{'HOLD' if held else 'FAIL'} {said}{evidence}"),), hold=held)


def drift_rule(record: GateInput) -> RuleOutcome:
    """Apply ``drift.policy`` to the drift severity: severe drift fails (``block``) or holds (``require_approval``).

    No report, or a severity below ``severe``, gives one passing check.
    """
    severity, policy = record.drift_severity, record.drift_params.policy
    if severity is None:
        return RuleOutcome((check("drift", None, True, None, policy,
                                  "PASS drift: no drift report given; drift not checked"),))
    if severity != "severe":
        return RuleOutcome((check("drift", None, True, severity, policy,
                                  f"PASS drift: severity '{severity}' is below 'severe'"),))
    if policy == "block":
        return RuleOutcome((check("drift", None, False, severity, policy,
                                  "FAIL drift: severe training-data drift and drift.policy is 'block'"),))
    return RuleOutcome((check("drift", None, True, severity, policy,
                              "HOLD drift: severe training-data drift; drift.policy 'require_approval' asks for "
                              "a human decision"),), hold=True)


def borderline_rule(record: GateInput) -> RuleOutcome:
    """With a champion and ``gate.borderline_ci_low`` set, hold a challenger whose gain is not established.

    The gain's CI is the paired-bootstrap CI of the primary metric's difference, direction-aware. When its lower
    bound is below ``borderline_ci_low`` (0: the CI straddles zero, so the data do not rule out that the
    challenger is worse) the rule holds for a human (``require_approval``); any failed check elsewhere still
    rejects. Without a CI (not computed) one passing check says the band was not applied. Without a champion or
    with the setting ``null``, the rule makes no check.
    """
    low = record.params.borderline_ci_low
    if record.champion is None or low is None:
        return RuleOutcome()
    primary = record.params.primary_metric
    bounds = record.gain_interval(primary)
    if bounds is None:
        return RuleOutcome((check("borderline", primary, True, None, low,
                                  f"PASS borderline: no CI of the {primary} gain was given; band not applied"),))
    shown = f"[{fmt(bounds[0])}, {fmt(bounds[1])}]"
    if bounds[0] >= low - EPS:
        return RuleOutcome((check("borderline", primary, True, list(bounds), low,
                                  f"PASS borderline: CI of the {primary} gain {shown} lower bound >= {fmt(low)}"),))
    return RuleOutcome((check("borderline", primary, True, list(bounds), low,
                              f"HOLD borderline: CI of the {primary} gain {shown} reaches below {fmt(low)} "
                              "(gate.borderline_ci_low): the gain is not established; a human decides"),), hold=True)


#: The gate's rules, in the order their reasons are listed. Every rule runs; none short-circuits.
RULES: tuple[Rule, ...] = (floor_rule, champion_rule, base_rule, regression_rule, improvement_rule, confidence_rule,
                           freshness_rule, drift_rule, borderline_rule)


def evaluate(record: GateInput, rules: Sequence[Rule] = RULES) -> GateDecision:
    """Run ``rules`` on ``record`` in order and combine their outcomes.

    Args:
        record: The evaluation to judge.
        rules: The rule table; :data:`RULES` by default.

    Returns:
        ``reject`` when any check failed, else ``require_approval`` when any rule held, else ``promote``;
        with every check and its reason in rule order.
    """
    outcomes = [rule(record) for rule in rules]
    checks = [item for outcome in outcomes for item in outcome.checks]
    failed = any(not item["passed"] for item in checks)
    held = any(outcome.hold for outcome in outcomes)
    action: Action = "reject" if failed else ("require_approval" if held else "promote")
    return GateDecision(
        passed=action == "promote",
        action=action,
        reasons=tuple(item["reason"] for item in checks),
        checks=checks,
    )


def decide(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    ci: Mapping[str, Sequence[float]] | None,
    drift: Any,
    params: GateParams,
    drift_params: DriftParams,
    *,
    base: Mapping[str, float] | None = None,
    ci_base: Mapping[str, Sequence[float]] | None = None,
    freshness_new: Mapping[str, Any] | None = None,
    freshness_old: Mapping[str, Any] | None = None,
    ci_freshness: Sequence[float] | None = None,
) -> GateDecision:
    """Decide whether a challenger model replaces the champion, by running :data:`RULES`.

    Args:
        challenger: Aggregate metrics of the challenger on the golden set, e.g. ``{"token_f1": 0.41, ...}``.
        champion: The champion's metrics on the same set, or ``None`` when there is no champion yet.
        ci: Per metric, the paired-bootstrap CI ``(low, high)`` of ``challenger - champion`` (raw difference,
            not direction-adjusted), e.g. from :func:`evertune.tuning.metrics.paired_bootstrap_ci`. Only the
            primary metric's interval is used.
        drift: A :class:`evertune.tuning.drift.DriftReport`, a mapping with a ``severity`` key, or ``None``
            (no drift check was run).
        params: The ``gate`` section.
        drift_params: The ``drift`` section (for ``policy``).
        base: The untuned base model's metrics on the same set and contexts; ``None``: not evaluated (the base
            rule passes saying so).
        ci_base: Per metric, the paired-bootstrap CI of ``challenger - base`` (shown in the base rule's reason).
        freshness_new: The challenger's freshness score (``n``, ``fresh_share``); ``None``: not measured.
        freshness_old: The champion's freshness score on the same probes; ``None``: not measured.
        ci_freshness: The paired-bootstrap CI of the fresh share's difference (challenger - champion) on those
            probes; ``None``: not computed (a drop beyond the tolerance then fails).

    Returns:
        The decision with every reason and check.

    Raises:
        ValueError: ``drift`` is given but carries no valid severity.
    """
    record = GateInput.build(challenger, champion, ci, drift, params, drift_params, base=base, ci_base=ci_base,
                             freshness_new=freshness_new, freshness_old=freshness_old, ci_freshness=ci_freshness)
    return evaluate(record)


__all__ = [
    "RULES", "Action", "Check", "GateDecision", "GateInput", "Rule", "RuleOutcome", "base_rule", "borderline_rule",
    "champion_rule",
    "check", "confidence_rule", "decide", "drift_rule", "evaluate", "floor_rule", "freshness_rule",
    "improvement_rule", "regression_rule",
]
