"""The registered pyfunc's input parsing (loading and answering: tests/integration/test_registry.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from evertune.tuning import pyfunc_model, registry
from evertune.tuning.pyfunc_model import as_chunks, parse_model_input


def test_questions_from_strings_lists_and_frames() -> None:
    assert parse_model_input("Hi?") == (["Hi?"], None)
    assert parse_model_input(["a", "b"]) == (["a", "b"], None)
    assert parse_model_input(pd.DataFrame({"q": ["x"]})) == (["x"], None)
    questions, contexts = parse_model_input({"question": ["a", "b"], "contexts": [["t"], None]})
    assert questions == ["a", "b"] and contexts == [[{"title": "", "text": "t"}], []]
    with pytest.raises(ValueError, match="question"):
        parse_model_input(pd.DataFrame({"a": [1], "b": [2]}))
    with pytest.raises(ValueError, match="unsupported"):
        parse_model_input(42)


def test_contexts_become_chunk_dicts() -> None:
    assert as_chunks(float("nan")) == []
    assert as_chunks('[{"title": "T", "text": "x"}]') == [{"title": "T", "text": "x"}]
    assert as_chunks("plain text") == [{"title": "", "text": "plain text"}]
    assert as_chunks([{"title": "T", "text": "x", "doc_id": "d"}, 3]) == [
        {"title": "T", "text": "x", "doc_id": "d"},
        {"title": "", "text": "3"},
    ]


def test_versions_pickled_before_the_move_still_find_their_helper() -> None:
    # Their cloudpickled class calls evertune.tuning.registry._parse_model_input by reference.
    assert registry._parse_model_input is pyfunc_model.parse_model_input
