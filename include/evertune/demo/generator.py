"""Daily landing-zone drops for the Nimbus Notes help center, following ``docs/data-format.md``.

``generate_drop`` writes one partition ``<landing>/ds=YYYY-MM-DD/``; its bytes depend only on
``(seed, start_date, n_articles, max_file_bytes, date)``, so rewriting a partition, or generating one day
alone, gives the same files as a full range. The storyline lives in :mod:`evertune.demo.scenario`, the
texts in :mod:`evertune.demo.content`. ``_manifest.json`` tells tests and the demo summary what each drop
was meant to contain (the pipeline never reads it):

* ``date``, ``day`` (1 = start date), the generation arguments, flags ``drift`` and ``poisoned``;
* ``added``, ``edited`` (with ``edit_reasons``: ``wording`` or ``fact:<key>``), ``deleted`` (tombstones that
  delete) and ``ignored_tombstones`` (older than the article's newest version: they must not delete);
* ``fact_changes`` (``fact_key``, ``old``, ``new``, ``doc_ids`` rewritten) and ``facts`` as of the day;
* ``bad_records``: ``record_ref`` (``docs/x.md`` or ``docs.jsonl:N``, 1-based), the expected quarantine
  ``reason``, the generator's ``kind``, the ``doc_id`` ingestion can read (else empty) and a ``detail``;
* ``poisoned_qa_ids``, ``html_strip_markers`` (must not survive HTML normalisation) and ``counts``.

Ground truth for tests: :func:`articles_as_of` (normalised text as ingestion should produce it) and
:func:`facts_as_of`.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import shutil
from collections import Counter
from pathlib import Path

from evertune.demo.content import (
    BASE_URL,
    CLOSINGS,
    CORE_SUBJECTS,
    FACT_LEADS,
    FACTS,
    FACTS_BY_KEY,
    FILLERS,
    JUNK_SUBJECTS,
    PII_POSTS,
    QUALIFIERS,
    STEP_HEADINGS,
    TIP_LABELS,
    TOPIC_DETAILS,
    TOPIC_INTROS,
    TOPIC_TIPS,
    TOPIC_TROUBLESHOOTING,
)
from evertune.demo.scenario import (
    Article,
    DayPlan,
    Scenario,
    answer_for,
    seeded_rng,
    stable_hash,
    to_date,
)
from evertune.errors import ConfigError

GENERATOR_VERSION = "evertune.demo/1"
#: Strings inside <script>/<style> of HTML articles; none may survive normalisation.
HTML_STRIP_MARKERS = ("nimbusTrack", "nimbus-help-css")
MIN_WORDS, MAX_WORDS = 150, 400
_SYMLINK_TARGET = "/etc/passwd"
_SCRIPT = ('window.nimbusTrack = window.nimbusTrack || [];\n'
           'nimbusTrack.push({event: "article_view", article: "%s"});')
_STYLE = "/* nimbus-help-css */ body { font-family: system-ui, sans-serif; } .tip { color: #555; }"

Block = tuple  # ("p", text) | ("h", text) | ("ol", [steps]) | ("tip", label, text)


# -- article text ---------------------------------------------------------------------------------------------


def _pick(options: tuple[str, ...], seed: int, *key: object, shift: int = 0) -> str:
    return options[(stable_hash(seed, *key) + shift) % len(options)]


def article_blocks(article: Article, facts: dict[str, str], seed: int) -> list[Block]:
    """Compose an article's body from its subject, wording revision and the current fact values.

    The same ``(article.doc_id, article.revision)`` always gives the same wording; a wording edit
    (new revision) changes the introduction and the phrasing of the fact sentences for sure, and the
    rest by chance. A fact change only changes the values.

    Args:
        article: The article version.
        facts: Fact values to state.
        seed: Demo seed.

    Returns:
        Body blocks, rendered by the format writers.
    """
    subject, rev, doc = article.subject, article.revision, article.doc_id
    rng = seeded_rng(seed, "text", doc, rev)
    intro = _pick(TOPIC_INTROS[subject.topic], seed, "intro", doc, shift=rev)
    opening = f"{intro} {subject.summary}"
    if article.qualifier:
        opening = f"{opening} {QUALIFIERS[article.qualifier][1]}"
    details = rng.sample(TOPIC_DETAILS[subject.topic], 2)
    blocks: list[Block] = [("p", opening), ("p", " ".join(details))]
    sentences = [
        _pick(FACTS_BY_KEY[key].sentences, seed, "fact", doc, key, shift=rev).format(v=facts[key])
        for key in subject.facts
        if key in facts
    ]
    if sentences:
        lead = rng.choice(FACT_LEADS)
        blocks.append(("p", " ".join([lead, *sentences]) if lead else " ".join(sentences)))
    blocks.append(("h", rng.choice(STEP_HEADINGS)))
    blocks.append(("ol", list(subject.steps)))
    extras: list[Block] = [
        ("tip", rng.choice(TIP_LABELS), rng.choice(TOPIC_TIPS[subject.topic])),
        ("p", rng.choice(TOPIC_TROUBLESHOOTING[subject.topic])),
    ]
    rng.shuffle(extras)
    blocks.extend(extras)
    fillers = list(FILLERS)
    rng.shuffle(fillers)
    closing: Block = ("p", rng.choice(CLOSINGS))
    target = rng.randint(MIN_WORDS + 20, MAX_WORDS - 100)
    while _word_count([*blocks, closing]) < target and fillers:
        blocks.append(("p", fillers.pop()))
    blocks.append(closing)
    return blocks


def _word_count(blocks: list[Block]) -> int:
    return len(render_plain(blocks).split())


def render_plain(blocks: list[Block], *, numbered: bool = True) -> str:
    """Render body blocks as plain text with blank lines between paragraphs (the normalised form).

    Args:
        blocks: Body blocks from :func:`article_blocks`.
        numbered: Steps as ``1. step`` lines (Markdown, text, JSONL); ``False`` gives what an HTML ``<ol>``
            normalises to: one paragraph per step, no numbers.
    """
    parts = []
    for block in blocks:
        if block[0] == "ol" and not numbered:
            parts.extend(block[1])
        elif block[0] == "ol":
            parts.append("\n".join(f"{i}. {step}" for i, step in enumerate(block[1], 1)))
        elif block[0] == "tip":
            parts.append(f"{block[1]}: {block[2]}")
        else:
            parts.append(block[1])
    return "\n\n".join(parts)


def _render_markdown(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        if block[0] == "h":
            parts.append(f"## {block[1]}")
        elif block[0] == "tip":
            parts.append(f"**{block[1]}:** {block[2]}")
        elif block[0] == "ol":
            parts.append("\n".join(f"{i}. {step}" for i, step in enumerate(block[1], 1)))
        else:
            parts.append(block[1])
    return "\n\n".join(parts)


def _html_text(text: str) -> str:
    # Real CMS exports use named entities; ingestion must decode them.
    return html.escape(text, quote=False).replace("›", "&rsaquo;")


def _render_html_body(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        if block[0] == "h":
            parts.append(f"<h2>{_html_text(block[1])}</h2>")
        elif block[0] == "tip":
            parts.append(f'<p class="tip"><strong>{_html_text(block[1])}:</strong> {_html_text(block[2])}</p>')
        elif block[0] == "ol":
            items = "\n".join(f"  <li>{_html_text(step)}</li>" for step in block[1])
            parts.append(f"<ol>\n{items}\n</ol>")
        else:
            parts.append(f"<p>{_html_text(block[1])}</p>")
    return "\n".join(parts)


def _front_matter(meta: dict[str, str]) -> str:
    lines = ["---", *(f"{key}: {value}" for key, value in meta.items()), "---"]
    return "\n".join(lines) + "\n"


def _meta(doc_id: str, title: str, source: str, url: str, updated_at: str, topic: str) -> dict[str, str]:
    return {"doc_id": doc_id, "title": title, "source": source, "url": url, "updated_at": updated_at, "topic": topic}


def _file_text(fmt: str, meta: dict[str, str], blocks: list[Block], seed: int) -> str:
    """Render a whole file (``md``, ``txt`` or ``html``) from metadata and body blocks."""
    if fmt == "md":
        return _front_matter(meta) + _render_markdown(blocks) + "\n"
    if fmt == "txt":
        return _front_matter(meta) + render_plain(blocks) + "\n"
    head = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(meta['title'])}</title>",
        *(f'<meta name="evertune:{key}" content="{html.escape(value)}">'
          for key, value in meta.items() if key != "title"),
    ]
    noisy = stable_hash(seed, "noise", meta.get("doc_id", "")) % 3 != 0  # two thirds carry script/style
    if noisy:
        head.append(f"<style>{_STYLE}</style>")
        head.append(f"<script>{_SCRIPT % meta.get('doc_id', '')}</script>")
    body = ["</head>", "<body>", "<article>", _render_html_body(blocks), "</article>"]
    if noisy:
        body.append('<script>document.querySelectorAll(".tip").forEach(function (el) { el.hidden = false; });</script>')
    body += ["</body>", "</html>"]
    return "\n".join(head + body) + "\n"


def _jsonl(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


_DOC_FIELDS = ("doc_id", "title", "text", "source", "url", "updated_at", "topic")


def _doc_record(meta: dict[str, str], text: str, drop: str | None = None) -> dict[str, str]:
    """A ``docs.jsonl`` record with the fields in contract order (``drop`` leaves one out)."""
    merged = {**meta, "text": text}
    return {key: merged[key] for key in _DOC_FIELDS if key != drop and key in merged}


def _article_meta(article: Article) -> dict[str, str]:
    return _meta(article.doc_id, article.title, article.source, article.url, article.updated_at, article.topic)


# -- malformed records ----------------------------------------------------------------------------------------


class _DropBuilder:
    """Collects the files, links and JSONL lines of one partition."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.links: dict[str, str] = {}
        self.jsonl_lines: list[tuple[str, dict | None]] = []  # (line, bad-record entry or None)
        self.bad: list[dict] = []

    def add_file(self, path: str, data: bytes) -> None:
        if path in self.files or path in self.links:
            raise RuntimeError(f"demo generator bug: {path} written twice")
        self.files[path] = data


