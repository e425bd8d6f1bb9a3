"""Embedding backends, same chunks, same run: torch (its own best threads/batch) vs ONNX fp32 vs ONNX int8.

Target (issue 12 §1): a backend >= 1.5x (stretch 2x) the best torch configuration, with retrieval quality held on
>= 1,000 generated queries: the upper bound of the paired 95% bootstrap CI of the recall@k drop vs torch <= 0.01,
and top-10 overlap with torch >= 0.95.

Method (one process, the shared machine's load recorded at every measurement):

1. A small sweep on a subset of the chunks picks each backend's best setting: torch intra-op threads x batch
   size; ONNX Runtime intra-op threads x graph optimisation level x batch size (fp32 and int8).
2. The chosen settings are timed on the full chunk set in interleaved rounds (torch, onnx, onnx-int8, then the
   next round), so a slow phase of the machine hits every backend alike; a ratio is taken per round against that
   round's torch and the median ratio is reported.
3. Quality: every backend embeds the chunks and the queries; each query is a word span cut from one chunk (its
   label). recall@k and MRR@10 are paired per query against torch; the drop's 95% CI comes from a paired
   bootstrap over queries. Also: overlap of each backend's top-10 with torch's, and the mean cosine of its
   vectors with torch's.

``embed.backend: openvino`` (the fp32 artifact compiled by OpenVINO) is measured too when ``openvino`` is installed.
``encode()`` already sorts inputs by length before batching (sentence-transformers), for every backend alike.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from bench import common

FULL = {"n_docs": 400, "sweep_chunks": 48, "rounds": 2, "queries": 1000, "boot": 2000}
QUICK = {"n_docs": 60, "sweep_chunks": 32, "rounds": 1, "queries": 50, "boot": 200}
K = 5
TARGET, STRETCH = 1.5, 2.0
MAX_RECALL_DROP_UPPER, MIN_TOP10_OVERLAP = 0.01, 0.95


def _encode_seconds(model: Any, texts: list[str], batch_size: int) -> tuple[float, Any]:
    start = time.perf_counter()
    vectors = model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return time.perf_counter() - start, vectors


def make_label_queries(texts: list[str], n: int, *, seed: int = 7) -> tuple[list[str], list[int]]:
    """``n`` queries, each a 5-9 word span of one chunk, with that chunk's index as its label (seeded)."""
    rng = random.Random(seed)
    queries, labels = [], []
    for _ in range(n):
        label = rng.randrange(len(texts))
        words = texts[label].split()
        size = min(len(words), rng.randint(5, 9))
        start = rng.randrange(0, len(words) - size + 1)
        queries.append(" ".join(words[start : start + size]))
        labels.append(label)
    return queries, labels


def ranked(queries: Any, corpus: Any, depth: int = 10) -> Any:
    """Indices of the ``depth`` nearest chunks per query (normalised vectors: dot product = cosine)."""
    import numpy as np

    scores = queries @ corpus.T
    top = np.argpartition(-scores, depth, axis=1)[:, :depth]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1)


