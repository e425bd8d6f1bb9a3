"""The demo landing zone: deterministic, contract-shaped, and telling the intended story day by day."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from evertune.config import load_params
from evertune.demo.cli import register
from evertune.demo.content import DRIFT_TOPICS, FACTS_BY_KEY
from evertune.demo.generator import (
    articles_as_of,
    facts_as_of,
    generate_drop,
    generate_range,
)
from evertune.errors import ConfigError

START = dt.date(2026, 11, 1)
ARGS = {"seed": 7, "start_date": START.isoformat(), "n_articles": 40}
MAX_BYTES = 64_000
MIN_WORDS, MAX_WORDS = 150, 400
DOC_FIELDS = {"doc_id", "title", "text", "source", "url", "updated_at", "topic"}
QA_FIELDS = {"qa_id", "question", "answer", "doc_id", "fact_key"}
REASONS = {"bad_encoding", "binary_content", "empty_file", "oversized", "unsafe_path", "malformed_json",
           "missing_field", "text_too_short", "garbage_text", "disallowed_source", "disallowed_url",
           "duplicate_doc_id", "pii_detected", "invalid_doc_id"}
VALIDATE = load_params().validation
DOC_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,79}$")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
PHONE = re.compile(r"\+\d[\d ()-]{8,}\d")


def day(n: int) -> str:
    return (START + dt.timedelta(days=n - 1)).isoformat()


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("landing")
    generate_range(root, days=6, max_file_bytes=MAX_BYTES, **ARGS)
    return root


def partition(root: Path, n: int) -> Path:
    return root / f"ds={day(n)}"


def manifest(root: Path, n: int) -> dict:
    return json.loads((partition(root, n) / "_manifest.json").read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def snapshot(folder: Path) -> dict[str, tuple[str, object]]:
    tree = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            tree[rel] = ("link", str(path.readlink()))
        elif path.is_file():
            tree[rel] = ("file", path.read_bytes())
    return tree


def split_front_matter(text: str) -> tuple[dict[str, str], str]:
    lines = text.split("\n")
    assert lines[0] == "---"
    end = lines.index("---", 1)
    meta = dict(line.split(": ", 1) for line in lines[1:end])
    return meta, "\n".join(lines[end + 1:])


class _HtmlDoc(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.meta: dict[str, str] = {}
        self.title = ""
        self.text: list[str] = []
        self._skip = self._in_title = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "meta" and (attrs.get("name") or "").startswith("evertune:"):
            self.meta[attrs["name"].removeprefix("evertune:")] = attrs["content"]
        self._skip = tag in ("script", "style")
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        self._skip = self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        elif not self._skip and data.strip():
            self.text.append(data.strip())


def parse_docs(folder: Path, skip: set[str]) -> dict[str, tuple[dict, str]]:
    """Parse the valid documents of a partition the way the contract describes: doc_id -> (meta, text)."""
    docs = {}
    for path in sorted((folder / "docs").iterdir()):
        ref = f"docs/{path.name}"
        if ref in skip:
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".html":
            parser = _HtmlDoc()
            parser.feed(text)
            meta, body = {**parser.meta, "title": parser.title}, " ".join(parser.text)
        else:
            meta, body = split_front_matter(text)
        assert set(meta) == DOC_FIELDS - {"text"}, ref
        docs[meta["doc_id"]] = (meta, body)
    jsonl = folder / "docs.jsonl"  # absent on a day without JSONL documents
    for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines() if jsonl.exists() else [], 1):
        if f"docs.jsonl:{number}" in skip:
            continue
        record = json.loads(line)
        assert set(record) == DOC_FIELDS
        docs[record["doc_id"]] = ({k: v for k, v in record.items() if k != "text"}, record["text"])
    return docs


# -- determinism ----------------------------------------------------------------------------------------------


def test_drops_are_byte_identical_whatever_was_generated_before(tmp_path: Path, landing: Path) -> None:
    started = time.perf_counter()
    generate_range(tmp_path / "a", days=6, max_file_bytes=MAX_BYTES, **ARGS)
    assert time.perf_counter() - started < 2.0
    assert snapshot(tmp_path / "a") == snapshot(landing)

    alone = generate_drop(tmp_path / "b", day(3), max_file_bytes=MAX_BYTES, **ARGS)
    assert snapshot(partition(tmp_path / "b", 3)) == snapshot(partition(landing, 3))
    assert alone == manifest(landing, 3)

    # Rewriting a partition over a different one leaves exactly the new files and no scratch folders.
    generate_drop(tmp_path / "a", day(3), max_file_bytes=MAX_BYTES, **{**ARGS, "seed": 8})
    assert snapshot(partition(tmp_path / "a", 3)) != snapshot(partition(landing, 3))
    generate_drop(tmp_path / "a", day(3), max_file_bytes=MAX_BYTES, **ARGS)
    assert snapshot(tmp_path / "a") == snapshot(landing)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [f"ds={day(n)}" for n in range(1, 7)]


# -- contract shape -------------------------------------------------------------------------------------------


def test_every_valid_document_follows_the_landing_contract(landing: Path) -> None:
    formats = set()
    for n in range(1, 7):
        folder, info = partition(landing, n), manifest(landing, n)
        docs = parse_docs(folder, {bad["record_ref"] for bad in info["bad_records"]})
        truth = articles_as_of(day(n), **ARGS)
        assert set(docs) == set(info["added"]) | set(info["edited"])
        for doc_id, (meta, body) in docs.items():
            assert DOC_ID.match(doc_id)
            assert meta["source"] in VALIDATE.allowed_sources
            assert meta["url"].startswith(tuple(VALIDATE.allowed_url_prefixes))
            assert dt.datetime.fromisoformat(meta["updated_at"]).tzinfo is not None
            assert dt.date.fromisoformat(meta["updated_at"][:10]) == START + dt.timedelta(days=n - 1)
            expected = truth[doc_id]
            assert {k: expected[k] for k in meta} == meta
            assert MIN_WORDS <= len(expected["text"].split()) <= MAX_WORDS
            for key in expected["facts"]:
                assert facts_as_of(day(n), **ARGS)[key] in body
            if expected["format"] in ("txt", "jsonl"):
                assert body.strip() == expected["text"]
            elif expected["format"] == "html":
                assert " ".join(body.split()) == " ".join(expected["text"].split())
            formats.add(expected["format"])
        html_files = list((folder / "docs").glob("*.html"))
        assert all(marker not in " ".join(_parse_html(p)) for p in html_files for marker in info["html_strip_markers"])
    assert formats == {"md", "txt", "html", "jsonl"}
    assert any("<script>" in p.read_text() for p in (partition(landing, 1) / "docs").glob("*.html"))


def _parse_html(path: Path) -> list[str]:
    parser = _HtmlDoc()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.text


# -- storyline ------------------------------------------------------------------------------------------------


def test_second_day_adds_edits_and_deletes_with_tombstones(landing: Path) -> None:
    info = manifest(landing, 2)
    before, after = articles_as_of(day(1), **ARGS), articles_as_of(day(2), **ARGS)
    assert info["added"] and set(info["added"]).isdisjoint(before) and set(info["added"]) <= set(after)
    assert len(info["edited"]) >= 3
    for doc_id in info["edited"]:
        assert after[doc_id]["text"] != before[doc_id]["text"]
        assert after[doc_id]["updated_at"] > before[doc_id]["updated_at"]
    tombstones = read_jsonl(partition(landing, 2) / "tombstones.jsonl")
    assert 1 <= len(tombstones) <= 2
    assert [t["doc_id"] for t in tombstones] == info["deleted"]
    for tomb in tombstones:
        assert set(tomb) == {"doc_id", "deleted_at", "reason"}
        assert tomb["doc_id"] in before and tomb["doc_id"] not in after
        assert dt.datetime.fromisoformat(tomb["deleted_at"]) > dt.datetime.fromisoformat(before[tomb["doc_id"]]["updated_at"])


def test_day_five_deletes_and_ignores_a_stale_tombstone(landing: Path) -> None:
    info = manifest(landing, 5)
    after = articles_as_of(day(5), **ARGS)
    assert len(info["deleted"]) >= 2 and set(info["deleted"]).isdisjoint(after)
    tombstones = {t["doc_id"]: t for t in read_jsonl(partition(landing, 5) / "tombstones.jsonl")}
    (stale,) = info["ignored_tombstones"]
    assert stale in after and stale in info["edited"]
    assert dt.datetime.fromisoformat(tombstones[stale]["deleted_at"]) < dt.datetime.fromisoformat(after[stale]["updated_at"])


@pytest.mark.parametrize(("n", "key", "old", "new"), [(3, "pro_price", "$8 per user per month", "$10 per user per month"),
                                                      (5, "attachment_limit", "25 MB", "100 MB")])
def test_fact_change_rewrites_every_stating_article_and_the_answers(landing: Path, n, key, old, new) -> None:
    assert facts_as_of(day(n - 1), **ARGS)[key] == old and facts_as_of(day(n), **ARGS)[key] == new
    info = manifest(landing, n)
    assert [(c["fact_key"], c["old"], c["new"]) for c in info["fact_changes"]] == [(key, old, new)]
    before, after = articles_as_of(day(n - 1), **ARGS), articles_as_of(day(n), **ARGS)
    stating = sorted(doc_id for doc_id, a in after.items() if key in a["facts"])
    assert len(stating) >= 3 and stating == info["fact_changes"][0]["doc_ids"]
    assert set(stating) <= set(info["edited"])
    for doc_id in stating:
        assert new in after[doc_id]["text"] and old not in after[doc_id]["text"]
        assert old in before[doc_id]["text"]
    assert not any(old in a["text"] for a in after.values())
    changed_qa = [row for row in read_jsonl(partition(landing, n) / "qa.jsonl") if row["fact_key"] == key]
    assert changed_qa and all(new in row["answer"] for row in changed_qa)
    golden_before = {r["qa_id"]: r for r in read_jsonl(partition(landing, n - 1) / "golden" / "qa.jsonl")}
    golden_after = {r["qa_id"]: r for r in read_jsonl(partition(landing, n) / "golden" / "qa.jsonl")}
    assert golden_before.keys() == golden_after.keys()
    differing = {qa_id for qa_id in golden_after if golden_after[qa_id] != golden_before[qa_id]}
    assert differing and all(golden_after[qa_id]["fact_key"] == key for qa_id in differing)
    assert all(new in golden_after[qa_id]["answer"] for qa_id in differing)


def test_training_qa_is_grounded_in_the_articles_of_its_day(landing: Path) -> None:
    for n in (1, 2, 3, 4, 5):
        rows = read_jsonl(partition(landing, n) / "qa.jsonl")
        assert rows
        facts, arts = facts_as_of(day(n), **ARGS), articles_as_of(day(n), **ARGS)
        for row in rows:
            assert set(row) == QA_FIELDS
            value = facts[row["fact_key"]]
            assert value in row["answer"]
            assert value in arts[row["doc_id"]]["text"]


def test_golden_sets_are_disjoint_from_training_and_stable(landing: Path) -> None:
    training = [row for n in range(1, 7) for row in read_jsonl(partition(landing, n) / "qa.jsonl")]
    retrieval_day1 = (partition(landing, 1) / "golden" / "retrieval.jsonl").read_bytes()
    for n in range(1, 7):
        golden = read_jsonl(partition(landing, n) / "golden" / "qa.jsonl")
        assert len(golden) >= 20 and all(set(row) == QA_FIELDS for row in golden)
        assert {r["qa_id"] for r in golden}.isdisjoint(r["qa_id"] for r in training)
        assert {r["question"] for r in golden}.isdisjoint(r["question"] for r in training)
        facts = facts_as_of(day(n), **ARGS)
        assert all(facts[r["fact_key"]] in r["answer"] for r in golden)
        assert (partition(landing, n) / "golden" / "retrieval.jsonl").read_bytes() == retrieval_day1
    queries = read_jsonl(partition(landing, 1) / "golden" / "retrieval.jsonl")
    assert len(queries) >= 20
    titles = {doc_id: a["title"].lower() for doc_id, a in articles_as_of(day(1), **ARGS).items()}
    for n in (1, 6, 12):  # relevant articles are never deleted, also well after the first week
        live = articles_as_of(day(n), **ARGS)
        for query in queries:
            assert set(query) == {"query_id", "query", "relevant_doc_ids"}
            assert set(query["relevant_doc_ids"]) <= set(live)
            assert all(query["query"].lower() != titles[d] for d in query["relevant_doc_ids"])


def test_drift_day_shifts_the_topic_mix(landing: Path) -> None:
    def drift_share(n: int) -> tuple[float, float]:
        qa = read_jsonl(partition(landing, n) / "qa.jsonl")
        qa_share = sum(FACTS_BY_KEY[r["fact_key"]].topic in DRIFT_TOPICS for r in qa) / len(qa)
        topics = manifest(landing, n)["counts"]["topics_written"]
        doc_share = sum(c for t, c in topics.items() if t in DRIFT_TOPICS) / sum(topics.values())
        return qa_share, doc_share

    assert all(drift_share(n) == (0.0, 0.0) for n in (1, 2, 3))
    qa_share, doc_share = drift_share(4)
    assert qa_share > 0.6 and doc_share > 0.6
    assert manifest(landing, 4)["drift"] and not any(manifest(landing, n)["drift"] for n in (1, 2, 3, 5, 6))
    assert set(facts_as_of(day(4), **ARGS)) > set(facts_as_of(day(3), **ARGS))


def test_poisoned_day_answers_contradict_the_facts(landing: Path) -> None:
    info = manifest(landing, 6)
    assert info["poisoned"] and not any(manifest(landing, n)["poisoned"] for n in range(1, 6))
    rows = read_jsonl(partition(landing, 6) / "qa.jsonl")
    facts = facts_as_of(day(6), **ARGS)
    assert len(rows) >= 20 and sorted(r["qa_id"] for r in rows) == sorted(info["poisoned_qa_ids"])
    for row in rows:
        assert facts[row["fact_key"]] not in row["answer"]
        assert any(wrong in row["answer"] for wrong in FACTS_BY_KEY[row["fact_key"]].wrong)
    assert info["added"] or info["edited"]  # a normal document drop rides along


# -- malformed records ----------------------------------------------------------------------------------------


def _jsonl_line(folder: Path, ref: str) -> str:
    number = int(ref.split(":")[1])
    return (folder / "docs.jsonl").read_text(encoding="utf-8").splitlines()[number - 1]


def _check_bad_record(folder: Path, bad: dict) -> None:
    ref, reason = bad["record_ref"], bad["reason"]
    if ref.startswith("docs.jsonl:"):
        line = _jsonl_line(folder, ref)
        if reason == "malformed_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(line)
            return
        record = json.loads(line)
        if reason == "invalid_doc_id":
            assert ".." in record["doc_id"] and not DOC_ID.match(record["doc_id"])
        elif reason == "missing_field":
            assert DOC_FIELDS - set(record)
        elif reason == "duplicate_doc_id":
            others = [b for b in manifest_bad(folder) if b["doc_id"] == record["doc_id"] and b["record_ref"] != ref]
            assert others and others[0]["reason"] == "duplicate_doc_id"
        else:
            raise AssertionError(f"unexpected jsonl reason {reason}")
        return
    path = folder / ref
    if reason == "unsafe_path":
        assert path.is_symlink() and not path.resolve().is_relative_to(folder.resolve())
        return
    data = path.read_bytes()
    if reason == "empty_file":
        assert data == b""
    elif reason == "oversized":
        assert len(data) == MAX_BYTES + 1
        data.decode("utf-8")
    elif reason == "binary_content":
        assert b"\x00" in data
    elif reason == "bad_encoding":
        with pytest.raises(UnicodeDecodeError):
            data.decode("utf-8")
    else:
        meta, body = split_front_matter(data.decode("utf-8"))
        if reason == "missing_field":
            assert DOC_FIELDS - {"text"} - set(meta)
        elif reason == "text_too_short":
            assert len(body.strip()) < VALIDATE.min_text_chars
        elif reason == "garbage_text":
            visible = [c for c in body if not c.isspace()]
            assert len(body) > VALIDATE.min_text_chars
            assert sum(c.isalpha() for c in visible) / len(visible) < VALIDATE.min_alpha_ratio
        elif reason == "pii_detected":
            assert EMAIL.search(body) and PHONE.search(body) and meta["source"] == "community"
        elif reason == "disallowed_source":
            assert meta["source"] not in VALIDATE.allowed_sources
        elif reason == "duplicate_doc_id":
            assert sum(b["doc_id"] == meta["doc_id"] for b in manifest_bad(folder)) == 2
        else:
            raise AssertionError(f"unexpected file reason {reason}")


def manifest_bad(folder: Path) -> list[dict]:
    return json.loads((folder / "_manifest.json").read_text(encoding="utf-8"))["bad_records"]


def test_bad_records_cover_every_reason_and_are_really_broken(landing: Path) -> None:
    seen_reasons, seen_kinds = set(), set()
    for n in range(1, 7):
        folder, info = partition(landing, n), manifest(landing, n)
        assert info["bad_records"], f"day {n} has no malformed record"
        assert info["counts"]["expected_quarantine_fraction"] <= VALIDATE.max_quarantine_fraction
        truth = articles_as_of(day(n), **ARGS)
        for bad in info["bad_records"]:
            assert bad["reason"] in REASONS
            assert bad["doc_id"] not in truth  # malformed records never touch the ground truth
            if bad["reason"] == "disallowed_url":
                parser = _HtmlDoc()
                parser.feed((folder / bad["record_ref"]).read_text(encoding="utf-8"))
                assert not parser.meta["url"].startswith(tuple(VALIDATE.allowed_url_prefixes))
            else:
                _check_bad_record(folder, bad)
            seen_reasons.add(bad["reason"])
            seen_kinds.add(bad["kind"])
    assert seen_reasons == REASONS
    assert {"unsafe_path_symlink", "path_trick_doc_id"} <= seen_kinds


# -- later days, arguments, CLI -------------------------------------------------------------------------------


def test_days_after_the_first_week_make_small_changes(tmp_path: Path) -> None:
    info = generate_drop(tmp_path, day(9), max_file_bytes=MAX_BYTES, **ARGS)
    assert not info["drift"] and not info["poisoned"] and not info["fact_changes"]
    assert 1 <= len(info["added"]) + len(info["edited"]) <= 8 and len(info["deleted"]) <= 1
    assert info["bad_records"] and read_jsonl(partition(tmp_path, 9) / "qa.jsonl")
    assert set(info["deleted"]).isdisjoint(articles_as_of(day(9), **ARGS))


@pytest.mark.parametrize("change", [{"date": "2026-10-31"}, {"n_articles": 3}, {"max_file_bytes": 1000},
                                    {"root": "s3://bucket/landing"}, {"date": "yesterday"}])
def test_invalid_arguments_are_config_errors(tmp_path: Path, change: dict) -> None:
    call = {"date": day(1), "max_file_bytes": MAX_BYTES, **ARGS, "root": tmp_path, **change}
    with pytest.raises(ConfigError):
        generate_drop(call.pop("root"), call.pop("date"), **call)


def test_cli_writes_the_landing_zone_from_settings(evertune_home: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["demo-data", "--days", "2", "--n-articles", "12", "--seed", "3"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    start = load_params().demo.start_date
    assert lines[0].startswith(f"ds={start} day 1: +12 added")
    assert len(lines) == 3
    assert min(p.name for p in (evertune_home / "landing").iterdir()) == f"ds={start}"
