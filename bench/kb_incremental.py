"""Incremental refresh (5% of documents changed) vs a full refresh, on a 10,000-document synthetic corpus.

Target (issue): a nightly refresh where 5% of the documents changed takes <= 10% of the time of a full refresh.

Corpus: :mod:`bench.corpus`, 10,000 short documents (40-80 words, about one 128-token chunk each). Short
documents keep one full embedding pass within a few minutes on 2 shared cores, and they are the *hard* case
for this ratio: the fixed per-sync costs (opening tables, reading state, writing a version) weigh more
against an embedding pass that is short.

Steps, all in one process with the embedder loaded once (the first sync pays nothing the others do not):

1. full refresh: every document into a fresh table (interval 2026-11-01);
2. ``reps`` delta drops, one per following day, each carrying a different seeded 5% of the documents, edited
   (the landing-zone contract: a drop holds the new and edited documents);
3. one snapshot drop: all 10,000 documents again, 5% of them edited (a source that re-delivers everything:
   unchanged documents must cost chunking and a diff, not an embedding).

The ratio is the median delta-drop time over the full-refresh time. The table is kept (with a state file) so
``kb_query`` can publish and query it without a second full embedding pass.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.corpus import edit_document, make_corpus, write_validated_folder

FULL = {"n_docs": 10_000, "changed_fraction": 0.05, "reps": 3}
QUICK = {"n_docs": 300, "changed_fraction": 0.05, "reps": 2}
TARGET = 0.10
MIN_WORDS, MAX_WORDS = 40, 80
FIRST_DAY = dt.date(2026, 11, 1)
STATE_FILE = "state.json"


def workspace(quick: bool) -> Path:
    """Folder of this benchmark's corpus drops and LanceDB database (kept for ``kb_query``)."""
    return common.work_root() / ("kb_incremental-quick" if quick else "kb_incremental")


def read_state(quick: bool) -> dict[str, Any] | None:
    """What the last completed run left for ``kb_query`` (``None`` when there is none)."""
    path = workspace(quick) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _sync(folder: Path, day: int, params: Any, settings: Any) -> tuple[float, Any]:
    from evertune.kb.index import sync_interval

    interval = (FIRST_DAY + dt.timedelta(days=day)).isoformat()
    start = time.perf_counter()
    result = sync_interval(folder, interval, params, settings)
    return time.perf_counter() - start, result


def _describe(result: Any) -> dict[str, Any]:
    keys = ("docs_upserted", "docs_unchanged", "chunks_embedded", "chunks_inserted", "chunks_updated",
            "chunks_deleted", "chunks_unchanged", "rows_total", "version")  # fmt: skip
    return {key: getattr(result, key) for key in keys} | {"timings": dict(result.timings)}


def _full_refresh(root: Path, docs: list[dict[str, Any]], params: Any, settings: Any) -> tuple[Any, dict[str, Any]]:
    """Step 1: every document into a fresh table (day 0); returns the sync result and its record."""
    load_before = common.load_average()
    full_s, full = _sync(write_validated_folder(root / "day0-full", docs), 0, params, settings)
    entry = {"seconds": full_s, "load_before": load_before, "load_after": common.load_average()} | _describe(full)
    print(
        f"full refresh: {full_s:.1f} s, {full.chunks_embedded} chunks embedded "
        f"({full.chunks_embedded / full_s:.1f} chunks/s), load {load_before}->{entry['load_after']}",
        flush=True,
    )
    return full, entry


