"""Which version of a document wins: the one rule shared by the LanceDB index and the SFT dataset builder.

A validated folder carries upserts (``documents``) and deletions (``tombstones``) of documents; the index applies
folders one at a time in any order, the dataset builder reads a whole history. Both turn rows into
:class:`DocEvent` values and call :func:`resolve_doc_state`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from evertune.data.snapshot import DOCUMENTS, FILES, TOMBSTONES, parse_timestamp

UPSERT, TOMBSTONE = 0, 1


@dataclass(frozen=True)
class DocEvent:
    """One thing that happened to a document: an upsert (a ``documents`` row) or a deletion (a tombstone).

    Attributes:
        doc_id: The document.
        at: ``updated_at`` of an upsert, ``deleted_at`` of a tombstone (aware UTC).
        deleted: True for a tombstone.
        interval: The data interval of the drop that carried it (``YYYY-MM-DD``; ``""`` when unknown).
        content_hash: The document's content hash (``""`` for a tombstone).
        row: The source row, handed back unchanged with the winner.
    """

    doc_id: str
    at: dt.datetime
    deleted: bool = False
    interval: str = ""
    content_hash: str = ""
    row: Mapping[str, Any] | None = None

    @property
    def key(self) -> tuple[dt.datetime, int, str]:
        """``(at, kind, interval)``, kind 1 for a tombstone: the larger key is the later event."""
        return (self.at, TOMBSTONE if self.deleted else UPSERT, self.interval)

    @classmethod
    def upsert(cls, row: Mapping[str, Any], interval: str = "") -> DocEvent:
        """The event of a document row (``doc_id``, ``updated_at``, optional ``content_hash``)."""
        doc_id = str(row["doc_id"])
        at = parse_timestamp(row["updated_at"], what=f"{FILES[DOCUMENTS]} {doc_id}")
        return cls(doc_id, at, False, interval, str(row.get("content_hash") or ""), row)

    @classmethod
    def tombstone(cls, row: Mapping[str, Any], interval: str = "") -> DocEvent:
        """The event of a tombstone row (``doc_id``, ``deleted_at``)."""
        doc_id = str(row["doc_id"])
        return cls(doc_id, parse_timestamp(row["deleted_at"], what=f"{FILES[TOMBSTONES]} {doc_id}"), True, interval,
                   "", row)  # fmt: skip


@dataclass(frozen=True)
class DocState:
    """What a document is after a set of events.

    Attributes:
        winner: The event with the largest key: the document's current state.
        document: The newest upsert (also when a tombstone won), or ``None`` if there was none.
    """

    winner: DocEvent
    document: DocEvent | None

    @property
    def deleted(self) -> bool:
        """Whether a tombstone won."""
        return self.winner.deleted


def _rank(event: DocEvent) -> tuple[dt.datetime, int, str, str]:
    return (*event.key, event.content_hash)


def resolve_doc_state(events: Iterable[DocEvent]) -> dict[str, DocState]:
    """Which version of each document wins: the last writer by timestamp.

    The winner is the event with the largest ``(at, kind, interval, content_hash)``:

    * a newer event beats an older one, whatever the order the events come in;
    * on the same timestamp a tombstone beats an upsert (a deletion at the time of an edit deletes it);
    * between upserts of the same timestamp the later interval wins, then the larger content hash;
    * on a full tie the first event seen stays.

    ``max`` is commutative and idempotent, so applying drops in any order, or twice, gives the same state.

    Args:
        events: Upserts and tombstones, in any order.

    Returns:
        ``{doc_id: DocState}``.
    """
    winners: dict[str, DocEvent] = {}
    documents: dict[str, DocEvent] = {}
    for event in events:
        current = winners.get(event.doc_id)
        if current is None or _rank(event) > _rank(current):
            winners[event.doc_id] = event
        if not event.deleted:
            newest = documents.get(event.doc_id)
            if newest is None or _rank(event) > _rank(newest):
                documents[event.doc_id] = event
    return {doc_id: DocState(winner, documents.get(doc_id)) for doc_id, winner in winners.items()}
