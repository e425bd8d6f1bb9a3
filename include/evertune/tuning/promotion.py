"""Moving the ``champion`` alias: promotion for a passing gate decision or a recorded approval, and rollback.

The champion history is a registered-model tag ``champion_history`` (JSON list of versions, oldest first).
:func:`promote` appends to it; :func:`rollback` pops the current champion and restores the one before it, so two
rollbacks in a row walk two promotions back (v3 -> v2 -> v1); a rolled-back version is tagged
``rolled_back=true`` and comes back only through an explicit ``promote``. With nothing earlier to restore,
``rollback`` raises :class:`~evertune.errors.NothingToDo` and changes nothing. ``previous-champion`` always
names the version before the champion in the history.

The prompt ``production`` alias (:mod:`evertune.tuning.prompt_registry`) moves with ``champion``, in promotion and
in rollback, to the prompt version in the new champion's release manifest (:func:`champion_prompt`); the KB is
never rolled back (answers keep following the published KB).

Like every registry write, these must be serialized by the caller (see :mod:`evertune.tuning.registry`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from evertune.errors import ConfigError, NothingToDo, PromotionConflict, QualityGateFailed
from evertune.tuning.deletions import refuse_if_blocked
from evertune.tuning.registry import CHALLENGER, CHAMPION, HISTORY_TAG, PREVIOUS_CHAMPION, TAG_LIMIT, alias_version
from evertune.tuning.tracking import mlflow_client

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

    from evertune.config import Params
    from evertune.settings import Settings

log = logging.getLogger(__name__)

_HISTORY_LIMIT = 200
#: ``expected_champion`` of :func:`promote` when the caller does not compare (the CLI's manual path).
ANY = object()


@dataclass(frozen=True)
class PromotionResult:
    """Outcome of :func:`promote`.

    Attributes:
        model_name: Registered model.
        version: The version considered.
        promoted: Whether it is the champion now.
        changed: Whether the champion alias moved in this call.
        previous_champion: The champion before the call (``None`` if there was none).
        action: The gate action recorded (``promote``, ``reject``, ``require_approval``, ``manual``).
        reasons: The gate reasons recorded.
        prompt: The prompt version ``production`` was moved to with ``champion`` (``None``: not moved).
    """

    model_name: str
    version: int
    promoted: bool
    changed: bool
    previous_champion: int | None
    action: str
    reasons: list[str]
    prompt: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for XCom."""
        return asdict(self)


