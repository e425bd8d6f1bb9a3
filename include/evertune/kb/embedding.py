"""Embedding for the knowledge base: the checked embedder, and one encode path for chunks and queries.

Chunks (a sync) and queries (search and evaluation) go through :func:`embed_texts` with the same ``embed``
settings, so their vectors always match. Queries run with one intra-op thread
(:data:`evertune.models.embedder.QUERY_THREADS`), scoped to the call: a one-text encode gains little from
more threads, and on a busy host they stall each other and whatever else the process runs (generation in
the same server). A sync's batch embedding keeps the process's thread setting. With an ONNX
``embed.backend`` the encoder runs on an ONNX Runtime session whose intra-op thread count is fixed when the
session is created (:func:`evertune.models.onnx_export.ort_session`), so the torch setting does not apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from evertune.errors import ConfigError

if TYPE_CHECKING:
    from evertune.config import Params


def embed_texts(model: Any, texts: list[str], params: Params) -> list[list[float]]:
    """Embed texts with the ``embed`` settings; chunks and queries both go through here, so they always match."""
    if not texts:
        return []
    vectors = model.encode(
        texts,
        batch_size=params.embed.batch_size,
        normalize_embeddings=params.embed.normalize,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return [vector.astype("float32").tolist() for vector in vectors]


def load_checked_embedder(params: Params) -> tuple[Any, int]:
    """Load the embedder and check that a chunk (plus special tokens) fits its input size.

    Returns:
        ``(model, dimension)``.

    Raises:
        ConfigError: ``chunk.chunk_tokens`` exceeds what the model reads.
    """
    from evertune.models.embedder import load_embedder

    model = load_embedder(params.embed)
    return model, _checked_dimension(model, params)


def load_query_embedder(params: Params) -> Any:
    """The embedder queries go through: torch's one model, or an exported backend's one-thread query session.

    Raises:
        ConfigError: As :func:`load_checked_embedder`.
    """
    from evertune.models.embedder import load_embedder

    model = load_embedder(params.embed, queries=True)
    _checked_dimension(model, params)
    return model


def _checked_dimension(model: Any, params: Params) -> int:
    limit = model.max_seq_length
    special = model.tokenizer.num_special_tokens_to_add(pair=False)
    if limit and params.chunk.chunk_tokens + special > limit:
        raise ConfigError(
            f"chunk.chunk_tokens={params.chunk.chunk_tokens} plus {special} special tokens exceeds the "
            f"embedder's max_seq_length={limit}; the tail of every chunk would be silently truncated"
        )
    return int(model.get_embedding_dimension())


def embed_queries(queries: list[str], params: Params) -> list[list[float]]:
    """Embed search queries like chunks, with :data:`~evertune.models.embedder.QUERY_THREADS` intra-op threads."""
    from evertune.models.embedder import QUERY_THREADS, intra_op_threads

    model = load_query_embedder(params)
    with intra_op_threads(QUERY_THREADS):
        return embed_texts(model, queries, params)
