"""Freshness probes: questions about facts whose value changed, with the old and the new value.

Two sources, merged by :func:`freshness_probes` (sorted by ``probe_id``, deterministic):

1. **Carried probes.** The golden freshness set (``golden/freshness.jsonl``, kind
   :data:`evertune.kb.golden.FRESHNESS`, format in ``docs/golden-sets.md``) carried over the validated history
   up to ``as_of`` like the other golden sets (:func:`evertune.kb.golden_carry.carried_golden`: drops fold in
   date order, probes on deleted documents retire), keeping the probes with ``changed_on > since``.
2. **Derived probes** (:func:`derived_probes`), from the carried golden QA set: an item whose answer as of
   ``as_of`` differs from its answer as of ``since`` *and* whose cited document changed after ``since`` (its
   ``content_hash`` as of ``as_of`` is not the one as of ``since``). The old and new values are the differing
   token span of the two answers (:func:`value_change`). With ``since=None`` the "before" answer is the item's
   first answer in the history and the "before" document its first version. The probe id is ``qa:<qa_id>``,
   its ``changed_on`` the interval of the drop that first held the current answer.
"""

from __future__ import annotations

import string
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evertune.data import snapshot

#: A changed value longer than this many tokens is not a value but a rewrite: no probe is derived from it.
MAX_VALUE_TOKENS = 8
#: How many words of the common tail a value takes on as its unit, at most (``$8`` + ``per user per month``).
MAX_UNIT_TOKENS = 5
#: Words that end a unit (``14 days`` of ``14 days of the charge``).
UNIT_STOP_WORDS = frozenset(
    "a an and after at before by each for from if in into of on or than the then to when where which while with "
    "within you your is are was".split()
)
_SENTENCE_END = tuple(".,;:!?)")


