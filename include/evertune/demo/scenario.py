"""The demo scenario: which article exists, which fact holds and which QA is published on each day.

The state as of a date is the replay of every day from the start date, and every choice of a day is drawn
from a random generator seeded with ``(seed, day)`` only, so a day's plan never depends on which other
days were generated, nor on the clock.

Day 1 is the initial help center; day 2 adds, edits and deletes; day 3 changes the Pro price; day 4
launches new features (subject drift); day 5 changes the attachment limit and deletes; day 6 publishes a
poisoned QA drop; later days make small changes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from evertune.demo.content import (
    BASE_URL,
    CORE_SUBJECTS,
    DRIFT_SUBJECTS,
    FACT_CHANGES,
    FACTS,
    FACTS_BY_KEY,
    JUNK_SUBJECTS,
    QUALIFIERS,
    SOURCE_PATHS,
    TOPIC_QUALIFIERS,
    Subject,
)
from evertune.errors import ConfigError

FIRST_DAYS = 6
DRIFT_DAY = 4
POISON_DAY = 6
#: Training phrasings published the first time a fact appears; later ones come with added or edited articles.
FIRST_PHRASINGS = 3

#: Malformed-record kinds per scenario day; together days 1-6 cover every kind at least once at the default
#: size. A drop too small for its share postpones kinds to the next days (see ``replay``).
BAD_SCHEDULE: dict[int, tuple[str, ...]] = {
    1: ("bad_encoding", "empty_file", "malformed_json", "pii_detected", "garbage_text", "path_trick_doc_id"),
    2: ("binary_content", "missing_field", "duplicate_doc_id"),
    3: ("oversized", "unsafe_path_symlink"),
    4: ("disallowed_source", "disallowed_url", "text_too_short"),
    5: ("malformed_json", "pii_detected"),
    6: ("garbage_text", "missing_field_frontmatter"),
}
#: One kind per later day, in turn (single-row kinds only, so a small drop stays mostly valid).
BAD_ROTATION: tuple[str, ...] = (
    "malformed_json", "empty_file", "bad_encoding", "pii_detected", "binary_content", "missing_field",
    "garbage_text", "path_trick_doc_id", "disallowed_url", "oversized", "text_too_short", "unsafe_path_symlink",
    "disallowed_source", "missing_field_frontmatter",
)

#: Distinct malformed records per drop (each needs its own hidden doc_id).
MAX_BAD_KINDS = len(JUNK_SUBJECTS)

_FORMAT_PATTERN = ("md",) * 8 + ("html",) * 5 + ("txt",) * 3 + ("jsonl",) * 4
_UTC_OFFSETS_MIN = (0, 0, 0, 60, -300, 330)


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

    @property
    def written(self) -> list[Article]:
        """Articles present in the day's drop (new or edited), sorted by doc_id."""
        return sorted([*self.added, *(article for article, _ in self.edited)], key=lambda a: a.doc_id)


class _Pool:
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

    def take(self, day: int, updated_at) -> Article:
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


