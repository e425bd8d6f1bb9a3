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
optional document-grounded examples are added; each example goes to train or validation by a hash of its id
(stable as rows are added, never random per run).

Output (:func:`write_sft_dataset`): ``train.jsonl``, ``validation.jsonl``, ``stats.json``, byte-deterministic
(sorted rows, sorted keys, no timestamps). Versioning the folder (DVC) is the caller's job: this module only
returns the folder and its content fingerprint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.data import snapshot
from evertune.data.doc_state import DocEvent, resolve_doc_state
from evertune.errors import NothingToDo, PoisonedDataError
from evertune.tuning.metrics import normalize_answer

if TYPE_CHECKING:
    from evertune.config import DatasetParams

TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "validation.jsonl"
STATS_FILE = "stats.json"
OUTPUT_FILES = (TRAIN_FILE, VALIDATION_FILE, STATS_FILE)

#: Columns a ``qa`` table must have for the builder (``record_ref`` is not needed).
QA_REQUIRED = ("qa_id", "question", "answer", "doc_id", "fact_key")
#: Metadata keys (or columns) whose truthy value marks a row as containing PII.
PII_KEYS = ("pii", "pii_detected", "contains_pii")
UNKNOWN_TOPIC = "unknown"
_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")
#: Exclusion reasons of the groundedness check (``stats["grounding"]["excluded"][*]["reason"]``).
UNGROUNDED = "answer_not_grounded"
SOURCE_MISSING = "source_not_in_window"
#: Ungrounded row ids named in a :class:`~evertune.errors.PoisonedDataError` message.
_EXAMPLES_IN_MESSAGE = 5

# Words that carry no claim of their own (after normalize_text: lowercase, no punctuation, no a/an/the).
# Polarity words (yes, no, not) are here too: a word-overlap check cannot verify them, so they are not scored.
_FUNCTION_WORDS = frozenset("""
    about above after again against am and any are as at be because been before being below between both but by
    can cannot cant could did didnt do does doesnt doing dont down during each few for from further had has have
    having he her here hers him his how i if in into is isnt it its itself just me more most my no nor not of off
    on or other our ours out over own same she should so some such than that their theirs them then there these
    they this those through to too under until up very was we were what when where which while who whom why will
    with wont would yes you your yours
""".split())
# Number words and words that fix a quantity or a scope: like digits, the article must have them next to the
# same word. "single" is left out: it is mostly part of a term ("single sign-on" where the article says SSO).
_QUANTITY_WORDS = frozenset("""
    zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
    seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million
    billion dozen once twice half double triple unlimited infinite only never forever none
""".split())
_SENTENCE_END = (".", "!", "?", ":")


def normalize_text(text: str) -> str:
    """Normalisation used for dedup and golden-set matching (SQuAD-style: case, punctuation, articles, spaces)."""
    return normalize_answer(text or "")


def split_of(example_id: str, val_fraction: float) -> str:
    """``"validation"`` or ``"train"`` from a hash of the example id: stable across runs and additions."""
    bucket = int.from_bytes(hashlib.sha256(example_id.encode("utf-8")).digest()[:8], "big") / 2**64
    return "validation" if bucket < val_fraction else "train"


def format_prompt(question: str, system_prompt: str) -> str:
    """The plain-text prompt of the ``prompt_completion`` format (use the same at inference)."""
    return f"{system_prompt}\n\nQuestion: {question.strip()}\nAnswer:"


def format_messages(question: str, system_prompt: str, answer: str | None = None) -> list[dict[str, str]]:
    """Chat messages of the ``messages`` format; without ``answer`` it is the inference prompt."""
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": question.strip()}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer.strip()})
    return messages


@dataclass(frozen=True)
class Grounding:
    """How far an answer is backed by the article it cites (see :func:`check_grounding`).

    Attributes:
        grounded: Every value word is backed and ``support`` reaches the threshold.
        support: Share of the answer's claim words that the article has next to the same neighbouring word;
            1.0 when the answer claims nothing the question does not already say, 0.0 for an empty article.
        missing_values: Numbers, quantity words and names of the answer that the article does not back.
        unsupported: Every claim word not found in context (most of ``missing_values`` too), in answer order.
    """

    grounded: bool
    support: float
    missing_values: tuple[str, ...] = ()
    unsupported: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Article:
    """The normalised words of an article and its pairs of adjacent words, built once per document."""

    words: frozenset[str]
    pairs: frozenset[tuple[str, str]]

    @classmethod
    def of(cls, text: str) -> _Article:
        words = [word for word, _ in _words(text)]
        return cls(frozenset(words), frozenset(pairwise(words)))


