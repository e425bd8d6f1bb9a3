"""The chat-template facts that training and serving must agree on: the prompt text, and where a turn ends.

A served prompt is the tokenizer's chat template over (system, user) with the generation prompt added; a training
example is the same prompt followed by the answer and whatever the template appends after an assistant turn
(``<|im_end|>\\n`` for ChatML templates such as SmolLM2's). That appended end-of-turn token is what the model must
learn to emit and what generation must stop on, so both sides read it from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: Used when a tokenizer has no chat template (plain base models); real instruct models bring their own.
FALLBACK_CHAT = "{system}\n\nUser: {user}\nAssistant:"
#: Assistant content used to find what the chat template writes after an assistant turn.
_PROBE = "evertune-probe-answer"


def chat_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """The prompt text of ``messages`` (system + user): the chat template with the generation prompt added, or
    :data:`FALLBACK_CHAT` without a template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return FALLBACK_CHAT.format(system=messages[0]["content"], user=messages[1]["content"])


def turn_suffix(tokenizer: PreTrainedTokenizerBase) -> str:
    """What follows an assistant answer in a training sequence: the text the chat template writes after the
    assistant content (e.g. ``<|im_end|>\\n``), or the EOS token without a template (TRL appends it to a plain
    completion)."""
    if not getattr(tokenizer, "chat_template", None):
        return tokenizer.eos_token or ""
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    prompt = chat_text(tokenizer, messages)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": _PROBE}], tokenize=False)
    at = full.find(_PROBE, max(len(prompt) - 1, 0))
    return full[at + len(_PROBE) :] if at >= 0 else (tokenizer.eos_token or "")


def completion_tokens(tokenizer: PreTrainedTokenizerBase, answer: str) -> int:
    """Tokens an answer takes in a training sequence: the answer plus :func:`turn_suffix`."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return len(ids) + len(tokenizer(turn_suffix(tokenizer), add_special_tokens=False)["input_ids"])


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase, extra: object = None) -> list[int]:
    """Token ids that end an answer: the tokenizer's EOS, the first special token of :func:`turn_suffix` (the
    chat template's end-of-turn token, e.g. ``<|im_end|>`` or ``<|eot_id|>``), and ``extra`` (an id or a list of
    ids, e.g. the model's ``generation_config.eos_token_id``), without duplicates and in that order."""
    ids: list[int] = []
    suffix_ids = tokenizer(turn_suffix(tokenizer), add_special_tokens=False)["input_ids"]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    end_of_turn = [suffix_ids[0]] if suffix_ids and suffix_ids[0] in special else []
    for candidate in (tokenizer.eos_token_id, end_of_turn, extra):
        for value in candidate if isinstance(candidate, list) else [candidate]:
            if value is not None and int(value) not in ids:
                ids.append(int(value))
    return ids


__all__ = ["FALLBACK_CHAT", "chat_text", "completion_tokens", "end_of_turn_ids", "turn_suffix"]