def _delta_drop(root: Path, current: dict[str, dict[str, Any]], changed: list[str], day: int, full_s: float,
                params: Any, settings: Any) -> dict[str, Any]:
    """Step 2, one day: edit the ``changed`` documents (in ``current`` too) and sync only them.

    Raises:
        RuntimeError: The sync did not apply exactly the changed documents.
    """
    edited = [edit_document(current[doc_id], day) for doc_id in changed]
    current.update({doc["doc_id"]: doc for doc in edited})
    load_before = common.load_average()
    seconds, result = _sync(write_validated_folder(root / f"day{day}-delta", edited), day, params, settings)
    if result.docs_upserted != len(changed) or result.chunks_embedded == 0:
        raise RuntimeError(f"delta drop applied {result.docs_upserted} docs, expected {len(changed)}")
    entry = {"day": day, "seconds": seconds, "load_before": load_before, "load_after": common.load_average()}
    print(
        f"delta drop day {day}: {seconds:.2f} s ({seconds / full_s:.4f} of full), {result.docs_upserted} docs, "
        f"{result.chunks_embedded} chunks embedded, +{result.chunks_inserted} ~{result.chunks_updated} "
        f"-{result.chunks_deleted}",
        flush=True,
    )
    print("    sync timings (s): " + ", ".join(f"{k}={v:.2f}" for k, v in result.timings.items()))
    return entry | _describe(result) | {"ratio_to_full": seconds / full_s}


def _snapshot_drop(root: Path, current: dict[str, dict[str, Any]], changed: list[str], day: int, full_s: float,
                   params: Any, settings: Any) -> tuple[Any, dict[str, Any]]:
    """Step 3: edit the ``changed`` documents and re-deliver every document; returns the result and its record."""
    current.update({doc_id: edit_document(current[doc_id], day) for doc_id in changed})
    load_before = common.load_average()
    snap_s, snap = _sync(write_validated_folder(root / f"day{day}-snapshot", list(current.values())), day, params,
                         settings)  # fmt: skip
    snapshot = {"day": day, "seconds": snap_s, "load_before": load_before, "load_after": common.load_average()}
    snapshot |= _describe(snap) | {"ratio_to_full": snap_s / full_s}
    print(
        f"snapshot drop day {day}: {snap_s:.2f} s ({snap_s / full_s:.4f} of full), {snap.docs_upserted} docs applied, "
        f"{snap.chunks_unchanged} chunks unchanged, "
        f"{snap.chunks_embedded} chunks embedded",
        flush=True,
    )
    print("    sync timings (s): " + ", ".join(f"{k}={v:.2f}" for k, v in snap.timings.items()))
    return snap, snapshot


def summarize(full: dict[str, Any], deltas: list[dict[str, Any]], snapshot: dict[str, Any], *, n_docs: int,
              n_changed: int) -> dict[str, Any]:
    """The summary figures from the step records (``seconds``, ``chunks_embedded`` and ``timings`` of each).

    The shared machine's speed drifts between the long full pass and the short drops. Normalised ratio: each
    drop's non-embedding time plus its chunks at the full pass's embedding rate, over the full time.
    """
    full_s = full["seconds"]
    delta_s = common.median([d["seconds"] for d in deltas])
    ratio = delta_s / full_s
    full_rate = full["chunks_embedded"] / full["timings"]["embed"]

    def normalised(entry: dict[str, Any]) -> float:
        other = entry["timings"]["total"] - entry["timings"]["embed"]
        return (other + entry["chunks_embedded"] / full_rate) / full["timings"]["total"]

    snap_s = snapshot["seconds"]
    return {
        "n_docs": n_docs,
        "changed_per_drop": n_changed,
        "full_seconds": full_s,
        "full_chunks": full["chunks_embedded"],
        "delta_seconds_median": delta_s,
        "delta_seconds_all": [d["seconds"] for d in deltas],
        "ratio_median": ratio,
        "ratio_max": max(d["ratio_to_full"] for d in deltas),
        "full_embed_chunks_per_s": full_rate,
        "delta_embed_chunks_per_s_median": common.median(
            [d["chunks_embedded"] / d["timings"]["embed"] for d in deltas]
        ),
        "ratio_normalised_median": common.median([normalised(d) for d in deltas]),
        "snapshot_ratio_normalised": normalised(snapshot),
        "snapshot_seconds": snap_s,
        "snapshot_ratio": snap_s / full_s,
        "target": TARGET,
        "meets_target": ratio <= TARGET,
        "snapshot_meets_target": snap_s / full_s <= TARGET,
    }


