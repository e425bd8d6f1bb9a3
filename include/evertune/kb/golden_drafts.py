"""Draft golden retrieval queries from published documents, for a person to review (``evertune kb golden init``).

Questions are built from a document's plain text (the ingest output: paragraphs separated by blank lines,
headings as short paragraphs of their own):

* **heading**: an imperative or gerund heading becomes "How do I <verb phrase>?", "How to X" / "When to X"
  become "How do I X?" / "When should I X?", a heading that is a question is used as it is, and any other
  heading of two or more words becomes a question about it ("What should I know about <heading>?").
* **term**: a configuration key, a file name or a command-line flag of the body ("What does audit.enabled
  do?", "What is fjordbase.toml used for?", "What does the --persist flag do?").
* **sentence**: the subject of a definition sentence ("The cluster id is a UUID." -> "What is the cluster id?").

No draft contains the document's title (case-insensitive), so a query is not answered by matching the title.
Each draft is ``{"query_id", "query", "relevant_doc_ids": [doc_id], "draft": true}``; the id is a hash of the
doc_id, the document's content hash and the draft's ordinal, so re-drafting an unchanged document gives the
same ids. The output depends only on the documents, ``per_doc`` and ``seed``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.errors import ConfigError, NothingToDo
from evertune.kb.golden import RETRIEVAL, canonical_jsonl
from evertune.kb.records import content_hash

if TYPE_CHECKING:
    from evertune.config import Params
    from evertune.settings import Settings

HEADING = "heading"
TERM = "term"
SENTENCE = "sentence"
BASES = (HEADING, TERM, SENTENCE)

#: Verbs that start an imperative heading ("Create the cluster") or, as a gerund, a task heading ("Taking a backup").
VERBS = frozenset(
    "add adjust allow back buy change check choose configure confirm connect create debug decide define delete "
    "deploy disable drop enable escalate export fence find fix follow grant import increase inspect install issue "
    "limit load look manage migrate monitor move open partition pick plan prevent promote raise read "
    "rebuild reduce reload remove rename replace replicate reset resize restore revoke roll rotate run scale see "
    "schedule secure set size start stop switch take test track tune turn uninstall update upgrade use verify "
    "view watch write".split()
)  # fmt: skip
#: Section names too generic to make a question on their own.
GENERIC_HEADINGS = frozenset(
    "action needed|after the incident|before you start|examples|example|faq|fixes|further reading|introduction|"
    "known issues|new features|next steps|notes|overview|prerequisites|references|requirements|see also|steps|"
    "summary|troubleshooting|upgrade notes".split("|")
)
_PRONOUNS = frozenset("it its this that these those they them there here you we i he she".split())
_NOT_NOUN_LEADS = frozenset(
    "after before during example for from how if in on other the things what when while why with without".split()
)
_VAGUE = frozenset("current default first following good last main manual new next old only other same usual".split())
_HOST_SUFFIXES = (".example", ".com", ".org", ".net", ".io", ".internal", ".local")
_NOUN_TEMPLATES = ("What should I know about {}?", "How does {} work?", "Where are {} explained?")
_FILE_SUFFIXES = (".toml", ".yaml", ".yml", ".conf", ".json", ".log", ".crt", ".key", ".pem", ".sql", ".py", ".sh")

_NUMBERING = re.compile(r"^(?:step\s+)?\d+[.):]\s*", re.IGNORECASE)
_CODE_CHARS = re.compile(r"[=$`{}<>|\\;/_#@*›»]|--|\.\w")
_URL = re.compile(r"\S+://\S+")
_TERM = re.compile(r"(?<![\w./-])(?:[a-z][a-z0-9]*(?:[._][a-z0-9]+)+|--[a-z][a-z0-9-]+)(?![\w/-]|\.\w)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_DEFINITION = re.compile(r"^(?P<subject>(?:The|A|An) [A-Za-z][\w -]{1,48}?) (?P<verb>is|are) (?!\w+ed\b)\w")


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def _is_prose(paragraph: str) -> bool:
    words = paragraph.split()
    plain = sum(1 for word in words if word.strip(",.;:!?()\"'").isalpha())
    return len(words) >= 6 and paragraph[-1] in ".!?:" and plain >= 0.6 * len(words)


def _is_block(paragraph: str) -> bool:
    return _is_prose(paragraph) or paragraph.count("\n") >= 2


def headings(text: str, title: str = "") -> list[str]:
    """Short one-line paragraphs followed by prose or a code block: the headings left in ingested plain text.

    Numbering ("1. ", "Step 2: ") is removed; headings that are part of the title, lead-in lines ending in ":"
    and lines that look like code, paths or table cells are not headings.
    """
    paragraphs = _paragraphs(text)
    found = []
    for paragraph, following in zip(paragraphs, paragraphs[1:], strict=False):
        line = _NUMBERING.sub("", paragraph)
        if "\n" in paragraph or not 3 <= len(line) <= 80 or len(line.split()) > 10 or line[-1] in ".:;,!":
            continue
        if _CODE_CHARS.search(line) or not re.search(r"[A-Za-z]{3}", line) or not _is_block(following):
            continue
        if line.casefold() not in title.casefold():
            found.append(line)
    return found


def _lower_first(phrase: str) -> str:
    first, _, rest = phrase.partition(" ")
    if first[1:] == first[1:].lower() and not any(ch.isdigit() for ch in first):
        first = first.lower()
    return f"{first} {rest}".strip()


def _verb_base(word: str) -> str | None:
    word = word.lower()
    if word in VERBS:
        return word
    if word.endswith("ing") and len(word) > 5:
        stem = word[:-3]
        for base in (stem, stem + "e", stem[:-1] if stem[-1:] == stem[-2:-1] else ""):
            if base in VERBS:
                return base
    return None


def heading_question(heading: str) -> str | None:
    """The question a heading asks, or ``None`` when it is too generic or vague ("Notes", "Query it")."""
    words = heading.rstrip("?").split()
    if len(words) < 2 or heading.casefold() in GENERIC_HEADINGS or words[-1].lower() in _PRONOUNS:
        return None
    if heading.endswith("?"):
        return None if words[0].lower() in _PRONOUNS or words[1].lower() in _PRONOUNS else heading
    lead, rest = words[0].lower(), " ".join(words[1:])
    if lead in ("how", "when") and words[1].lower() == "to":
        rest = " ".join(words[2:])
        return f"How do I {rest}?" if lead == "how" else f"When should I {rest}?"
    base = _verb_base(words[0])
    if base is not None:
        return f"How do I {base} {rest}?"
    return None


def _noun_questions(heading: str) -> list[str]:
    words = heading.split()
    if len(words) < 2 or heading.endswith("?") or heading.casefold() in GENERIC_HEADINGS or _verb_base(words[0]):
        return []
    if words[0].lower().rstrip(":,") in _NOT_NOUN_LEADS or words[-1].lower() in _PRONOUNS or {"is", "are"} & set(words):
        return []
    phrase = _lower_first(heading)
    return [template.format(phrase) for template in _NOUN_TEMPLATES]


def key_terms(text: str) -> list[str]:
    """Configuration keys, file names and flags of the text, most frequent first (ties in order of appearance).

    Host names and one-letter SQL aliases (``o.total``) are left out.
    """
    found = [
        term for term in _TERM.findall(_URL.sub(" ", text))
        if not term.endswith(_HOST_SUFFIXES) and (term.startswith("--") or len(re.split(r"[._]", term)[0]) > 1)
    ]  # fmt: skip
    counts = Counter(found)
    first = {term: index for index, term in reversed(list(enumerate(found)))}
    return sorted(counts, key=lambda term: (-counts[term], first[term]))


def term_question(term: str) -> str:
    """The question about one key term."""
    if term.startswith("--"):
        return f"What does the {term} flag do?"
    if term.endswith(_FILE_SUFFIXES):
        return f"What is {term} used for?"
    return f"What does {term} do?"


def sentence_questions(text: str) -> list[str]:
    """Questions from the subject of definition sentences ("The X is ..." -> "What is the X?")."""
    questions = []
    for paragraph in _paragraphs(text):
        if not _is_prose(paragraph):
            continue
        for sentence in _SENTENCE_END.split(paragraph):
            match = _DEFINITION.match(sentence)
            words = match["subject"].split()[1:] if match else []
            if 2 <= len(words) <= 5 and not _VAGUE & {word.lower() for word in words}:
                questions.append(f"What {match['verb']} {_lower_first(match['subject'])}?")
    return questions


def _specific_terms(terms: list[str], doc_freq: Counter[str]) -> list[str]:
    """The terms at most two documents use (at most 3), or else the most frequent one: specific questions."""
    specific = [term for term in terms if doc_freq[term] <= 2]
    return specific[:3] or terms[:1]


def _candidates(title: str, text: str, terms: list[str]) -> dict[str, list[str]]:
    found = {HEADING: [], TERM: [term_question(term) for term in terms], SENTENCE: sentence_questions(text)}
    for heading in headings(text, title):
        question = heading_question(heading)
        found[HEADING].extend([question] if question else _noun_questions(heading)[:1])
    folded = " ".join(title.split()).casefold()
    return {
        basis: list(dict.fromkeys(q for q in questions if folded not in " ".join(q.split()).casefold()))
        for basis, questions in found.items()
    }


def _rng(seed: int, doc_id: str, digest: str) -> random.Random:
    return random.Random(int(hashlib.sha256(f"{seed}\x1f{doc_id}\x1f{digest}".encode()).hexdigest()[:16], 16))


def draft_id(doc_id: str, digest: str, ordinal: int) -> str:
    """The stable id of a document's ``ordinal``-th draft: ``draft-`` + 16 hex digits of sha256."""
    return "draft-" + hashlib.sha256(f"{doc_id}\x1f{digest}\x1f{ordinal}".encode()).hexdigest()[:16]


