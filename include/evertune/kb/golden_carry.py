"""The golden sets carried over the validated history: what a refresh and a tuning run evaluate on.

The set used for interval ``D`` is :func:`evertune.kb.golden.fold_golden` over the golden drops of every validated
interval up to and including ``D`` (``<data_repo>/validated/ds=*/golden_*.jsonl``, read through
:mod:`evertune.data.snapshot`), fitted to the documents as of ``D`` (:func:`evertune.kb.golden.apply_doc_state`
with the current and deleted documents of the same folders). It is a pure function of the validated folders up to
``D``, which DVC versions one by one, so the data version of that history pins the set; its ``golden_version`` is
recorded with every evaluation and publish. See ``docs/golden-sets.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evertune.data import snapshot
from evertune.kb.golden import GoldenEvaluationSet, GoldenKind, GoldenSet, apply_doc_state, fold_golden

#: The validated file of each golden set.
SNAPSHOT_KEYS: dict[str, str] = {
    "retrieval": snapshot.GOLDEN_RETRIEVAL, "qa": snapshot.GOLDEN_QA, "freshness": snapshot.GOLDEN_FRESHNESS,
}  # fmt: skip
#: Items named in the evaluation summary per list (auto-retired, pruned, quarantined); the counts are complete.
_LISTED = 50


@dataclass(frozen=True)
class CarriedGolden:
    """A golden set as of one interval, folded over the validated history and fitted to its documents.

    Attributes:
        interval: The interval evaluated (``D``).
        golden: The folded set (:func:`fold_golden` over every validated interval up to ``D``).
        fitted: ``golden`` fitted to the documents as of ``D``: what is scored.
        seen_ids: Every item id any drop up to ``D`` named (items, replaced items, retire lines).
        seen_texts: Every question or query text any drop up to ``D`` held (also of items retired since).
    """

    interval: str
    golden: GoldenSet
    fitted: GoldenEvaluationSet
    seen_ids: frozenset[str]
    seen_texts: frozenset[str]

    def summary(self) -> dict[str, Any]:
        """The fitted set's summary plus the interval, the folded set's size and which items left or were set aside.

        ``golden_version`` is the folded set's version (moves only with drops: add, edit, review, retire);
        ``version`` is the scored items' version (moves also when a deletion retires or prunes an item).
        """
        fitted = self.fitted
        return {
            **fitted.summary(),
            "interval": self.interval,
            "golden_short_version": self.golden.short_version,
            "golden_size": self.golden.size,
            "intervals": len(self.golden.intervals),
            "auto_retired_ids": [r.item_id for r in fitted.auto_retired][:_LISTED],
            "pruned_items": [{"id": p.item_id, "dropped_doc_ids": list(p.dropped_doc_ids)}
                             for p in fitted.pruned][:_LISTED],
            "quarantined_items": [{"id": i.item_id, "interval": i.interval, "reason": i.reason, "detail": i.detail}
                                  for i in fitted.quarantined][:_LISTED],
        }  # fmt: skip


def _texts(kind: GoldenKind, records: list[Mapping[str, Any]]) -> set[str]:
    field = "query" if kind.name == "retrieval" else "question"  # qa and freshness probes both ask a question
    return {str(r[field]) for r in records if isinstance(r, Mapping) and isinstance(r.get(field), str) and r[field]}


def carried_golden(validated_root: str | Path, interval: str, kind: GoldenKind) -> CarriedGolden:
    """The golden set of ``kind`` as of ``interval``: every validated drop up to it folded, fitted to the documents.

    Intervals without a golden file take part as empty drops (the set is carried); intervals after ``interval``
    are never read, so later days (or a backfill in any order) cannot change the set of an earlier one.

    Args:
        validated_root: ``<data_repo>/validated`` (one ``ds=YYYY-MM-DD`` folder per validated interval).
        interval: The interval evaluated, ``YYYY-MM-DD``.
        kind: :data:`evertune.kb.golden.RETRIEVAL` or :data:`evertune.kb.golden.QA`.

    Returns:
        The :class:`CarriedGolden` (possibly empty: callers decide, see :func:`evertune.kb.golden.require_golden`).

    Raises:
        CriticalValidationError: A validated golden file or table is malformed.
        ValueError: ``interval`` is not a date.
    """
    from evertune.tuning.history import collect_deleted_doc_ids, current_documents, interval_of, select_interval_dirs

    history = select_interval_dirs(Path(validated_root), interval, None)
    drops = [(interval_of(folder), snapshot.read_records(folder, SNAPSHOT_KEYS[kind.name], missing_ok=True))
             for folder in history]  # fmt: skip
    golden = fold_golden(drops, kind=kind, as_of=interval)
    documents = current_documents(history)
    deleted = collect_deleted_doc_ids(history, documents)
    fitted = apply_doc_state(golden, set(documents) - deleted, deleted)
    lines = [record for _, records in drops for record in records if isinstance(record, Mapping)]
    seen_ids = {str(r[kind.id_field]) for r in lines if isinstance(r.get(kind.id_field), str)}
    return CarriedGolden(interval, golden, fitted, frozenset(seen_ids), frozenset(_texts(kind, lines)))


def log_golden(carried: CarriedGolden, logger: logging.Logger) -> dict[str, Any]:
    """Log the set's size and version (always), each automatic retirement and quarantined item, and a warning
    when the score comes from unreviewed drafts. Returns :meth:`CarriedGolden.summary`."""
    summary = carried.summary()
    logger.info(
        "golden %s set as of %s: %d items scored (%d carried), golden version %s, scored version %s, %d retired "
        "(%d automatically), %d pruned, %d quarantined, %d unreviewed drafts, %d validated intervals folded",
        summary["kind"], carried.interval, summary["size"], summary["golden_size"], summary["golden_short_version"],
        summary["short_version"], summary["retired"], summary["auto_retired"], summary["pruned"],
        summary["quarantined"], summary["drafts"], summary["intervals"],
    )  # fmt: skip
    for retirement in carried.fitted.auto_retired:
        logger.warning("golden %s item %s retired automatically: %s", summary["kind"], retirement.item_id,
                       retirement.reason)
    for pruned in carried.fitted.pruned:
        logger.info("golden %s item %s: deleted documents %s dropped from its relevant documents", summary["kind"],
                    pruned.item_id, list(pruned.dropped_doc_ids))
    for issue in carried.fitted.quarantined:
        logger.warning("golden %s item %r of %s quarantined (%s): %s", summary["kind"], issue.item_id,
                       issue.interval, issue.reason, issue.detail)
    if summary["unreviewed_drafts"]:
        logger.warning("golden %s set as of %s holds %d unreviewed drafts: the score comes from queries nobody "
                       "reviewed (see docs/golden-sets.md)", summary["kind"], carried.interval, summary["drafts"])
    return summary
