"""Evaluation metrics for generated answers: token F1, exact match, ROUGE-L, BLEU, paired bootstrap CIs, perplexity.

Token F1 and exact match use SQuAD-style normalisation (lowercase, drop punctuation and the articles a/an/the,
collapse whitespace). ROUGE and BLEU run through local HF ``evaluate`` modules shipped in ``eval_modules/``
(``evaluate.load("rouge")`` needs the hub, which is unreachable), loaded by path. ``evaluate`` is imported
inside functions because it takes seconds to import.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

#: Folder holding the local evaluate modules (``<name>/<name>.py``).
EVAL_MODULES_DIR = Path(__file__).resolve().parent / "eval_modules"
ROUGE_MODULE = "rouge_local"
BLEU_MODULE = "bleu_local"

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)

Reference = str | Sequence[str]


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lowercase, strip punctuation and articles, collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _references(reference: Reference) -> list[str]:
    refs = [reference] if isinstance(reference, str) else list(reference)
    if not refs:
        raise ValueError("every prediction needs at least one reference")
    return refs


def _f1_single(prediction: str, reference: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        # Both empty counts as a match; one empty as a total miss (SQuAD v2 convention).
        return float(pred_tokens == ref_tokens)
    common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: Reference) -> float:
    """Token-overlap F1 after normalisation; the best over several references.

    Args:
        prediction: The generated answer.
        reference: One reference answer or several.

    Returns:
        F1 in [0, 1].
    """
    return max(_f1_single(prediction, ref) for ref in _references(reference))


def exact_match(prediction: str, reference: Reference) -> float:
    """1.0 when the normalised prediction equals a normalised reference, else 0.0."""
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(ref) for ref in _references(reference)))


@lru_cache(maxsize=4)
def load_eval_module(name: str) -> Any:
    """Load one of the shipped ``evaluate`` modules by path (offline).

    Args:
        name: ``rouge_local`` or ``bleu_local`` (a folder under :data:`EVAL_MODULES_DIR`).

    Returns:
        The ``evaluate.EvaluationModule``.

    Raises:
        FileNotFoundError: No such module folder.
    """
    import evaluate

    folder = EVAL_MODULES_DIR / name
    if not (folder / f"{name}.py").is_file():
        raise FileNotFoundError(f"no local evaluate module {name!r} under {EVAL_MODULES_DIR}")
    # keep_in_memory: no Arrow cache files under ~/.cache for a metric that is computed once.
    return evaluate.load(str(folder), keep_in_memory=True)


def rouge_l_per_item(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure per (prediction, reference) pair, via the local evaluate module.

    Args:
        predictions: Generated answers.
        references: One reference string per prediction.

    Returns:
        One score in [0, 1] per pair.
    """
    _check_lengths(predictions, references)
    if not predictions:
        return []
    result = load_eval_module(ROUGE_MODULE).compute(
        predictions=list(predictions), references=list(references), rouge_types=["rougeL"], per_item=True
    )
    return [float(value) for value in result["rougeL_per_item"]]


def corpus_bleu(predictions: Sequence[str], references: Sequence[Reference]) -> float:
    """Corpus BLEU (0-100) via the local evaluate module (sacrebleu, 13a tokenizer).

    Args:
        predictions: Generated answers.
        references: A reference string (or a list with the same number of references) per prediction.

    Returns:
        BLEU in [0, 100].
    """
    _check_lengths(predictions, references)
    if not predictions:
        return 0.0
    refs = [_references(ref) for ref in references]
    result = load_eval_module(BLEU_MODULE).compute(predictions=list(predictions), references=refs)
    return float(result["bleu"])


@dataclass(frozen=True)
class GenerationScores:
    """Scores of one model on one evaluation set.

    Attributes:
        aggregate: ``token_f1``, ``exact_match``, ``rougeL`` (means in [0, 1]), ``bleu`` (corpus, 0-100), ``n``.
        per_item: ``token_f1``, ``exact_match``, ``rougeL`` lists aligned with the inputs (for bootstrap CIs).
    """

    aggregate: dict[str, float]
    per_item: dict[str, list[float]]


