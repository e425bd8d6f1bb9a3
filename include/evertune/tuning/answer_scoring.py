"""How likely a model finds the reference answers: per-token NLL through the served prompt (for perplexity).

The prompts are the answer path's (:func:`evertune.tuning.answer.render_prompt`, contexts budgeted so the whole
reference fits), and the scored tokens are the ones SFT trains on, so a perplexity here measures what training
optimises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from evertune.tuning.answer import (
    AnswerSpec,
    Chunk,
    Retriever,
    answer_spec,
    length_sorted_batches,
    render_prompt,
    retrieve_contexts,
)
from evertune.tuning.chat import turn_suffix

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from evertune.config import Params


def answer_token_losses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    references: Sequence[str],
    retrieve: Retriever | None,
    params: Params | AnswerSpec,
    *,
    contexts: Sequence[Sequence[Chunk]] | None = None,
) -> list[list[float]]:
    """Per-token negative log-likelihood (natural log) of each reference answer given its RAG prompt.

    The scored tokens are the reference answer followed by what the chat template writes after an assistant turn
    (:func:`evertune.tuning.chat.turn_suffix`, e.g. ``<|im_end|>\\n``), exactly the tokens SFT trains on. Feed the result to
    :func:`evertune.tuning.metrics.perplexity`.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        questions: The questions.
        references: The reference answers, aligned with ``questions``.
        retrieve: As in :func:`answer_questions`.
        params: Pipeline params or an :class:`AnswerSpec`.
        contexts: Already retrieved chunks per question.

    Returns:
        One list of token NLLs per item.
    """

    if len(references) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(references)} references")
    spec = answer_spec(params)
    if contexts is None:
        contexts = retrieve_contexts(questions, retrieve, None if isinstance(params, AnswerSpec) else params)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    suffix_ids = tokenizer(turn_suffix(tokenizer), add_special_tokens=False)["input_ids"]
    sequences: list[tuple[list[int], int]] = []
    for question, chunks, reference in zip(questions, contexts, references, strict=True):
        answer_ids = tokenizer(reference, add_special_tokens=False)["input_ids"] + suffix_ids
        prompt = render_prompt(tokenizer, question, chunks, spec, answer_tokens=len(answer_ids))
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        sequences.append((prompt_ids + answer_ids, len(prompt_ids)))

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses: list[list[float]] = [[] for _ in sequences]
    try:
        for rows in length_sorted_batches([len(ids) for ids, _ in sequences], spec.batch_size):
            for row, values in zip(rows, _batch_losses(model, [sequences[i] for i in rows], pad_id, device),
                                   strict=True):
                losses[row] = values
    finally:
        if was_training:
            model.train()
    return losses


def _batch_losses(model: PreTrainedModel, batch: list[tuple[list[int], int]], pad_id: int, device: Any
                  ) -> list[list[float]]:
    """Token NLLs of the answer part of each ``(ids, prompt_len)`` sequence, in one right-padded forward pass.

    Only the positions that predict answer tokens (the span from the earliest answer start to the longest end in
    the batch) go through the vocabulary projection (``logits_to_keep``): the prompt positions, most of a RAG
    prompt, would otherwise make a ``batch x width x vocab`` logits tensor and its log-softmax. A model whose
    forward has no ``logits_to_keep`` gets the full projection.
    """
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, _) in enumerate(batch):  # right padding: positions stay 0..n-1 as in training
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
    # logits at position t predict token t+1: answer tokens start at prompt_len, so keep prompt_len - 1 onwards.
    low, high = min(prompt_len for _, prompt_len in batch) - 1, max(len(ids) for ids, _ in batch) - 1
    inputs = {"input_ids": input_ids.to(device), "attention_mask": attention.to(device)}
    with torch.inference_mode():
        try:
            logits = model(**inputs, logits_to_keep=torch.arange(low, high, device=device)).logits.float()
        except TypeError:  # an architecture without logits_to_keep: project every position
            logits = model(**inputs).logits.float()[:, low:high]
    log_probs = torch.log_softmax(logits, dim=-1)
    targets = input_ids[:, low + 1 : high + 1].to(device)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
    return [[float(v) for v in nll[row, prompt_len - 1 - low : len(ids) - 1 - low]]
            for row, (ids, prompt_len) in enumerate(batch)]


def answer_logprob_losses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    references: Sequence[str],
    retrieve: Retriever | None,
    params: Params | AnswerSpec,
    *,
    contexts: Sequence[Sequence[Chunk]] | None = None,
) -> list[float]:
    """Per-item mean NLL of the reference answers (see :func:`answer_token_losses`); ``exp`` of it is the
    item's perplexity."""
    token_losses = answer_token_losses(model, tokenizer, questions, references, retrieve, params, contexts=contexts)
    return [sum(item) / len(item) if item else math.nan for item in token_losses]


__all__ = ["answer_logprob_losses", "answer_token_losses"]