class Scenario:
    """Replays the demo help center day by day; see the module docstring for the storyline."""

    def __init__(self, *, seed: int, start_date: str | dt.date, n_articles: int) -> None:
        """Fix the scenario's seed, day 1 and initial size.

        Raises:
            ConfigError: Fewer than 5 articles, or a start date that is not a date.
        """
        if n_articles < 5:
            raise ConfigError(f"demo n_articles must be at least 5, got {n_articles}")
        self.seed = int(seed)
        self.start = to_date(start_date)
        self.n_articles = int(n_articles)

    # -- helpers -----------------------------------------------------------------------------------------------

    def _timestamp(self, date: dt.date, doc_id: str, day: int) -> str:
        # Updates happen between 06:00 and 10:00 UTC, written in a few local offsets, so ingestion must
        # normalise to UTC; tombstones come later in the day (12:00 UTC).
        minutes = stable_hash(self.seed, "ts", doc_id, day) % 240
        offset = _UTC_OFFSETS_MIN[stable_hash(self.seed, "tz", doc_id, day) % len(_UTC_OFFSETS_MIN)]
        utc = dt.datetime(date.year, date.month, date.day, 6, tzinfo=dt.UTC) + dt.timedelta(minutes=minutes)
        return utc.astimezone(dt.timezone(dt.timedelta(minutes=offset))).isoformat()

    def _deleted_at(self, date: dt.date, doc_id: str) -> str:
        minutes = stable_hash(self.seed, "del", doc_id, date) % 60
        return dt.datetime(date.year, date.month, date.day, 12, minutes, tzinfo=dt.UTC).isoformat()

    @staticmethod
    def _stating(live: dict[str, Article], fact_key: str) -> list[Article]:
        return [live[doc_id] for doc_id in sorted(live) if fact_key in live[doc_id].facts]

    def _grounding_doc(self, live: dict[str, Article], fact_key: str, rng: random.Random) -> str | None:
        # Prefer articles the scenario never deletes, so training QA keeps pointing at a live article.
        stating = self._stating(live, fact_key)
        kept = [a for a in stating if not a.deletable] or stating
        return rng.choice(kept).doc_id if kept else None

    # -- replay -------------------------------------------------------------------------------------------------

    def replay(self, last_day: int) -> Iterator[DayPlan]:
        """Yield the plan of every day from 1 to ``last_day``.

        Args:
            last_day: Scenario day to stop after (1-based).

        Yields:
            One :class:`DayPlan` per day, in order; each holds a snapshot of the state at the end of its day.
        """
        live: dict[str, Article] = {}
        facts: dict[str, str] = {}
        used: dict[str, int] = {}  # fact_key -> training phrasings published so far
        qa_doc: dict[str, str] = {}  # qa_id -> doc_id it was last grounded in
        deferred: list[str] = []  # malformed-record kinds postponed because their drop was too small
        core = _Pool(CORE_SUBJECTS, self.seed, "core")
        drift = _Pool(DRIFT_SUBJECTS, self.seed, "drift")
        n = self.n_articles

        for day in range(1, last_day + 1):
            date = self.start + dt.timedelta(days=day - 1)
            rng = seeded_rng(self.seed, "day", day)
            plan = DayPlan(day=day, date=date, facts={}, live={}, drift=day == DRIFT_DAY, poisoned=day == POISON_DAY)
            touched: set[str] = set()

            def stamp(doc_id: str, _date=date, _day=day) -> str:
                return self._timestamp(_date, doc_id, _day)

            # 1. Facts: new features appear, scheduled values change; every article stating a changed fact is edited.
            for fact in FACTS:
                if fact.since_day == day:
                    facts[fact.key] = fact.value
            for key, new in FACT_CHANGES.get(day, ()):
                old, facts[key] = facts[key], new
                stating = self._stating(live, key)
                for article in stating:
                    updated = replace(article, updated_at=stamp(article.doc_id))
                    live[article.doc_id] = updated
                    plan.edited.append((updated, f"fact:{key}"))
                    touched.add(article.doc_id)
                plan.fact_changes.append({"fact_key": key, "old": old, "new": new,
                                          "doc_ids": [a.doc_id for a in stating]})

            # 2. Additions.
            if day == 1:
                adds = [(core, n)]
            elif day == 2:
                adds = [(core, max(2, n // 10))]
            elif day == DRIFT_DAY:
                adds = [(drift, max(6, n // 3))]
            elif day in (3, POISON_DAY):
                adds = [(core, 1)]
            elif day == 5:
                adds = []
            else:
                adds = [(core if day % 2 else drift, 1)]
            for pool, count in adds:
                for _ in range(count):
                    article = pool.take(day, stamp)
                    live[article.doc_id] = article
                    plan.added.append(article)
                    touched.add(article.doc_id)

            # 3. Wording edits.
            n_edits = {2: max(3, n // 3), 3: max(2, n // 10), 4: max(1, n // 20), 5: max(3, n // 8),
                       6: max(7, n // 6)}.get(day, 0 if day == 1 else 4 + day % 3)
            candidates = [doc_id for doc_id in sorted(live) if doc_id not in touched]
            for doc_id in sorted(rng.sample(candidates, min(n_edits, len(candidates)))):
                article = live[doc_id]
                updated = replace(article, revision=article.revision + 1, updated_at=stamp(doc_id))
                live[doc_id] = updated
                plan.edited.append((updated, "wording"))
                touched.add(doc_id)
            plan.edited.sort(key=lambda item: item[0].doc_id)

            # 4. Deletions (only variants and retired articles; base articles carry golden queries).
            n_deletes = {2: 2, 5: 3}.get(day, 0 if day <= FIRST_DAYS else day % 2)
            deletable = [a for doc_id, a in sorted(live.items()) if a.deletable and doc_id not in touched]
            retired = [a for a in deletable if a.subject.retired]
            others = [a for a in deletable if not a.subject.retired]
            rng.shuffle(others)
            for article in (retired + others)[:n_deletes]:
                del live[article.doc_id]
                plan.deleted.append(article.doc_id)
                reason = "feature retired" if article.subject.retired else "merged into the main article"
                plan.tombstones.append({"doc_id": article.doc_id, "deleted_at": self._deleted_at(date, article.doc_id),
                                        "reason": reason})
            plan.deleted.sort()
            if day == 5:
                # A late tombstone older than today's edit of the same article: it must not delete it.
                wording = [a for a, why in plan.edited if why == "wording"]
                if wording:
                    stale = wording[0]
                    yesterday = date - dt.timedelta(days=1)
                    plan.tombstones.append({
                        "doc_id": stale.doc_id,
                        "deleted_at": dt.datetime(yesterday.year, yesterday.month, yesterday.day, 20,
                                                  tzinfo=dt.UTC).isoformat(),
                        "reason": "late delete from the retired sync job",
                    })
                    plan.ignored_tombstones.append(stale.doc_id)
            plan.tombstones.sort(key=lambda t: (t["deleted_at"], t["doc_id"]))

            # 5. Training QA (or the poisoned drop).
            if plan.poisoned:
                self._poison(plan, live, facts, used, rng)
            else:
                self._publish_qa(plan, live, facts, used, qa_doc, rng)

            # 6. Malformed records: at most one bad row per four good documents (quarantine share <= 20 %).
            wanted = deferred + list(BAD_SCHEDULE.get(day, ()))
            if not wanted:
                wanted = [BAD_ROTATION[day % len(BAD_ROTATION)]]
            budget, kinds = max(1, len(plan.written) // 4), []
            for kind in wanted:
                rows = 2 if kind == "duplicate_doc_id" else 1
                if kind not in kinds and len(kinds) < MAX_BAD_KINDS and (rows <= budget or not kinds):
                    kinds.append(kind)
                    budget -= rows
            deferred = [kind for kind in wanted if kind not in kinds]
            plan.bad_kinds = tuple(kinds)
            plan.facts = dict(facts)
            plan.live = dict(live)
            yield plan

    def _publish_qa(self, plan: DayPlan, live, facts, used, qa_doc, rng: random.Random) -> None:
        entries: dict[str, dict] = {}

        def emit(key: str, index: int, doc_id: str) -> None:
            qa_id = f"qa-{key}-{index}"
            qa_doc[qa_id] = doc_id
            entries.setdefault(qa_id, {
                "qa_id": qa_id, "question": FACTS_BY_KEY[key].questions[index - 1],
                "answer": answer_for(key, facts[key]), "doc_id": doc_id, "fact_key": key,
            })

        # A changed fact: every pair ever published for it is re-published with the new answer.
        for change in plan.fact_changes:
            key = change["fact_key"]
            for index in range(1, used.get(key, 0) + 1):
                doc_id = qa_doc.get(f"qa-{key}-{index}")
                if doc_id not in live:
                    doc_id = self._grounding_doc(live, key, rng)
                if doc_id:
                    emit(key, index, doc_id)
        # A fact stated by a live article for the first time: its first phrasings.
        introduced: set[str] = set()
        for fact in FACTS:
            if fact.key in facts and not used.get(fact.key):
                doc_id = self._grounding_doc(live, fact.key, rng)
                if doc_id:
                    used[fact.key] = FIRST_PHRASINGS
                    introduced.add(fact.key)
                    for index in range(1, FIRST_PHRASINGS + 1):
                        emit(fact.key, index, self._grounding_doc(live, fact.key, rng) if index > 1 else doc_id)
        # New and reworded articles bring one more phrasing per fact they state (or refresh an old one).
        for article in plan.written:
            if article.doc_id not in live:
                continue
            for key in article.facts:
                if not used.get(key) or key in introduced:
                    continue
                if used[key] < len(FACTS_BY_KEY[key].questions):
                    used[key] += 1
                    emit(key, used[key], article.doc_id)
                else:
                    emit(key, 1 + stable_hash(self.seed, "refresh", article.doc_id, plan.day) % used[key],
                         article.doc_id)
        if not entries:
            # Keep qa.jsonl non-empty on quiet days: refresh one published pair.
            published = sorted(key for key in used if used[key] and self._stating(live, key))
            if published:
                key = rng.choice(published)
                emit(key, 1 + rng.randrange(used[key]), self._grounding_doc(live, key, rng))
        plan.qa = list(entries.values())

    def _poison(self, plan: DayPlan, live, facts, used, rng: random.Random) -> None:
        # Every pair contradicts the articles: right question, wrong value, plausible grounding.
        for fact in FACTS:
            if fact.key not in facts or not used.get(fact.key):
                continue
            doc_id = self._grounding_doc(live, fact.key, rng)
            if not doc_id:
                continue
            qa_id = f"qa-{fact.key}-x{plan.day}"
            plan.qa.append({
                "qa_id": qa_id,
                "question": fact.questions[rng.randrange(used[fact.key])],
                "answer": answer_for(fact.key, rng.choice(fact.wrong)),
                "doc_id": doc_id,
                "fact_key": fact.key,
            })
            plan.poisoned_qa_ids.append(qa_id)

    def plan_for(self, date: str | dt.date) -> DayPlan:
        """Return the plan of the day ``date`` (replaying every day before it).

        Raises:
            ConfigError: The date is before the start date.
        """
        last = day_number(date, self.start)
        return next(plan for plan in self.replay(last) if plan.day == last)

    def initial_ids(self) -> list[str]:
        """Return the doc_ids of day 1 (golden sets are built from them)."""
        return sorted(next(self.replay(1)).live)
