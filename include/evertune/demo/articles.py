"""Records of the demo scenario: article versions, day plans, the article pool, and seeded choices.

Every random choice of the demo is drawn from :func:`seeded_rng` or :func:`stable_hash`, which depend on their
arguments only (never on the clock or on Python's per-process ``hash``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from evertune.demo.content import BASE_URL, FACTS_BY_KEY, QUALIFIERS, SOURCE_PATHS, TOPIC_QUALIFIERS, Subject
from evertune.errors import ConfigError

_FORMAT_PATTERN = ("md",) * 8 + ("html",) * 5 + ("txt",) * 3 + ("jsonl",) * 4


def stable_hash(*parts: object) -> int:
    """Return a 64-bit integer from the parts, identical on every platform and run (unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def seeded_rng(*parts: object) -> random.Random:
    """Return a random generator seeded from the parts only."""
    return random.Random(stable_hash(*parts))


@dataclass(frozen=True)
class Article:
    """One version of a help-center article.

    Attributes:
        doc_id: Stable id.
        subject: What it is about.
        qualifier: Variant qualifier key (platform or audience), or ``None`` for the base article.
        part: 0, or the part number of a repeated variant (only when the variant pool is exhausted).
        fmt: File format in the landing zone: ``md``, ``html``, ``txt`` or ``jsonl``.
        revision: Wording revision; a wording edit increments it.
        updated_at: ISO 8601 timestamp with offset of this version.
        created_day: Scenario day it was added.
    """

    doc_id: str
    subject: Subject
    qualifier: str | None
    part: int
    fmt: str
    revision: int
    updated_at: str
    created_day: int

    @property
    def title(self) -> str:
        """Article title, with the variant suffix."""
        title = self.subject.title
        if self.qualifier:
            title = f"{title} {QUALIFIERS[self.qualifier][0]}"
        if self.part:
            title = f"{title} (part {self.part})"
        return title

    @property
    def topic(self) -> str:
        """Subject label."""
        return self.subject.topic

    @property
    def source(self) -> str:
        """Source system of the article."""
        return self.subject.source

    @property
    def url(self) -> str:
        """Public URL of the article."""
        return f"{BASE_URL}/{SOURCE_PATHS[self.source]}/{self.doc_id}"

    @property
    def facts(self) -> tuple[str, ...]:
        """Fact keys stated by the article."""
        return self.subject.facts

    @property
    def deletable(self) -> bool:
        """Whether the scenario may delete it (variants and retired articles only)."""
        return self.qualifier is not None or self.subject.retired


@dataclass
class DayPlan:
    """Everything that happens on one scenario day (before rendering)."""

    day: int
    date: dt.date
    facts: dict[str, str]
    live: dict[str, Article]
    added: list[Article] = field(default_factory=list)
    edited: list[tuple[Article, str]] = field(default_factory=list)
    tombstones: list[dict] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    ignored_tombstones: list[str] = field(default_factory=list)
    fact_changes: list[dict] = field(default_factory=list)
    qa: list[dict] = field(default_factory=list)
    poisoned_qa_ids: list[str] = field(default_factory=list)
    bad_kinds: tuple[str, ...] = ()
    drift: bool = False
    poisoned: bool = False
    post_tuning: bool = False
    freshness: list[dict] = field(default_factory=list)

    @property
    def written(self) -> list[Article]:
        """Articles present in the day's drop (new or edited), sorted by doc_id."""
        return sorted([*self.added, *(article for article, _ in self.edited)], key=lambda a: a.doc_id)


class ArticlePool:
    """Endless, seed-dependent sequence of article slots: base subjects first, then variants, then parts."""

    def __init__(self, subjects: tuple[Subject, ...], seed: int, name: str) -> None:
        self.subjects = subjects
        variants = [
            (subject, qualifier)
            for subject in subjects
            if subject.source == "help-center" and not subject.retired
            for qualifier in TOPIC_QUALIFIERS[subject.topic]
        ]
        seeded_rng(seed, "variants", name).shuffle(variants)
        self.variants = variants
        formats = list(_FORMAT_PATTERN)
        seeded_rng(seed, "formats", name).shuffle(formats)
        self.formats = formats
        self.next = 0

    def take(self, day: int, updated_at: Callable[[str], str]) -> Article:
        """Return the next article slot as a new article created on ``day``."""
        index = self.next
        self.next += 1
        fmt = self.formats[index % len(self.formats)]
        if index < len(self.subjects):
            subject, qualifier, part = self.subjects[index], None, 0
        else:
            rest = index - len(self.subjects)
            subject, qualifier = self.variants[rest % len(self.variants)]
            part = 0 if rest < len(self.variants) else rest // len(self.variants) + 1
        doc_id = subject.slug
        if qualifier:
            doc_id = f"{doc_id}-{qualifier}"
        if part:
            doc_id = f"{doc_id}-part-{part}"
        return Article(doc_id, subject, qualifier, part, fmt, 0, updated_at(doc_id), day)


def to_date(value: str | dt.date) -> dt.date:
    """Parse an ISO date (``YYYY-MM-DD``) or pass a date through.

    Raises:
        ConfigError: The value is not a date.
    """
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f"not an ISO date (YYYY-MM-DD): {value!r}") from None


def day_number(date: str | dt.date, start_date: str | dt.date) -> int:
    """Return the scenario day of ``date`` (1 for the start date).

    Raises:
        ConfigError: The date is before the start date.
    """
    number = (to_date(date) - to_date(start_date)).days + 1
    if number < 1:
        raise ConfigError(f"date {date} is before the demo start date {start_date}")
    return number


def answer_for(fact_key: str, value: str) -> str:
    """Return the canonical answer sentence stating ``value`` for the fact."""
    return FACTS_BY_KEY[fact_key].answer.format(v=value)
