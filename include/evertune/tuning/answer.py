"""The answer path users get: retrieve from the published knowledge base, apply the prompt template, generate.

Evaluation, the registered MLflow model and ad-hoc use all go through these functions, so what the gate
measures is what users are served. A prompt is::

    system:    dataset.system_prompt
    user:      the registered prompt version of prompts/<evaluate.prompt_template>.jinja(question, chunks)
    assistant: <generated>

rendered with the tokenizer's own chat template. Retrieved chunks are kept best-first within
``evaluate.max_context_chars``; when the rendered prompt would not leave room for ``max_new_tokens`` inside
``train.max_length`` tokens, the lowest-ranked chunks are dropped first. A chunk with instruction-like text
(re-scanned by :func:`evertune.kb.safety.find_injection`, or flagged at validation) is shown wrapped as untrusted
data (:func:`guard_context`), never unmarked.

``retrieve`` is any ``Callable[[str], list[dict]]`` returning chunks (``title``, ``text``, ``doc_id``) best
first; ``None`` means the real published index (:func:`kb_retriever`), :func:`no_retrieval` means no context.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from evertune.tuning.chat import chat_text, end_of_turn_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from evertune.config import Params
    from evertune.kb.safety import Finding
    from evertune.settings import Settings

Chunk = Mapping[str, Any]
Retriever = Callable[[str], Sequence[Chunk]]



@dataclass(frozen=True)
class AnswerSpec:
    """Everything that shapes a prompt and its generation, frozen into each registered model.

    Attributes:
        template_name: Template version, e.g. ``rag-v1``.
        template_text: Its Jinja source (stored, so later edits cannot change a registered model).
        system_prompt: The system turn.
        max_context_chars: Budget for retrieved text per prompt.
        max_length: Token budget of prompt + answer (the training ``max_length``).
        max_new_tokens: Greedy generation length.
        batch_size: Prompts per generation batch.
        prompt_name: The registered prompt whose version ``template_text`` is (``""`` for the bare file template,
            :func:`evertune.tuning.prompt_registry.registered_spec` fills it).
        prompt_version: That prompt's version (``None`` for the bare file template).
    """

    template_name: str
    template_text: str
    system_prompt: str
    max_context_chars: int
    max_length: int
    max_new_tokens: int
    batch_size: int
    prompt_name: str = ""
    prompt_version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for the model artifact ``answer_spec.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnswerSpec:
        """Inverse of :meth:`to_dict` (specs saved before the prompt fields existed load with their defaults)."""
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def answer_spec(params: Params | AnswerSpec) -> AnswerSpec:
    """Build the :class:`AnswerSpec` of ``params`` (an ``AnswerSpec`` is returned unchanged).

    The template is the shipped file's; the pipeline renders with the registered prompt version instead
    (:func:`evertune.tuning.prompt_registry.registered_spec`, the same text with the prompt name and version).

    Raises:
        ConfigError: ``evaluate.prompt_template`` names no shipped template.
    """
    if isinstance(params, AnswerSpec):
        return params
    from evertune.tuning.prompts import load_template

    name = params.evaluate.prompt_template
    return AnswerSpec(
        template_name=name,
        template_text=load_template(name),
        system_prompt=params.dataset.system_prompt,
        max_context_chars=params.evaluate.max_context_chars,
        max_length=params.train.max_length,
        max_new_tokens=params.evaluate.max_new_tokens,
        batch_size=params.evaluate.batch_size,
    )


def no_retrieval(question: str) -> list[Chunk]:
    """A retriever that never finds anything: prompts carry the bare question."""
    return []


def kb_retriever(
    params: Params, settings: Settings | None = None, *, version_or_tag: str | None = None, k: int | None = None
) -> Retriever:
    """The real retriever: search the published LanceDB index.

    Args:
        params: Pipeline params (``retrieval.k``, ``retrieval.mode``, ``index.publish_tag``).
        settings: Deployment settings; default :func:`evertune.settings.get_settings`.
        version_or_tag: Index version or tag to read; default the published tag (``index.publish_tag``).
            Evaluation pins the version it measured, so the registered lineage names one exact index.
        k: Chunks per question; default ``retrieval.k``.

    Returns:
        ``question -> chunks``, best first. Calling it raises ``NothingToDo`` while no index is published.
    """
    from evertune.kb.retrieval import search

    if settings is None:
        from evertune.settings import get_settings

        settings = get_settings()
    tag = version_or_tag or "production"  # search() reads "production" as index.publish_tag

    def retrieve(question: str) -> list[Chunk]:
        return search(question, params, settings, k=k or params.retrieval.k, version_or_tag=tag)

    return retrieve


def select_contexts(chunks: Sequence[Chunk], max_chars: int) -> list[dict[str, Any]]:
    """Keep chunks best-first while their shown text (``body``, else ``text``) fits ``max_chars``; the first
    chunk is cut to fit if it alone is too long."""
    kept: list[dict[str, Any]] = []
    used = 0
    for chunk in chunks:
        field = "body" if chunk.get("body") else "text"
        text = str(chunk.get(field) or "")
        if used + len(text) > max_chars:
            if not kept and max_chars > 0:
                kept.append({**chunk, field: text[:max_chars]})
            break
        kept.append(dict(chunk))
        used += len(text)
    return kept


#: Shown instead of a retrieved chunk's title when the title itself holds flagged text (it moves into the wrapper).
FLAGGED_TITLE = "(flagged document)"


@lru_cache(maxsize=4096)  # the same chunks come back for many questions
def _injection_findings(text: str) -> tuple[Finding, ...]:
    from evertune.kb.safety import find_injection

    return tuple(find_injection(text))


def _flagged_in_metadata(chunk: Chunk) -> tuple[Finding, ...]:
    """Findings recorded at validation (``metadata.injection``, kept under ``validate.injection_action: flag``)."""
    from evertune.kb.safety import INJECTION, Finding

    raw = chunk.get("metadata")
    try:
        metadata = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return ()
    if not isinstance(metadata, Mapping) or not metadata.get("injection"):
        return ()
    kinds = [str(kind) for kind in metadata.get("injection_kinds") or ["flagged_at_validation"]]
    return tuple(Finding(INJECTION, kind, 0, 0, "flagged at validation") for kind in kinds)


def guard_context(shown: Chunk, scanned: Chunk | None = None) -> dict[str, Any]:
    """Mark a retrieved chunk's flagged text before it goes into a prompt.

    The chunk's title and shown text (``body``, else ``text``) of ``scanned`` (the whole retrieved chunk; default
    ``shown``) are re-scanned with :func:`evertune.kb.safety.find_injection`, and a ``metadata`` field that says
    ``injection: true`` (a document kept under ``validate.injection_action: flag``) counts too. A clean chunk is
    returned unchanged (as a copy). A flagged one has its shown text wrapped by
    :func:`evertune.kb.safety.mark_untrusted` (a note that it is data, not instructions, chat tokens defused);
    a flagged title is replaced by :data:`FLAGGED_TITLE` and moved inside the wrapper.

    Args:
        shown: The chunk as it will be shown (perhaps cut to the context budget).
        scanned: The chunk as retrieved, scanned in full so that a cut cannot hide a payload.

    Returns:
        The chunk to render.
    """
    from evertune.kb.safety import mark_untrusted

    scanned = shown if scanned is None else scanned
    field = "body" if shown.get("body") else "text"
    title = str(shown.get("title") or "")
    in_title = _injection_findings(str(scanned.get("title") or ""))
    findings = (*in_title, *_injection_findings(str(scanned.get(field) or "")), *_flagged_in_metadata(scanned))
    guarded = dict(shown)
    if not findings:
        return guarded
    text = str(shown.get(field) or "")
    if in_title:
        text, guarded["title"] = f"{title}\n{text}", FLAGGED_TITLE
    guarded[field] = mark_untrusted(text, findings)
    return guarded


def build_messages(question: str, contexts: Sequence[Chunk], spec: AnswerSpec) -> list[dict[str, str]]:
    """The chat messages (system + user) for one question."""
    from evertune.tuning.prompts import render_template

    user = render_template(spec.template_text, question=question, contexts=contexts)
    return [{"role": "system", "content": spec.system_prompt}, {"role": "user", "content": user}]


def fit_contexts(
    tokenizer: PreTrainedTokenizerBase, question: str, chunks: Sequence[Chunk], spec: AnswerSpec, answer_tokens: int
) -> list[dict[str, Any]]:
    """The contexts a prompt shows: ``chunks`` guarded (:func:`guard_context`), best first within
    ``spec.max_context_chars`` (:func:`select_contexts`), then the lowest-ranked dropped until the rendered prompt
    (chat template applied) plus ``answer_tokens`` fits ``spec.max_length`` tokens; ``[]`` when none fits.

    Serving (:func:`render_prompt`) and the training data (:mod:`evertune.tuning.contexts`) both cut with it.
    """
    # Flagged text never enters a prompt unmarked; the scan sees each chunk whole, before any cut.
    contexts = [guard_context(kept, whole) for kept, whole in zip(select_contexts(chunks, spec.max_context_chars),
                                                                  chunks, strict=False)]  # fmt: skip
    budget = spec.max_length - answer_tokens
    while contexts:
        text = chat_text(tokenizer, build_messages(question, contexts, spec))
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= budget:
            break
        contexts = contexts[:-1]
    return contexts


def render_prompt(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    chunks: Sequence[Chunk],
    spec: AnswerSpec,
    *,
    answer_tokens: int | None = None,
) -> str:
    """Render the full prompt text (chat template applied, generation prompt added).

    Args:
        tokenizer: The model's tokenizer.
        question: The question.
        chunks: Retrieved chunks, best first.
        spec: Template and budgets.
        answer_tokens: Tokens to leave free for the answer; default ``spec.max_new_tokens``.

    Returns:
        The prompt with the contexts of :func:`fit_contexts` (a prompt without any context is returned even if
        it is longer than the budget).
    """
    free = spec.max_new_tokens if answer_tokens is None else answer_tokens
    return chat_text(tokenizer, build_messages(question, fit_contexts(tokenizer, question, chunks, spec, free), spec))


def retrieve_contexts(questions: Sequence[str], retrieve: Retriever | None, params: Params | None) -> list[list[Chunk]]:
    """Run the retriever once per question (``None`` -> the published KB, needs ``params``)."""
    if retrieve is None:
        if params is None:
            raise ValueError("retrieve=None (the published KB) needs the pipeline params")
        retrieve = kb_retriever(params)
    return [list(retrieve(question)) for question in questions]


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Generation stops on the tokenizer's EOS, the chat template's end-of-turn token and the model's own EOS ids."""
    return end_of_turn_ids(tokenizer, getattr(model.generation_config, "eos_token_id", None))


