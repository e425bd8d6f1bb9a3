"""Deterministic synthetic help-center corpus for the benchmarks, written in the validated-folder format.

Documents are short (60-100 words by default, 40-80 in the KB benchmarks: one or two 128-token chunks), so a full embedding pass over
10,000 of them fits in a few minutes on 2 CPU cores. Each document is generated from its own seeded
random stream, so document ``i`` is the same whatever the corpus size, and an edit is a pure function of
(document, day). Text is templated English with the product's vocabulary: realistic token statistics for
the embedder and the full-text index, no meaning.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

FEATURES = (
    "notebook", "note", "tag", "shared space", "template", "attachment", "reminder", "checklist", "web clipper",
    "offline mode", "version history", "trash", "export", "import", "calendar sync", "search index", "comment",
    "mention", "workspace", "guest account", "API token", "webhook", "backup", "two-factor login", "billing plan",
    "invoice", "seat", "mobile widget", "dark theme", "keyboard shortcut", "PDF annotation", "audio note",
)  # fmt: skip
VERBS = (
    "create", "rename", "delete", "restore", "share", "archive", "move", "pin", "lock", "sync", "export",
    "import", "duplicate", "merge", "search", "print", "encrypt", "tag", "filter", "sort", "schedule", "publish",
)  # fmt: skip
PLACES = (
    "Settings", "the sidebar", "the note menu", "the toolbar", "the account page", "the admin console",
    "the mobile app", "the desktop app", "the browser extension", "the billing page", "the sharing dialog",
)  # fmt: skip
TOPICS = ("billing", "sync", "sharing", "security", "integrations", "import-export", "editor", "mobile")
TEMPLATES = (
    "To {verb} a {feature}, open {place} and select {Verb}.",
    "You can {verb} any {feature} from {place}, even while you are offline.",
    "If the {feature} does not appear, check that {place} shows the latest sync time.",
    "Admins can decide who may {verb} a {feature} in {place}.",
    "When you {verb} a {feature}, the change reaches your other devices within a few seconds.",
    "Each {feature} keeps its own history, so you can undo a mistake from {place}.",
    "On the Free plan you can {verb} up to {n} items per {feature}; paid plans have no limit.",
    "Use the keyboard shortcut Ctrl+{key} in {place} to {verb} the selected {feature} quickly.",
    "A {feature} that you {verb} by accident stays in the trash for {n} days.",
    "Guests see a {feature} only after the owner chooses to {verb} it from {place}.",
    "The API lets your scripts {verb} a {feature}; see the rate limits before running a bulk job.",
    "We recommend that you {verb} the {feature} before you change its permissions in {place}.",
)  # fmt: skip
QUESTION_TEMPLATES = (
    "how do I {verb} a {feature}",
    "can I {verb} my {feature} from {place}",
    "{feature} {verb} not working",
    "where is the option to {verb} a {feature}",
    "why can't guests {verb} the {feature}",
    "limit on {feature} for the free plan",
    "undo {verb} {feature} by mistake",
    "{verb} {feature} with the API",
)  # fmt: skip

BASE_TIME = dt.datetime(2026, 11, 1, 6, 0, tzinfo=dt.UTC)


def _fill(template: str, rng: random.Random) -> str:
    verb = rng.choice(VERBS)
    return template.format(
        verb=verb,
        Verb=verb.capitalize(),
        feature=rng.choice(FEATURES),
        place=rng.choice(PLACES),
        n=rng.choice((3, 5, 10, 20, 30, 50, 100)),
        key=rng.choice("ABDEFGHJKLMNPQRSTUWY"),
    )


def _body(rng: random.Random, min_words: int, max_words: int) -> str:
    target = rng.randint(min_words, max_words)
    sentences: list[str] = []
    words = 0
    while words < target:
        sentence = _fill(rng.choice(TEMPLATES), rng)
        sentences.append(sentence)
        words += len(sentence.split())
    # Two paragraphs, like a short help article.
    cut = max(1, len(sentences) // 2)
    return " ".join(sentences[:cut]) + "\n\n" + " ".join(sentences[cut:])


def make_document(index: int, *, seed: int = 0, min_words: int = 60, max_words: int = 100) -> dict[str, Any]:
    """Document ``index`` of the corpus (a normalised record: all ``documents.parquet`` columns)."""
    rng = random.Random(f"evertune-bench:{seed}:{index}")
    feature = rng.choice(FEATURES)
    verb = rng.choice(VERBS)
    topic = rng.choice(TOPICS)
    doc_id = f"doc-{index:06d}"
    title = f"{verb.capitalize()} a {feature} ({topic}, article {index})"
    return _record(doc_id, title, _body(rng, min_words, max_words), topic, BASE_TIME, index)


def edit_document(doc: dict[str, Any], day: int) -> dict[str, Any]:
    """The document as edited on ``day`` (>= 1): one sentence replaced, ``updated_at`` moved to that day."""
    rng = random.Random(f"evertune-bench-edit:{doc['doc_id']}:{day}")
    text = doc["text"]
    # Replace the first sentence with a new one (changes the first chunk, and the second when they overlap).
    first_end = text.find(".") + 1
    new_sentence = f"Update {day}: " + _fill(rng.choice(TEMPLATES), rng)
    text = new_sentence + text[first_end:] if first_end > 0 else new_sentence + " " + text
    topic = json.loads(doc["metadata"])["topic"]
    when = BASE_TIME + dt.timedelta(days=day, minutes=rng.randint(0, 600))
    return _record(doc["doc_id"], doc["title"], text, topic, when, int(doc["doc_id"].split("-")[1]))


def _record(doc_id: str, title: str, text: str, topic: str, when: dt.datetime, index: int) -> dict[str, Any]:
    from evertune.kb.records import content_hash

    url = f"https://help.nimbusnotes.example/articles/{doc_id}"
    return {
        "doc_id": doc_id,
        "title": title,
        "text": text,
        "source": "help-center",
        "url": url,
        "updated_at": when.isoformat(),
        "content_hash": content_hash(title, text, "help-center", url),
        "metadata": json.dumps({"topic": topic, "format": "jsonl"}, sort_keys=True),
        "record_ref": f"docs.jsonl:{index + 1}",
    }


def make_corpus(n_docs: int, *, seed: int = 0, min_words: int = 60, max_words: int = 100) -> list[dict[str, Any]]:
    """Documents ``0 .. n_docs-1``."""
    return [make_document(i, seed=seed, min_words=min_words, max_words=max_words) for i in range(n_docs)]


def write_validated_folder(folder: Path, docs: list[dict[str, Any]]) -> Path:
    """Write ``documents.parquet`` (the columns :func:`evertune.kb.index.read_validated` reads) into ``folder``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from evertune.kb.index import DOCUMENT_COLUMNS

    folder.mkdir(parents=True, exist_ok=True)
    rows = sorted(docs, key=lambda row: row["doc_id"])
    table = pa.table({column: pa.array([row[column] for row in rows], pa.string()) for column in DOCUMENT_COLUMNS})
    pq.write_table(table, folder / "documents.parquet")
    return folder


