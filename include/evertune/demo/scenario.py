"""The demo scenario: which article exists, which fact holds and which QA is published on each day.

The state as of a date is the replay of every day from the start date, and every choice of a day is drawn
from a random generator seeded with ``(seed, day)`` only, so a day's plan never depends on which other
days were generated, nor on the clock.

Day 1 is the initial help center; day 2 adds, edits and deletes; day 3 changes the Pro price; day 4
launches new features (subject drift); day 5 changes the attachment limit and deletes. The demo tunes on
days 1-5 (:data:`LAST_TUNED_DAY`). Day 6 publishes a poisoned QA drop. Day 7 is the first day after the tuning
run that changes facts: eleven values change (``FACT_CHANGES[7]``) and the drop carries the changed-fact probes
(``golden/freshness.jsonl``) and no golden retrieval or QA file. Days after the poisoned day
(:attr:`DayPlan.post_tuning`) never carry golden retrieval or QA files: those sets are carried from earlier
days. Later days make small changes.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Iterator
from dataclasses import replace

from evertune.demo.articles import Article, ArticlePool, DayPlan, day_number, seeded_rng, stable_hash, to_date
from evertune.demo.content import CORE_SUBJECTS, DRIFT_SUBJECTS, FACT_CHANGES, FACTS, JUNK_SUBJECTS
from evertune.demo.qa import freshness_probes, poison, publish_qa, stating
from evertune.errors import ConfigError

FIRST_DAYS = 6
DRIFT_DAY = 4
POISON_DAY = 6
#: The demo's tuning run sees days 1..LAST_TUNED_DAY; days after POISON_DAY are "post-tuning" drops.
LAST_TUNED_DAY = POISON_DAY - 1

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

_UTC_OFFSETS_MIN = (0, 0, 0, 60, -300, 330)

Stamp = Callable[[str], str]  # doc_id -> updated_at of the day


# -- one step of a day ----------------------------------------------------------------------------------------


def apply_facts(plan: DayPlan, live: dict[str, Article], facts: dict[str, str], stamp: Stamp,
                touched: set[str]) -> None:
    """Step 1: new features' facts appear, scheduled values change; every article stating a changed fact is edited
    (once, whatever the number of its facts that change: its reason lists them, ``fact:<a>,fact:<b>``).

    Args:
        plan: The day (gets ``edited`` and ``fact_changes`` entries).
        live: Live articles (edited ones are replaced by their new version).
        facts: Fact values (updated).
        stamp: ``updated_at`` of an article edited today.
        touched: doc_ids changed today (updated).
    """
    for fact in FACTS:
        if fact.since_day == plan.day:
            facts[fact.key] = fact.value
    for key, new in FACT_CHANGES.get(plan.day, ()):
        old, facts[key] = facts[key], new
        changed = stating(live, key)
        for article in changed:
            updated = replace(article, updated_at=stamp(article.doc_id))
            live[article.doc_id] = updated
            earlier = [i for i, (a, _) in enumerate(plan.edited) if a.doc_id == article.doc_id]
            if earlier:  # an article stating several changed facts is edited once: "fact:<a>,fact:<b>"
                plan.edited[earlier[0]] = (updated, f"{plan.edited[earlier[0]][1]},fact:{key}")
            else:
                plan.edited.append((updated, f"fact:{key}"))
            touched.add(article.doc_id)
        plan.fact_changes.append({"fact_key": key, "old": old, "new": new, "doc_ids": [a.doc_id for a in changed]})


def additions(day: int, n_articles: int) -> list[tuple[str, int]]:
    """Step 2: how many articles each pool (``core`` or ``drift``) adds on ``day``."""
    if day == 1:
        return [("core", n_articles)]
    if day == 2:
        return [("core", max(2, n_articles // 10))]
    if day == DRIFT_DAY:
        return [("drift", max(6, n_articles // 3))]
    if day in (3, POISON_DAY):
        return [("core", 1)]
    if day == 5:
        return []
    return [("core" if day % 2 else "drift", 1)]


def wording_edit_count(day: int, n_articles: int) -> int:
    """Step 3: how many articles get a wording edit on ``day``."""
    counts = {2: max(3, n_articles // 3), 3: max(2, n_articles // 10), 4: max(1, n_articles // 20),
              5: max(3, n_articles // 8), 6: max(7, n_articles // 6)}
    return counts.get(day, 0 if day == 1 else 4 + day % 3)


def edit_wording(plan: DayPlan, live: dict[str, Article], touched: set[str], rng: random.Random, stamp: Stamp,
                 count: int) -> None:
    """Step 3: reword up to ``count`` live articles not changed yet today, drawn with ``rng``.

    Sorts ``plan.edited`` by doc_id afterwards (fact edits included).
    """
    candidates = [doc_id for doc_id in sorted(live) if doc_id not in touched]
    for doc_id in sorted(rng.sample(candidates, min(count, len(candidates)))):
        article = live[doc_id]
        updated = replace(article, revision=article.revision + 1, updated_at=stamp(doc_id))
        live[doc_id] = updated
        plan.edited.append((updated, "wording"))
        touched.add(doc_id)
    plan.edited.sort(key=lambda item: item[0].doc_id)


def deletion_count(day: int) -> int:
    """Step 4: how many articles are deleted on ``day``."""
    return {2: 2, 5: 3}.get(day, 0 if day <= FIRST_DAYS else day % 2)


def delete_articles(plan: DayPlan, live: dict[str, Article], touched: set[str], rng: random.Random, count: int,
                    deleted_at: Stamp) -> None:
    """Step 4: delete up to ``count`` deletable articles (retired ones first), each with a tombstone.

    Only variants and retired articles are deletable; base articles carry golden queries.
    """
    deletable = [a for doc_id, a in sorted(live.items()) if a.deletable and doc_id not in touched]
    retired = [a for a in deletable if a.subject.retired]
    others = [a for a in deletable if not a.subject.retired]
    rng.shuffle(others)
    for article in (retired + others)[:count]:
        del live[article.doc_id]
        plan.deleted.append(article.doc_id)
        reason = "feature retired" if article.subject.retired else "merged into the main article"
        plan.tombstones.append({"doc_id": article.doc_id, "deleted_at": deleted_at(article.doc_id), "reason": reason})
    plan.deleted.sort()


def add_late_tombstone(plan: DayPlan) -> None:
    """Add a tombstone older than the day's first wording edit of the same article: it must not delete it."""
    wording = [a for a, why in plan.edited if why == "wording"]
    if not wording:
        return
    stale = wording[0]
    yesterday = plan.date - dt.timedelta(days=1)
    plan.tombstones.append({
        "doc_id": stale.doc_id,
        "deleted_at": dt.datetime(yesterday.year, yesterday.month, yesterday.day, 20, tzinfo=dt.UTC).isoformat(),
        "reason": "late delete from the retired sync job",
    })
    plan.ignored_tombstones.append(stale.doc_id)