def _pick(candidates: dict[str, list[str]], per_doc: int, rng: random.Random) -> list[str]:
    """Round-robin over the bases (headings first), each basis shuffled: varied questions per document."""
    pools = {basis: rng.sample(questions, len(questions)) for basis, questions in candidates.items()}
    chosen: list[str] = []
    while len(chosen) < per_doc and any(pools.values()):
        for basis in BASES:
            if pools[basis] and len(chosen) < per_doc:
                question = pools[basis].pop(0)
                if question.casefold() not in {c.casefold() for c in chosen}:
                    chosen.append(question)
    return chosen


def _digest(document: Mapping[str, Any]) -> str:
    digest = str(document.get("content_hash") or "")
    if digest:
        return digest
    fields = (str(document.get(name) or "") for name in ("title", "text", "source", "url"))
    return content_hash(*fields)


def draft_golden_queries(documents: Iterable[Mapping[str, Any]], per_doc: int = 3, seed: int = 0) -> list[dict]:
    """Draft golden retrieval queries from documents, for review.

    Args:
        documents: Rows with ``doc_id``, ``title`` and ``text`` (``content_hash`` is computed when absent).
        per_doc: At most this many drafts per document.
        seed: Varies which candidate questions are picked; the same seed gives the same drafts.

    Returns:
        Drafts sorted by doc_id then ordinal: ``{"query_id", "query", "relevant_doc_ids": [doc_id],
        "draft": True}``. A document with no usable heading, term or definition sentence gets none.

    Raises:
        ValueError: ``per_doc`` is below 1.
    """
    if per_doc < 1:
        raise ValueError(f"per_doc must be at least 1, got {per_doc}")
    ordered = sorted(documents, key=lambda d: str(d["doc_id"]))
    terms = {str(d["doc_id"]): key_terms(str(d.get("text") or "")) for d in ordered}
    doc_freq = Counter(term for found in terms.values() for term in set(found))
    drafts = []
    for document in ordered:
        doc_id, digest = str(document["doc_id"]), _digest(document)
        text, title = str(document.get("text") or ""), str(document.get("title") or "")
        candidates = _candidates(title, text, _specific_terms(terms[doc_id], doc_freq))
        for ordinal, query in enumerate(_pick(candidates, per_doc, _rng(seed, doc_id, digest))):
            drafts.append(
                {"query_id": draft_id(doc_id, digest, ordinal), "query": query, "relevant_doc_ids": [doc_id],
                 "draft": True}
            )  # fmt: skip
    return drafts