def make_queries(n: int, *, seed: int = 1) -> list[str]:
    """``n`` user-style questions over the corpus vocabulary (seeded)."""
    rng = random.Random(f"evertune-bench-queries:{seed}")
    return [_fill(rng.choice(QUESTION_TEMPLATES), rng) for _ in range(n)]


def make_sft_examples(n: int, params: Any, *, seed: int = 2, context_chunks: int = 0) -> list[dict[str, Any]]:
    """``n`` chat QA examples ``{"messages": [system, user, assistant]}`` like the project's training set.

    The system and user turns come from the served prompt (:func:`evertune.tuning.answer.build_messages` with
    ``params``' template); with ``context_chunks``, around that many generated excerpts of ~90-100 words (about one
    128-token chunk each), as the training set's prompts are (``dataset.context.k``); without, the bare question.
    """
    from evertune.tuning.answer import answer_spec, build_messages

    spec = answer_spec(params)
    rng = random.Random(f"evertune-bench-sft:{seed}")
    rows = []
    for _ in range(n):
        question = _fill(rng.choice(QUESTION_TEMPLATES), rng).capitalize() + "?"
        answer = " ".join(_fill(rng.choice(TEMPLATES), rng) for _ in range(rng.randint(1, 3)))
        contexts = [{"title": f"Help article {rng.randint(1, 999)}", "text": _body(rng, 90, 100), "doc_id": f"d{i}"}
                    for i in range(context_chunks)]  # fmt: skip
        rows.append({"messages": [*build_messages(question, contexts, spec), {"role": "assistant", "content": answer}]})
    return rows


def distinct_queries(n: int, seed: int) -> list[str]:
    """``n`` distinct generated user questions (:func:`bench.corpus.make_queries`, duplicates dropped)."""
    seen: dict[str, None] = {}
    for query in make_queries(4 * n + 100, seed=seed):
        seen.setdefault(query, None)
    if len(seen) < n:
        raise RuntimeError(f"only {len(seen)} distinct queries for {n}")
    return list(seen)[:n]