def _print_summary(summary: dict[str, Any], n_deltas: int) -> None:
    full_s, delta_s, ratio = summary["full_seconds"], summary["delta_seconds_median"], summary["ratio_median"]
    snap_s, snap_ratio = summary["snapshot_seconds"], summary["snapshot_ratio"]
    print(
        f"RESULT kb_incremental: full {full_s:.1f} s, 5% delta drop {delta_s:.2f} s (median of {n_deltas}) -> "
        f"ratio {ratio:.4f}; target <= {TARGET}: {common.verdict(ratio <= TARGET)}. Snapshot with 5% changed: "
        f"{snap_s:.2f} s -> ratio {snap_ratio:.4f} ({common.verdict(snap_ratio <= TARGET)})"
    )
    print(
        f"    embedding rate: full pass {summary['full_embed_chunks_per_s']:.1f} chunks/s, delta drops "
        f"{summary['delta_embed_chunks_per_s_median']:.1f} chunks/s (machine load differs); at the full pass's rate "
        f"the ratios would be {summary['ratio_normalised_median']:.4f} (delta) and "
        f"{summary['snapshot_ratio_normalised']:.4f} (snapshot)"
    )


def _save_state(root: Path, settings: Any, params: Any, snap: Any, n_docs: int) -> dict[str, Any]:
    """Write the state file ``kb_query`` reads and remove the drop folders; returns the state."""
    from evertune.kb.index import table_name_for

    state = {
        "lancedb_uri": settings.lancedb_uri,
        "table_name": table_name_for(params),
        "version": snap.version,
        "n_docs": n_docs,
        "rows_total": snap.rows_total,
        "params_hash": params.section_hash("chunk", "embed", "index"),
    }
    (root / STATE_FILE).write_text(json.dumps(state, indent=2))
    for folder in root.iterdir():
        if folder.name.startswith(("day", "warm")):
            shutil.rmtree(folder, ignore_errors=True)
    return state


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark, print the figures and return the record."""
    common.prepare_env()
    from evertune.kb.index import load_checked_embedder

    cfg = QUICK if quick else FULL
    n_docs, fraction = cfg["n_docs"], cfg["changed_fraction"]
    n_changed = round(n_docs * fraction)
    common.banner(
        f"kb_incremental ({'quick' if quick else 'full'}): {n_docs} docs, {n_changed} changed per drop, "
        f"{cfg['reps']} delta drops"
    )
    info = common.machine_info()
    params = common.load_bench_params()
    root = workspace(quick)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    settings = common.settings_with_lancedb(root / "lancedb")

    docs = make_corpus(n_docs, min_words=MIN_WORDS, max_words=MAX_WORDS)
    current = {doc["doc_id"]: doc for doc in docs}
    load_checked_embedder(params)[0].encode(["warm-up"], show_progress_bar=False)  # model load outside timings
    # Warm up lancedb (import, first table) in a throwaway database.
    _sync(write_validated_folder(root / "warm", docs[:8]), 0, params, common.settings_with_lancedb(root / "warm-db"))
    shutil.rmtree(root / "warm-db", ignore_errors=True)

    full, full_entry = _full_refresh(root, docs, params, settings)
    # A different seeded 5% each day, from one generator: the deltas first, then the snapshot.
    rng = random.Random("evertune-bench-incremental")
    ids = sorted(current)
    deltas = [_delta_drop(root, current, sorted(rng.sample(ids, n_changed)), rep + 1, full_entry["seconds"], params,
                          settings) for rep in range(cfg["reps"])]  # fmt: skip
    snap, snapshot = _snapshot_drop(root, current, sorted(rng.sample(ids, n_changed)), cfg["reps"] + 1,
                                    full_entry["seconds"], params, settings)
    summary = summarize(full_entry, deltas, snapshot, n_docs=n_docs, n_changed=n_changed)
    _print_summary(summary, len(deltas))
    state = _save_state(root, settings, params, snap, n_docs)
    record = {"benchmark": "kb_incremental", "quick": quick, "config": cfg, "machine": info,
              "corpus": {"min_words": MIN_WORDS, "max_words": MAX_WORDS, "seed": 0},
              "full": full_entry, "deltas": deltas, "snapshot": snapshot, "summary": summary, "table": state}  # fmt: skip
    common.save_result("kb_incremental", quick, record)
    return record


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
