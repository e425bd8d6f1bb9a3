"""The pure helpers of the benchmarks (summaries, the training probe's figures, variant selection)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # bench/ is a top-level package of the repository, not installed
    sys.path.insert(0, str(REPO_ROOT))

from bench import kb_incremental, kb_throughput, train  # noqa: E402 (import after the path set-up above)


def _sync(seconds: float, chunks: int, embed: float, total: float, ratio: float | None = None) -> dict:
    entry = {"seconds": seconds, "chunks_embedded": chunks, "timings": {"embed": embed, "total": total}}
    return entry | ({"ratio_to_full": ratio} if ratio is not None else {})


def test_kb_incremental_summary_and_normalised_ratio():
    full = _sync(100.0, 1000, 80.0, 100.0)  # 12.5 chunks/s
    deltas = [_sync(6.0, 50, 5.0, 6.0, 0.06), _sync(8.0, 50, 6.0, 8.0, 0.08), _sync(12.0, 50, 4.0, 12.0, 0.12)]
    snapshot = _sync(20.0, 50, 4.0, 20.0, 0.2)
    summary = kb_incremental.summarize(full, deltas, snapshot, n_docs=1000, n_changed=50)
    assert summary["delta_seconds_median"] == 8.0 and summary["ratio_median"] == pytest.approx(0.08)
    assert summary["ratio_max"] == 0.12 and summary["meets_target"] is True
    # Non-embedding time plus 50 chunks at 12.5 chunks/s (4 s), over the full total of 100 s.
    assert summary["ratio_normalised_median"] == pytest.approx((2.0 + 4.0) / 100)
    assert summary["snapshot_ratio_normalised"] == pytest.approx((16.0 + 4.0) / 100)
    assert summary["snapshot_meets_target"] is False


def test_kb_throughput_summary():
    reps = [{"ratio": r, "raw_chunks_per_s": 10.0, "pipeline_chunks_per_s": 10.0 * r, "embed_step_ratio": 0.9,
             "timings": {"embed": 8.0, "chunk": 1.0, "write": 1.0, "total": 10.0}} for r in (0.8, 0.95, 0.9)]
    summary = kb_throughput.summarize(reps, n_chunks=100, n_docs=50, n_tokens=12_800)
    assert summary["ratio_median"] == 0.9 and (summary["ratio_min"], summary["ratio_max"]) == (0.8, 0.95)
    assert summary["tokens_per_chunk"] == 128 and summary["meets_target"] is True
    assert summary["phase_seconds_median"] == {"chunk": 1.0, "embed": 8.0, "write": 1.0}
    assert summary["non_embed_share_of_total"] == pytest.approx(0.2)


def test_probe_report_excludes_the_first_step_from_the_steady_rate():
    report = train.probe_report(300, 10.0, 16.0, [(1, 12.0, 100), (2, 14.0, 200), (3, 16.0, 300)], device="cpu",
                                sampled_peak=3 * 2**20, hwm_peak=2 * 2**20, cuda_peak=None)
    assert report["tokens_per_s"] == 50.0 and report["steady_tokens_per_s"] == 50.0
    assert report["first_step_s"] == 2.0 and report["step_seconds"] == [2.0, 2.0]
    assert report["peak_train_rss_mb"] == 3.0 and report["peak_cuda_allocated_mb"] is None
    cuda = train.probe_report(0, 1.0, 1.0, [], device="cuda", sampled_peak=0, hwm_peak=None, cuda_peak=2**20)
    assert cuda["tokens_per_s"] == 0.0 and cuda["steady_tokens_per_s"] is None
    assert cuda["peak_train_rss_mb"] is None and cuda["peak_cuda_allocated_mb"] == 1.0


def test_chosen_variants_must_include_the_compared_pair():
    assert train.chosen_variants("evertune,trl_defaults,trl_defaults_fp32")[-1] == "trl_defaults_fp32"
    for bad in ("evertune", "evertune,trl_defaults,nope", ""):
        with pytest.raises(SystemExit):
            train.chosen_variants(bad)


def test_train_summary_ratios():
    def run(variant: str, tps: float, memory: float) -> dict:
        return {"variant": variant, "device": "cpu", "tokens_per_s": tps, "steady_tokens_per_s": tps,
                "peak_train_rss_mb": memory, "peak_process_rss_mb": memory, "config": {"v": variant}}

    runs = [run("evertune", 30.0, 500.0), run("trl_defaults", 20.0, 1000.0), run("evertune", 34.0, 500.0)]
    summary = train.summarize(runs, ("evertune", "trl_defaults"), "tiny")
    assert summary["speed_ratio"] == pytest.approx(32.0 / 20.0) and summary["memory_ratio"] == 0.5
    assert summary["target_applies"] is False and summary["meets_target"] is None
    assert summary["configs"] == {"evertune": {"v": "evertune"}, "trl_defaults": {"v": "trl_defaults"}}
