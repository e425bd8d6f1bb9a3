"""Daily landing-zone drops for the Nimbus Notes help center, following ``docs/data-format.md``.

``generate_drop`` writes one partition ``<landing>/ds=YYYY-MM-DD/``; its bytes depend only on
``(seed, start_date, n_articles, max_file_bytes, date)``, so rewriting a partition, or generating one day
alone, gives the same files as a full range. The storyline lives in :mod:`evertune.demo.scenario`, the
texts in :mod:`evertune.demo.content`, their rendering in :mod:`evertune.demo.render` and the malformed
records in :mod:`evertune.demo.malformed`. ``_manifest.json`` tells tests and the demo summary what each drop
was meant to contain (the pipeline never reads it):

* ``date``, ``day`` (1 = start date), the generation arguments, flags ``drift`` and ``poisoned``;
* ``added``, ``edited`` (with ``edit_reasons``: ``wording`` or ``fact:<key>[,fact:<key>...]``), ``deleted`` (tombstones that
  delete) and ``ignored_tombstones`` (older than the article's newest version: they must not delete);
* ``fact_changes`` (``fact_key``, ``old``, ``new``, ``doc_ids`` rewritten) and ``facts`` as of the day;
* ``bad_records``: ``record_ref`` (``docs/x.md`` or ``docs.jsonl:N``, 1-based), the expected quarantine
  ``reason``, the generator's ``kind``, the ``doc_id`` ingestion can read (else empty) and a ``detail``;
* ``poisoned_qa_ids``, ``html_strip_markers`` (must not survive HTML normalisation) and ``counts``;
* ``post_tuning`` (a day after the demo's tuning run: no golden retrieval or QA file, the sets are carried),
  ``golden_files`` (the golden files the drop carries) and ``freshness_probes`` (the lines of
  ``golden/freshness.jsonl``: changed-fact questions with ``old_value`` and ``new_value``).

Ground truth for tests: :func:`articles_as_of` (normalised text as ingestion should produce it) and
:func:`facts_as_of`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections import Counter
from pathlib import Path

from evertune.demo.articles import DayPlan, answer_for, seeded_rng, to_date
from evertune.demo.content import CORE_SUBJECTS, FACTS
from evertune.demo.malformed import DropBuilder, add_bad_records
from evertune.demo.render import (
    HTML_STRIP_MARKERS,
    article_blocks,
    article_meta,
    doc_record,
    file_text,
    jsonl_line,
    render_plain,
)
from evertune.demo.scenario import Scenario
from evertune.errors import ConfigError

GENERATOR_VERSION = "evertune.demo/1"


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


def _write_articles(drop: DropBuilder, plan: DayPlan, seed: int, max_file_bytes: int) -> tuple[list[str], Counter]:
    """Write the day's article files; return the ``docs.jsonl`` lines of JSONL articles and the format counts.

    Raises:
        ConfigError: An article file is larger than ``max_file_bytes``.
    """
    jsonl_docs: list[str] = []
    formats: Counter[str] = Counter()
    for article in plan.written:
        blocks = article_blocks(article, plan.facts, seed)
        formats[article.fmt] += 1
        if article.fmt == "jsonl":
            jsonl_docs.append(jsonl_line(doc_record(article_meta(article), render_plain(blocks))))
        else:
            data = file_text(article.fmt, article_meta(article), blocks, seed).encode()
            if len(data) > max_file_bytes:
                raise ConfigError(f"max_file_bytes={max_file_bytes} is smaller than article {article.doc_id}")
            drop.add_file(f"docs/{article.doc_id}.{article.fmt}", data)
    return jsonl_docs, formats


def _write_docs_jsonl(drop: DropBuilder, jsonl_docs: list[str], *, seed: int, day: int, max_file_bytes: int) -> None:
    """Write ``docs.jsonl``: valid lines in doc_id order, malformed lines at seeded positions.

    The malformed lines' manifest entries get their ``record_ref`` (``docs.jsonl:N``, 1-based) and join
    ``drop.bad``.

    Raises:
        ConfigError: The file would be larger than ``max_file_bytes``.
    """
    lines: list[tuple[str, dict | None]] = [(line, None) for line in jsonl_docs]
    rng = seeded_rng(seed, "jsonl", day)
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


def _counts(plan: DayPlan, formats: Counter, bad: list[dict], retrieval: list[dict], gold_qa: list[dict]) -> dict:
    """The manifest's ``counts`` section."""
    topic_of = {fact.key: fact.topic for fact in FACTS}
    written = plan.written
    return {
        "docs_written": len(written),
        "docs_by_format": dict(sorted(formats.items())),
        "topics_written": dict(sorted(Counter(a.topic for a in written).items())),
        "tombstones": len(plan.tombstones),
        "qa": len(plan.qa),
        "qa_topics": dict(sorted(Counter(topic_of[row["fact_key"]] for row in plan.qa).items())),
        "golden_retrieval": len(retrieval),
        "golden_qa": len(gold_qa),
        "golden_freshness": len(plan.freshness),
        "bad_records": len(bad),
        "expected_quarantine_fraction": round(len(bad) / max(1, len(bad) + len(written)), 4),
        "live_articles": len(plan.live),
    }


