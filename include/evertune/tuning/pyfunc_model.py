"""The registered model: an ``mlflow.pyfunc`` RAG answerer around a merged checkpoint.

Registered models are ``mlflow.pyfunc`` models whose artifacts are the MERGED checkpoint (base + LoRA;
logging a PEFT adapter against a local base loads random base weights) plus the frozen
:class:`~evertune.tuning.answer.AnswerSpec` (prompt template text, system prompt, budgets). ``predict``:

* input: a list of questions, a string, a numpy array of strings (how MLflow's scoring server hands over
  ``{"inputs": ...}``), or a DataFrame with a ``question`` column and optionally a ``contexts``
  column (per row a list of chunk dicts ``{title, text, doc_id}`` or strings);
* context: the row's ``contexts`` when given; otherwise, when retrieval is ``kb`` (the model's
  ``register.pyfunc_retrieval`` default, or the ``retrieval`` predict param), the published LanceDB index of
  the loading process's settings (``EVERTUNE_*``) is searched; with ``none`` the prompt has no context;
* output: one greedy answer string per question (``max_new_tokens`` predict param overrides the default).

The model is logged as an instance of the class :func:`rag_model_class` builds (no ``code_paths``): MLflow
cloudpickles it, the class by value and the module-level functions it calls (:func:`parse_model_input`) by
reference, as ``evertune.tuning.pyfunc_model.<name>``. Loading therefore needs the ``evertune`` package
importable (the model class's helpers and the prompt code live there); the weights and template travel with
the model, so loading works offline.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.errors import ConfigError
from evertune.tuning.tracking import configure_mlflow

if TYPE_CHECKING:
    from evertune.config import Params
    from evertune.settings import Settings
    from evertune.tuning.answer import AnswerSpec

MODEL_ARTIFACT_NAME = "model"


def pip_requirements() -> list[str]:
    """Pinned requirements of the logged model, passed explicitly (MLflow's inferred transformers defaults
    add torchvision, which this stack does not have)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for dist in (
        "evertune",
        "mlflow",
        "torch",
        "transformers",
        "tokenizers",
        "safetensors",
        "jinja2",
        "pandas",
        "numpy",
        "pydantic",
        "pyyaml",
    ):
        try:
            pins.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return pins


@lru_cache(maxsize=1)
def rag_model_class() -> type:
    """The ``mlflow.pyfunc.PythonModel`` subclass behind every registered version (built lazily: mlflow is a
    heavy import)."""
    import mlflow.pyfunc

    class RagAnswerModel(mlflow.pyfunc.PythonModel):
        """Answers questions with the merged checkpoint, the frozen prompt spec and (optionally) the KB."""

        def load_context(self, context):
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from evertune.tuning.answer import AnswerSpec

            model_dir = context.artifacts["model"]
            spec = json.loads(Path(context.artifacts["answer_spec"]).read_text(encoding="utf-8"))
            self.spec = AnswerSpec.from_dict(spec)
            self.retrieval = (context.model_config or {}).get("retrieval", "none")
            device = "cuda" if torch.cuda.is_available() else "cpu"
            dtype = torch.float32 if device == "cpu" else "auto"
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()

        def predict(self, context, model_input, params=None):
            from dataclasses import replace

            from evertune.tuning.answer import answer_questions, kb_retriever, no_retrieval

            questions, contexts = parse_model_input(model_input)
            params = params or {}
            spec = self.spec
            if params.get("max_new_tokens"):
                spec = replace(spec, max_new_tokens=int(params["max_new_tokens"]))
            mode = params.get("retrieval") or self.retrieval
            if mode not in {"kb", "none"}:
                raise ValueError(f"retrieval must be 'kb' or 'none', got {mode!r}")
            if contexts is None:
                if mode == "kb":
                    from evertune.config import load_params

                    retrieve = kb_retriever(load_params())
                else:
                    retrieve = no_retrieval
                contexts = [list(retrieve(q)) for q in questions]
            return answer_questions(self.model, self.tokenizer, questions, None, spec, contexts=contexts)

    return RagAnswerModel


def parse_model_input(model_input: Any) -> tuple[list[str], list[list[dict[str, Any]]] | None]:
    """Normalise pyfunc input into questions and optional per-question chunks.

    Accepts every form MLflow's scoring protocol produces: a string; a list/tuple of strings; a numpy array of
    strings (``{"inputs": [...]}`` and ``{"inputs": "..."}`` arrive as 1-d and 0-d arrays); a mapping of
    columns (``{"inputs": {"question": [...]}}``, values may be arrays or scalars); a DataFrame
    (``dataframe_records`` / ``dataframe_split``) with a ``question`` column, or a single column, and
    optionally ``contexts``.

    Raises:
        ValueError: With a one-line reason: no questions, a question that is not a string, a DataFrame without a
            ``question`` column (and more than one column), a nested array, or another input type.
    """
    import numpy as np
    import pandas as pd

    if isinstance(model_input, np.ndarray):
        if model_input.ndim > 1:
            raise ValueError(f"questions must be a flat list of strings, got a {model_input.ndim}-d array")
        model_input = model_input.tolist() if model_input.ndim else model_input.item()
    if isinstance(model_input, str):
        return _questions([model_input]), None
    if isinstance(model_input, Mapping):
        model_input = _frame_from_columns(model_input)
    if isinstance(model_input, pd.DataFrame):
        if "question" in model_input.columns:
            questions = model_input["question"].tolist()
        elif model_input.shape[1] == 1:
            questions = model_input.iloc[:, 0].tolist()
        else:
            raise ValueError("model input needs a 'question' column")
        contexts = None
        if "contexts" in model_input.columns:
            contexts = [as_chunks(value) for value in model_input["contexts"].tolist()]
        return _questions(questions), contexts
    if isinstance(model_input, list | tuple):
        return _questions(list(model_input)), None
    raise ValueError(f"unsupported model input type {type(model_input).__name__}")


