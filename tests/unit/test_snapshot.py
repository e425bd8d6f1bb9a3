"""The validated-snapshot contract: typed schemas, byte-deterministic files, one document-state rule, and no
other module naming a file of the validated folder."""

from __future__ import annotations

import ast
import datetime as dt
import itertools
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evertune.data import snapshot
from evertune.data.doc_state import DocEvent, resolve_doc_state
from evertune.errors import CriticalValidationError

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "include" / "evertune" / "data" / "snapshot.py"
#: String literals that contain a validated file's name but mean another file (path, literal, why).
NOT_THE_SNAPSHOT = {("include/evertune/tuning/steps.py", "drift/report.json")}  # an MLflow artifact name


def doc(doc_id: str, updated_at: str, record_ref: str = "docs.jsonl:1", **extra: str) -> dict[str, str]:
    row = {"doc_id": doc_id, "title": "Title", "text": "Some text.", "source": "help-center",
           "url": f"https://help.example/{doc_id}", "updated_at": updated_at, "content_hash": f"h-{doc_id}",
           "metadata": "{}", "record_ref": record_ref}
    return row | extra


def tomb(doc_id: str, deleted_at: str, record_ref: str = "tombstones.jsonl:1") -> dict[str, str]:
    return {"doc_id": doc_id, "deleted_at": deleted_at, "reason": "retired", "record_ref": record_ref}


# --------------------------------------------------------------------------- schemas and files


def test_timestamps_are_typed_and_everything_else_is_a_string() -> None:
    for key, columns in snapshot.COLUMNS.items():
        fields = snapshot.schema(key)
        assert tuple(fields.names) == columns
        assert not any(field.nullable for field in fields)
        stamp = snapshot.TIMESTAMP_COLUMNS.get(key)
        for field in fields:
            expected = pa.timestamp("us", tz="UTC") if field.name == stamp else pa.string()
            assert field.type == expected, (key, field.name)
    assert snapshot.TIMESTAMP_COLUMNS == {"documents": "updated_at", "tombstones": "deleted_at"}


def test_parse_timestamp_is_utc_and_rejects_garbage() -> None:
    utc = dt.datetime(2026, 11, 3, 8, tzinfo=dt.UTC)
    assert snapshot.parse_timestamp("2026-11-03T10:00:00+02:00") == utc
    assert snapshot.parse_timestamp("2026-11-03T08:00:00Z") == utc
    assert snapshot.parse_timestamp("2026-11-03T08:00:00") == utc  # naive means UTC
    assert snapshot.parse_timestamp(utc.replace(tzinfo=None)) == utc
    assert snapshot.iso_utc("2026-11-03T10:00:00.5+02:00") == "2026-11-03T08:00:00.500000+00:00"
    with pytest.raises(CriticalValidationError, match="not an ISO 8601 timestamp"):
        snapshot.parse_timestamp("yesterday", what="x")


def test_writes_are_byte_deterministic_and_sorted(tmp_path: Path) -> None:
    docs = [doc("b", "2026-11-03T08:00:00+00:00"), doc("a", "2026-11-02T08:00:00+00:00", "docs.jsonl:2"),
            doc("a", "2026-11-01T08:00:00+00:00", "docs.jsonl:1")]
    tombs = [tomb("z", "2026-11-03T09:00:00.25+00:00"), tomb("z", "2026-11-03T09:00:00+00:00", "t:2")]
    golden = [{"qa_id": "g2", "question": "Q2"}, {"qa_id": "g1", "question": "Q1"}]
    contents = {"documents": docs, "tombstones": tombs, "golden_qa": golden, "report": {"b": 1, "a": [1, 2]}}
    first = snapshot.write(tmp_path / "a", contents)
    reversed_contents = {key: value[::-1] if isinstance(value, list) else value for key, value in contents.items()}
    snapshot.write(tmp_path / "b", reversed_contents)
    snapshot.write(tmp_path / "a", reversed_contents)  # overwriting in place: same bytes
    assert set(first) == {"documents", "tombstones", "golden_qa", "report"}
    for key in first:
        name = snapshot.FILES[key]
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    table = snapshot.read_table(tmp_path / "a", "documents")
    assert table.schema == snapshot.schema("documents")
    assert [(r["doc_id"], r["record_ref"]) for r in table.to_pylist()] == [
        ("a", "docs.jsonl:1"), ("a", "docs.jsonl:2"), ("b", "docs.jsonl:1")]
    # Tombstones sort by time, not by text; the text round trip is exact.
    tomb_table = snapshot.read_table(tmp_path / "a", "tombstones")
    assert [r["record_ref"] for r in snapshot.text_rows(tomb_table, snapshot.TOMBSTONE_COLUMNS)] == [
        "t:2", "tombstones.jsonl:1"]
    assert snapshot.text_rows(table, ("updated_at",))[0] == {"updated_at": "2026-11-01T08:00:00+00:00"}
    assert [r["qa_id"] for r in snapshot.read_records(tmp_path / "a", "golden_qa")] == ["g1", "g2"]
    assert snapshot.read_report(tmp_path / "a") == {"a": [1, 2], "b": 1}
    assert not list((tmp_path / "a").glob(".*.tmp"))


