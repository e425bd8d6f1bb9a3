"""Golden sets as versioned assets: drops fold into the set as of an interval (format: ``docs/golden-sets.md``).

Three golden sets exist, each described by a :class:`GoldenKind`:

* :data:`RETRIEVAL`: ``golden/retrieval.jsonl`` lines ``{"query_id", "query", "relevant_doc_ids": [...]}``.
* :data:`QA`: ``golden/qa.jsonl`` lines ``{"qa_id", "question", "answer", "doc_id", "fact_key"}``.
* :data:`FRESHNESS`: ``golden/freshness.jsonl`` changed-fact probes ``{"probe_id", "question", "doc_id",
  "fact_key", "old_value", "new_value", "answer", "changed_on"}`` (see :mod:`evertune.tuning.probes`).

A line of a drop either **adds or replaces** the item with its id (today's line format, plus an optional
``"draft": true``), or **retires** it: ``{"query_id": "...", "retire": true, "reason": "..."}``.
:func:`fold_golden` folds the drops in interval order into a :class:`GoldenSet` whose canonical JSONL bytes and
sha256 ``version`` depend only on the drops' contents, never on the order they are given in.
:func:`apply_doc_state` then fits a set to the knowledge base's documents (retiring items whose documents are all
deleted, pruning deleted ids, quarantining items naming unknown documents) and reports every change in counts.

Pure functions only: no files are read here (the caller passes the validated rows per interval).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from evertune.errors import CriticalValidationError
from evertune.kb import quarantine as q
from evertune.kb.parsing import normalize_text
from evertune.kb.records import Reject, golden_freshness_line, golden_qa_line, golden_retrieval_line, string_field

#: Golden-set reasons (item-level; reported in the set's summary, not in ``quarantine.parquet``).
CONFLICTING_GOLDEN_ID = "conflicting_golden_id"  # one drop holds different lines for one id
UNKNOWN_GOLDEN_ID = "unknown_golden_id"  # a retire line for an id that is not in the set
UNKNOWN_DOCUMENT = "unknown_document"  # an item names a document the knowledge base never had
ALL_RELEVANT_DELETED = "all_relevant_deleted"  # automatic retirement: every document of the item is deleted
RETIRED_BY_DROP = "retired by drop"  # the reason of a retire line that gives none

_REASON_MAX = 500
_SHORT = 12


@dataclass(frozen=True)
class GoldenKind:
    """One golden set: its landing file, id field, line parser and document-id field."""

    name: str
    landing_path: str
    id_field: str
    doc_field: str
    parse: Callable[[dict[str, Any], str], dict[str, Any]]

    def doc_ids(self, item: Mapping[str, Any]) -> list[str]:
        """The documents an item depends on (``relevant_doc_ids``, or the single ``doc_id``)."""
        value = item[self.doc_field]
        return list(value) if isinstance(value, list | tuple) else [value]


RETRIEVAL = GoldenKind("retrieval", "golden/retrieval.jsonl", "query_id", "relevant_doc_ids", golden_retrieval_line)
QA = GoldenKind("qa", "golden/qa.jsonl", "qa_id", "doc_id", golden_qa_line)
FRESHNESS = GoldenKind("freshness", "golden/freshness.jsonl", "probe_id", "doc_id", golden_freshness_line)
KINDS: dict[str, GoldenKind] = {RETRIEVAL.name: RETRIEVAL, QA.name: QA, FRESHNESS.name: FRESHNESS}


@dataclass(frozen=True, order=True)
class GoldenIssue:
    """An item set aside with a reason: malformed, conflicting, a retire of an unknown id, an unknown document."""

    interval: str
    item_id: str
    reason: str
    detail: str


@dataclass(frozen=True, order=True)
class Retirement:
    """An item out of the set: by whom (``interval`` of the drop, or the evaluation's ``as_of``) and why."""

    item_id: str
    interval: str
    reason: str


@dataclass(frozen=True, order=True)
class Pruned:
    """Deleted documents dropped from an item that keeps at least one live document."""

    item_id: str
    dropped_doc_ids: tuple[str, ...]


def canonical_jsonl(items: Iterable[Mapping[str, Any]]) -> bytes:
    """One JSON object per line, keys sorted, compact separators, UTF-8 (the validated golden file layout)."""
    lines = (json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False) for item in items)
    return "".join(line + "\n" for line in lines).encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _VersionedItems:
    """What both golden sets expose: a short version, a size and a count of unreviewed drafts."""

    items: tuple[dict[str, Any], ...]
    version: str

    @property
    def short_version(self) -> str:
        """The first 12 hex digits of :attr:`version`."""
        return self.version[:_SHORT]

    @property
    def size(self) -> int:
        """The number of items."""
        return len(self.items)

    @property
    def drafts(self) -> int:
        """How many items are unreviewed drafts (``"draft": true``)."""
        return sum(1 for item in self.items if item.get("draft") is True)