def paired_drop(base: Any, other: Any, n_boot: int, *, seed: int = 0) -> dict[str, float]:
    """Mean of ``base - other`` per query with a paired percentile-bootstrap 95% CI."""
    import numpy as np

    diff = np.asarray(base, dtype=float) - np.asarray(other, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    return {"mean": float(diff.mean()), "ci_low": float(np.quantile(means, 0.025)),
            "ci_high": float(np.quantile(means, 0.975))}  # fmt: skip


def quality(ref: dict[str, Any], other: dict[str, Any], labels: list[int], n_boot: int) -> dict[str, Any]:
    """Quality of ``other`` against the torch reference ``ref`` (each: ``chunks``/``queries`` vectors)."""
    import numpy as np

    labels_arr = np.asarray(labels)[:, None]
    top_ref, top_other = ranked(ref["queries"], ref["chunks"]), ranked(other["queries"], other["chunks"])
    hit_ref = (top_ref[:, :K] == labels_arr).any(axis=1)
    hit_other = (top_other[:, :K] == labels_arr).any(axis=1)

    def rr(top: Any) -> Any:
        match = top == labels_arr
        return np.where(match.any(axis=1), 1.0 / (match.argmax(axis=1) + 1), 0.0)

    overlap = [len(set(a) & set(b)) / 10 for a, b in zip(top_ref.tolist(), top_other.tolist(), strict=True)]
    return {
        f"recall@{K}_torch": float(hit_ref.mean()),
        f"recall@{K}": float(hit_other.mean()),
        "recall_drop": paired_drop(hit_ref, hit_other, n_boot),
        "mrr@10_torch": float(rr(top_ref).mean()),
        "mrr@10": float(rr(top_other).mean()),
        "mrr_drop": paired_drop(rr(top_ref), rr(top_other), n_boot, seed=1),
        "top10_overlap": float(np.mean(overlap)),
        "mean_cosine_chunks": float((ref["chunks"] * other["chunks"]).sum(axis=1).mean()),
        "min_cosine_chunks": float((ref["chunks"] * other["chunks"]).sum(axis=1).min()),
        "mean_cosine_queries": float((ref["queries"] * other["queries"]).sum(axis=1).mean()),
    }


def _sweep(name: str, make: Any, grid: list[dict[str, Any]], texts: list[str]) -> dict[str, Any]:
    """Time each setting of ``grid`` on ``texts`` (after a warm-up); return the fastest with all timings."""
    results = []
    for setting in grid:
        model = make(setting)
        _encode_seconds(model, texts[:16], setting["batch"])
        seconds, _ = _encode_seconds(model, texts, setting["batch"])
        rate = len(texts) / seconds
        results.append({**setting, "chunks_per_s": rate, "load": common.load_average()})
        print(f"  sweep {name} {setting}: {rate:.1f} chunks/s (load {common.load_average()})", flush=True)
    return {"best": max(results, key=lambda r: r["chunks_per_s"]), "all": results}


def _torch_model(base: Any):
    def make(setting: dict[str, Any]) -> Any:
        import torch

        torch.set_num_threads(setting["threads"])
        return base

    return make


def _onnx_model(source: str, folder: Path):
    from evertune.models.onnx_export import ONNX_FILE, ort_session, swap_encoder

    def make(setting: dict[str, Any]) -> Any:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(source, device="cpu")
        swap_encoder(model, ort_session(folder / ONNX_FILE, threads=setting["threads"], level=setting["level"]))
        return model

    return make


def _openvino_model(source: str, folder: Path):
    from evertune.models.onnx_export import ONNX_FILE, OpenVinoSession, swap_encoder

    def make(setting: dict[str, Any]) -> Any:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(source, device="cpu")
        swap_encoder(model, OpenVinoSession(folder / ONNX_FILE, threads=setting["threads"], hint=setting["hint"]))
        return model

    return make


def _prepare(cfg: dict[str, Any], params: Any) -> tuple[Any, list[str], int, str, dict[str, Path]]:
    from bench.corpus import make_corpus
    from bench.kb_throughput import chunk_texts
    from evertune.kb.embedding import load_checked_embedder
    from evertune.models.embedder import ensure_backend_artifact, resolve_embedder

    model, _ = load_checked_embedder(params)
    texts = chunk_texts(make_corpus(cfg["n_docs"]), model, params)
    n_tokens = sum(len(ids) for ids in model.tokenizer(texts, add_special_tokens=True)["input_ids"])
    models_dir = common.work_root() / "embed_backends_models"
    folders = {}
    backends = ("onnx", "onnx-int8") + (("openvino",) if importlib.util.find_spec("openvino") else ())
    for backend in backends:
        started = time.perf_counter()
        folder, sha, built = ensure_backend_artifact(params.embed.model_copy(update={"backend": backend}), models_dir)
        print(f"{backend}: {folder.name} sha256 {sha[:16]}... ({'exported' if built else 'reused'} "
              f"in {time.perf_counter() - started:.1f} s)", flush=True)  # fmt: skip
        folders[backend] = folder
    return model, texts, n_tokens, resolve_embedder(params.embed.model), folders


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark, print the figures and return the record."""
    common.prepare_env()
    import numpy as np
    import torch

    cfg = QUICK if quick else FULL
    common.banner(f"embed_backends ({'quick' if quick else 'full'}): {cfg}")
    info = common.machine_info()
    params = common.load_bench_params()
    model, texts, n_tokens, source, folders = _prepare(cfg, params)
    print(f"{len(texts)} chunks, {n_tokens / len(texts):.0f} tokens/chunk on average; load {common.load_average()}")
    sweep_texts = texts[: cfg["sweep_chunks"]]
    threads = sorted({1, max(1, torch.get_num_threads())})
    batches = (32, 64, 128)
    makers = {"torch": _torch_model(model)}
    grids = {"torch": [{"threads": t, "batch": b} for t in threads for b in batches]}
    for backend, folder in folders.items():
        if backend == "openvino":
            makers[backend] = _openvino_model(source, folder)
            grids[backend] = [{"threads": t, "hint": h, "batch": 64} for t in threads for h in ("LATENCY", "THROUGHPUT")]
            continue
        makers[backend] = _onnx_model(source, folder)
        grids[backend] = [{"threads": t, "level": lv, "batch": b}
                          for t in threads for lv in ("basic", "all") for b in (32, 128)]  # fmt: skip
    sweeps = {name: _sweep(name, makers[name], grids[name], sweep_texts) for name in makers}
    best = {name: sweep["best"] for name, sweep in sweeps.items()}
    chosen = {name: makers[name](best[name]) for name in makers}

    rounds, vectors = [], {}
    for number in range(cfg["rounds"]):
        entry: dict[str, Any] = {"round": number, "load_before": common.load_average()}
        for name, backend_model in chosen.items():
            if name == "torch":
                makers[name](best[name])  # torch threads are process-wide: set them back before timing
            seconds, vectors[name] = _encode_seconds(backend_model, texts, best[name]["batch"])
            entry[name] = len(texts) / seconds
        entry["load_after"] = common.load_average()
        entry["ratios"] = {name: entry[name] / entry["torch"] for name in chosen}
        print(f"round {number}: " + ", ".join(f"{n} {entry[n]:.1f} chunks/s ({entry['ratios'][n]:.2f}x)"
                                               for n in chosen) + f" (load {entry['load_before']}->"
              f"{entry['load_after']})", flush=True)  # fmt: skip
        rounds.append(entry)

    queries, labels = make_label_queries(texts, cfg["queries"])
    embedded = {}
    for name, backend_model in chosen.items():
        if name == "torch":
            makers[name](best[name])
        _, qv = _encode_seconds(backend_model, queries, 64)
        embedded[name] = {"chunks": np.asarray(vectors[name]), "queries": np.asarray(qv)}
    summary: dict[str, Any] = {"chunks": len(texts), "tokens_per_chunk": n_tokens / len(texts), "best": best,
                               "queries": len(queries), "k": K}  # fmt: skip
    for name in chosen:
        ratio = common.median([r["ratios"][name] for r in rounds])
        entry = {"chunks_per_s_median": common.median([r[name] for r in rounds]), "ratio_vs_best_torch": ratio}
        if name != "torch":
            entry["quality"] = q = quality(embedded["torch"], embedded[name], labels, cfg["boot"])
            entry["quality_ok"] = (q["recall_drop"]["ci_high"] <= MAX_RECALL_DROP_UPPER
                                   and q["top10_overlap"] >= MIN_TOP10_OVERLAP)  # fmt: skip
            print(f"RESULT embed_backends {name}: {ratio:.2f}x best torch (target {TARGET}x: "
                  f"{common.verdict(ratio >= TARGET)}); recall@{K} {q[f'recall@{K}']:.3f} vs torch "
                  f"{q[f'recall@{K}_torch']:.3f}, drop {q['recall_drop']['mean']:+.4f} "
                  f"[95% CI {q['recall_drop']['ci_low']:+.4f}, {q['recall_drop']['ci_high']:+.4f}]; "
                  f"MRR@10 {q['mrr@10']:.3f} vs {q['mrr@10_torch']:.3f}; top-10 overlap {q['top10_overlap']:.3f}; "
                  f"mean cosine {q['mean_cosine_chunks']:.4f} (min {q['min_cosine_chunks']:.4f}); "
                  f"quality bar: {common.verdict(entry['quality_ok'])}", flush=True)  # fmt: skip
        summary[name] = entry
    print(f"load average at end: {[round(x, 2) for x in os.getloadavg()]}")
    record = {"benchmark": "embed_backends", "quick": quick, "config": cfg, "machine": info, "sweeps": sweeps,
              "rounds": rounds, "summary": summary}  # fmt: skip
    common.save_result("embed_backends", quick, record)
    if quick:
        shutil.rmtree(common.work_root() / "embed_backends_models", ignore_errors=True)
    return record


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