def choose_bad_kinds(wanted: list[str], n_written: int) -> tuple[tuple[str, ...], list[str]]:
    """Step 6: pick the malformed-record kinds of a drop of ``n_written`` documents.

    At most one bad row per four good documents (quarantine share <= 20 %), at least one kind, at most
    :data:`MAX_BAD_KINDS` distinct kinds.

    Returns:
        The chosen kinds, and the wanted kinds postponed to the next day.
    """
    budget, kinds = max(1, n_written // 4), []
    for kind in wanted:
        rows = 2 if kind == "duplicate_doc_id" else 1
        if kind not in kinds and len(kinds) < MAX_BAD_KINDS and (rows <= budget or not kinds):
            kinds.append(kind)
            budget -= rows
    return tuple(kinds), [kind for kind in wanted if kind not in kinds]


def wanted_bad_kinds(day: int, deferred: list[str]) -> list[str]:
    """Step 6: the kinds a day asks for: postponed ones, then its schedule, else one from the rotation."""
    wanted = deferred + list(BAD_SCHEDULE.get(day, ()))
    return wanted or [BAD_ROTATION[day % len(BAD_ROTATION)]]


# -- the replay -----------------------------------------------------------------------------------------------


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
        pools = {"core": ArticlePool(CORE_SUBJECTS, self.seed, "core"),
                 "drift": ArticlePool(DRIFT_SUBJECTS, self.seed, "drift")}
        n = self.n_articles

        for day in range(1, last_day + 1):
            date = self.start + dt.timedelta(days=day - 1)
            rng = seeded_rng(self.seed, "day", day)
            plan = DayPlan(day=day, date=date, facts={}, live={}, drift=day == DRIFT_DAY, poisoned=day == POISON_DAY,
                           post_tuning=day > POISON_DAY)
            touched: set[str] = set()

            def stamp(doc_id: str, _date: dt.date = date, _day: int = day) -> str:
                return self._timestamp(_date, doc_id, _day)

            def deleted_at(doc_id: str, _date: dt.date = date) -> str:
                return self._deleted_at(_date, doc_id)

            apply_facts(plan, live, facts, stamp, touched)
            if plan.post_tuning:
                plan.freshness = freshness_probes(plan, live)
            for pool_name, count in additions(day, n):
                for _ in range(count):
                    article = pools[pool_name].take(day, stamp)
                    live[article.doc_id] = article
                    plan.added.append(article)
                    touched.add(article.doc_id)
            edit_wording(plan, live, touched, rng, stamp, wording_edit_count(day, n))
            delete_articles(plan, live, touched, rng, deletion_count(day), deleted_at)
            if day == 5:
                add_late_tombstone(plan)
            plan.tombstones.sort(key=lambda t: (t["deleted_at"], t["doc_id"]))
            if plan.poisoned:
                poison(plan, live, facts, used, rng)
            else:
                publish_qa(plan, live, facts, used, qa_doc, rng, self.seed)
            plan.bad_kinds, deferred = choose_bad_kinds(wanted_bad_kinds(day, deferred), len(plan.written))
            plan.facts = dict(facts)
            plan.live = dict(live)
            yield plan

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