@dataclass(frozen=True)
class GoldenSet(_VersionedItems):
    """A golden set as of an interval.

    Attributes:
        kind: ``"retrieval"`` or ``"qa"``.
        as_of: The last interval folded in (``None`` when no drop was given).
        items: The live items, sorted by id.
        retired: The retired ids with the interval and reason of their retirement, sorted by id.
        quarantined: Lines set aside while folding, sorted.
        intervals: The intervals that contributed a drop, oldest first.
        canonical: :func:`canonical_jsonl` of ``items``.
        version: sha256 of ``canonical``.
    """

    kind: str
    as_of: str | None
    items: tuple[dict[str, Any], ...]
    retired: tuple[Retirement, ...]
    quarantined: tuple[GoldenIssue, ...]
    intervals: tuple[str, ...]
    canonical: bytes = field(repr=False)
    version: str

    def summary(self) -> dict[str, Any]:
        """Counts and version for logs and asset extras (sizes first: a set never shrinks silently)."""
        return {
            "kind": self.kind, "as_of": self.as_of, "version": self.version, "short_version": self.short_version,
            "size": self.size, "drafts": self.drafts, "retired": len(self.retired),
            "quarantined": len(self.quarantined), "intervals": len(self.intervals),
        }  # fmt: skip


def _check_interval(interval: str) -> str:
    try:
        if len(interval) != 10:
            raise ValueError
        dt.date.fromisoformat(interval)
    except (TypeError, ValueError):
        raise ValueError(f"golden drop interval must be a YYYY-MM-DD date, got {interval!r}") from None
    return interval


def _flag(record: Mapping[str, Any], name: str) -> bool:
    value = record.get(name, False)
    if not isinstance(value, bool):
        raise Reject(q.INVALID_FIELD, f"field {name!r} must be true or false, got {type(value).__name__}")
    return value


def _retire_line(kind: GoldenKind, record: dict[str, Any]) -> dict[str, Any]:
    item_id = kind.parse({**record, **_ID_ONLY_FILLERS[kind.name]}, "")[kind.id_field]
    reason = normalize_text(string_field(record, "reason", required=False)) or RETIRED_BY_DROP
    if len(reason) > _REASON_MAX:
        raise Reject(q.INVALID_FIELD, f"reason must be at most {_REASON_MAX} characters")
    return {kind.id_field: item_id, "retire": True, "reason": reason}


# Retire lines carry only the id: the filler fields let the kind's own parser check the id by the same rule.
_ID_ONLY_FILLERS: dict[str, dict[str, Any]] = {
    "retrieval": {"query": "x", "relevant_doc_ids": ["xx"]},
    "qa": {"question": "x", "answer": "x", "doc_id": "xx"},
    "freshness": {"question": "x", "doc_id": "xx", "old_value": "x", "new_value": "y", "changed_on": "2000-01-01"},
}


