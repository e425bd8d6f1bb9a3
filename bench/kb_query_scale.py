"""Hybrid query latency and ANN tuning on a 100,000-chunk published table (issue 12 §2).

Embedding 100k chunks takes over an hour on 2 shared cores, so the table is built in two steps:

1. **Real chunks, embedded once and cached.** ``n_base`` generated documents (:mod:`bench.corpus`, 40-80 words:
   about one 128-token chunk each) go through the real sync (:func:`evertune.kb.index.sync_interval`: chunking,
   embedding, the project's table) into a cache database under the bench work dir; later runs reuse it.
2. **Seeded perturbation up to ``n_rows``.** Every derived chunk starts from a real chunk ``a`` and a random
   partner ``b``: its text is ``a``'s sentences with one replaced by a sentence of ``b`` and a few words swapped
   for other product vocabulary (so the full-text index sees new term mixes, not exact duplicates); its vector
   is ``normalise((1 - t) * v_a + t * v_b + noise)``, ``t`` uniform in [0, 0.35], Gaussian noise of norm
   ~0.25. Rows are written through :func:`evertune.kb.table.chunk_schema` /
   :func:`~evertune.kb.table.open_or_create_chunk_table` (the real table shape and identity), then the
   full-text index and the ANN index are built by :mod:`evertune.kb.indexes` and the version is tagged.

Measured, in one run, on that table:

* **ANN curve**: recall@10 of vector search against exact search (``bypass_vector_index``) over held-out
  queries, and latency, for several IVF_PQ / IVF_HNSW_SQ builds and query-time ``nprobes`` / ``refine_factor``;
  the chosen point is the fastest with recall@10 >= 0.95, and the run says whether it is >= 3x faster than exact.
* **End to end**: ``search(query, params, settings)`` (hybrid, the default) over >= 1,000 distinct queries with
  the chosen point, split per call into query embedding, the LanceDB query (``_run_query``: both sub-queries
  and the fusion) and everything else (tag lookup, cached table, identity key, result rows), with the load.
* **Side measurements**: the LanceDB query alone per mode on the published version, and one query's embedding
  with torch (the ``search()`` path) against ONNX Runtime fp32 / int8 sessions at one thread.

``EVERTUNE_BENCH_EMBED_BACKEND`` (default: ``params.yaml``'s ``embed.backend``) builds the table with another
``embed.backend``, so ``search()`` embeds its queries with that backend's one-thread session; its base chunks
are cached in their own folder, and its artifact is exported into the bench's own models folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.corpus import distinct_queries
from bench.query_embedding import query_embedding_backends

FULL = {"n_base": 10_000, "n_rows": 100_000, "n_queries": 1_000, "warmup": 30, "curve_queries": 150,
        "backend_queries": 300}
QUICK = {"n_base": 300, "n_rows": 3_000, "n_queries": 60, "warmup": 5, "curve_queries": 20, "backend_queries": 20}
MIN_WORDS, MAX_WORDS = 40, 80
BASE_INTERVAL = "2026-11-01"
RECALL_TARGET = 0.95
SPEEDUP_TARGET = 3.0


def embed_backend() -> str | None:
    """The ``embed.backend`` to build with: ``EVERTUNE_BENCH_EMBED_BACKEND``, or None for ``params.yaml``'s."""
    return os.environ.get("EVERTUNE_BENCH_EMBED_BACKEND") or None


def bench_params(**sections: dict[str, Any]) -> Any:
    """``common.load_bench_params`` with :func:`embed_backend` applied, so every step uses the same table."""
    backend = embed_backend()
    return common.load_bench_params(**sections, **({"embed": {"backend": backend}} if backend else {}))


def workspace(quick: bool) -> Path:
    """This benchmark's folder: the cached embedded base chunks and the scaled table (one per backend)."""
    name, backend = ("kb_query_scale-quick" if quick else "kb_query_scale"), embed_backend()
    return common.work_root() / (f"{name}-{backend}" if backend else name)


def models_dir() -> Path:
    """Where this benchmark exports another backend's artifact (never the shared bootstrapped models)."""
    return common.work_root() / "kb_query_scale_models"


