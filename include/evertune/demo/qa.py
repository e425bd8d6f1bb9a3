"""Training QA of the demo scenario: which pairs a day publishes, and the poisoned drop.

A pair ``qa-<fact_key>-<n>`` asks the fact's ``n``-th training phrasing and is grounded in a live article that
states the fact. The functions here fill ``DayPlan.qa`` and keep the replay's QA bookkeeping (``used``:
phrasings published per fact; ``qa_doc``: the article each pair was last grounded in) up to date.
"""

from __future__ import annotations

import random

from evertune.demo.articles import Article, DayPlan, answer_for, stable_hash
from evertune.demo.content import FACTS, FACTS_BY_KEY

#: Training phrasings published the first time a fact appears; later ones come with added or edited articles.
FIRST_PHRASINGS = 3


def stating(live: dict[str, Article], fact_key: str) -> list[Article]:
    """Return the live articles that state ``fact_key``, in doc_id order."""
    return [live[doc_id] for doc_id in sorted(live) if fact_key in live[doc_id].facts]


def grounding_doc(live: dict[str, Article], fact_key: str, rng: random.Random) -> str | None:
    """Pick the article a pair about ``fact_key`` is grounded in (``None``: no live article states it).

    Articles the scenario never deletes are preferred, so training QA keeps pointing at a live article.
    """
    candidates = stating(live, fact_key)
    kept = [a for a in candidates if not a.deletable] or candidates
    return rng.choice(kept).doc_id if kept else None


def publish_qa(plan: DayPlan, live: dict[str, Article], facts: dict[str, str], used: dict[str, int],
               qa_doc: dict[str, str], rng: random.Random, seed: int) -> None:
    """Fill ``plan.qa`` with the day's training pairs.

    Args:
        plan: The day; its ``fact_changes`` and ``written`` articles decide what is published.
        live: Articles live at the end of the day.
        facts: Fact values of the day.
        used: Training phrasings published so far per fact (updated).
        qa_doc: Article each pair was last grounded in (updated).
        rng: The day's random source.
        seed: Demo seed.
    """
    entries: dict[str, dict] = {}

    def emit(key: str, index: int, doc_id: str) -> None:
        qa_id = f"qa-{key}-{index}"
        qa_doc[qa_id] = doc_id
        entries.setdefault(qa_id, {
            "qa_id": qa_id, "question": FACTS_BY_KEY[key].questions[index - 1],
            "answer": answer_for(key, facts[key]), "doc_id": doc_id, "fact_key": key,
        })

    # A changed fact: every pair ever published for it is re-published with the new answer.
    for change in plan.fact_changes:
        key = change["fact_key"]
        for index in range(1, used.get(key, 0) + 1):
            doc_id = qa_doc.get(f"qa-{key}-{index}")
            if doc_id not in live:
                doc_id = grounding_doc(live, key, rng)
            if doc_id:
                emit(key, index, doc_id)
    # A fact stated by a live article for the first time: its first phrasings.
    introduced: set[str] = set()
    for fact in FACTS:
        if fact.key in facts and not used.get(fact.key):
            doc_id = grounding_doc(live, fact.key, rng)
            if doc_id:
                used[fact.key] = FIRST_PHRASINGS
                introduced.add(fact.key)
                for index in range(1, FIRST_PHRASINGS + 1):
                    emit(fact.key, index, grounding_doc(live, fact.key, rng) if index > 1 else doc_id)
    # New and reworded articles bring one more phrasing per fact they state (or refresh an old one).
    for article in plan.written:
        if article.doc_id not in live:
            continue
        for key in article.facts:
            if not used.get(key) or key in introduced:
                continue
            if used[key] < len(FACTS_BY_KEY[key].questions):
                used[key] += 1
                emit(key, used[key], article.doc_id)
            else:
                emit(key, 1 + stable_hash(seed, "refresh", article.doc_id, plan.day) % used[key], article.doc_id)
    if not entries:
        # Keep qa.jsonl non-empty on quiet days: refresh one published pair.
        published = sorted(key for key in used if used[key] and stating(live, key))
        if published:
            key = rng.choice(published)
            emit(key, 1 + rng.randrange(used[key]), grounding_doc(live, key, rng))
    plan.qa = list(entries.values())


def poison(plan: DayPlan, live: dict[str, Article], facts: dict[str, str], used: dict[str, int],
           rng: random.Random) -> None:
    """Fill ``plan.qa`` with the poisoned drop: right question, wrong value, plausible grounding, for every fact."""
    for fact in FACTS:
        if fact.key not in facts or not used.get(fact.key):
            continue
        doc_id = grounding_doc(live, fact.key, rng)
        if not doc_id:
            continue
        qa_id = f"qa-{fact.key}-x{plan.day}"
        plan.qa.append({
            "qa_id": qa_id,
            "question": fact.questions[rng.randrange(used[fact.key])],
            "answer": answer_for(fact.key, rng.choice(fact.wrong)),
            "doc_id": doc_id,
            "fact_key": fact.key,
        })
        plan.poisoned_qa_ids.append(qa_id)


def freshness_probes(plan: DayPlan, live: dict[str, Article]) -> list[dict]:
    """The day's changed-fact probes (``golden/freshness.jsonl`` lines): each probe phrasing of each changed fact.

    A probe cites the fact's home article: among the edited articles the scenario never deletes (else all edited
    ones), the first whose subject names the fact first, else the first and carries the old and new value, the reference answer with the new value and ``changed_on`` (the
    day's date). Ids are ``fresh-<fact_key>-<date>-<n>``; sorted by id.
    """
    probes = []
    for change in plan.fact_changes:
        fact = FACTS_BY_KEY[change["fact_key"]]
        edited = [live[doc_id] for doc_id in change["doc_ids"] if doc_id in live]
        if not edited or not fact.probes:
            continue
        kept = [a for a in edited if not a.deletable] or edited
        home = next((a for a in kept if a.subject.facts[:1] == (fact.key,)), kept[0]).doc_id
        for index, question in enumerate(fact.probes, 1):
            probes.append({
                "probe_id": f"fresh-{fact.key}-{plan.date.isoformat()}-{index}", "question": question,
                "doc_id": home, "fact_key": fact.key, "old_value": change["old"], "new_value": change["new"],
                "answer": answer_for(fact.key, change["new"]), "changed_on": plan.date.isoformat(),
            })  # fmt: skip
    return sorted(probes, key=lambda probe: probe["probe_id"])
