"""The answer cache against a real running answer service: hit rate, hit vs miss latency, and a 200-request burst.

What runs: a synthetic help-center KB (``bench.corpus``) synced and published into LanceDB, the base model
registered in a local MLflow registry (SQLite) as the ``champion``, and the answer service as its own process
(``python -m evertune serve``, as the stack runs it) on a free localhost port; the client runs in this process.
The model is ``params.yaml``'s base model (``bootstrap:smollm2-135m-instruct``, converted under
``EVERTUNE_MODELS_DIR``), or the tiny random model with ``--quick`` or ``EVERTUNE_BENCH_CACHE_MODEL=tiny``.
Generation uses the gate's ``evaluate.*`` settings as registered (``max_new_tokens``, ``max_context_chars``).

Measured in one run:

1. **Replay**: a seeded question log (``N`` requests, ``DISTINCT_SHARE`` of them distinct questions, repeats
   drawn with a skewed popularity and written with other case / spacing / trailing punctuation), sent to
   ``POST /ask`` one request at a time. Hit rate (``cached: true``) against the best possible (1 - distinct
   share); client-side latency of hits and misses (p50/p95) and their ratio; the cache's own lookup
   (``AnswerCache.get`` in-process) for the HTTP overhead.
2. **Burst**: ``BURST`` requests sent at once (one connection each; every one bounded by ``REQUEST_TIMEOUT``,
   the whole burst by ``BURST_DEADLINE``): questions of the replay (cached) plus ``NEW`` new questions asked
   twice each (misses, and a duplicate of each in flight). Errors: any status but 200 (a 429, 503 or 504 counts)
   or a transport error. Latency p50/p95 of hits and misses under the burst, wall time, generations.

The machine's 1-minute load average is recorded before and after each part.

``python -m bench answer_cache`` (``--quick``: tiny model, a short log). Sizes: ``EVERTUNE_BENCH_CACHE_REQUESTS``
(log length, default :data:`N_REQUESTS`), ``EVERTUNE_BENCH_CACHE_NEW`` (new questions in the burst, default
:data:`NEW`); ``EVERTUNE_BENCH_SERVE_THREADS`` sets the server's ``OMP_NUM_THREADS`` (default: torch's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from bench.common import (
    REPO_ROOT,
    banner,
    load_average,
    machine_info,
    median,
    percentile,
    prepare_env,
    save_result,
    verdict,
)

DISTINCT_SHARE = 0.4
N_REQUESTS = 100
BURST = 200
NEW = 10
REQUEST_TIMEOUT = 120.0
BURST_DEADLINE = 240.0
N_DOCS = 120
HIT_TARGET_MS = 5.0
MISS_TARGET_MS = 1500.0


def _variant(question: str, rng: random.Random) -> str:
    """The same question as another user types it (the cache's normalisation makes it the same key)."""
    forms = (question, question.capitalize(), question.upper(), f"  {question}?", f"{question} ?", f"{question}!!",
             question.replace(" ", "  "))
    return rng.choice(forms)


def question_log(n: int, share: float, seed: int = 11) -> tuple[list[str], list[str]]:
    """``n`` questions, ``round(n * share)`` distinct: each distinct one once, repeats by popularity (Zipf 1.1).

    Returns:
        ``(log, distinct)``.
    """
    from bench.corpus import make_queries

    want = max(1, round(n * share))
    distinct = list(dict.fromkeys(q.rstrip("?") for q in make_queries(want * 4, seed=seed)))[:want]
    rng = random.Random(f"answer-cache-log:{seed}")
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(len(distinct))]
    repeats = rng.choices(distinct, weights=weights, k=n - len(distinct))
    log = distinct + [_variant(q, rng) for q in repeats]
    rng.shuffle(log)
    return log, distinct


def _stats(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "p50_ms": round(median(ms), 2), "p95_ms": round(percentile(ms, 95), 2),
            "max_ms": round(max(ms), 2) if ms else float("nan")}


def _build_state(model_dir: Path, params: Any, settings: Any, root: Path) -> dict[str, Any]:
    """Sync and publish the KB; register the model and point ``champion`` at it."""
    import mlflow

    from bench.corpus import make_corpus, write_validated_folder
    from bench.kb_query import _publish
    from evertune.kb.index import sync_interval
    from evertune.tuning.pyfunc_model import log_answer_model
    from evertune.tuning.tracking import configure_mlflow, mlflow_client

    started = time.perf_counter()
    folder = write_validated_folder(root / "validated", make_corpus(N_DOCS, min_words=40, max_words=80))
    synced = sync_interval(folder, "2026-11-01", params, settings)
    published = _publish({"table_name": synced.table_name, "version": synced.version}, params, settings, root, 20)
    kb_seconds = time.perf_counter() - started
    started = time.perf_counter()
    configure_mlflow(params, settings)
    with mlflow.start_run():
        info = log_answer_model(model_dir, params, settings=settings)
    version = mlflow.register_model(info.model_uri, params.registry.model_name).version
    mlflow_client(settings).set_registered_model_alias(params.registry.model_name, "champion", str(version))
    return {"kb": {**published, "rows": synced.rows_total, "seconds": round(kb_seconds, 1)},
            "model_version": int(version), "register_seconds": round(time.perf_counter() - started, 1)}