# ------------------------------------------------------------------------------------------ base chunks


def base_rows(cfg: dict[str, Any], params: Any, root: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The real, embedded chunks of ``n_base`` documents: synced once into a cache database, then read back.

    Returns:
        The chunk rows (every stored column, vector included) sorted by chunk id, and how they were obtained.
    """
    from bench.corpus import make_corpus, write_validated_folder
    from evertune.kb.index import connect, open_table, read_table_rows, sync_interval, table_name_for

    settings = common.settings_with_lancedb(root / "base-lancedb")
    key = f"{cfg['n_base']}:{params.section_hash('chunk', 'embed')}"
    marker = root / "base.json"
    info = json.loads(marker.read_text()) if marker.is_file() else {}
    table = open_table(connect(settings), table_name_for(params))
    if info.get("key") != key or table is None:
        docs = make_corpus(cfg["n_base"], min_words=MIN_WORDS, max_words=MAX_WORDS)
        folder = write_validated_folder(root / "base-docs", docs)
        started = time.perf_counter()
        result = sync_interval(folder, BASE_INTERVAL, params, settings)
        seconds = time.perf_counter() - started
        info = {"key": key, "embed_seconds": round(seconds, 1), "chunks_embedded": result.chunks_embedded,
                "load_after": common.load_average()}  # fmt: skip
        marker.write_text(json.dumps(info))
        print(f"embedded {result.chunks_embedded} base chunks in {seconds:.0f} s (cached in {root})", flush=True)
        table = open_table(connect(settings), table_name_for(params))
    else:
        print(f"reusing {info['chunks_embedded']} cached base chunks (embedded in {info['embed_seconds']} s)")
    from evertune.kb.table import chunk_schema

    columns = [field.name for field in chunk_schema(params, 1)]
    rows = sorted(read_table_rows(table, columns), key=lambda row: row["chunk_id"])
    return rows, {**info, "cached": info.get("key") == key}


# ------------------------------------------------------------------------------------------ derived chunks

_SENTENCE_END = ". "


def _swap_words(text: str, rng: random.Random) -> str:
    """Replace 2-4 product words of ``text`` by others of the same kind (feature, verb, place)."""
    from bench.corpus import FEATURES, PLACES, VERBS

    for _ in range(rng.randint(2, 4)):
        vocabulary = rng.choice((FEATURES, VERBS, PLACES))
        present = [word for word in vocabulary if f" {word}" in text]
        if present:
            word = rng.choice(present)
            text = text.replace(f" {word}", f" {rng.choice(vocabulary)}", 1)
    return text


def _derived_text(text_a: str, text_b: str, rng: random.Random) -> str:
    """``a``'s sentences with one replaced by a sentence of ``b``, then a few words swapped."""
    sentences = text_a.split(_SENTENCE_END)
    donor = text_b.split(_SENTENCE_END)
    sentences[rng.randrange(len(sentences))] = rng.choice(donor)
    return _swap_words(_SENTENCE_END.join(sentences), rng)


def derived_rows(base: list[dict[str, Any]], start: int, count: int, seed: int = 12) -> list[dict[str, Any]]:
    """Derived chunks ``start .. start+count-1`` (each a pure function of its number and the base rows).

    Derived chunk ``i`` copies base chunk ``i % len(base)`` (``a``) and mixes in a seeded partner ``b``: text as
    :func:`_derived_text` (and a few title words swapped), vector ``normalise((1 - t) v_a + t v_b + noise)`` with ``t ~ U(0, 0.35)`` and
    Gaussian noise of norm ~0.25. It gets its own document id (``<doc>-x<i>``) and hashes.
    """
    import numpy as np

    from evertune.kb.chunk_diff import _row_hash

    rows = []
    dim = len(base[0]["vector"])
    for number in range(start, start + count):
        rng = random.Random(f"evertune-bench-scale:{seed}:{number}")
        noise = np.random.default_rng([seed, number]).normal(0.0, 0.25 / dim**0.5, dim)
        a, b = base[number % len(base)], base[rng.randrange(len(base))]
        t = rng.uniform(0.0, 0.35)
        vector = (1 - t) * np.asarray(a["vector"]) + t * np.asarray(b["vector"]) + noise
        body = _derived_text(a["body"], b["body"], rng)
        title = _swap_words(f" {a['title']}", rng).strip()
        doc_id = f"{a['doc_id']}-x{number}"
        row = {**a, "doc_id": doc_id, "chunk_id": f"{doc_id}:{a['ordinal']}", "title": title, "body": body,
               "text": f"{title}\n\n{body}",
               "url": f"{a['url']}-x{number}", "content_hash": hashlib.sha256(body.encode()).hexdigest()}  # fmt: skip
        row.pop("row_hash", None)
        row.pop("vector", None)
        row["row_hash"] = _row_hash(row)
        row["vector"] = (vector / np.linalg.norm(vector)).astype("float32").tolist()
        rows.append(row)
    return rows


def build_table(cfg: dict[str, Any], params: Any, settings: Any, base: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the base rows plus derived rows up to ``n_rows`` into a fresh chunk table, then its FTS index.

    Uses the project's schema and identity (:func:`~evertune.kb.table.open_or_create_chunk_table`) and its
    index code (:func:`~evertune.kb.indexes.ensure_fts_index`); appends in batches of 10,000 rows.

    Returns:
        Timings (seconds) of the writes and of the full-text index, and the row count.
    """
    import pyarrow as pa

    from evertune.kb import indexes
    from evertune.kb.table import chunk_schema, connect, open_or_create_chunk_table, table_name_for

    db = connect(settings)
    name = table_name_for(params)
    if name in db.table_names(limit=1000):
        db.drop_table(name)
    dim = len(base[0]["vector"])
    table = open_or_create_chunk_table(db, params, dim)
    schema = chunk_schema(params, dim)
    started = time.perf_counter()
    batch = 10_000
    table.add(pa.Table.from_pylist(base, schema=schema))
    for start in range(0, cfg["n_rows"] - len(base), batch):
        count = min(batch, cfg["n_rows"] - len(base) - start)
        table.add(pa.Table.from_pylist(derived_rows(base, start, count), schema=schema))
    write_s = time.perf_counter() - started
    rows = table.count_rows()
    started = time.perf_counter()
    indexes.ensure_fts_index(table, rows)
    fts_s = time.perf_counter() - started
    print(f"wrote {rows} rows in {write_s:.0f} s ({len(base)} real), FTS index in {fts_s:.1f} s", flush=True)
    return {"rows": rows, "write_s": round(write_s, 1), "fts_s": round(fts_s, 1), "table_name": name}


# ------------------------------------------------------------------------------------------ ANN curve

#: Index builds of the curve (``params.index`` overrides) and the query-time points tried on each.
CURVE = (
    ({"vector_index_type": "IVF_PQ", "vector_rows_per_partition": 4_000, "vector_num_sub_vectors": 48},
     {"nprobes": (4, 8, 12, 16, 20), "refine_factor": (0, 10, 30)}),
    ({"vector_index_type": "IVF_HNSW_SQ", "vector_rows_per_partition": 25_000},
     {"nprobes": (1, 2, 4), "refine_factor": (0, 10)}),
    ({"vector_index_type": "IVF_PQ", "vector_rows_per_partition": 2_000, "vector_num_sub_vectors": 48},
     {"nprobes": (8, 16, 24, 32), "refine_factor": (0, 10, 30)}),
)  # fmt: skip
#: Measured in run 1 (docs/benchmarks.md 3c) and left out since: its build took 254 s for no better point.
CURVE_RUN1_ONLY = (
    ({"vector_index_type": "IVF_PQ", "vector_rows_per_partition": 4_000, "vector_num_sub_vectors": 96},
     {"nprobes": (2, 4, 6, 8), "refine_factor": (0, 10)}),
)  # fmt: skip
CURVE_K = 10


def _vector_pass(table: Any, vectors: list[Any], ann: dict[str, int] | None) -> tuple[list[list[str]], list[float]]:
    """Top-``CURVE_K`` chunk ids and seconds per query, through the vector query of ``search()``."""
    from evertune.kb.retrieval import _run_query

    ids, seconds = [], []
    for vector in vectors:
        start = time.perf_counter()
        rows = _run_query(table, "", vector, "vector", CURVE_K, ann=ann)
        seconds.append(time.perf_counter() - start)
        ids.append([row["chunk_id"] for row in rows])
    return ids, seconds


def _recall(found: list[list[str]], exact: list[list[str]]) -> float:
    return sum(len(set(a) & set(b)) / len(b) for a, b in zip(found, exact, strict=True) if b) / len(exact)


def ann_curve(table: Any, vectors: list[Any], params_for: Any, rows: int, quick: bool,
              budget_s: float = 480) -> dict[str, Any]:
    """Exact search first (the table has no vector index yet), then every build of :data:`CURVE` and its points.

    Each build goes through :func:`evertune.kb.indexes.ensure_vector_index` with the overridden params (so
    it replaces the previous build, as a parameter change would in production). Builds that would start
    after ``budget_s`` seconds of curve are skipped (and reported), so the run stays near 15 minutes.
    """
    from evertune.kb import indexes

    warm = vectors[:5]
    _vector_pass(table, warm, None)
    exact_ids, exact_s = _vector_pass(table, vectors, None)
    exact_p50 = common.percentile(exact_s, 50)
    print(f"exact vector search: p50 {1000 * exact_p50:.1f} ms", flush=True)
    points, builds = [], []
    started_curve = time.perf_counter()
    for overrides, grid in CURVE[:2] if quick else CURVE:
        if time.perf_counter() - started_curve > budget_s:
            builds.append({"skipped": f"curve time budget ({budget_s} s) spent", **overrides})
            print(f"skipped {overrides}: the curve's time budget is spent", flush=True)
            continue
        params = params_for(overrides)
        started = time.perf_counter()
        indexes.ensure_vector_index(table, params, rows)
        build_s = time.perf_counter() - started
        name = indexes.vector_index_names(table)[0]
        builds.append({"index": name, "build_s": round(build_s, 1), **overrides})
        print(f"built {name} in {build_s:.1f} s", flush=True)
        for nprobes in grid["nprobes"]:
            for refine in grid["refine_factor"]:
                ann = {"nprobes": nprobes, **({"refine_factor": refine} if refine else {})}
                _vector_pass(table, warm, ann)
                ids, seconds = _vector_pass(table, vectors, ann)
                p50 = common.percentile(seconds, 50)
                points.append({"index": name, **overrides, "nprobes": nprobes, "refine_factor": refine,
                               "recall_at_10": round(_recall(ids, exact_ids), 4), "p50_ms": round(1000 * p50, 2),
                               "p95_ms": round(1000 * common.percentile(seconds, 95), 2),
                               "speedup": round(exact_p50 / p50, 2)})  # fmt: skip
                print(f"  nprobes {nprobes:3d} refine {refine:3d}: recall@10 {points[-1]['recall_at_10']:.3f} "
                      f"p50 {points[-1]['p50_ms']:.1f} ms ({points[-1]['speedup']:.1f}x exact)", flush=True)
    good = [point for point in points if point["recall_at_10"] >= RECALL_TARGET]
    chosen = min(good, key=lambda point: point["p50_ms"]) if good else max(points, key=lambda p: p["recall_at_10"])
    return {"exact": {"p50_ms": round(1000 * exact_p50, 2), "p95_ms": round(1000 * common.percentile(exact_s, 95), 2),
                      "n": len(exact_s)}, "builds": builds, "points": points, "chosen": chosen}  # fmt: skip


# ------------------------------------------------------------------------------------------ end to end


def end_to_end(queries: list[str], params: Any, settings: Any) -> dict[str, list[float]]:
    """``search()`` (the default: hybrid, published tag) per query, split into its parts per call.

    The parts are timed by wrapping ``retrieval._query_vectors`` and ``retrieval._run_query`` (the real
    functions run inside); ``other`` is the call's time minus both: tag lookup, cached table and identity
    key, building the result dicts.
    """
    from evertune.kb import retrieval

    parts: dict[str, list[float]] = {"total": [], "embed": [], "lancedb": [], "other": []}
    lap: dict[str, float] = {}
    originals = {"embed": retrieval._query_vectors, "lancedb": retrieval._run_query}

    def timed(name: str):
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                lap[name] = lap.get(name, 0.0) + time.perf_counter() - start

        return call

    retrieval._query_vectors, retrieval._run_query = timed("embed"), timed("lancedb")
    try:
        for query in queries:
            lap.clear()
            start = time.perf_counter()
            hits = retrieval.search(query, params, settings)
            total = time.perf_counter() - start
            if not hits:
                raise RuntimeError(f"search returned nothing for {query!r}")
            parts["total"].append(total)
            parts["embed"].append(lap["embed"])
            parts["lancedb"].append(lap["lancedb"])
            parts["other"].append(total - lap["embed"] - lap["lancedb"])
    finally:
        retrieval._query_vectors, retrieval._run_query = originals["embed"], originals["lancedb"]
    return parts


def lancedb_by_mode(table: Any, queries: list[str], vectors: list[Any], params: Any) -> dict[str, Any]:
    """The LanceDB query alone on the published version, per mode (hybrid, its vector and full-text halves).

    Modes interleaved per query in rotating order, with the same ``_run_query`` and ANN settings as
    ``search()``: what the hybrid query's time is made of.
    """
    from evertune.kb.indexes import vector_index_partitions
    from evertune.kb.retrieval import _run_query, ann_settings

    modes = ("hybrid", "vector", "fts")
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    ann, weight, k = ann_settings(params, vector_index_partitions(table)), params.retrieval.hybrid_vector_weight, params.retrieval.k
    for number, (query, vector) in enumerate(zip(queries, vectors, strict=True)):
        for mode in modes[number % 3 :] + modes[: number % 3]:
            start = time.perf_counter()
            _run_query(table, query, vector, mode, k, weight, ann)
            samples[mode].append(time.perf_counter() - start)
    return {mode: common.latency_summary(values) for mode, values in samples.items()}


def _index_coverage(table: Any) -> dict[str, Any]:
    coverage = {}
    for index in table.list_indices():
        stats = table.index_stats(index.name)
        coverage[index.name] = {"indexed": stats.num_indexed_rows, "unindexed": stats.num_unindexed_rows}
    return coverage


def _chosen_params(chosen: dict[str, Any]) -> Any:
    keys = ("vector_index_type", "vector_rows_per_partition", "vector_num_sub_vectors")
    index = {key: chosen[key] for key in keys if key in chosen}
    from evertune.kb.indexes import partitions_in_name

    fraction = chosen["nprobes"] / partitions_in_name(chosen["index"])  # 24 of 50 -> 0.48: search() probes 24
    index |= {"vector_probe_fraction": min(1.0, fraction), "vector_refine_factor": chosen["refine_factor"]}
    return bench_params(index=index)


def run(quick: bool = False) -> dict[str, Any]:
    """Build (or reuse the cached embeddings of) the scaled table, run the curve and the end-to-end queries."""
    backend = embed_backend()
    if backend:
        os.environ["EVERTUNE_MODELS_DIR"] = str(models_dir())
    common.prepare_env()
    from evertune.kb import indexes
    from evertune.kb.retrieval import _query_vectors, clear_table_cache, search
    from evertune.kb.table import connect, open_table

    cfg = QUICK if quick else FULL
    info = common.machine_info()
    common.banner(f"kb_query_scale ({'quick' if quick else 'full'}): {cfg['n_rows']} chunks, {cfg['n_queries']} queries")
    root = workspace(quick)
    root.mkdir(parents=True, exist_ok=True)
    params = bench_params(index={"vector_index_min_rows": max(256, cfg["n_rows"] // 5)})
    if params.embed.backend != "torch":
        from evertune.models.embedder import ensure_backend_artifact

        _, sha, _ = ensure_backend_artifact(params.embed, models_dir())
        print(f"embed.backend {params.embed.backend}: artifact sha256 {sha[:16]}...", flush=True)
    settings = common.settings_with_lancedb(root / "lancedb")
    load = [common.load_average()]
    started = time.perf_counter()
    base, base_info = base_rows(cfg, params, root)
    built = build_table(cfg, params, settings, base)
    table = open_table(connect(settings), built["table_name"])
    curve_queries = distinct_queries(cfg["curve_queries"], seed=7)
    curve = ann_curve(table, _query_vectors(curve_queries, params), lambda o: bench_params(
        index={**params.index.model_dump(), **o}), built["rows"], quick)  # fmt: skip
    load.append(common.load_average())
    chosen_params = _chosen_params(curve["chosen"])
    started_index = time.perf_counter()
    indexes.ensure_vector_index(table, chosen_params, built["rows"])
    chosen_build_s = time.perf_counter() - started_index
    table.tags.create(chosen_params.index.publish_tag, table.version)
    build_total_s = time.perf_counter() - started
    print(f"published v{table.version} ({indexes.vector_index_names(table)}); build total {build_total_s:.0f} s")

    clear_table_cache()
    queries = distinct_queries(cfg["warmup"] + cfg["n_queries"], seed=3)
    for query in queries[: cfg["warmup"]]:
        search(query, chosen_params, settings)
    load.append(common.load_average())
    parts = end_to_end(queries[cfg["warmup"] :], chosen_params, settings)
    load.append(common.load_average())
    results = {name: common.latency_summary(values) for name, values in parts.items()}
    measured = queries[cfg["warmup"] :]
    published = open_table(connect(settings), built["table_name"])
    published.checkout(chosen_params.index.publish_tag)
    by_mode = lancedb_by_mode(published, measured, _query_vectors(measured, chosen_params), chosen_params)
    load.append(common.load_average())
    backends = query_embedding_backends(queries[cfg["warmup"] :][: cfg["backend_queries"]], chosen_params, settings)
    load.append(common.load_average())
    hybrid = results["total"]
    chosen = curve["chosen"]
    print(f"{'':24s}{'p50 ms':>9s}{'p95 ms':>9s}{'mean ms':>9s}")
    for name, row in results.items():
        print(f"{'search() ' + name:24s}{row['p50_ms']:9.1f}{row['p95_ms']:9.1f}{row['mean_ms']:9.1f}")
    for name, row in by_mode.items():
        print(f"{'LanceDB only, ' + name:24s}{row['p50_ms']:9.1f}{row['p95_ms']:9.1f}{row['mean_ms']:9.1f}")
    for name, row in backends["samples"].items():
        print(f"{'embed ' + name:24s}{row['p50_ms']:9.1f}{row['p95_ms']:9.1f}{row['mean_ms']:9.1f}")
    for name, why in backends["skipped"].items():
        print(f"embed {name}: skipped ({why})")
    print(
        f"RESULT kb_query_scale: hybrid search() p50 {hybrid['p50_ms']:.1f} ms "
        f"({common.verdict(hybrid['p50_ms'] <= 20)} 20), p95 {hybrid['p95_ms']:.1f} ms "
        f"({common.verdict(hybrid['p95_ms'] <= 40)} 40), other {results['other']['p50_ms']:.1f} ms "
        f"({common.verdict(results['other']['p50_ms'] <= 3)} 3) over {hybrid['n']} queries on {built['rows']} "
        f"chunks; ANN {chosen['index']} nprobes {chosen['nprobes']} refine {chosen['refine_factor']}: recall@10 "
        f"{chosen['recall_at_10']:.3f} at {chosen['speedup']:.1f}x exact "
        f"({common.verdict(chosen['recall_at_10'] >= RECALL_TARGET and chosen['speedup'] >= SPEEDUP_TARGET)}); "
        f"load {' -> '.join(str(x) for x in load)}"
    )
    record = {"benchmark": "kb_query_scale", "quick": quick, "config": cfg, "machine": info, "base": base_info,
              "build": {**built, "chosen_index_build_s": round(chosen_build_s, 1), "total_s": round(build_total_s, 1)},
              "coverage": _index_coverage(table), "curve": curve, "load": load, "end_to_end": results,
              "query_embedding_backends": backends, "lancedb_by_mode": by_mode,
              "chosen_index_params": chosen_params.index.model_dump()}  # fmt: skip
    common.save_result("kb_query_scale", quick, record)
    return record


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
