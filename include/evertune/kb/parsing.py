"""Text parsers of the landing-zone contract (``docs/data-format.md``): plain text, Markdown, HTML, front matter.

Every function here is pure (text in, text out) and knows nothing of files, records or quarantine; the
ingest step (:mod:`evertune.kb.ingest`) turns their ``ValueError`` into quarantine reasons.
"""

from __future__ import annotations

import re
import unicodedata
from html.parser import HTMLParser

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES_RE = re.compile(r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_BLANKS_RE = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """Normalise text to NFC plain text: single spaces, stripped lines, at most one blank line between paragraphs.

    Args:
        text: Any decoded text.

    Returns:
        The normalised text (paragraphs separated by ``"\\n\\n"``).
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL_RE.sub(" ", text.replace("\u2028", "\n").replace("\u2029", "\n\n"))
    lines = [_SPACES_RE.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANKS_RE.sub("\n\n", "\n".join(lines)).strip()


def looks_binary(text: str) -> bool:
    """Whether decoded text is binary residue, not prose: a NUL, or more than 1 % control characters."""
    if "\x00" in text:
        return True
    controls = len(_CONTROL_RE.findall(text))
    return controls > max(1, len(text) // 100)


_MD_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})[^\n]*$", re.MULTILINE), ""),  # code fences (the code itself stays)
    (re.compile(r"^[ \t]{0,3}#{1,6}[ \t]*([^\n]*?)[ \t]*#*[ \t]*$", re.MULTILINE), r"\1"),  # ATX headings
    (re.compile(r"^[ \t]{0,3}([-*_])([ \t]*\1){2,}[ \t]*$", re.MULTILINE), ""),  # horizontal rules
    (re.compile(r"^[ \t]{0,3}>[ \t]?", re.MULTILINE), ""),  # block quotes
    (re.compile(r"^([ \t]*)[*+][ \t]+", re.MULTILINE), r"\1- "),  # bullets
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # images -> alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # links -> link text
    (re.compile(r"<(https?://[^>\s]+)>"), r"\1"),  # autolinks
    (re.compile(r"`([^`\n]+)`"), r"\1"),  # inline code
    (re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1"), r"\2"),  # strong
    (re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])"), r"\1"),  # emphasis *x*
    (re.compile(r"(?<![\w_])_(?=\S)([^_\n]+?)(?<=\S)_(?![\w_])"), r"\1"),  # emphasis _x_
)


def markdown_to_text(markdown: str) -> str:
    """Turn Markdown into plain text with paragraph breaks (markup removed, words kept).

    Args:
        markdown: The Markdown body (without front matter).

    Returns:
        Normalised plain text.
    """
    text = markdown
    for pattern, replacement in _MD_RULES:
        text = pattern.sub(replacement, text)
    return normalize_text(text)


class HtmlExtractor(HTMLParser):
    """Collects the visible text, the ``<title>`` and the ``evertune:*`` meta tags (see :func:`html_to_text`)."""

    _SKIP = frozenset({"script", "style", "noscript", "template", "head", "svg", "iframe", "object", "canvas"})
    _BLOCK = frozenset(
        {
            "address", "article", "aside", "blockquote", "body", "dd", "details", "div", "dl", "dt", "fieldset",
            "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li",
            "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody", "td", "th", "thead", "tr", "ul",
        }
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self.meta: dict[str, str] = {}
        self._skip: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "meta":
            values = {k.lower(): (v or "") for k, v in attrs}
            name = values.get("name", "")
            if name.lower().startswith("evertune:"):
                self.meta.setdefault(name[len("evertune:") :].lower(), values.get("content", ""))
        elif tag == "title":
            self._in_title = True
        elif tag in self._SKIP:
            self._skip.append(tag)
        elif tag == "br":
            self.parts.append("\n")
        elif tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            return  # a self-closed <script/> opens nothing
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIP:
            if tag in self._skip:
                while self._skip and self._skip.pop() != tag:
                    pass
        elif tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
        elif not self._skip:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> tuple[str, str, dict[str, str]]:
    """Extract the visible text, the ``<title>`` and the ``evertune:*`` meta tags of an HTML page.

    ``<script>``, ``<style>`` (and other non-content elements) are dropped; block elements become paragraph
    breaks and ``<br>`` a line break.

    Args:
        html: The decoded HTML.

    Returns:
        (text, title, meta) with ``meta`` keyed by the field name after ``evertune:``.

    Raises:
        ValueError: The markup cannot be parsed at all.
    """
    parser = HtmlExtractor()
    try:
        parser.feed(html)
        parser.close()
    except AssertionError as exc:  # html.parser signals some broken declarations this way
        raise ValueError(str(exc)) from None
    title = normalize_text(" ".join(parser.title_parts)).replace("\n", " ")
    return normalize_text("".join(parser.parts)), title, parser.meta


def parse_front_matter(text: str) -> tuple[dict[str, str], str]:
    """Split a ``---`` front-matter block (``key: value`` lines) from the body.

    Values are plain strings (no YAML typing, so dates and ``no`` stay strings); matching quotes are removed.

    Args:
        text: The whole decoded file.

    Returns:
        (fields, body).

    Raises:
        ValueError: The file does not start with a complete front-matter block.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not lines or lines[0].strip() != "---":
        raise ValueError("no front-matter block: the first line must be ---")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise ValueError("front-matter block is not closed by a --- line") from None
    fields: dict[str, str] = {}
    for number, line in enumerate(lines[1:end], start=2):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise ValueError(f"front-matter line {number} is not 'key: value'")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        fields.setdefault(key.strip().lower(), value)
    return fields, "\n".join(lines[end + 1 :])
