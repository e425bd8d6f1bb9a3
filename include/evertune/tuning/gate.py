"""The promotion gate: a pure decision over evaluation metrics, their confidence intervals and drift.

:func:`decide` packs its arguments into one frozen :class:`GateInput` record, runs every rule of the
table :data:`RULES` on it in order, and combines what they return into a :class:`GateDecision`. A rule is a
plain function ``GateInput -> RuleOutcome``: the checks it made (passing and failing alike, each with a
human-readable reason) and whether it asks for a human decision (``hold``). The table, in order:

1. :func:`floor_rule` (``gate.floors``): an absolute bound per metric. For higher-is-better metrics the
   challenger must reach the floor; for metrics in ``gate.lower_is_better`` (perplexity, ...) the "floor" is a
   ceiling.
2. :func:`champion_rule`: without a champion, one passing check says that only floors and drift apply.
3. :func:`regression_rule` (``gate.tolerances``): vs the champion, no listed metric may get worse by more than
   its tolerance (in the metric's own units, direction-aware).
4. :func:`improvement_rule` (``gate.primary_metric``): the challenger improves on the champion by at least
   ``gate.min_improvement``.
5. :func:`confidence_rule` (``gate.require_ci_above_zero``): the paired-bootstrap CI of the primary metric's
   difference (challenger - champion) must exclude zero on the good side.
6. :func:`drift_rule` (``drift.policy``): severe drift rejects (``block``) or holds for a human
   (``require_approval``).

Without a champion, rules 3-5 return no checks. Action precedence: any failed check -> ``reject``; else any
rule's hold -> ``require_approval``; else ``promote``.

Adding a rule is one function and one entry in :data:`RULES` (its position sets where its reasons appear).
For example, a borderline band that asks a human when the primary gain only just clears the minimum::

    def borderline_rule(record: GateInput) -> RuleOutcome:
        \"\"\"Hold for a human when the primary gain is under min_improvement + 0.01.\"\"\"
        gain = record.gain(record.params.primary_metric)
        if record.champion is None or gain is None or gain >= record.params.min_improvement + 0.01:
            return RuleOutcome()
        return RuleOutcome((check("borderline", record.params.primary_metric, True, gain, 0.01,
                                  f"HOLD borderline: gain {gain:.4g} is within 0.01 of the minimum"),), hold=True)

    RULES = (floor_rule, champion_rule, regression_rule, improvement_rule, confidence_rule, drift_rule,
             borderline_rule)

A rule that needs an input the record does not carry yet (the data interval's age for freshness, the base
model's metrics for beat-the-base, the deleted training documents) also adds that field to :class:`GateInput`
(with a default) and fills it in :meth:`GateInput.build`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from evertune.config import DriftParams, GateParams

Action = Literal["promote", "reject", "require_approval"]

#: One check: ``rule``, ``metric``, ``passed``, ``value``, ``threshold``, ``reason`` (see :func:`check`).
Check = dict[str, Any]

# Float slack so that a difference equal to its threshold, up to rounding, counts as meeting it.
_EPS = 1e-12


@dataclass(frozen=True)
class GateDecision:
    """The outcome of :func:`decide`.

    Attributes:
        passed: True only when the challenger may be promoted automatically (``action == "promote"``).
        action: ``promote``, ``reject`` or ``require_approval``.
        reasons: One sentence per check, passing and failing, in rule order.
        checks: One dict per check: ``rule``, ``metric``, ``passed``, ``value``, ``threshold``, ``reason``.
    """

    passed: bool
    action: Action
    reasons: tuple[str, ...]
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed_reasons(self) -> list[str]:
        """Reasons of the checks that failed (what to put in a ``QualityGateFailed``)."""
        return [check["reason"] for check in self.checks if not check["passed"]]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``mlflow.log_dict`` / XCom."""
        return {
            "passed": self.passed,
            "action": self.action,
            "reasons": list(self.reasons),
            "checks": [dict(check) for check in self.checks],
        }


def _fmt(value: float | None) -> str:
    """Format a number with 4 significant digits, or ``n/a`` for ``None``."""
    return "n/a" if value is None else f"{value:.4g}"


