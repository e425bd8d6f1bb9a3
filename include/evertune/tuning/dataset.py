"""Build the supervised fine-tuning (SFT) dataset from validated interval folders.

Input: one folder per data interval (oldest first), as the validation step writes it, read through the
snapshot contract (:mod:`evertune.data.snapshot`): its ``qa`` table (``qa_id, question, answer, doc_id,
fact_key``, optional ``metadata`` JSON where ``{"pii": true}`` flags PII), ``documents`` (the current version of
each document, :func:`~evertune.data.doc_state.resolve_doc_state`), ``tombstones`` and ``golden_qa`` (held out).

Rules, in order: the latest interval wins per ``qa_id``; rows with an empty question/answer, flagged PII, a deleted
document, or that belong to the golden set (by ``qa_id`` or normalised question) are dropped; rows whose cited
document is not in the window, or whose answer is not grounded in it (:func:`check_grounding`), are dropped and
listed in ``stats["grounding"]``; when the ungrounded share of the checked rows exceeds
``dataset.max_ungrounded_fraction`` the whole dataset is rejected (:class:`~evertune.errors.PoisonedDataError`);
duplicates by normalised question+answer keep the earliest-seen row (so adding data never renames an example);
each example's prompt is rendered as served, with chunks of the pinned KB version (:mod:`evertune.tuning.contexts`:
the cited article's chunk, or only distractors and the "do not know" answer); each example goes to train or
validation by a hash of its id (stable as rows are added, never random per run).

A row holds ``id``, ``kind`` (``qa``), ``doc_id``, ``fact_key``, ``topic``, ``question`` and ``answer`` (the
reference QA pair, what drift compares), ``messages`` (system, the rendered user turn, the assistant answer) or
``prompt``/``completion``, and, when built against a KB, ``context`` (``cited``/``distractors``),
``context_doc_ids``, ``kb_version`` and ``template``.

Output (:func:`write_sft_dataset`): ``train.jsonl``, ``validation.jsonl``, ``stats.json``, byte-deterministic
(sorted rows, sorted keys, no timestamps). Versioning the folder (DVC) is the caller's job: this module only
returns the folder and its content fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.data import snapshot
from evertune.errors import NothingToDo, PoisonedDataError

# The ``X as X`` names are part of this module's API too (the builder's rules), defined where they belong.
from evertune.tuning.grounding import SOURCE_MISSING as SOURCE_MISSING
from evertune.tuning.grounding import UNGROUNDED as UNGROUNDED
from evertune.tuning.grounding import Grounding as Grounding
from evertune.tuning.grounding import GroundingCheck, as_text, poisoned_message
from evertune.tuning.grounding import answer_support as answer_support
from evertune.tuning.grounding import check_grounding as check_grounding
from evertune.tuning.history import collect_deleted_doc_ids, latest_documents, read_golden
from evertune.tuning.history import current_documents as current_documents
from evertune.tuning.history import select_interval_dirs as select_interval_dirs
from evertune.tuning.metrics import normalize_answer

if TYPE_CHECKING:
    from evertune.config import DatasetParams
    from evertune.tuning.contexts import ContextBuilder

TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "validation.jsonl"
STATS_FILE = "stats.json"
OUTPUT_FILES = (TRAIN_FILE, VALIDATION_FILE, STATS_FILE)

#: Columns a ``qa`` table must have for the builder (``record_ref`` is not needed).
QA_REQUIRED = ("qa_id", "question", "answer", "doc_id", "fact_key")
#: Metadata keys (or columns) whose truthy value marks a row as containing PII.
PII_KEYS = ("pii", "pii_detected", "contains_pii")
UNKNOWN_TOPIC = "unknown"
def normalize_text(text: str) -> str:
    """Normalisation used for dedup and golden-set matching (SQuAD-style: case, punctuation, articles, spaces)."""
    return normalize_answer(text or "")


def split_of(example_id: str, val_fraction: float) -> str:
    """``"validation"`` or ``"train"`` from a hash of the example id: stable across runs and additions."""
    bucket = int.from_bytes(hashlib.sha256(example_id.encode("utf-8")).digest()[:8], "big") / 2**64
    return "validation" if bucket < val_fraction else "train"


@dataclass(frozen=True)
class SFTDataset:
    """An SFT dataset in memory.

    Attributes:
        train: Training rows, sorted by ``id`` (fields in the module docstring); only ``messages`` or
            ``prompt``/``completion`` reach TRL (:func:`evertune.tuning.train_data.to_sft_example`).
        validation: Validation rows, same shape.
        stats: Counts of what was read, dropped and kept (written as ``stats.json``).
        format: ``messages`` or ``prompt_completion``.
    """

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)
    format: str = "messages"

    def drift_inputs(self, split: str = "train") -> tuple[list[str], dict[str, list[str]]]:
        """Texts and categories of one split, ready for :func:`evertune.tuning.drift.check_drift`."""
        return drift_inputs(self.train if split == "train" else self.validation)


@dataclass(frozen=True)
class WrittenDataset:
    """Where :func:`write_sft_dataset` wrote the dataset and its content hashes."""

    path: Path
    fingerprint: str
    files: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for XCom / MLflow params."""
        return {"path": str(self.path), "fingerprint": self.fingerprint, "files": dict(self.files)}


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, float):  # NaN from a missing cell
        return {}
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "y"}
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return bool(value)


