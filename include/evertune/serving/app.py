"""The answer service's HTTP app: MLflow's scoring server around the followed champion, plus ``/ask``.

:func:`build_app` calls ``mlflow.pyfunc.scoring_server.init`` with a :class:`FollowingModel`, a stand-in that
forwards to whatever :class:`~evertune.serving.follower.RegistryFollower` serves at that moment, so
``/invocations``, ``/ping``, ``/health`` and ``/version`` are MLflow's own routes and protocol
(``inputs``, ``instances``, ``dataframe_records``, ``dataframe_split``, optional ``params``). Added:

* ``POST /ask`` ``{"question": "..."}``: answer, citations, versions, answer id, ``cached``
  (:func:`evertune.serving.answers.ask`);
* ``GET /info``: what is served (versions, or why nothing is), and the polling period;
* ``POST /feedback``: a rating (and correction) of an ``/ask`` answer (:mod:`evertune.serving.feedback`).

Errors are one line of JSON, ``{"error_code": ..., "message": ...}``: 400 for a bad request (reason in the
message), 409 while nothing can be served (no champion, no published KB), 500 with ``"error_id"`` for anything
else; the stack trace goes to the server log under that id, never to the client. ``/ping`` answers 200 as soon
as the process serves HTTP, champion or not.

With an :class:`~evertune.serving.cache.AnswerCache`, ``/ask`` first looks the question up in the cache's
in-memory memo on the event loop (no I/O), then in the table in a worker thread of the default pool (a hit is
answered there, without the model lock); a miss is retrieved and generated in a separate pool of
:data:`GENERATION_THREADS` threads, so hits never queue behind generations.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from evertune.errors import BadRequest, NothingToDo, NotReady
from evertune.serving.answers import answer_batch, ask, cached_answer, check_question, parse_ask_body
from evertune.serving.feedback import register_feedback

if TYPE_CHECKING:
    from evertune.config import ServeParams
    from evertune.serving.answers import Search
    from evertune.serving.cache import AnswerCache
    from evertune.serving.follower import RegistryFollower

log = logging.getLogger(__name__)

#: HTTP status -> MLflow error code name, for the errors this service writes itself.
ERROR_CODES = {400: "BAD_REQUEST", 404: "RESOURCE_DOES_NOT_EXIST", 409: "RESOURCE_CONFLICT", 415: "BAD_REQUEST",
               500: "INTERNAL_ERROR", 504: "DEADLINE_EXCEEDED"}
#: Longest message a client gets.
MESSAGE_CHARS = 300
#: Threads answering cache misses of ``/ask`` (generation itself is serialized per model by ``Served.lock``;
#: the second thread retrieves the next question meanwhile).
GENERATION_THREADS = 2


def one_line(text: str) -> str:
    """The first non-blank line of ``text``, cut to :data:`MESSAGE_CHARS`."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "error")
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 3] + "..."


def error_body(status: int, message: str, error_id: str | None = None) -> bytes:
    """The JSON error body of every error response."""
    body = {"error_code": ERROR_CODES.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR"),
            "message": one_line(message)}
    if error_id:
        body["error_id"] = error_id
    return json.dumps(body).encode()


def internal_error(where: str) -> str:
    """Log the exception being handled with a new error id (a random hex id: it names one event); return the id."""
    error_id = uuid.uuid4().hex[:12]
    log.exception("error %s in %s", error_id, where)
    return error_id


