"""Versioned prompt templates: one immutable ``<name>.jinja`` file per version (``rag-v1``, ...).

A template renders the *user* turn from ``question`` and ``contexts``; the tokenizer's chat template adds the
system turn and the role markers. The registered model stores the template text it was evaluated with, so a
later edit here can never change what a registered version answers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from evertune.errors import ConfigError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def available_templates() -> list[str]:
    """Names of the templates shipped with the package, sorted."""
    folder = resources.files(__name__)
    return sorted(entry.name.removesuffix(".jinja") for entry in folder.iterdir() if entry.name.endswith(".jinja"))


def load_template(name: str) -> str:
    """Return the source text of template ``name``.

    Args:
        name: A template version such as ``rag-v1`` (``evaluate.prompt_template``).

    Returns:
        The Jinja source.

    Raises:
        ConfigError: No template has that name.
    """
    if not _NAME.match(name):
        raise ConfigError(f"evaluate.prompt_template: {name!r} is not a valid template name")
    entry = resources.files(__name__) / f"{name}.jinja"
    if not entry.is_file():
        raise ConfigError(
            f"evaluate.prompt_template: unknown template {name!r}; available: {', '.join(available_templates())}"
        )
    return entry.read_text(encoding="utf-8")


def render_template(source: str, *, question: str, contexts: Sequence[Mapping[str, Any]]) -> str:
    """Render a template's user turn in a sandbox (templates are data, not code).

    Args:
        source: Jinja source, e.g. from :func:`load_template`.
        question: The user's question.
        contexts: Retrieved chunks, best first, each with ``title`` and ``text`` (a chunk's ``body``, when
            present, is shown instead of ``text``: KB chunks repeat the title inside ``text``).

    Returns:
        The user message text.
    """
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=False)
    chunks = [
        {
            "title": str(c.get("title") or ""),
            "text": str(c.get("body") or c.get("text") or ""),
            "doc_id": c.get("doc_id"),
        }
        for c in contexts
    ]
    return env.from_string(source).render(question=question, contexts=chunks).strip()


__all__ = ["available_templates", "load_template", "render_template"]
