"""Context-grounded training examples: each SFT prompt is the served prompt, with chunks of the pinned KB version.

Serving answers a question with the prompt of :mod:`evertune.tuning.answer` (system prompt, template
``evaluate.prompt_template`` over the retrieved chunks, chat template). Training on bare questions taught the model
to answer from memory; here every example is rendered through the same :func:`~evertune.tuning.answer.build_messages`,
:func:`~evertune.tuning.answer.guard_context` and :func:`~evertune.tuning.answer.fit_contexts`, with the chunks that
the KB version published at build time returns for the question, so the model learns to read the context and an
answer follows the KB when the KB changes.

Per example (``dataset.context``):

* **cited** (most examples): the question's top ``k`` retrieved chunks (``k`` default ``retrieval.k``), which must
  hold the *cited chunk*: the chunk of the cited document that backs the answer best (highest
  :func:`~evertune.tuning.grounding.answer_support`, then lowest ordinal), read from the pinned table version.
  Reading it from the table, rather than running a second search filtered to the document, picks the chunk that
  holds the answer rather than the one most similar to the question, and costs one batched read per build. When
  retrieval missed it, or the budget would drop it (it ranked too low), it is put first and the rest follow in
  rank order. The answer is the reference answer.
* **distractors** (``distractor_fraction`` of the examples, chosen by a hash of the example id, so stable as rows
  are added): the retrieved chunks of other documents only, none of which backs the answer by the groundedness
  check, and the answer is ``unknown_answer``: what the template asks for ("If they do not contain the answer, say
  that you do not know.").

The context is budgeted before the answer: :func:`~evertune.tuning.answer.fit_contexts` drops lowest-ranked chunks
until the rendered prompt plus the whole answer and the chat template's end-of-turn tokens
(:func:`~evertune.tuning.chat.completion_tokens`) fit ``train.max_length``, so no answer is ever truncated. An
example whose cited chunk cannot fit, whose cited document has no chunk in the pinned version, or whose
distractors cannot fit, is dropped and counted (``stats["counts"]["context_*"]``).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from evertune.errors import NothingToDo
from evertune.tuning.answer import AnswerSpec, Retriever, build_messages, fit_contexts
from evertune.tuning.chat import chat_text, completion_tokens
from evertune.tuning.grounding import answer_support, check_grounding

if TYPE_CHECKING:
    from evertune.config import ContextParams, Params
    from evertune.settings import Settings

CITED = "cited"
DISTRACTORS = "distractors"
#: Columns of a chunk read from the table (those a prompt and :func:`guard_context` use).
CHUNK_COLUMNS = ("chunk_id", "doc_id", "ordinal", "title", "text", "body", "metadata")
#: Extra chunks retrieved beyond ``k``, so that a distractor example still has ``k`` chunks of other documents.
EXTRA_RETRIEVED = 5


def in_distractor_share(example_id: str, fraction: float) -> bool:
    """Whether an example is a distractor example: a hash of its id (salted apart from the train/validation
    split) below ``fraction``; stable across runs and as rows are added."""
    digest = hashlib.sha256(f"context\0{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass(frozen=True)
class KnowledgeBase:
    """The KB version pinned for a build.

    Attributes:
        kb_version: ``<table>@v<N>``.
        retrieve: ``question -> chunks`` best first (``k + EXTRA_RETRIEVED`` of them), from that version.
        chunks_of: ``doc_ids -> {doc_id: chunks}``, every chunk of those documents in that version.
    """

    kb_version: str
    retrieve: Retriever
    chunks_of: Callable[[Sequence[str]], dict[str, list[dict[str, Any]]]]


def parse_kb_version(kb_version: str) -> tuple[str, int]:
    """``"<table>@v<N>"`` -> ``(table, N)``."""
    table, _, version = kb_version.rpartition("@v")
    return table, int(version)


def pinned_kb(params: Params, settings: Settings, kb_version: str, k: int) -> KnowledgeBase:
    """The real KB at ``kb_version`` (see :func:`evertune.tuning.steps._published_kb_version`): hybrid search as
    served (:func:`evertune.tuning.answer.kb_retriever`) and a batched read of the documents' chunks."""
    from evertune.kb.table import connect, open_table, read_rows
    from evertune.tuning.answer import kb_retriever

    name, version = parse_kb_version(kb_version)
    retrieve = kb_retriever(params, settings, version_or_tag=version, k=k + EXTRA_RETRIEVED)  # type: ignore[arg-type]

    def chunks_of(doc_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        table = open_table(connect(settings), name)
        if table is None:
            raise NothingToDo(f"knowledge-base table {name!r} does not exist")
        table.checkout(version)
        found: dict[str, list[dict[str, Any]]] = {}
        for row in read_rows(table, "doc_id", list(doc_ids), CHUNK_COLUMNS):
            found.setdefault(str(row["doc_id"]), []).append(row)
        return {doc: sorted(rows, key=lambda r: (r.get("ordinal") or 0, r["chunk_id"])) for doc, rows in found.items()}

    return KnowledgeBase(kb_version, retrieve, chunks_of)


def load_base_tokenizer(params: Params, settings: Settings) -> Any:
    """The base model's tokenizer (the chat template and token counts of the training sequences)."""
    from transformers import AutoTokenizer

    from evertune.models.bootstrap import resolve_base_model

    path = resolve_base_model(params.base_model, settings)
    return AutoTokenizer.from_pretrained(str(path), revision=params.base_model.revision)


def _shown(chunk: Mapping[str, Any]) -> str:
    return str(chunk.get("body") or chunk.get("text") or "")


def cited_chunk(chunks: Sequence[Mapping[str, Any]], question: str, answer: str) -> dict[str, Any] | None:
    """The chunk of the cited document that backs ``answer`` best (support, then lowest ordinal)."""
    best = max(enumerate(chunks), default=None,
               key=lambda item: (answer_support(answer, _shown(item[1]), question), -item[0]))  # fmt: skip
    return dict(best[1]) if best else None


@dataclass
class ContextBuilder:
    """Renders the examples of one build against a pinned KB (see the module docstring).

    Attributes:
        kb: The pinned KB.
        tokenizer: The base model's tokenizer.
        spec: The served answer spec (:func:`evertune.tuning.answer.answer_spec`): template, system prompt,
            ``max_context_chars`` and ``max_length`` (= ``train.max_length``).
        params: ``dataset.context``.
        k: Chunks per prompt before budgeting.
        fmt: ``dataset.format``.
        counts: ``context_*`` counts, shared with the build's counts.
    """

    kb: KnowledgeBase
    tokenizer: Any
    spec: AnswerSpec
    params: ContextParams
    k: int
    fmt: str = "messages"
    counts: Counter[str] = field(default_factory=Counter)
    _doc_chunks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def prepare(self, doc_ids: Iterable[str]) -> None:
        """Read the chunks of every cited document once (one batched read of the pinned version)."""
        wanted = sorted({doc for doc in doc_ids if doc} - set(self._doc_chunks))
        if wanted:
            self._doc_chunks.update(self.kb.chunks_of(wanted))

    def fields(self, example_id: str, question: str, answer: str, doc_id: str) -> dict[str, Any] | None:
        """The row fields of one example: ``messages`` (or ``prompt``/``completion``), ``context`` (``cited`` or
        ``distractors``), ``context_doc_ids`` (shown, in order), ``kb_version`` and ``template``; ``None`` when
        it cannot be built within the budget (counted)."""
        retrieved = [dict(chunk) for chunk in self.kb.retrieve(question)]
        if in_distractor_share(example_id, self.params.distractor_fraction):
            kind, target = DISTRACTORS, self.params.unknown_answer
            contexts = self._distractors(retrieved, question, answer, doc_id)
        else:
            kind, target = CITED, answer
            contexts = self._cited(retrieved, question, answer, doc_id)
        if contexts is None:
            return None
        messages = build_messages(question, contexts, self.spec)
        record: dict[str, Any] = {"messages": [*messages, {"role": "assistant", "content": target}]}
        if self.fmt == "prompt_completion":
            record = {"prompt": chat_text(self.tokenizer, messages), "completion": target}
        self.counts[f"context_{kind}"] += 1
        return {**record, "context": kind, "context_doc_ids": [str(c.get("doc_id")) for c in contexts],
                "kb_version": self.kb.kb_version, "template": self.spec.template_name}

    def _fit(self, question: str, chunks: Sequence[Mapping[str, Any]], target: str) -> list[dict[str, Any]]:
        return fit_contexts(self.tokenizer, question, chunks, self.spec, completion_tokens(self.tokenizer, target))

    def _cited(self, retrieved: list[dict[str, Any]], question: str, answer: str,
               doc_id: str) -> list[dict[str, Any]] | None:
        cited = cited_chunk(self._doc_chunks.get(doc_id, []), question, answer)
        if cited is None:
            self.counts["context_dropped_cited_not_in_kb"] += 1
            return None
        top = retrieved[: self.k]
        ranked = top if any(c.get("chunk_id") == cited["chunk_id"] for c in top) else None
        if ranked is None:
            self.counts["context_cited_inserted"] += 1
        contexts = self._fit(question, ranked, answer) if ranked is not None else []
        if not any(c.get("chunk_id") == cited["chunk_id"] for c in contexts):
            # Missed by retrieval, or ranked too low to fit: the cited chunk goes first, the rest in rank order.
            rest = [c for c in top if c.get("chunk_id") != cited["chunk_id"]]
            if ranked is not None:
                self.counts["context_cited_moved_up"] += 1
            contexts = self._fit(question, [cited, *rest][: self.k], answer)
        if not contexts:
            self.counts["context_dropped_too_long"] += 1
            return None
        return contexts

    def _distractors(self, retrieved: list[dict[str, Any]], question: str, answer: str,
                     doc_id: str) -> list[dict[str, Any]] | None:
        others = [c for c in retrieved if str(c.get("doc_id")) != doc_id
                  and not check_grounding(answer, _shown(c), question=question).grounded]  # fmt: skip
        contexts = self._fit(question, others[: self.k], self.params.unknown_answer)
        if not contexts:
            self.counts["context_dropped_no_distractor"] += 1
            return None
        return contexts

    def summary(self) -> dict[str, Any]:
        """``stats["context"]``: the pinned KB version, template and settings of the build."""
        return {"kb_version": self.kb.kb_version, "template": self.spec.template_name, "k": self.k,
                "distractor_fraction": self.params.distractor_fraction, "max_length": self.spec.max_length,
                "max_context_chars": self.spec.max_context_chars,
                "unknown_answer_sha256": hashlib.sha256(self.params.unknown_answer.encode()).hexdigest()}


def context_builder(params: Params, settings: Settings, kb_version: str, tokenizer: Any = None) -> ContextBuilder:
    """The :class:`ContextBuilder` of a real build: the KB at ``kb_version``, the base model's tokenizer."""
    from evertune.tuning.prompt_registry import registered_spec

    k = params.dataset.context.k or params.retrieval.k
    return ContextBuilder(
        kb=pinned_kb(params, settings, kb_version, k),
        tokenizer=tokenizer if tokenizer is not None else load_base_tokenizer(params, settings),
        spec=registered_spec(params, settings), params=params.dataset.context, k=k, fmt=params.dataset.format,
    )


__all__ = ["CITED", "DISTRACTORS", "ContextBuilder", "KnowledgeBase", "cited_chunk", "context_builder",
           "in_distractor_share", "load_base_tokenizer", "parse_kb_version", "pinned_kb"]
