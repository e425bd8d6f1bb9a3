"""The answer service against a real MLflow registry (SQLite), a real published LanceDB KB and the tiny model: it
starts with no champion (409, ``/ping`` healthy), picks up the champion, cites the published KB, serves a repeat
from the answer cache (``cached: true``), follows the alias to a new version with requests in flight (none
failing) and a new publish; ``evertune serve`` starts without the virtualenv's ``bin/`` on ``PATH``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evertune.config import Params, load_params, parse_params
from evertune.settings import get_settings

pytestmark = pytest.mark.slow

REFRESH = 0.5
ARTICLES = {
    "plans": ("Plans and pricing", "The Pro plan costs ten dollars per user per month. Annual billing saves money."),
    "sync": ("Offline sync", "Notes sync when you reconnect. Sync pauses while battery saver is on."),
    "export": ("Exporting notes", "Export a notebook as Markdown, PDF or HTML from the notebook menu."),
}


def serving_params(model_dir: Path) -> Params:
    data = load_params().to_dict()
    data["base_model"] = {"name_or_path": str(model_dir), "revision": None, "sha256": None}
    data["evaluate"].update({"max_new_tokens": 4})
    data["register"]["pyfunc_retrieval"] = "kb"
    data["retrieval"].update({"k": 2, "min_recall_at_k": 0.0, "min_mrr": 0.0})
    data["serve"]["refresh_seconds"] = REFRESH
    return parse_params(data)


def publish_kb(folder: Path, day: int, params: Params, price: str = "ten") -> int:
    """Sync a drop of :data:`ARTICLES` (the price text varied) into LanceDB and publish it; the published version."""
    import hashlib
    import json

    from evertune.kb.index import sync_interval
    from evertune.kb.publish import publish
    from evertune.kb.retrieval import evaluate_retrieval

    rows = []
    for doc_id, (title, text) in ARTICLES.items():
        text = text.replace("ten dollars", f"{price} dollars")
        url = f"https://help.nimbusnotes.example/{doc_id}"
        digest = hashlib.sha256(json.dumps([title, text, url]).encode()).hexdigest()
        rows.append({"doc_id": doc_id, "title": title, "text": text, "source": "help-center", "url": url,
                     "updated_at": f"2026-11-{day:02d}T08:00:00+00:00", "content_hash": digest, "metadata": "{}",
                     "record_ref": f"docs/{doc_id}.md"})
    folder.mkdir(parents=True)
    columns = ["doc_id", "title", "text", "source", "url", "updated_at", "content_hash", "metadata", "record_ref"]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string()) for c in columns])),
                   folder / "documents.parquet")
    golden = folder / "golden_retrieval.jsonl"
    golden.write_text(json.dumps({"query_id": "q1", "query": "price of pro", "relevant_doc_ids": ["plans"]}) + "\n")
    settings = get_settings()
    result = sync_interval(folder, f"2026-11-{day:02d}", params, settings)
    evaluation = evaluate_retrieval(result.table_name, result.version, golden, params, settings)
    assert publish(result.table_name, result.version, evaluation, params, settings)["version"] == result.version
    return result.version


def register_version(params: Params, model_dir: Path) -> int:
    import mlflow

    from evertune.tuning.pyfunc_model import log_answer_model
    from evertune.tuning.tracking import configure_mlflow

    configure_mlflow(params)
    with mlflow.start_run():
        info = log_answer_model(model_dir, params)
    return int(mlflow.register_model(info.model_uri, params.registry.model_name).version)


def set_champion(params: Params, version: int) -> None:
    from evertune.tuning.tracking import mlflow_client

    mlflow_client().set_registered_model_alias(params.registry.model_name, "champion", str(version))


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_follows_the_champion_with_requests_in_flight(evertune_home: Path, tiny_model_dir: Path, port_picker,
                                                      tmp_path: Path) -> None:
    from evertune.kb.retrieval import search
    from evertune.serving.server import build_service, running

    params = serving_params(tiny_model_dir)
    service = build_service(params, get_settings())
    [port] = port_picker(1)
    with running(service, port=port) as url, httpx.Client(base_url=url, timeout=60) as http:
        assert http.get("/ping").status_code == 200
        wait_for(lambda: service.follower.last_poll, 30, "the first poll")
        early = http.post("/ask", json={"question": "How much does the Pro plan cost?"})
        assert early.status_code == 409 and "no champion registered yet" in early.json()["message"]

        kb_first = publish_kb(tmp_path / "day1", 1, params)
        first = register_version(params, tiny_model_dir)
        set_champion(params, first)
        moved = time.monotonic()
        wait_for(lambda: http.get("/info").json()["ready"], 60, "the first champion")
        print(f"\n[serve] first champion served {time.monotonic() - moved:.2f} s after the alias was set")
        ask = http.post("/ask", json={"question": "How much does the Pro plan cost?"})
        assert ask.status_code == 200, ask.text
        body = ask.json()
        from evertune.tuning.prompt_registry import ensure_registered

        # the alias was set by hand (no promote): no prompt production alias, the model's own prompt version
        assert body["model_version"] == first and body["prompt_version"] == ensure_registered(params).uri
        assert body["kb_version"] == kb_first and len(body["answer_id"]) == 32
        hits = search("How much does the Pro plan cost?", params, get_settings(), version_or_tag=kb_first)
        assert body["citations"] == [
            {"doc_id": h["doc_id"], "title": h["title"], "url": h["url"], "chunk_ids": [h["chunk_id"]]} for h in hits]
        assert body["citations"][0]["doc_id"] == "plans"
        started = time.perf_counter()
        repeat = http.post("/ask", json={"question": "  how much does the Pro plan cost "}).json()
        print(f"[serve] a repeat from the answer cache: {(time.perf_counter() - started) * 1000:.1f} ms")
        assert body["cached"] is False and repeat["cached"] is True, "the repeat is served from the cache"
        assert (repeat["answer"], repeat["citations"], repeat["kb_version"]) == (body["answer"], body["citations"],
                                                                                 kb_first)
        started = time.perf_counter()
        for i in range(5):
            http.post("/ask", json={"question": f"How do I reset my password {i}?"}).raise_for_status()
        print(f"[serve] one /ask on the tiny model: {(time.perf_counter() - started) / 5 * 1000:.0f} ms")
        for form in ({"inputs": ["How much does the Pro plan cost?"]}, {"inputs": "Can I sync offline?"},
                     {"dataframe_records": [{"question": "a?"}]},
                     {"dataframe_split": {"columns": ["question"], "data": [["a?"], ["b?"]]}}):
            scored = http.post("/invocations", json=form)
            assert scored.status_code == 200, scored.text
            assert all(isinstance(p, str) for p in scored.json()["predictions"])

        second = register_version(params, tiny_model_dir)
        results: list[tuple[int, int, int]] = []  # (worker, status, model_version)
        stop = threading.Event()

        def worker(index: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as own:
                while not stop.is_set():  # a new question each time: generations in flight, not cache hits
                    answer = own.post("/ask", json={"question": f"Question {index} {len(results)}?"})
                    results.append((index, answer.status_code, answer.json().get("model_version", -1)))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(results) >= 6, 60, "requests on the first version")
        set_champion(params, second)
        moved = time.monotonic()
        wait_for(lambda: any(v == second for _, _, v in results), 60, "a request on the new champion")
        switched = time.monotonic() - moved
        count = len(results)
        wait_for(lambda: len(results) >= count + 6, 60, "requests after the switch")
        stop.set()
        for thread in threads:
            thread.join(60)

        kb_second = publish_kb(tmp_path / "day2", 2, params, price="twelve")
        assert kb_second > kb_first
        published = time.monotonic()
        wait_for(lambda: http.post("/ask", json={"question": "Price of Pro?"}).json()["kb_version"] == kb_second,
                 30, "the new publish")
        print(f"[serve] new KB version served {time.monotonic() - published:.2f} s after the publish")

    load = service.follower.peek().load_seconds
    print(f"[serve] switch seen {switched:.2f} s after the alias moved (refresh {REFRESH} s, load {load:.2f} s), "
          f"{len(results)} requests in flight around it")
    assert {status for _, status, _ in results} == {200}, "no request fails during a switch"
    for index in range(3):
        versions = [v for i, _, v in results if i == index]
        assert versions == sorted(versions) and set(versions) <= {first, second}, versions
    assert switched <= REFRESH + load + 5.0


def test_cli_serves_without_the_virtualenv_on_path(evertune_home: Path, port_picker) -> None:
    [port] = port_picker(1)
    repo = Path(__file__).resolve().parents[2]
    env = {key: value for key, value in os.environ.items() if key not in ("PATH", "VIRTUAL_ENV")}
    env.update(PATH="/usr/bin:/bin", PYTHONPATH=os.pathsep.join([str(repo / "include"), str(repo / "plugins")]))
    proc = subprocess.Popen([sys.executable, "-m", "evertune", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def pinged() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"evertune serve exited {proc.returncode}:\n{proc.stdout.read()}")
            try:
                return httpx.get(f"{url}/ping", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(pinged, 90, "evertune serve to answer /ping")
        info = wait_for(lambda: (i := httpx.get(f"{url}/info").json())["last_poll"] and i, 30, "a poll")
        assert info["ready"] is False and "no champion registered yet" in info["reason"]
        answer = httpx.post(f"{url}/ask", json={"question": "How much does the Pro plan cost?"}, timeout=30)
        assert answer.status_code == 409, answer.text
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    assert "Uvicorn running on http://127.0.0.1" in output