def _topic(meta: Mapping[str, Any], document: Mapping[str, Any] | None) -> str:
    topic = meta.get("topic")
    if not topic and document is not None:
        topic = _metadata(document.get("metadata")).get("topic") or document.get("topic")
    return str(topic) if topic else UNKNOWN_TOPIC


def _record(question: str, answer: str, params: DatasetParams) -> dict[str, Any]:
    """A bare-question row (no KB given): the served template without contexts is the question itself."""
    messages = [{"role": "system", "content": params.system_prompt}, {"role": "user", "content": question}]
    if params.format == "messages":
        return {"messages": [*messages, {"role": "assistant", "content": answer}]}
    return {"prompt": f"{params.system_prompt}\n\nQuestion: {question}\nAnswer:", "completion": " " + answer}


@dataclass(frozen=True)
class _Exclusions:
    """What a build never trains on: deleted documents' QA, golden ids and golden questions (normalised)."""

    deleted: set[str]
    golden_ids: set[str]
    golden_texts: set[str]


def _latest_qa(
    folders: list[Path], counts: Counter[str]
) -> tuple[dict[str, tuple[int, dict[str, Any]]], dict[str, int]]:
    """The latest row per ``qa_id`` (later folders win) with its folder position, and where each id was first seen."""
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    first_seen: dict[str, int] = {}
    for position, folder in enumerate(folders):
        for row in snapshot.read_rows(folder, snapshot.QA, require=QA_REQUIRED, missing_ok=True):
            counts["qa_rows_read"] += 1
            qa_id = as_text(row.get("qa_id"))
            if not qa_id:
                counts["dropped_missing_id"] += 1
                continue
            first_seen.setdefault(qa_id, position)
            latest[qa_id] = (position, row)  # later interval wins
    counts["qa_unique_ids"] = len(latest)
    return latest, first_seen


def _drop_reason(qa_id: str, row: Mapping[str, Any], exclusions: _Exclusions) -> str | None:
    """The ``dropped_*`` count a QA row falls under before the groundedness check, or ``None`` to keep it."""
    question, answer = as_text(row.get("question")).strip(), as_text(row.get("answer")).strip()
    doc_id = as_text(row.get("doc_id"))
    meta = _metadata(row.get("metadata"))
    if not question or not answer:
        return "dropped_empty"
    if any(_truthy(meta.get(key)) or _truthy(row.get(key)) for key in PII_KEYS):
        return "dropped_pii"
    if doc_id and doc_id in exclusions.deleted:
        return "dropped_deleted_doc"
    if qa_id in exclusions.golden_ids:
        return "dropped_golden_id"
    if normalize_text(question) in exclusions.golden_texts:
        return "dropped_golden_question"
    return None


def _keep_qa(
    latest: Mapping[str, tuple[int, dict[str, Any]]],
    first_seen: Mapping[str, int],
    interval_names: list[str],
    exclusions: _Exclusions,
    grounding_check: GroundingCheck,
    counts: Counter[str],
) -> dict[tuple[str, str], tuple[int, str, dict[str, Any]]]:
    """The QA rows to train on, one per normalised (question, answer), each counted where it is dropped.

    Duplicates keep the earliest-seen row (then the smallest id), so new data never renames an example.
    """
    kept: dict[tuple[str, str], tuple[int, str, dict[str, Any]]] = {}
    for qa_id in sorted(latest):
        position, row = latest[qa_id]
        reason = _drop_reason(qa_id, row, exclusions)
        if reason is not None:
            counts[reason] += 1
            continue
        question, answer = as_text(row.get("question")).strip(), as_text(row.get("answer")).strip()
        if not grounding_check.passes(qa_id, question, answer, as_text(row.get("doc_id")), interval_names[position]):
            continue  # counted and listed in stats["grounding"] by the check
        key = (normalize_text(question), normalize_text(answer))
        candidate = (first_seen[qa_id], qa_id, row)
        if key in kept:
            counts["dropped_duplicate"] += 1
            if candidate[:2] < kept[key][:2]:
                kept[key] = candidate
        else:
            kept[key] = candidate
    return kept


