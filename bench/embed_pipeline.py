"""``embed.backend`` through the real refresh (issue 12 §1): full refresh per backend vs raw torch encode, and
retrieval quality on the project's golden sets.

**Throughput.** The same generated documents (``bench.corpus``) in every round. A sweep on a sample first picks
torch's best intra-op threads x batch size (``embed_backends``' own sweep). Then each round times a raw torch
``encode`` of the chunk texts at that setting and a full ``sync_interval`` into an empty LanceDB folder
(``kb_throughput.pipeline_sync``) with
``embed.backend`` set to each backend (torch, openvino when installed, onnx, onnx-int8), in rotating order. The
ratio is the backend's pipeline chunks/s over that round's raw torch encode; the headline is the median.

**Quality.** The demo scenario's articles as of its last good day (``articles_as_of``: the ground truth a correct
ingestion reaches) are synced per backend into an empty table, and the demo's golden retrieval queries plus every
golden QA question (relevant document: the article it cites) are scored by ``evaluate_retrieval`` (recall@k,
MRR, the pipeline's own retrieval mode). Per query, recall is paired against torch (from the misses) with a
paired-bootstrap CI of the drop.

The exported artifacts go to the bench's own models folder (``EVERTUNE_MODELS_DIR`` is pointed there).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import Any

from bench import common

FULL = {"n_docs": 600, "rounds": 2, "sweep_chunks": 64}
QUICK = {"n_docs": 40, "rounds": 1, "sweep_chunks": 16}
TARGET, STRETCH = 1.5, 2.0
LAST_GOOD_DAY = "2026-11-05"


def backends() -> list[str]:
    """torch, openvino when installed, then the ONNX Runtime ones."""
    return ["torch"] + (["openvino"] if importlib.util.find_spec("openvino") else []) + ["onnx", "onnx-int8"]


def _params_for(backend: str) -> Any:
    return common.load_bench_params(embed={"backend": backend})


def _raw_torch(model: Any, texts: list[str], setting: dict[str, Any]) -> float:
    """Seconds for a raw torch ``encode`` at ``setting`` (threads scoped to the call)."""
    from bench.embed_backends import _encode_seconds
    from evertune.models.embedder import intra_op_threads

    with intra_op_threads(setting["threads"]):
        return _encode_seconds(model, texts, setting["batch"])[0]


def throughput(cfg: dict[str, Any], params: Any, root: Any, names: list[str]) -> dict[str, Any]:
    """Rounds of raw torch encode and one full refresh per backend, rotating the order."""
    import torch

    from bench.corpus import make_corpus, write_validated_folder
    from bench.embed_backends import _sweep, _torch_model
    from bench.kb_throughput import chunk_texts, pipeline_sync
    from evertune.kb.embedding import load_checked_embedder

    docs = make_corpus(cfg["n_docs"], min_words=40, max_words=80)
    folder = write_validated_folder(root / "validated", docs)
    torch_model, _ = load_checked_embedder(params)
    texts = chunk_texts(docs, torch_model, params)
    grid = [{"threads": t, "batch": b} for t in sorted({1, max(1, torch.get_num_threads())}) for b in (32, 64, 128)]
    sweep = _sweep("torch", _torch_model(torch_model), grid, texts[: cfg["sweep_chunks"]])
    setting = sweep["best"]
    print(f"{len(docs)} docs -> {len(texts)} chunks; torch best {setting}", flush=True)
    warm = write_validated_folder(root / "warm", docs[:8])
    for name in names:  # warm-up: load each backend and make a first table, outside the timings
        pipeline_sync(warm, root, _params_for(name), f"warm-{name}")
    rounds = []
    for index in range(cfg["rounds"]):
        order = names[index % len(names):] + names[: index % len(names)]
        entry: dict[str, Any] = {"round": index, "load_before": common.load_average()}
        entry["raw_torch_s"] = _raw_torch(torch_model, texts, setting)
        for name in order:
            seconds, result = pipeline_sync(folder, root, _params_for(name), f"round{index}-{name}")
            if result.chunks_embedded != len(texts):
                raise RuntimeError(f"{name}: embedded {result.chunks_embedded} chunks, expected {len(texts)}")
            entry[name] = {"seconds": seconds, "ratio": entry["raw_torch_s"] / seconds,
                           "embed_s": result.timings.get("embed")}
        entry["load_after"] = common.load_average()
        rounds.append(entry)
        print(f"round {index}: raw torch {len(texts) / entry['raw_torch_s']:.1f} chunks/s; "
              + ", ".join(f"{n} pipeline {entry[n]['ratio']:.2f}x" for n in names)
              + f" (load {entry['load_before']}->{entry['load_after']})", flush=True)
    ratios = {name: common.median([r[name]["ratio"] for r in rounds]) for name in names}
    return {"chunks": len(texts), "torch_setting": setting, "sweep": sweep["all"], "rounds": rounds,
            "median_ratio": ratios}


def _golden(params: Any) -> list[dict[str, Any]]:
    """The demo's golden retrieval queries, and each golden QA question with its cited article as the answer."""
    from evertune.demo.generator import facts_as_of, golden_qa, golden_retrieval

    demo = params.demo
    initial = set(_articles(params, demo.start_date))
    queries = golden_retrieval(initial)
    facts = facts_as_of(LAST_GOOD_DAY, seed=demo.seed, start_date=demo.start_date, n_articles=demo.n_articles)
    queries += [{"query_id": row["qa_id"], "query": row["question"], "relevant_doc_ids": [row["doc_id"]]}
                for row in golden_qa(initial, facts)]
    return queries