def test_unsorted_write_keeps_the_given_order(tmp_path: Path) -> None:
    docs = [doc("b", "2026-11-03T08:00:00+00:00"), doc("a", "2026-11-02T08:00:00+00:00")]
    snapshot.write(tmp_path, {"documents": docs}, sort=False)
    assert [r["doc_id"] for r in snapshot.read_rows(tmp_path, "documents")] == ["b", "a"]


def test_reading_types_older_text_timestamps_and_checks_columns(tmp_path: Path) -> None:
    text_schema = pa.schema([(c, pa.string()) for c in ("doc_id", "updated_at", "extra")])
    rows = [{"doc_id": "a", "updated_at": "2026-11-03T10:00:00+02:00", "extra": "kept"}]
    pq.write_table(pa.Table.from_pylist(rows, schema=text_schema), snapshot.path_of(tmp_path, "documents"))
    [row] = snapshot.read_rows(tmp_path, "documents", require=("doc_id", "updated_at"))
    assert row == {"doc_id": "a", "updated_at": dt.datetime(2026, 11, 3, 8, tzinfo=dt.UTC), "extra": "kept"}
    with pytest.raises(CriticalValidationError, match=r"lacks required column\(s\) \['title'"):
        snapshot.read_table(tmp_path, "documents")
    with pytest.raises(CriticalValidationError, match="lacks tombstones.parquet"):
        snapshot.read_table(tmp_path, "tombstones")
    assert snapshot.read_table(tmp_path, "tombstones", missing_ok=True).schema == snapshot.schema("tombstones")
    bad = [{"doc_id": "a", "updated_at": "soon", "extra": ""}]
    pq.write_table(pa.Table.from_pylist(bad, schema=text_schema), snapshot.path_of(tmp_path, "documents"))
    with pytest.raises(CriticalValidationError, match="not an ISO 8601 timestamp"):
        snapshot.read_rows(tmp_path, "documents", require=("doc_id",))


def test_read_records_names_the_bad_line(tmp_path: Path) -> None:
    snapshot.path_of(tmp_path, "golden_qa").write_text('{"qa_id": "g1"}\n\n{oops\n')
    with pytest.raises(CriticalValidationError, match=r"golden_qa.jsonl:3 is not valid JSON"):
        snapshot.read_records(tmp_path, "golden_qa")
    assert snapshot.read_records(tmp_path / "missing", "golden_qa", missing_ok=True) == []
    with pytest.raises(CriticalValidationError):
        snapshot.read_records(tmp_path / "missing", "golden_qa")


# --------------------------------------------------------------------------- resolve_doc_state

T1, T2, T3 = "2026-11-01T08:00:00+00:00", "2026-11-02T08:00:00+00:00", "2026-11-03T08:00:00+00:00"


def up(updated_at: str, interval: str = "", content_hash: str = "h", doc_id: str = "a") -> DocEvent:
    return DocEvent.upsert({"doc_id": doc_id, "updated_at": updated_at, "content_hash": content_hash}, interval)


def down(deleted_at: str, interval: str = "", doc_id: str = "a") -> DocEvent:
    return DocEvent.tombstone({"doc_id": doc_id, "deleted_at": deleted_at}, interval)


def test_newest_upsert_wins_in_any_order() -> None:
    events = [up(T1, "2026-11-01", "h1"), up(T3, "2026-11-02", "h3"), up(T2, "2026-11-03", "h2")]
    for order in itertools.permutations(events):
        state = resolve_doc_state(order)["a"]
        assert state.winner.content_hash == "h3" and not state.deleted and state.document is state.winner