def _manifest(plan: DayPlan, counts: dict, bad: list[dict], *, seed: int, start_date: dt.date, n_articles: int,
              max_file_bytes: int) -> dict:
    """The ``_manifest.json`` content of one drop (see the module docstring)."""
    return {
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
        "bad_records": bad,
        "poisoned_qa_ids": plan.poisoned_qa_ids,
        "post_tuning": plan.post_tuning,
        "golden_files": [name for name, n in (("golden/retrieval.jsonl", counts["golden_retrieval"]),
                                              ("golden/qa.jsonl", counts["golden_qa"]),
                                              ("golden/freshness.jsonl", counts["golden_freshness"])) if n],
        "freshness_probes": plan.freshness,
        "html_strip_markers": list(HTML_STRIP_MARKERS),
        "counts": counts,
    }


def _build_drop(plan: DayPlan, initial_ids: set[str], *, seed: int, start_date: dt.date, n_articles: int,
                max_file_bytes: int) -> tuple[DropBuilder, dict]:
    drop = DropBuilder()
    jsonl_docs, formats = _write_articles(drop, plan, seed, max_file_bytes)
    add_bad_records(drop, plan, seed, max_file_bytes)
    _write_docs_jsonl(drop, jsonl_docs, seed=seed, day=plan.day, max_file_bytes=max_file_bytes)
    if plan.tombstones:
        drop.add_file("tombstones.jsonl", "".join(jsonl_line(t) for t in plan.tombstones).encode())
    drop.add_file("qa.jsonl", "".join(jsonl_line(row) for row in plan.qa).encode())
    # Days after the tuning run carry no golden retrieval or QA file (the pipeline carries the sets), only
    # the changed-fact probes.
    retrieval = [] if plan.post_tuning else golden_retrieval(initial_ids)
    gold_qa = [] if plan.post_tuning else golden_qa(initial_ids, plan.facts)
    for name, rows in (("golden/retrieval.jsonl", retrieval), ("golden/qa.jsonl", gold_qa),
                       ("golden/freshness.jsonl", plan.freshness)):
        if rows or (not plan.post_tuning and name != "golden/freshness.jsonl"):
            drop.add_file(name, "".join(jsonl_line(row) for row in rows).encode())

    drop.bad.sort(key=lambda entry: (entry["record_ref"], entry["kind"]))
    counts = _counts(plan, formats, drop.bad, retrieval, gold_qa)
    manifest = _manifest(plan, counts, drop.bad, seed=seed, start_date=start_date, n_articles=n_articles,
                         max_file_bytes=max_file_bytes)
    drop.add_file("_manifest.json", (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
    return drop, manifest


def _local_root(landing_root: str | os.PathLike) -> Path:
    text = os.fspath(landing_root)
    if text.startswith("file://"):
        text = text.removeprefix("file://")
    elif "://" in text:
        raise ConfigError(f"the demo generator writes to a local folder, not {text!r}")
    return Path(text)


def _write_partition(root: Path, date: dt.date, drop: DropBuilder) -> Path:
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
            **article_meta(article),
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