def parse_line(kind: GoldenKind, record: dict[str, Any], ref: str = "") -> dict[str, Any]:
    """Parse one golden line: an add/replace item (plus ``"draft": true`` when set) or a retire line.

    An item goes through today's parser (:func:`evertune.kb.records.golden_retrieval_line` or
    ``golden_qa_line``), so every file valid before stays valid. Parsing a parsed row gives the same row.

    Args:
        kind: :data:`RETRIEVAL` or :data:`QA`.
        record: One decoded JSON object.
        ref: Where it came from (unused by the golden parsers; kept for the ingest handler signature).

    Returns:
        The normalised item, or ``{<id_field>, "retire": True, "reason"}``.

    Raises:
        Reject: The line is malformed (the quarantine reason code and detail).
    """
    if _flag(record, "retire"):
        return _retire_line(kind, record)
    item = kind.parse(record, ref)
    if _flag(record, "draft"):
        item["draft"] = True
    return item


def retrieval_line(record: dict[str, Any], ref: str) -> dict[str, Any]:
    """Ingest handler of ``golden/retrieval.jsonl``: :func:`parse_line` for :data:`RETRIEVAL`."""
    return parse_line(RETRIEVAL, record, ref)


def qa_line(record: dict[str, Any], ref: str) -> dict[str, Any]:
    """Ingest handler of ``golden/qa.jsonl``: :func:`parse_line` for :data:`QA`."""
    return parse_line(QA, record, ref)


def freshness_line(record: dict[str, Any], ref: str) -> dict[str, Any]:
    """Ingest handler of ``golden/freshness.jsonl``: :func:`parse_line` for :data:`FRESHNESS`."""
    return parse_line(FRESHNESS, record, ref)


def _parse_drop(kind: GoldenKind, interval: str, records: Iterable[Any]) -> tuple[dict[str, dict], list[GoldenIssue]]:
    """Parse one interval's lines; an id with different lines in the same drop is set aside (order-free)."""
    issues: list[GoldenIssue] = []
    by_id: dict[str, set[bytes]] = defaultdict(set)
    for record in records:
        raw_id = record.get(kind.id_field) if isinstance(record, Mapping) else None
        item_id = raw_id if isinstance(raw_id, str) else ""
        if not isinstance(record, Mapping):
            issues.append(GoldenIssue(interval, "", q.MALFORMED_JSON, "a golden line must be a JSON object"))
            continue
        try:
            parsed = parse_line(kind, dict(record))
        except Reject as exc:
            issues.append(GoldenIssue(interval, item_id, exc.reason, exc.detail))
            continue
        by_id[parsed[kind.id_field]].add(canonical_jsonl([parsed]))
    entries: dict[str, dict] = {}
    for item_id, variants in by_id.items():
        if len(variants) > 1:
            detail = f"{len(variants)} different lines for {kind.id_field} {item_id!r} in one drop; none is used"
            issues.append(GoldenIssue(interval, item_id, CONFLICTING_GOLDEN_ID, detail))
        else:
            entries[item_id] = json.loads(next(iter(variants)))
    return entries, issues