def _bad(record_ref: str, reason: str, kind: str, doc_id: str, detail: str) -> dict:
    return {"record_ref": record_ref, "reason": reason, "kind": kind, "doc_id": doc_id, "detail": detail}


def _add_bad_records(drop: _DropBuilder, plan: DayPlan, seed: int, max_file_bytes: int) -> None:
    """Add the day's malformed records; each is listed in the manifest with its expected quarantine reason."""
    offset = stable_hash(seed, "junk", plan.day)
    stamp = dt.datetime(plan.date.year, plan.date.month, plan.date.day, 7, 30, tzinfo=dt.UTC).isoformat()
    rng = seeded_rng(seed, "bad", plan.day)

    for index, kind in enumerate(plan.bad_kinds):
        subject = JUNK_SUBJECTS[(offset + index) % len(JUNK_SUBJECTS)]
        doc_id = subject.slug
        junk = Article(doc_id, subject, None, 0, "md", 0, stamp, plan.day)
        meta = _article_meta(junk)
        blocks = article_blocks(junk, plan.facts, seed)
        text = render_plain(blocks)
        path = f"docs/{doc_id}.md"

        if kind == "bad_encoding":
            body = _file_text("md", meta, blocks, seed) + "Our café team’s résumé templates – now 20 % faster.\n"
            drop.add_file(path, body.encode("cp1252"))
            drop.bad.append(_bad(path, "bad_encoding", kind, "", "Windows-1252 bytes, not valid UTF-8"))
        elif kind == "binary_content":
            # SQLite-like bytes, all below 0x80 (valid UTF-8), so only the NUL bytes betray the binary file.
            payload = bytes(rng.choice((0, 0, 0, rng.randrange(1, 128))) for _ in range(4096))
            drop.add_file(path, b"SQLite format 3\x00" + payload)
            drop.bad.append(_bad(path, "binary_content", kind, "", "binary database bytes under a .md name"))
        elif kind == "empty_file":
            path = f"docs/{doc_id}.txt"
            drop.add_file(path, b"")
            drop.bad.append(_bad(path, "empty_file", kind, "", "zero-byte file"))
        elif kind == "oversized":
            head = _file_text("md", meta, blocks, seed) + "\n## Changelog archive\n\n"
            line = "- Fixed a rare sync delay and improved search ranking for long notes.\n"
            filler_len = max_file_bytes + 1 - len(head.encode())
            if filler_len < 0:
                raise ConfigError(f"max_file_bytes={max_file_bytes} is too small for the demo drop")
            data = head.encode() + (line * (filler_len // len(line) + 1)).encode()[:filler_len]
            drop.add_file(path, data)
            drop.bad.append(_bad(path, "oversized", kind, "", f"{len(data)} bytes, one over ingest.max_file_bytes"))
        elif kind == "unsafe_path_symlink":
            drop.links[path] = _SYMLINK_TARGET
            drop.bad.append(_bad(path, "unsafe_path", kind, "", f"symbolic link to {_SYMLINK_TARGET}, outside the partition"))
        elif kind == "path_trick_doc_id":
            # A doc_id is not a file name: the contract files it under invalid_doc_id, not unsafe_path.
            record = _doc_record({**meta, "doc_id": "../../etc/passwd"}, text)
            drop.jsonl_lines.append((_jsonl(record), _bad("", "invalid_doc_id", kind, "../../etc/passwd",
                                                          "doc_id with a path traversal")))
        elif kind == "malformed_json":
            full = _jsonl(_doc_record(meta, text)).rstrip("\n")
            drop.jsonl_lines.append((full[: len(full) * 3 // 5] + "\n",
                                     _bad("", "malformed_json", kind, "", "truncated JSON object")))
        elif kind == "missing_field":
            missing = ("url", "updated_at", "title", "source")[plan.day % 4]
            record = _doc_record(meta, text, drop=missing)
            drop.jsonl_lines.append((_jsonl(record), _bad("", "missing_field", kind, doc_id,
                                                          f"required field {missing!r} is absent")))
        elif kind == "missing_field_frontmatter":
            partial = {key: value for key, value in meta.items() if key != "doc_id"}
            drop.add_file(path, (_front_matter(partial) + _render_markdown(blocks) + "\n").encode())
            drop.bad.append(_bad(path, "missing_field", kind, "", "front matter has no doc_id"))
        elif kind == "garbage_text":
            path = f"docs/{doc_id}.txt"
            symbols = "#$%&*+=<>^~|/\\{}[]()!?;"
            words = ["".join(rng.choice(symbols if rng.random() < 0.8 else "qxzjkw") for _ in range(rng.randint(3, 9)))
                     for _ in range(70)]
            drop.add_file(path, (_front_matter(meta) + " ".join(words) + "\n").encode())
            drop.bad.append(_bad(path, "garbage_text", kind, doc_id, "symbol soup: too few letters"))
        elif kind == "text_too_short":
            drop.add_file(path, (_front_matter(meta) + "Coming soon.\n").encode())
            drop.bad.append(_bad(path, "text_too_short", kind, doc_id, "body shorter than validate.min_text_chars"))
        elif kind == "pii_detected":
            post_id = f"community-{doc_id}"
            post_meta = _meta(post_id, "Sync tip from a community member", "community",
                              f"{BASE_URL}/community/{post_id}", stamp, subject.topic)
            path = f"docs/{post_id}.md"
            post = PII_POSTS[stable_hash(seed, "pii", plan.day) % len(PII_POSTS)]
            drop.add_file(path, (_front_matter(post_meta) + post + "\n").encode())
            drop.bad.append(_bad(path, "pii_detected", kind, post_id, "community post with an email address and a phone number"))
        elif kind == "disallowed_source":
            drop.add_file(path, _file_text("md", {**meta, "source": "partner-wiki"}, blocks, seed).encode())
            drop.bad.append(_bad(path, "disallowed_source", kind, doc_id, "source 'partner-wiki' is not allowed"))
        elif kind == "disallowed_url":
            path = f"docs/{doc_id}.html"
            url = f"https://nimbusnotes-help.example.net/articles/{doc_id}"
            drop.add_file(path, _file_text("html", {**meta, "url": url}, blocks, seed).encode())
            drop.bad.append(_bad(path, "disallowed_url", kind, doc_id, f"{url} is outside the allowed prefixes"))
        elif kind == "duplicate_doc_id":
            # Two different bodies with the same doc_id and updated_at: neither can win, both are quarantined.
            other = article_blocks(Article(doc_id, subject, None, 0, "md", 1, stamp, plan.day), plan.facts, seed)
            drop.add_file(path, _file_text("md", meta, blocks, seed).encode())
            drop.bad.append(_bad(path, "duplicate_doc_id", kind, doc_id, "same doc_id and updated_at as docs.jsonl line"))
            drop.jsonl_lines.append((_jsonl(_doc_record(meta, render_plain(other))),
                                     _bad("", "duplicate_doc_id", kind, doc_id, f"same doc_id and updated_at as {path}")))
        else:
            raise RuntimeError(f"demo generator bug: unknown bad-record kind {kind!r}")


# -- golden sets ----------------------------------------------------------------------------------------------


def golden_retrieval(initial_ids: set[str]) -> list[dict]:
    """Golden retrieval queries over day-1 articles that the scenario never deletes (stable across days)."""
    return [
        {"query_id": f"ret-{s.slug}", "query": s.query, "relevant_doc_ids": [s.slug]}
        for s in CORE_SUBJECTS
        if s.query and s.slug in initial_ids and not s.retired
    ]


def golden_qa(initial_ids: set[str], facts: dict[str, str]) -> list[dict]:
    """Golden QA pairs with answers as of ``facts``; disjoint from training QA by id and by question."""
    rows = []
    for fact in FACTS:
        if fact.since_day != 1:
            continue
        home = next((s.slug for s in CORE_SUBJECTS
                     if fact.key in s.facts and s.slug in initial_ids and not s.retired), None)
        if home is None:
            continue
        for index, question in enumerate(fact.golden, 1):
            rows.append({"qa_id": f"golden-{fact.key}-{index}", "question": question,
                         "answer": answer_for(fact.key, facts[fact.key]), "doc_id": home, "fact_key": fact.key})
    return rows


# -- one drop -------------------------------------------------------------------------------------------------


def _build_drop(plan: DayPlan, initial_ids: set[str], *, seed: int, start_date: dt.date, n_articles: int,
                max_file_bytes: int) -> tuple[_DropBuilder, dict]:
    drop = _DropBuilder()
    jsonl_docs: list[str] = []
    formats: Counter[str] = Counter()
    for article in plan.written:
        blocks = article_blocks(article, plan.facts, seed)
        formats[article.fmt] += 1
        if article.fmt == "jsonl":
            jsonl_docs.append(_jsonl(_doc_record(_article_meta(article), render_plain(blocks))))
        else:
            data = _file_text(article.fmt, _article_meta(article), blocks, seed).encode()
            if len(data) > max_file_bytes:
                raise ConfigError(f"max_file_bytes={max_file_bytes} is smaller than article {article.doc_id}")
            drop.add_file(f"docs/{article.doc_id}.{article.fmt}", data)

    _add_bad_records(drop, plan, seed, max_file_bytes)

    # docs.jsonl: valid lines in doc_id order, malformed lines at seeded positions; line numbers are 1-based.
    lines: list[tuple[str, dict | None]] = [(line, None) for line in jsonl_docs]
    rng = seeded_rng(seed, "jsonl", plan.day)
    for item in drop.jsonl_lines:
        lines.insert(rng.randint(0, len(lines)), item)
    for number, (_, entry) in enumerate(lines, 1):
        if entry is not None:
            entry["record_ref"] = f"docs.jsonl:{number}"
            drop.bad.append(entry)
    if lines:
        data = "".join(line for line, _ in lines).encode()
        if len(data) > max_file_bytes:
            raise ConfigError(f"docs.jsonl would be {len(data)} bytes, over max_file_bytes={max_file_bytes}; "
                              "raise ingest.max_file_bytes or lower demo.n_articles")
        drop.add_file("docs.jsonl", data)
    if plan.tombstones:
        drop.add_file("tombstones.jsonl", "".join(_jsonl(t) for t in plan.tombstones).encode())
    drop.add_file("qa.jsonl", "".join(_jsonl(row) for row in plan.qa).encode())
    retrieval = golden_retrieval(initial_ids)
    gold_qa = golden_qa(initial_ids, plan.facts)
    drop.add_file("golden/retrieval.jsonl", "".join(_jsonl(row) for row in retrieval).encode())
    drop.add_file("golden/qa.jsonl", "".join(_jsonl(row) for row in gold_qa).encode())

    drop.bad.sort(key=lambda entry: (entry["record_ref"], entry["kind"]))
    topic_of = {fact.key: fact.topic for fact in FACTS}
    written = plan.written
    manifest = {
        "generator": GENERATOR_VERSION,
        "date": plan.date.isoformat(),
        "day": plan.day,
        "seed": seed,
        "start_date": start_date.isoformat(),
        "n_articles": n_articles,
        "max_file_bytes": max_file_bytes,
        "drift": plan.drift,
        "poisoned": plan.poisoned,
        "added": sorted(a.doc_id for a in plan.added),
        "edited": sorted(a.doc_id for a, _ in plan.edited),
        "edit_reasons": {a.doc_id: why for a, why in plan.edited},
        "deleted": plan.deleted,
        "ignored_tombstones": plan.ignored_tombstones,
        "fact_changes": plan.fact_changes,
        "facts": plan.facts,
        "bad_records": drop.bad,
        "poisoned_qa_ids": plan.poisoned_qa_ids,
        "html_strip_markers": list(HTML_STRIP_MARKERS),
        "counts": {
            "docs_written": len(written),
            "docs_by_format": dict(sorted(formats.items())),
            "topics_written": dict(sorted(Counter(a.topic for a in written).items())),
            "tombstones": len(plan.tombstones),
            "qa": len(plan.qa),
            "qa_topics": dict(sorted(Counter(topic_of[row["fact_key"]] for row in plan.qa).items())),
            "golden_retrieval": len(retrieval),
            "golden_qa": len(gold_qa),
            "bad_records": len(drop.bad),
            "expected_quarantine_fraction": round(len(drop.bad) / max(1, len(drop.bad) + len(written)), 4),
            "live_articles": len(plan.live),
        },
    }
    drop.add_file("_manifest.json", (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
    return drop, manifest


def _local_root(landing_root: str | os.PathLike) -> Path:
    text = os.fspath(landing_root)
    if text.startswith("file://"):
        text = text.removeprefix("file://")
    elif "://" in text:
        raise ConfigError(f"the demo generator writes to a local folder, not {text!r}")
    return Path(text)


def _write_partition(root: Path, date: dt.date, drop: _DropBuilder) -> Path:
    # Build next to the target and swap it in, so readers never see half a partition and a rewrite
    # leaves no stale file behind.
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"ds={date.isoformat()}"
    tmp = root / f".ds={date.isoformat()}.tmp-{os.getpid()}"
    old = root / f".ds={date.isoformat()}.old-{os.getpid()}"
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    for rel, data in sorted(drop.files.items()):
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for rel, target in sorted(drop.links.items()):
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)
    if final.exists() or final.is_symlink():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def _check_size(max_file_bytes: int) -> int:
    if int(max_file_bytes) < 16_384:
        raise ConfigError(f"max_file_bytes must be at least 16384 for the demo drops, got {max_file_bytes}")
    return int(max_file_bytes)


def _replay(scenario: Scenario, last_day: int):
    initial: set[str] = set()
    for plan in scenario.replay(last_day):
        if plan.day == 1:
            initial = set(plan.live)
        yield plan, initial


# -- public API -----------------------------------------------------------------------------------------------


def generate_drop(landing_root: str | os.PathLike, date: str | dt.date, *, seed: int, start_date: str | dt.date,
                  n_articles: int, max_file_bytes: int) -> dict:
    """Write the landing partition of one day.

    Args:
        landing_root: Local landing folder (``file://`` URLs accepted); ``ds=YYYY-MM-DD/`` is created in it.
        date: The day to write (not before ``start_date``).
        seed: Demo seed.
        start_date: Day 1 of the scenario.
        n_articles: Number of articles on day 1.
        max_file_bytes: ``ingest.max_file_bytes``; the oversized record is exactly one byte larger.

    Returns:
        The manifest, as written to ``_manifest.json``.

    Raises:
        ConfigError: Bad date, size or article count, or a non-local landing root.
    """
    scenario = Scenario(seed=seed, start_date=start_date, n_articles=n_articles)
    max_file_bytes = _check_size(max_file_bytes)
    last = (to_date(date) - scenario.start).days + 1
    if last < 1:
        raise ConfigError(f"date {date} is before the demo start date {scenario.start}")
    for plan, initial in _replay(scenario, last):
        if plan.day == last:
            drop, manifest = _build_drop(plan, initial, seed=scenario.seed, start_date=scenario.start,
                                         n_articles=scenario.n_articles, max_file_bytes=max_file_bytes)
            _write_partition(_local_root(landing_root), plan.date, drop)
            return manifest
    raise AssertionError("unreachable")


def generate_range(landing_root: str | os.PathLike, *, start_date: str | dt.date, days: int, seed: int,
                   n_articles: int, max_file_bytes: int) -> list[dict]:
    """Write the partitions of days 1..``days`` (one replay; identical to calling :func:`generate_drop` per day).

    Args:
        landing_root: Local landing folder.
        start_date: Day 1 of the scenario.
        days: Number of days to write.
        seed: Demo seed.
        n_articles: Number of articles on day 1.
        max_file_bytes: ``ingest.max_file_bytes``.

    Returns:
        The manifests, one per day, in date order.

    Raises:
        ConfigError: Invalid arguments.
    """
    if days < 1:
        raise ConfigError(f"days must be at least 1, got {days}")
    scenario = Scenario(seed=seed, start_date=start_date, n_articles=n_articles)
    max_file_bytes = _check_size(max_file_bytes)
    root = _local_root(landing_root)
    manifests = []
    for plan, initial in _replay(scenario, days):
        drop, manifest = _build_drop(plan, initial, seed=scenario.seed, start_date=scenario.start,
                                     n_articles=scenario.n_articles, max_file_bytes=max_file_bytes)
        _write_partition(root, plan.date, drop)
        manifests.append(manifest)
    return manifests


def articles_as_of(date: str | dt.date, *, seed: int, start_date: str | dt.date, n_articles: int) -> dict[str, dict]:
    """Return the live articles at the end of ``date``: the ground truth a correct ingestion must reach.

    Returns:
        ``doc_id`` -> ``{"doc_id", "title", "text", "source", "url", "updated_at", "topic", "format",
        "facts", "revision"}``; ``text`` is the normalised plain text, ``updated_at`` as written (with offset).
    """
    scenario = Scenario(seed=seed, start_date=start_date, n_articles=n_articles)
    plan = scenario.plan_for(date)
    return {
        doc_id: {
            **_article_meta(article),
            "text": render_plain(article_blocks(article, plan.facts, scenario.seed), numbered=article.fmt != "html"),
            "format": article.fmt,
            "facts": list(article.facts),
            "revision": article.revision,
        }
        for doc_id, article in sorted(plan.live.items())
    }


def facts_as_of(date: str | dt.date, *, seed: int, start_date: str | dt.date,
                n_articles: int | None = None) -> dict[str, str]:
    """Return ``fact_key`` -> value at the end of ``date`` (facts of features not launched yet are absent).

    ``seed`` and ``n_articles`` do not change the facts; they are accepted so both ground-truth helpers
    take the same arguments.
    """
    scenario = Scenario(seed=seed, start_date=start_date, n_articles=n_articles or 5)
    return scenario.plan_for(date).facts
