"""Malformed records of the demo drops, one writer per kind, each listed with its expected quarantine reason.

:func:`add_bad_records` adds the day's kinds (``DayPlan.bad_kinds``) to a :class:`DropBuilder`. Every record
is written from a hidden junk subject (never part of the ground truth); :data:`WRITERS` maps each kind to
the function that writes it and appends its manifest entry (see ``_manifest.json`` in
:mod:`evertune.demo.generator`).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass

from evertune.demo.articles import Article, DayPlan, seeded_rng, stable_hash
from evertune.demo.content import BASE_URL, JUNK_SUBJECTS, PII_POSTS, Subject
from evertune.demo.render import (
    Block,
    article_blocks,
    article_meta,
    doc_record,
    file_meta,
    file_text,
    front_matter,
    jsonl_line,
    render_markdown,
    render_plain,
)
from evertune.errors import ConfigError

SYMLINK_TARGET = "/etc/passwd"


class DropBuilder:
    """Collects the files, links and JSONL lines of one partition."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.links: dict[str, str] = {}
        self.jsonl_lines: list[tuple[str, dict | None]] = []  # (line, bad-record entry or None)
        self.bad: list[dict] = []

    def add_file(self, path: str, data: bytes) -> None:
        """Add one file at ``path`` (relative to the partition).

        Raises:
            RuntimeError: The path was already written (a generator bug).
        """
        if path in self.files or path in self.links:
            raise RuntimeError(f"demo generator bug: {path} written twice")
        self.files[path] = data


def bad_entry(record_ref: str, reason: str, kind: str, doc_id: str, detail: str) -> dict:
    """Return one ``bad_records`` manifest entry."""
    return {"record_ref": record_ref, "reason": reason, "kind": kind, "doc_id": doc_id, "detail": detail}


@dataclass(frozen=True)
class JunkRecord:
    """What every writer starts from: one junk article version and its rendered parts.

    Attributes:
        kind: The malformed-record kind being written.
        subject: The junk subject; ``subject.slug`` is the doc_id.
        meta: File metadata of the junk article.
        blocks: Its body blocks.
        path: Default file path, ``docs/<doc_id>.md``.
        stamp: ``updated_at`` of the day's malformed records (07:30 UTC).
        day: Scenario day.
        facts: Fact values of the day.
        seed: Demo seed.
        max_file_bytes: ``ingest.max_file_bytes``.
        rng: The day's random source, shared by the writers in kind order.
    """

    kind: str
    subject: Subject
    meta: dict[str, str]
    blocks: list[Block]
    path: str
    stamp: str
    day: int
    facts: dict[str, str]
    seed: int
    max_file_bytes: int
    rng: random.Random

    @property
    def doc_id(self) -> str:
        """The junk article's doc_id."""
        return self.subject.slug

    @property
    def text(self) -> str:
        """The junk article's plain text."""
        return render_plain(self.blocks)

    def markdown(self, **overrides: str) -> bytes:
        """The junk article as a whole ``.md`` file, with ``overrides`` applied to its metadata."""
        return file_text("md", {**self.meta, **overrides}, self.blocks, self.seed).encode()

    def bad(self, record_ref: str, reason: str, doc_id: str, detail: str) -> dict:
        """A manifest entry for this record's kind."""
        return bad_entry(record_ref, reason, self.kind, doc_id, detail)


def _bad_encoding(drop: DropBuilder, junk: JunkRecord) -> None:
    body = file_text("md", junk.meta, junk.blocks, junk.seed) + "Our café team’s résumé templates – now 20 % faster.\n"
    drop.add_file(junk.path, body.encode("cp1252"))
    drop.bad.append(junk.bad(junk.path, "bad_encoding", "", "Windows-1252 bytes, not valid UTF-8"))


def _binary_content(drop: DropBuilder, junk: JunkRecord) -> None:
    # SQLite-like bytes, all below 0x80 (valid UTF-8), so only the NUL bytes betray the binary file.
    rng = junk.rng
    payload = bytes(rng.choice((0, 0, 0, rng.randrange(1, 128))) for _ in range(4096))
    drop.add_file(junk.path, b"SQLite format 3\x00" + payload)
    drop.bad.append(junk.bad(junk.path, "binary_content", "", "binary database bytes under a .md name"))


