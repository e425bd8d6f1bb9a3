"""The promotion gate: a pure decision over evaluation metrics, their confidence intervals and drift.

Four rules, each producing one or more human-readable reasons (passing and failing alike):

1. **Floors** (``gate.floors``): an absolute bound per metric. For higher-is-better metrics the challenger must
   reach the floor; for metrics in ``gate.lower_is_better`` (perplexity, ...) the "floor" is a ceiling.
2. **No regression** (``gate.tolerances``): vs the champion, no listed metric may get worse by more than its
   tolerance (in the metric's own units, direction-aware).
3. **Primary improvement** (``gate.primary_metric``): the challenger improves on the champion by at least
   ``gate.min_improvement``; with ``gate.require_ci_above_zero`` the paired-bootstrap CI of the difference
   (challenger - champion) must also exclude zero on the good side.
4. **Drift** (``drift.policy``): severe drift rejects (``block``) or asks a human (``require_approval``).

Without a champion only rules 1 and 4 apply. Action precedence: any failed rule 1-3 -> ``reject``; else severe
drift -> ``reject`` (block) or ``require_approval``; else ``promote``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from evertune.config import DriftParams, GateParams

Action = Literal["promote", "reject", "require_approval"]


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
    return "n/a" if value is None else f"{value:.4g}"


def _number(metrics: Mapping[str, float] | None, name: str) -> float | None:
    # A missing or NaN metric is treated as absent: it can never satisfy a rule.
    if metrics is None or name not in metrics or metrics[name] is None:
        return None
    value = float(metrics[name])
    return None if math.isnan(value) else value


def _drift_severity(drift: Any) -> str | None:
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
    if not ci or name not in ci or ci[name] is None:
        return None
    bounds = ci[name]
    low = getattr(bounds, "low", None)
    high = getattr(bounds, "high", None)
    if low is None or high is None:
        low, high = bounds[0], bounds[1]
    return float(low), float(high)


def decide(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    ci: Mapping[str, Sequence[float]] | None,
    drift: Any,
    params: GateParams,
    drift_params: DriftParams,
) -> GateDecision:
    """Decide whether a challenger model replaces the champion.

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
    lower_better = set(params.lower_is_better)
    checks: list[dict[str, Any]] = []

    def add(rule: str, metric: str | None, passed: bool, value: Any, threshold: Any, reason: str) -> None:
        checks.append(
            {"rule": rule, "metric": metric, "passed": bool(passed), "value": value, "threshold": threshold,
             "reason": reason}
        )

    # Rule 1: absolute floors (ceilings for lower-is-better metrics).
    for metric in sorted(params.floors):
        bound = float(params.floors[metric])
        value = _number(challenger, metric)
        if value is None:
            add("floor", metric, False, None, bound, f"FAIL floor: {metric} is missing from the challenger's metrics")
        elif metric in lower_better:
            ok = value <= bound
            add("floor", metric, ok, value, bound,
                f"{'PASS' if ok else 'FAIL'} ceiling: {metric} = {_fmt(value)} "
                f"{'<=' if ok else '>'} {_fmt(bound)} (lower is better)")
        else:
            ok = value >= bound
            add("floor", metric, ok, value, bound,
                f"{'PASS' if ok else 'FAIL'} floor: {metric} = {_fmt(value)} {'>=' if ok else '<'} {_fmt(bound)}")
    if not params.floors:
        add("floor", None, True, None, None, "PASS floor: no floors configured (gate.floors is empty)")

    # Rules 2 and 3 compare with the champion.
    if champion is None:
        add("champion", None, True, None, None,
            "PASS champion: no champion yet, so only floors and drift apply (no regression or improvement checks)")
    else:
        for metric in sorted(params.tolerances):
            tolerance = float(params.tolerances[metric])
            new, old = _number(challenger, metric), _number(champion, metric)
            if new is None:
                add("regression", metric, False, None, tolerance,
                    f"FAIL regression: {metric} is missing from the challenger's metrics")
                continue
            if old is None:
                add("regression", metric, True, new, tolerance,
                    f"PASS regression: {metric} not compared (the champion has no {metric})")
                continue
            # Orient so that a positive number is always "worse".
            worse_by = (new - old) if metric in lower_better else (old - new)
            ok = worse_by <= tolerance + 1e-12
            change = (f"worse by {_fmt(worse_by)}" if worse_by > 0
                      else f"better by {_fmt(-worse_by)}" if worse_by < 0 else "unchanged")
            add("regression", metric, ok, new, tolerance,
                f"{'PASS' if ok else 'FAIL'} regression: {metric} {_fmt(old)} -> {_fmt(new)} "
                f"({change}; tolerance {_fmt(tolerance)})")

        primary = params.primary_metric
        new, old = _number(challenger, primary), _number(champion, primary)
        if new is None or old is None:
            missing = "challenger" if new is None else "champion"
            add("improvement", primary, False, new, params.min_improvement,
                f"FAIL improvement: primary metric {primary} is missing from the {missing}'s metrics")
        else:
            gain = (old - new) if primary in lower_better else (new - old)
            ok = gain >= params.min_improvement - 1e-12
            add("improvement", primary, ok, gain, params.min_improvement,
                f"{'PASS' if ok else 'FAIL'} improvement: primary {primary} {_fmt(old)} -> {_fmt(new)}, "
                f"gain {_fmt(gain)} {'>=' if ok else '<'} required {_fmt(params.min_improvement)}")
        if params.require_ci_above_zero:
            bounds = _interval(ci, primary)
            if bounds is None:
                add("confidence", primary, False, None, 0.0,
                    f"FAIL confidence: gate.require_ci_above_zero is set but no CI was given for {primary}")
            elif primary in lower_better:
                ok = bounds[1] < 0.0
                add("confidence", primary, ok, list(bounds), 0.0,
                    f"{'PASS' if ok else 'FAIL'} confidence: CI of {primary} difference "
                    f"[{_fmt(bounds[0])}, {_fmt(bounds[1])}] upper bound {'<' if ok else '>='} 0 (lower is better)")
            else:
                ok = bounds[0] > 0.0
                add("confidence", primary, ok, list(bounds), 0.0,
                    f"{'PASS' if ok else 'FAIL'} confidence: CI of {primary} difference "
                    f"[{_fmt(bounds[0])}, {_fmt(bounds[1])}] lower bound {'>' if ok else '<='} 0")

    # Rule 4: drift policy.
    severity = _drift_severity(drift)
    needs_approval = False
    if severity is None:
        add("drift", None, True, None, drift_params.policy, "PASS drift: no drift report given; drift not checked")
    elif severity == "severe":
        if drift_params.policy == "block":
            add("drift", None, False, severity, drift_params.policy,
                "FAIL drift: severe training-data drift and drift.policy is 'block'")
        else:
            needs_approval = True
            add("drift", None, True, severity, drift_params.policy,
                "HOLD drift: severe training-data drift; drift.policy 'require_approval' asks for a human decision")
    else:
        add("drift", None, True, severity, drift_params.policy,
            f"PASS drift: severity '{severity}' is below 'severe'")

    failed = any(not check["passed"] for check in checks)
    action: Action = "reject" if failed else ("require_approval" if needs_approval else "promote")
    return GateDecision(
        passed=action == "promote",
        action=action,
        reasons=tuple(check["reason"] for check in checks),
        checks=checks,
    )
