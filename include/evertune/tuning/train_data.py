"""The examples a training run sees: JSON-lines rows, replay mixing, and the shape ``SFTTrainer`` expects.

Tokenisation, packing and collation are TRL's (``SFTTrainer`` with ``train.packing`` and
``train.completion_only_loss``); this module decides which rows go in and in which form.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evertune.errors import ConfigError, NothingToDo


@dataclass(frozen=True)
class TrainingExamples:
    """The examples of one training run, in ``SFTTrainer`` form.

    Attributes:
        train: Training examples after replay mixing (seeded order).
        eval: Evaluation examples (empty: no eval loss).
        n_replay: How many of ``train`` were replayed reference examples.
    """

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    n_replay: int


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file (blank lines skipped).

    Raises:
        ConfigError: A line is not a JSON object.
        NothingToDo: The file holds no rows.
    """
    rows: list[dict[str, Any]] = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{number}: expected a JSON object")
            rows.append(row)
    if not rows:
        raise NothingToDo(f"{path} holds no examples")
    return rows


def to_sft_example(row: Mapping[str, Any], *, completion_only: bool) -> dict[str, Any]:
    """Turn a ``messages`` row into what ``SFTTrainer`` should see.

    With ``completion_only`` the conversation is split into ``prompt`` (all turns but the last) and
    ``completion`` (the final assistant turn), so TRL computes the loss on the answer only; this needs no
    ``{% generation %}`` markers in the chat template. Rows already in prompt/completion form pass through.

    Raises:
        ConfigError: The row has neither ``messages`` nor ``prompt``/``completion``, or the last message is not
            the assistant's.
    """
    if "prompt" in row and "completion" in row:
        return {"prompt": row["prompt"], "completion": row["completion"]}
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ConfigError("an SFT example needs a non-empty 'messages' list (or 'prompt' and 'completion')")
    clean = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    if not completion_only:
        return {"messages": clean}
    if clean[-1]["role"] != "assistant" or len(clean) < 2:
        raise ConfigError("the last message of an SFT example must be the assistant's answer")
    return {"prompt": clean[:-1], "completion": clean[-1:]}


def row_question(row: Mapping[str, Any]) -> str:
    """The question of an SFT row: its ``question`` field, else the text of its last user turn."""
    if row.get("question"):
        return str(row["question"])
    users = [m for m in row.get("messages") or [] if isinstance(m, Mapping) and m.get("role") == "user"]
    return str(users[-1].get("content") or "") if users else str(row.get("prompt") or "")


def filter_replay(
    replay_rows: Sequence[dict[str, Any]],
    new_rows: Sequence[dict[str, Any]],
    *,
    golden_ids: Iterable[str] = (),
    golden_questions: Iterable[str] = (),
    deleted_doc_ids: Iterable[str] = (),
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The reference rows that may be replayed into a warm start, in their order.

    A reference row (e.g. of the champion's training set) is left out when it is (matching by ``id`` or by
    question normalised with :func:`evertune.tuning.metrics.normalize_answer`, the last user turn for a row
    without ``question``):

    * a golden QA item (``golden_ids`` / ``golden_questions``): the champion may have trained on an item that
      joined the golden set later, and no golden item is ever trained on;
    * about a deleted document (its ``doc_id`` in ``deleted_doc_ids``): a deletion must reach the model too;
    * superseded by a new row (``new_rows``, train and validation): the new row, whose answer or context may have
      changed since, is what the model should learn; replaying the old one would teach the stale version, and a
      reference row that became a validation row would leak into the eval loss.

    Returns:
        ``(kept, counts)`` with counts ``replay_rows``, ``replay_kept``, ``replay_dropped_golden``,
        ``replay_dropped_deleted_doc`` and ``replay_dropped_superseded`` (each dropped row counted under the first reason that applies).
    """
    from evertune.tuning.metrics import normalize_answer

    gold_ids, gold_texts = set(golden_ids), {normalize_answer(q) for q in golden_questions}
    deleted = set(deleted_doc_ids)
    new_ids = {str(row["id"]) for row in new_rows if row.get("id") is not None}
    new_texts = {normalize_answer(row_question(row)) for row in new_rows}
    kept: list[dict[str, Any]] = []
    counts = {"replay_rows": len(replay_rows), "replay_kept": 0, "replay_dropped_golden": 0,
              "replay_dropped_deleted_doc": 0, "replay_dropped_superseded": 0}
    for row in replay_rows:
        row_id, text = str(row.get("id", "")), normalize_answer(row_question(row))
        if row_id in gold_ids or text in gold_texts:
            counts["replay_dropped_golden"] += 1
        elif row.get("doc_id") and str(row["doc_id"]) in deleted:
            counts["replay_dropped_deleted_doc"] += 1
        elif row_id in new_ids or text in new_texts:
            counts["replay_dropped_superseded"] += 1
        else:
            kept.append(row)
    counts["replay_kept"] = len(kept)
    return kept, counts


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write rows as JSON lines (UTF-8, keys in their order): the same rows always give the same bytes."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return target


def mix_replay(
    new_rows: Sequence[dict[str, Any]], replay_rows: Sequence[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], int]:
    """Mix replayed reference examples into the new training set (against forgetting on warm starts).

    ``fraction`` is the share of replayed examples in the resulting mix: ``n_replay = fraction / (1 - fraction)
    * n_new``, capped by what the replay set has (rows identical to a new row are not replayed; a warm start from
    the champion filters its rows first with :func:`filter_replay`). Sampling and the final order are seeded, so
    the mix is the same on every retry.

    Returns:
        ``(rows, n_replayed)``.
    """
    if fraction <= 0 or not replay_rows:
        return list(new_rows), 0
    seen = {json.dumps(row, sort_keys=True) for row in new_rows}
    pool = [row for row in replay_rows if json.dumps(row, sort_keys=True) not in seen]
    wanted = min(len(pool), round(fraction / (1.0 - fraction) * len(new_rows)))
    rng = random.Random(seed)
    replayed = rng.sample(pool, wanted)
    mixed = list(new_rows) + replayed
    rng.shuffle(mixed)
    return mixed, wanted


def load_examples(
    train_path: str | Path,
    eval_path: str | Path | None,
    replay_path: str | Path | None,
    *,
    replay_fraction: float,
    seed: int,
    completion_only: bool,
) -> TrainingExamples:
    """Read the training, evaluation and replay files and turn them into ``SFTTrainer`` examples.

    Args:
        train_path: The new training rows.
        eval_path: Evaluation rows; ``None`` for none.
        replay_path: Reference rows to replay (``replay_fraction`` of the mix); ``None`` for none.
        replay_fraction: ``train.replay_fraction``.
        seed: Seeds the replay sample and the order of the mix.
        completion_only: ``train.completion_only_loss`` (see :func:`to_sft_example`).

    Raises:
        ConfigError: A bad row.
        NothingToDo: A file holds no rows.
    """
    train_rows = read_jsonl(train_path)
    replay_rows = read_jsonl(replay_path) if replay_path is not None else []
    mixed, n_replay = mix_replay(train_rows, replay_rows, replay_fraction, seed)
    evaluation = read_jsonl(eval_path) if eval_path else []
    return TrainingExamples(
        train=[to_sft_example(row, completion_only=completion_only) for row in mixed],
        eval=[to_sft_example(row, completion_only=completion_only) for row in evaluation],
        n_replay=n_replay,
    )


__all__ = ["TrainingExamples", "filter_replay", "load_examples", "mix_replay", "read_jsonl", "row_question",
           "to_sft_example", "write_jsonl"]