def published_documents(validated_root: Path) -> list[dict[str, Any]]:
    """The current version of every document of the validated history that no tombstone deletes, by doc_id."""
    from evertune.tuning.dataset import collect_deleted_doc_ids, current_documents, select_interval_dirs

    history = select_interval_dirs(validated_root, dt.date.max, None)
    documents = current_documents(history)
    deleted = collect_deleted_doc_ids(history, documents)
    return [documents[doc_id] for doc_id in sorted(documents) if doc_id not in deleted]


def landing_documents(landing_uri: str, interval: str, params: Params) -> list[dict[str, Any]]:
    """The documents of one landing partition, read by the ingest step, less those its tombstones delete.

    For a first golden set before any refresh ran: the documents are not validated yet, so a draft may name one
    that validation later quarantines (the evaluation then quarantines that draft as ``unknown_document``).
    """
    from evertune.kb.ingest import ingest_partition

    result = ingest_partition(landing_uri, interval, params)
    deleted = set(result.tombstones["doc_id"]) if len(result.tombstones) else set()
    return [row for row in result.documents.to_dict("records") if row["doc_id"] not in deleted]


def write_landing_drafts(landing_uri: str, interval: str, drafts: list[dict], *, overwrite: bool = False) -> str:
    """Write drafts as ``<landing>/ds=<interval>/golden/retrieval.jsonl`` (any fsspec URL) and return its URI.

    Raises:
        ConfigError: ``interval`` is not a date, or the file exists and ``overwrite`` is False.
    """
    import fsspec

    from evertune.kb.ingest import partition_uri

    uri = f"{partition_uri(landing_uri, interval)}/{RETRIEVAL.landing_path}"
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.exists(path) and not overwrite:
        raise ConfigError(f"{uri} already exists; review or move it, or pass --force to replace it")
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as handle:
        handle.write(canonical_jsonl(drafts))
    return uri


