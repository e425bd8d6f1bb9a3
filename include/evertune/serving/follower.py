"""Registry following: which champion and which published knowledge base the answer service serves now.

A :class:`RegistryFollower` polls MLflow for the version behind the ``champion`` alias of
``register.model_name`` and LanceDB for the version behind the publish tag (``index.publish_tag``, i.e.
``production``), once at start and then every ``serve.refresh_seconds``, in a background thread. When the
champion moved, the new version is loaded completely (``mlflow.pyfunc.load_model``) while the old one keeps
answering; then one reference is swapped. A request takes the current :class:`Served` once, at its start, and
uses it to the end, so a request in flight during a switch finishes on the version it started with and no
request fails because of a switch. A publish only changes the KB version number (no model load).

The same poll resolves the prompt ``production`` alias (:func:`evertune.tuning.prompt_registry.production_template`,
one registry read with ``cache_ttl_seconds=0``, never per request). Promotion and rollback move it together with
``champion``, so it normally names the prompt version the model was evaluated with and frozen into its answer spec;
when it names another version, that version's template is put into the served model's spec (under the model's
lock, between requests): the registry is the one source of the template. With no ``production`` alias (versions
registered before the prompt registry) the model's own spec is served.

Staleness bound: a request that starts more than ``serve.refresh_seconds`` plus the new model's load time
after the alias moved (or the tag was published) is answered by the new version; a moved prompt alias alone is
served within ``serve.refresh_seconds`` (no model load). A failed poll or load
(registry unreachable, broken artifact) is logged and retried on the next poll, the old version still
serving. A champion alias that is removed stops the service answering (HTTP 409) until one is set again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from evertune.errors import NotReady

if TYPE_CHECKING:
    from evertune.config import Params
    from evertune.settings import Settings

log = logging.getLogger(__name__)

#: MLflow error codes that mean "no such model / alias" (as opposed to an unreachable registry).
_MISSING = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}


@dataclass(frozen=True)
class Served:
    """One champion version with the KB version it answers from, as a request sees it.

    Attributes:
        model_name: Registered model name.
        model_version: The version ``champion`` pointed at when it was loaded.
        model: The loaded ``mlflow.pyfunc`` model.
        prompt_version: The prompt version that renders the answers: ``prompts:/<name>/<version>`` (the
            ``production`` alias), else what the model was registered with (its prompt URI or template name).
        retrieval: ``kb`` (answers from the published KB) or ``none`` (the model's ``pyfunc_retrieval``).
        kb_table: The chunk table searched.
        kb_version: The table version the publish tag points at, ``None`` while nothing is published.
        load_seconds: How long loading the model took.
        lock: Serializes generation on this model (the tokenizer's padding side is set per batch).
    """

    model_name: str
    model_version: int
    model: Any
    prompt_version: str
    retrieval: str
    kb_table: str
    kb_version: int | None
    load_seconds: float
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def versions(self) -> dict[str, Any]:
        """The versions an answer reports."""
        return {"model_name": self.model_name, "model_version": self.model_version, "kb_table": self.kb_table,
                "kb_version": self.kb_version, "prompt_version": self.prompt_version}


def load_version(model_name: str, version: int, settings: Settings) -> Any:
    """Load one registered version as an ``mlflow.pyfunc`` model (the whole checkpoint, before any swap)."""
    import mlflow.pyfunc

    from evertune.tuning.tracking import use_tracking_uri

    use_tracking_uri(settings)
    return mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")


def published_kb(params: Params, settings: Settings) -> tuple[str, int | None]:
    """The chunk table name and the version its publish tag points at (``None``: no table or no tag)."""
    from evertune.kb.table import connect, open_table, published_version, table_name_for

    name = table_name_for(params)
    table = open_table(connect(settings), name)
    return name, None if table is None else published_version(table, params.index.publish_tag)


class RegistryFollower:
    """Keeps the served champion and KB version in step with the registry (see the module docstring).

    Args:
        params: Pipeline params (``register.model_name``, ``index``, ``serve.refresh_seconds``).
        settings: Deployment settings (MLflow and LanceDB locations).
        loader: ``(model_name, version, settings) -> pyfunc model``; default :func:`load_version`.
        kb_resolver: ``(params, settings) -> (table, version | None)``; default :func:`published_kb`.
        prompt_resolver: ``(settings, params) -> (PromptRef, template) | None``; default
            :func:`evertune.tuning.prompt_registry.production_template`.
    """

    def __init__(
        self,
        params: Params,
        settings: Settings,
        *,
        loader: Callable[[str, int, Settings], Any] = load_version,
        kb_resolver: Callable[[Params, Settings], tuple[str, int | None]] = published_kb,
        prompt_resolver: Callable[[Settings, Params], Any] | None = None,
    ) -> None:
        from evertune.tuning.prompt_registry import production_template

        self.params = params
        self.settings = settings
        self.model_name = params.registry.model_name
        self.refresh_seconds = params.serve.refresh_seconds
        self._loader = loader
        self._kb_resolver = kb_resolver
        self._prompt_resolver = prompt_resolver or production_template
        self._served: Served | None = None
        self._reason = "the service is starting: the registry has not been read yet"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self.last_poll: float | None = None

    def peek(self) -> Served | None:
        """The served version, or ``None``."""
        return self._served

    def current(self) -> Served:
        """The served version (one read of one reference).

        Raises:
            NotReady: No champion is loaded yet; the message says why.
        """
        served = self._served
        if served is None:
            raise NotReady(self._reason)
        return served

    def _champion(self) -> int | None:
        """The champion's version; ``None`` when there is no such model or alias.

        Raises:
            MlflowException: The registry could not be read (the poll is retried later).
        """
        from mlflow.exceptions import MlflowException

        from evertune.tuning.registry import CHAMPION

        if self._client is None:
            from evertune.tuning.tracking import mlflow_client

            self._client = mlflow_client(self.settings)
        try:
            return int(self._client.get_model_version_by_alias(self.model_name, CHAMPION).version)
        except MlflowException as exc:
            if exc.error_code in _MISSING:
                return None
            raise

    def refresh(self) -> bool:
        """Poll the registry and the KB once; load and swap in a new champion if it moved.

        Returns:
            Whether what is served changed.
        """
        version = self._champion()
        kb_table, kb_version = self._kb_resolver(self.params, self.settings)
        prompt = self._prompt_resolver(self.settings, self.params)
        self.last_poll = time.time()
        current = self._served
        if version is None:
            self._reason = f"no champion registered yet for model {self.model_name!r}"
            self._served = None
            return current is not None
        if current is not None and current.model_version == version:
            with current.lock:  # between requests: a request keeps the prompt it started with
                prompt_version = _apply_prompt(current.model, prompt)
            if (current.kb_table, current.kb_version, current.prompt_version) == (kb_table, kb_version, prompt_version):
                return False
            self._served = replace(current, kb_table=kb_table, kb_version=kb_version, prompt_version=prompt_version,
                                   lock=current.lock)
            log.info("serving KB %s version %s, prompt %s", kb_table, kb_version, prompt_version)
            return True
        started = time.perf_counter()
        model = self._loader(self.model_name, version, self.settings)  # fully loaded before the swap
        prompt_version = _apply_prompt(model, prompt)
        self._served = Served(self.model_name, version, model, prompt_version, _retrieval(model),
                              kb_table, kb_version, round(time.perf_counter() - started, 3))
        log.info("serving %s version %s (loaded in %.1f s), KB %s version %s, prompt %s", self.model_name, version,
                 self._served.load_seconds, kb_table, kb_version, prompt_version)
        return True

    def poll_once(self) -> None:
        """:meth:`refresh`, logging (not raising) a failure: the old version keeps serving."""
        try:
            self.refresh()
        except Exception as exc:  # noqa: BLE001 -- any failure of one poll is logged and retried on the next
            log.exception("registry poll failed (retrying in %.0f s)", self.refresh_seconds)
            if self._served is None:
                self._reason = f"the model registry could not be read yet ({type(exc).__name__})"

    def start(self) -> None:
        """Poll now and then every ``serve.refresh_seconds`` in a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="registry-follower", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.refresh_seconds)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling (a load in progress finishes in the daemon thread or dies with the process)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def info(self) -> dict[str, Any]:
        """What is served, for ``GET /info``."""
        served = self._served
        return {"ready": served is not None, "reason": None if served else self._reason,
                "refresh_seconds": self.refresh_seconds, "last_poll": self.last_poll,
                **(served.versions() if served else {"model_name": self.model_name})}


def _prompt_version(model: Any) -> str:
    """What the model was registered with: its prompt URI, else its template name (older versions)."""
    metadata = getattr(getattr(model, "metadata", None), "metadata", None) or {}
    return str(metadata.get("prompt_uri") or metadata.get("prompt_template") or "unknown")


def _apply_prompt(model: Any, prompt: Any) -> str:
    """Make the model render with the ``production`` prompt ``(ref, template)``; returns the prompt version served.

    A model without an evertune answer spec keeps what it was registered with; with no ``production`` alias the
    spec is left as it is (the version it renders is reported).
    """
    try:
        spec = getattr(model.unwrap_python_model(), "spec", None)
    except Exception:  # noqa: BLE001 -- not a PythonModel: nothing to render with
        spec = None
    if spec is None or not hasattr(spec, "prompt_version"):
        return _prompt_version(model)
    if prompt is None:
        return f"prompts:/{spec.prompt_name}/{spec.prompt_version}" if spec.prompt_version else _prompt_version(model)
    ref, template = prompt
    if (spec.prompt_name, spec.prompt_version, spec.template_text) != (ref.name, ref.version, template):
        from evertune.tuning.prompt_registry import spec_with_prompt

        model.unwrap_python_model().spec = spec_with_prompt(spec, ref, template)
        log.info("the served model renders with prompt %s (the production alias)", ref.uri)
    return ref.uri


def _retrieval(model: Any) -> str:
    config = getattr(model, "model_config", None) or {}
    return "kb" if config.get("retrieval", "none") == "kb" else "none"


__all__ = ["RegistryFollower", "Served", "load_version", "published_kb"]