def _replay(http: Any, log: list[str]) -> dict[str, Any]:
    hits, misses, wrong = [], [], 0
    first_answer: dict[str, str] = {}
    from evertune.serving.cache import normalize_question

    for question in log:
        started = time.perf_counter()
        answer = http.post("/ask", json={"question": question})
        elapsed = time.perf_counter() - started
        answer.raise_for_status()
        body = answer.json()
        (hits if body["cached"] else misses).append(elapsed)
        key = normalize_question(question)
        wrong += first_answer.setdefault(key, body["answer"]) != body["answer"]
    return {"hits": _stats(hits), "misses": _stats(misses), "hit_rate": round(len(hits) / len(log), 4),
            "best_hit_rate": round(1 - len(first_answer) / len(log), 4), "answers_differing_from_first": wrong}


async def _burst(url: str, questions: list[str]) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=len(questions), max_keepalive_connections=len(questions))
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT, limits=limits) as client:

        async def one(question: str) -> tuple[int | str, float, bool | None]:
            started = time.perf_counter()
            try:
                answer = await client.post("/ask", json={"question": question})
                cached = answer.json().get("cached") if answer.status_code == 200 else None
                return answer.status_code, time.perf_counter() - started, cached
            except httpx.HTTPError as exc:
                return type(exc).__name__, time.perf_counter() - started, None

        started = time.perf_counter()
        results = await asyncio.wait_for(asyncio.gather(*(one(q) for q in questions)), BURST_DEADLINE)
        wall = time.perf_counter() - started
    statuses: dict[str, int] = {}
    for status, _, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"requests": len(questions), "wall_s": round(wall, 2), "statuses": statuses,
            "errors": sum(n for status, n in statuses.items() if status != "200"),
            "hits": _stats([t for s, t, c in results if s == 200 and c]),
            "misses": _stats([t for s, t, c in results if s == 200 and c is False]),
            "all": _stats([t for _, t, _ in results])}