def fold_golden(
    drops: Sequence[tuple[str, Iterable[Mapping[str, Any]]]], *, kind: GoldenKind = RETRIEVAL, as_of: str | None = None
) -> GoldenSet:
    """Fold golden drops into the set as of the last interval, in interval order (never arrival order).

    Within a drop the order of lines does not matter (an id with two different lines in one drop is quarantined
    as ``conflicting_golden_id`` and its previous state kept). Later intervals replace items by id; a retire line
    removes the item (a retire of an id that is not live is quarantined as ``unknown_golden_id``); adding a
    retired id again brings it back. Several drops of one interval are one drop.

    Args:
        drops: ``(interval, lines)`` pairs; lines are decoded JSON objects (raw landing lines or validated rows).
        kind: Which golden set the lines belong to.
        as_of: Ignore drops after this interval (the set used for that interval); ``None`` folds them all.

    Returns:
        The :class:`GoldenSet`; byte-identical (``canonical``, ``version``) whatever order ``drops`` is in.

    Raises:
        ValueError: An interval (or ``as_of``) is not a ``YYYY-MM-DD`` date.
    """
    limit = _check_interval(as_of) if as_of is not None else None
    lines: dict[str, list[Any]] = defaultdict(list)
    for interval, records in drops:
        if limit is None or _check_interval(interval) <= limit:
            lines[_check_interval(interval)].extend(records)
    live: dict[str, dict[str, Any]] = {}
    retired: dict[str, Retirement] = {}
    issues: list[GoldenIssue] = []
    for interval in sorted(lines):
        entries, bad = _parse_drop(kind, interval, lines[interval])
        issues.extend(bad)
        for item_id in sorted(entries):
            entry = entries[item_id]
            if not entry.get("retire"):
                live[item_id] = entry
                retired.pop(item_id, None)
            elif item_id in live:
                del live[item_id]
                retired[item_id] = Retirement(item_id, interval, entry["reason"])
            else:
                was = f" (retired on {retired[item_id].interval})" if item_id in retired else ""
                detail = f"retire of {kind.id_field} {item_id!r}, which is not in the set{was}"
                issues.append(GoldenIssue(interval, item_id, UNKNOWN_GOLDEN_ID, detail))
    items = tuple(live[item_id] for item_id in sorted(live))
    canonical = canonical_jsonl(items)
    intervals = tuple(sorted(lines))
    return GoldenSet(
        kind=kind.name, as_of=intervals[-1] if intervals else None, items=items,
        retired=tuple(retired[i] for i in sorted(retired)), quarantined=tuple(sorted(issues)),
        intervals=intervals, canonical=canonical, version=_sha256(canonical),
    )  # fmt: skip


@dataclass(frozen=True)
class GoldenEvaluationSet(_VersionedItems):
    """A golden set fitted to the knowledge base's documents: what an evaluation scores.

    Attributes:
        kind: ``"retrieval"`` or ``"qa"``.
        as_of: The golden set's ``as_of``.
        golden_version: The :class:`GoldenSet` version it was derived from.
        items: The items to score, sorted by id (deleted relevant ids pruned).
        retired: The set's retirements plus the automatic ones (``all_relevant_deleted``), sorted by id.
        auto_retired: The automatic retirements of this step.
        pruned: Items that lost deleted relevant ids.
        quarantined: The set's parse-time issues plus the items naming unknown documents.
        canonical: :func:`canonical_jsonl` of ``items`` (the file an evaluation reads).
        version: sha256 of ``canonical``.
    """

    kind: str
    as_of: str | None
    golden_version: str
    items: tuple[dict[str, Any], ...]
    retired: tuple[Retirement, ...]
    auto_retired: tuple[Retirement, ...]
    pruned: tuple[Pruned, ...]
    quarantined: tuple[GoldenIssue, ...]
    canonical: bytes = field(repr=False)
    version: str

    def summary(self) -> dict[str, Any]:
        """Size, version and every count of what left the set, for the evaluation log and the asset extra."""
        return {
            "kind": self.kind, "as_of": self.as_of, "golden_version": self.golden_version,
            "version": self.version, "short_version": self.short_version, "size": self.size,
            "drafts": self.drafts, "unreviewed_drafts": self.drafts > 0, "retired": len(self.retired),
            "auto_retired": len(self.auto_retired), "pruned": len(self.pruned), "quarantined": len(self.quarantined),
        }  # fmt: skip


