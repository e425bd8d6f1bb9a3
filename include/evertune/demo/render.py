"""Article text of the demo drops: body blocks from the catalog, and their Markdown, text, HTML and JSONL forms.

:func:`article_blocks` composes an article from its subject, wording revision and the current fact values;
the ``render_*`` and :func:`file_text` functions turn the blocks into file bytes as ``docs/data-format.md``
describes them, and :func:`render_plain` gives the normalised text ingestion must produce.
"""

from __future__ import annotations

import html
import json

from evertune.demo.articles import Article, seeded_rng, stable_hash
from evertune.demo.content import (
    CLOSINGS,
    FACT_LEADS,
    FACTS_BY_KEY,
    FILLERS,
    QUALIFIERS,
    STEP_HEADINGS,
    TIP_LABELS,
    TOPIC_DETAILS,
    TOPIC_INTROS,
    TOPIC_TIPS,
    TOPIC_TROUBLESHOOTING,
)

#: Strings inside <script>/<style> of HTML articles; none may survive normalisation.
HTML_STRIP_MARKERS = ("nimbusTrack", "nimbus-help-css")
MIN_WORDS, MAX_WORDS = 150, 400
_SCRIPT = ('window.nimbusTrack = window.nimbusTrack || [];\n'
           'nimbusTrack.push({event: "article_view", article: "%s"});')
_STYLE = "/* nimbus-help-css */ body { font-family: system-ui, sans-serif; } .tip { color: #555; }"

Block = tuple  # ("p", text) | ("h", text) | ("ol", [steps]) | ("tip", label, text)


def _pick(options: tuple[str, ...], seed: int, *key: object, shift: int = 0) -> str:
    return options[(stable_hash(seed, *key) + shift) % len(options)]


def article_blocks(article: Article, facts: dict[str, str], seed: int) -> list[Block]:
    """Compose an article's body from its subject, wording revision and the current fact values.

    The same ``(article.doc_id, article.revision)`` always gives the same wording; a wording edit
    (new revision) changes the introduction and the phrasing of the fact sentences for sure, and the
    rest by chance. A fact change only changes the values.

    Args:
        article: The article version.
        facts: Fact values to state.
        seed: Demo seed.

    Returns:
        Body blocks, rendered by the format writers.
    """
    subject, rev, doc = article.subject, article.revision, article.doc_id
    rng = seeded_rng(seed, "text", doc, rev)
    intro = _pick(TOPIC_INTROS[subject.topic], seed, "intro", doc, shift=rev)
    opening = f"{intro} {subject.summary}"
    if article.qualifier:
        opening = f"{opening} {QUALIFIERS[article.qualifier][1]}"
    details = rng.sample(TOPIC_DETAILS[subject.topic], 2)
    blocks: list[Block] = [("p", opening), ("p", " ".join(details))]
    sentences = [
        _pick(FACTS_BY_KEY[key].sentences, seed, "fact", doc, key, shift=rev).format(v=facts[key])
        for key in subject.facts
        if key in facts
    ]
    if sentences:
        lead = rng.choice(FACT_LEADS)
        blocks.append(("p", " ".join([lead, *sentences]) if lead else " ".join(sentences)))
    blocks.append(("h", rng.choice(STEP_HEADINGS)))
    blocks.append(("ol", list(subject.steps)))
    extras: list[Block] = [
        ("tip", rng.choice(TIP_LABELS), rng.choice(TOPIC_TIPS[subject.topic])),
        ("p", rng.choice(TOPIC_TROUBLESHOOTING[subject.topic])),
    ]
    rng.shuffle(extras)
    blocks.extend(extras)
    fillers = list(FILLERS)
    rng.shuffle(fillers)
    closing: Block = ("p", rng.choice(CLOSINGS))
    target = rng.randint(MIN_WORDS + 20, MAX_WORDS - 100)
    while _word_count([*blocks, closing]) < target and fillers:
        blocks.append(("p", fillers.pop()))
    blocks.append(closing)
    return blocks


def _word_count(blocks: list[Block]) -> int:
    return len(render_plain(blocks).split())