def _words(text: str) -> list[tuple[str, bool]]:
    """Normalised words of ``text``, each flagged when it is a name (capitalised mid-sentence, or mixed case)."""
    words: list[tuple[str, bool]] = []
    sentence_start = True
    for raw in (text or "").split():
        word = normalize_text(raw)
        core = raw.strip("\"'()[]{}*_,.;:!?")
        name = any(ch.isupper() for ch in core[1:]) or (core[:1].isupper() and not sentence_start)
        if word:
            words.append((word, name))
        sentence_start = raw.endswith(_SENTENCE_END)
    return words


def _is_quantity(word: str) -> bool:
    return any(ch.isdigit() for ch in word) or word in _QUANTITY_WORDS


def _ground(answer: str, article: _Article, question: str, min_support: float) -> Grounding:
    words = _words(answer)
    sequence = [word for word, _ in words]
    asked = {word for word, _ in _words(question)}
    claims = [i for i, word in enumerate(sequence) if word not in asked and word not in _FUNCTION_WORDS]

    def in_context(i: int) -> bool:
        if len(sequence) == 1:
            return sequence[0] in article.words
        return ((i > 0 and (sequence[i - 1], sequence[i]) in article.pairs)
                or (i + 1 < len(sequence) and (sequence[i], sequence[i + 1]) in article.pairs))

    supported = {i for i in claims if in_context(i)}
    missing = []
    for i in claims:
        word, name = words[i]
        if _is_quantity(word):
            backed = i in supported  # same context: "$12 per user" is not "$10 per user"
        else:
            # A name only has to occur: articles phrase around names freely ("iPhone app requires iOS 16").
            backed = not name or word in article.words
        if not backed:
            missing.append(word)
    if not article.words:
        support = 0.0
    else:
        support = len(supported) / len(claims) if claims else 1.0
    return Grounding(
        grounded=bool(article.words) and not missing and support >= min_support,
        support=support,
        missing_values=tuple(missing),
        unsupported=tuple(sequence[i] for i in claims if i not in supported),
    )


def check_grounding(answer: str, article: str, *, question: str = "", min_support: float = 0.2) -> Grounding:
    """Whether ``answer`` is backed by ``article``, the text of the document its QA row cites.

    Words are compared after :func:`normalize_text`. The answer's *claim words* are its words that are neither
    in the question nor function words. A claim word is *supported* when the article has it next to the same
    neighbouring word as in the answer, so "$12 per user" is not backed by "$10 per user ... 12 characters".
    The answer is grounded when

    * every number, number word or scope word (``only``, ``unlimited``, ``never``...) among the claim words is
      supported,
    * every name among them (capitalised inside a sentence, or in mixed case: ``Okta``, ``iOS``, ``SMS``)
      occurs in the article,
    * and the share of supported claim words is at least ``min_support``.

    A paraphrase keeps the value and some of the wording; a plausible false answer brings a value the article
    does not state. This is a lexical check: it cannot see a flipped yes/no or negation, and an article that
    happens to state the false value for something else backs it.

    Args:
        answer: The QA answer.
        article: The cited document's text (title included, if any).
        question: The QA question; words it already contains are not claims of the answer.
        min_support: ``dataset.min_answer_support``.

    Returns:
        The :class:`Grounding`; an empty article backs nothing.
    """
    return _ground(answer, _Article.of(article), question, min_support)


def answer_support(answer: str, article: str, question: str = "") -> float:
    """The ``support`` of :func:`check_grounding`: share of the answer's claim words the article backs in context."""
    return check_grounding(answer, article, question=question).support


@dataclass(frozen=True)
class SFTDataset:
    """An SFT dataset in memory.

    Attributes:
        train: Training rows, sorted by ``id``. Each row has ``id``, ``kind`` (``qa``/``document``), ``doc_id``,
            ``fact_key``, ``topic`` and either ``messages`` or ``prompt``/``completion`` (TRL column names; the
            other keys are dropped by TRL's ``remove_unused_columns``).
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


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _interval_of(folder: Path) -> str:
    """The interval date in a folder's name (``ds=2026-11-03`` -> ``2026-11-03``); the name if it holds none."""
    match = _DATE.search(folder.name)
    return match.group(1) if match else folder.name