def _qa_example(qa_id: str, row: Mapping[str, Any], docs: Mapping[str, Mapping[str, Any]], params: DatasetParams,
                contexts: ContextBuilder | None) -> dict[str, Any] | None:
    doc_id = as_text(row.get("doc_id"))
    question, answer = as_text(row.get("question")).strip(), as_text(row.get("answer")).strip()
    fields = (contexts.fields(qa_id, question, answer, doc_id) if contexts is not None
              else _record(question, answer, params))  # fmt: skip
    if fields is None:
        return None
    return {"id": qa_id, "kind": "qa", "doc_id": doc_id, "fact_key": as_text(row.get("fact_key")),
            "topic": _topic(_metadata(row.get("metadata")), docs.get(doc_id)), "question": question,
            "answer": answer, **fields}


def _stats(
    params: DatasetParams,
    intervals: list[str],
    counts: Counter[str],
    splits: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    exclusions: _Exclusions,
    grounding: dict[str, Any],
    context: dict[str, Any] | None,
) -> dict[str, Any]:
    """``stats.json``: settings, counts, topics per split, exclusion sizes, the grounding summary and the KB the
    contexts came from (``context``, ``None`` for bare-question rows)."""
    train, validation = splits
    return {
        "format": params.format,
        "val_fraction": params.val_fraction,
        "system_prompt_sha256": hashlib.sha256(params.system_prompt.encode("utf-8")).hexdigest(),
        "intervals": intervals,
        "counts": dict(sorted(counts.items())),
        "topics": {
            "train": dict(sorted(Counter(e["topic"] for e in train).items())),
            "validation": dict(sorted(Counter(e["topic"] for e in validation).items())),
        },
        "excluded": {"deleted_doc_ids": len(exclusions.deleted), "golden_ids": len(exclusions.golden_ids),
                     "golden_questions": len(exclusions.golden_texts)},
        "grounding": grounding,
        "context": context,
    }