def _frame_from_columns(columns: Mapping[str, Any]) -> Any:
    """A DataFrame from a mapping of columns whose values are lists, arrays (rows of a 2-d array become lists)
    or scalars (one row)."""
    import numpy as np
    import pandas as pd

    data = {str(key): value.tolist() if isinstance(value, np.ndarray) else value for key, value in columns.items()}
    if data and not any(isinstance(value, list | tuple) for value in data.values()):
        data = {key: [value] for key, value in data.items()}
    try:
        return pd.DataFrame(data)
    except ValueError as exc:  # columns of different lengths
        raise ValueError(f"model input columns do not line up: {exc}") from None


def _questions(values: list[Any]) -> list[str]:
    if not values:
        raise ValueError("model input holds no questions")
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise ValueError(f"question {index} is a {type(value).__name__}, not a string")
    return [str(value) for value in values]


def as_chunks(value: Any) -> list[dict[str, Any]]:
    """One row's ``contexts`` as chunk dicts: ``None``/NaN is no context, a JSON list string is parsed, a plain
    string or any non-mapping item becomes ``{"title": "", "text": str(item)}``."""
    if value is None or (isinstance(value, float) and value != value):
        return []
    if isinstance(value, str):
        value = json.loads(value) if value.strip().startswith("[") else [value]
    return [item if isinstance(item, Mapping) else {"title": "", "text": str(item)} for item in list(value)]


def log_answer_model(
    merged_dir: str | Path,
    params: Params,
    *,
    run_id: str | None = None,
    settings: Settings | None = None,
    retrieval: str | None = None,
    spec: AnswerSpec | None = None,
) -> Any:
    """Log the merged checkpoint as an ``mlflow.pyfunc`` model (into ``run_id`` when given).

    The model carries the answer spec whose template is the registered prompt version's text
    (:func:`evertune.tuning.prompt_registry.registered_spec`) and is linked to that prompt version
    (``log_model(prompts=[...])``); its metadata names the template file and the prompt URI.

    Args:
        merged_dir: The merged HF checkpoint (``TrainResult.merged_dir``).
        params: Pipeline params (the answer spec and ``register.pyfunc_retrieval``).
        run_id: The training run to attach the model to.
        settings: Deployment settings.
        retrieval: ``kb`` or ``none``; default ``register.pyfunc_retrieval``.
        spec: The answer spec to freeze into the model; default :func:`~evertune.tuning.prompt_registry.registered_spec`.

    Returns:
        MLflow's ``ModelInfo`` (``model_uri`` is ``models:/m-...``).
    """
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    configure_mlflow(params, settings)
    merged_dir = Path(merged_dir)
    if not (merged_dir / "config.json").is_file():
        raise ConfigError(f"{merged_dir} is not a model checkpoint (no config.json)")
    if spec is None:
        from evertune.tuning.prompt_registry import registered_spec

        spec = registered_spec(params, settings)
    prompt_uri = f"prompts:/{spec.prompt_name}/{spec.prompt_version}" if spec.prompt_version is not None else None
    mode = retrieval or params.registry.pyfunc_retrieval
    # No input schema on purpose: predict accepts a list, a string or a DataFrame (question [+ contexts]) and
    # validates that itself; the params schema is what lets callers pass generation settings at predict time.
    signature = ModelSignature(
        inputs=None,
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema(
            [ParamSpec("max_new_tokens", "long", spec.max_new_tokens), ParamSpec("retrieval", "string", mode)]
        ),
    )
    with tempfile.TemporaryDirectory(prefix="evertune-spec-") as scratch:
        spec_path = Path(scratch) / "answer_spec.json"
        spec_path.write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True), encoding="utf-8")
        kwargs = {
            "name": MODEL_ARTIFACT_NAME,
            "python_model": rag_model_class()(),
            "artifacts": {"model": str(merged_dir), "answer_spec": str(spec_path)},
            "pip_requirements": pip_requirements(),
            "signature": signature,
            "model_config": {"retrieval": mode},
            "metadata": {"prompt_template": spec.template_name, "prompt_uri": prompt_uri or ""},
        }
        if prompt_uri is not None:
            kwargs["prompts"] = [prompt_uri]  # links the prompt version to the run and the logged model
        active = mlflow.active_run()
        if run_id is None or (active is not None and active.info.run_id == run_id):
            return mlflow.pyfunc.log_model(**kwargs)
        with mlflow.start_run(run_id=run_id, nested=active is not None):
            return mlflow.pyfunc.log_model(**kwargs)


__all__ = ["MODEL_ARTIFACT_NAME", "as_chunks", "log_answer_model", "parse_model_input", "pip_requirements",
           "rag_model_class"]
