"""The answer service's HTTP behaviour with a stand-in model: MLflow's scoring protocol in every form, ``/ask``
(answer, citations, versions, id), and errors (400 with a one-line reason, 409 with nothing to serve, 500 with
an error id and never a stack trace). The registry, a real model and a real server: tests/integration/
test_serving_live.py."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from evertune.config import load_params
from evertune.errors import NotReady
from evertune.serving.answers import answer_id, citations
from evertune.serving.app import build_app
from evertune.serving.follower import Served

# build_app adds the /ask answer log (serving/feedback.py): keep it in a per-test state folder.
pytestmark = pytest.mark.usefixtures("evertune_home")

CHUNKS = [
    {"chunk_id": "pricing#0", "doc_id": "pricing", "title": "Plans and pricing", "url": "https://h.example/pricing",
     "text": "Pro costs $10 per user per month."},
    {"chunk_id": "pricing#2", "doc_id": "pricing", "title": "Plans and pricing", "url": "https://h.example/pricing",
     "text": "Annual billing saves 20%."},
    {"chunk_id": "sync#1", "doc_id": "sync", "title": "Offline sync", "url": "https://h.example/sync",
     "text": "Changes sync when you reconnect."},
]


class EchoModel:
    """Stands in for the loaded pyfunc: the same predict contract (a DataFrame with question + contexts)."""

    def __init__(self) -> None:
        from mlflow.models import Model

        self.metadata = Model(metadata={"prompt_template": "rag-v1"})
        self.model_config = {"retrieval": "kb"}
        self.calls: list[tuple[list[str], list[list[dict]], dict | None]] = []

    def unwrap_python_model(self):
        return SimpleNamespace(spec=SimpleNamespace(max_new_tokens=48))  # no tokenizer: every chunk is shown

    def predict(self, frame, params=None):
        questions, contexts = frame["question"].tolist(), frame["contexts"].tolist()
        self.calls.append((questions, contexts, params))
        if "boom" in questions:
            raise RuntimeError("secret internal detail")
        return [f"{q} ({len(c)} chunks)" for q, c in zip(questions, contexts, strict=True)]


class FakeFollower:
    def __init__(self, served: Served | None) -> None:
        self.served = served

    def peek(self):
        return self.served

    def current(self):
        if self.served is None:
            raise NotReady("no champion registered yet for model 'evertune-assistant'")
        return self.served

    def info(self):
        return {"ready": self.served is not None}


def served(kb_version: int | None = 7) -> Served:
    return Served("evertune-assistant", 3, EchoModel(), "rag-v1", "kb", "kb_chunks__t", kb_version, 0.1)


def client_for(state: Served | None) -> TestClient:
    searched: list[tuple[str, int]] = []

    def search(question: str, version: int) -> list[dict]:
        searched.append((question, version))
        return [dict(c) for c in CHUNKS]

    client = TestClient(build_app(FakeFollower(state), load_params().serve, search), raise_server_exceptions=False)
    client.searched = searched
    return client


PROTOCOL = [
    ({"inputs": ["How much does the Pro plan cost?"]}, ["How much does the Pro plan cost?"]),
    ({"inputs": "How much does the Pro plan cost?"}, ["How much does the Pro plan cost?"]),
    ({"inputs": ["a?", "b?"]}, ["a?", "b?"]),
    ({"instances": ["a?"]}, ["a?"]),
    ({"inputs": {"question": ["a?"]}}, ["a?"]),
    ({"dataframe_records": [{"question": "a?"}, {"question": "b?"}]}, ["a?", "b?"]),
    ({"dataframe_split": {"columns": ["question"], "data": [["a?"], ["b?"]]}}, ["a?", "b?"]),
]


@pytest.mark.parametrize(("body", "questions"), PROTOCOL)
def test_every_scoring_protocol_form_parses_to_questions(body: dict, questions: list[str]) -> None:
    from mlflow.models import Model
    from mlflow.pyfunc.scoring_server import _parse_json_data

    from evertune.tuning.pyfunc_model import parse_model_input

    data = _parse_json_data(json.dumps(body), Model(), None).data  # exactly what predict receives when served
    assert parse_model_input(data) == (questions, None)


@pytest.mark.parametrize(("body", "questions"), PROTOCOL)
def test_invocations_answers_every_form_from_the_pinned_kb(body: dict, questions: list[str]) -> None:
    client = client_for(served())
    answer = client.post("/invocations", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": [f"{q} (3 chunks)" for q in questions]}
    assert client.searched == [(q, 7) for q in questions]  # retrieval at the served KB version, not the live tag


def test_invocations_contexts_and_params_are_used() -> None:
    state = served()
    client = client_for(state)
    body = {"dataframe_records": [{"question": "a?", "contexts": [{"title": "T", "text": "x"}]}],
            "params": {"max_new_tokens": 5}}
    assert client.post("/invocations", json=body).json() == {"predictions": ["a? (1 chunks)"]}
    assert client.searched == [] and state.model.calls[-1][2] == {"max_new_tokens": 5}
    body = {"inputs": ["a?"], "params": {"retrieval": "none"}}
    assert client.post("/invocations", json=body).json() == {"predictions": ["a? (0 chunks)"]}


def test_ask_returns_answer_citations_versions_and_a_deterministic_id() -> None:
    client = client_for(served())
    first = client.post("/ask", json={"question": "  How much does the Pro plan cost? "})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["answer"] == "How much does the Pro plan cost? (3 chunks)"
    assert body["citations"] == [
        {"doc_id": "pricing", "title": "Plans and pricing", "url": "https://h.example/pricing",
         "chunk_ids": ["pricing#0", "pricing#2"]},
        {"doc_id": "sync", "title": "Offline sync", "url": "https://h.example/sync", "chunk_ids": ["sync#1"]},
    ]
    assert {k: body[k] for k in ("model_name", "model_version", "kb_table", "kb_version", "prompt_version")} == {
        "model_name": "evertune-assistant", "model_version": 3, "kb_table": "kb_chunks__t", "kb_version": 7,
        "prompt_version": "rag-v1"}
    assert len(body["answer_id"]) == 32
    assert client.post("/ask", json={"question": "How much does the Pro plan cost?"}).json()["answer_id"] == \
        body["answer_id"]
    other = client_for(served(kb_version=8)).post("/ask", json={"question": "How much does the Pro plan cost?"})
    assert other.json()["answer_id"] != body["answer_id"], "a new KB version is a new answer id"


def test_mlflow_routes_answer_as_documented() -> None:
    from mlflow.version import VERSION

    client = client_for(None)
    assert client.get("/ping").status_code == 200 and client.get("/health").status_code == 200
    assert client.get("/version").text == VERSION
    assert client.get("/info").json() == {"ready": False}


LONG = "x" * 2001
BAD = [
    ("/ask", b'{"question": ""}', "question is empty"),
    ("/ask", b'{"question": "   "}', "question is empty"),
    ("/ask", json.dumps({"question": LONG}).encode(), "2001 characters; the limit is 2000"),
    ("/ask", b'{"question": 42}', "question must be a string, got a number"),
    ("/ask", b'{"question": null}', "question must be a string, got null"),
    ("/ask", b'{"question": ["a"]}', "question must be a string, got an array"),
    ("/ask", b'{"question": "a", "k": 3}', "unknown field(s) 'k'"),
    ("/ask", b'{"q": "a"}', 'needs a "question" field'),
    ("/ask", b'["a"]', "must be a JSON object"),
    ("/ask", b'{"question": "a"', "not valid JSON"),
    ("/ask", b"\xff\xfe", "not UTF-8"),
    ("/ask", b"", "not valid JSON"),
    ("/invocations", b'{"inputs": []}', "no questions"),
    ("/invocations", b'{"inputs": [1, 2]}', "question 0 is a int, not a string"),
    ("/invocations", b'{"inputs": [null]}', "question 0 is a NoneType"),
    ("/invocations", b'{"inputs": [["a"]]}', "2-d array"),
    ("/invocations", b'{"inputs": [""]}', "question 0 is empty"),
    ("/invocations", json.dumps({"inputs": [LONG]}).encode(), "question 0 has 2001 characters"),
    ("/invocations", json.dumps({"inputs": ["q"] * 17}).encode(), "17 questions; the limit is 16"),
    ("/invocations", b'{"inputs": ["a"], "params": {"temperature": 2}}', "unknown param(s) 'temperature'"),
    ("/invocations", b'{"inputs": ["a"], "params": {"max_new_tokens": 4096}}', "from 1 to 48"),
    ("/invocations", b'{"dataframe_records": [{"a": 1, "b": 2}]}', "needs a 'question' column"),
    ("/invocations", b'{"foo": ["a"]}', "exactly one of the input fields"),
    ("/invocations", b'{"inputs": ["a"', "valid JSON"),
    ("/invocations", b'["a"]', "Received a list"),
]


def assert_one_line_error(answer, status: int) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert set(body) <= {"error_code", "message", "error_id"} and "\n" not in body["message"], body
    assert "Traceback" not in answer.text and 'File "' not in answer.text and len(body["message"]) <= 300
    return body


@pytest.mark.parametrize(("path", "raw", "needle"), BAD)
def test_bad_input_gets_400_with_a_one_line_reason(path: str, raw: bytes, needle: str) -> None:
    answer = client_for(served()).post(path, content=raw, headers={"content-type": "application/json"})
    assert needle in assert_one_line_error(answer, 400)["message"]


def test_oversized_bodies_and_unsupported_content_types_are_refused() -> None:
    client = client_for(served())
    big = json.dumps({"question": "a" * 1_000_001}).encode()
    for path in ("/ask", "/invocations"):
        body = assert_one_line_error(client.post(path, content=big, headers={"content-type": "application/json"}), 400)
        assert "limit is 1000000" in body["message"]
    assert_one_line_error(client.post("/invocations", content=b"a?", headers={"content-type": "text/plain"}), 415)


def test_a_failing_model_gives_500_with_an_error_id_and_the_trace_only_in_the_log(caplog) -> None:
    client = client_for(served())
    with caplog.at_level(logging.ERROR, logger="evertune.serving.app"):
        for path, body in (("/ask", {"question": "boom"}), ("/invocations", {"inputs": ["boom"]})):
            error = assert_one_line_error(client.post(path, json=body), 500)
            assert error["message"].startswith("internal error") and "secret" not in error["message"]
            assert error["error_id"] in caplog.text and "secret internal detail" in caplog.text
            assert "Traceback" in caplog.text


def test_nothing_to_serve_is_409_not_503_and_ping_stays_healthy() -> None:
    client = client_for(None)
    for path, body in (("/ask", {"question": "a?"}), ("/invocations", {"inputs": ["a?"]})):
        error = assert_one_line_error(client.post(path, json=body), 409)
        assert error == {"error_code": "RESOURCE_CONFLICT",
                         "message": "no champion registered yet for model 'evertune-assistant'"}
    assert client.get("/ping").status_code == 200
    no_kb = assert_one_line_error(client_for(served(kb_version=None)).post("/ask", json={"question": "a?"}), 409)
    assert no_kb["message"].startswith("no knowledge base published yet")


def test_citations_group_chunks_by_document_and_ids_name_the_versions() -> None:
    assert citations([]) == []
    assert [c["doc_id"] for c in citations(CHUNKS[::-1])] == ["sync", "pricing"]
    versions = served().versions()
    assert answer_id("q", versions, "a") == answer_id("q", dict(versions), "a")
    assert answer_id("q", versions, "a") != answer_id("q", {**versions, "model_version": 4}, "a")
    assert answer_id("q", versions, "a") != answer_id("q", versions, "b")
