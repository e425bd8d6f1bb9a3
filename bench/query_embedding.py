"""One query's embedding through ``search()``'s path, per ``embed.backend`` (issue 12 §2's query-embedding part).

:func:`query_embedding_backends` is also the side measurement of ``kb_query_scale`` (on its 100k-chunk table);
``python -m bench query_embedding [--quick]`` runs it alone, without building the table.
"""

from __future__ import annotations

import time
from typing import Any

from bench import common
from bench.corpus import distinct_queries

#: Queries per backend (``kb_query_scale`` passes its own count for its side measurement).
QUERIES = {"full": 300, "quick": 20}


def query_embedding_backends(queries: list[str], params: Any, settings: Any) -> dict[str, Any]:
    """Embedding one query through ``search()``'s own path (``_query_vectors``) for every ``embed.backend``.

    Torch runs at one intra-op thread per call; an exported backend (exported here when missing) runs on its
    one-thread query session (:func:`evertune.kb.embedding.load_query_embedder`). Queries are interleaved,
    rotating the order per query. A backend whose export or runtime is missing is reported as skipped.
    """
    from evertune.kb.retrieval import _query_vectors
    from evertune.models.embedder import ensure_backend_artifact

    runners: dict[str, Any] = {}
    skipped = {}
    for backend in ("torch", "onnx", "onnx-int8", "openvino"):
        backend_params = params.model_copy(update={"embed": params.embed.model_copy(update={"backend": backend})})
        try:
            ensure_backend_artifact(backend_params.embed, settings.models_dir)
            _query_vectors(queries[:1], backend_params)
        except Exception as exc:  # noqa: BLE001 (a side measurement: report, do not fail the run)
            skipped[backend] = f"{type(exc).__name__}: {exc}"
            continue
        runners[f"{backend}, 1 thread"] = lambda query, p=backend_params: _query_vectors([query], p)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for query in queries[:10]:
        for run_one in runners.values():
            run_one(query)
    for number, query in enumerate(queries):
        names = list(runners)
        for name in names[number % len(names):] + names[: number % len(names)]:
            start = time.perf_counter()
            runners[name](query)
            samples[name].append(time.perf_counter() - start)
    return {"samples": {name: common.latency_summary(values) for name, values in samples.items()}, "skipped": skipped}


def run(quick: bool = False) -> dict[str, Any]:
    """Run the side measurement alone, without building a table (see the module docstring)."""
    common.prepare_env()
    count = QUERIES["quick" if quick else "full"]
    common.banner(f"query_embedding: {count} queries per backend, search()'s path")
    load = [common.load_average()]
    params = common.load_bench_params()
    from evertune.settings import get_settings

    result = query_embedding_backends(distinct_queries(count, seed=3), params, get_settings())
    load.append(common.load_average())
    torch_p50 = result["samples"]["torch, 1 thread"]["p50_ms"]
    for name, row in result["samples"].items():
        print(f"{name:22s} p50 {row['p50_ms']:6.2f} ms  p95 {row['p95_ms']:6.2f} ms  "
              f"torch/this at p50 {torch_p50 / row['p50_ms']:.2f}x")  # fmt: skip
    for name, why in result["skipped"].items():
        print(f"{name}: skipped ({why})")
    print(f"load {' -> '.join(str(x) for x in load)}")
    record = {"benchmark": "query_embedding", "quick": quick, "machine": common.machine_info(), "load": load, **result}
    common.save_result("query_embedding", quick, record)
    return record