def _number(metrics: Mapping[str, float] | None, name: str) -> float | None:
    """Return ``metrics[name]`` as a float; ``None`` when the mapping, the key or the value is missing or NaN.

    A missing or NaN metric is treated as absent, so it can never satisfy a rule.
    """
    if metrics is None or name not in metrics or metrics[name] is None:
        return None
    value = float(metrics[name])
    return None if math.isnan(value) else value


def _drift_severity(drift: Any) -> str | None:
    """Read ``severity`` from a drift report object or mapping; ``None`` when no report is given.

    Raises:
        ValueError: The severity is not ``none``, ``moderate`` or ``severe``.
    """
    if drift is None:
        return None
    if isinstance(drift, Mapping):
        severity = drift.get("severity")
    else:
        severity = getattr(drift, "severity", None)
    if severity not in ("none", "moderate", "severe"):
        raise ValueError(f"drift report has no valid severity (got {severity!r})")
    return severity


def _interval(ci: Mapping[str, Sequence[float]] | None, name: str) -> tuple[float, float] | None:
    """Return the ``(low, high)`` interval of ``name`` from an object with ``low``/``high`` or a pair; else ``None``."""
    if not ci or name not in ci or ci[name] is None:
        return None
    bounds = ci[name]
    low = getattr(bounds, "low", None)
    high = getattr(bounds, "high", None)
    if low is None or high is None:
        low, high = bounds[0], bounds[1]
    return float(low), float(high)


def check(rule: str, metric: str | None, passed: bool, value: Any, threshold: Any, reason: str) -> Check:
    """Build one check dict, with ``passed`` coerced to ``bool``."""
    return {"rule": rule, "metric": metric, "passed": bool(passed), "value": value, "threshold": threshold,
            "reason": reason}


@dataclass(frozen=True)
class GateInput:
    """Everything the rules look at: one evaluation of a challenger, with the gate and drift settings.

    Attributes:
        challenger: Aggregate metrics of the challenger on the golden set.
        champion: The champion's metrics on the same set, or ``None`` when there is no champion yet.
        ci: Per metric, the paired-bootstrap CI of ``challenger - champion`` (a ``(low, high)`` pair or an object
            with ``low``/``high``), or ``None``.
        drift_severity: ``none``, ``moderate`` or ``severe``; ``None`` when no drift check was run.
        params: The ``gate`` section.
        drift_params: The ``drift`` section.
    """

    challenger: Mapping[str, float]
    champion: Mapping[str, float] | None
    ci: Mapping[str, Sequence[float]] | None
    drift_severity: str | None
    params: GateParams
    drift_params: DriftParams

    @classmethod
    def build(
        cls,
        challenger: Mapping[str, float],
        champion: Mapping[str, float] | None,
        ci: Mapping[str, Sequence[float]] | None,
        drift: Any,
        params: GateParams,
        drift_params: DriftParams,
    ) -> GateInput:
        """Make the record from :func:`decide`'s arguments, reading the severity out of ``drift``.

        Raises:
            ValueError: ``drift`` is given but carries no valid severity.
        """
        return cls(challenger, champion, ci, _drift_severity(drift), params, drift_params)

    def lower_is_better(self, metric: str) -> bool:
        """Whether ``metric`` is listed in ``gate.lower_is_better``."""
        return metric in self.params.lower_is_better

    def new(self, metric: str) -> float | None:
        """The challenger's value of ``metric``; ``None`` when missing or NaN."""
        return _number(self.challenger, metric)

    def old(self, metric: str) -> float | None:
        """The champion's value of ``metric``; ``None`` without a champion or when missing or NaN."""
        return _number(self.champion, metric)

    def gain(self, metric: str) -> float | None:
        """How much better the challenger is than the champion on ``metric`` (direction-aware; negative is worse).

        Returns:
            ``None`` when either side lacks the metric.
        """
        new, old = self.new(metric), self.old(metric)
        if new is None or old is None:
            return None
        return (old - new) if self.lower_is_better(metric) else (new - old)

    def interval(self, metric: str) -> tuple[float, float] | None:
        """The raw ``(low, high)`` CI of the challenger - champion difference on ``metric``, or ``None``."""
        return _interval(self.ci, metric)


