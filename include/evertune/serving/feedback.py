"""``POST /feedback`` and the answer log it reads: what users think of an answer, landed for preference tuning.

:func:`register_feedback` (called once by :func:`evertune.serving.app.build_app`) adds

* a middleware that appends every ``/ask`` answer (200) to the **answer log**, service state at
  ``$EVERTUNE_WORK_DIR/serving/answers.jsonl``: one line per new answer id with the question, answer,
  citations and versions (append-only; an index of answer id -> byte offset is kept in memory and caught up
  from the file on a miss, so several service processes may share the file);
* ``POST /feedback`` ``{"answer_id": "...", "rating": "up"|"down"|1|-1, "correction": "..."}`` (correction
  optional). It looks the answer up in the log (404 when unknown), recovers the chunks the prompt showed (the
  cited chunks of a search at the answer's pinned KB version; retrieval at one table version is
  deterministic), and appends one self-contained line to the landing zone (:func:`evertune.kb.feedback.append_feedback`):
  training needs nothing but the landing zone. Bad bodies get 400 with a one-line reason, like ``/ask``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.errors import BadRequest
from evertune.serving.answers import decode_json_body

if TYPE_CHECKING:
    from evertune.config import ServeParams
    from evertune.serving.answers import Search

log = logging.getLogger(__name__)

#: Fields of a ``/ask`` answer that are not versions.
_ANSWER_FIELDS = ("answer_id", "question", "answer", "citations")
_FEEDBACK_KEYS = {"answer_id", "rating", "correction"}
_RATINGS = {"up": "up", "down": "down", 1: "up", -1: "down"}


class AnswerLog:
    """Append-only JSON lines of served answers, one line per answer id, with an in-memory offset index.

    The index is read from the file lazily and caught up incrementally whenever an id is missing, so answers
    another service process appended to the same file are found too.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._offsets: dict[str, int] = {}
        self._scanned = 0  # bytes of the file indexed so far

    def _index(self) -> dict[str, int]:
        """The index, caught up with lines appended since the last scan (by this or another process)."""
        if not self.path.is_file():
            return self._offsets
        with self.path.open("rb") as handle:
            handle.seek(self._scanned)
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # a line being written right now: read it next time
                try:
                    self._offsets.setdefault(json.loads(line)["answer_id"], self._scanned)
                except (ValueError, KeyError, TypeError):
                    log.warning("answer log %s: unreadable line at byte %d skipped", self.path, self._scanned)
                self._scanned += len(line)
        return self._offsets

    def record(self, answer: Mapping[str, Any]) -> bool:
        """Append ``answer`` (a ``/ask`` response) unless its id is logged already; whether it was appended."""
        entry = {key: answer.get(key) for key in _ANSWER_FIELDS}
        entry["versions"] = {key: value for key, value in answer.items() if key not in _ANSWER_FIELDS}
        line = (json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            index = self._index()
            if entry["answer_id"] in index:
                return False
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as handle:
                handle.write(line)
            self._index()  # indexes the line just written (and any other process's before it)
        return True

    def get(self, answer_id: str) -> dict[str, Any] | None:
        """The logged answer, or ``None``."""
        with self._lock:
            offset = self._offsets.get(answer_id)
            if offset is None:
                offset = self._index().get(answer_id)
            if offset is None:
                return None
            with self.path.open("rb") as handle:
                handle.seek(offset)
                return json.loads(handle.readline())


def parse_feedback_body(body: bytes, limits: ServeParams) -> tuple[str, str, str | None]:
    """``(answer_id, rating "up"|"down", correction or None)`` of a ``POST /feedback`` body.

    Raises:
        BadRequest: Not a UTF-8 JSON object with exactly the accepted fields, a bad rating, or a correction that
            is not a string or is longer than ``serve.max_correction_chars``.
    """
    data = decode_json_body(body)
    if not isinstance(data, dict):
        raise BadRequest('request body must be a JSON object {"answer_id": ..., "rating": ...}')
    extra = sorted(set(data) - _FEEDBACK_KEYS)
    if extra:
        raise BadRequest(f"unknown field(s) {', '.join(map(repr, extra))}; accepted: answer_id, rating, correction")
    answer_id = data.get("answer_id")
    if not isinstance(answer_id, str) or not answer_id.strip():
        raise BadRequest('"answer_id" must be a non-empty string (the answer_id of an /ask answer)')
    rating = data.get("rating")
    if isinstance(rating, str):
        rating = rating.strip().lower()
    if isinstance(rating, bool) or rating not in _RATINGS:
        raise BadRequest(f'"rating" must be "up", "down", 1 or -1, got {json.dumps(data.get("rating"))[:40]}')
    correction = data.get("correction")
    if correction is not None:
        if not isinstance(correction, str):
            raise BadRequest('"correction" must be a string')
        correction = correction.strip() or None
        if correction and len(correction) > limits.max_correction_chars:
            raise BadRequest(f"correction has {len(correction)} characters; the limit is {limits.max_correction_chars}")
    return answer_id.strip(), _RATINGS[rating], correction


def shown_contexts(answer: Mapping[str, Any], search: Search) -> list[dict[str, Any]]:
    """The cited chunks of ``answer``, recovered by searching its question at its KB version (retrieval order)."""
    from evertune.kb.feedback import CONTEXT_FIELDS

    cited = {str(cid) for citation in answer.get("citations") or [] for cid in citation.get("chunk_ids") or []}
    kb_version = (answer.get("versions") or {}).get("kb_version")
    if not cited or kb_version is None:
        return []
    chunks = search(str(answer["question"]), int(kb_version))
    return [{key: chunk[key] for key in CONTEXT_FIELDS if chunk.get(key) is not None}
            for chunk in chunks if str(chunk.get("chunk_id")) in cited]


def feedback_line(answer: Mapping[str, Any], rating: str, correction: str | None,
                  contexts: list[dict[str, Any]], received_at: str) -> dict[str, Any]:
    """The self-contained ``feedback.jsonl`` line (``docs/data-format.md``)."""
    from evertune.kb.feedback import feedback_id

    return {"feedback_id": feedback_id(answer["answer_id"], rating, correction, received_at),
            "answer_id": answer["answer_id"], "rating": rating, "correction": correction,
            "received_at": received_at, "question": answer["question"], "answer": answer["answer"],
            "citations": answer.get("citations") or [], "contexts": contexts,
            "versions": answer.get("versions") or {}}


def submit_feedback(log_: AnswerLog, landing_uri: str, search: Search, answer_id: str, rating: str,
                    correction: str | None, now: dt.datetime | None = None) -> dict[str, Any] | None:
    """Land one feedback; ``None`` when the answer id is not in the log. Returns the receipt."""
    from evertune.kb.feedback import append_feedback

    answer = log_.get(answer_id)
    if answer is None:
        return None
    received_at = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat()
    line = feedback_line(answer, rating, correction, shown_contexts(answer, search), received_at)
    day = append_feedback(landing_uri, line)
    return {"feedback_id": line["feedback_id"], "answer_id": answer_id, "rating": rating,
            "received_at": received_at, "partition": day}


def register_feedback(app: Any, limits: ServeParams, search: Search, error: Callable[[int, str], Any],
                      settings: Any = None) -> AnswerLog:
    """Add the answer-log middleware and ``POST /feedback`` to ``app`` (see the module docstring).

    Args:
        app: The service's FastAPI app.
        limits: ``serve`` params.
        search: Retrieval at a KB version (to recover the shown chunks).
        error: ``(status, message) -> Response``: the app's one-line error response.
        settings: Deployment settings; default :func:`evertune.settings.get_settings`.

    Returns:
        The :class:`AnswerLog`.
    """
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response

    from evertune.settings import get_settings

    settings = settings or get_settings()
    answers = AnswerLog(Path(settings.work_dir) / "serving" / "answers.jsonl")

    async def feedback_route(request: Request) -> Response:
        try:
            answer_id, rating, correction = parse_feedback_body(await request.body(), limits)
        except BadRequest as exc:
            return error(400, str(exc))
        receipt = await asyncio.to_thread(submit_feedback, answers, settings.landing_uri, search, answer_id,
                                          rating, correction)
        if receipt is None:
            return error(404, f"unknown answer_id {answer_id[:40]!r}: no /ask answer of this service has it")
        return JSONResponse(receipt)

    @app.middleware("http")
    async def log_answers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        if request.url.path != "/ask" or request.method != "POST" or response.status_code != 200:
            return response
        raw = b"".join([chunk async for chunk in response.body_iterator])
        try:
            await asyncio.to_thread(answers.record, json.loads(raw))
        except Exception:  # noqa: BLE001 -- a log failure must not fail the answer
            log.exception("could not append the answer to %s", answers.path)
        return Response(raw, status_code=200, headers=dict(response.headers), media_type=response.media_type)

    app.add_route("/feedback", feedback_route, methods=["POST"])
    return answers


__all__ = ["AnswerLog", "feedback_line", "parse_feedback_body", "register_feedback", "shown_contexts",
           "submit_feedback"]
