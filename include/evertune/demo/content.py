"""The Nimbus Notes help center: facts, article subjects and the phrase pools articles are written from.

Everything here is static data: the texts live in YAML files under ``evertune/demo/data/`` (``facts.yaml``,
``subjects.yaml``, ``phrases.yaml``), which this module loads once at import into typed, immutable records.
The scenario (:mod:`evertune.demo.scenario`) decides which article exists when and which fact holds when;
the generator (:mod:`evertune.demo.generator`) renders them. Fact values are written verbatim into article
text, QA answers and golden answers, so a fact can be checked with a substring test.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

PRODUCT = "Nimbus Notes"
BASE_URL = "https://help.nimbusnotes.example"

#: Topics of the original help center (days 1-3) and the topics the drift day introduces.
CORE_TOPICS = ("billing", "sync", "sharing", "security", "integrations", "account", "mobile", "import-export")
DRIFT_TOPICS = ("ai-assistant", "enterprise-admin")

#: URL folder per source; every URL stays under the allowed prefix ``https://help.nimbusnotes.example/``.
SOURCE_PATHS = {"help-center": "articles", "release-notes": "release-notes", "community": "community"}


@dataclass(frozen=True)
class Fact:
    """One checkable product fact.

    Attributes:
        key: The ``fact_key`` used in QA records.
        topic: Subject label of the fact.
        value: Value on the first day the fact exists.
        sentences: Article sentences stating it (``{v}`` is the value).
        questions: Training phrasings (``qa.jsonl``).
        golden: Evaluation phrasings (``golden/qa.jsonl``), never used for training.
        answer: Answer template (``{v}`` is the value).
        wrong: Plausible but false values, used by the poisoned drop.
        since_day: Scenario day on which the fact first appears (the drift day for new features).
        probes: Freshness phrasings (``golden/freshness.jsonl``), asked after a change on a post-tuning day;
            none shares a 4-word run with the fact's sentences.
    """

    key: str
    topic: str
    value: str
    sentences: tuple[str, ...]
    questions: tuple[str, ...]
    golden: tuple[str, ...]
    answer: str
    wrong: tuple[str, ...]
    since_day: int = 1
    probes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Subject:
    """What one article is about; variants (platform, audience) are derived from it.

    Attributes:
        slug: The article's ``doc_id``.
        title: Title (never contains a colon, so naive front-matter parsers cope).
        topic: Subject label.
        summary: Opening sentences specific to the subject.
        steps: How-to steps, rendered as a numbered list.
        facts: Fact keys the article states.
        query: A golden retrieval query for it, phrased unlike the title (``None``: not in the golden set).
        source: ``help-center``, ``release-notes`` or ``community``.
        retired: The article may be deleted by the scenario (deprecated features).
    """

    slug: str
    title: str
    topic: str
    summary: str
    steps: tuple[str, ...]
    facts: tuple[str, ...] = ()
    query: str | None = None
    source: str = "help-center"
    retired: bool = False



def load_data(name: str) -> dict[str, Any]:
    """Read one YAML file of the demo catalog.

    Args:
        name: File name under ``evertune/demo/data/`` (packaged with :mod:`evertune.demo`).

    Returns:
        The parsed mapping.
    """
    text = (resources.files("evertune.demo") / "data" / name).read_text(encoding="utf-8")
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def fact_from_dict(raw: dict[str, Any]) -> Fact:
    """Build a :class:`Fact` from one entry of ``facts.yaml`` (lists become tuples)."""
    return Fact(
        key=raw["key"], topic=raw["topic"], value=raw["value"], sentences=tuple(raw["sentences"]),
        questions=tuple(raw["questions"]), golden=tuple(raw["golden"]), answer=raw["answer"],
        wrong=tuple(raw["wrong"]), since_day=raw.get("since_day", 1), probes=tuple(raw.get("probes", ())),
    )


def subject_from_dict(raw: dict[str, Any]) -> Subject:
    """Build a :class:`Subject` from one entry of ``subjects.yaml`` (omitted fields take the defaults)."""
    return Subject(
        slug=raw["slug"], title=raw["title"], topic=raw["topic"], summary=raw["summary"], steps=tuple(raw["steps"]),
        facts=tuple(raw.get("facts", ())), query=raw.get("query"), source=raw.get("source", "help-center"),
        retired=raw.get("retired", False),
    )


def _pools(raw: dict[str, list[str]]) -> dict[str, tuple[str, ...]]:
    return {key: tuple(values) for key, values in raw.items()}


_SUBJECTS = load_data("subjects.yaml")
_PHRASES = load_data("phrases.yaml")

FACTS: tuple[Fact, ...] = tuple(fact_from_dict(raw) for raw in load_data("facts.yaml")["facts"])
FACTS_BY_KEY: dict[str, Fact] = {fact.key: fact for fact in FACTS}

#: Scheduled fact changes: scenario day -> [(fact_key, new value)]. Day 7 comes after the tuning run (days 1-5,
#: then the poisoned day 6): its changes are what the freshness probes ask about.
FACT_CHANGES: dict[int, tuple[tuple[str, str], ...]] = {
    3: (("pro_price", "$10 per user per month"),),
    5: (("attachment_limit", "100 MB"),),
    7: (
        ("business_price", "$18 per user per month"),
        ("refund_window", "21 days"),
        ("free_notebook_limit", "5 notebooks"),
        ("support_response", "within 12 hours"),
        ("trash_retention", "60 days"),
        ("version_history_days", "180 days"),
        ("free_device_limit", "3 devices"),
        ("guest_limit", "25 guests per workspace"),
        ("password_min_length", "14 characters"),
        ("api_rate_limit", "1200 requests per minute"),
        ("webhook_retries", "12 attempts"),
    ),
}

#: Original help center, in priority order: with few articles, the first ones (fact homes) are kept.
CORE_SUBJECTS: tuple[Subject, ...] = tuple(subject_from_dict(raw) for raw in _SUBJECTS["core"])
#: Articles that the drift day introduces (new AI assistant and enterprise administration).
DRIFT_SUBJECTS: tuple[Subject, ...] = tuple(subject_from_dict(raw) for raw in _SUBJECTS["drift"])
#: Hidden subjects used only for malformed records: never part of the ground truth.
JUNK_SUBJECTS: tuple[Subject, ...] = tuple(subject_from_dict(raw) for raw in _SUBJECTS["junk"])

#: Variant qualifiers: slug -> (title suffix, sentence placed in the introduction).
QUALIFIERS: dict[str, tuple[str, str]] = {
    slug: (suffix, sentence) for slug, (suffix, sentence) in _PHRASES["qualifiers"].items()
}
TOPIC_QUALIFIERS: dict[str, tuple[str, ...]] = _pools(_PHRASES["topic_qualifiers"])
TOPIC_INTROS: dict[str, tuple[str, ...]] = _pools(_PHRASES["topic_intros"])
TOPIC_TIPS: dict[str, tuple[str, ...]] = _pools(_PHRASES["topic_tips"])
TOPIC_TROUBLESHOOTING: dict[str, tuple[str, ...]] = _pools(_PHRASES["topic_troubleshooting"])
TOPIC_DETAILS: dict[str, tuple[str, ...]] = _pools(_PHRASES["topic_details"])

STEP_HEADINGS: tuple[str, ...] = tuple(_PHRASES["step_headings"])
TIP_LABELS: tuple[str, ...] = tuple(_PHRASES["tip_labels"])
FACT_LEADS: tuple[str, ...] = tuple(_PHRASES["fact_leads"])
CLOSINGS: tuple[str, ...] = tuple(_PHRASES["closings"])
FILLERS: tuple[str, ...] = tuple(_PHRASES["fillers"])
#: Community posts with personal data (must be quarantined or flagged by ingestion).
PII_POSTS: tuple[str, ...] = tuple(_PHRASES["pii_posts"])


def all_subjects() -> tuple[Subject, ...]:
    """Return every subject that can become a real article (core, then drift)."""
    return CORE_SUBJECTS + DRIFT_SUBJECTS


def _check_catalog() -> None:
    # Cheap import-time guard: the catalog is data, and a typo here would silently corrupt every drop.
    slugs = [s.slug for s in all_subjects()] + [s.slug for s in JUNK_SUBJECTS]
    assert len(slugs) == len(set(slugs)), "duplicate subject slug"
    for subject in all_subjects() + JUNK_SUBJECTS:
        assert ":" not in subject.title, subject.slug
        assert set(subject.facts) <= FACTS_BY_KEY.keys(), subject.slug
    training = {q for fact in FACTS for q in fact.questions}
    golden = {q for fact in FACTS for q in fact.golden}
    probes = [q for fact in FACTS for q in fact.probes]
    assert not training & golden, "golden and training phrasings overlap"
    assert len(probes) == len(set(probes)) and not set(probes) & (training | golden), "probe phrasings overlap"
    for fact in FACTS:
        changed = [value for day, changes in sorted(FACT_CHANGES.items()) for key, value in changes if key == fact.key]
        for old, new in zip((fact.value, *changed), changed, strict=False):
            assert old not in new and new not in old, (fact.key, old, new)  # a new value never contains the old
        for wrong in fact.wrong:
            for true in (fact.value, *changed):
                # Substring checks decide "states the fact" / "contradicts it", so neither may contain the other.
                assert wrong not in true and true not in wrong, (fact.key, wrong)


_check_catalog()
