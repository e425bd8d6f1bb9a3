"""Validated interval folders for integration tests, written through the snapshot contract.

One writer for every test that needs a ``validated/ds=<interval>/`` folder without running ingest and
validation: rows go through :func:`evertune.data.snapshot.write` (typed timestamps, sorted, byte-deterministic),
and a document's ``content_hash`` is the pipeline's own (:func:`evertune.kb.records.content_hash`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from evertune.data import snapshot
from evertune.kb.records import content_hash

DEFAULT_URL_PREFIX = "https://help.nimbusnotes.example/articles/"


def document(doc_id: str, title: str, text: str, updated_at: str, *, source: str = "help-center",
             url_prefix: str = DEFAULT_URL_PREFIX, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One validated document row (``record_ref`` is ``docs/<doc_id>.md``)."""
    url = f"{url_prefix}{doc_id}"
    return {"doc_id": doc_id, "title": title, "text": text, "source": source, "url": url,
            "updated_at": updated_at, "content_hash": content_hash(title, text, source, url),
            "metadata": json.dumps(dict(metadata or {}), sort_keys=True), "record_ref": f"docs/{doc_id}.md"}


def tombstone(doc_id: str, deleted_at: str, reason: str = "retired") -> dict[str, Any]:
    """One tombstone row."""
    return {"doc_id": doc_id, "deleted_at": deleted_at, "reason": reason, "record_ref": "tombstones.jsonl"}


def write_drop(folder: Path, docs: Iterable[Mapping[str, Any]], tombs: Iterable[Mapping[str, Any]] = (),
               golden: Iterable[Mapping[str, Any]] = ()) -> Path:
    """Write documents, tombstones and golden retrieval queries as a validated folder; returns ``folder``."""
    snapshot.write(folder, {snapshot.DOCUMENTS: list(docs), snapshot.TOMBSTONES: list(tombs),
                            snapshot.GOLDEN_RETRIEVAL: list(golden)})
    return folder
