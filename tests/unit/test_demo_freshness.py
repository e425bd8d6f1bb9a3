"""Day 7 of the demo: facts change after the tuning run, the drop carries the changed-fact probes and no golden
retrieval or QA file, and no probe repeats a 4-word run of the sentences stating its fact."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from evertune.demo.content import FACT_CHANGES, FACTS_BY_KEY
from evertune.demo.generator import articles_as_of, facts_as_of, generate_drop, generate_range
from evertune.demo.scenario import LAST_TUNED_DAY, POISON_DAY
from evertune.kb.golden import FRESHNESS, parse_line
from evertune.tuning.freshness import contains_value

START = dt.date(2026, 11, 1)
ARGS = {"seed": 7, "start_date": START.isoformat(), "n_articles": 40}
MAX_BYTES = 64_000
DAY7 = (START + dt.timedelta(days=6)).isoformat()
_WORD = re.compile(r"[a-z0-9$%]+(?:[.'][a-z0-9]+)*")


def _ngrams(text: str, n: int = 4) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@pytest.fixture(scope="module")
def week(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("landing")
    return root, generate_range(root, days=7, max_file_bytes=MAX_BYTES, **ARGS)


def test_day7_changes_facts_after_the_tuning_run_and_carries_only_probes(week) -> None:
    root, manifests = week
    day7 = manifests[6]
    assert day7["day"] == 7 > POISON_DAY > LAST_TUNED_DAY and day7["post_tuning"]
    assert not any(m["post_tuning"] for m in manifests[:6])
    assert len(day7["fact_changes"]) >= 10 == len({c["fact_key"] for c in day7["fact_changes"][:10]})
    folder = root / f"ds={DAY7}"
    assert sorted(p.name for p in (folder / "golden").iterdir()) == ["freshness.jsonl"]
    assert day7["golden_files"] == ["golden/freshness.jsonl"]
    assert (day7["counts"]["golden_retrieval"], day7["counts"]["golden_qa"]) == (0, 0)
    lines = [json.loads(line) for line in (folder / "golden" / "freshness.jsonl").read_text().splitlines()]
    assert lines == day7["freshness_probes"]
    assert len(lines) >= 40 and len({p["fact_key"] for p in lines}) >= 10
    assert [p["probe_id"] for p in lines] == sorted({p["probe_id"] for p in lines})
    assert len({p["question"] for p in lines}) == len(lines)
    for line in lines:
        assert parse_line(FRESHNESS, dict(line)) == line  # valid, already normalised
        assert line["changed_on"] == DAY7


def test_no_probe_shares_a_4_word_run_with_its_fact_sentences() -> None:
    checked = 0
    for day, changes in FACT_CHANGES.items():
        for key, new in changes:
            fact = FACTS_BY_KEY[key]
            if day > POISON_DAY:
                assert len(fact.probes) >= 4, key
            sentences = [s.format(v=v) for s in fact.sentences for v in (fact.value, new)]
            banned = set().union(*(_ngrams(s) for s in sentences))
            for question in fact.probes:
                assert not _ngrams(question) & banned, (key, question, _ngrams(question) & banned)
                checked += 1
    assert checked >= 40


def test_the_probe_check_can_fail() -> None:
    sentence = "The API allows {v} per access token.".format(v="1200 requests per minute")
    assert _ngrams("Does the API allow 1200 requests per minute?") & _ngrams(sentence)


def test_values_are_checkable_and_the_articles_state_the_new_ones(week) -> None:
    _, manifests = week
    facts = facts_as_of(DAY7, **ARGS)
    live = articles_as_of(DAY7, **ARGS)
    for change in manifests[6]["fact_changes"]:
        assert facts[change["fact_key"]] == change["new"]
        assert change["old"] not in change["new"] and change["new"] not in change["old"]
        assert not contains_value(change["new"], change["old"])
        for doc_id in change["doc_ids"]:
            assert change["new"] in live[doc_id]["text"] and change["old"] not in live[doc_id]["text"]
    for probe in manifests[6]["freshness_probes"]:
        assert probe["doc_id"] in live and probe["new_value"] in live[probe["doc_id"]]["text"]
        assert probe["new_value"] in probe["answer"]


def test_day7_alone_is_byte_identical(week, tmp_path: Path) -> None:
    root, _ = week
    generate_drop(tmp_path, DAY7, max_file_bytes=MAX_BYTES, **ARGS)
    ours, theirs = root / f"ds={DAY7}", tmp_path / f"ds={DAY7}"
    files = sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file() and not p.is_symlink())
    assert files == sorted(p.relative_to(theirs) for p in theirs.rglob("*") if p.is_file() and not p.is_symlink())
    assert all((ours / f).read_bytes() == (theirs / f).read_bytes() for f in files)