@dataclass(frozen=True)
class FreshnessProbe:
    """A question about a fact whose value changed on ``changed_on``.

    Attributes:
        probe_id: Stable id (carried probes: the drop's ``probe_id``; derived ones: ``qa:<qa_id>``).
        question: What is asked.
        doc_id: The document that states the fact.
        fact_key: Which fact (may be empty).
        old_value: The value before the change, e.g. ``$8 per user per month``.
        new_value: The value after it, e.g. ``$10 per user per month``.
        answer: A reference answer stating the new value (scored by token-F1).
        changed_on: The interval (``YYYY-MM-DD``) on which the value changed.
    """

    probe_id: str
    question: str
    doc_id: str
    fact_key: str
    old_value: str
    new_value: str
    answer: str
    changed_on: str

    def to_dict(self) -> dict[str, str]:
        """Plain data (for logs and MLflow artifacts)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FreshnessProbe:
        """A probe from a golden freshness row (``answer`` defaults to ``new_value``, ``fact_key`` to empty)."""
        return cls(
            probe_id=str(data["probe_id"]), question=str(data["question"]), doc_id=str(data["doc_id"]),
            fact_key=str(data.get("fact_key") or ""), old_value=str(data["old_value"]),
            new_value=str(data["new_value"]), answer=str(data.get("answer") or data["new_value"]),
            changed_on=str(data["changed_on"]),
        )  # fmt: skip


def _bare(token: str) -> str:
    return token.strip(string.punctuation.replace("$", "").replace("%", "")).lower()


def value_change(before: str, after: str) -> tuple[str, str] | None:
    """The changed value of two answers: the differing token span, with its unit.

    Tokens are split on whitespace. The common leading and trailing tokens are removed; what is left of each
    answer is its value. The value then takes on the following common words as its unit, while they are not
    :data:`UNIT_STOP_WORDS`, at most :data:`MAX_UNIT_TOKENS`, up to the first one ending a clause (``.``, ``,``
    ...). ``"The Pro plan costs $8 per user per month."`` -> ``"The Pro plan costs $10 per user per month."``
    gives ``("$8 per user per month", "$10 per user per month")``; ``"within 14 days of a charge"`` ->
    ``"within 30 days of a charge"`` gives ``("14 days", "30 days")``. Punctuation around the value is dropped.

    Returns:
        ``(old_value, new_value)``, or ``None`` when the answers do not differ, one side is empty, or either
        value has more than :data:`MAX_VALUE_TOKENS` tokens (a rewrite, not a changed value).
    """
    old, new = before.split(), after.split()
    if [_bare(t) for t in old] == [_bare(t) for t in new]:
        return None
    head = 0
    while head < min(len(old), len(new)) and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < min(len(old), len(new)) - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    old_span, new_span = old[head : len(old) - tail], new[head : len(new) - tail]
    if not old_span or not new_span or max(len(old_span), len(new_span)) > MAX_VALUE_TOKENS:
        return None
    unit: list[str] = []
    if not old_span[-1].endswith(_SENTENCE_END) and not new_span[-1].endswith(_SENTENCE_END):
        for token in new[len(new) - tail :][:MAX_UNIT_TOKENS]:
            if _bare(token) in UNIT_STOP_WORDS or not _bare(token):
                break
            unit.append(token)
            if token.endswith(_SENTENCE_END):
                break
    old_value, new_value = (" ".join([*span, *unit]).strip(string.punctuation.replace("$", "").replace("%", ""))
                            for span in (old_span, new_span))  # fmt: skip
    if not old_value or not new_value or old_value.lower() == new_value.lower():
        return None
    return old_value, new_value


def _answer_history(folders: Sequence[Path]) -> dict[str, list[tuple[str, str]]]:
    """``qa_id -> [(interval, answer), ...]`` of every golden QA add/replace line, oldest first."""
    from evertune.tuning.history import interval_of

    history: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for folder in folders:
        for record in snapshot.read_records(folder, snapshot.GOLDEN_QA, missing_ok=True):
            if isinstance(record, Mapping) and not record.get("retire") and isinstance(record.get("answer"), str):
                history[str(record.get("qa_id"))].append((interval_of(folder), record["answer"]))
    return history


def _first_hashes(folders: Sequence[Path]) -> dict[str, str]:
    """The first ``content_hash`` seen per document (the "before" state when there is no ``since``)."""
    first: dict[str, str] = {}
    for folder in folders:
        for row in snapshot.read_rows(folder, snapshot.DOCUMENTS, require=("doc_id",), missing_ok=True):
            first.setdefault(str(row["doc_id"]), str(row.get("content_hash") or ""))
    return first


def _hashes(documents: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    return {doc_id: str(row.get("content_hash") or "") for doc_id, row in documents.items()}


def derived_probes(validated_root: Path, as_of: str, since: str | None) -> list[FreshnessProbe]:
    """Probes from carried golden QA items whose answer and cited document changed after ``since``.

    Args:
        validated_root: ``<data_repo>/validated``.
        as_of: The interval evaluated (``YYYY-MM-DD``).
        since: The champion's training data as-of; ``None`` compares with each item's first answer.

    Returns:
        One probe per qualifying item (see the module docstring), sorted by ``probe_id``.
    """
    from evertune.kb.golden import QA
    from evertune.kb.golden_carry import carried_golden
    from evertune.tuning.history import current_documents, interval_of, select_interval_dirs

    history = select_interval_dirs(Path(validated_root), as_of, None)
    items = carried_golden(validated_root, as_of, QA).fitted.items
    if not items:
        return []
    before_dirs = [f for f in history if since is not None and interval_of(f) <= since]
    after_hashes = _hashes(current_documents(history))
    before_hashes = _hashes(current_documents(before_dirs)) if since is not None else _first_hashes(history)
    answers = _answer_history(history)
    probes = []
    for item in items:
        qa_id, doc_id = str(item["qa_id"]), str(item["doc_id"])
        past = answers.get(qa_id, [])
        before = [a for _, a in past[:1]] if since is None else [a for day, a in past if day <= since]
        if not before or after_hashes.get(doc_id) in (None, before_hashes.get(doc_id)):
            continue
        change = value_change(before[-1], item["answer"])
        if change is None:
            continue
        changed_on = next((day for day, a in past if (since is None or day > since) and a == item["answer"]), as_of)
        probes.append(FreshnessProbe(
            probe_id=f"qa:{qa_id}", question=str(item["question"]), doc_id=doc_id,
            fact_key=str(item.get("fact_key") or ""), old_value=change[0], new_value=change[1],
            answer=str(item["answer"]), changed_on=changed_on,
        ))  # fmt: skip
    return sorted(probes, key=lambda p: p.probe_id)


def carried_probes(validated_root: Path, as_of: str, since: str | None) -> list[FreshnessProbe]:
    """The golden freshness set carried to ``as_of`` (fitted to the documents), ``changed_on > since``."""
    from evertune.kb.golden import FRESHNESS
    from evertune.kb.golden_carry import carried_golden

    items = carried_golden(validated_root, as_of, FRESHNESS).fitted.items
    probes = [FreshnessProbe.from_dict(item) for item in items if since is None or item["changed_on"] > since]
    return sorted(probes, key=lambda p: p.probe_id)


def freshness_probes(validated_root: Path, as_of: str, since: str | None) -> list[FreshnessProbe]:
    """Every freshness probe as of ``as_of`` about a change after ``since``: carried plus derived.

    Args:
        validated_root: ``<data_repo>/validated`` (one ``ds=YYYY-MM-DD`` folder per validated interval).
        as_of: The interval evaluated; later intervals are never read.
        since: Only changes after this interval (the champion's training data as-of); ``None``: all.

    Returns:
        The probes sorted by ``probe_id`` (a derived probe never shares an id with a carried one: ``qa:``).
    """
    merged = {p.probe_id: p for p in derived_probes(validated_root, as_of, since)}
    merged.update({p.probe_id: p for p in carried_probes(validated_root, as_of, since)})
    return [merged[key] for key in sorted(merged)]
