"""The answer template in the MLflow prompt registry: one source of truth for evaluation, training rows and serving.

The template file ``prompts/<evaluate.prompt_template>.jinja`` is only what gets *registered*: every code path
that renders a prompt for the pipeline (evaluation, the training-row contexts, the logged pyfunc model, the
answer service) uses the template text of a registered prompt version (:func:`registered_spec`).

* One prompt per registered model, named ``<register.model_name>-answer`` (:func:`prompt_name`; MLflow keeps
  prompts and registered models in one namespace, so the suffix is needed).
* :func:`ensure_registered` is idempotent on content: an existing version whose template equals the file is
  reused; new content makes a new version (tagged ``template_file`` with the file's name). The prompt version is
  part of the candidate key (:func:`evertune.tuning.registry.candidate_key`), so a changed template is a new
  candidate that is trained, evaluated and gated like a new model.
* The ``production`` alias points at the champion's prompt version; :func:`evertune.tuning.promotion.promote`
  and ``rollback`` move it together with ``champion`` (:func:`set_production`).

The store is always the configured MLflow (``settings.mlflow_tracking_uri``, a SQLite file locally), so a
registered version always exists; there is no file fallback.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from evertune.errors import ConfigError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from evertune.config import Params
    from evertune.settings import Settings
    from evertune.tuning.answer import AnswerSpec

log = logging.getLogger(__name__)

#: The alias of the champion's prompt version.
PRODUCTION = "production"
_SUFFIX = "-answer"


@dataclass(frozen=True)
class PromptRef:
    """One registered prompt version.

    Attributes:
        name: The prompt name (:func:`prompt_name`).
        version: Its version number.
        uri: ``prompts:/<name>/<version>``.
    """

    name: str
    version: int
    uri: str

    @classmethod
    def of(cls, name: str, version: int | str) -> PromptRef:
        """The reference of ``name`` version ``version``."""
        return cls(str(name), int(version), f"prompts:/{name}/{int(version)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (XCom, the manifest)."""
        return asdict(self)


def prompt_name(params: Params) -> str:
    """The registry name of the answer prompt: ``<register.model_name>-answer``."""
    return f"{params.registry.model_name}{_SUFFIX}"


def _client(settings: Settings | None) -> MlflowClient:
    from evertune.tuning.tracking import mlflow_client, use_tracking_uri

    use_tracking_uri(settings)
    return mlflow_client(settings)


def _versions(client: MlflowClient, name: str) -> list[Any]:
    """Every version of prompt ``name`` (empty when the prompt does not exist)."""
    from mlflow.exceptions import MlflowException

    found: list[Any] = []
    token = None
    try:
        while True:
            page = client.search_prompt_versions(name, max_results=100, page_token=token)
            found.extend(page)
            token = getattr(page, "token", None)
            if not token:
                return found
    except MlflowException:
        return found


def ensure_registered(params: Params, settings: Settings | None = None) -> PromptRef:
    """Register the template file of ``evaluate.prompt_template`` unless a version with its content exists.

    Returns:
        The :class:`PromptRef` of the (lowest) version whose template equals the file, newly registered if none.

    Raises:
        ConfigError: ``evaluate.prompt_template`` names no shipped template.
    """
    from evertune.tuning.prompts import load_template

    source = load_template(params.evaluate.prompt_template)
    name = prompt_name(params)
    client = _client(settings)
    same = [v for v in _versions(client, name) if v.template == source]
    if same:
        return PromptRef.of(name, min(int(v.version) for v in same))
    created = client.register_prompt(
        name, source, commit_message=f"template file {params.evaluate.prompt_template}.jinja",
        tags={"template_file": params.evaluate.prompt_template},
    )
    log.info("registered prompt %s version %s (template %s)", name, created.version, params.evaluate.prompt_template)
    return PromptRef.of(name, created.version)


def prompt_template(ref: PromptRef, settings: Settings | None = None) -> str:
    """The template text of a registered prompt version.

    Raises:
        ConfigError: No such prompt version.
    """
    loaded = _client(settings).load_prompt(ref.uri, allow_missing=True, cache_ttl_seconds=0)
    if loaded is None:
        raise ConfigError(f"prompt {ref.uri} is not registered")
    return str(loaded.template)


def spec_with_prompt(spec: AnswerSpec, ref: PromptRef, template: str) -> AnswerSpec:
    """``spec`` rendering the template of prompt version ``ref``."""
    return replace(spec, template_text=template, prompt_name=ref.name, prompt_version=ref.version)


def registered_spec(params: Params, settings: Settings | None = None) -> AnswerSpec:
    """The answer spec of ``params`` whose template is the registered prompt version's (registered if needed)."""
    from evertune.tuning.answer import answer_spec

    ref = ensure_registered(params, settings)
    return spec_with_prompt(answer_spec(params), ref, prompt_template(ref, settings))


def _production_version(settings: Settings | None, params: Params | None) -> Any:
    """The prompt version behind ``production`` (one registry read, ``cache_ttl_seconds=0``), ``None`` if unset."""
    if params is None:
        from evertune.config import load_params

        params = load_params()
    from mlflow.exceptions import MlflowException

    try:
        return _client(settings).load_prompt(f"prompts:/{prompt_name(params)}@{PRODUCTION}", allow_missing=True,
                                             cache_ttl_seconds=0)
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}:
            return None
        raise


def production_prompt(settings: Settings | None = None, params: Params | None = None) -> PromptRef | None:
    """The prompt version the ``production`` alias points at, ``None`` when it is not set (or no prompt exists).

    Loads with ``cache_ttl_seconds=0``: a moved alias is seen at once (MLflow caches alias loads otherwise).

    Raises:
        MlflowException: The registry could not be read.
    """
    loaded = _production_version(settings, params)
    return None if loaded is None else PromptRef.of(loaded.name, loaded.version)


def production_template(settings: Settings | None = None, params: Params | None = None
                        ) -> tuple[PromptRef, str] | None:
    """``(ref, template text)`` of the ``production`` prompt in one registry read, ``None`` when it is not set."""
    loaded = _production_version(settings, params)
    return None if loaded is None else (PromptRef.of(loaded.name, loaded.version), str(loaded.template))


def set_production(ref: PromptRef, settings: Settings | None = None) -> None:
    """Point the ``production`` alias of ``ref.name`` at ``ref.version``."""
    _client(settings).set_prompt_alias(ref.name, PRODUCTION, int(ref.version))
    log.info("prompt %s@%s -> version %s", ref.name, PRODUCTION, ref.version)


def ref_from_tags(tags: dict[str, str]) -> PromptRef | None:
    """The prompt version a model version was evaluated with (tags ``prompt.name``/``prompt.version``)."""
    if tags.get("prompt.name") and tags.get("prompt.version"):
        return PromptRef.of(tags["prompt.name"], tags["prompt.version"])
    return None


def ref_from_dict(data: dict[str, Any] | None) -> PromptRef | None:
    """The inverse of :meth:`PromptRef.to_dict` (``None`` for ``None`` or an incomplete mapping)."""
    if not data or not data.get("name") or data.get("version") is None:
        return None
    return PromptRef.of(data["name"], data["version"])


__all__ = [
    "PRODUCTION",
    "PromptRef",
    "ensure_registered",
    "production_prompt",
    "production_template",
    "prompt_name",
    "prompt_template",
    "ref_from_dict",
    "ref_from_tags",
    "registered_spec",
    "set_production",
    "spec_with_prompt",
]
