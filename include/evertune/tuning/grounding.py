"""Is a QA answer grounded in the article it cites? The lexical check of the dataset builder, and its tally.

:func:`check_grounding` compares one answer with one article; :class:`GroundingCheck` runs it over the QA rows
of a build, keeps the counts per interval and the excluded rows (``stats["grounding"]``), and
:func:`poisoned_message` explains a rejected dataset (:class:`~evertune.errors.PoisonedDataError`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from evertune.tuning.metrics import normalize_answer

if TYPE_CHECKING:
    from evertune.config import DatasetParams

#: Exclusion reasons of the groundedness check (``stats["grounding"]["excluded"][*]["reason"]``).
UNGROUNDED = "answer_not_grounded"
SOURCE_MISSING = "source_not_in_window"
#: Ungrounded row ids named in a :class:`~evertune.errors.PoisonedDataError` message.
_EXAMPLES_IN_MESSAGE = 5

# Words that carry no claim of their own (after normalize_answer: lowercase, no punctuation, no a/an/the).
# Polarity words (yes, no, not) are here too: a word-overlap check cannot verify them, so they are not scored.
_FUNCTION_WORDS = frozenset("""
    about above after again against am and any are as at be because been before being below between both but by
    can cannot cant could did didnt do does doesnt doing dont down during each few for from further had has have
    having he her here hers him his how i if in into is isnt it its itself just me more most my no nor not of off
    on or other our ours out over own same she should so some such than that their theirs them then there these
    they this those through to too under until up very was we were what when where which while who whom why will
    with wont would yes you your yours
""".split())
# Number words and words that fix a quantity or a scope: like digits, the article must have them next to the
# same word. "single" is left out: it is mostly part of a term ("single sign-on" where the article says SSO).
_QUANTITY_WORDS = frozenset("""
    zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
    seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million
    billion dozen once twice half double triple unlimited infinite only never forever none
""".split())
_SENTENCE_END = (".", "!", "?", ":")


@dataclass(frozen=True)
class Grounding:
    """How far an answer is backed by the article it cites (see :func:`check_grounding`).

    Attributes:
        grounded: Every value word is backed and ``support`` reaches the threshold.
        support: Share of the answer's claim words that the article has next to the same neighbouring word;
            1.0 when the answer claims nothing the question does not already say, 0.0 for an empty article.
        missing_values: Numbers, quantity words and names of the answer that the article does not back.
        unsupported: Every claim word not found in context (most of ``missing_values`` too), in answer order.
    """

    grounded: bool
    support: float
    missing_values: tuple[str, ...] = ()
    unsupported: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Article:
    """The normalised words of an article and its pairs of adjacent words, built once per document."""

    words: frozenset[str]
    pairs: frozenset[tuple[str, str]]

    @classmethod
    def of(cls, text: str) -> _Article:
        words = [word for word, _ in _words(text)]
        return cls(frozenset(words), frozenset(pairwise(words)))


def _words(text: str) -> list[tuple[str, bool]]:
    """Normalised words of ``text``, each flagged when it is a name (capitalised mid-sentence, or mixed case)."""
    words: list[tuple[str, bool]] = []
    sentence_start = True
    for raw in (text or "").split():
        word = normalize_answer(raw)
        core = raw.strip("\"'()[]{}*_,.;:!?")
        name = any(ch.isupper() for ch in core[1:]) or (core[:1].isupper() and not sentence_start)
        if word:
            words.append((word, name))
        sentence_start = raw.endswith(_SENTENCE_END)
    return words


def _is_quantity(word: str) -> bool:
    return any(ch.isdigit() for ch in word) or word in _QUANTITY_WORDS


def _ground(answer: str, article: _Article, question: str, min_support: float) -> Grounding:
    words = _words(answer)
    sequence = [word for word, _ in words]
    asked = {word for word, _ in _words(question)}
    claims = [i for i, word in enumerate(sequence) if word not in asked and word not in _FUNCTION_WORDS]

    def in_context(i: int) -> bool:
        if len(sequence) == 1:
            return sequence[0] in article.words
        return ((i > 0 and (sequence[i - 1], sequence[i]) in article.pairs)
                or (i + 1 < len(sequence) and (sequence[i], sequence[i + 1]) in article.pairs))

    supported = {i for i in claims if in_context(i)}
    missing = []
    for i in claims:
        word, name = words[i]
        if _is_quantity(word):
            backed = i in supported  # same context: "$12 per user" is not "$10 per user"
        else:
            # A name only has to occur: articles phrase around names freely ("iPhone app requires iOS 16").
            backed = not name or word in article.words
        if not backed:
            missing.append(word)
    if not article.words:
        support = 0.0
    else:
        support = len(supported) / len(claims) if claims else 1.0
    return Grounding(
        grounded=bool(article.words) and not missing and support >= min_support,
        support=support,
        missing_values=tuple(missing),
        unsupported=tuple(sequence[i] for i in claims if i not in supported),
    )


def check_grounding(answer: str, article: str, *, question: str = "", min_support: float = 0.2) -> Grounding:
    """Whether ``answer`` is backed by ``article``, the text of the document its QA row cites.

    Words are compared after :func:`~evertune.tuning.metrics.normalize_answer`. The answer's *claim words* are
    its words that are neither in the question nor function words. A claim word is *supported* when the article has it next to the same
    neighbouring word as in the answer, so "$12 per user" is not backed by "$10 per user ... 12 characters".
    The answer is grounded when

    * every number, number word or scope word (``only``, ``unlimited``, ``never``...) among the claim words is
      supported,
    * every name among them (capitalised inside a sentence, or in mixed case: ``Okta``, ``iOS``, ``SMS``)
      occurs in the article,
    * and the share of supported claim words is at least ``min_support``.

    A paraphrase keeps the value and some of the wording; a plausible false answer brings a value the article
    does not state. This is a lexical check: it cannot see a flipped yes/no or negation, and an article that
    happens to state the false value for something else backs it.

    Args:
        answer: The QA answer.
        article: The cited document's text (title included, if any).
        question: The QA question; words it already contains are not claims of the answer.
        min_support: ``dataset.min_answer_support``.

    Returns:
        The :class:`Grounding`; an empty article backs nothing.
    """
    return _ground(answer, _Article.of(article), question, min_support)


def answer_support(answer: str, article: str, question: str = "") -> float:
    """The ``support`` of :func:`check_grounding`: share of the answer's claim words the article backs in context."""
    return check_grounding(answer, article, question=question).support


