"""Token-aware chunking of normalised documents, with overlap and the title as context.

Chunks are cut with the embedder's own tokenizer, so ``chunk.chunk_tokens`` is exactly what the model sees
(no silent truncation). A window ends at the last sentence or paragraph boundary in its final quarter when
there is one, so chunks rarely stop mid-sentence. Everything is a pure function of the document text, the
``chunk`` params and the embedder id: the same input always yields the same chunks, ids and hashes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evertune.config import ChunkParams

#: Bump when the cutting algorithm itself changes (params.yaml's chunker_version is the user-facing knob).
ALGORITHM_VERSION = "1"

_SENTENCE_END = frozenset({".", "!", "?", ";", ":"})
_TITLE_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Chunk:
    """One embeddable piece of a document.

    Attributes:
        chunk_id: Stable id: doc id, ordinal and a digest of chunker id + embedder id.
        doc_id: The document it belongs to.
        ordinal: 0-based position within the document.
        title: The document title (repeated, whitespace-collapsed and possibly clipped, in ``text``).
        body: The slice of the document text this chunk covers (original characters).
        text: What gets embedded and full-text indexed: title, blank line, body.
        content_hash: sha256 of ``text``.
        token_count: Tokens of ``body`` under the embedder's tokenizer.
    """

    chunk_id: str
    doc_id: str
    ordinal: int
    title: str
    body: str
    text: str
    content_hash: str
    token_count: int


def chunker_id(params: ChunkParams) -> str:
    """Identify the chunking configuration: version, sizes and algorithm revision.

    Sizes are part of the id so that changing ``chunk_tokens`` without bumping ``chunker_version`` still
    lands in a new table instead of mixing chunkings.

    Args:
        params: The ``chunk`` section of ``params.yaml``.

    Returns:
        e.g. ``tok-v1-128x32-a1``.
    """
    return f"{params.chunker_version}-{params.chunk_tokens}x{params.chunk_overlap}-a{ALGORITHM_VERSION}"


def make_chunk_id(doc_id: str, ordinal: int, chunker: str, embedder: str) -> str:
    """Return the stable id of chunk ``ordinal`` of ``doc_id`` for a chunker and embedder.

    The id stays readable (``<doc_id>:<ordinal>:<digest>``); the digest pins chunker and embedder.
    """
    digest = hashlib.sha256(f"{chunker}|{embedder}".encode()).hexdigest()[:10]
    return f"{doc_id}:{ordinal:04d}:{digest}"


def sha256_text(text: str) -> str:
    """Hex sha256 of a UTF-8 string."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _boundary_after(text: str, offsets: list[tuple[int, int]], index: int) -> bool:
    """Whether token ``index`` ends a sentence or is followed by a paragraph break."""
    start, end = offsets[index]
    if text[start:end] in _SENTENCE_END:
        return True
    following = offsets[index + 1][0] if index + 1 < len(offsets) else len(text)
    return "\n" in text[end:following]


def _windows(text: str, offsets: list[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int]]:
    """Token windows ``[start, end)`` covering all tokens, each at most ``size`` long."""
    total = len(offsets)
    windows: list[tuple[int, int]] = []
    start = 0
    while start < total:
        end = min(start + size, total)
        if end < total:
            # Snap back to a sentence/paragraph boundary in the last quarter, but keep the window longer
            # than the overlap so the next start always moves forward.
            floor = max(start + overlap + 1, end - max(1, size // 4))
            for candidate in range(end - 1, floor - 1, -1):
                if _boundary_after(text, offsets, candidate):
                    end = candidate + 1
                    break
        windows.append((start, end))
        if end >= total:
            break
        start = end - overlap
    return windows


def _title_context(title: str, tokenizer: Any, budget: int) -> str:
    """The title, clipped to ``budget`` tokens so title + body never exceed the model's input size."""
    title = re.sub(r"\s+", " ", title or "").strip()
    if not title or budget <= 0:
        return ""
    encoded = tokenizer(title, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = encoded["offset_mapping"]
    if len(offsets) <= budget:
        return title
    return title[: offsets[budget - 1][1]].rstrip()


def chunk_document(
    doc: Mapping[str, Any],
    tokenizer: Any,
    params: ChunkParams,
    embedder: str,
    *,
    max_seq_length: int | None = None,
) -> list[Chunk]:
    """Split one document into overlapping token windows, each prefixed with the title.

    Args:
        doc: A normalised document record (needs ``doc_id``, ``title``, ``text``).
        tokenizer: The embedder's Hugging Face tokenizer (``SentenceTransformer.tokenizer``).
        params: The ``chunk`` section of ``params.yaml``.
        embedder: :func:`evertune.models.embedder.embedder_id` of the embedder.
        max_seq_length: The model's input limit in tokens; the title is clipped so title + body fit.

    Returns:
        The chunks in order; a document with an empty body yields one title-only chunk.
    """
    doc_id = str(doc["doc_id"])
    body_text = str(doc.get("text") or "")
    chunker = chunker_id(params)
    encoded = tokenizer(body_text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets: list[tuple[int, int]] = [tuple(pair) for pair in encoded["offset_mapping"]]
    windows = _windows(body_text, offsets, params.chunk_tokens, params.chunk_overlap) if offsets else []

    longest = max((end - start for start, end in windows), default=0)
    budget = 1 << 30
    if max_seq_length:
        # special tokens ([CLS]/[SEP]) + the separator between title and body
        budget = max_seq_length - longest - tokenizer.num_special_tokens_to_add(pair=False) - 2
    full_title = str(doc.get("title") or "")
    title = _title_context(full_title, tokenizer, budget)
    prefix = f"{title}{_TITLE_SEPARATOR}" if title else ""

    chunks: list[Chunk] = []
    spans = [(offsets[start][0], offsets[end - 1][1], end - start) for start, end in windows] or [(0, 0, 0)]
    for ordinal, (char_start, char_end, n_tokens) in enumerate(spans):
        body = body_text[char_start:char_end]
        text = f"{prefix}{body}" if body else title
        chunks.append(
            Chunk(
                chunk_id=make_chunk_id(doc_id, ordinal, chunker, embedder),
                doc_id=doc_id,
                ordinal=ordinal,
                title=full_title,
                body=body,
                text=text,
                content_hash=sha256_text(text),
                token_count=n_tokens,
            )
        )
    return chunks
