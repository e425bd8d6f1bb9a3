"""The answer cache on a real LanceDB table: key normalisation, exact hits without generation, versions in the key,
invalidation by cited document and by version switch, semantic hits (off by default), concurrent writers, and a
broken cache never failing a request. The HTTP side uses the stand-in model of test_serving.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from test_serving import CHUNKS, FakeFollower, served

from evertune.config import load_params
from evertune.serving.answers import answer_batch
from evertune.serving.app import build_app
from evertune.serving.cache import AnswerCache, cache_key, invalidate_tombstoned, normalize_question

VERSIONS = {"model_name": "evertune-assistant", "model_version": 3, "kb_table": "kb_chunks__t", "kb_version": 7,
            "prompt_version": "rag-v1"}
CITED = [{"doc_id": "pricing", "title": "Plans", "url": "https://h.example/pricing", "chunk_ids": ["pricing#0"]}]


def config(**changes):
    return load_params().serve.cache.model_copy(update=changes)


def make_cache(tmp_path: Path, embed=None, **changes) -> AnswerCache:
    return AnswerCache(str(tmp_path / "lancedb"), config(**changes), embed)


def client_with(state, cache: AnswerCache | None) -> TestClient:
    searched: list[tuple[str, int]] = []

    def search(question: str, version: int) -> list[dict]:
        searched.append((question, version))
        return [dict(c) for c in CHUNKS]

    client = TestClient(build_app(FakeFollower(state), load_params().serve, search, cache),
                        raise_server_exceptions=False)
    client.searched = searched
    return client


@pytest.mark.parametrize(("raw", "normal"), [
    ("How much does the Pro plan cost?", "how much does the pro plan cost"),
    ("  HOW much\tdoes the\n Pro plan   cost ?!  ", "how much does the pro plan cost"),
    ("Ｐｒｏ ｐｌａｎ？", "pro plan"),  # NFKC: full-width letters and question mark
    ("Straße…", "strasse"),  # casefold; the ellipsis is punctuation
    ("What is C++", "what is c++"),  # symbols are not punctuation
    (".NET pricing.", ".net pricing"),  # only trailing punctuation goes
    ("¿Qué cuesta?", "¿qué cuesta"),
])
def test_questions_are_normalised_before_keying(raw: str, normal: str) -> None:
    assert normalize_question(raw) == normal
    assert cache_key(raw, VERSIONS) == cache_key(normal, VERSIONS)


def test_every_version_is_part_of_the_key() -> None:
    key = cache_key("price of pro", VERSIONS)
    assert len(key) == 64 and key != cache_key("price of pro plan", VERSIONS)
    for field, other in (("model_name", "x"), ("model_version", 4), ("kb_table", "kb2"), ("kb_version", 8),
                         ("prompt_version", "rag-v2")):
        assert cache_key("price of pro", {**VERSIONS, field: other}) != key, field


def test_semantic_hits_are_off_by_default() -> None:
    assert load_params().serve.cache.enabled is True
    assert load_params().serve.cache.semantic_threshold is None


def test_a_repeat_is_served_from_the_cache_without_generation(tmp_path: Path) -> None:
    state = served()
    cache = make_cache(tmp_path)
    client = client_with(state, cache)
    first = client.post("/ask", json={"question": "How much does the Pro plan cost?"}).json()
    assert first["cached"] is False and len(state.model.calls) == 1
    again = client.post("/ask", json={"question": "  how much does the pro plan cost  "}).json()
    assert again["cached"] is True
    assert len(state.model.calls) == 1 and len(client.searched) == 1, "a hit neither retrieves nor generates"
    assert again["answer"] == first["answer"] and again["citations"] == first["citations"]
    assert {k: again[k] for k in VERSIONS} == VERSIONS
    same = client.post("/ask", json={"question": "How much does the Pro plan cost?"}).json()
    assert same["cached"] is True and same["answer_id"] == first["answer_id"]
    # /invocations without client params or contexts shares the cache; with either it does not.
    scored = client.post("/invocations", json={"inputs": ["How much does the Pro plan cost?", "new?"]})
    assert scored.json()["predictions"][0] == first["answer"] and state.model.calls[-1][0] == ["new?"]
    client.post("/invocations", json={"inputs": ["new?"], "params": {"max_new_tokens": 5}})
    assert state.model.calls[-1][0] == ["new?"] and len(state.model.calls) == 3
    assert cache.count() == 2


def test_a_new_version_misses_and_drops_the_rows_of_versions_no_longer_served(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    old = served(kb_version=7)
    client_with(old, cache).post("/ask", json={"question": "Price?"})
    assert cache.get("price", old.versions()) is not None
    new = served(kb_version=8)
    client = client_with(new, cache)
    answer = client.post("/ask", json={"question": "Price?"}).json()
    assert answer["cached"] is False and answer["kb_version"] == 8 and len(new.model.calls) == 1
    assert cache.get("price", old.versions()) is None, "the old KB version's rows are gone"
    assert cache.count() == 1 and client.post("/ask", json={"question": "price"}).json()["cached"] is True


def test_invalidate_docs_removes_only_rows_citing_the_docs(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    assert cache.invalidate_docs(["pricing"]) == 0 and cache.table() is None, "no table: nothing, none created"
    docs = {"a?": ["pricing"], "b?": ["sync"], "c?": ["pricing", "sync"], "d?": [], "e?": ["export"]}
    for question, doc_ids in docs.items():
        cited = [{"doc_id": d, "title": d, "url": None, "chunk_ids": [f"{d}#0"]} for d in doc_ids]
        assert cache.put(question, VERSIONS, f"answer {question}", cited, "id")
    assert cache.invalidate_docs(["sync", "unknown"]) == 2
    assert {q for q in docs if cache.get(q, VERSIONS)} == {"a?", "d?", "e?"}
    assert cache.invalidate_docs(["pricing", "export"]) == 2 and cache.count() == 1


def test_tombstones_of_a_validated_drop_invalidate_after_publish(tmp_path: Path, evertune_home: Path) -> None:
    from evertune.settings import get_settings

    settings, params = get_settings(), load_params()
    folder = tmp_path / "validated"
    folder.mkdir()
    assert invalidate_tombstoned(folder, params, settings) == 0, "no tombstones file, no cache table"
    cache = AnswerCache(settings.lancedb_uri, params.serve.cache)
    cache.put("a?", VERSIONS, "A", CITED, "id")
    cache.put("b?", VERSIONS, "B", [{**CITED[0], "doc_id": "sync"}], "id")
    schema = pa.schema([("doc_id", pa.string()), ("deleted_at", pa.timestamp("us", tz="UTC")), ("reason", pa.string())])
    rows = [{"doc_id": "pricing", "deleted_at": None, "reason": "legal"}]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "tombstones.parquet")
    assert invalidate_tombstoned(folder, params, settings) == 1
    assert cache.get("a?", VERSIONS) is None and cache.get("b?", VERSIONS) is not None


def test_semantic_hits_need_the_threshold_and_the_same_versions(tmp_path: Path) -> None:
    vectors = {"price of pro": [1.0, 0.0, 0.0], "cost of the pro plan": [0.96, 0.28, 0.0], "sync": [0.0, 0.0, 1.0]}

    def embed(question: str) -> list[float]:
        return vectors[normalize_question(question)]

    off = make_cache(tmp_path / "off")
    off.put("price of pro", VERSIONS, "Ten dollars.", CITED, "id")
    assert off.get("cost of the pro plan", VERSIONS) is None, "exact hits only by default"
    cache = make_cache(tmp_path / "on", embed, semantic_threshold=0.9)
    cache.put("price of pro", VERSIONS, "Ten dollars.", CITED, "id")
    hit = cache.get("Cost of the Pro plan?", VERSIONS)
    assert hit is not None and hit.match == "semantic" and hit.similarity == pytest.approx(0.96, abs=1e-3)
    assert hit.answer == "Ten dollars." and hit.citations == CITED
    assert cache.get("sync", VERSIONS) is None, "below the threshold"
    assert cache.get("cost of the pro plan", {**VERSIONS, "kb_version": 8}) is None, "other versions never match"
    with pytest.raises(ValueError, match="embed"):
        make_cache(tmp_path / "x", None, semantic_threshold=0.9)


def test_concurrent_puts_and_gets_neither_error_nor_lose_rows(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, compact_every=16)
    errors: list[BaseException] = []
    written: list[bool] = []

    def writer(worker: int) -> None:
        try:
            for i in range(15):
                written.append(cache.put(f"q{i % 10}?", VERSIONS, f"answer {i % 10}", CITED, "id"))
                written.append(cache.put(f"w{worker}-{i}?", VERSIONS, "mine", CITED, "id"))
                cache.get(f"q{(i + 1) % 10}", VERSIONS)
        except BaseException as exc:  # noqa: BLE001 -- collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and len(written) == 180 and all(written)
    assert cache.count() == 10 + 6 * 15, "one row per key: merge_insert keeps the first write"
    assert all(cache.get(f"q{i}", VERSIONS).answer == f"answer {i}" for i in range(10))


def test_duplicates_in_flight_generate_once(tmp_path: Path) -> None:
    state = served()
    slow = state.model.predict

    def predict(frame, params=None):
        time.sleep(0.3)
        return slow(frame, params)

    state.model.predict = predict
    cache = make_cache(tmp_path)
    results: list[list[bool]] = []
    threads = [threading.Thread(target=lambda: results.append(
        answer_batch(state, ["Price of Pro?"], None, lambda q, v: [dict(CHUNKS[0])], cache=cache).cached))
        for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(state.model.calls) == 1 and sorted(results) == [[False], [True], [True]]


def test_max_rows_keeps_the_newest(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, max_rows=10, compact_every=5)
    for i in range(20):
        cache.put(f"q{i}", VERSIONS, "a", CITED, "id", created=f"2026-12-01T00:00:{i:02d}")
    assert cache.count() == 10 and cache.get("q9", VERSIONS) is None and cache.get("q10", VERSIONS) is not None


def test_a_broken_cache_is_a_miss_and_never_fails_the_request(tmp_path: Path, caplog) -> None:
    cache = make_cache(tmp_path)

    def broken(create: bool = False):
        raise OSError("disk gone")

    cache.table = broken
    state = served()
    answer = client_with(state, cache).post("/ask", json={"question": "Price?"})
    assert answer.status_code == 200 and answer.json()["cached"] is False and len(state.model.calls) == 1
    assert "answer cache read failed" in caplog.text and "answer cache write failed" in caplog.text


def test_a_deletion_by_another_process_reaches_the_memoised_hits(tmp_path: Path) -> None:
    from evertune.serving import cache as cache_module

    server, other = make_cache(tmp_path), make_cache(tmp_path)  # two handles: a server and an Airflow task
    server.put("a?", VERSIONS, "A", CITED, "id")
    server.put("b?", VERSIONS, "B", [{**CITED[0], "doc_id": "sync"}], "id")
    assert server.get("a?", VERSIONS) is not None and server.get("a?", VERSIONS) is server.get("a", VERSIONS)
    assert server.peek("A", VERSIONS) is server.get("a", VERSIONS), "the memo answers without I/O"
    assert other.invalidate_docs(["pricing"]) == 1
    time.sleep(cache_module.READ_CONSISTENCY_SECONDS + 0.2)
    assert server.peek("a?", VERSIONS) is None, "the check is due: peek leaves it to get"
    assert server.get("a?", VERSIONS) is None, "the memo is dropped once the foreign write is seen"
    assert server.get("b?", VERSIONS).answer == "B"


def test_the_benchmark_log_has_the_distinct_share_and_repeats_in_other_spellings() -> None:
    import sys

    repo = Path(__file__).resolve().parents[2]
    if str(repo) not in sys.path:  # bench/ is a top-level package of the repository, not installed
        sys.path.insert(0, str(repo))
    from bench.answer_cache import question_log

    log, distinct = question_log(100, 0.4)
    assert len(log) == 100 and len(distinct) == 40 and question_log(100, 0.4) == (log, distinct)
    assert {normalize_question(q) for q in log} == {normalize_question(q) for q in distinct}, "repeats only"
    assert len(set(log)) > len(distinct), "some repeats are spelled differently"


def test_an_answer_of_versions_no_longer_served_is_not_stored(tmp_path: Path) -> None:
    now = {"versions": {**VERSIONS, "model_version": 4}}
    cache = AnswerCache(str(tmp_path / "lancedb"), config(), serving=lambda: now["versions"])
    assert cache.put("a?", now["versions"], "new", CITED, "id")
    assert not cache.put("b?", VERSIONS, "old, in flight during the switch", CITED, "id")
    assert cache.get("a?", now["versions"]).answer == "new" and cache.count() == 1


def test_rows_with_a_null_kb_version_leave_on_a_switch_too(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    cache.put("a?", {**VERSIONS, "kb_version": None}, "no KB", [], "id")
    assert cache.get("a?", {**VERSIONS, "kb_version": None}).answer == "no KB"
    cache.put("a?", VERSIONS, "with KB", CITED, "id")
    assert cache.count() == 1 and cache.get("a?", VERSIONS).answer == "with KB"