def as_text(value: Any) -> str:
    """A table cell as text: ``""`` for a missing value (``None`` or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


class GroundingCheck:
    """Checks the QA rows of one build against their cited documents and keeps the tallies for ``stats``."""

    def __init__(self, docs: Mapping[str, Mapping[str, Any]], params: DatasetParams, counts: Counter[str]) -> None:
        self.docs, self.params, self.counts = docs, params, counts
        self.articles: dict[str, _Article] = {}  # built once per document
        self.excluded: list[dict[str, Any]] = []
        self.by_interval: dict[str, Counter[str]] = {}

    def passes(self, qa_id: str, question: str, answer: str, doc_id: str, interval: str) -> bool:
        """Whether the row is grounded in its document; an excluded row is counted and listed."""
        document = self.docs.get(doc_id) if doc_id else None
        text = as_text(document.get("text")) if document is not None else ""
        if not text.strip():
            # Nothing to compare with (no such document up to as_of, or an empty one): unverifiable, not trusted.
            self.counts["dropped_source_missing"] += 1
            self.excluded.append({"qa_id": qa_id, "doc_id": doc_id, "interval": interval, "reason": SOURCE_MISSING,
                                  "support": None, "missing_values": [], "unsupported": []})
            return False
        if doc_id not in self.articles:
            self.articles[doc_id] = _Article.of(f"{as_text(document.get('title'))}\n{text}")
        result = _ground(answer, self.articles[doc_id], question, self.params.min_answer_support)
        tally = self.by_interval.setdefault(interval, Counter())
        tally["checked"] += 1
        if result.grounded:
            return True
        tally["ungrounded"] += 1
        self.counts["dropped_ungrounded"] += 1
        self.excluded.append({"qa_id": qa_id, "doc_id": doc_id, "interval": interval, "reason": UNGROUNDED,
                              "support": round(result.support, 4), "missing_values": list(result.missing_values),
                              "unsupported": list(result.unsupported)})
        return False

    def summary(self) -> dict[str, Any]:
        """``stats["grounding"]``, also the ``report`` of a :class:`~evertune.errors.PoisonedDataError`."""
        checked = sum(tally["checked"] for tally in self.by_interval.values())
        ungrounded = self.counts.get("dropped_ungrounded", 0)
        return {
            "min_answer_support": self.params.min_answer_support,
            "max_ungrounded_fraction": self.params.max_ungrounded_fraction,
            # The share's denominator: QA rows of the window whose cited document could be read.
            "checked": checked,
            "ungrounded": ungrounded,
            "ungrounded_fraction": round(ungrounded / checked, 4) if checked else 0.0,
            "source_missing": self.counts.get("dropped_source_missing", 0),
            "by_interval": {name: {"checked": tally["checked"], "ungrounded": tally["ungrounded"]}
                            for name, tally in sorted(self.by_interval.items())},
            "excluded": self.excluded,
        }


def poisoned_message(grounding: Mapping[str, Any]) -> str:
    """The readable message of a :class:`~evertune.errors.PoisonedDataError` from :meth:`GroundingCheck.summary`."""
    ids = [row["qa_id"] for row in grounding["excluded"] if row["reason"] == UNGROUNDED]
    examples = ", ".join(ids[:_EXAMPLES_IN_MESSAGE]) + (", ..." if len(ids) > _EXAMPLES_IN_MESSAGE else "")
    worst = max(grounding["by_interval"].items(), key=lambda item: (item[1]["ungrounded"], item[0]))
    return (
        f"{grounding['ungrounded']} of {grounding['checked']} QA rows in the window "
        f"({grounding['ungrounded_fraction']:.1%}) are not grounded in the article they cite, above "
        f"dataset.max_ungrounded_fraction={grounding['max_ungrounded_fraction']:.1%}: the dataset is rejected "
        f"before training. Examples: {examples}; {worst[1]['ungrounded']} of {worst[1]['checked']} rows of "
        f"{worst[0]} are ungrounded."
    )