def build_sft_dataset(
    validated_dirs: list[Path],
    params: DatasetParams,
    *,
    golden_qa_ids: set[str],
    deleted_doc_ids: set[str],
    documents: Any = None,
    golden_questions: Iterable[str] = (),
    contexts: Callable[[], ContextBuilder] | None = None,
) -> SFTDataset:
    """Assemble the SFT dataset from validated interval folders.

    Args:
        validated_dirs: Interval folders in chronological order (oldest first); later folders win on the
            same ``qa_id``. Choosing the window (``dataset.window_days``) is the caller's job, see
            :func:`select_interval_dirs`.
        params: The ``dataset`` section.
        golden_qa_ids: Golden QA ids never to train on (unioned with the ids in each folder's ``golden_qa``).
        deleted_doc_ids: Deleted documents (unioned with the folders' tombstones, see
            :func:`collect_deleted_doc_ids`); their QA is excluded.
        documents: Current documents (DataFrame or iterable of dicts with ``doc_id``, ``title``, ``text``,
            ``updated_at``, ``metadata``); defaults to the folders' ``documents``. Used for topics,
            tombstone ordering and the groundedness check of each QA answer.
        golden_questions: Extra golden question texts (matched after normalisation).
        contexts: Makes the :class:`~evertune.tuning.contexts.ContextBuilder` that renders each kept example
            against the pinned KB; called only after the groundedness rejection, so a poisoned window is
            rejected before any KB or tokenizer is needed. ``None``: bare-question prompts (the served template
            without contexts), for tests of the selection rules.

    Returns:
        The dataset, rows sorted by id. ``stats["grounding"]`` lists every row the groundedness check excluded
        (``answer_not_grounded`` or ``source_not_in_window``) with its support and missing values.

    Raises:
        PoisonedDataError: More than ``dataset.max_ungrounded_fraction`` of the checked QA rows (those whose
            cited document is in the window) are not grounded in it; ``report`` is the grounding summary.
        NothingToDo: No example is left (no QA read, everything was filtered out, or no example fit the KB and
            the token budget), or ``contexts`` found no published KB.
        CriticalValidationError: A ``qa`` table lacks required columns, a timestamp is invalid, or a
            ``golden_qa`` file is malformed.
    """
    folders = [Path(folder) for folder in validated_dirs]
    docs = latest_documents(folders, documents)
    golden_ids, golden_texts = read_golden(folders)
    exclusions = _Exclusions(
        deleted=set(deleted_doc_ids) | collect_deleted_doc_ids(folders, docs),
        golden_ids=golden_ids | {str(i) for i in golden_qa_ids},
        golden_texts=golden_texts | {normalize_text(q) for q in golden_questions},
    )
    counts: Counter[str] = Counter()
    latest, first_seen = _latest_qa(folders, counts)
    grounding_check = GroundingCheck(docs, params, counts)
    kept = _keep_qa(latest, first_seen, [folder.name for folder in folders], exclusions, grounding_check, counts)
    grounding = grounding_check.summary()
    # A share this high is not noise in the answers but a bad drop: training on the rest is not trusted either.
    if grounding["checked"] and grounding["ungrounded"] / grounding["checked"] > params.max_ungrounded_fraction:
        raise PoisonedDataError(poisoned_message(grounding), grounding)

    builder = contexts() if contexts is not None else None
    if builder is not None:
        builder.counts = counts
        builder.prepare(as_text(row.get("doc_id")) for _, _, row in kept.values())
    built = [_qa_example(qa_id, row, docs, params, builder) for _, qa_id, row in kept.values()]
    examples = [example for example in built if example is not None]
    counts["qa_examples"] = len(examples)
    if not examples:
        raise NothingToDo(
            f"no SFT examples from {len(folders)} interval folder(s): "
            f"{counts['qa_rows_read']} QA rows read, all filtered out or none present"
        )
    examples.sort(key=lambda item: item["id"])
    train = [e for e in examples if split_of(e["id"], params.val_fraction) == "train"]
    validation = [e for e in examples if split_of(e["id"], params.val_fraction) == "validation"]
    counts["train"], counts["validation"] = len(train), len(validation)
    stats = _stats(params, [folder.name for folder in folders], counts, (train, validation), exclusions, grounding,
                   builder.summary() if builder is not None else None)
    return SFTDataset(train=train, validation=validation, stats=stats, format=params.format)


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    lines = [json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")) for row in rows]
    return "".join(line + "\n" for line in lines).encode("utf-8")


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def write_sft_dataset(ds: SFTDataset, out_dir: Path) -> WrittenDataset:
    """Write ``train.jsonl``, ``validation.jsonl`` and ``stats.json``, byte-deterministically.

    Args:
        ds: The dataset from :func:`build_sft_dataset`.
        out_dir: Target folder (created). Only the three files are written; each is replaced atomically.

    Returns:
        The folder, the sha256 of each file and the fingerprint (sha256 over ``name\\0sha256\\n`` of the sorted
        files): the same content always gives the same fingerprint. Hand the folder to DVC from here.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payloads = {
        TRAIN_FILE: _jsonl(sorted(ds.train, key=lambda row: row["id"])),
        VALIDATION_FILE: _jsonl(sorted(ds.validation, key=lambda row: row["id"])),
        STATS_FILE: (json.dumps(ds.stats, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
    }
    for name, data in payloads.items():
        _write_atomic(out / name, data)
    return WrittenDataset(path=out, fingerprint=fingerprint_dir(out), files=_file_hashes(out))


def _file_hashes(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in sorted(OUTPUT_FILES)}


def fingerprint_dir(folder: Path) -> str:
    """Content fingerprint of a written dataset folder (see :func:`write_sft_dataset`)."""
    digest = hashlib.sha256()
    for name, file_hash in _file_hashes(Path(folder)).items():
        digest.update(f"{name}\0{file_hash}\n".encode())
    return digest.hexdigest()


def read_sft_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read rows written by :func:`write_sft_dataset` (e.g. the champion's ``train.jsonl`` for drift)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def example_text(row: Mapping[str, Any]) -> str:
    """The text of one SFT row for drift checks: its question and reference answer (the retrieved contexts are not
    the data that drifts); rows without them (older datasets) give user + assistant turns, or prompt + completion."""
    if "question" in row and "answer" in row:
        return f"{row['question']}\n{row['answer']}"
    if "messages" in row:
        return "\n".join(m["content"] for m in row["messages"] if m.get("role") in ("user", "assistant"))
    return f"{row.get('prompt', '')}{row.get('completion', '')}"


def drift_inputs(rows: Iterable[Mapping[str, Any]]) -> tuple[list[str], dict[str, list[str]]]:
    """Texts plus ``topic`` and ``kind`` categories of SFT rows, for :func:`evertune.tuning.drift.check_drift`."""
    rows = list(rows)
    texts = [example_text(row) for row in rows]
    categories = {
        "topic": [str(row.get("topic") or UNKNOWN_TOPIC) for row in rows],
        "kind": [str(row.get("kind") or "qa") for row in rows],
    }
    return texts, categories
