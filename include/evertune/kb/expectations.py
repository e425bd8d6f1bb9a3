"""The row-level rules of the validation step: which expectations run, and why a failing row is quarantined.

:func:`document_checks` and :func:`qa_checks` list the checks in priority order (a row's first failure is its
quarantine reason); :func:`doc_failure_detail` and :func:`qa_failure_detail` turn a failed check into the
reason code and a readable detail that never echoes the value (it may be PII). The helper columns the checks
read (``alpha_ratio``, ``stopword_ratio``, ``pii_scan``) come from :func:`text_ratios` and the title/text.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from evertune.kb import quarantine as q
from evertune.kb.gx_suite import Check
from evertune.kb.records import DOC_ID_RE

if TYPE_CHECKING:
    from evertune.config import ValidateParams

# A small list of English function words: prose is full of them, word salad and non-language residue is not.
STOPWORDS: frozenset[str] = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers him his how i if in into is it its itself just me more most my no nor not now of off on once only or other
    our ours out over own same she should so some such than that the their theirs them then there these they this
    those through to too under until up very was we were what when where which while who whom why will with would
    you your yours""".split()
)
_WORD_RE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")

# PII patterns use explicit ASCII classes so pandas (RE2 or Python re) and Python agree on what they match.
_PHONE_RE = (
    r"(?<![0-9A-Za-z.])(?:\+[0-9]{1,3}[ .-]?)?"  # optional country code
    r"(?:\([0-9]{2,4}\)|[0-9]{2,4})[ .-][0-9]{3,4}[ .-][0-9]{3,4}(?![0-9A-Za-z]|\.[0-9])"  # area, exchange, line
)
_CARD_RE = r"(?<![0-9])[0-9]{4}(?:[ -]?[0-9]{4}){2}[ -]?[0-9]{1,7}(?![0-9])"
_EMPTY_RE = r"^\s*$"


def email_regex(allowed_domains: list[str]) -> str:
    """The e-mail PII pattern, skipping addresses at ``allowed_domains`` (and their subdomains)."""
    allowed = "|".join(re.escape(domain.lower().strip(".")) for domain in allowed_domains if domain.strip("."))
    skip = f"(?!(?:[A-Za-z0-9-]+\\.)*(?:{allowed})(?![A-Za-z0-9-]|\\.[A-Za-z0-9]))" if allowed else ""
    return f"[A-Za-z0-9._%+-]+@{skip}[A-Za-z0-9-]+(?:\\.[A-Za-z0-9-]+)*\\.[A-Za-z]{{2,}}"


def pii_patterns(vparams: ValidateParams) -> dict[str, str]:
    """PII regexes by kind: ``email``, ``phone``, ``card``."""
    return {"email": email_regex(vparams.pii_allowed_email_domains), "phone": _PHONE_RE, "card": _CARD_RE}


def text_ratios(text: str) -> tuple[float, float]:
    """Share of letters among non-space characters, and share of English stopwords among words.

    Args:
        text: Plain text.

    Returns:
        ``(alpha_ratio, stopword_ratio)``, each in [0, 1] (0 for empty text).
    """
    visible = [ch for ch in text if not ch.isspace()]
    alpha = sum(ch.isalpha() for ch in visible) / len(visible) if visible else 0.0
    words = _WORD_RE.findall(text.lower())
    stop = sum(word in STOPWORDS for word in words) / len(words) if words else 0.0
    return round(alpha, 6), round(stop, 6)


def document_checks(vparams: ValidateParams) -> list[Check]:
    """The row-level expectations for documents, in priority order (a row's first failure is its reason)."""
    prefixes = "|".join(re.escape(prefix) for prefix in vparams.allowed_url_prefixes)
    checks = [
        Check("doc_id_format", q.INVALID_DOC_ID, "ExpectColumnValuesToMatchRegex",
               {"column": "doc_id", "regex": f"^{DOC_ID_RE.pattern}$"}),
        Check("text_not_empty", q.EMPTY_TEXT, "ExpectColumnValuesToNotMatchRegex",
               {"column": "text", "regex": _EMPTY_RE}),
        Check("text_length", f"{q.TEXT_TOO_SHORT}|{q.TEXT_TOO_LONG}", "ExpectColumnValueLengthsToBeBetween",
               {"column": "text", "min_value": vparams.min_text_chars, "max_value": vparams.max_text_chars}),
        Check("alpha_ratio", q.GARBAGE_TEXT, "ExpectColumnValuesToBeBetween",
               {"column": "alpha_ratio", "min_value": vparams.min_alpha_ratio, "max_value": 1.0}),
        Check("stopword_ratio", q.GARBAGE_TEXT, "ExpectColumnValuesToBeBetween",
               {"column": "stopword_ratio", "min_value": vparams.min_stopword_ratio, "max_value": 1.0}),
        Check("source_allowed", q.DISALLOWED_SOURCE, "ExpectColumnValuesToBeInSet",
               {"column": "source", "value_set": sorted(vparams.allowed_sources)}),
        Check("url_allowed", q.DISALLOWED_URL, "ExpectColumnValuesToMatchRegex",
               {"column": "url", "regex": f"^(?:{prefixes})\\S*$" if prefixes else "(?!)"}),
        Check("doc_id_unique", q.DUPLICATE_DOC_ID, "ExpectColumnValuesToBeUnique", {"column": "doc_id"}),
    ]  # fmt: skip
    for kind, regex in pii_patterns(vparams).items():
        checks.append(Check(f"pii_{kind}", q.PII_DETECTED, "ExpectColumnValuesToNotMatchRegex",
                             {"column": "pii_scan", "regex": regex}))  # fmt: skip
    return checks


