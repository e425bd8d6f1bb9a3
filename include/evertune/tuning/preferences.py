"""Preference pairs from validated feedback, for the optional DPO stage (:mod:`evertune.tuning.dpo`).

One pair per answer rated **down** (an answer rated up, or one rated down with nothing better to offer, gives
none):

* ``prompt``: the system and user turns exactly as the SFT rows and the served prompt render them
  (:func:`evertune.tuning.answer.build_messages` over the shown chunks, guarded and cut by
  :func:`~evertune.tuning.answer.fit_contexts` when a tokenizer is given) -- TRL's conversational format;
* ``chosen``: the user's correction (validated: grounded in the cited article,
  :func:`evertune.kb.feedback.check_feedback_row`), else the reference answer of the same question from the SFT
  dataset (grounded by the dataset builder);
* ``rejected``: the answer that was rated down.

Pairs are sorted by id (the feedback id) and deduplicated on (prompt, chosen, rejected), so the same feedback
gives the same file.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from evertune.tuning.metrics import normalize_answer

if TYPE_CHECKING:
    from evertune.tuning.answer import AnswerSpec

CORRECTION = "correction"
REFERENCE = "reference"


@dataclass
class PreferenceSet:
    """Pairs and what was skipped.

    Attributes:
        pairs: ``{id, answer_id, prompt, chosen, rejected, chosen_source, kb_version}`` rows, sorted by id.
        counts: ``pairs``, ``skipped_rated_up``, ``skipped_no_chosen``, ``skipped_same_answer``,
            ``skipped_no_context``, ``skipped_duplicate``, ``from_correction``, ``from_reference``.
    """

    pairs: list[dict[str, Any]]
    counts: dict[str, int] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """sha256 of the pairs' canonical JSON."""
        return hashlib.sha256(json.dumps(self.pairs, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def reference_answers(rows: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Normalised question -> reference answer of SFT dataset rows (``question``/``answer``; the first row wins)."""
    references: dict[str, str] = {}
    for row in rows:
        question, answer = str(row.get("question") or ""), str(row.get("answer") or "")
        if question and answer:
            references.setdefault(normalize_answer(question), answer)
    return references


def prompt_messages(question: str, contexts: Sequence[Mapping[str, Any]], spec: AnswerSpec, tokenizer: Any = None,
                    answer_tokens: int = 0) -> list[dict[str, str]]:
    """System + user turns of ``question`` over the shown ``contexts``, rendered as served and as in SFT rows."""
    from evertune.tuning.answer import build_messages, fit_contexts, guard_context, select_contexts

    if tokenizer is not None:
        shown = fit_contexts(tokenizer, question, contexts, spec, answer_tokens)
    else:
        shown = [guard_context(kept, whole) for kept, whole in
                 zip(select_contexts(contexts, spec.max_context_chars), contexts, strict=False)]
    return build_messages(question, shown, spec)


def _chosen(row: Mapping[str, Any], references: Mapping[str, str]) -> tuple[str | None, str]:
    if row.get("correction"):
        return str(row["correction"]), CORRECTION
    return references.get(normalize_answer(str(row["question"]))), REFERENCE


def build_pairs(rows: Iterable[Mapping[str, Any]], spec: AnswerSpec, *, references: Mapping[str, str] | None = None,
                tokenizer: Any = None) -> PreferenceSet:
    """Preference pairs of validated feedback rows (:class:`evertune.kb.feedback.FeedbackBatch` ``rows``).

    Args:
        rows: Validated feedback rows.
        spec: The served answer spec (template, system prompt, budgets).
        references: :func:`reference_answers` of the SFT dataset, for answers rated down without a correction.
        tokenizer: The base model's tokenizer: contexts are cut to ``spec.max_length`` as served; without it,
            only the character budget applies.
    """
    from evertune.tuning.chat import completion_tokens

    counts: Counter[str] = Counter()
    pairs: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for row in sorted(rows, key=lambda r: str(r["feedback_id"])):
        if row["rating"] != "down":
            counts["skipped_rated_up"] += 1
            continue
        chosen, source = _chosen(row, references or {})
        if not chosen:
            counts["skipped_no_chosen"] += 1
            continue
        if normalize_answer(chosen) == normalize_answer(str(row["answer"])):
            counts["skipped_same_answer"] += 1
            continue
        if row.get("citations") and not row.get("contexts"):
            counts["skipped_no_context"] += 1  # the shown chunks could not be recovered: the prompt is unknown
            continue
        budget = (max(completion_tokens(tokenizer, chosen), completion_tokens(tokenizer, str(row["answer"])))
                  if tokenizer is not None else 0)
        prompt = prompt_messages(str(row["question"]), row.get("contexts") or [], spec, tokenizer, budget)
        key = json.dumps([prompt, chosen, row["answer"]], sort_keys=True, ensure_ascii=False)
        if key in seen:
            counts["skipped_duplicate"] += 1
            continue
        seen.add(key)
        counts[f"from_{source}"] += 1
        pairs[str(row["feedback_id"])] = {
            "id": str(row["feedback_id"]), "answer_id": str(row["answer_id"]), "prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": str(row["answer"])}],
            "chosen_source": source, "kb_version": (row.get("versions") or {}).get("kb_version"),
        }
    result = [pairs[key] for key in sorted(pairs)]
    counts["pairs"] = len(result)
    return PreferenceSet(result, dict(sorted(counts.items())))


def write_pairs(pairs: Sequence[Mapping[str, Any]], path: Any) -> Any:
    """Write pairs as sorted-key JSON lines (byte-deterministic); returns the path."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p, sort_keys=True, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    return path


def window_preferences(dataset: Mapping[str, Any], params: Any, settings: Any) -> tuple[PreferenceSet, Any]:
    """The pairs of a training run: feedback of the dataset's window (closed, read, validated against the
    documents of the validated history up to ``as_of``), references from its train and validation rows.

    Returns:
        ``(PreferenceSet, FeedbackBatch)``; the batch's quarantine lists the rejected feedback with reasons.
    """
    from pathlib import Path

    from evertune.kb.feedback import collect_feedback
    from evertune.tuning.answer import answer_spec
    from evertune.tuning.contexts import load_base_tokenizer
    from evertune.tuning.history import current_documents, select_interval_dirs
    from evertune.tuning.train_data import read_jsonl

    history = select_interval_dirs(settings.data_repo / "validated", dataset["as_of"], None)
    batch = collect_feedback(settings.landing_uri, dataset["as_of"], params, current_documents(history))
    folder = Path(dataset["path"])
    rows = [row for name in ("train.jsonl", "validation.jsonl") if (folder / name).is_file()
            for row in read_jsonl(folder / name)]
    pairs = build_pairs(batch.rows, answer_spec(params), references=reference_answers(rows),
                        tokenizer=load_base_tokenizer(params, settings))
    return pairs, batch


__all__ = ["CORRECTION", "REFERENCE", "PreferenceSet", "build_pairs", "prompt_messages", "reference_answers",
           "window_preferences", "write_pairs"]
