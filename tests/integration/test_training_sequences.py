"""Answers end: every training sequence TRL builds from our rows trains the chat template's end-of-turn token.

Context-grounded rows (:class:`~evertune.tuning.contexts.ContextBuilder`, the served prompt with budgeted chunks
of an in-memory KB, cited and distractor examples) are read by :func:`~evertune.tuning.train_data.load_examples`
and handed to the ``SFTTrainer`` that :func:`evertune.tuning.trainer.build_trainer` builds for the tiny model
(SmolLM2's tokenizer and ChatML template). After TRL's own preparation and collator, each example's labelled
tokens must be exactly the answer followed by the template's end-of-turn suffix (``<|im_end|>\\n``): the
answer is wholly inside the loss, the prompt carries none, nothing was truncated, and the sequence fits
``train.max_length``. Generation must stop on that token. The same check fails on full-sequence loss and on a
truncated sequence, so it can fail.

This checks the data path, not the model: whether a trained model then emits EOS is measured on the real model by
``bench/answer_quality.py`` (a few steps on the tiny random model never get there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from evertune.config import Params, load_params, parse_params
from evertune.tuning.answer import answer_spec
from evertune.tuning.chat import end_of_turn_ids, turn_suffix
from evertune.tuning.contexts import CITED, DISTRACTORS, ContextBuilder, KnowledgeBase, in_distractor_share
from evertune.tuning.train_data import load_examples

ARTICLES = {
    "export": "To export your notes, open File and choose Export. Exports are Markdown or PDF files. "
              "Large notebooks export in the background and you get an email when the file is ready.",
    "billing": "The Pro plan costs 10 dollars per user per month. Change your plan in Settings > Billing > Plan. "
               "Invoices are listed in Settings > Billing > Invoices and can be downloaded as PDF.",
    "sync": "Notes edited offline sync when you reconnect. Conflicts keep both versions side by side. "
            "Sync runs every 30 seconds while the app is open.",
}
QA = [  # (id, question, answer, cited doc)
    ("qa-1", "How do I export my notes?", "Open File and choose Export.", "export"),
    ("qa-2", "How much does the Pro plan cost?", "10 dollars per user per month.", "billing"),
    ("qa-3", "Where are my invoices?", "In Settings > Billing > Invoices.", "billing"),
    ("qa-4", "What happens to notes I edit offline?", "They sync when you reconnect.", "sync"),
    ("qa-5", "How often does sync run?", "Every 30 seconds while the app is open.", "sync"),
    ("qa-6", "What formats can I export to?", "Markdown or PDF.", "export"),
]
MAX_LENGTH = 160  # small enough that the budget drops chunks of the longer prompts


def _kb() -> KnowledgeBase:
    chunks = [{"chunk_id": f"{doc}#{i}", "doc_id": doc, "ordinal": i, "title": doc.title(), "text": s, "body": s}
              for doc, text in ARTICLES.items() for i, s in enumerate(text.split(". "))]

    def retrieve(question: str) -> list[dict[str, Any]]:
        words = set(question.lower().strip("?").split())
        return sorted(chunks, key=lambda c: -len(words & set(c["text"].lower().split())))

    return KnowledgeBase("kb_test@v1", retrieve,
                         lambda ids: {d: [c for c in chunks if c["doc_id"] == d] for d in ids})


def _params(tiny_model_dir: Path, **train: Any) -> Params:
    data = load_params().to_dict()
    data["base_model"] = {"name_or_path": str(tiny_model_dir), "revision": None, "sha256": None}
    data["train"].update({"max_length": MAX_LENGTH, "packing": False, "per_device_train_batch_size": 4, **train})
    data["dataset"]["context"]["distractor_fraction"] = 0.4
    return parse_params(data)


def _write_rows(path: Path, tokenizer: Any, params: Params, fmt: str) -> list[dict[str, Any]]:
    import json

    builder = ContextBuilder(_kb(), tokenizer, answer_spec(params), params.dataset.context, k=3, fmt=fmt)
    builder.prepare(doc for *_, doc in QA)
    rows = [{"id": qa_id, **builder.fields(qa_id, question, answer, doc)} for qa_id, question, answer, doc in QA]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return rows


def _target(row: dict[str, Any]) -> str:
    return row["completion"] if "completion" in row else row["messages"][-1]["content"]


def loss_problems(prepared: list[dict[str, Any]], batch: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any,
                  max_length: int) -> list[str]:
    """What is wrong with the training sequences of ``rows``: each row must still be there (TRL silently drops an
    example that truncation left without loss), its labelled tokens (collated ``labels != -100``) must be the
    answer followed by a non-empty prefix of the template's turn suffix that starts with an end-of-turn id, and
    the sequence must fit ``max_length``."""
    from evertune.tuning.train_data import to_sft_example

    suffix = tokenizer(turn_suffix(tokenizer), add_special_tokens=False)["input_ids"]
    ends = set(end_of_turn_ids(tokenizer))
    where = {repr(feature.get("prompt", feature.get("messages"))): i for i, feature in enumerate(prepared)}
    problems = []
    for row in rows:
        example = to_sft_example(row, completion_only=True)
        i = where.get(repr(example["prompt"]), where.get(repr(row.get("messages"))))
        if i is None:
            problems.append(f"{row['id']}: dropped from the prepared training set")
            continue
        labelled = [int(t) for t in batch["labels"][i].tolist() if t != -100]
        length = int(batch["attention_mask"][i].sum())
        answer = tokenizer(_target(row), add_special_tokens=False)["input_ids"]
        tail = labelled[len(answer):]
        if length > max_length:
            problems.append(f"{row['id']}: {length} tokens > max_length {max_length}")
        if labelled[: len(answer)] != answer:
            problems.append(f"{row['id']}: the labelled tokens do not start with the whole answer "
                            f"({tokenizer.decode(labelled)[:80]!r})")
        elif not tail or tail != suffix[: len(tail)] or tail[0] not in ends:
            problems.append(f"{row['id']}: the loss ends on {tokenizer.decode(labelled[-3:])!r}, not the end-of-turn "
                            f"token {tokenizer.decode(suffix[:1])!r}")
    return problems


def _prepare(tiny_model_dir: Path, tmp_path: Path, params: Params, rows_file: Path):
    """TRL's prepared train dataset of ``rows_file`` for the tiny model (as :func:`build_trainer` builds the
    trainer), collated as training collates it, and the loaded model."""
    from evertune.tuning.trainer import build_trainer, load_model

    tp = params.train
    examples = load_examples(rows_file, None, None, replay_fraction=0.0, seed=tp.seed,
                             completion_only=tp.completion_only_loss)
    loaded = load_model(str(tiny_model_dir), None, params.lora, seed=tp.seed)
    trainer = build_trainer(loaded, examples, tp, tmp_path / "out", [])
    prepared = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    return prepared, trainer.data_collator(prepared), loaded


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.mark.parametrize("fmt", ["messages", "prompt_completion"])
def test_every_training_sequence_ends_its_loss_on_the_end_of_turn_token(
    fmt: str, tiny_model_dir: Path, tokenizer, tmp_path: Path
) -> None:
    params = _params(tiny_model_dir)
    rows = _write_rows(tmp_path / "train.jsonl", tokenizer, params, fmt)
    assert {row["context"] for row in rows} == {CITED, DISTRACTORS}  # both kinds of example are checked
    assert [row["context"] == DISTRACTORS for row in rows] == [in_distractor_share(r["id"], 0.4) for r in rows]
    prepared, batch, loaded = _prepare(tiny_model_dir, tmp_path, params, tmp_path / "train.jsonl")
    assert len(prepared) == len(rows)
    assert loss_problems(prepared, batch, rows, tokenizer, MAX_LENGTH) == []
    # Generation stops on the token the loss ends on.
    from evertune.tuning.answer import _eos_ids

    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert turn_suffix(tokenizer) == "<|im_end|>\n"
    assert end_of_turn in _eos_ids(loaded.model, tokenizer)


def test_the_check_fails_on_full_sequence_loss_and_on_truncation(tiny_model_dir: Path, tokenizer,
                                                                 tmp_path: Path) -> None:
    params = _params(tiny_model_dir)
    rows = _write_rows(tmp_path / "train.jsonl", tokenizer, params, "messages")
    # Without completion-only loss the prompt tokens carry loss: the labelled tokens no longer start at the answer.
    full = _params(tiny_model_dir, completion_only_loss=False)
    problems = loss_problems(*_prepare(tiny_model_dir, tmp_path / "full", full, tmp_path / "train.jsonl")[:2], rows,
                             tokenizer, MAX_LENGTH)
    assert len(problems) == len(rows) and all("do not start with the whole answer" in p for p in problems)
    # A max_length below the rows' budget truncates the end: the loss no longer ends on the end-of-turn token, or
    # TRL drops the example altogether (nothing left to learn from).
    short = _params(tiny_model_dir, max_length=MAX_LENGTH - 40)
    problems = loss_problems(*_prepare(tiny_model_dir, tmp_path / "short", short, tmp_path / "train.jsonl")[:2],
                             rows, tokenizer, MAX_LENGTH - 40)
    cut = [p for p in problems if "not the end-of-turn token" in p or "whole answer" in p]
    assert any("dropped" in p for p in problems) and cut, problems
