"""Query latency of the published knowledge base: hybrid (the default), vector-only and full-text-only.

Uses the table ``kb_incremental`` built (10,000 documents; it runs that benchmark first when its table is
missing), publishes its latest version through the real gate (:func:`evertune.kb.retrieval.evaluate_retrieval`
+ :func:`evertune.kb.publish.publish`, golden queries drawn from the corpus) and then measures, per query:

* ``search(...)`` end to end, as a reader calls it: open the table at the ``production`` tag, check its
  identity, embed the query, run the LanceDB query (modes interleaved per query, order rotated);
* the two parts alone: embedding one query, and the LanceDB query on an already-opened table.

200+ queries after a warm-up. Then the same LanceDB-only measurement after ``table.optimize()``: the nightly
sync creates the full-text index on the empty table and folds new rows into it only every
``index.optimize_every_n_writes`` writes, so a freshly built table answers full-text queries by scanning
unindexed rows; the second measurement shows what indexing them buys.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from bench import common

FULL = {"n_queries": 240, "warmup": 20, "golden": 60}
QUICK = {"n_queries": 40, "warmup": 5, "golden": 20}
MODES = ("hybrid", "vector", "fts")


def _golden_file(path: Path, table: Any, n: int) -> Path:
    """Golden queries: the first two sentences of ``n`` seeded documents, each relevant to its document."""
    rows = table.search().select(["doc_id", "body", "ordinal"]).where("ordinal = 0").limit(None).to_list()
    rows.sort(key=lambda row: row["doc_id"])
    picked = random.Random("evertune-bench-golden").sample(rows, min(n, len(rows)))
    with path.open("w") as handle:
        for number, row in enumerate(picked):
            query = " ".join(row["body"].split(". ")[:2])
            handle.write(json.dumps({"query_id": f"g{number}", "query": query, "relevant_doc_ids": [row["doc_id"]]}))
            handle.write("\n")
    return path


def _publish(state: dict[str, Any], params: Any, settings: Any, root: Path, n_golden: int) -> dict[str, Any]:
    from evertune.errors import QualityGateFailed
    from evertune.kb.index import connect, open_table
    from evertune.kb.publish import publish
    from evertune.kb.retrieval import evaluate_retrieval

    table = open_table(connect(settings), state["table_name"])
    table.checkout(state["version"])
    golden = _golden_file(root / "golden_retrieval.jsonl", table, n_golden)
    evaluation = evaluate_retrieval(state["table_name"], state["version"], golden, params, settings)
    candidate = evaluation["candidate"]
    try:
        outcome = publish(state["table_name"], state["version"], evaluation, params, settings)
        how = "publish() through the retrieval gate"
    except QualityGateFailed as exc:
        # The synthetic golden set is not the point here: pin the version directly and say so.
        table.checkout_latest()
        table.tags.create(params.index.publish_tag, state["version"])
        outcome = {"version": state["version"], "gate_reasons": exc.reasons}
        how = "tagged directly (gate refused the synthetic golden set)"
    print(
        f"published v{outcome['version']} via {how}; golden recall@{evaluation['k']} {candidate['recall_at_k']:.3f}, "
        f"MRR {candidate['mrr']:.3f} over {candidate['n_queries']} queries"
    )
    return {"how": how, "version": state["version"], "recall_at_k": candidate["recall_at_k"],
            "mrr": candidate["mrr"], "n_golden": candidate["n_queries"]}  # fmt: skip


def _fts_coverage(table: Any) -> dict[str, int]:
    for index in table.list_indices():
        if index.index_type == "FTS":
            stats = table.index_stats(index.name)
            return {"indexed": stats.num_indexed_rows, "unindexed": stats.num_unindexed_rows}
    return {"indexed": 0, "unindexed": table.count_rows()}


def _summarise(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        name: {
            "p50_ms": 1000 * common.percentile(values, 50),
            "p95_ms": 1000 * common.percentile(values, 95),
            "mean_ms": 1000 * sum(values) / len(values),
            "n": len(values),
        }
        for name, values in samples.items()
    }


def _lance_only(table: Any, queries: list[str], vectors: list[Any], k: int, weight: float) -> dict[str, list[float]]:
    from evertune.kb.retrieval import _run_query

    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    for number, (query, vector) in enumerate(zip(queries, vectors, strict=True)):
        shift = number % len(MODES)
        for mode in MODES[shift:] + MODES[:shift]:
            start = time.perf_counter()
            _run_query(table, query, vector, mode, k, weight)
            samples[mode].append(time.perf_counter() - start)
    return samples


def _usable_state(quick: bool, params: Any) -> dict[str, Any]:
    """The table ``kb_incremental`` left, built first when it is missing or was built with other params."""
    from bench import kb_incremental

    state = kb_incremental.read_state(quick)
    if state is None or state["params_hash"] != params.section_hash("chunk", "embed", "index"):
        print("no usable table from kb_incremental: running it first to build one")
        kb_incremental.run(quick)
        state = kb_incremental.read_state(quick)
    return state


def _end_to_end(measured: list[str], params: Any, settings: Any, k: int) -> tuple[dict, dict, tuple[int, ...]]:
    """``search()`` and query embedding per query, modes interleaved with a rotating order.

    Each query also runs with torch limited to one intra-op thread (on a busy 2-core machine, 2 threads stall
    on each other; see docs/benchmarks.md).

    Returns:
        Samples (seconds) keyed ``<mode>@<threads>t`` and ``embed@<threads>t``, and the thread settings tried
        (the default first).

    Raises:
        RuntimeError: A search returned nothing.
    """
    import torch

    from evertune.kb.retrieval import _query_vectors, search

    default_threads = torch.get_num_threads()
    thread_settings = (default_threads, 1) if default_threads > 1 else (default_threads,)
    e2e: dict[str, list[float]] = {f"{mode}@{t}t": [] for t in thread_settings for mode in MODES}
    embed: dict[str, list[float]] = {f"embed@{t}t": [] for t in thread_settings}
    try:
        for number, query in enumerate(measured):
            shift = number % len(MODES)
            for threads in thread_settings if number % 2 == 0 else thread_settings[::-1]:
                torch.set_num_threads(threads)
                for mode in MODES[shift:] + MODES[:shift]:
                    start = time.perf_counter()
                    hits = search(query, params, settings, k=k, mode=mode)
                    e2e[f"{mode}@{threads}t"].append(time.perf_counter() - start)
                    if not hits:
                        raise RuntimeError(f"{mode} search returned nothing for {query!r}")
                start = time.perf_counter()
                _query_vectors([query], params)
                embed[f"embed@{threads}t"].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(default_threads)
    return e2e, embed, thread_settings


def _lance_before_and_after_optimize(db: Any, table_name: str, tag: str, warm: list[str], measured: list[str],
                                     params: Any) -> dict[str, Any]:
    """The LanceDB query alone: on the published version opened once, then on the head after ``optimize()``.

    After ``optimize()`` the full-text index covers every row (measured on the optimised head; the tag stays).
    """
    from evertune.kb.index import open_table
    from evertune.kb.retrieval import _query_vectors

    k, weight = params.retrieval.k, params.retrieval.hybrid_vector_weight
    table = open_table(db, table_name)
    table.checkout(tag)
    coverage_before = _fts_coverage(table)
    vectors = _query_vectors(measured, params)
    _lance_only(table, warm, vectors[: len(warm)], k, weight)
    lance = _lance_only(table, measured, vectors, k, weight)

    head = open_table(db, table_name)
    head.optimize()
    optimized_version = head.version
    head.checkout(optimized_version)
    coverage_after = _fts_coverage(head)
    _lance_only(head, warm, vectors[: len(warm)], k, weight)
    lance_opt = _lance_only(head, measured, vectors, k, weight)
    return {"lance": lance, "lance_opt": lance_opt, "optimized_version": optimized_version,
            "coverage": {"published": coverage_before, "optimized": coverage_after}}  # fmt: skip


def _print_table(results: dict[str, Any]) -> None:
    print(f"{'':44s}{'p50 ms':>9s}{'p95 ms':>9s}{'mean ms':>9s}")
    rows = [(f"search() end to end, {key}", value) for key, value in results["end_to_end"].items()]
    rows += [(f"embed one query, {key.split('@')[1]}", value) for key, value in results["embed_query"].items()]
    rows += [(f"LanceDB query only, {mode}", value) for mode, value in results["lancedb_only"].items()]
    rows += [(f"LanceDB only after optimize(), {mode}", value)
             for mode, value in results["lancedb_only_after_optimize"].items()]  # fmt: skip
    for label, row in rows:
        print(f"{label:44s}{row['p50_ms']:9.1f}{row['p95_ms']:9.1f}{row['mean_ms']:9.1f}")


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark, print the figures and return the record."""
    common.prepare_env()
    from bench import kb_incremental
    from bench.corpus import make_queries
    from evertune.kb.index import connect, open_table
    from evertune.kb.retrieval import search

    cfg = QUICK if quick else FULL
    params = common.load_bench_params()
    state = _usable_state(quick, params)
    common.banner(
        f"kb_query ({'quick' if quick else 'full'}): {state['rows_total']} chunks, {cfg['n_queries']} queries "
        f"after {cfg['warmup']} warm-up"
    )
    info = common.machine_info()
    root = kb_incremental.workspace(quick)
    settings = common.settings_with_lancedb(Path(state["lancedb_uri"]))
    db = connect(settings)
    head = open_table(db, state["table_name"])
    tag = params.index.publish_tag
    if tag in head.tags.list():
        head.tags.delete(tag)  # a re-run publishes afresh
    published = _publish(state, params, settings, root, cfg["golden"])
    k = params.retrieval.k

    queries = make_queries(cfg["warmup"] + cfg["n_queries"])
    warm, measured = queries[: cfg["warmup"]], queries[cfg["warmup"] :]
    for query in warm:
        for mode in MODES:
            search(query, params, settings, k=k, mode=mode)

    load_before = common.load_average()
    e2e, embed, thread_settings = _end_to_end(measured, params, settings, k)
    load_mid = common.load_average()
    lance = _lance_before_and_after_optimize(db, state["table_name"], tag, warm, measured, params)
    load_after = common.load_average()

    results = {
        "torch_threads": list(thread_settings),
        "end_to_end": _summarise(e2e),
        "embed_query": _summarise(embed),
        "lancedb_only": _summarise(lance["lance"]),
        "lancedb_only_after_optimize": _summarise(lance["lance_opt"]),
    }
    print(f"FTS index coverage as published: {lance['coverage']['published']}; "
          f"after optimize(): {lance['coverage']['optimized']}")
    _print_table(results)
    default_threads = thread_settings[0]
    hybrid = results["end_to_end"][f"hybrid@{default_threads}t"]
    single = results["end_to_end"].get("hybrid@1t", hybrid)
    print(
        f"RESULT kb_query: hybrid search p50 {hybrid['p50_ms']:.1f} ms, p95 {hybrid['p95_ms']:.1f} ms over "
        f"{hybrid['n']} queries on {state['rows_total']} chunks with {default_threads} torch threads "
        f"(1 thread: p50 {single['p50_ms']:.1f} ms, p95 {single['p95_ms']:.1f} ms); "
        f"load {load_before}->{load_mid}->{load_after}"
    )
    record = {"benchmark": "kb_query", "quick": quick, "config": cfg, "machine": info, "table": state,
              "published": published, "fts_coverage": lance["coverage"],
              "optimized_version": lance["optimized_version"], "load": [load_before, load_mid, load_after],
              "results": results}  # fmt: skip
    common.save_result("kb_query", quick, record)
    return record


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