def apply_doc_state(
    golden_set: GoldenSet, live_doc_ids: Iterable[str], deleted_doc_ids: Iterable[str]
) -> GoldenEvaluationSet:
    """Fit a golden set to the documents: retire, prune and quarantine, each reported.

    A document counts as deleted when it is in ``deleted_doc_ids`` (even if also listed live), as live when it
    is only in ``live_doc_ids``, and as unknown otherwise. For each item, in this order:

    * it names an unknown document: quarantined (``unknown_document``);
    * every document it names is deleted: retired (``all_relevant_deleted``, at the set's ``as_of``);
    * some are deleted: those ids are dropped from ``relevant_doc_ids`` (reported in ``pruned``).

    Items whose documents were edited are kept unchanged.

    Args:
        golden_set: The folded set (:func:`fold_golden`).
        live_doc_ids: Documents currently in the knowledge base.
        deleted_doc_ids: Documents deleted by tombstones.

    Returns:
        The :class:`GoldenEvaluationSet`.
    """
    kind = KINDS[golden_set.kind]
    deleted = set(deleted_doc_ids)
    live = set(live_doc_ids) - deleted
    items: list[dict[str, Any]] = []
    auto: list[Retirement] = []
    pruned: list[Pruned] = []
    issues = list(golden_set.quarantined)
    when = golden_set.as_of or ""
    for item in golden_set.items:
        item_id, doc_ids = item[kind.id_field], kind.doc_ids(item)
        unknown = sorted(d for d in doc_ids if d not in live and d not in deleted)
        kept = [d for d in doc_ids if d in live]
        if unknown:
            issues.append(GoldenIssue(when, item_id, UNKNOWN_DOCUMENT, f"names unknown document(s) {unknown}"))
        elif not kept:
            auto.append(Retirement(item_id, when, ALL_RELEVANT_DELETED))
        elif len(kept) < len(doc_ids):
            pruned.append(Pruned(item_id, tuple(sorted(set(doc_ids) - set(kept)))))
            items.append({**item, kind.doc_field: kept})
        else:
            items.append(dict(item))
    canonical = canonical_jsonl(items)
    return GoldenEvaluationSet(
        kind=kind.name, as_of=golden_set.as_of, golden_version=golden_set.version, items=tuple(items),
        retired=tuple(sorted([*golden_set.retired, *auto])), auto_retired=tuple(auto), pruned=tuple(pruned),
        quarantined=tuple(sorted(issues)), canonical=canonical, version=_sha256(canonical),
    )  # fmt: skip


class NoGoldenSetError(CriticalValidationError):
    """The knowledge base has no golden set to evaluate against; the message says how to add one."""


def no_golden_set_message(kind: GoldenKind, summary: Mapping[str, Any] | None = None) -> str:
    """What to tell a user whose knowledge base has nothing to evaluate against, and how to fix it."""
    fields = {"retrieval": "query_id, query, relevant_doc_ids", "qa": "qa_id, question, answer, doc_id",
              "freshness": "probe_id, question, doc_id, old_value, new_value, changed_on"}[kind.name]
    emptied = bool(summary) and (summary.get("retired") or summary.get("quarantined"))
    what = (
        f"every golden {kind.name} item is retired or quarantined ({summary})" if emptied
        else f"the knowledge base has no golden {kind.name} set"
    )  # fmt: skip
    how = f"drop {kind.landing_path} (one JSON object per line: {fields}) into a landing partition (ds=YYYY-MM-DD/)"
    if kind is RETRIEVAL:
        how += ", or run `evertune kb golden init` to draft one from the published documents, review it and drop it"
    return f"{what}: nothing to evaluate against. To add one, {how}. See docs/golden-sets.md."


def require_golden(evaluation_set: GoldenEvaluationSet) -> GoldenEvaluationSet:
    """Return the set when it has items to score.

    Raises:
        NoGoldenSetError: It is empty; the message says how to add a golden set (``report`` holds the summary).
    """
    if evaluation_set.size:
        return evaluation_set
    summary = evaluation_set.summary()
    raise NoGoldenSetError(no_golden_set_message(KINDS[evaluation_set.kind], summary), report=summary)