def _current(events: Iterable[DocEvent]) -> dict[str, dict[str, Any]]:
    states = resolve_doc_state(events)
    return {doc_id: dict(state.document.row) for doc_id, state in states.items() if state.document is not None}


def _latest_documents(validated_dirs: list[Path], documents: Any) -> dict[str, dict[str, Any]]:
    """``documents`` (rows or a DataFrame) resolved per doc_id, or else :func:`current_documents` of the folders."""
    if documents is None:
        return current_documents(validated_dirs)
    rows = documents.to_dict("records") if hasattr(documents, "to_dict") else list(documents)
    return _current(DocEvent.upsert(row) for row in rows if _text(row.get("doc_id")))


def current_documents(validated_dirs: list[Path]) -> dict[str, dict[str, Any]]:
    """The current version of every document in the folders, by doc_id (for ``build_sft_dataset(documents=...)``).

    The newest ``updated_at`` wins; ties go to the later interval (:func:`~evertune.data.doc_state.resolve_doc_state`).
    Pass the whole validated history up to ``as_of``, not just the training window: a QA row of the window may
    cite an article that last changed long before it, and its answer must still be checked against that text.
    """
    events = [
        DocEvent.upsert(row, _interval_of(Path(folder)))
        for folder in validated_dirs
        for row in snapshot.read_rows(folder, snapshot.DOCUMENTS, require=("doc_id", "updated_at"), missing_ok=True)
        if _text(row.get("doc_id"))
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
    events = [
        DocEvent.tombstone(row, _interval_of(Path(folder)))
        for folder in validated_dirs
        for row in snapshot.read_rows(folder, snapshot.TOMBSTONES, require=("doc_id", "deleted_at"), missing_ok=True)
        if _text(row.get("doc_id"))
    ]
    events += [DocEvent.upsert({**documents[doc_id], "doc_id": doc_id}) for doc_id in sorted(
        {event.doc_id for event in events} & set(documents))]  # fmt: skip
    return {doc_id for doc_id, state in resolve_doc_state(events).items() if state.deleted}


def _read_golden(validated_dirs: list[Path]) -> tuple[set[str], set[str]]:
    ids: set[str] = set()
    questions: set[str] = set()
    for folder in validated_dirs:
        for record in snapshot.read_records(folder, snapshot.GOLDEN_QA, missing_ok=True):
            if record.get("qa_id"):
                ids.add(str(record["qa_id"]))
            if record.get("question"):
                questions.add(normalize_text(str(record["question"])))
    return ids, questions


def _topic(meta: Mapping[str, Any], document: Mapping[str, Any] | None) -> str:
    topic = meta.get("topic")
    if not topic and document is not None:
        topic = _metadata(document.get("metadata")).get("topic") or document.get("topic")
    return str(topic) if topic else UNKNOWN_TOPIC


def _truncate(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip()


def _record(question: str, answer: str, params: DatasetParams) -> dict[str, Any]:
    if params.format == "messages":
        return {"messages": format_messages(question, params.system_prompt, answer)}
    return {"prompt": format_prompt(question, params.system_prompt), "completion": " " + answer.strip()}


class _GroundingCheck:
    """Checks the QA rows of one build against their cited documents and keeps the tallies for ``stats``."""

    def __init__(self, docs: Mapping[str, Mapping[str, Any]], params: DatasetParams, counts: Counter[str]) -> None:
        self.docs, self.params, self.counts = docs, params, counts
        self.articles: dict[str, _Article] = {}  # built once per document
        self.excluded: list[dict[str, Any]] = []
        self.by_interval: dict[str, Counter[str]] = {}

    def passes(self, qa_id: str, question: str, answer: str, doc_id: str, interval: str) -> bool:
        """Whether the row is grounded in its document; an excluded row is counted and listed."""
        document = self.docs.get(doc_id) if doc_id else None
        text = _text(document.get("text")) if document is not None else ""
        if not text.strip():
            # Nothing to compare with (no such document up to as_of, or an empty one): unverifiable, not trusted.
            self.counts["dropped_source_missing"] += 1
            self.excluded.append({"qa_id": qa_id, "doc_id": doc_id, "interval": interval, "reason": SOURCE_MISSING,
                                  "support": None, "missing_values": [], "unsupported": []})
            return False
        if doc_id not in self.articles:
            self.articles[doc_id] = _Article.of(f"{_text(document.get('title'))}\n{text}")
        result = _ground(answer, self.articles[doc_id], question, self.params.min_answer_support)
        tally = self.by_interval.setdefault(interval, Counter())
        tally["checked"] += 1
        if result.grounded:
            return True
        tally["ungrounded"] += 1
        self.counts["dropped_ungrounded"] += 1
        self.excluded.append({"qa_id": qa_id, "doc_id": doc_id, "interval": interval, "reason": UNGROUNDED,
                              "support": round(result.support, 4), "missing_values": list(result.missing_values),
                              "unsupported": list(result.unsupported)})
        return False

    def summary(self) -> dict[str, Any]:
        """``stats["grounding"]``, also the ``report`` of a :class:`~evertune.errors.PoisonedDataError`."""
        checked = sum(tally["checked"] for tally in self.by_interval.values())
        ungrounded = self.counts.get("dropped_ungrounded", 0)
        return {
            "min_answer_support": self.params.min_answer_support,
            "max_ungrounded_fraction": self.params.max_ungrounded_fraction,
            # The share's denominator: QA rows of the window whose cited document could be read.
            "checked": checked,
            "ungrounded": ungrounded,
            "ungrounded_fraction": round(ungrounded / checked, 4) if checked else 0.0,
            "source_missing": self.counts.get("dropped_source_missing", 0),
            "by_interval": {name: {"checked": tally["checked"], "ungrounded": tally["ungrounded"]}
                            for name, tally in sorted(self.by_interval.items())},
            "excluded": self.excluded,
        }


def _poisoned_message(grounding: Mapping[str, Any]) -> str:
    ids = [row["qa_id"] for row in grounding["excluded"] if row["reason"] == UNGROUNDED]
    examples = ", ".join(ids[:_EXAMPLES_IN_MESSAGE]) + (", ..." if len(ids) > _EXAMPLES_IN_MESSAGE else "")
    worst = max(grounding["by_interval"].items(), key=lambda item: (item[1]["ungrounded"], item[0]))
    return (
        f"{grounding['ungrounded']} of {grounding['checked']} QA rows in the window "
        f"({grounding['ungrounded_fraction']:.1%}) are not grounded in the article they cite, above "
        f"dataset.max_ungrounded_fraction={grounding['max_ungrounded_fraction']:.1%}: the dataset is rejected "
        f"before training. Examples: {examples}; {worst[1]['ungrounded']} of {worst[1]['checked']} rows of "
        f"{worst[0]} are ungrounded."
    )


def build_sft_dataset(
    validated_dirs: list[Path],
    params: DatasetParams,
    *,
    golden_qa_ids: set[str],
    deleted_doc_ids: set[str],
    documents: Any = None,
    golden_questions: Iterable[str] = (),
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
            tombstone ordering, the groundedness check of each QA answer and, with
            ``dataset.include_documents``, document-grounded examples.
        golden_questions: Extra golden question texts (matched after normalisation).

    Returns:
        The dataset, rows sorted by id. ``stats["grounding"]`` lists every row the groundedness check excluded
        (``answer_not_grounded`` or ``source_not_in_window``) with its support and missing values.

    Raises:
        PoisonedDataError: More than ``dataset.max_ungrounded_fraction`` of the checked QA rows (those whose
            cited document is in the window) are not grounded in it; ``report`` is the grounding summary.
        NothingToDo: No example is left (no QA read, or everything was filtered out).
        CriticalValidationError: A ``qa`` table lacks required columns, a timestamp is invalid, or a
            ``golden_qa`` file is malformed.
    """
    folders = [Path(folder) for folder in validated_dirs]
    docs = _latest_documents(folders, documents)
    deleted = set(deleted_doc_ids) | collect_deleted_doc_ids(folders, docs)
    golden_ids, golden_texts = _read_golden(folders)
    golden_ids |= {str(i) for i in golden_qa_ids}
    golden_texts |= {normalize_text(q) for q in golden_questions}

    counts: Counter[str] = Counter()
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    first_seen: dict[str, int] = {}
    for position, folder in enumerate(folders):
        for row in snapshot.read_rows(folder, snapshot.QA, require=QA_REQUIRED, missing_ok=True):
            counts["qa_rows_read"] += 1
            qa_id = _text(row.get("qa_id"))
            if not qa_id:
                counts["dropped_missing_id"] += 1
                continue
            first_seen.setdefault(qa_id, position)
            latest[qa_id] = (position, row)  # later interval wins
    counts["qa_unique_ids"] = len(latest)

    kept: dict[tuple[str, str], tuple[int, str, dict[str, Any]]] = {}
    grounding_check = _GroundingCheck(docs, params, counts)
    for qa_id in sorted(latest):
        position, row = latest[qa_id]
        question, answer = _text(row.get("question")).strip(), _text(row.get("answer")).strip()
        doc_id = _text(row.get("doc_id"))
        meta = _metadata(row.get("metadata"))
        if not question or not answer:
            counts["dropped_empty"] += 1
        elif any(_truthy(meta.get(key)) or _truthy(row.get(key)) for key in PII_KEYS):
            counts["dropped_pii"] += 1
        elif doc_id and doc_id in deleted:
            counts["dropped_deleted_doc"] += 1
        elif qa_id in golden_ids:
            counts["dropped_golden_id"] += 1
        elif normalize_text(question) in golden_texts:
            counts["dropped_golden_question"] += 1
        elif not grounding_check.passes(qa_id, question, answer, doc_id, folders[position].name):
            continue  # counted and listed in stats["grounding"] by the check
        else:
            key = (normalize_text(question), normalize_text(answer))
            candidate = (first_seen[qa_id], qa_id, row)
            if key in kept:
                counts["dropped_duplicate"] += 1
                # Keep the earliest-seen row (then the smallest id) so new data never renames an example.
                if candidate[:2] < kept[key][:2]:
                    kept[key] = candidate
            else:
                kept[key] = candidate

    grounding = grounding_check.summary()
    # A share this high is not noise in the answers but a bad drop: training on the rest is not trusted either.
    if grounding["checked"] and grounding["ungrounded"] / grounding["checked"] > params.max_ungrounded_fraction:
        raise PoisonedDataError(_poisoned_message(grounding), grounding)

    examples: list[dict[str, Any]] = []
    for _, qa_id, row in kept.values():
        doc_id = _text(row.get("doc_id"))
        examples.append({
            "id": qa_id,
            "kind": "qa",
            "doc_id": doc_id,
            "fact_key": _text(row.get("fact_key")),
            "topic": _topic(_metadata(row.get("metadata")), docs.get(doc_id)),
            **_record(_text(row.get("question")), _text(row.get("answer")), params),
        })
    counts["qa_examples"] = len(examples)

    if params.include_documents:
        for doc_id in sorted(docs):
            document = docs[doc_id]
            title, text = _text(document.get("title")).strip(), _text(document.get("text"))
            if doc_id in deleted or not title or not text.strip():
                continue
            question = f'What does the help-center article "{title}" say?'
            examples.append({
                "id": f"doc:{doc_id}",
                "kind": "document",
                "doc_id": doc_id,
                "fact_key": "",
                "topic": _topic({}, document),
                **_record(question, _truncate(text, params.document_max_chars), params),
            })
        counts["document_examples"] = len(examples) - counts["qa_examples"]

    if not examples:
        raise NothingToDo(
            f"no SFT examples from {len(folders)} interval folder(s): "
            f"{counts['qa_rows_read']} QA rows read, all filtered out or none present"
        )
    examples.sort(key=lambda item: item["id"])
    train = [e for e in examples if split_of(e["id"], params.val_fraction) == "train"]
    validation = [e for e in examples if split_of(e["id"], params.val_fraction) == "validation"]
    counts["train"], counts["validation"] = len(train), len(validation)
    stats = {
        "format": params.format,
        "val_fraction": params.val_fraction,
        "include_documents": params.include_documents,
        "system_prompt_sha256": hashlib.sha256(params.system_prompt.encode("utf-8")).hexdigest(),
        "intervals": [folder.name for folder in folders],
        "counts": dict(sorted(counts.items())),
        "topics": {
            "train": dict(sorted(Counter(e["topic"] for e in train).items())),
            "validation": dict(sorted(Counter(e["topic"] for e in validation).items())),
        },
        "excluded": {"deleted_doc_ids": len(deleted), "golden_ids": len(golden_ids),
                     "golden_questions": len(golden_texts)},
        "grounding": grounding,
    }
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
    """The text of one SFT row for drift checks: user + assistant turns, or prompt + completion."""
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
