"""Answering with the served champion: request checks, retrieval at the pinned KB version, citations, answer ids.

Both routes answer through :func:`answer_batch`: ``/invocations`` (MLflow's scoring protocol) and ``/ask``
(one question, with citations and versions). Retrieval happens here, at the KB version the
:class:`~evertune.serving.follower.Served` snapshot names, and the retrieved chunks are handed to the model as
its ``contexts`` column, so the version an answer reports is the one it was generated from (the model never
searches the live tag by itself while served).

Citations are the retrieved chunks that the prompt actually shows: the ones that fit the context budget
(``evaluate.max_context_chars``, then the token budget), grouped by document in retrieval order.

The answer cache (:mod:`evertune.serving.cache`), when given, answers repeated questions on the same versions
without retrieval or generation; ``/ask``'s answer says ``cached: true`` then.

The answer id is deterministic: the first 32 hex digits of the sha256 of the question, the model name and
version, the KB table and version, the prompt version and the answer text. Greedy generation makes the same
question on the same versions give the same answer and therefore the same id, so feedback on repeated (or
cached) answers lands on one id, and an id names exactly what was shown (a uuid would name only an event).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from evertune.errors import BadRequest, NotReady

if TYPE_CHECKING:
    from evertune.config import Params, ServeParams
    from evertune.serving.cache import AnswerCache
    from evertune.serving.follower import Served
    from evertune.settings import Settings

#: ``(question, kb_version) -> chunks`` (best first, as :func:`evertune.kb.retrieval.search` returns them).
Search = Callable[[str, int], list[dict[str, Any]]]
#: Predict params a client may pass to ``/invocations``.
CLIENT_PARAMS = ("max_new_tokens", "retrieval")


def kb_search(params: Params, settings: Settings) -> Search:
    """The real search: :func:`evertune.kb.retrieval.search` at an exact table version."""
    from evertune.kb.retrieval import search

    def run(question: str, kb_version: int) -> list[dict[str, Any]]:
        return search(question, params, settings, version_or_tag=int(kb_version))

    return run


def check_question(value: Any, limits: ServeParams, where: str = "question") -> str:
    """A question as the service accepts it: a non-blank string of at most ``serve.max_question_chars``.

    Returns:
        The question, stripped.

    Raises:
        BadRequest: Not a string, blank, or too long.
    """
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a string, got {_json_type(value)}")
    question = value.strip()
    if not question:
        raise BadRequest(f"{where} is empty")
    if len(question) > limits.max_question_chars:
        raise BadRequest(f"{where} has {len(question)} characters; the limit is {limits.max_question_chars}")
    return question


def decode_json_body(body: bytes) -> Any:
    """The decoded JSON of a request body.

    Raises:
        BadRequest: Not UTF-8, or not valid JSON (with the parser's reason and position).
    """
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8") from None
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON ({exc.msg} at position {exc.pos})") from None


def parse_ask_body(body: bytes, limits: ServeParams) -> str:
    """The question of a ``POST /ask`` body ``{"question": "..."}``.

    Raises:
        BadRequest: The body is too large, not UTF-8 JSON, not an object, has other keys, or the question fails
            :func:`check_question`.
    """
    if len(body) > limits.max_body_bytes:
        raise BadRequest(f"request body has {len(body)} bytes; the limit is {limits.max_body_bytes}")
    data = decode_json_body(body)
    if not isinstance(data, dict):
        raise BadRequest(f'request body must be a JSON object {{"question": "..."}}, got {_json_type(data)}')
    if "question" not in data:
        raise BadRequest('request body needs a "question" field')
    extra = sorted(set(data) - {"question"})
    if extra:
        raise BadRequest(f"unknown field(s) {', '.join(map(repr, extra))}; only \"question\" is accepted")
    return check_question(data["question"], limits)


def check_params(params: Mapping[str, Any] | None, served: Served) -> dict[str, Any]:
    """Client predict params, checked: ``max_new_tokens`` (1 up to the model's own default) and ``retrieval``.

    Raises:
        BadRequest: An unknown param or a value out of range.
    """
    params = dict(params or {})
    unknown = sorted(set(params) - set(CLIENT_PARAMS))
    if unknown:
        raise BadRequest(f"unknown param(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(CLIENT_PARAMS)}")
    if "retrieval" in params and params["retrieval"] not in ("kb", "none"):
        raise BadRequest(f"param retrieval must be 'kb' or 'none', got {params['retrieval']!r}")
    if "max_new_tokens" in params:
        limit = _default_max_new_tokens(served)
        value = params["max_new_tokens"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise BadRequest(f"param max_new_tokens must be an integer from 1 to {limit}, got {value!r}")
    return params


def _default_max_new_tokens(served: Served) -> int:
    spec = getattr(_python_model(served), "spec", None)
    return int(getattr(spec, "max_new_tokens", 0) or 1)


def _python_model(served: Served) -> Any:
    try:
        return served.model.unwrap_python_model()
    except Exception:  # noqa: BLE001 -- a model that is not a PythonModel simply has no tokenizer to use
        return None


def shown_chunks(served: Served, question: str, chunks: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The leading retrieved chunks that the prompt shows (the rest do not fit its budgets).

    The prompt shows the prefix :func:`evertune.tuning.answer.fit_contexts` keeps, with room for
    ``max_new_tokens`` (as :func:`~evertune.tuning.answer.render_prompt` cuts). A model without the evertune
    tokenizer/spec attributes gets every chunk.
    """
    from evertune.tuning.answer import fit_contexts

    python_model = _python_model(served)
    tokenizer, spec = getattr(python_model, "tokenizer", None), getattr(python_model, "spec", None)
    if tokenizer is None or spec is None or not chunks:
        return list(chunks)
    return list(chunks[: len(fit_contexts(tokenizer, question, chunks, spec, spec.max_new_tokens))])


def citations(chunks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Chunks grouped by document, in order of first appearance: ``{doc_id, title, url, chunk_ids}``."""
    by_doc: dict[str, dict[str, Any]] = {}
    for chunk in chunks:
        doc_id = str(chunk.get("doc_id") or "")
        entry = by_doc.setdefault(doc_id, {"doc_id": doc_id, "title": chunk.get("title"), "url": chunk.get("url"),
                                           "chunk_ids": []})
        if chunk.get("chunk_id") is not None:
            entry["chunk_ids"].append(str(chunk["chunk_id"]))
    return list(by_doc.values())


def answer_id(question: str, versions: Mapping[str, Any], answer: str) -> str:
    """The deterministic id of an answer (see the module docstring)."""
    payload = json.dumps([question, versions.get("model_name"), versions.get("model_version"),
                          versions.get("kb_table"), versions.get("kb_version"), versions.get("prompt_version"),
                          answer], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


class Batch(NamedTuple):
    """What :func:`answer_batch` returns, one entry per question.

    Attributes:
        answers: The answer texts.
        citations: The citations (:func:`citations` of the chunks the prompt showed; stored ones on a hit).
        cached: Whether each answer came from the answer cache (no generation).
    """

    answers: list[str]
    citations: list[list[dict[str, Any]]]
    cached: list[bool]


def answer_batch(
    served: Served,
    questions: Sequence[str],
    contexts: Sequence[Sequence[Mapping[str, Any]]] | None,
    search: Search,
    params: Mapping[str, Any] | None = None,
    cache: AnswerCache | None = None,
) -> Batch:
    """Answer questions with the served model, from the answer cache where it holds them.

    Without ``contexts``, retrieval (the model's mode, or the ``retrieval`` param) searches the served KB
    version; the chunks the prompt shows go to the model as its ``contexts`` column.

    The cache is used only for requests without client ``contexts`` and without client params (the answer
    is then a function of the question and the versions): questions it holds are answered without retrieval
    or generation; the others are retrieved, then looked up again once the model's lock is held (a duplicate
    that waited behind the first generation of the same question is a hit), generated, and stored before the
    lock is released.

    Raises:
        BadRequest: Bad params.
        NotReady: Retrieval is ``kb`` but no KB version is published.
    """
    params = check_params(params, served)
    mode = params.pop("retrieval", None) or served.retrieval
    if contexts is None and mode == "kb" and served.kb_version is None:
        raise NotReady(f"no knowledge base published yet (table {served.kb_table!r} has no publish tag)")
    use_cache = cache is not None and contexts is None and not params
    versions = served.versions()
    done: dict[int, tuple[str, list[dict[str, Any]], bool]] = {}  # index -> (answer, citations, cached)

    def look_up(indices: Sequence[int]) -> list[int]:
        """Fill ``done`` from the cache; the indices still missing."""
        for i in indices:
            hit = cache.get(questions[i], versions) if use_cache else None  # type: ignore[union-attr]
            if hit is not None:
                done[i] = (hit.answer, hit.citations, True)
        return [i for i in indices if i not in done]

    todo = look_up(range(len(questions)))
    if contexts is None:
        found = {i: search(questions[i], served.kb_version) if mode == "kb" else [] for i in todo}
    else:
        found = {i: list(contexts[i]) for i in todo}
    with served.lock:
        todo = look_up(todo)  # answered meanwhile by a request that held the lock
        generated = _generate(served, [questions[i] for i in todo], [found[i] for i in todo], params)
        for i, (answer, cited) in zip(todo, generated, strict=True):
            done[i] = (answer, cited, False)
            if use_cache:
                cache.put(questions[i], versions, answer, cited, answer_id(questions[i], versions, answer))  # type: ignore[union-attr]
    ordered = [done[i] for i in range(len(questions))]
    return Batch([a for a, _, _ in ordered], [c for _, c, _ in ordered], [h for _, _, h in ordered])


def _generate(served: Served, questions: list[str], contexts: list[list[Mapping[str, Any]]],
              params: Mapping[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Generate answers (the caller holds ``served.lock``); ``(answer, citations)`` per question."""
    if not questions:
        return []
    import pandas as pd

    shown = [shown_chunks(served, q, c) for q, c in zip(questions, contexts, strict=True)]
    frame = pd.DataFrame({"question": questions, "contexts": shown})
    answers = served.model.predict(frame, params=dict(params) or None)
    return [(str(a), citations(s)) for a, s in zip(answers, shown, strict=True)]


def ask(served: Served, question: str, search: Search, cache: AnswerCache | None = None) -> dict[str, Any]:
    """Answer one question: the answer, its citations, the versions that produced it, its id, ``cached``.

    On a cache hit the answer and citations are the stored ones and the id is :func:`answer_id` of this
    question's text with them (a hit on a differently spelled question gets its own, deterministic id).
    """
    batch = answer_batch(served, [question], None, search, cache=cache)
    versions = served.versions()
    answer = batch.answers[0]
    return {"answer_id": answer_id(question, versions, answer), "question": question, "answer": answer,
            "citations": batch.citations[0], **versions, "cached": batch.cached[0]}


def cached_answer(served: Served, question: str, cache: AnswerCache | None,
                  memo_only: bool = False) -> dict[str, Any] | None:
    """:func:`ask`'s answer when the cache holds it (no retrieval, no generation, no model lock), else ``None``.

    Args:
        served: The served versions.
        question: The checked question.
        cache: The answer cache (``None``: always ``None``).
        memo_only: Only the in-memory memo, no I/O (:meth:`~evertune.serving.cache.AnswerCache.peek`).

    Raises:
        NotReady: The model retrieves from the KB and no KB version is published.
    """
    if cache is None:
        return None
    if served.retrieval == "kb" and served.kb_version is None:
        raise NotReady(f"no knowledge base published yet (table {served.kb_table!r} has no publish tag)")
    versions = served.versions()
    hit = cache.peek(question, versions) if memo_only else cache.get(question, versions)
    if hit is None:
        return None
    return {"answer_id": answer_id(question, versions, hit.answer), "question": question, "answer": hit.answer,
            "citations": hit.citations, **versions, "cached": True}


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


__all__ = ["CLIENT_PARAMS", "Batch", "Search", "answer_batch", "answer_id", "ask", "cached_answer", "check_params",
           "check_question", "citations", "kb_search", "parse_ask_body", "shown_chunks"]
