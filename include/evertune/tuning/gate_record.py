"""The gate's building blocks: the record the rules read, the decision, one check, a rule's outcome, number readers.

:mod:`evertune.tuning.gate` holds the rules and their table; this module holds what they are made of
(:class:`GateInput` included), so the rule module stays small enough to read in one go.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from evertune.config import DriftParams, GateParams

Action = Literal["promote", "reject", "require_approval"]

#: One check: ``rule``, ``metric``, ``passed``, ``value``, ``threshold``, ``reason`` (see :func:`check`).
Check = dict[str, Any]

# Float slack so that a difference equal to its threshold, up to rounding, counts as meeting it.
EPS = 1e-12


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


def fmt(value: float | None) -> str:
    """Format a number with 4 significant digits, or ``n/a`` for ``None``."""
    return "n/a" if value is None else f"{value:.4g}"


def number(metrics: Mapping[str, float] | None, name: str) -> float | None:
    """Return ``metrics[name]`` as a float; ``None`` when the mapping, the key or the value is missing or NaN.

    A missing or NaN metric is treated as absent, so it can never satisfy a rule.
    """
    if metrics is None or name not in metrics or metrics[name] is None:
        return None
    value = float(metrics[name])
    return None if math.isnan(value) else value


def read_severity(drift: Any) -> str | None:
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


def interval_of(ci: Mapping[str, Sequence[float]] | None, name: str) -> tuple[float, float] | None:
    """Return the ``(low, high)`` interval of ``name`` from an object with ``low``/``high`` or a pair; else ``None``."""
    return bounds_of(ci[name]) if ci and name in ci else None


def bounds_of(bounds: Any) -> tuple[float, float] | None:
    """Return ``(low, high)`` of one interval (an object with ``low``/``high``, or a pair); ``None`` for ``None``."""
    if bounds is None:
        return None
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
class RuleOutcome:
    """What one rule returns.

    Attributes:
        checks: The rule's checks, in the order their reasons are listed (may be empty: the rule does not apply).
        hold: True when the rule asks for a human decision; it turns ``promote`` into ``require_approval``
            but never rescues a failed check.
    """

    checks: tuple[Check, ...] = ()
    hold: bool = False


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
        base: The untuned base model's metrics on the same set, same contexts; ``None``: not evaluated.
        ci_base: Per metric, the paired-bootstrap CI of ``challenger - base``, or ``None``.
        freshness_new: The challenger's freshness score on the changed-fact probes (``n``, ``fresh_share``, ...,
            see :func:`evertune.tuning.freshness.score_freshness`); ``None``: not measured.
        freshness_old: The champion's, on the same probes; ``None``: no champion or not measured.
        ci_freshness: The paired-bootstrap CI ``(low, high)`` of the fresh share's difference (challenger -
            champion, per probe) on those probes; ``None``: not computed.
    """

    challenger: Mapping[str, float]
    champion: Mapping[str, float] | None
    ci: Mapping[str, Sequence[float]] | None
    drift_severity: str | None
    params: GateParams
    drift_params: DriftParams
    base: Mapping[str, float] | None = None
    ci_base: Mapping[str, Sequence[float]] | None = None
    freshness_new: Mapping[str, Any] | None = None
    freshness_old: Mapping[str, Any] | None = None
    ci_freshness: Sequence[float] | None = None

    @classmethod
    def build(
        cls,
        challenger: Mapping[str, float],
        champion: Mapping[str, float] | None,
        ci: Mapping[str, Sequence[float]] | None,
        drift: Any,
        params: GateParams,
        drift_params: DriftParams,
        **inputs: Any,
    ) -> GateInput:
        """Make the record from :func:`decide`'s arguments, reading the severity out of ``drift``.

        ``inputs`` are the optional fields by name (``base``, ``ci_base``, ``freshness_new``, ``freshness_old``,
        ``ci_freshness``).

        Raises:
            ValueError: ``drift`` is given but carries no valid severity.
            TypeError: An unknown input name.
        """
        return cls(challenger, champion, ci, read_severity(drift), params, drift_params, **inputs)

    def lower_is_better(self, metric: str) -> bool:
        """Whether ``metric`` is listed in ``gate.lower_is_better``."""
        return metric in self.params.lower_is_better

    def new(self, metric: str) -> float | None:
        """The challenger's value of ``metric``; ``None`` when missing or NaN."""
        return number(self.challenger, metric)

    def old(self, metric: str) -> float | None:
        """The champion's value of ``metric``; ``None`` without a champion or when missing or NaN."""
        return number(self.champion, metric)

    def gain(self, metric: str, over: str = "champion") -> float | None:
        """How much better the challenger is than the champion (or ``over="base"``, the base model) on ``metric``.

        Direction-aware: negative is worse.

        Returns:
            ``None`` when either side lacks the metric.
        """
        new = self.new(metric)
        old = self.old(metric) if over == "champion" else number(self.base, metric)
        if new is None or old is None:
            return None
        return (old - new) if self.lower_is_better(metric) else (new - old)

    def interval(self, metric: str) -> tuple[float, float] | None:
        """The raw ``(low, high)`` CI of the challenger - champion difference on ``metric``, or ``None``."""
        return interval_of(self.ci, metric)

    def gain_interval(self, metric: str) -> tuple[float, float] | None:
        """The CI of the direction-aware gain over the champion on ``metric`` (negated for lower-is-better)."""
        bounds = self.interval(metric)
        if bounds is None:
            return None
        return (-bounds[1], -bounds[0]) if self.lower_is_better(metric) else (bounds[0], bounds[1])