def _mlflow_error(status: int, message: str, error_id: str | None = None) -> Exception:
    """An ``MlflowException`` that MLflow's ``/invocations`` handler turns into exactly our error body.

    MLflow rewrites ``message`` with the request data before serializing; this subclass serializes the reason
    it was built with instead.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2

    class ServingError(MlflowException):
        def serialize_as_json(self) -> str:
            return error_body(status, message, error_id).decode()

    return ServingError(message, error_code=getattr(databricks_pb2, ERROR_CODES.get(status, "INTERNAL_ERROR")))


class FollowingModel:
    """What MLflow's scoring server sees as its model: forwards to the champion served right now.

    Args:
        follower: The registry follower.
        limits: ``serve`` params (question length, questions per request).
        search: Retrieval at a KB version.
        cache: The answer cache, or ``None``.
    """

    def __init__(self, follower: RegistryFollower, limits: ServeParams, search: Search,
                 cache: AnswerCache | None = None) -> None:
        self.follower = follower
        self.limits = limits
        self.search = search
        self.cache = cache

    @property
    def metadata(self) -> Any:
        """The served model's MLflow metadata (an empty ``Model`` while nothing is served)."""
        served = self.follower.peek()
        if served is not None:
            return served.model.metadata
        from mlflow.models import Model

        return Model()

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> list[str]:
        """Parse MLflow's decoded input, check it, answer (see :func:`evertune.serving.answers.answer_batch`).

        Raises:
            MlflowException: 400 (bad input), 409 (nothing to serve) or 500 (with an error id), one line each.
        """
        from evertune.tuning.pyfunc_model import parse_model_input

        try:
            served = self.follower.current()
            try:
                questions, contexts = parse_model_input(data)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            if len(questions) > self.limits.max_questions:
                raise BadRequest(f"{len(questions)} questions; the limit is {self.limits.max_questions} per request")
            questions = [check_question(q, self.limits, f"question {i}") for i, q in enumerate(questions)]
            return answer_batch(served, questions, contexts, self.search, params, self.cache).answers
        except BadRequest as exc:
            raise _mlflow_error(400, str(exc)) from None
        except (NotReady, NothingToDo) as exc:
            raise _mlflow_error(409, str(exc)) from None
        except Exception:  # noqa: BLE001 -- the client gets an id, the log gets the trace
            raise _mlflow_error(500, "internal error while answering", internal_error("/invocations")) from None


def build_app(follower: RegistryFollower, limits: ServeParams, search: Search, cache: AnswerCache | None = None) -> Any:
    """The FastAPI app: MLflow's scoring server plus ``/ask`` and ``/info`` (see the module docstring)."""
    from concurrent.futures import ThreadPoolExecutor

    from fastapi import Request
    from fastapi.responses import JSONResponse, Response
    from mlflow.pyfunc import scoring_server

    app = scoring_server.init(FollowingModel(follower, limits, search, cache))
    generation = ThreadPoolExecutor(GENERATION_THREADS, thread_name_prefix="answer-generation")

    def error(status: int, message: str, error_id: str | None = None) -> Response:
        return Response(error_body(status, message, error_id), status_code=status, media_type="application/json")

    # Plain Starlette routes (request in, response out): FastAPI's parameter injection is not needed here.
    async def ask_route(request: Request) -> Response:
        try:
            question = parse_ask_body(await request.body(), limits)
            served = follower.current()
            hit = cached_answer(served, question, cache, memo_only=True)  # no I/O: fine on the event loop
            if hit is None:
                hit = await asyncio.to_thread(cached_answer, served, question, cache)
            if hit is None:
                loop = asyncio.get_running_loop()
                hit = await loop.run_in_executor(generation, ask, served, question, search, cache)
            return JSONResponse(hit)
        except BadRequest as exc:
            return error(400, str(exc))
        except (NotReady, NothingToDo) as exc:
            return error(409, str(exc))

    async def info_route(_request: Request) -> Response:
        return JSONResponse(follower.info())

    app.add_route("/ask", ask_route, methods=["POST"])
    app.add_route("/info", info_route, methods=["GET"])
    register_feedback(app, limits, search, error)  # POST /feedback and the /ask answer log (serving/feedback.py)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limits.max_body_bytes:
            return error(400, f"request body has {length} bytes; the limit is {limits.max_body_bytes}")
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 -- whatever escapes a route: generic message, trace in the log
            return error(500, "internal error", internal_error(request.url.path))
        if response.status_code < 400 or request.url.path != "/invocations":
            return response
        # MLflow's own protocol errors (bad JSON, wrong keys, content type) carry long messages: one line each.
        raw = b"".join([chunk async for chunk in response.body_iterator])
        try:
            data = json.loads(raw)
        except ValueError:
            data = raw.decode("utf-8", "replace")
        message, error_id = (data.get("message", ""), data.get("error_id")) if isinstance(data, dict) else (data, None)
        if error_id is None:
            log.info("/invocations answered %s: %s", response.status_code, one_line(str(message)))
        return error(response.status_code, str(message), error_id)

    return app


__all__ = ["GENERATION_THREADS", "FollowingModel", "build_app", "error_body", "one_line"]
