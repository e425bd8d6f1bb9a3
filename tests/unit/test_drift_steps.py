"""The step helpers of check_drift, one by one (fast: no embedding test is run here)."""

from __future__ import annotations

import pytest

from evertune.config import load_params
from evertune.tuning.drift import (
    check_category_lengths,
    classify_severity,
    distribution_tests,
    embedding_test,
    set_aside_shared,
)


@pytest.fixture
def params():
    return load_params().drift


def test_check_category_lengths():
    check_category_lengths("reference", ["a", "b"], {"topic": ["x", "y"]})
    with pytest.raises(ValueError, match="current category 'topic' has 1 values for 2 texts"):
        check_category_lengths("current", ["a", "b"], {"topic": ["x"]})


def test_set_aside_shared_keeps_new_texts_and_their_categories():
    texts, categories, n_shared = set_aside_shared(["a", "b"], ["b", "c", "a", "d"], {"topic": ["1", "2", "3", "4"]})
    assert (texts, categories, n_shared) == (["c", "d"], {"topic": ["2", "4"]}, 2)


def test_embedding_test_skips_small_sides_and_checks_the_shape(params):
    small = embedding_test(["a"] * (params.min_samples - 1), ["b"] * 50, lambda texts: None, params, seed=1)
    assert small["skipped"] and "drift.min_samples" in small["reason"]
    enough = ["t"] * params.min_samples
    with pytest.raises(ValueError, match="embed_fn returned shape"):
        embedding_test(enough, enough, lambda texts: [[0.0]] * (len(texts) - 1), params, seed=1)


def test_distribution_tests_cover_lengths_and_shared_fields():
    tests = distribution_tests(["a b", "a b c"], ["a", "b c d e"], {"topic": ["x", "y"], "only_ref": ["1", "2"]},
                               {"topic": ["x", "x"]})
    assert list(tests) == ["token_count_ks", "char_length_ks", "topic_chi2"]


def _embedding(p_value: float, auc: float) -> dict:
    return {"skipped": False, "p_value": p_value, "auc": auc}


def test_classify_severity_rule(params):
    quiet = {"ks": {"statistic": 0.1, "p_value": 0.9}}
    loud = {"ks": {"statistic": 0.9, "p_value": 0.0}}
    assert classify_severity(_embedding(0.0, params.max_auc + 0.1), quiet, params)[0] == "severe"
    assert classify_severity(_embedding(0.0, params.max_auc - 0.01), quiet, params)[0] == "moderate"
    assert classify_severity(_embedding(0.9, params.max_auc + 0.1), quiet, params)[0] == "none"
    severity, reasons = classify_severity({"skipped": True, "reason": "too few"}, loud, params)
    assert severity == "moderate"
    assert reasons[0] == "embedding test skipped: too few" and reasons[1].startswith("ks: statistic 0.9")
    severity, reasons = classify_severity({"skipped": True, "reason": "r"}, {"ks": {"skipped": True, "reason": "n"}},
                                          params)
    assert (severity, reasons) == ("none", ["embedding test skipped: r", "ks skipped: n"])