def _articles(params: Any, day: str) -> dict[str, dict[str, Any]]:
    from evertune.demo.generator import articles_as_of

    demo = params.demo
    return articles_as_of(day, seed=demo.seed, start_date=demo.start_date, n_articles=demo.n_articles)


def _demo_folder(params: Any, root: Any) -> Any:
    """The demo's live articles on its last good day, as one validated folder."""
    import json

    from bench.corpus import write_validated_folder
    from evertune.kb.records import content_hash

    rows = []
    for index, (doc_id, article) in enumerate(sorted(_articles(params, LAST_GOOD_DAY).items())):
        rows.append({"doc_id": doc_id, "title": article["title"], "text": article["text"], "source": article["source"],
                     "url": article["url"], "updated_at": article["updated_at"],
                     "content_hash": content_hash(article["title"], article["text"], article["source"], article["url"]),
                     "metadata": json.dumps({"format": article["format"]}), "record_ref": f"docs/{index}"})
    return write_validated_folder(root / "demo-validated", rows)


def quality(params: Any, root: Any, names: list[str], n_boot: int) -> dict[str, Any]:
    """recall@k and MRR of the golden queries per backend, recall paired against torch."""
    import numpy as np

    from evertune.kb.golden import canonical_jsonl
    from evertune.kb.index import sync_interval
    from evertune.kb.retrieval import evaluate_retrieval

    queries = _golden(params)
    golden_file = root / "golden_retrieval.jsonl"
    golden_file.write_bytes(canonical_jsonl(queries))
    folder = _demo_folder(params, root)
    per_backend, recall_by = {}, {}
    for name in names:
        backend_params = _params_for(name)
        settings = common.settings_with_lancedb(root / f"demo-db-{name}")
        shutil.rmtree(settings.lancedb_uri, ignore_errors=True)
        result = sync_interval(folder, "2026-11-01", backend_params, settings)
        report = evaluate_retrieval(result.table_name, result.version, golden_file, backend_params,
                                    settings)["candidate"]
        missed = {miss["query_id"]: miss["recall"] for miss in report["misses"]}
        recall_by[name] = np.array([missed.get(q["query_id"], 1.0) for q in queries])
        per_backend[name] = {"recall_at_k": report["recall_at_k"], "mrr": report["mrr"],
                             "n_queries": report["n_queries"], "misses": len(report["misses"])}
    from bench.embed_backends import paired_drop

    for name in names[1:]:
        per_backend[name]["recall_drop_vs_torch"] = paired_drop(recall_by["torch"], recall_by[name], n_boot)
    for name, row in per_backend.items():
        drop = row.get("recall_drop_vs_torch")
        shown = f", drop {drop['mean']:+.3f} [{drop['ci_low']:+.3f}, {drop['ci_high']:+.3f}]" if drop else ""
        print(f"golden {name}: recall@{params.retrieval.k} {row['recall_at_k']:.3f}, MRR {row['mrr']:.3f} "
              f"on {row['n_queries']} queries{shown}", flush=True)
    return {"k": params.retrieval.k, "mode": params.retrieval.mode, "n_queries": len(queries), "backends": per_backend}


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark, print the figures and return the record."""
    root = common.work_root() / "embed_pipeline"
    shutil.rmtree(root / "db", ignore_errors=True)
    os.environ["EVERTUNE_MODELS_DIR"] = str(common.work_root() / "embed_pipeline_models")
    common.prepare_env()
    from evertune.models.embedder import ensure_backend_artifact

    cfg = QUICK if quick else FULL
    common.banner(f"embed_pipeline ({'quick' if quick else 'full'}): {cfg}")
    info = common.machine_info()
    params = common.load_bench_params()
    root.mkdir(parents=True, exist_ok=True)
    names = backends()
    artifacts = {}
    for name in names[1:]:
        folder, sha, built = ensure_backend_artifact(_params_for(name).embed,
                                                     common.work_root() / "embed_pipeline_models")
        artifacts[name] = sha
        print(f"{name}: artifact sha256 {sha[:16]}... ({'exported' if built else 'reused'})", flush=True)
    speed = throughput(cfg, params, root, names)
    golden = quality(params, root, names, 200 if quick else 2000)
    best = max(names[1:], key=lambda n: speed["median_ratio"][n])
    ratio = speed["median_ratio"][best]
    print(f"RESULT embed_pipeline: full refresh with {best} at {ratio:.2f}x the raw torch encode "
          f"(torch pipeline {speed['median_ratio']['torch']:.2f}x); target >= {TARGET}: "
          f"{common.verdict(ratio >= TARGET)}, stretch {STRETCH}: {common.verdict(ratio >= STRETCH)}", flush=True)
    record = {"machine": info, "config": cfg, "artifacts": artifacts, "throughput": speed, "golden": golden,
              "best": best, "best_ratio": ratio}
    common.save_result("embed_pipeline", quick, record)
    return record
