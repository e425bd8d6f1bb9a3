"""Context-grounded SFT rows: the served prompt with chunks of a pinned KB, the cited chunk always shown (or only
distractors and the "do not know" answer), the budget that never truncates an answer, and the end-of-turn ids.

The KB here is an in-memory keyword retriever over sentence chunks of the builder fixture's articles, and the
tokenizer a real in-memory word-level HF tokenizer with a ChatML template, so the tests run in about a second.
The real LanceDB path is exercised by tests/integration/test_warm_start.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_dataset import ARTICLES, PARAMS, all_rows, make_intervals

from evertune.config import DatasetParams, load_params, parse_params
from evertune.errors import ConfigError
from evertune.tuning.answer import answer_spec
from evertune.tuning.chat import completion_tokens, end_of_turn_ids, turn_suffix
from evertune.tuning.contexts import CITED, DISTRACTORS, ContextBuilder, KnowledgeBase, in_distractor_share
from evertune.tuning.dataset import build_sft_dataset, drift_inputs, write_sft_dataset
from evertune.tuning.train_data import to_sft_example

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
#: Chunks of documents no QA row cites: the distractors' pool.
OTHER = {"d8": "Themes change the colours of the editor. Dark mode follows the system setting.",
         "d9": "Templates start a note with headings. Choose a template from the New menu."}


def _chunks() -> list[dict]:
    chunks = []
    for doc_id, article in {**{d: ARTICLES[d] for d in ("d1", "d2")}, **OTHER}.items():
        for ordinal, sentence in enumerate(s.strip() + "." for s in article.split(". ") if s.strip()):
            text = sentence.replace("..", ".")
            chunks.append({"chunk_id": f"{doc_id}#{ordinal}", "doc_id": doc_id, "ordinal": ordinal,
                           "title": doc_id.upper(), "text": text, "body": text, "metadata": "{}"})
    return chunks


CHUNKS = _chunks()


def keyword_kb(miss: set[str] = frozenset()) -> KnowledgeBase:
    """Chunks ranked by words shared with the question (ties: corpus order); documents in ``miss`` never found."""

    def retrieve(question: str) -> list[dict]:
        words = set(question.lower().replace("?", " ").split())
        scored = [(-len(words & set(c["text"].lower().split())), i, c) for i, c in enumerate(CHUNKS)
                  if c["doc_id"] not in miss]
        return [c for _, _, c in sorted(scored, key=lambda t: t[:2])][:10]

    def chunks_of(doc_ids):
        return {d: [c for c in CHUNKS if c["doc_id"] == d] for d in doc_ids if any(c["doc_id"] == d for c in CHUNKS)}

    return KnowledgeBase("kb_chunks_test@v3", retrieve, chunks_of)


def make_tokenizer(text: str):
    """A word-level HF tokenizer over the words of ``text`` (others are ``<unk>``) with a ChatML template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set(text.split()) | {"\n"}))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                  eos_token="<|im_end|>", bos_token="<|im_start|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]})
    tok.chat_template = CHATML
    return tok


def memory_contexts(params, articles: dict[str, str], kb_version: str = "kb_chunks_test@v1"):
    """A ``steps._training_contexts`` stand-in for unit tests: sentence chunks of ``articles``, keyword search."""
    chunks = [{"chunk_id": f"{doc}#{i}", "doc_id": doc, "ordinal": i, "title": doc, "text": s, "body": s}
              for doc, text in articles.items() for i, s in enumerate(text.split(". "))]

    def retrieve(question: str) -> list[dict]:
        words = set(question.lower().split())
        return sorted(chunks, key=lambda c: -len(words & set(c["text"].lower().split())))[:8]

    def chunks_of(doc_ids):
        return {d: [c for c in chunks if c["doc_id"] == d] for d in doc_ids}

    kb = KnowledgeBase(kb_version, retrieve, chunks_of)
    tok = make_tokenizer(" ".join(articles.values()))
    return lambda: ContextBuilder(kb, tok, answer_spec(params), params.dataset.context, k=3)


@pytest.fixture
def intervals(tmp_path: Path) -> list[Path]:
    return make_intervals(tmp_path)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(" ".join([*ARTICLES.values(), *OTHER.values(),
                                    load_params().dataset.context.unknown_answer]))


def builder(tokenizer, *, fraction: float = 0.0, max_length: int = 400, miss: set[str] = frozenset(),
            params: DatasetParams = PARAMS) -> ContextBuilder:
    context = params.context.model_copy(update={"distractor_fraction": fraction})
    spec = replace(answer_spec(load_params()), system_prompt=params.system_prompt, max_length=max_length)
    return ContextBuilder(keyword_kb(miss), tokenizer, spec, context, k=3, fmt=params.format)


def test_every_prompt_is_the_served_template_with_the_cited_chunk(intervals: list[Path], tokenizer) -> None:
    ds = build_sft_dataset(intervals, PARAMS, golden_qa_ids=set(), deleted_doc_ids=set(),
                           contexts=lambda: builder(tokenizer))
    rows = all_rows(ds)
    assert sorted(rows) == ["q1", "q11", "q2", "q4", "q6"]
    for row in rows.values():
        system, user, assistant = row["messages"]
        assert user["content"].startswith("Answer the question using the help-center excerpts below.")
        assert user["content"].endswith(f"Question: {row['question']}")
        assert assistant["content"] == row["answer"] and row["context"] == CITED
        assert row["doc_id"] in row["context_doc_ids"]
        assert (row["kb_version"], row["template"]) == ("kb_chunks_test@v3", "rag-v1")
    # q2's answer ("Open Settings > Billing > Plan.") is backed by d2's first sentence, which is shown.
    assert "open Settings > Billing > Plan" in rows["q2"]["messages"][1]["content"]
    assert ds.stats["context"]["kb_version"] == "kb_chunks_test@v3"
    assert ds.stats["counts"]["context_cited"] == 5


