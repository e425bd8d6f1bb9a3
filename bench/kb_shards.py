"""The sharded refresh (issue 12 part 4): per-shard embedding time, merge cost against chunks, a 10M projection.

Two measurements in one run, one process, the embedder loaded once:

1. **Real embedding** of ``n_docs`` synthetic documents (:mod:`bench.corpus`, 40-80 words, about one chunk
   each) into fresh tables: the unsharded sync (:func:`evertune.kb.index.sync_interval`), then the sharded
   path (:mod:`evertune.kb.shards`: plan, every shard embedded one after the other in this process, merge)
   for each shard count. A shard's time is what one worker would spend on it; the plan and the merge are
   the serial parts. The 1-shard table must equal the unsharded one bit for bit (checked here too), and the
   largest difference of a vector between the unsharded and the N-shard table is recorded.
2. **Merge cost against chunks**: the same plan/merge on ``merge_sizes`` documents with *stand-in vectors*
   (seeded random unit vectors from a stub encoder, so that the sweep does not spend an hour embedding): the
   merge reads the same staged files and writes the same rows; only the vector values differ, which the
   merge never looks at. Sizes stay below ``index.vector_index_min_rows`` so no ANN build is mixed in.

The projection for 10M documents on N workers uses these figures: ``plan + max(shard) + merge`` with the
plan's and the merge's per-chunk costs from the sweep (a least-squares line) and a worker's embedding
rate from part 1 (every shard's texts over every shard's seconds, one process of this machine).
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.corpus import make_corpus, write_validated_folder

FULL = {"n_docs": 600, "shards": (1, 2, 4), "merge_sizes": (1000, 3000, 9000)}
QUICK = {"n_docs": 120, "shards": (1, 2), "merge_sizes": (200, 800)}
MIN_WORDS, MAX_WORDS = 40, 80
DAY = dt.date(2026, 11, 1).isoformat()
PROJECT_DOCS = 10_000_000
PROJECT_WORKERS = (1, 8, 32, 128)


class _StubEncoder:
    """Stands in for the embedder in the merge sweep: seeded unit vectors of the real dimension."""

    def __init__(self, model: Any) -> None:
        self.dim = int(model.get_embedding_dimension())

    def get_embedding_dimension(self) -> int:
        return self.dim

    def encode(self, texts: list[str], **_: Any) -> Any:
        import numpy as np

        rng = np.random.default_rng(len(texts))
        vectors = rng.standard_normal((len(texts), self.dim)).astype("float32")
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _rows(settings: Any, params: Any) -> dict[str, tuple]:
    from evertune.kb.index import connect, read_table_rows, table_name_for

    table = connect(settings).open_table(table_name_for(params))
    rows = read_table_rows(table, ["chunk_id", "content_hash", "row_hash", "vector"])
    return {row["chunk_id"]: (row["content_hash"], row["row_hash"], row["vector"]) for row in rows}


def _max_vector_diff(left: dict[str, tuple], right: dict[str, tuple]) -> float:
    """The largest absolute difference of a vector component; raises when ids or hashes differ."""
    import numpy as np

    if sorted(left) != sorted(right) or any(left[k][:2] != right[k][:2] for k in left):
        raise RuntimeError("sharded table differs from the unsharded one in chunk ids or hashes")
    return float(max(np.max(np.abs(np.asarray(left[k][2]) - np.asarray(right[k][2]))) for k in left))


def _sharded(folder: Path, count: int, params: Any, settings: Any, model: Any) -> dict[str, Any]:
    """Plan, embed every shard in this process (timed one by one), merge; the times and the merge's timings."""
    from evertune.kb.index import prepare_sync
    from evertune.kb.shards import embed_shard, merge_shards, plan_shards

    load_before = common.load_average()
    with common.stopwatch() as plan_t:
        refs = plan_shards(prepare_sync(folder, DAY, params, settings), count, Path(settings.work_dir) / "shards")
    shard_s, embedded = [], []
    for ref in refs:
        with common.stopwatch() as shard_t:
            embedded.append(embed_shard(ref, model, params))
        shard_s.append(shard_t())
    with common.stopwatch() as merge_t:
        result = merge_shards(folder, DAY, embedded, params, settings)
    if result.chunks_embedded_in_merge:
        raise RuntimeError(f"the merge embedded {result.chunks_embedded_in_merge} texts that no shard had")
    return {"shards": count, "plan_s": plan_t(), "shard_s": shard_s, "shard_texts": [r.texts for r in refs],
            "merge_s": merge_t(), "chunks": result.chunks_inserted, "merge_timings": dict(result.timings),
            "load_before": load_before, "load_after": common.load_average()}


def _fresh(root: Path, name: str) -> Any:
    import dataclasses

    folder = root / name
    shutil.rmtree(folder, ignore_errors=True)
    settings = common.settings_with_lancedb(folder / "lancedb")
    return dataclasses.replace(settings, work_dir=folder / "work")


