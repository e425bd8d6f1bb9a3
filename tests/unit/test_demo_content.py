"""The demo catalog loads from its packaged YAML files into typed, immutable records."""

from __future__ import annotations

from evertune.demo import content
from evertune.demo.content import Fact, Subject, fact_from_dict, load_data, subject_from_dict


def test_fact_from_dict_makes_tuples_and_defaults_since_day():
    fact = fact_from_dict({"key": "k", "topic": "t", "value": "1 GB", "sentences": ["a {v}"], "questions": ["q?"],
                           "golden": ["g?"], "answer": "It is {v}.", "wrong": ["2 GB"]})
    assert fact == Fact("k", "t", "1 GB", ("a {v}",), ("q?",), ("g?",), "It is {v}.", ("2 GB",), 1)
    assert fact_from_dict({**{"key": "k", "topic": "t", "value": "v", "sentences": [], "questions": [],
                              "golden": [], "answer": "", "wrong": []}, "since_day": 4}).since_day == 4


def test_subject_from_dict_takes_defaults_for_omitted_fields():
    subject = subject_from_dict({"slug": "s", "title": "T", "topic": "sync", "summary": "S.", "steps": ["one"]})
    assert subject == Subject("s", "T", "sync", "S.", ("one",), (), None, "help-center", False)
    full = subject_from_dict({"slug": "s", "title": "T", "topic": "sync", "summary": "S.", "steps": [],
                              "facts": ["f"], "query": "q", "source": "community", "retired": True})
    assert (full.facts, full.query, full.source, full.retired) == (("f",), "q", "community", True)


def test_packaged_catalog_loads_into_records():
    assert set(load_data("subjects.yaml")) == {"core", "drift", "junk"}
    assert all(isinstance(fact, Fact) for fact in content.FACTS)
    assert all(isinstance(s, Subject) and isinstance(s.steps, tuple) for s in content.all_subjects())
    assert all(isinstance(pair, tuple) and len(pair) == 2 for pair in content.QUALIFIERS.values())
    assert content.FACTS_BY_KEY["pro_price"].value == "$8 per user per month"
    assert len(content.JUNK_SUBJECTS) == 6 and len(content.PII_POSTS) == 2