@dataclass(frozen=True)
class RuleOutcome:
    """What one rule returns.

    Attributes:
        checks: The rule's checks, in the order their reasons are listed (may be empty: the rule does not apply).
        hold: True when the rule asks for a human decision; it turns ``promote`` into ``require_approval``
            but never rescues a failed check.
    """

    checks: tuple[Check, ...] = ()
    hold: bool = False


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
                     f"{'PASS' if ok else 'FAIL'} ceiling: {metric} = {_fmt(value)} "
                     f"{'<=' if ok else '>'} {_fmt(bound)} (lower is better)")
    ok = value >= bound
    return check("floor", metric, ok, value, bound,
                 f"{'PASS' if ok else 'FAIL'} floor: {metric} = {_fmt(value)} {'>=' if ok else '<'} {_fmt(bound)}")


def floor_rule(record: GateInput) -> RuleOutcome:
    """One check per ``gate.floors`` entry, in metric-name order; one passing check when no floors are set."""
    if not record.params.floors:
        return RuleOutcome((check("floor", None, True, None, None,
                                  "PASS floor: no floors configured (gate.floors is empty)"),))
    return RuleOutcome(tuple(_floor_check(record, metric) for metric in sorted(record.params.floors)))


def champion_rule(record: GateInput) -> RuleOutcome:
    """Without a champion, one passing check saying that only floors and drift apply; else no check."""
    if record.champion is not None:
        return RuleOutcome()
    return RuleOutcome((check("champion", None, True, None, None,
                              "PASS champion: no champion yet, so only floors and drift apply "
                              "(no regression or improvement checks)"),))


def _regression_check(record: GateInput, metric: str) -> Check:
    """Check that the challenger is not worse than the champion on ``metric`` by more than its tolerance.

    A metric the challenger lacks fails; one the champion lacks passes without comparison.
    """
    tolerance = float(record.params.tolerances[metric])
    new, old = record.new(metric), record.old(metric)
    if new is None:
        return check("regression", metric, False, None, tolerance,
                     f"FAIL regression: {metric} is missing from the challenger's metrics")
    if old is None:
        return check("regression", metric, True, new, tolerance,
                     f"PASS regression: {metric} not compared (the champion has no {metric})")
    worse_by = -record.gain(metric)  # positive is always "worse"
    ok = worse_by <= tolerance + _EPS
    change = (f"worse by {_fmt(worse_by)}" if worse_by > 0
              else f"better by {_fmt(-worse_by)}" if worse_by < 0 else "unchanged")
    return check("regression", metric, ok, new, tolerance,
                 f"{'PASS' if ok else 'FAIL'} regression: {metric} {_fmt(old)} -> {_fmt(new)} "
                 f"({change}; tolerance {_fmt(tolerance)})")


def regression_rule(record: GateInput) -> RuleOutcome:
    """With a champion, one check per ``gate.tolerances`` entry, in metric-name order; else no check."""
    if record.champion is None:
        return RuleOutcome()
    return RuleOutcome(tuple(_regression_check(record, metric) for metric in sorted(record.params.tolerances)))


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
    ok = gain >= required - _EPS
    return RuleOutcome((check("improvement", primary, ok, gain, required,
                              f"{'PASS' if ok else 'FAIL'} improvement: primary {primary} {_fmt(old)} -> {_fmt(new)}, "
                              f"gain {_fmt(gain)} {'>=' if ok else '<'} required {_fmt(required)}"),))


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
    shown = f"[{_fmt(bounds[0])}, {_fmt(bounds[1])}]"
    if record.lower_is_better(primary):
        ok = bounds[1] < 0.0
        reason = f"CI of {primary} difference {shown} upper bound {'<' if ok else '>='} 0 (lower is better)"
    else:
        ok = bounds[0] > 0.0
        reason = f"CI of {primary} difference {shown} lower bound {'>' if ok else '<='} 0"
    return RuleOutcome((check("confidence", primary, ok, list(bounds), 0.0,
                              f"{'PASS' if ok else 'FAIL'} confidence: {reason}"),))


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


#: The gate's rules, in the order their reasons are listed. Every rule runs; none short-circuits.
RULES: tuple[Rule, ...] = (floor_rule, champion_rule, regression_rule, improvement_rule, confidence_rule, drift_rule)


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

    Returns:
        The decision with every reason and check.

    Raises:
        ValueError: ``drift`` is given but carries no valid severity.
    """
    return evaluate(GateInput.build(challenger, champion, ci, drift, params, drift_params))