def render_plain(blocks: list[Block], *, numbered: bool = True) -> str:
    """Render body blocks as plain text with blank lines between paragraphs (the normalised form).

    Args:
        blocks: Body blocks from :func:`article_blocks`.
        numbered: Steps as ``1. step`` lines (Markdown, text, JSONL); ``False`` gives what an HTML ``<ol>``
            normalises to: one paragraph per step, no numbers.
    """
    parts = []
    for block in blocks:
        if block[0] == "ol" and not numbered:
            parts.extend(block[1])
        elif block[0] == "ol":
            parts.append("\n".join(f"{i}. {step}" for i, step in enumerate(block[1], 1)))
        elif block[0] == "tip":
            parts.append(f"{block[1]}: {block[2]}")
        else:
            parts.append(block[1])
    return "\n\n".join(parts)


def render_markdown(blocks: list[Block]) -> str:
    """Render body blocks as the Markdown body of a ``.md`` file (``##`` headings, bold tip labels)."""
    parts = []
    for block in blocks:
        if block[0] == "h":
            parts.append(f"## {block[1]}")
        elif block[0] == "tip":
            parts.append(f"**{block[1]}:** {block[2]}")
        elif block[0] == "ol":
            parts.append("\n".join(f"{i}. {step}" for i, step in enumerate(block[1], 1)))
        else:
            parts.append(block[1])
    return "\n\n".join(parts)


def _html_text(text: str) -> str:
    # Real CMS exports use named entities; ingestion must decode them.
    return html.escape(text, quote=False).replace("›", "&rsaquo;")


def _render_html_body(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        if block[0] == "h":
            parts.append(f"<h2>{_html_text(block[1])}</h2>")
        elif block[0] == "tip":
            parts.append(f'<p class="tip"><strong>{_html_text(block[1])}:</strong> {_html_text(block[2])}</p>')
        elif block[0] == "ol":
            items = "\n".join(f"  <li>{_html_text(step)}</li>" for step in block[1])
            parts.append(f"<ol>\n{items}\n</ol>")
        else:
            parts.append(f"<p>{_html_text(block[1])}</p>")
    return "\n".join(parts)


def front_matter(meta: dict[str, str]) -> str:
    """Render ``meta`` as a ``---`` delimited ``key: value`` front-matter block (with its final newline)."""
    lines = ["---", *(f"{key}: {value}" for key, value in meta.items()), "---"]
    return "\n".join(lines) + "\n"


def file_meta(doc_id: str, title: str, source: str, url: str, updated_at: str, topic: str) -> dict[str, str]:
    """Return a file's metadata fields in the order the writers emit them."""
    return {"doc_id": doc_id, "title": title, "source": source, "url": url, "updated_at": updated_at, "topic": topic}


def file_text(fmt: str, meta: dict[str, str], blocks: list[Block], seed: int) -> str:
    """Render a whole file (``md``, ``txt`` or ``html``) from metadata and body blocks."""
    if fmt == "md":
        return front_matter(meta) + render_markdown(blocks) + "\n"
    if fmt == "txt":
        return front_matter(meta) + render_plain(blocks) + "\n"
    head = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(meta['title'])}</title>",
        *(f'<meta name="evertune:{key}" content="{html.escape(value)}">'
          for key, value in meta.items() if key != "title"),
    ]
    noisy = stable_hash(seed, "noise", meta.get("doc_id", "")) % 3 != 0  # two thirds carry script/style
    if noisy:
        head.append(f"<style>{_STYLE}</style>")
        head.append(f"<script>{_SCRIPT % meta.get('doc_id', '')}</script>")
    body = ["</head>", "<body>", "<article>", _render_html_body(blocks), "</article>"]
    if noisy:
        body.append('<script>document.querySelectorAll(".tip").forEach(function (el) { el.hidden = false; });</script>')
    body += ["</body>", "</html>"]
    return "\n".join(head + body) + "\n"


def jsonl_line(record: dict) -> str:
    """Serialise one JSONL record (UTF-8 text kept as is) with its newline."""
    return json.dumps(record, ensure_ascii=False) + "\n"


_DOC_FIELDS = ("doc_id", "title", "text", "source", "url", "updated_at", "topic")


def doc_record(meta: dict[str, str], text: str, drop: str | None = None) -> dict[str, str]:
    """A ``docs.jsonl`` record with the fields in contract order (``drop`` leaves one out)."""
    merged = {**meta, "text": text}
    return {key: merged[key] for key in _DOC_FIELDS if key != drop and key in merged}


def article_meta(article: Article) -> dict[str, str]:
    """Return the file metadata of an article version (see :func:`file_meta`)."""
    return file_meta(article.doc_id, article.title, article.source, article.url, article.updated_at, article.topic)