@dataclass(frozen=True)
class Generations:
    """Greedy answers and, per answer, whether the raw ``generate`` output ended it.

    Attributes:
        answers: The decoded new tokens of each prompt, special tokens removed, stripped.
        ended: Whether the model emitted an end-of-turn / EOS id (:func:`_eos_ids`) before ``max_new_tokens``,
            read from the raw token ids (nothing is cut after the fact).
    """

    answers: list[str]
    ended: list[bool]

    @property
    def ended_share(self) -> float:
        """Share of answers that ended on their own (``nan`` for none)."""
        return sum(self.ended) / len(self.ended) if self.ended else math.nan


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Item indices in batches of ``batch_size``, shortest first, so that each batch pads (and prefills) little.

    Callers put each batch's results back at these indices, so their output keeps the input order.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def generate_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], spec: AnswerSpec
) -> Generations:
    """Greedy-generate one answer per rendered prompt, in batches of ``spec.batch_size`` (left padding).

    Prompts are batched in order of token length (so a batch pads little), and the answers returned in input order.

    Args:
        model: A causal LM (merged or PEFT-wrapped).
        tokenizer: Its tokenizer (needs a pad token).
        prompts: Prompts from :func:`render_prompt`.
        spec: Generation settings.

    Returns:
        The answers and whether each one ended before ``spec.max_new_tokens``.
    """
    import torch
    from transformers import GenerationConfig

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = _eos_ids(model, tokenizer)
    config = GenerationConfig(
        max_new_tokens=spec.max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad_id, eos_token_id=eos_ids
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    answers: list[str] = [""] * len(prompts)
    ended: list[bool] = [False] * len(prompts)
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]] if prompts else []
    try:
        for rows in length_sorted_batches(lengths, spec.batch_size):
            encoded = tokenizer([prompts[i] for i in rows], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(device)
            with torch.inference_mode():
                output = model.generate(**encoded, generation_config=config)
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            for row, text, ids in zip(rows, tokenizer.batch_decode(new_tokens, skip_special_tokens=True),
                                      new_tokens.tolist(), strict=True):
                answers[row], ended[row] = text.strip(), any(token in eos_ids for token in ids)
    finally:
        tokenizer.padding_side = previous_side
        if was_training:
            model.train()
    return Generations(answers, ended)


def answer_questions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    retrieve: Retriever | None,
    params: Params | AnswerSpec,
    *,
    contexts: Sequence[Sequence[Chunk]] | None = None,
) -> list[str]:
    """Answer questions the way users are served: retrieve, apply the template, generate greedily.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        questions: The questions.
        retrieve: ``question -> chunks``; ``None`` searches the published KB (needs ``params`` to be
            :class:`Params`); :func:`no_retrieval` gives prompts without context.
        params: Pipeline params, or an :class:`AnswerSpec` (what the registered model carries).
        contexts: Already retrieved chunks per question; when given, ``retrieve`` is not called.

    Returns:
        One answer per question, in order.
    """
    spec = answer_spec(params)
    if contexts is None:
        contexts = retrieve_contexts(questions, retrieve, None if isinstance(params, AnswerSpec) else params)
    if len(contexts) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} context lists")
    return generate_for_questions(model, tokenizer, questions, spec, contexts).answers


def generate_for_questions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    spec: AnswerSpec,
    contexts: Sequence[Sequence[Chunk]],
) -> Generations:
    """:func:`answer_questions` on already retrieved contexts, keeping whether each answer ended by itself."""
    if len(contexts) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} context lists")
    prompts = [render_prompt(tokenizer, q, c, spec) for q, c in zip(questions, contexts, strict=True)]
    return generate_answers(model, tokenizer, prompts, spec)


__all__ = [
    "AnswerSpec", "Generations", "Retriever", "answer_questions", "answer_spec", "build_messages", "fit_contexts",
    "generate_answers", "generate_for_questions", "kb_retriever", "length_sorted_batches", "no_retrieval",
    "render_prompt",
    "retrieve_contexts", "select_contexts",
]  # fmt: skip
