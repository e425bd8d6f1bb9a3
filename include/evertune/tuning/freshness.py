"""Freshness: does the model give a fact's *new* value after the knowledge base changed it?

A freshness probe (:class:`FreshnessProbe`) is a question about a fact whose value changed on ``changed_on``,
with the old and the new value. :func:`score_freshness` scores answers to probes:

* an answer is **fresh** when it states the new value with its unit and does not state the old value;
* an answer stating both values is not fresh (counted in ``both_values``); one stating only the old value is
  counted in ``old_only``;
* ``fresh_share`` carries a Wilson score interval (:func:`wilson_interval`), and ``token_f1`` is the mean
  token-F1 of the answers against the probes' reference answers (:func:`evertune.tuning.metrics.token_f1`).

**Value matching** (:func:`value_tokens`, :func:`contains_value`) is on normalised tokens, not raw substrings:

* case, whitespace and punctuation other than ``$ € £ %`` and decimal points are ignored;
* ``/`` reads as ``per`` (``$10/user/month`` states ``$10 per user per month``), and ``a``/``an``/``each``
  between a number phrase's words do not (``$10 a user a month`` does *not* match: be strict on wording);
* a number glued to its unit is split (``100MB`` is ``100 MB``; ``14-day`` is ``14 day``), thousands
  separators are dropped (``1,000`` is ``1000``) and trailing zero decimals too (``$10.00`` is ``$10``);
* numbers match as whole tokens, so ``$100 per user per month`` never states ``$10 per user per month`` and
  ``1100 MB`` never states ``100 MB``;
* singular/plural, spelled-out numbers (``ten``) and other currencies are *not* equated: a value must be
  given the way the knowledge base writes it, up to the rules above.

The old value is looked for only outside the spans where the new value matched, so a new value that happens
to contain the old one (``5 GB`` -> ``5 GB per user``) does not count as "both".

The probe set itself comes from :mod:`evertune.tuning.probes` (:func:`freshness_probes`, re-exported here).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from evertune.tuning.metrics import token_f1
from evertune.tuning.probes import FreshnessProbe, freshness_probes

if TYPE_CHECKING:
    from evertune.config import Params
    from evertune.tuning.answer import Chunk

__all__ = [
    "FreshnessProbe", "contains_value", "freshness_probes", "measure_freshness", "score_freshness",
    "value_tokens", "wilson_interval",
]  # fmt: skip

log = logging.getLogger(__name__)

_GLUED = re.compile(r"(?<=\d)(?=[a-z])|(?<=[a-z])(?=\d)")
_THOUSANDS = re.compile(r"(?<!\d)(\d{1,3}(?:,\d{3})+)(?![\d,])")
_TOKEN = re.compile(r"[$€£]?\d+(?:\.\d+)?|[a-z]+|%")
_TRAILING_ZEROS = re.compile(r"\.0+$")


def value_tokens(text: str) -> list[str]:
    """Normalised tokens of a text for value matching (the rules are in the module docstring).

    Examples:
        ``"$10/user/month"`` -> ``["$10", "per", "user", "per", "month"]``; ``"100MB"`` -> ``["100", "mb"]``.
    """
    text = text.lower().replace("/", " per ")
    text = _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), text)
    text = _GLUED.sub(" ", text)
    tokens = _TOKEN.findall(text)
    return [_TRAILING_ZEROS.sub("", token) if any(c.isdigit() for c in token) else token for token in tokens]


def _find_spans(haystack: list[str], needle: list[str]) -> list[tuple[int, int]]:
    if not needle:
        return []
    width = len(needle)
    return [(i, i + width) for i in range(len(haystack) - width + 1) if haystack[i : i + width] == needle]


def contains_value(text: str, value: str) -> bool:
    """True when ``text`` states ``value`` (a contiguous run of its :func:`value_tokens`)."""
    return bool(_find_spans(value_tokens(text), value_tokens(value)))


def _classify(answer: str, old_value: str, new_value: str) -> tuple[bool, bool]:
    """``(states the new value, states the old value outside the new value's spans)``."""
    tokens = value_tokens(answer)
    new_spans = _find_spans(tokens, value_tokens(new_value))
    covered = {i for start, end in new_spans for i in range(start, end)}
    old_spans = [
        (start, end) for start, end in _find_spans(tokens, value_tokens(old_value))
        if not covered.intersection(range(start, end))
    ]  # fmt: skip
    return bool(new_spans), bool(old_spans)


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion at confidence ``1 - alpha``.

    Args:
        successes: Number of successes (``0 <= successes <= n``).
        n: Number of trials (> 0).
        alpha: Two-sided error rate, in (0, 1).

    Returns:
        ``(low, high)`` within [0, 1].

    Raises:
        ValueError: ``n`` is not positive, ``successes`` is out of range or ``alpha`` not in (0, 1).
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes}/{n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    z = NormalDist().inv_cdf(1 - alpha / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def score_freshness(answers: Sequence[str], probes: Sequence[FreshnessProbe], ci_alpha: float = 0.05) -> dict:
    """Score answers to freshness probes (one answer per probe, same order).

    Args:
        answers: The model's answers.
        probes: The probes they answer.
        ci_alpha: Error rate of the Wilson interval (0.05: a 95 % interval).

    Returns:
        ``{"n", "fresh", "fresh_share", "ci": [lo, hi], "both_values", "old_only", "token_f1", "ci_alpha",
        "per_item": [{"probe_id", "fresh", "both", "old", "token_f1"}]}``. With no probes, ``fresh_share``,
        ``ci`` and ``token_f1`` are ``None`` and the counts 0.

    Raises:
        ValueError: ``answers`` and ``probes`` differ in length.
    """
    if len(answers) != len(probes):
        raise ValueError(f"{len(answers)} answers for {len(probes)} probes")
    per_item = []
    for answer, probe in zip(answers, probes, strict=True):
        new, old = _classify(answer, probe.old_value, probe.new_value)
        per_item.append({
            "probe_id": probe.probe_id, "fresh": new and not old, "both": new and old, "old": old and not new,
            "token_f1": token_f1(answer, probe.answer),
        })  # fmt: skip
    n = len(per_item)
    fresh = sum(item["fresh"] for item in per_item)
    result: dict[str, Any] = {
        "n": n, "fresh": fresh, "fresh_share": fresh / n if n else None,
        "ci": list(wilson_interval(fresh, n, ci_alpha)) if n else None, "ci_alpha": ci_alpha,
        "both_values": sum(item["both"] for item in per_item), "old_only": sum(item["old"] for item in per_item),
        "token_f1": sum(item["token_f1"] for item in per_item) / n if n else None, "per_item": per_item,
    }  # fmt: skip
    return result


def measure_freshness(
    model_dir: str, probes: Sequence[FreshnessProbe], contexts: Sequence[Sequence[Chunk]], params: Params
) -> dict:
    """Answer the probes with the model in ``model_dir`` through the served answer path and score them.

    Args:
        model_dir: A merged checkpoint folder (or a base model spec :func:`load_causal_lm` accepts).
        probes: The probes (see :func:`freshness_probes`).
        contexts: Retrieved chunks per probe (the same for every model compared).
        params: Pipeline params (answer spec; ``freshness.ci_alpha`` when set, else ``evaluate.ci_alpha``).

    Returns:
        :func:`score_freshness`'s dict plus ``answers`` (one per probe). No probes: the empty score, and the
        model is not loaded; nor is it when the model's answer memo (:mod:`evertune.tuning.answer_memo`) holds
        every probe with these contexts.
    """
    alpha = _ci_alpha(params)
    if not probes:
        return {**score_freshness([], [], alpha), "answers": []}
    from evertune.settings import get_settings
    from evertune.tuning.answer_memo import AnswerMemo, LazyModel, model_key
    from evertune.tuning.prompt_registry import registered_spec

    spec = registered_spec(params)  # the registered prompt version's template, as in evaluation and serving
    memo = AnswerMemo.open(params, get_settings(), model_key(model_dir) if params.evaluate.answer_memo else None)
    model = LazyModel(model_dir)
    answers = memo.generations(spec, [p.question for p in probes], contexts, model).answers
    model.release()
    memo.save("freshness")
    scores = score_freshness(answers, probes, alpha)
    log.info("freshness of %s: %d/%d fresh (%s), %d both values, %d old only", model_dir, scores["fresh"],
             scores["n"], _share_text(scores), scores["both_values"], scores["old_only"])
    return {**scores, "answers": answers}


def _ci_alpha(params: Params) -> float:
    freshness = getattr(params, "freshness", None)
    return float(getattr(freshness, "ci_alpha", None) or params.evaluate.ci_alpha)


def _share_text(scores: dict) -> str:
    if not scores.get("n"):
        return "no probes"
    lo, hi = scores["ci"]
    return f"{scores['fresh_share']:.0%}, CI [{lo:.0%}, {hi:.0%}]"
