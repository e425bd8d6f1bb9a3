"""The demo's last step: ask the served champion over HTTP, send feedback, and ask again (a cache hit).

Talks to the stack's answer service (``serve`` component, ``POST /ask`` and ``POST /feedback``; docs/serving.md)
with the standard library only, as any client would. :func:`ask_and_rate` returns the summary lines and the
problems it saw (an HTTP error, an answer without citations, a repeat that was not served from the cache).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from evertune_airflow.stack_env import serve_url

ASK_TIMEOUT_S = 300.0


def _post(url: str, body: dict[str, Any], timeout: float = ASK_TIMEOUT_S) -> tuple[int, dict[str, Any], float]:
    """POST JSON; ``(status, decoded body, seconds)``; an HTTP error's body is decoded too."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - the stack's own URL
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    elapsed = time.perf_counter() - started
    try:
        decoded = json.loads(raw or b"{}")
    except json.JSONDecodeError:
        decoded = {"error": raw[:200].decode(errors="replace")}
    return status, decoded if isinstance(decoded, dict) else {"body": decoded}, elapsed


def ask_when_ready(base: str, question: str, timeout: float = 180.0) -> tuple[int, dict[str, Any], float]:
    """``POST /ask`` until the service answers something other than 409 (nothing loaded yet) or no connection."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body, elapsed = _post(f"{base}/ask", {"question": question})
        except (urllib.error.URLError, OSError) as exc:
            status, body, elapsed = 0, {"error": str(exc)}, 0.0
        if status not in (0, 409) or time.monotonic() > deadline:
            return status, body, elapsed
        time.sleep(3)


def _citations(answer: dict[str, Any]) -> list[str]:
    return [f"{c.get('doc_id')} ({c.get('title')}) {c.get('url')}" for c in answer.get("citations") or []]


def ask_and_rate(question: str, base: str | None = None) -> tuple[list[str], list[str]]:
    """Ask ``question``, rate the answer up through ``/feedback``, ask again; ``(summary lines, problems)``."""
    base = (base or serve_url()).rstrip("/")
    lines = [f"== The served champion over HTTP ({base}) =="]
    status, first, first_s = ask_when_ready(base, question)
    if status != 200:
        return lines, [f"POST /ask -> {status}: {first.get('message') or first.get('error') or first}"]
    versions = first
    lines += [f"  POST /ask {question!r} -> {status} in {first_s * 1000:.0f} ms (cached: {first.get('cached')})",
              f"  answer: {first.get('answer')}",
              *[f"  cites: {c}" for c in _citations(first)],
              f"  versions: model v{versions.get('model_version')}, KB {versions.get('kb_table')} "
              f"v{versions.get('kb_version')}, prompt {versions.get('prompt_version')}; answer id {first.get('answer_id')}"]
    problems = [] if first.get("citations") else ["the served answer carries no citations"]
    status, feedback, _ = _post(f"{base}/feedback", {"answer_id": first.get("answer_id"), "rating": "up"}, 30)
    lines.append(f"  POST /feedback (rating up) -> {status}: {json.dumps(feedback)[:200]}")
    if status not in (200, 201, 202):
        problems.append(f"POST /feedback -> {status}")
    status, again, again_s = _post(f"{base}/ask", {"question": question})
    lines.append(f"  POST /ask again -> {status} in {again_s * 1000:.1f} ms (cached: {again.get('cached')}; "
                 f"same answer id: {again.get('answer_id') == first.get('answer_id')})")
    if status != 200 or again.get("cached") is not True:
        problems.append(f"the repeated question was not served from the answer cache ({status}, "
                        f"cached={again.get('cached')})")
    return lines, problems