def qa_checks(vparams: ValidateParams) -> list[Check]:
    """The row-level expectations for training QA pairs, in priority order."""
    checks = [
        Check("question_not_empty", q.EMPTY_TEXT, "ExpectColumnValuesToNotMatchRegex",
               {"column": "question", "regex": _EMPTY_RE}),
        Check("answer_not_empty", q.EMPTY_TEXT, "ExpectColumnValuesToNotMatchRegex",
               {"column": "answer", "regex": _EMPTY_RE}),
        Check("doc_id_format", q.INVALID_DOC_ID, "ExpectColumnValuesToMatchRegex",
               {"column": "doc_id", "regex": f"^{DOC_ID_RE.pattern}$"}),
        Check("qa_id_unique", q.DUPLICATE_QA_ID, "ExpectColumnValuesToBeUnique", {"column": "qa_id"}),
    ]  # fmt: skip
    for kind, regex in pii_patterns(vparams).items():
        checks.append(Check(f"pii_{kind}", q.PII_DETECTED, "ExpectColumnValuesToNotMatchRegex",
                             {"column": "pii_scan", "regex": regex}))  # fmt: skip
    return checks



# --------------------------------------------------------------------------- failure details


def doc_failure_detail(check: str, row: dict[str, Any], vparams: ValidateParams, copies: int) -> tuple[str, str]:
    """Reason and readable detail of one failed document check (never echoing PII)."""
    text = row["text"]
    if check == "doc_id_format":
        return q.INVALID_DOC_ID, f"doc_id {row['doc_id'][:90]!r} does not match [a-z0-9][a-z0-9-]{{1,79}}"
    if check == "text_not_empty":
        return q.EMPTY_TEXT, "text is empty"
    if check == "text_length":
        reason = q.TEXT_TOO_SHORT if len(text) < vparams.min_text_chars else q.TEXT_TOO_LONG
        return reason, f"text has {len(text)} characters; allowed {vparams.min_text_chars}..{vparams.max_text_chars}"
    if check == "alpha_ratio":
        return (
            q.GARBAGE_TEXT,
            f"only {row['alpha_ratio']:.0%} of visible characters are letters (min {vparams.min_alpha_ratio:.0%})",
        )
    if check == "stopword_ratio":
        return q.GARBAGE_TEXT, (f"only {row['stopword_ratio']:.0%} of words are common English words "
                                f"(min {vparams.min_stopword_ratio:.0%}): not natural language")  # fmt: skip
    if check == "source_allowed":
        return q.DISALLOWED_SOURCE, f"source {row['source'][:60]!r} is not in validate.allowed_sources"
    if check == "url_allowed":
        return q.DISALLOWED_URL, f"url {row['url'][:100]!r} does not start with one of validate.allowed_url_prefixes"
    if check == "doc_id_unique":
        return (
            q.DUPLICATE_DOC_ID,
            f"doc_id {row['doc_id']!r} appears {copies} times in this drop with different content",
        )
    if check.startswith("pii_"):
        return q.PII_DETECTED, f"possible {check.removeprefix('pii_')} in title or text"
    raise ValueError(f"unknown check {check!r}")


def qa_failure_detail(check: str, row: dict[str, Any]) -> tuple[str, str]:
    """Reason and readable detail of one failed QA check (never echoing PII)."""
    if check in ("question_not_empty", "answer_not_empty"):
        return q.EMPTY_TEXT, f"{check.removesuffix('_not_empty')} is empty"
    if check == "doc_id_format":
        return q.INVALID_DOC_ID, f"doc_id {row['doc_id'][:90]!r} does not match [a-z0-9][a-z0-9-]{{1,79}}"
    if check == "qa_id_unique":
        return q.DUPLICATE_QA_ID, f"qa_id {row['qa_id'][:90]!r} appears more than once with different content"
    if check.startswith("pii_"):
        return q.PII_DETECTED, f"possible {check.removeprefix('pii_')} in question or answer"
    raise ValueError(f"unknown check {check!r}")
