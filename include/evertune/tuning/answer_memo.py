"""A model's answers and reference losses, remembered item by item and shared through MLflow.

Every tuning run evaluates the champion again on the golden set, and the base model whenever the golden set or
the KB version moved; most of those items are unchanged from the last run (same question, same retrieved
chunks), and so is the model. A greedy answer and a reference's token losses depend only on:

* the model: the digest of its checkpoint files (:func:`evertune.models.hashing.checkpoint_digest`), so the
  champion downloaded from the registry is the challenger that was evaluated when it was trained; the base
  model is its :func:`evertune.tuning.base_score.base_model_identity`;
* the answer spec (prompt template text and version, system prompt, budgets, ``max_new_tokens``, batch size);
* the question and what the prompt shows of each retrieved chunk (id, document, title, text);
* for losses, the reference answer; and the device type (CPU and CUDA round differently).

:class:`AnswerMemo` hashes those into one key per item, answers only the items it has not seen, and logs the new
ones as a finished run of the tuning experiment tagged ``answer_memo_model=<model key>`` (artifact
``memo/items.json``), so every worker (Celery workers included) reads what another computed. A hit returns the
answer the model gave to that exact prompt in an earlier batch; batch mates change the padding, which can move a
greedy answer by a rounding, so a cached answer is one the model gave, not necessarily bit for bit the one this
batch would give. Re-running an evaluation reads the same items back, so it gives the same result.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from evertune.config import Params
    from evertune.settings import Settings
    from evertune.tuning.answer import AnswerSpec, Generations

log = logging.getLogger(__name__)

#: Run tag naming the model whose items a memo run holds.
MODEL_TAG = "answer_memo_model"
#: Artifact of a memo run: ``{"model": <key>, "items": {<item key>: {...}}}``.
ARTIFACT = "memo/items.json"
#: Memo runs read per model (newest first); older ones are only a lost chance of a hit.
MAX_RUNS = 100


def context_view(contexts: Sequence[Sequence[Mapping[str, Any]]]) -> list[list[list[Any]]]:
    """What a prompt sees of each retrieved chunk (scores left out: they do not reach the prompt)."""
    return [[[c.get("chunk_id"), c.get("doc_id"), c.get("title"), c.get("text")] for c in chunks]
            for chunks in contexts]


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def model_key(model_dir: str | Path | None = None, identity: Mapping[str, Any] | None = None) -> str | None:
    """The memo key of a model: of ``identity`` when given, else of the checkpoint folder's files.

    ``None`` (nothing is remembered) for a hub id without an identity: its name says nothing about its weights.
    """
    if identity is not None:
        return _digest({"identity": dict(identity)})
    if model_dir is not None and Path(model_dir).is_dir():
        from evertune.models.hashing import checkpoint_digest

        return _digest({"checkpoint": checkpoint_digest(Path(model_dir))})
    return None


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def answer_keys(spec: AnswerSpec, questions: Sequence[str], contexts: Sequence[Sequence[Mapping[str, Any]]],
                device: str) -> list[str]:
    """One key per question for its greedy answer (see the module docstring)."""
    shared = {"spec": spec.to_dict(), "device": device}
    return [f"a:{_digest({**shared, 'question': q, 'contexts': view})}"
            for q, view in zip(questions, context_view(contexts), strict=True)]


def loss_keys(spec: AnswerSpec, questions: Sequence[str], references: Sequence[str],
              contexts: Sequence[Sequence[Mapping[str, Any]]], device: str) -> list[str]:
    """One key per question for its reference answer's token losses."""
    shared = {"spec": spec.to_dict(), "device": device}
    return [f"l:{_digest({**shared, 'question': q, 'reference': r, 'contexts': view})}"
            for q, r, view in zip(questions, references, context_view(contexts), strict=True)]


class LazyModel:
    """Loads a causal LM (and its tokenizer) on first use, the way evaluation loads it; never when all items hit."""

    def __init__(self, name_or_path: str, revision: str | None = None) -> None:
        self.name_or_path, self.revision = name_or_path, revision
        self._loaded: tuple[Any, Any] | None = None

    def __call__(self) -> tuple[Any, Any]:
        """``(model, tokenizer)``, loaded on the GPU when there is one, else on the CPU."""
        if self._loaded is None:
            from evertune.models.bootstrap import load_causal_lm

            self._loaded = load_causal_lm(self.name_or_path, self.revision,
                                          device=None if _device() == "cuda" else "cpu")
        return self._loaded

    @property
    def loaded(self) -> bool:
        """Whether the model was needed."""
        return self._loaded is not None

    def release(self) -> None:
        """Drop the model (its memory goes back before the next one loads)."""
        self._loaded = None