def _empty_file(drop: DropBuilder, junk: JunkRecord) -> None:
    path = f"docs/{junk.doc_id}.txt"
    drop.add_file(path, b"")
    drop.bad.append(junk.bad(path, "empty_file", "", "zero-byte file"))


def oversized_bytes(head: str, max_file_bytes: int) -> bytes:
    """Return ``head`` padded with changelog lines to exactly ``max_file_bytes + 1`` bytes.

    Raises:
        ConfigError: ``head`` alone is already larger than that.
    """
    line = "- Fixed a rare sync delay and improved search ranking for long notes.\n"
    filler_len = max_file_bytes + 1 - len(head.encode())
    if filler_len < 0:
        raise ConfigError(f"max_file_bytes={max_file_bytes} is too small for the demo drop")
    return head.encode() + (line * (filler_len // len(line) + 1)).encode()[:filler_len]


def _oversized(drop: DropBuilder, junk: JunkRecord) -> None:
    head = file_text("md", junk.meta, junk.blocks, junk.seed) + "\n## Changelog archive\n\n"
    data = oversized_bytes(head, junk.max_file_bytes)
    drop.add_file(junk.path, data)
    drop.bad.append(junk.bad(junk.path, "oversized", "", f"{len(data)} bytes, one over ingest.max_file_bytes"))


def _unsafe_path_symlink(drop: DropBuilder, junk: JunkRecord) -> None:
    drop.links[junk.path] = SYMLINK_TARGET
    drop.bad.append(junk.bad(junk.path, "unsafe_path", "", f"symbolic link to {SYMLINK_TARGET}, outside the partition"))


def _path_trick_doc_id(drop: DropBuilder, junk: JunkRecord) -> None:
    # A doc_id is not a file name: the contract files it under invalid_doc_id, not unsafe_path.
    record = doc_record({**junk.meta, "doc_id": "../../etc/passwd"}, junk.text)
    drop.jsonl_lines.append((jsonl_line(record), junk.bad("", "invalid_doc_id", "../../etc/passwd",
                                                          "doc_id with a path traversal")))


def _malformed_json(drop: DropBuilder, junk: JunkRecord) -> None:
    full = jsonl_line(doc_record(junk.meta, junk.text)).rstrip("\n")
    entry = junk.bad("", "malformed_json", "", "truncated JSON object")
    drop.jsonl_lines.append((full[: len(full) * 3 // 5] + "\n", entry))


def _missing_field(drop: DropBuilder, junk: JunkRecord) -> None:
    missing = ("url", "updated_at", "title", "source")[junk.day % 4]
    record = doc_record(junk.meta, junk.text, drop=missing)
    drop.jsonl_lines.append((jsonl_line(record), junk.bad("", "missing_field", junk.doc_id,
                                                          f"required field {missing!r} is absent")))


def _missing_field_frontmatter(drop: DropBuilder, junk: JunkRecord) -> None:
    partial = {key: value for key, value in junk.meta.items() if key != "doc_id"}
    drop.add_file(junk.path, (front_matter(partial) + render_markdown(junk.blocks) + "\n").encode())
    drop.bad.append(junk.bad(junk.path, "missing_field", "", "front matter has no doc_id"))


def _garbage_text(drop: DropBuilder, junk: JunkRecord) -> None:
    path = f"docs/{junk.doc_id}.txt"
    rng = junk.rng
    symbols = "#$%&*+=<>^~|/\\{}[]()!?;"
    words = ["".join(rng.choice(symbols if rng.random() < 0.8 else "qxzjkw") for _ in range(rng.randint(3, 9)))
             for _ in range(70)]
    drop.add_file(path, (front_matter(junk.meta) + " ".join(words) + "\n").encode())
    drop.bad.append(junk.bad(path, "garbage_text", junk.doc_id, "symbol soup: too few letters"))


def _text_too_short(drop: DropBuilder, junk: JunkRecord) -> None:
    drop.add_file(junk.path, (front_matter(junk.meta) + "Coming soon.\n").encode())
    drop.bad.append(junk.bad(junk.path, "text_too_short", junk.doc_id, "body shorter than validate.min_text_chars"))


def _pii_detected(drop: DropBuilder, junk: JunkRecord) -> None:
    post_id = f"community-{junk.doc_id}"
    post_meta = file_meta(post_id, "Sync tip from a community member", "community",
                          f"{BASE_URL}/community/{post_id}", junk.stamp, junk.subject.topic)
    path = f"docs/{post_id}.md"
    post = PII_POSTS[stable_hash(junk.seed, "pii", junk.day) % len(PII_POSTS)]
    drop.add_file(path, (front_matter(post_meta) + post + "\n").encode())
    drop.bad.append(junk.bad(path, "pii_detected", post_id, "community post with an email address and a phone number"))


def _disallowed_source(drop: DropBuilder, junk: JunkRecord) -> None:
    drop.add_file(junk.path, junk.markdown(source="partner-wiki"))
    drop.bad.append(junk.bad(junk.path, "disallowed_source", junk.doc_id, "source 'partner-wiki' is not allowed"))


def _disallowed_url(drop: DropBuilder, junk: JunkRecord) -> None:
    path = f"docs/{junk.doc_id}.html"
    url = f"https://nimbusnotes-help.example.net/articles/{junk.doc_id}"
    drop.add_file(path, file_text("html", {**junk.meta, "url": url}, junk.blocks, junk.seed).encode())
    drop.bad.append(junk.bad(path, "disallowed_url", junk.doc_id, f"{url} is outside the allowed prefixes"))


def _duplicate_doc_id(drop: DropBuilder, junk: JunkRecord) -> None:
    # Two different bodies with the same doc_id and updated_at: neither can win, both are quarantined.
    other = article_blocks(Article(junk.doc_id, junk.subject, None, 0, "md", 1, junk.stamp, junk.day),
                           junk.facts, junk.seed)
    drop.add_file(junk.path, junk.markdown())
    drop.bad.append(junk.bad(junk.path, "duplicate_doc_id", junk.doc_id,
                             "same doc_id and updated_at as docs.jsonl line"))
    entry = junk.bad("", "duplicate_doc_id", junk.doc_id, f"same doc_id and updated_at as {junk.path}")
    drop.jsonl_lines.append((jsonl_line(doc_record(junk.meta, render_plain(other))), entry))


#: Malformed-record kind -> its writer.
WRITERS: dict[str, Callable[[DropBuilder, JunkRecord], None]] = {
    "bad_encoding": _bad_encoding,
    "binary_content": _binary_content,
    "empty_file": _empty_file,
    "oversized": _oversized,
    "unsafe_path_symlink": _unsafe_path_symlink,
    "path_trick_doc_id": _path_trick_doc_id,
    "malformed_json": _malformed_json,
    "missing_field": _missing_field,
    "missing_field_frontmatter": _missing_field_frontmatter,
    "garbage_text": _garbage_text,
    "text_too_short": _text_too_short,
    "pii_detected": _pii_detected,
    "disallowed_source": _disallowed_source,
    "disallowed_url": _disallowed_url,
    "duplicate_doc_id": _duplicate_doc_id,
}


def add_bad_records(drop: DropBuilder, plan: DayPlan, seed: int, max_file_bytes: int) -> None:
    """Add the day's malformed records; each is listed in the manifest with its expected quarantine reason.

    Args:
        drop: The partition being built.
        plan: The day (its ``bad_kinds``, ``facts`` and date).
        seed: Demo seed.
        max_file_bytes: ``ingest.max_file_bytes`` (the oversized record is one byte over).

    Raises:
        ConfigError: ``max_file_bytes`` is too small for the oversized record.
        RuntimeError: An unknown kind (a generator bug).
    """
    offset = stable_hash(seed, "junk", plan.day)
    stamp = dt.datetime(plan.date.year, plan.date.month, plan.date.day, 7, 30, tzinfo=dt.UTC).isoformat()
    rng = seeded_rng(seed, "bad", plan.day)
    for index, kind in enumerate(plan.bad_kinds):
        subject = JUNK_SUBJECTS[(offset + index) % len(JUNK_SUBJECTS)]
        article = Article(subject.slug, subject, None, 0, "md", 0, stamp, plan.day)
        junk = JunkRecord(kind=kind, subject=subject, meta=article_meta(article),
                          blocks=article_blocks(article, plan.facts, seed), path=f"docs/{subject.slug}.md",
                          stamp=stamp, day=plan.day, facts=plan.facts, seed=seed, max_file_bytes=max_file_bytes,
                          rng=rng)
        writer = WRITERS.get(kind)
        if writer is None:
            raise RuntimeError(f"demo generator bug: unknown bad-record kind {kind!r}")
        writer(drop, junk)
