"""Stage an ingest result between the ingest and validate tasks, in the snapshot layout (no pickles).

The staged folder holds the same files as a validated folder (:mod:`evertune.data.snapshot`, typed schemas),
rows in ingestion order, and a report with what is not a row (``partition_found``, ``records_read``,
``files_read``). The ingest task returns an :class:`IngestRef` (path + counts, JSON-able) that the validate
task receives; :func:`load_ingest` reads the folder back into the exact :class:`~evertune.kb.ingest.IngestResult`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.data import snapshot
from evertune.errors import NothingToDo

if TYPE_CHECKING:
    from evertune.kb.ingest import IngestResult

#: ``report["kind"]`` of a staged ingest (a validated folder's report has none).
STAGED_KIND = "staged_ingest"


@dataclass(frozen=True)
class IngestRef:
    """A staged ingest: where it is and what it holds (the ingest task's XCom value).

    Attributes:
        interval: The data interval date.
        path: The staged folder.
        partition_found: Whether the landing partition existed.
        documents: Document rows staged.
        tombstones: Tombstone rows staged.
        qa: Training QA rows staged.
        quarantined: Ingest-stage quarantine rows.
        records_read: Input records seen (the denominator of the quarantined share).
        files_read: Files looked at.
    """

    interval: str
    path: str
    partition_found: bool
    documents: int
    tombstones: int
    qa: int
    quarantined: int
    records_read: int
    files_read: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (XCom, step summaries)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IngestRef:
        """Rebuild a reference from :meth:`to_dict` output (extra keys are ignored)."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def stage_ingest(result: IngestResult, folder: Path) -> IngestRef:
    """Write an ingest result into ``folder`` in the snapshot layout, in ingestion order.

    Args:
        result: What :func:`evertune.kb.ingest.ingest_partition` read.
        folder: The staging folder (created; its files are replaced).

    Returns:
        The :class:`IngestRef` of the staged folder.
    """
    report = {"kind": STAGED_KIND, "interval": result.interval, "partition_found": bool(result.partition_found),
              "records_read": int(result.records_read), "files_read": int(result.files_read)}  # fmt: skip
    snapshot.write(folder, {**snapshot.contents_of(result), snapshot.REPORT: report}, sort=False)
    return IngestRef(
        interval=result.interval, path=str(folder), partition_found=bool(result.partition_found),
        documents=len(result.documents), tombstones=len(result.tombstones), qa=len(result.qa),
        quarantined=len(result.quarantine), records_read=int(result.records_read), files_read=int(result.files_read),
    )  # fmt: skip


def load_ingest(folder: Path, interval: str) -> IngestResult:
    """Read a staged ingest back into the :class:`~evertune.kb.ingest.IngestResult` that was staged.

    Args:
        folder: The staged folder (:attr:`IngestRef.path`).
        interval: The interval the caller expects.

    Raises:
        NothingToDo: Nothing is staged there, or it was staged for another interval.
    """
    from evertune.kb.ingest import IngestResult

    folder = Path(folder)
    if not snapshot.path_of(folder, snapshot.REPORT).is_file():
        raise NothingToDo(f"no staged ingest for {interval} in {folder}: run ingest_documents first")
    report = snapshot.read_report(folder)
    if report.get("kind") != STAGED_KIND or report.get("interval") != interval:
        raise NothingToDo(f"{folder} holds no staged ingest of {interval}: run ingest_documents first")
    return IngestResult(
        interval=interval,
        partition_found=bool(report["partition_found"]),
        **snapshot.read_contents(folder),
        records_read=int(report["records_read"]),
        files_read=int(report["files_read"]),
    )