def _real_embedding(root: Path, cfg: dict[str, Any], params: Any, model: Any) -> dict[str, Any]:
    """Part 1: the unsharded sync and each shard count, on real vectors."""
    from evertune.kb.index import sync_interval

    folder = write_validated_folder(root / "docs", make_corpus(cfg["n_docs"], min_words=MIN_WORDS,
                                                               max_words=MAX_WORDS))
    settings = _fresh(root, "unsharded")
    load_before = common.load_average()
    with common.stopwatch() as total:
        result = sync_interval(folder, DAY, params, settings)
    reference = _rows(settings, params)
    record = {"unsharded": {"seconds": total(), "chunks": result.chunks_embedded, "timings": dict(result.timings),
                            "load_before": load_before, "load_after": common.load_average()}, "sharded": []}
    print(f"unsharded: {total():.1f} s for {result.chunks_embedded} chunks; timings {result.timings}", flush=True)
    for count in cfg["shards"]:
        settings = _fresh(root, f"shards-{count}")
        entry = _sharded(folder, count, params, settings, model)
        entry["max_vector_diff"] = _max_vector_diff(_rows(settings, params), reference)
        if count == 1 and entry["max_vector_diff"] != 0.0:
            raise RuntimeError("1 shard must give exactly the unsharded vectors")
        record["sharded"].append(entry)
        print(f"{count} shard(s): plan {entry['plan_s']:.1f} s, shards {[round(s, 1) for s in entry['shard_s']]} s "
              f"({entry['shard_texts']} texts), merge {entry['merge_s']:.1f} s, max |dv| "
              f"{entry['max_vector_diff']:.2e}, load {entry['load_before']}->{entry['load_after']}", flush=True)
    return record


def _merge_sweep(root: Path, cfg: dict[str, Any], params: Any, model: Any) -> list[dict[str, Any]]:
    """Part 2: plan and merge cost against the number of chunks, stand-in vectors."""
    stub = _StubEncoder(model)
    sweep = []
    for n_docs in cfg["merge_sizes"]:
        folder = write_validated_folder(root / f"sweep-{n_docs}", make_corpus(n_docs, min_words=MIN_WORDS,
                                                                              max_words=MAX_WORDS))
        entry = _sharded(folder, 2, params, _fresh(root, f"sweep-{n_docs}-db"), stub)
        entry["n_docs"] = n_docs
        sweep.append(entry)
        print(f"sweep {n_docs} docs / {entry['chunks']} chunks: plan {entry['plan_s']:.2f} s, merge "
              f"{entry['merge_s']:.2f} s (write {entry['merge_timings'].get('write', 0):.2f}, index "
              f"{entry['merge_timings'].get('index', 0):.2f}), load {entry['load_before']}", flush=True)
    return sweep


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)``."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def project(real: dict[str, Any], sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """Wall time of a 10M-document full refresh on N workers: ``plan + embed / N + merge`` from the measurements."""
    # One worker's embedding rate: every shard of every count pooled (the machine's speed drifts within a run).
    rate = sum(sum(e["shard_texts"]) for e in real["sharded"]) / sum(sum(e["shard_s"]) for e in real["sharded"])
    chunks_per_doc = real["sharded"][0]["chunks"] / real["n_docs"]
    chunks = [float(entry["chunks"]) for entry in sweep]
    plan0, plan_per = _line(chunks, [entry["plan_s"] for entry in sweep])
    merge0, merge_per = _line(chunks, [entry["merge_s"] for entry in sweep])
    total_chunks = PROJECT_DOCS * chunks_per_doc
    serial = plan0 + plan_per * total_chunks + merge0 + merge_per * total_chunks
    by_workers = {n: (serial + total_chunks / rate / n) / 3600 for n in PROJECT_WORKERS}
    return {"docs": PROJECT_DOCS, "chunks": total_chunks, "worker_chunks_per_s": rate,
            "plan_s_per_1k_chunks": plan_per * 1000, "merge_s_per_1k_chunks": merge_per * 1000,
            "serial_hours": serial / 3600, "hours_by_workers": by_workers}


def run(quick: bool = False) -> dict[str, Any]:
    """Run both parts, print the figures and the projection, save ``bench/results/kb_shards[-quick].json``."""
    common.prepare_env()
    from evertune.kb.embedding import load_checked_embedder

    cfg = QUICK if quick else FULL
    common.banner(f"kb_shards: {cfg}")
    params = common.load_bench_params()
    model, _ = load_checked_embedder(params)
    root = common.work_root() / ("kb_shards-quick" if quick else "kb_shards")
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    real = _real_embedding(root, cfg, params, model) | {"n_docs": cfg["n_docs"]}
    sweep = _merge_sweep(root, cfg, params, model)
    projection = project(real, sweep)
    print(f"projection for {PROJECT_DOCS:,} docs ({projection['chunks']:,.0f} chunks): "
          + ", ".join(f"{n} workers {h:.1f} h" for n, h in projection["hours_by_workers"].items())
          + f"; serial part (plan + merge) {projection['serial_hours']:.2f} h", flush=True)
    record = {"machine": common.machine_info(), "config": cfg, "real": real, "merge_sweep": sweep,
              "projection": projection, "seconds": time.perf_counter() - started}
    path = common.save_result("kb_shards", quick, record)
    print(f"saved {path}")
    return record