def test_a_cited_chunk_that_retrieval_misses_is_put_first(intervals: list[Path], tokenizer) -> None:
    ds = build_sft_dataset(intervals, PARAMS, golden_qa_ids=set(), deleted_doc_ids=set(),
                           contexts=lambda: builder(tokenizer, miss={"d2"}))
    row = all_rows(ds)["q2"]
    assert row["context_doc_ids"][0] == "d2" and row["context_doc_ids"].count("d2") == 1
    assert "[1] D2\nTo change your plan, open Settings > Billing > Plan" in row["messages"][1]["content"]
    assert ds.stats["counts"]["context_cited_inserted"] == 4  # every d2 question (q2, q4, q6, q11)


def test_distractor_share_shows_other_documents_and_answers_unknown(intervals: list[Path], tokenizer) -> None:
    unknown = load_params().dataset.context.unknown_answer
    ds = build_sft_dataset(intervals, PARAMS, golden_qa_ids=set(), deleted_doc_ids=set(),
                           contexts=lambda: builder(tokenizer, fraction=0.5))
    rows = all_rows(ds)
    for qa_id, row in rows.items():
        if in_distractor_share(qa_id, 0.5):
            assert row["context"] == DISTRACTORS and row["messages"][-1]["content"] == unknown
            assert row["doc_id"] not in row["context_doc_ids"] and row["context_doc_ids"]
            assert row["answer"] not in row["messages"][1]["content"]
        else:
            assert row["context"] == CITED and row["messages"][-1]["content"] == row["answer"]
    assert {row["context"] for row in rows.values()} == {CITED, DISTRACTORS}
    # The share follows the id alone: stable as rows are added, close to the fraction.
    ids = [f"qa-{i}" for i in range(4000)]
    share = sum(in_distractor_share(i, 0.15) for i in ids) / len(ids)
    assert 0.13 < share < 0.17
    assert [in_distractor_share(i, 0.15) for i in ids[:100]] == [in_distractor_share(i, 0.15) for i in ids][:100]
    # Drift compares questions and answers, never the contexts.
    texts, _ = drift_inputs(rows.values())
    assert all("excerpts" not in text for text in texts)


def test_no_answer_is_truncated_whatever_the_budget(intervals: list[Path], tokenizer, tmp_path: Path) -> None:
    for max_length, fraction in ((85, 0.0), (100, 0.5), (400, 0.5)):
        ds = build_sft_dataset(intervals, PARAMS, golden_qa_ids=set(), deleted_doc_ids=set(),
                               contexts=lambda m=max_length, f=fraction: builder(tokenizer, fraction=f, max_length=m))
        written = write_sft_dataset(ds, tmp_path / f"len{max_length}")
        shown = []
        for line in (written.path / "train.jsonl").read_text().splitlines() + \
                (written.path / "validation.jsonl").read_text().splitlines():
            row = json.loads(line)
            example = to_sft_example(row, completion_only=True)  # what TRL receives, tokenized as TRL does
            ids = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=True)
            ids = list(ids) if isinstance(ids, list) else list(ids["input_ids"])
            answer = row["messages"][-1]["content"]
            tail = tokenizer(answer + turn_suffix(tokenizer), add_special_tokens=False)["input_ids"]
            assert len(ids) <= max_length, (max_length, row["id"], len(ids))
            assert ids[-len(tail):] == tail and tokenizer.eos_token_id in ids[-len(tail):]
            shown.append(len(row["context_doc_ids"]))
        if max_length == 85:
            assert max(shown) < 3  # the budget dropped chunks (k=3), lowest-ranked first
    # A budget too small for any cited chunk drops the examples, counted, rather than truncating them.
    tight = builder(tokenizer, max_length=30)
    tight.prepare(["d1"])
    assert tight.fields("q1", "How do I export my notes?", "Use File > Export.", "d1") is None
    assert tight.counts["context_dropped_too_long"] == 1


def test_rows_are_byte_deterministic(intervals: list[Path], tokenizer, tmp_path: Path) -> None:
    make = lambda: build_sft_dataset(intervals, PARAMS, golden_qa_ids=set(), deleted_doc_ids=set(),  # noqa: E731
                                     contexts=lambda: builder(tokenizer, fraction=0.5))
    first, second = write_sft_dataset(make(), tmp_path / "a"), write_sft_dataset(make(), tmp_path / "b")
    assert first.fingerprint == second.fingerprint


def test_end_of_turn_ids_include_the_chat_templates_token(tokenizer) -> None:
    assert turn_suffix(tokenizer) == "<|im_end|>\n"
    assert completion_tokens(tokenizer, "Use File > Export.") == 5 + 1  # this tokenizer drops the newline
    tokenizer.eos_token = "<|endoftext|>"
    try:
        ids = end_of_turn_ids(tokenizer, [7])
        assert ids == [tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                       tokenizer.convert_tokens_to_ids("<|im_end|>"), 7]
    finally:
        tokenizer.eos_token = "<|im_end|>"


def test_context_params_are_validated() -> None:
    data = load_params().to_dict()
    for bad in ({"distractor_fraction": 1.0}, {"distractor_fraction": -0.1}, {"unknown_answer": ""}, {"k": 0},
                {"bogus": 1}):
        broken = json.loads(json.dumps(data))
        broken["dataset"]["context"].update(bad)
        with pytest.raises(ConfigError):
            parse_params(broken, source="test")
    for removed in ("include_documents", "document_max_chars"):  # one way puts articles into prompts
        broken = json.loads(json.dumps(data))
        broken["dataset"][removed] = 1
        with pytest.raises(ConfigError):
            parse_params(broken, source="test")
