"""The gate's building blocks: the decision, one check, a rule's outcome and the number readers the rules use.

:mod:`evertune.tuning.gate` holds the record (:class:`~evertune.tuning.gate.GateInput`), the rules and their
table; this module holds what they are made of, so the rule module stays small enough to read in one go.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

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
class RuleOutcome:
    """What one rule returns.

    Attributes:
        checks: The rule's checks, in the order their reasons are listed (may be empty: the rule does not apply).
        hold: True when the rule asks for a human decision; it turns ``promote`` into ``require_approval``
            but never rescues a failed check.
    """

    checks: tuple[Check, ...] = ()
    hold: bool = False