class AnswerMemo:
    """The remembered items of one model, read from MLflow once; new items are logged by :meth:`save`.

    A memo without a model key (or with ``enabled=False``) remembers nothing: every item is computed.
    """

    def __init__(self, client: MlflowClient | None, experiment_id: str | None, key: str | None) -> None:
        self.client, self.experiment_id, self.key = client, experiment_id, key
        self.items: dict[str, Any] = {}
        self.new: dict[str, Any] = {}
        self.hits = {"answers": 0, "losses": 0}  # items served from the memo, per kind
        if client is not None and key is not None:
            self.items = _read(client, experiment_id, key)

    @classmethod
    def open(cls, params: Params, settings: Settings, key: str | None) -> AnswerMemo:
        """The memo of model ``key`` in the tuning experiment (``register.experiment_name``)."""
        if key is None or not params.evaluate.answer_memo:
            return cls(None, None, None)
        from evertune.tuning.tracking import ensure_experiment, mlflow_client

        client = mlflow_client(settings)
        return cls(client, ensure_experiment(client, params.registry.experiment_name, settings.mlflow_artifact_root),
                   key)

    def _fill(self, kind: str, keys: Sequence[str], compute: Callable[[list[int]], list[Any]]) -> list[Any]:
        """The value of every key: remembered ones as they are, the others from ``compute(missing indices)``."""
        missing = [i for i, key in enumerate(keys) if key not in self.items]
        self.hits[kind] += len(keys) - len(missing)
        if missing:
            for i, value in zip(missing, compute(missing), strict=True):
                self.items[keys[i]] = self.new[keys[i]] = value
        return [self.items[key] for key in keys]

    def generations(self, spec: AnswerSpec, questions: Sequence[str], contexts: Sequence[Sequence[Any]],
                    model: LazyModel) -> Generations:
        """The greedy answers to ``questions`` (generated only for the items not remembered)."""
        from evertune.tuning.answer import Generations, generate_for_questions

        def compute(rows: list[int]) -> list[dict[str, Any]]:
            done = generate_for_questions(*model(), [questions[i] for i in rows], spec, [contexts[i] for i in rows])
            return [{"answer": a, "ended": e} for a, e in zip(done.answers, done.ended, strict=True)]

        values = self._fill("answers", answer_keys(spec, questions, contexts, _device()), compute)
        return Generations([v["answer"] for v in values], [bool(v["ended"]) for v in values])

    def losses(self, spec: AnswerSpec, questions: Sequence[str], references: Sequence[str],
               contexts: Sequence[Sequence[Any]], model: LazyModel) -> list[list[float]]:
        """The token NLLs of each reference answer (computed only for the items not remembered)."""
        from evertune.tuning.answer_scoring import answer_token_losses

        def compute(rows: list[int]) -> list[list[float]]:
            return answer_token_losses(*model(), [questions[i] for i in rows], [references[i] for i in rows], None,
                                       spec, contexts=[contexts[i] for i in rows])

        return self._fill("losses", loss_keys(spec, questions, references, contexts, _device()), compute)

    def save(self, label: str) -> str | None:
        """Log the items computed since opening as one finished memo run; its run id (``None`` if nothing new)."""
        if self.client is None or not self.new:
            return None
        from evertune.tuning.tracking import end_run, set_tags

        run = self.client.create_run(self.experiment_id, run_name=f"answer memo {label} {self.key[:12]}",
                                     tags={MODEL_TAG: self.key})
        run_id = run.info.run_id
        try:
            set_tags(self.client, run_id, {"evertune_kind": "answer_memo", "answer_memo_label": label,
                                           "answer_memo_items": len(self.new)})
            self.client.log_dict(run_id, {"model": self.key, "items": self.new}, ARTIFACT)
        except Exception:
            end_run(self.client, run_id, "FAILED")
            raise
        end_run(self.client, run_id, "FINISHED")  # only now can a reader find it
        log.info("answer memo of %s: %s remembered, %d new items (run %s)", label, self.hits, len(self.new), run_id)
        self.new = {}
        return run_id


def _read(client: MlflowClient, experiment_id: str | None, key: str) -> dict[str, Any]:
    """Every item the finished memo runs of model ``key`` hold (newer runs win a key both hold)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    runs = client.search_runs([experiment_id], filter_string=f"tags.{MODEL_TAG} = '{key}' and "
                              "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                              max_results=MAX_RUNS)  # fmt: skip
    items: dict[str, Any] = {}
    for run in reversed(runs):
        try:
            stored = mlflow.artifacts.load_dict(f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT}")
        except (MlflowException, OSError, ValueError) as exc:  # a lost memo is only lost hits: answer again
            log.warning("answer memo run %s unreadable (%s); its items are computed again", run.info.run_id, exc)
            continue
        if stored.get("model") == key:
            items.update(stored.get("items") or {})
    return items


__all__ = ["ARTIFACT", "MODEL_TAG", "AnswerMemo", "LazyModel", "answer_keys", "context_view", "loss_keys",
           "model_key"]
