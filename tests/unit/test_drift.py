"""Training-data drift: a topic-mix shift is flagged, a resample of the same distribution is not."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from evertune.config import DriftParams, load_params
from evertune.tuning.drift import check_drift

TOPICS = {
    "billing": "invoice plan price refund card payment subscription charge upgrade receipt tax annual".split(),
    "sync": "device offline conflict upload laptop phone folder realtime merge network version restore".split(),
    "security": "password login twofactor token session encryption breach phishing audit key sso lock".split(),
    "sharing": "link invite guest permission team workspace comment mention public collaborator owner".split(),
}
COMMON = "how do i the my notes can you please help with in app account setting change why does not".split()


def make_corpus(n: int, mix: dict[str, float], seed: int) -> tuple[list[str], list[str]]:
    """Synthetic help-center questions: topic words plus common filler, length 8-20 words."""
    rng = np.random.default_rng(seed)
    names = sorted(mix)
    probs = np.array([mix[name] for name in names], dtype=float)
    topics = rng.choice(names, size=n, p=probs / probs.sum())
    texts = []
    for topic in topics:
        length = int(rng.integers(8, 21))
        words = [
            str(rng.choice(TOPICS[topic])) if rng.random() < 0.4 else str(rng.choice(COMMON)) for _ in range(length)
        ]
        texts.append(" ".join(words))
    return texts, [str(t) for t in topics]


def hashed_bow(texts: list[str], dim: int = 64) -> np.ndarray:
    """A cheap deterministic embedding: L2-normalised hashed bag of words."""
    out = np.zeros((len(texts), dim))
    for row, text in enumerate(texts):
        for word in text.split():
            out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % dim] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms == 0, 1.0, norms)


REFERENCE_MIX = {"billing": 0.4, "sync": 0.3, "security": 0.2, "sharing": 0.1}
SHIFTED_MIX = {"billing": 0.05, "sync": 0.05, "security": 0.3, "sharing": 0.6}
PARAMS = DriftParams(n_permutations=100)


@pytest.mark.parametrize("method", ["domain_classifier", "mmd"])
def test_topic_shift_is_severe(method: str) -> None:
    params = PARAMS.model_copy(update={"method": method})
    ref, ref_topics = make_corpus(200, REFERENCE_MIX, seed=1)
    cur, cur_topics = make_corpus(200, SHIFTED_MIX, seed=2)
    report = check_drift(ref, cur, hashed_bow, params, seed=0,
                         reference_categories={"topic": ref_topics}, current_categories={"topic": cur_topics})
    assert report.severity == "severe", report.reasons
    assert report.embedding["p_value"] < params.p_value
    if method == "mmd":
        assert report.embedding["mmd2"] > params.max_mmd
    else:
        assert report.embedding["auc"] > params.max_auc
    assert report.tests["topic_chi2"]["p_value"] < 1e-6
    assert report.tests["topic_chi2"]["current_mix"]["sharing"] > 0.4


@pytest.mark.parametrize("seed", [11, 12, 13])
@pytest.mark.parametrize("method", ["domain_classifier", "mmd"])
def test_resample_of_same_distribution_is_not_flagged(method: str, seed: int) -> None:
    params = PARAMS.model_copy(update={"method": method})
    ref, ref_topics = make_corpus(200, REFERENCE_MIX, seed=seed)
    cur, cur_topics = make_corpus(200, REFERENCE_MIX, seed=seed + 100)
    report = check_drift(ref, cur, hashed_bow, params, seed=seed,
                         reference_categories={"topic": ref_topics}, current_categories={"topic": cur_topics})
    assert report.severity == "none", report.reasons
    assert report.embedding["p_value"] >= params.p_value
    if method == "domain_classifier":
        assert report.embedding["auc"] < params.max_auc


def test_moderate_when_only_lengths_differ() -> None:
    # Same vocabulary and mix, but the new questions are much longer: the KS test fires, embeddings barely move.
    ref, _ = make_corpus(200, REFERENCE_MIX, seed=3)
    cur, _ = make_corpus(200, REFERENCE_MIX, seed=4)
    cur = [f"{text} {text} {text}" for text in cur]
    params = PARAMS.model_copy(update={"method": "mmd"})
    report = check_drift(ref, cur, hashed_bow, params, seed=0)
    assert report.tests["token_count_ks"]["p_value"] < params.p_value
    assert report.tests["char_length_ks"]["p_value"] < params.p_value
    # Repeating a text keeps its normalised bag of words: the embedding test must not call this severe.
    assert report.embedding["p_value"] >= params.p_value
    assert report.severity == "moderate", report.reasons


def test_too_few_samples_skips_embedding_test_and_says_so() -> None:
    ref, _ = make_corpus(5, REFERENCE_MIX, seed=1)
    cur, _ = make_corpus(5, SHIFTED_MIX, seed=2)
    calls: list[int] = []

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return hashed_bow(texts)

    report = check_drift(ref, cur, embed, PARAMS, seed=0)
    assert calls == []
    assert report.embedding["skipped"] is True
    assert any("skipped" in reason and "min_samples" in reason for reason in report.reasons)
    assert report.to_mlflow()["params"]["drift_embedding_skipped"] is True


def test_report_is_deterministic_and_serialisable() -> None:
    ref, ref_topics = make_corpus(80, REFERENCE_MIX, seed=5)
    cur, cur_topics = make_corpus(80, SHIFTED_MIX, seed=6)
    kwargs = {"reference_categories": {"topic": ref_topics}, "current_categories": {"topic": cur_topics}}
    first = check_drift(ref, cur, hashed_bow, PARAMS, seed=3, **kwargs)
    second = check_drift(ref, cur, hashed_bow, PARAMS, seed=3, **kwargs)
    assert first.to_dict() == second.to_dict()
    json.dumps(first.to_dict())
    flat = first.to_mlflow()
    assert all(isinstance(v, float) for v in flat["metrics"].values())
    for key in ("drift_embedding_auc", "drift_embedding_p_value", "drift_token_count_ks_p_value",
                "drift_topic_chi2_statistic", "drift_severity_level"):
        assert key in flat["metrics"]
    assert flat["params"]["drift_threshold_max_auc"] == PARAMS.max_auc
    assert flat["params"]["drift_severity"] == first.severity


def test_subsampling_caps_the_embedded_texts() -> None:
    params = PARAMS.model_copy(update={"max_samples": 50, "method": "mmd"})
    ref, _ = make_corpus(300, REFERENCE_MIX, seed=7)
    cur, _ = make_corpus(80, REFERENCE_MIX, seed=8)
    seen: list[int] = []

    def embed(texts: list[str]) -> np.ndarray:
        seen.append(len(texts))
        return hashed_bow(texts)

    report = check_drift(ref, cur, embed, params, seed=0)
    assert seen == [100]
    assert (report.embedding["n_used_reference"], report.embedding["n_used_current"]) == (50, 50)
    assert (report.n_reference, report.n_current) == (300, 80)


def test_misaligned_categories_are_rejected() -> None:
    ref, topics = make_corpus(30, REFERENCE_MIX, seed=1)
    with pytest.raises(ValueError, match="topic"):
        check_drift(ref, ref, hashed_bow, PARAMS, seed=0,
                    reference_categories={"topic": topics[:-1]}, current_categories={"topic": topics})


def test_params_refuse_unreachable_p_value() -> None:
    with pytest.raises(ValueError, match="n_permutations"):
        DriftParams(n_permutations=20, p_value=0.01)


@pytest.mark.slow
def test_real_minilm_embedder_flags_topic_shift_not_resample() -> None:
    from evertune.models.embedder import load_embedder

    model = load_embedder(load_params().embed)

    def embed(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=32, normalize_embeddings=True)

    billing = [f"How do I get a refund for the {p} plan charged on my {c}?" for p in ("pro", "team", "basic")
               for c in ("credit card", "invoice", "receipt", "annual bill", "monthly bill", "company card",
                         "paypal account", "bank transfer")]
    security = [f"How do I reset my {t} after a {e}?" for t in ("password", "two-factor code", "login", "sso key")
                for e in ("phishing email", "lost phone", "suspicious login", "session expiry", "data breach",
                          "locked account")]
    params = PARAMS.model_copy(update={"min_samples": 10})
    shifted = check_drift(billing, security, embed, params, seed=0)
    assert shifted.severity == "severe", shifted.reasons
    assert shifted.embedding["auc"] > 0.95
    rng = np.random.default_rng(0)
    order = rng.permutation(len(billing + security))
    pool = [(billing + security)[i] for i in order]
    same = check_drift(pool[::2], pool[1::2], embed, params, seed=0)
    assert same.severity != "severe", same.reasons
    assert same.embedding["p_value"] >= params.p_value


def test_rank_auc_matches_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    from evertune.tuning.drift import _roc_auc

    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = np.r_[np.zeros(20, dtype=int), np.ones(30, dtype=int)]
        scores = rng.integers(0, 6, size=50).astype(float)  # many ties
        assert _roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_mmd_block_sums_match_the_direct_formula() -> None:
    from sklearn.metrics.pairwise import rbf_kernel

    from evertune.tuning.drift import _mmd2_unbiased

    rng = np.random.default_rng(1)
    kernel = rbf_kernel(rng.normal(size=(30, 5)), gamma=0.3)
    is_x = np.zeros(30, dtype=bool)
    is_x[rng.permutation(30)[:12]] = True
    kxx, kyy = kernel[np.ix_(is_x, is_x)], kernel[np.ix_(~is_x, ~is_x)]
    direct = ((kxx.sum() - np.trace(kxx)) / (12 * 11) + (kyy.sum() - np.trace(kyy)) / (18 * 17)
              - 2 * kernel[np.ix_(is_x, ~is_x)].mean())
    fast = _mmd2_unbiased(kernel, kernel.sum(axis=1), np.diag(kernel).copy(), is_x)
    assert fast == pytest.approx(direct, abs=1e-12)


@pytest.mark.parametrize(("increment_mix", "expected"), [(SHIFTED_MIX, "severe"), (REFERENCE_MIX, "none")])
def test_rolling_window_compares_only_the_new_texts(increment_mix: dict[str, float], expected: str) -> None:
    # The new training set repeats the champion's data and adds an increment, as a rolling window does.
    ref, ref_topics = make_corpus(150, REFERENCE_MIX, seed=21)
    new, new_topics = make_corpus(150, increment_mix, seed=22)
    report = check_drift(ref, ref + new, hashed_bow, PARAMS, seed=0,
                         reference_categories={"topic": ref_topics},
                         current_categories={"topic": ref_topics + new_topics})
    assert report.n_shared == 150 and report.n_current == 300
    assert report.embedding["n_used_current"] == 150
    assert report.severity == expected, report.reasons
    assert report.to_mlflow()["metrics"]["drift_n_shared"] == 150.0
    kept = check_drift(ref, ref + new, hashed_bow, PARAMS.model_copy(update={"method": "mmd"}), seed=0,
                       exclude_shared=False)
    assert kept.n_shared == 0 and kept.embedding["n_used_current"] == 300