def score_generations(
    predictions: Sequence[str], references: Sequence[str], *, with_bleu: bool = True
) -> GenerationScores:
    """Score generated answers against references with every text metric.

    Args:
        predictions: Generated answers.
        references: One reference answer per prediction (same order).
        with_bleu: Also compute corpus BLEU (it has no per-item value).

    Returns:
        Aggregates and per-item scores.

    Raises:
        ValueError: The lists differ in length or are empty.
    """
    _check_lengths(predictions, references)
    if not predictions:
        raise ValueError("nothing to score: no predictions")
    per_item = {
        "token_f1": [token_f1(p, r) for p, r in zip(predictions, references, strict=True)],
        "exact_match": [exact_match(p, r) for p, r in zip(predictions, references, strict=True)],
        "rougeL": rouge_l_per_item(predictions, references),
    }
    aggregate = {name: float(np.mean(values)) for name, values in per_item.items()}
    if with_bleu:
        aggregate["bleu"] = corpus_bleu(predictions, references)
    aggregate["n"] = float(len(predictions))
    return GenerationScores(aggregate=aggregate, per_item=per_item)


def paired_bootstrap_ci(
    a_scores: Sequence[float], b_scores: Sequence[float], n: int, seed: int, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile paired-bootstrap CI of ``mean(a) - mean(b)`` over the same items.

    Items are resampled with replacement as pairs, so the interval accounts for per-item difficulty.

    Args:
        a_scores: Per-item scores of model A (the challenger), aligned with ``b_scores``.
        b_scores: Per-item scores of model B (the champion).
        n: Number of bootstrap resamples.
        seed: Seed of the numpy generator; the same inputs and seed give the same interval.
        alpha: 1 - confidence level (0.05 -> 95 % interval).

    Returns:
        ``(low, high)`` of the difference of means.

    Raises:
        ValueError: Empty or misaligned inputs, ``n < 1`` or ``alpha`` outside (0, 1).
    """
    a = np.asarray(a_scores, dtype=float)
    b = np.asarray(b_scores, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be 1-D and aligned, got shapes {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("paired_bootstrap_ci needs at least one item")
    if n < 1 or not 0.0 < alpha < 1.0:
        raise ValueError(f"need n >= 1 and 0 < alpha < 1, got n={n}, alpha={alpha}")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(n, dtype=float)
    batch = max(1, 2_000_000 // diff.size)  # bound memory of the index matrix
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        idx = rng.integers(0, diff.size, size=(stop - start, diff.size))
        means[start:stop] = diff[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_cis(
    challenger: Mapping[str, Sequence[float]],
    champion: Mapping[str, Sequence[float]],
    n: int,
    seed: int,
    alpha: float = 0.05,
) -> dict[str, tuple[float, float]]:
    """:func:`paired_bootstrap_ci` for every metric both per-item maps share (the ``ci`` argument of the gate)."""
    return {
        name: paired_bootstrap_ci(challenger[name], champion[name], n=n, seed=seed, alpha=alpha)
        for name in sorted(set(challenger) & set(champion))
    }


def perplexity(token_losses: Iterable[float] | Iterable[Sequence[float]], mask: Any = None) -> float:
    """Perplexity from per-token negative log-likelihoods (natural log): ``exp(mean NLL)``.

    Args:
        token_losses: Per-token NLLs, flat or one sequence per example (all tokens are pooled, so long
            examples weigh more, as in corpus perplexity).
        mask: Optional array of the same (flattened) shape; tokens where it is 0/False are ignored
            (padding, prompt tokens).

    Returns:
        The perplexity (``inf`` if the mean NLL overflows).

    Raises:
        ValueError: No token counted, or a negative/NaN loss.
    """
    items = list(token_losses)
    if items and not np.isscalar(items[0]):
        losses = np.concatenate([np.asarray(seq, dtype=float).ravel() for seq in items]) if items else np.array([])
    else:
        losses = np.asarray(items, dtype=float).ravel()
    if mask is not None:
        keep = (
            np.concatenate([np.asarray(m, dtype=bool).ravel() for m in mask])
            if items and not np.isscalar(items[0])
            else np.asarray(mask, dtype=bool).ravel()
        )
        if keep.shape != losses.shape:
            raise ValueError(f"mask shape {keep.shape} does not match losses {losses.shape}")
        losses = losses[keep]
    if losses.size == 0:
        raise ValueError("perplexity needs at least one token")
    if np.isnan(losses).any() or (losses < 0).any():
        raise ValueError("token losses must be non-negative numbers (NLL)")
    mean = float(losses.mean())
    return math.exp(mean) if mean < 709.0 else math.inf


def _check_lengths(predictions: Sequence[Any], references: Sequence[Any]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
