"""The MLflow figures and the eval table are pure functions of their inputs: series, bars, panels and labels."""

from __future__ import annotations

import io

import pytest

from evertune.tuning.figures import drift_histograms, eval_table, loss_curve, metric_bars, text_lengths


def png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def bars(ax) -> list:
    from matplotlib.patches import Rectangle

    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_loss_curve_has_a_train_series_and_an_eval_series_when_given() -> None:
    figure = loss_curve([(2, 1.5), (1, 2.0), (3, 1.0)], [(3, 1.2)])
    (ax,) = figure.axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["train loss", "eval loss"]
    train = ax.get_lines()[0]
    assert list(train.get_xdata()) == [1, 2, 3] and list(train.get_ydata()) == [2.0, 1.5, 1.0]  # sorted by step
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", "loss")
    assert [line.get_label() for line in loss_curve([(1, 2.0)]).axes[0].get_lines()] == ["train loss"]
    assert png_bytes(figure).startswith(b"\x89PNG")


def test_loss_curves_are_deterministic() -> None:
    history = [(s, 3.0 / s) for s in range(1, 9)]
    assert png_bytes(loss_curve(history, [(8, 0.5)])) == png_bytes(loss_curve(history, [(8, 0.5)]))


def test_metric_bars_have_one_panel_per_metric_one_bar_per_model_and_the_ci_on_the_challenger() -> None:
    models = {"challenger": {"token_f1": 0.5, "exact_match": 0.2, "perplexity": 12.0},
              "champion": {"token_f1": 0.4, "exact_match": 0.25, "perplexity": 14.0},
              "base": {"token_f1": 0.1, "exact_match": 0.0, "perplexity": 30.0}}
    ci = {"token_f1": [0.05, 0.15], "exact_match": [-0.1, 0.0]}
    figure = metric_bars(models, ci)
    assert [ax.get_title() for ax in figure.axes] == ["token_f1", "exact_match", "perplexity"]
    for ax, metric in zip(figure.axes, ["token_f1", "exact_match", "perplexity"], strict=True):
        assert [round(b.get_height(), 6) for b in bars(ax)] == [models[m][metric] for m in models]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["challenger", "champion", "base"]
    token_f1 = figure.axes[0]
    assert "[+0.05, +0.15]" in token_f1.get_xlabel()
    (segments,) = [c for c in token_f1.collections if c.get_segments()]
    ((x0, low), (x1, high)) = segments.get_segments()[0]
    assert x0 == x1 == 0 and low == pytest.approx(0.45) and high == pytest.approx(0.55)  # champion + CI
    assert figure.axes[2].get_xlabel() == ""  # no CI for perplexity


def test_metric_bars_without_a_champion_show_the_challenger_only() -> None:
    figure = metric_bars({"challenger": {"token_f1": 0.3, "rougeL": 0.2}, "champion": None}, {})
    assert len(figure.axes) == 2
    assert all(len(bars(ax)) == 1 for ax in figure.axes)
    assert all(not ax.collections for ax in figure.axes)


def test_drift_histograms_have_a_panel_per_measure_and_shared_category_field() -> None:
    ref_texts = ["short text", "a somewhat longer text here", "mid size text"]
    cur_texts = ["much much longer current text " * 3, "another long one " * 4]
    tests = {"token_count_ks": {"statistic": 1.0, "p_value": 0.004}, "char_length_ks": {"skipped": True},
             "topic_chi2": {"statistic": 3.0, "p_value": 0.2}}
    figure = drift_histograms(text_lengths(ref_texts), text_lengths(cur_texts),
                              {"topic": ["sync", "sync", "export"], "only_ref": ["x", "y", "z"]},
                              {"topic": ["billing", "sync"]}, tests=tests, severity="moderate")
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["token_count (p = 0.004)", "char_length", "topic (p = 0.2)"]
    for ax in figure.axes[:2]:
        handles, labels = ax.get_legend_handles_labels()
        assert labels == ["reference (n=3)", "current (n=2)"]
        assert len(bars(ax)) == 40  # 20 shared bins per side
    topic = figure.axes[2]
    assert [t.get_text() for t in topic.get_xticklabels()] == ["billing", "export", "sync"]
    heights = [round(b.get_height(), 4) for b in bars(topic)]
    assert heights == [0.0, 0.3333, 0.6667, 0.5, 0.0, 0.5]  # reference shares, then current shares
    assert "severity moderate" in figure.get_suptitle()


def test_text_lengths_are_the_measures_of_the_drift_ks_tests() -> None:
    from evertune.tuning.drift import distribution_tests

    ref, cur = ["a b c", "dd ee"], ["x y z w", "q"]
    measured = distribution_tests(ref, cur, {}, {})
    assert measured["token_count_ks"]["reference_mean"] == sum(text_lengths(ref)["token_count"]) / 2
    assert measured["char_length_ks"]["current_mean"] == sum(text_lengths(cur)["char_length"]) / 2


def test_eval_table_has_one_row_per_item_and_both_answers_and_scores() -> None:
    items = [
        {"qa_id": "q1", "question": "Q1?", "reference": "R1", "challenger": "A1", "champion": "B1",
         "challenger_token_f1": 0.5, "challenger_exact_match": 0.0, "champion_token_f1": 0.25,
         "champion_exact_match": 0.0},
        {"qa_id": "q2", "question": "Q2?", "reference": "R2", "challenger": "A2", "champion": "B2",
         "challenger_token_f1": 1.0, "challenger_exact_match": 1.0, "champion_token_f1": 0.0,
         "champion_exact_match": 0.0},
    ]
    columns = eval_table(items)
    assert list(columns) == ["qa_id", "question", "reference", "challenger_answer", "champion_answer",
                             "challenger_token_f1", "champion_token_f1", "challenger_exact_match",
                             "champion_exact_match"]
    assert columns["challenger_answer"] == ["A1", "A2"] and columns["champion_token_f1"] == [0.25, 0.0]
    alone = eval_table([{"qa_id": "q1", "question": "Q", "reference": "R", "challenger": "A", "champion": None,
                         "challenger_token_f1": 0.5}])
    assert alone["champion_answer"] == [None] and "champion_token_f1" not in alone


def test_drift_histograms_draw_an_empty_side_without_bars() -> None:
    # A rerun on the champion's own data: every current text is shared with the reference and set aside.
    figure = drift_histograms(text_lengths(["a b", "c d e"]), text_lengths([]), {"topic": ["x", "y"]},
                              {"topic": []})
    token_count = figure.axes[0]
    assert token_count.get_legend_handles_labels()[1] == ["reference (n=2)", "current (n=0)"]
    assert len(bars(token_count)) == 20
    assert png_bytes(figure).startswith(b"\x89PNG")


def test_eval_table_adds_the_base_model_answer_and_scores() -> None:
    items = [{"qa_id": "q1", "question": "Q", "reference": "R", "challenger": "A", "champion": None, "base": "C",
              "challenger_token_f1": 0.5, "challenger_rougeL": 0.4, "base_token_f1": 0.1, "base_rougeL": 0.2}]
    columns = eval_table(items)
    assert list(columns) == ["qa_id", "question", "reference", "challenger_answer", "champion_answer", "base_answer",
                             "challenger_token_f1", "base_token_f1", "challenger_rougeL", "base_rougeL"]
    assert columns["base_answer"] == ["C"] and columns["base_token_f1"] == [0.1]
    figure = metric_bars({"challenger": {"token_f1": 0.5}, "champion": None, "base": {"token_f1": 0.1}})
    assert [label.get_text() for label in figure.axes[0].get_xticklabels()] == ["challenger", "base"]
