"""The row-level rules of the validation step: which expectations run, and why a failing row is quarantined.

:func:`document_checks` and :func:`qa_checks` list the checks in priority order (a row's first failure is its
quarantine reason); :func:`doc_failure_detail` and :func:`qa_failure_detail` turn a failed check into the
reason code and a readable detail that never echoes the value (it may be PII). The helper columns the checks
read come from :func:`text_ratios` (``alpha_ratio``, ``stopword_ratio``, measured on the prose lines) and
:func:`safety_codes` (``injection``, ``pii``: the codes of :mod:`evertune.kb.safety`'s findings, ``""`` when clean).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from evertune.kb import quarantine as q
from evertune.kb import safety
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
_EMPTY_RE = r"^\s*$"

#: The PII kinds of :func:`evertune.kb.safety.find_pii`, one check each (in this order) over the ``pii`` column.
PII_KINDS: tuple[str, ...] = ("email", "phone", "card")

# Lines that are structure, not prose: table rows (Markdown pipes), and code, shell and config lines as ingestion
# leaves them (fences and indentation are gone, so the line itself must tell).
_TABLE_ROW_RE = re.compile(r"^\|.*\|$|(?:\s\|\s.*){2}")
_CODE_LINE_RE = re.compile(
    r"^(?:[$#%>] |>>> |[{}\[\]()<]|</?[A-Za-z])"  # shell prompts, brackets and tags at the start
    r"|[{\[(;\\]$"  # an opening bracket, a statement end or a continuation at the end
    r"|^[\"']?[\w-]*[_.][\w.-]*[\"']?\s*[:=]"  # config keys with _ or . (``ca_file: ...``, ``a.b = 3``)
    r"|(?:[\w.-]+=\S+.*){2}"  # two or more key=value pairs (log and env lines)
)
#: A prose line has at least this many words (space-separated, with a letter: ``fjord_up`` is one word);
#: shorter lines are headings, labels and table cells.
MIN_PROSE_LINE_WORDS = 4
_LINE_WORD_RE = re.compile(r"\S*[^\W\d_]\S*")
#: Below this many prose words a text is measured as a whole (a page of nothing but a table or code).
MIN_PROSE_WORDS = 20


def prose_text(text: str) -> str:
    """The prose lines of a text: lines of words, not table rows, code or config lines, headings or cells.

    Args:
        text: Ingested plain text (one source line per line).

    Returns:
        The prose lines joined by newlines; ``""`` when there are none.
    """
    lines = (line.strip() for line in text.splitlines())
    return "\n".join(
        line
        for line in lines
        if len(_LINE_WORD_RE.findall(line)) >= MIN_PROSE_LINE_WORDS
        and not _TABLE_ROW_RE.search(line)
        and not _CODE_LINE_RE.search(line)
    )


def _ratios(text: str) -> tuple[float, float]:
    visible = [ch for ch in text if not ch.isspace()]
    alpha = sum(ch.isalpha() for ch in visible) / len(visible) if visible else 0.0
    words = _WORD_RE.findall(text.lower())
    stop = sum(word in STOPWORDS for word in words) / len(words) if words else 0.0
    return round(alpha, 6), round(stop, 6)


def text_ratios(text: str) -> tuple[float, float]:
    """Share of letters among non-space characters, and share of English stopwords among words, on the prose.

    Measured on :func:`prose_text`, so reference tables and code blocks do not make a real page look like
    garbage; a text with fewer than :data:`MIN_PROSE_WORDS` prose words is measured as a whole.

    Args:
        text: Plain text.

    Returns:
        ``(alpha_ratio, stopword_ratio)``, each in [0, 1] (0 for empty text).
    """
    prose = prose_text(text)
    return _ratios(prose if len(_WORD_RE.findall(prose)) >= MIN_PROSE_WORDS else text)


def safety_codes(text: str, vparams: ValidateParams) -> tuple[str, str]:
    """The ``injection`` and ``pii`` helper column values of one text (codes only, never the text).

    Args:
        text: ``title + "\\n" + text`` of a document, or ``question + "\\n" + answer`` of a QA pair.
        vparams: ``validate`` params (allowed e-mail domains, phone regions).

    Returns:
        ``(injection codes, pii codes)``, each sorted and comma-separated, ``""`` when clean.
    """
    return (
        safety.codes(safety.find_injection(text)),
        safety.codes(safety.find_pii(text, vparams.pii_allowed_email_domains, vparams.pii_phone_regions)),
    )


#: The injection check: a row fails when its ``injection`` column names any code (clean rows hold ``""``).
INJECTION_CHECK = Check("injection", q.PROMPT_INJECTION, "ExpectColumnValuesToMatchRegex",
                        {"column": "injection", "regex": "^$"})  # fmt: skip


def pii_checks() -> list[Check]:
    """One check per PII kind over the ``pii`` column (a row fails when the column names the kind)."""
    return [Check(f"pii_{kind}", q.PII_DETECTED, "ExpectColumnValuesToNotMatchRegex",
                  {"column": "pii", "regex": f"(?:^|,){kind}(?:,|$)"}) for kind in PII_KINDS]  # fmt: skip


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
        INJECTION_CHECK,
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
    return [*checks, *pii_checks()]


def qa_checks(vparams: ValidateParams) -> list[Check]:
    """The row-level expectations for training QA pairs, in priority order."""
    checks = [
        Check("question_not_empty", q.EMPTY_TEXT, "ExpectColumnValuesToNotMatchRegex",
               {"column": "question", "regex": _EMPTY_RE}),
        Check("answer_not_empty", q.EMPTY_TEXT, "ExpectColumnValuesToNotMatchRegex",
               {"column": "answer", "regex": _EMPTY_RE}),
        INJECTION_CHECK,
        Check("doc_id_format", q.INVALID_DOC_ID, "ExpectColumnValuesToMatchRegex",
               {"column": "doc_id", "regex": f"^{DOC_ID_RE.pattern}$"}),
        Check("qa_id_unique", q.DUPLICATE_QA_ID, "ExpectColumnValuesToBeUnique", {"column": "qa_id"}),
    ]  # fmt: skip
    return [*checks, *pii_checks()]


# --------------------------------------------------------------------------- failure details


def _codes(row: dict[str, Any]) -> str:
    """The injection codes of a row for a detail: detector codes only, never the text."""
    return row.get("injection") or "unknown"


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
    if check == "injection":
        return q.PROMPT_INJECTION, f"instruction-like text aimed at a model in title or text ({_codes(row)})"
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
    if check == "injection":
        return q.PROMPT_INJECTION, f"instruction-like text aimed at a model in question or answer ({_codes(row)})"
    if check.startswith("pii_"):
        return q.PII_DETECTED, f"possible {check.removeprefix('pii_')} in question or answer"
    raise ValueError(f"unknown check {check!r}")