@dataclass(frozen=True)
class RollbackResult:
    """Outcome of :func:`rollback`: the champion moved from ``from_version`` to ``to_version``, and the prompt
    ``production`` alias to ``prompt`` (the restored version's manifest prompt; ``None``: it names none)."""

    model_name: str
    from_version: int
    to_version: int
    previous_champion: int | None
    prompt: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for XCom."""
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """Whether a promotion may move the champion, and the gate action and reasons behind it."""

    allowed: bool
    action: str
    reasons: list[str]


def decision_fields(decision: Any) -> tuple[bool, str, list[str]]:
    """``(passed, action, reasons)`` of a ``GateDecision``, a mapping with those keys, or ``None`` (manual).

    A missing action is ``promote`` when the decision passed, else ``reject``.
    """
    if decision is None:
        return False, "manual", []
    if isinstance(decision, Mapping):
        passed, action, reasons = decision.get("passed"), decision.get("action"), decision.get("reasons", [])
    else:
        passed, action, reasons = decision.passed, decision.action, decision.reasons
    action = action or ("promote" if passed else "reject")
    return bool(passed), str(action), [str(r) for r in reasons or []]


def gate_verdict(decision: Any, approved_by: str | None) -> Verdict:
    """A gate decision allows promotion when it passed, or when it asks for approval and someone approved."""
    passed, action, reasons = decision_fields(decision)
    return Verdict(passed or (action == "require_approval" and approved_by is not None), action, reasons)


def manual_verdict(
    model_name: str, version: int, recorded_tags: Mapping[str, str], approved_by: str | None, force: bool
) -> Verdict:
    """A manual promotion is allowed for a version the gate passed or sent for approval, or with ``force``.

    Raises:
        ConfigError: No ``approved_by``.
        QualityGateFailed: The version was rejected or never evaluated, and no ``force``.
    """
    if approved_by is None:
        raise ConfigError("a manual promotion needs approved_by")
    recorded = recorded_tags.get("gate.action")
    reasons = json.loads(recorded_tags.get("gate.reasons", "[]"))
    if recorded in {"promote", "require_approval"} or force:
        return Verdict(True, "manual", reasons)
    why = "was rejected by the gate" if recorded == "reject" else "has no recorded gate decision"
    raise QualityGateFailed(f"{model_name} v{version} {why}; use force to promote anyway", reasons)


def _history(client: MlflowClient, name: str) -> list[int]:
    raw = client.get_registered_model(name).tags.get(HISTORY_TAG)
    return [int(v) for v in json.loads(raw)] if raw else []


def _save_history(client: MlflowClient, name: str, history: list[int]) -> None:
    history = history[-_HISTORY_LIMIT:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    if len(history) >= 2:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, str(history[-2]))
    elif alias_version(client, name, PREVIOUS_CHAMPION) is not None:
        client.delete_registered_model_alias(name, PREVIOUS_CHAMPION)


def promote(
    model_name: str,
    version: int | str,
    decision: Any = None,
    *,
    approved_by: str | None = None,
    force: bool = False,
    expected_champion: int | None | object = ANY,
    settings: Settings | None = None,
    params: Params | None = None,
) -> PromotionResult:
    """Record a gate decision on a version and move ``champion`` to it when allowed.

    The champion moves when the decision passed (``action == "promote"``), or when a human approves
    (``approved_by``) a version whose decision is ``require_approval``. Called with ``decision=None`` (the CLI's
    manual path) the version's recorded decision is used: ``reject`` or no decision at all needs ``force``.
    A failing decision is recorded and leaves the champion where it is.

    Args:
        model_name: Registered model.
        version: The candidate version.
        decision: A :class:`~evertune.tuning.gate.GateDecision` or a mapping with ``passed``, ``action`` and
            ``reasons``; ``None`` for a manual promotion.
        approved_by: Who approved a manual promotion (recorded as a tag).
        force: Promote even against a recorded ``reject`` (manual path only).
        expected_champion: Compare-and-set: the champion the candidate was evaluated against (``None``: there was
            none). When given, the alias moves only if ``champion`` still points there and ``challenger`` still
            points to ``version``; else :class:`~evertune.errors.PromotionConflict`. :data:`ANY` skips the check.
        settings: Deployment settings.
        params: Pipeline params (``deletion.model_policy``); default ``params.yaml``.

    Returns:
        The :class:`PromotionResult`.

    Raises:
        QualityGateFailed: A manual promotion of a rejected (or never evaluated) version without ``force``, or a
            version that ``deletion.model_policy: block`` blocks (trained on deleted documents; ``force`` does
            not override it, see :mod:`evertune.tuning.deletions`); tagged ``promotion.refused``.
        PromotionConflict: ``expected_champion`` was given and the champion or the challenger moved since; the
            refusal is tagged on the version (``promotion.refused``) and nothing else changes.
        ConfigError: The version does not exist, or a manual promotion has no ``approved_by``.
    """
    from mlflow.exceptions import MlflowException

    client = mlflow_client(settings)
    version = int(version)
    try:
        model_version = client.get_model_version(model_name, str(version))
    except MlflowException as exc:
        raise ConfigError(f"{model_name} has no version {version}") from exc
    if decision is not None:
        verdict = gate_verdict(decision, approved_by)
        record_decision(client, model_name, version, decision)
    else:
        verdict = manual_verdict(model_name, version, model_version.tags, approved_by, force)
    current = alias_version(client, model_name, CHAMPION)
    if not verdict.allowed or current == version:
        promoted = current == version
        return PromotionResult(model_name, version, promoted, False, current, verdict.action, verdict.reasons)
    if expected_champion is not ANY:
        _compare(client, model_name, version, current, expected_champion)
    refuse_if_blocked(model_name, version, settings, params)
    _move_champion(client, model_name, model_version, current, approved_by)
    prompt = move_prompt_with_champion(client, model_name, version, settings)
    log.info("%s: champion v%s -> v%s (%s)", model_name, current, version, verdict.action)
    return PromotionResult(model_name, version, True, True, current, verdict.action, verdict.reasons, prompt)


def _compare(client: MlflowClient, model_name: str, version: int, current: int | None, expected: Any) -> None:
    """The compare of compare-and-set: refuse when ``champion`` is not ``expected`` or ``challenger`` moved on.

    Raises:
        PromotionConflict: With the reason; the version is tagged ``promotion.refused`` with it.
    """
    challenger = alias_version(client, model_name, CHALLENGER)
    reason = None
    if current != expected:
        reason = (f"champion moved from {_named(expected)} to {_named(current)} after v{version} was evaluated "
                  f"against {_named(expected)}: v{version} is not promoted; tune again to compare it with "
                  f"{_named(current)}")
    elif challenger is not None and challenger != version:
        reason = (f"superseded: challenger is now v{challenger}, registered after v{version}; "
                  f"v{version} is not promoted")
    if reason is not None:
        client.set_model_version_tag(model_name, str(version), "promotion.refused", reason[:TAG_LIMIT])
        log.warning("%s: %s", model_name, reason)
        raise PromotionConflict(reason, [reason])


def _named(version: int | None) -> str:
    return "no champion" if version is None else f"v{version}"


def record_decision(client: MlflowClient, model_name: str, version: int, decision: Any) -> None:
    """Tag the version with the gate decision (``gate.passed``, ``gate.action``, ``gate.reasons``)."""
    passed, action, reasons = decision_fields(decision)
    for key, value in {
        "gate.passed": str(passed).lower(),
        "gate.action": action,
        "gate.reasons": json.dumps(reasons)[:TAG_LIMIT],
    }.items():
        client.set_model_version_tag(model_name, str(version), key, value)


def _move_champion(
    client: MlflowClient, name: str, model_version: ModelVersion, current: int | None, approved_by: str | None
) -> None:
    """Make ``model_version`` the champion: history, ``previous-champion``, ``challenger`` and lineage tags."""
    version = int(model_version.version)
    history = _history(client, name)
    if current is not None and (not history or history[-1] != current):
        history.append(current)  # the alias was set outside this module: treat it as a promotion
    history.append(version)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    _save_history(client, name, history)
    if alias_version(client, name, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    client.set_model_version_tag(name, str(version), "promoted_from", str(current or ""))
    client.set_model_version_tag(name, str(version), "approved_by", approved_by or "gate")
    if "rolled_back" in model_version.tags:  # re-promoted after a rollback
        client.delete_model_version_tag(name, str(version), "rolled_back")


def rollback(model_name: str, *, settings: Settings | None = None, params: Params | None = None) -> RollbackResult:
    """Move ``champion`` back to the previous champion in one call, and the prompt ``production`` alias to the
    prompt version of that champion's manifest.

    Semantics: the current champion is popped from ``champion_history`` and tagged ``rolled_back=true``; the
    version before it becomes champion and ``previous-champion`` moves one further back. Calling it again walks
    back another promotion. Versions that no longer exist are skipped.

    Returns:
        The :class:`RollbackResult`.

    Raises:
        NothingToDo: There is no champion, or no earlier champion to restore (nothing is changed).
        QualityGateFailed: ``deletion.model_policy: block`` blocks the version it would restore (nothing is changed).
    """
    from mlflow.exceptions import MlflowException

    client = mlflow_client(settings)
    current = alias_version(client, model_name, CHAMPION)
    if current is None:
        raise NothingToDo(f"{model_name} has no champion to roll back")
    history = _history(client, model_name)
    if not history or history[-1] != current:
        history.append(current)
    earlier = history[:-1]
    while earlier:
        try:
            client.get_model_version(model_name, str(earlier[-1]))
            break
        except MlflowException:
            earlier.pop()  # deleted version: skip it
    if not earlier:
        raise NothingToDo(f"{model_name}: champion v{current} has no earlier champion to roll back to")
    target = earlier[-1]
    refuse_if_blocked(model_name, target, settings, params)
    client.set_registered_model_alias(model_name, CHAMPION, str(target))
    _save_history(client, model_name, earlier)
    client.set_model_version_tag(model_name, str(current), "rolled_back", "true")
    client.set_model_version_tag(model_name, str(current), "rolled_back_to", str(target))
    prompt = move_prompt_with_champion(client, model_name, target, settings)
    log.warning("%s: rolled back champion v%s -> v%s (prompt %s)", model_name, current, target,
                prompt["uri"] if prompt else "unchanged")
    return RollbackResult(model_name, current, target, earlier[-2] if len(earlier) >= 2 else None, prompt)


def champion_prompt(client: MlflowClient, model_name: str, version: int) -> Any:
    """The prompt version a model version was evaluated with: its verified manifest's ``prompt``, else (no
    manifest, or a tampered one, which is logged) its ``prompt.name``/``prompt.version`` tags; ``None`` when it
    names none (registered before prompts were registered)."""
    from evertune.errors import ManifestMismatch
    from evertune.tuning.manifest import SHA_TAG, read_manifest
    from evertune.tuning.prompt_registry import ref_from_dict, ref_from_tags

    tags = client.get_model_version(model_name, str(version)).tags
    if tags.get(SHA_TAG):
        try:
            ref = ref_from_dict(read_manifest(client, model_name, version).manifest.get("prompt"))
            if ref is not None:
                return ref
        except ManifestMismatch as exc:
            log.error("%s; using the version's prompt tags", exc)
    return ref_from_tags(tags)


def move_prompt_with_champion(
    client: MlflowClient, model_name: str, version: int, settings: Settings | None
) -> dict[str, Any] | None:
    """Point the prompt ``production`` alias at the prompt version of the (new) champion ``version``.

    Returns:
        The prompt reference as a dict, ``None`` when the version names no prompt (the alias is left as it is).
    """
    from evertune.tuning.prompt_registry import set_production

    ref = champion_prompt(client, model_name, version)
    if ref is None:
        log.warning("%s v%s names no prompt version: the prompt production alias is not moved", model_name, version)
        return None
    set_production(ref, settings)
    return ref.to_dict()


__all__ = [
    "ANY",
    "PromotionResult",
    "RollbackResult",
    "Verdict",
    "champion_prompt",
    "decision_fields",
    "gate_verdict",
    "manual_verdict",
    "move_prompt_with_champion",
    "promote",
    "record_decision",
    "rollback",
]
