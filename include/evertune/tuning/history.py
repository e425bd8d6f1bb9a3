"""The validated history as the dataset builder sees it: which folders, which documents are current, which
are deleted, and which questions are golden. Everything is read through the snapshot contract.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from evertune.data import snapshot
from evertune.data.doc_state import DocEvent, resolve_doc_state
from evertune.tuning.grounding import as_text
from evertune.tuning.metrics import normalize_answer

_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")


def interval_of(folder: Path) -> str:
    """The interval date in a folder's name (``ds=2026-11-03`` -> ``2026-11-03``); the name if it holds none."""
    match = _DATE.search(folder.name)
    return match.group(1) if match else folder.name


def _current(events: Iterable[DocEvent]) -> dict[str, dict[str, Any]]:
    states = resolve_doc_state(events)
    return {doc_id: dict(state.document.row) for doc_id, state in states.items() if state.document is not None}


def latest_documents(validated_dirs: list[Path], documents: Any) -> dict[str, dict[str, Any]]:
    """``documents`` (rows or a DataFrame) resolved per doc_id, or else :func:`current_documents` of the folders."""
    if documents is None:
        return current_documents(validated_dirs)
    rows = documents.to_dict("records") if hasattr(documents, "to_dict") else list(documents)
    return _current(DocEvent.upsert(row) for row in rows if as_text(row.get("doc_id")))


def current_documents(validated_dirs: list[Path]) -> dict[str, dict[str, Any]]:
    """The current version of every document in the folders, by doc_id (for ``build_sft_dataset(documents=...)``).

    The newest ``updated_at`` wins; ties go to the later interval (:func:`~evertune.data.doc_state.resolve_doc_state`).
    Pass the whole validated history up to ``as_of``, not just the training window: a QA row of the window may
    cite an article that last changed long before it, and its answer must still be checked against that text.
    """
    events = [
        DocEvent.upsert(row, interval_of(Path(folder)))
        for folder in validated_dirs
        for row in snapshot.read_rows(folder, snapshot.DOCUMENTS, require=("doc_id", "updated_at"), missing_ok=True)
        if as_text(row.get("doc_id"))
    ]
    return _current(events)


def collect_deleted_doc_ids(validated_dirs: list[Path], documents: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Doc ids deleted by the tombstones in the folders.

    A tombstone deletes a document unless the document's ``updated_at`` is newer (the document came back); on
    the same timestamp the tombstone wins (:func:`~evertune.data.doc_state.resolve_doc_state`).

    Args:
        validated_dirs: Interval folders (oldest first).
        documents: The current version of each document by doc_id (for ``updated_at``).

    Returns:
        The deleted doc ids.
    """
    return set(deleted_doc_intervals(validated_dirs, documents))


def deleted_doc_intervals(validated_dirs: list[Path], documents: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The documents :func:`collect_deleted_doc_ids` finds deleted, each with the interval of the drop whose
    tombstone deleted it (``YYYY-MM-DD``, from the folder name)."""
    events = [
        DocEvent.tombstone(row, interval_of(Path(folder)))
        for folder in validated_dirs
        for row in snapshot.read_rows(folder, snapshot.TOMBSTONES, require=("doc_id", "deleted_at"), missing_ok=True)
        if as_text(row.get("doc_id"))
    ]
    events += [DocEvent.upsert({**documents[doc_id], "doc_id": doc_id}) for doc_id in sorted(
        {event.doc_id for event in events} & set(documents))]  # fmt: skip
    return {doc_id: state.winner.interval for doc_id, state in resolve_doc_state(events).items() if state.deleted}


def read_golden(validated_dirs: list[Path]) -> tuple[set[str], set[str]]:
    """Ids and normalised questions of the golden QA sets in the folders (never trained on)."""
    ids: set[str] = set()
    questions: set[str] = set()
    for folder in validated_dirs:
        for record in snapshot.read_records(folder, snapshot.GOLDEN_QA, missing_ok=True):
            if record.get("qa_id"):
                ids.add(str(record["qa_id"]))
            if record.get("question"):
                questions.add(normalize_answer(str(record["question"])))
    return ids, questions


def select_interval_dirs(root: Path, end: dt.date | str, window_days: int | None) -> list[Path]:
    """Interval folders under ``root`` whose name holds a date in ``(end - window_days, end]``, oldest first.

    Folder names only need to contain an ISO date (``2026-11-03`` or ``ds=2026-11-03``); others are ignored.

    Args:
        root: Folder holding one sub-folder per validated interval.
        end: The last interval date to include (the data interval being processed).
        window_days: ``dataset.window_days``; ``None`` takes every interval up to ``end`` (the history).

    Returns:
        The chosen folders sorted by date.
    """
    last = dt.date.fromisoformat(end) if isinstance(end, str) else end
    first = dt.date.min if window_days is None else last - dt.timedelta(days=window_days - 1)
    chosen: list[tuple[dt.date, str, Path]] = []
    for child in Path(root).iterdir() if Path(root).is_dir() else []:
        match = _DATE.search(child.name)
        if not child.is_dir() or not match:
            continue
        try:
            day = dt.date.fromisoformat(match.group(1))
        except ValueError:
            continue
        if first <= day <= last:
            chosen.append((day, child.name, child))
    return [path for _, _, path in sorted(chosen)]