def _model_dir(quick: bool, params: Any, settings: Any) -> tuple[Path, str]:
    from evertune.models.bootstrap import resolve_base_model
    from evertune.models.tiny import ensure_tiny_model

    if quick or os.environ.get("EVERTUNE_BENCH_CACHE_MODEL") == "tiny":
        return ensure_tiny_model(settings.models_dir), "tiny-random-llama"
    return Path(resolve_base_model(params.base_model, settings)), str(params.base_model.name_or_path)


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and print; writes ``bench/results/answer_cache[-quick].json``."""
    import httpx

    from bench.common import load_bench_params, work_root
    from evertune.settings import get_settings

    prepare_env()
    root = work_root() / "answer_cache"
    shutil.rmtree(root, ignore_errors=True)
    os.environ["EVERTUNE_HOME"] = str(root / "home")
    settings = get_settings()
    settings.ensure_local_dirs()
    params = load_bench_params(register={"pyfunc_retrieval": "kb"},
                               retrieval={"min_recall_at_k": 0.0, "min_mrr": 0.0})
    model_dir, model_name = _model_dir(quick, params, settings)
    n = 40 if quick else int(os.environ.get("EVERTUNE_BENCH_CACHE_REQUESTS", N_REQUESTS))
    new = int(os.environ.get("EVERTUNE_BENCH_CACHE_NEW", NEW))
    log, distinct = question_log(n, DISTINCT_SHARE)
    result: dict[str, Any] = {"machine": machine_info(), "model": model_name, "quick": quick,
                              "serve_threads": os.environ.get("EVERTUNE_BENCH_SERVE_THREADS"),
                              "evaluate": {k: getattr(params.evaluate, k) for k in ("max_new_tokens",
                                                                                    "max_context_chars")},
                              "log": {"requests": len(log), "distinct": len(distinct),
                                      "distinct_share": round(len(distinct) / len(log), 3)}}
    banner(f"answer_cache: {model_name}, log of {len(log)} ({len(distinct)} distinct)")
    result["state"] = _build_state(model_dir, params, settings, root)
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.to_dict()))
    load_before = load_average()
    with (serving(params_file, root / "serve.log") as (url, proc),
          httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as http):
        result["served"] = _wait_ready(http, proc)
        result["warm_up_s"] = _warm_up(http)
        result["replay"] = {**_replay(http, log), "load_before": load_before, "load_after": load_average()}
        result["lookup_lancedb"] = _lookups(params, settings, result["served"], distinct)
        rng = random.Random("answer-cache-burst")
        fresh = [f"{q} on the mobile widget" for q in question_log(new, 1.0, seed=23)[1]]
        burst = rng.choices(log, k=BURST - 2 * len(fresh)) + fresh + fresh
        rng.shuffle(burst)
        load_before = load_average()
        result["burst"] = {**asyncio.run(_burst(url, burst)), "new_questions": len(fresh),
                           "load_before": load_before, "load_after": load_average()}
    from evertune.serving.cache import AnswerCache

    result["cache_rows"] = AnswerCache(settings.lancedb_uri, params.serve.cache).count()
    result["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    _print(result)
    save_result("answer_cache", quick, result)
    return result


@contextlib.contextmanager
def serving(params_file: Path, log_file: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m evertune serve`` on a free port (this environment, ``EVERTUNE_PARAMS=params_file``); yields
    its URL and process. Stopped with SIGINT (then killed) when the block ends."""
    port = _free_port()
    env = {**os.environ, "EVERTUNE_PARAMS": str(params_file),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "include"), str(REPO_ROOT / "plugins")])}
    threads = os.environ.get("EVERTUNE_BENCH_SERVE_THREADS")
    if threads:  # torch's intra-op threads in the server (OpenMP teams stall on an oversubscribed host)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    with log_file.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "evertune", "serve", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_ready(http: Any, proc: subprocess.Popen, timeout: float = 300.0) -> dict[str, Any]:
    """Wait for ``/info`` to say the champion is loaded; returns it."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the answer service exited with {proc.returncode} (see serve.log)")
        try:
            info = http.get("/info").json()
            if info.get("ready"):
                return info
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the answer service did not load the champion in time (see serve.log)")


def _warm_up(http: Any, timeout: float = 600.0) -> float:
    """Ask one question until it is answered (the first request also loads the query embedder; on a busy host
    it can outlast the server's 60 s request timeout, while its generation finishes and is cached); seconds."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if http.post("/ask", json={"question": "warm-up question about the web clipper"}).status_code == 200:
            return round(time.monotonic() - started, 1)
    raise RuntimeError("the warm-up question was never answered (see serve.log)")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _lookups(params: Any, settings: Any, served: dict[str, Any], distinct: list[str]) -> dict[str, float]:
    """A LanceDB lookup per distinct question from a fresh :class:`AnswerCache` in this process (no HTTP, no
    memo yet: each question once), for comparison with the server's memoised hits."""
    from evertune.serving.cache import VERSION_FIELDS, AnswerCache

    cache = AnswerCache(settings.lancedb_uri, params.serve.cache)
    versions = {name: served[name] for name in VERSION_FIELDS}
    times = []
    for question in distinct:
        started = time.perf_counter()
        assert cache.get(question, versions) is not None, question
        times.append(time.perf_counter() - started)
    return _stats(times)


def _print(result: dict[str, Any]) -> None:
    replay, burst, lookup = result["replay"], result["burst"], result["lookup_lancedb"]
    hit, miss = replay["hits"], replay["misses"]
    print(f"model {result['model']}, evaluate {result['evaluate']}")
    print(f"replay: {result['log']['requests']} requests, {result['log']['distinct']} distinct; hit rate "
          f"{replay['hit_rate']:.1%} (best possible {replay['best_hit_rate']:.1%}); "
          f"{replay['answers_differing_from_first']} hits differ from the first answer")
    print(f"  hit  p50 {hit['p50_ms']:.1f} ms  p95 {hit['p95_ms']:.1f} ms  (target p50 <= {HIT_TARGET_MS} ms: "
          f"{verdict(hit['p50_ms'] <= HIT_TARGET_MS)}); LanceDB lookup (no memo, no HTTP) p50 {lookup['p50_ms']:.1f} ms")
    print(f"  miss p50 {miss['p50_ms']:.0f} ms  p95 {miss['p95_ms']:.0f} ms  (target p50 <= {MISS_TARGET_MS:.0f} ms: "
          f"{verdict(miss['p50_ms'] <= MISS_TARGET_MS)}); miss/hit p50 {miss['p50_ms'] / hit['p50_ms']:.0f}x")
    print(f"  load average {replay['load_before']} -> {replay['load_after']}")
    print(f"burst: {burst['requests']} at once ({burst['new_questions']} new questions, each twice) in "
          f"{burst['wall_s']} s; statuses {burst['statuses']}; errors {burst['errors']} "
          f"({verdict(burst['errors'] == 0)} 0 errors)")
    print(f"  hits {burst['hits']['n']}: p50 {burst['hits']['p50_ms']:.0f} ms p95 {burst['hits']['p95_ms']:.0f} ms; "
          f"generations {burst['misses']['n']}: p50 {burst['misses']['p50_ms']:.0f} ms "
          f"p95 {burst['misses']['p95_ms']:.0f} ms; load average {burst['load_before']} -> {burst['load_after']}")