def init_command(
    settings: Settings,
    out_partition: str,
    *,
    from_landing: str | None = None,
    params: Params | None = None,
    per_doc: int = 3,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """``evertune kb golden init``: draft a golden retrieval set from the documents and land it for review.

    Reads the current validated documents (``<data_repo>/validated``, tombstoned ones left out: what refresh
    publishes) or, with ``from_landing``, the documents of that landing partition (before any refresh ran),
    drafts queries with :func:`draft_golden_queries` and writes them into the landing partition
    ``out_partition`` as ``golden/retrieval.jsonl``, every line marked ``"draft": true``.

    Args:
        settings: Deployment settings (``data_repo``, ``landing_uri``).
        out_partition: The landing partition date ``YYYY-MM-DD`` to write into.
        from_landing: Draft from this landing partition's documents instead of the validated history.
        params: Pipeline params (``ingest``); required with ``from_landing``.
        per_doc: At most this many drafts per document.
        seed: Draft selection seed.
        overwrite: Replace an existing ``golden/retrieval.jsonl`` in that partition.

    Returns:
        ``{"path", "drafts", "documents", "documents_without_drafts": [doc_id, ...]}``.

    Raises:
        NothingToDo: There are no documents to draft from.
        ConfigError: Bad partition date, the file exists and ``overwrite`` is False, or ``from_landing``
            without ``params``.
    """
    if from_landing is None:
        documents = published_documents(settings.data_repo / "validated")
        where = f"validated documents under {settings.data_repo / 'validated'}: run a refresh first, or pass"
        where += " --from-landing YYYY-MM-DD to draft from a landing partition"
    elif params is None:
        raise ConfigError("init_command(from_landing=...) needs params (the ingest settings)")
    else:
        documents = landing_documents(settings.landing_uri, from_landing, params)
        where = f"documents in landing partition ds={from_landing}"
    if not documents:
        raise NothingToDo(f"no {where}")
    drafts = draft_golden_queries(documents, per_doc=per_doc, seed=seed)
    path = write_landing_drafts(settings.landing_uri, out_partition, drafts, overwrite=overwrite)
    covered = {doc_id for draft in drafts for doc_id in draft["relevant_doc_ids"]}
    return {
        "path": path,
        "drafts": len(drafts),
        "documents": len(documents),
        "documents_without_drafts": sorted(str(d["doc_id"]) for d in documents if d["doc_id"] not in covered),
    }