def test_tombstone_after_an_upsert_deletes_and_before_it_does_not() -> None:
    after = resolve_doc_state([up(T1, "2026-11-01"), down(T2, "2026-11-02")])["a"]
    assert after.deleted and after.document is not None and after.document.at < after.winner.at
    before = resolve_doc_state([down(T1, "2026-11-02"), up(T2, "2026-11-01")])["a"]
    assert not before.deleted and before.winner.at == snapshot.parse_timestamp(T2)


def test_on_the_same_timestamp_the_tombstone_wins_whatever_the_intervals() -> None:
    for events in ([up(T2, "2026-11-05"), down(T2, "2026-11-01")], [down(T2, "2026-11-01"), up(T2, "2026-11-05")]):
        assert resolve_doc_state(events)["a"].deleted


def test_upsert_ties_go_to_the_later_interval_then_the_larger_hash_then_the_first_seen() -> None:
    later = resolve_doc_state([up(T2, "2026-11-02", "zz"), up(T2, "2026-11-03", "aa")])["a"]
    assert later.winner.interval == "2026-11-03"
    same_drop = [up(T2, "2026-11-02", "h1"), up(T2, "2026-11-02", "h9"), up(T2, "2026-11-02", "h5")]
    for order in itertools.permutations(same_drop):
        assert resolve_doc_state(order)["a"].winner.content_hash == "h9"
    first = DocEvent.upsert({"doc_id": "a", "updated_at": T2, "content_hash": "h", "record_ref": "first"})
    second = DocEvent.upsert({"doc_id": "a", "updated_at": T2, "content_hash": "h", "record_ref": "second"})
    assert resolve_doc_state([first, second])["a"].winner.row["record_ref"] == "first"


def test_timestamps_compare_as_times_not_as_text() -> None:
    # "+02:00" is earlier in UTC than the text suggests.
    state = resolve_doc_state([up("2026-11-02T09:00:00+02:00", content_hash="early"),
                               up("2026-11-02T08:00:00+00:00", content_hash="late")])["a"]
    assert state.winner.content_hash == "late"


def test_documents_are_resolved_independently() -> None:
    states = resolve_doc_state([up(T1, doc_id="a"), down(T2, doc_id="b"), up(T3, doc_id="b")])
    assert sorted(states) == ["a", "b"] and not states["b"].deleted
    only_tombstone = resolve_doc_state([down(T1, doc_id="c")])["c"]
    assert only_tombstone.deleted and only_tombstone.document is None


# --------------------------------------------------------------------------- the contract is the only one


def _code_strings(path: Path) -> list[str]:
    """String literals of a module (f-string parts included), docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def _sources() -> list[Path]:
    files = [p for top in ("include", "plugins", "dags") for p in (REPO / top).rglob("*.py")]
    assert CONTRACT in files and len(files) > 20
    return files


def _naming(path: Path) -> list[str]:
    """String literals of ``path`` that name a file of the validated folder."""
    names = "|".join(re.escape(name) for name in snapshot.FILES.values())
    pattern = re.compile(rf"(?<![\w.-])(?:{names})(?![\w.-])")
    return [text for text in _code_strings(path) if pattern.search(text)]


def test_only_the_contract_names_the_validated_files() -> None:
    offenders = []
    for path in _sources():
        if path != CONTRACT:
            rel = str(path.relative_to(REPO))
            offenders += [(rel, text) for text in _naming(path) if (rel, text) not in NOT_THE_SNAPSHOT]
    assert offenders == []
    assert "golden_qa.jsonl" in _naming(CONTRACT)


def test_the_scan_sees_names_in_code_not_in_docstrings(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text('"""Reads documents.parquet."""\nPATH = f"{root}/qa.parquet"\nOTHER = "golden_qa.parquet"\n'
                      'def f():\n    """report.json"""\n    return "report.json"\n')
    assert sorted(_code_strings(sample)) == ["/qa.parquet", "golden_qa.parquet", "report.json"]
    assert sorted(_naming(sample)) == ["/qa.parquet", "report.json"]


def test_no_pickles_between_tasks() -> None:
    offenders = [str(p.relative_to(REPO)) for p in _sources() if re.search(r"^\s*import pickle|\bpickle\.", p.read_text(
        encoding="utf-8"), re.MULTILINE)]
    assert offenders == []
