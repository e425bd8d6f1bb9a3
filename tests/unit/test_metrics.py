"""Text metrics (token F1, EM, ROUGE-L, BLEU via local evaluate modules), paired bootstrap CI, perplexity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evertune.tuning import metrics
from evertune.tuning.metrics import (
    EVAL_MODULES_DIR,
    bootstrap_cis,
    corpus_bleu,
    exact_match,
    normalize_answer,
    paired_bootstrap_ci,
    perplexity,
    rouge_l_per_item,
    score_generations,
    token_f1,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Cat, sat!", "cat sat"),
        ("An apple a day", "apple day"),
        ("  Settings > Billing > Plan. ", "settings billing plan"),
        ("Theory of the ANT", "theory of ant"),  # articles only as whole words
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("prediction", "reference", "f1", "em"),
    [
        ("Paris", "paris.", 1.0, 1.0),
        ("the cat sat on the mat", "a cat sat on a mat", 1.0, 1.0),
        ("open billing settings", "open the billing page", 2 * (2 / 3) * (2 / 3) / (4 / 3), 0.0),
        ("yes yes", "yes", 2 * 0.5 * 1.0 / 1.5, 0.0),  # repeated tokens count once per match
        ("nothing alike", "totally different", 0.0, 0.0),
        ("", "", 1.0, 1.0),
        ("something", "", 0.0, 0.0),
        ("Tokyo", ["Kyoto", "tokyo"], 1.0, 1.0),  # best of several references
    ],
)
def test_token_f1_and_exact_match(prediction, reference, f1: float, em: float) -> None:
    assert token_f1(prediction, reference) == pytest.approx(f1)
    assert exact_match(prediction, reference) == em


def test_rouge_l_per_item_through_local_module() -> None:
    # LCS("the cat sat", "the cat on the mat") = 2 -> P 2/3, R 2/5, F 0.5.
    scores = rouge_l_per_item(["the cat sat", "identical text here", "zzz"],
                              ["the cat on the mat", "identical text here", "the answer"])
    assert scores == pytest.approx([0.5, 1.0, 0.0])
    module = metrics.load_eval_module("rouge_local")
    assert module.name == "rouge_local"
    result = module.compute(predictions=["the cat sat"], references=["the cat on the mat"])
    assert set(result) == {"rouge1", "rouge2", "rougeL"}
    assert result["rouge2"] == pytest.approx(2 * 0.5 * 0.25 / 0.75)  # "the cat" is the only shared bigram


def test_corpus_bleu_through_local_module() -> None:
    import sacrebleu

    predictions = ["the cat is on the mat today", "open the billing settings page now"]
    references = ["the cat is on the mat", "open the billing page in settings"]
    expected = sacrebleu.corpus_bleu(predictions, [references]).score
    assert corpus_bleu(predictions, references) == pytest.approx(expected)
    assert 0.0 < expected < 100.0
    assert corpus_bleu(["exactly the same words here"], ["exactly the same words here"]) == pytest.approx(100.0)


def test_eval_modules_ship_inside_the_package() -> None:
    for name in ("rouge_local", "bleu_local"):
        assert (EVAL_MODULES_DIR / name / f"{name}.py").is_file()
    assert EVAL_MODULES_DIR.parent.name == "tuning"


def test_score_generations_aggregates_per_item_scores() -> None:
    predictions = ["Use File > Export.", "Open billing", "no idea"]
    references = ["Use File > Export", "Open Settings > Billing", "Click Share"]
    scores = score_generations(predictions, references)
    assert set(scores.per_item) == {"token_f1", "exact_match", "rougeL"}
    assert all(len(values) == 3 for values in scores.per_item.values())
    for name, values in scores.per_item.items():
        assert scores.aggregate[name] == pytest.approx(sum(values) / 3)
    assert scores.per_item["exact_match"] == [1.0, 0.0, 0.0]
    assert scores.aggregate["n"] == 3
    assert "bleu" in scores.aggregate
    with pytest.raises(ValueError):
        score_generations(["a"], ["a", "b"])


def test_paired_bootstrap_ci_is_deterministic_and_sensible() -> None:
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 1, size=200)
    a = np.clip(b + 0.1 + rng.normal(0, 0.05, size=200), 0, None)
    first = paired_bootstrap_ci(a, b, n=1000, seed=5)
    assert first == paired_bootstrap_ci(a, b, n=1000, seed=5)
    assert first != paired_bootstrap_ci(a, b, n=1000, seed=6)
    low, high = first
    assert 0.0 < low < float(np.mean(a - b)) < high
    assert paired_bootstrap_ci(b, b, n=200, seed=1) == (0.0, 0.0)
    # Reversing the roles mirrors the interval.
    mirrored = paired_bootstrap_ci(b, a, n=1000, seed=5)
    assert mirrored == pytest.approx((-high, -low), abs=1e-3)


def test_paired_bootstrap_ci_covers_the_true_difference() -> None:
    rng = np.random.default_rng(42)
    covered = 0
    reps = 200
    for rep in range(reps):
        base = rng.uniform(0, 1, size=80)
        a = base + rng.normal(0.05, 0.2, size=80)  # true mean difference 0.05
        low, high = paired_bootstrap_ci(a, base, n=400, seed=rep)
        covered += low <= 0.05 <= high
    assert 0.88 <= covered / reps <= 0.99


def test_paired_bootstrap_ci_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1.0, 2.0], [1.0], n=10, seed=0)
    with pytest.raises(ValueError):
        paired_bootstrap_ci([], [], n=10, seed=0)
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1.0], [1.0], n=10, seed=0, alpha=1.5)


def test_bootstrap_cis_for_shared_metrics() -> None:
    cis = bootstrap_cis({"token_f1": [1.0, 1.0, 0.0], "rougeL": [0.5, 0.5, 0.5]},
                        {"token_f1": [0.0, 0.0, 0.0], "bleu": [1.0, 1.0, 1.0]}, n=100, seed=0)
    assert set(cis) == {"token_f1"}
    assert cis["token_f1"][0] >= 0.0


def test_perplexity() -> None:
    assert perplexity([math.log(10.0)] * 4) == pytest.approx(10.0)
    assert perplexity([[1.0, 2.0], [3.0]]) == pytest.approx(math.exp(2.0))  # tokens pooled
    assert perplexity([1.0, 2.0, 9.0], mask=[1, 1, 0]) == pytest.approx(math.exp(1.5))
    assert perplexity([[1.0, 9.0], [2.0]], mask=[[1, 0], [1]]) == pytest.approx(math.exp(1.5))
    assert perplexity([800.0]) == math.inf
    with pytest.raises(ValueError):
        perplexity([])
    with pytest.raises(ValueError):
        perplexity([1.0, -0.5])
    with pytest.raises(ValueError):
        perplexity([1.0, 2.0], mask=[1])
