"""The plots and tables a tuning run logs to MLflow: loss curve, metric bars with CIs, drift histograms, eval table.

Every function here but the two ``log_*`` ones at the end is pure: the same inputs give the same figure (or
columns), nothing is read or written. Figures are standalone ``matplotlib.figure.Figure`` objects, drawn with the Agg canvas and never registered
with ``pyplot``, so no global backend or figure state is touched and nothing has to be closed.
:func:`evertune.tuning.tracking.log_figure` / :func:`~evertune.tuning.tracking.log_table` log them.

What is logged where (artifact paths of the tuning attempt's MLflow run):

* ``train/loss_curve.png`` (:func:`loss_curve`): train loss per logged step, eval loss where measured;
* ``eval/metric_bars.png`` (:func:`metric_bars`): each metric for challenger, champion (and base when given),
  with the paired-bootstrap CI of challenger - champion;
* ``drift/histograms.png`` (:func:`drift_histograms`): the length distributions and category mixes the drift
  tests compared;
* ``eval/items.json`` (:func:`eval_table`): one row per golden question with every model's answer and scores.

:func:`log_drift_histograms` and :func:`log_evaluation` are what the tuning steps call: build and log. MLflow
errors propagate (the artifacts are part of the run's record; the task is retried).

matplotlib is a heavy import: every function imports it when called.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.tracking import MlflowClient

#: Colour per model in :func:`metric_bars` (others cycle through matplotlib's defaults).
MODEL_COLOURS = {"challenger": "#1f77b4", "champion": "#ff7f0e", "base": "#7f7f7f"}
#: Colours of the reference and current side in :func:`drift_histograms`.
SIDE_COLOURS = {"reference": "#ff7f0e", "current": "#1f77b4"}


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def loss_curve(train: Sequence[tuple[int, float]], evaluation: Sequence[tuple[int, float]] = ()) -> Figure:
    """Training loss per step as a line, eval loss as markers.

    Args:
        train: ``(step, loss)`` of every logged training step (``TrainResult.loss_history``).
        evaluation: ``(step, eval_loss)`` where the eval set was scored (none: no eval series).

    Returns:
        One axes with a ``train loss`` line and, when ``evaluation`` is given, an ``eval loss`` series.
    """
    figure = _figure(6.4, 4.0)
    ax = figure.add_subplot()
    train = sorted(train)
    ax.plot([s for s, _ in train], [v for _, v in train], marker=".", label="train loss")
    if evaluation:
        evaluation = sorted(evaluation)
        ax.plot([s for s, _ in evaluation], [v for _, v in evaluation], marker="o", linestyle="--",
                label="eval loss")  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return figure


def metric_bars(
    models: Mapping[str, Mapping[str, float] | None],
    ci: Mapping[str, Sequence[float]] | None = None,
    *,
    candidate: str = "challenger",
    reference: str = "champion",
    level: float = 0.95,
) -> Figure:
    """One panel per metric, one bar per model; the CI of the candidate's gain drawn on the candidate's bar.

    ``ci[metric]`` is the paired-bootstrap interval of ``candidate - reference`` (``evaluate_candidate``'s
    ``ci``); it is drawn as a black interval at ``reference value + (low, high)`` over the candidate's bar, so
    the bar's top lies inside it and a reference bar below its lower end means a significant gain.

    Args:
        models: Metric values per model, e.g. ``{"challenger": {...}, "champion": {...}, "base": {...}}``;
            ``None`` entries (no champion yet) are left out. Metrics come in the order of the first model.
        ci: ``(low, high)`` per metric; metrics without one get no interval.
        candidate: The model whose gain the intervals describe.
        reference: The model it is compared with.
        level: Confidence level, for the panel labels (``1 - evaluate.ci_alpha``).

    Returns:
        A figure with one axes per metric, each holding one bar per model (labelled by model name).
    """
    present = {name: values for name, values in models.items() if values is not None}
    metrics: list[str] = []
    for values in present.values():
        metrics.extend(m for m in values if m not in metrics)
    figure = _figure(max(3.0, 2.8 * len(metrics)), 3.6)
    axes = figure.subplots(1, max(1, len(metrics)), squeeze=False)[0]
    names = list(present)
    for ax, metric in zip(axes, metrics, strict=False):
        heights = [float(present[name].get(metric, float("nan"))) for name in names]
        colours = [MODEL_COLOURS.get(name, f"C{i}") for i, name in enumerate(names)]
        ax.bar(range(len(names)), heights, color=colours, tick_label=names)
        interval = (ci or {}).get(metric)
        if interval is not None and candidate in present and reference in present:
            base = float(present[reference][metric])
            x = names.index(candidate)
            ax.errorbar([x], [base + (interval[0] + interval[1]) / 2], yerr=[(interval[1] - interval[0]) / 2],
                        fmt="none", ecolor="black", capsize=6, label=f"{level:.0%} CI of gain")  # fmt: skip
            ax.set_xlabel(f"gain {level:.0%} CI [{interval[0]:+.3g}, {interval[1]:+.3g}]")
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    figure.suptitle(f"Evaluation on the golden set (intervals: {level:.0%} paired-bootstrap CI of {candidate} - "
                    f"{reference}, drawn at {reference} + CI)" if ci else "Evaluation on the golden set")
    return figure


def text_lengths(texts: Sequence[str]) -> dict[str, list[int]]:
    """The length measures the drift tests compare: ``token_count`` (whitespace words) and ``char_length``."""
    return {"token_count": [len(t.split()) for t in texts], "char_length": [len(t) for t in texts]}


def drift_histograms(
    reference: Mapping[str, Sequence[float]],
    current: Mapping[str, Sequence[float]],
    reference_categories: Mapping[str, Sequence[str]] | None = None,
    current_categories: Mapping[str, Sequence[str]] | None = None,
    *,
    tests: Mapping[str, Mapping[str, Any]] | None = None,
    severity: str | None = None,
) -> Figure:
    """Reference vs current distributions: a histogram per numeric measure, share bars per categorical field.

    Args:
        reference: Values per measure on the reference (champion's data) side, e.g. :func:`text_lengths`.
        current: The same measures on the current side (the texts the tests compared).
        reference_categories: Categorical fields of the reference side (``{"topic": [...]}``).
        current_categories: The same fields of the current side; fields on both sides get a panel.
        tests: ``DriftReport.tests``: ``<measure>_ks`` / ``<field>_chi2`` p-values go into the panel titles.
        severity: ``DriftReport.severity``, for the figure title.

    Returns:
        One axes per measure present on both sides (two histograms on shared bins, ``reference`` and
        ``current``, as densities), then one per shared categorical field (grouped bars of shares).
    """
    import numpy as np

    tests = tests or {}
    measures = [m for m in reference if m in current]
    fields = sorted(set(reference_categories or {}) & set(current_categories or {}))
    panels = len(measures) + len(fields)
    figure = _figure(max(4.0, 4.2 * panels), 3.6)
    axes = figure.subplots(1, max(1, panels), squeeze=False)[0]
    for ax, measure in zip(axes, measures, strict=False):
        ref, cur = np.asarray(reference[measure], dtype=float), np.asarray(current[measure], dtype=float)
        pooled = np.concatenate([ref, cur])
        bins = np.histogram_bin_edges(pooled, bins=20) if pooled.size else 10
        for side, values in (("reference", ref), ("current", cur)):
            label = f"{side} (n={values.size})"
            if values.size:
                ax.hist(values, bins=bins, density=True, alpha=0.5, color=SIDE_COLOURS[side], label=label)
            else:  # e.g. every current text also occurs in the reference: nothing new to compare
                ax.plot([], [], color=SIDE_COLOURS[side], label=label)
        ax.set_title(_panel_title(measure, tests.get(f"{measure}_ks")))
        ax.set_xlabel(measure)
        ax.set_ylabel("density")
        ax.legend()
    for ax, name in zip(axes[len(measures):], fields, strict=False):
        ref_share = _shares(reference_categories[name])
        cur_share = _shares(current_categories[name])
        categories = sorted(set(ref_share) | set(cur_share))
        x = np.arange(len(categories))
        ax.bar(x - 0.2, [ref_share.get(c, 0.0) for c in categories], width=0.4, color=SIDE_COLOURS["reference"],
               label="reference")  # fmt: skip
        ax.bar(x + 0.2, [cur_share.get(c, 0.0) for c in categories], width=0.4, color=SIDE_COLOURS["current"],
               label="current")  # fmt: skip
        ax.set_xticks(x, categories, rotation=45, ha="right")
        ax.set_title(_panel_title(name, tests.get(f"{name}_chi2")))
        ax.set_ylabel("share")
        ax.legend()
    figure.suptitle(f"Training-data drift vs the champion's data{f' (severity {severity})' if severity else ''}")
    return figure


def _shares(values: Sequence[str]) -> dict[str, float]:
    counts = Counter("" if v is None else str(v) for v in values)
    total = sum(counts.values())
    return {k: n / total for k, n in counts.items()} if total else {}


def _panel_title(name: str, test: Mapping[str, Any] | None) -> str:
    if not test or test.get("skipped") or "p_value" not in test:
        return name
    return f"{name} (p = {float(test['p_value']):.3g})"


def eval_table(items: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The per-item evaluation as MLflow table columns, one row per golden question.

    Args:
        items: ``evaluate_candidate``'s items: ``qa_id``, ``question``, ``reference``, ``challenger`` and
            ``champion`` answers (``None`` without a champion), the untuned ``base`` model's answer when it was
            evaluated, and ``challenger_<metric>`` / ``champion_<metric>`` / ``base_<metric>`` per-item scores.

    Returns:
        Columns ``qa_id``, ``question``, ``reference``, ``challenger_answer``, ``champion_answer`` (and
        ``base_answer`` when any item has a ``base`` key), then every score column: the ``token_f1`` ones
        first, then challenger, champion and base columns, each in name order.
    """
    models = ("challenger", "champion", "base")
    score_keys: list[str] = []
    for item in items:
        score_keys.extend(k for k in item if k.startswith(tuple(f"{m}_" for m in models)) and k not in score_keys)
    score_keys.sort(key=lambda k: (not k.endswith("_token_f1"), models.index(k.split("_", 1)[0]), k))
    columns: dict[str, list[Any]] = {
        "qa_id": [item.get("qa_id") for item in items],
        "question": [item.get("question") for item in items],
        "reference": [item.get("reference") for item in items],
        "challenger_answer": [item.get("challenger") for item in items],
        "champion_answer": [item.get("champion") for item in items],
    }
    if any("base" in item for item in items):
        columns["base_answer"] = [item.get("base") for item in items]
    for key in score_keys:
        columns[key] = [item.get(key) for item in items]
    return columns


def log_drift_histograms(
    client: MlflowClient,
    run_id: str,
    reference: tuple[Sequence[str], Mapping[str, Sequence[str]]],
    current: tuple[Sequence[str], Mapping[str, Sequence[str]]],
    report: Mapping[str, Any],
) -> None:
    """Log ``drift/histograms.png`` for a drift report: the distributions its tests compared.

    Args:
        client: The tracking client.
        run_id: The tuning run.
        reference: ``(texts, categories)`` of the champion's training data.
        current: ``(texts, categories)`` of the new training data, as given to the drift check; texts the
            reference also holds are set aside here when the report says it did (``n_shared``).
        report: ``DriftReport.to_dict()``.
    """
    from evertune.tuning.drift import set_aside_shared
    from evertune.tuning.tracking import log_figure

    (ref_texts, ref_cats), (cur_texts, cur_cats) = reference, current
    if report.get("n_shared"):
        cur_texts, cur_cats, _ = set_aside_shared(ref_texts, cur_texts, cur_cats)
    figure = drift_histograms(text_lengths(ref_texts), text_lengths(cur_texts), ref_cats, cur_cats,
                              tests=report.get("tests"), severity=report.get("severity"))  # fmt: skip
    log_figure(client, run_id, figure, "drift/histograms.png")


def log_evaluation(
    client: MlflowClient,
    run_id: str,
    items: Sequence[Mapping[str, Any]],
    models: Mapping[str, Mapping[str, float] | None],
    ci: Mapping[str, Sequence[float]] | None,
    level: float,
) -> None:
    """Log the browsable table ``eval/items.json`` (:func:`eval_table`) and ``eval/metric_bars.png``
    (:func:`metric_bars` of ``models`` with ``ci`` at confidence ``level``)."""
    from evertune.tuning.tracking import log_figure, log_table

    log_table(client, run_id, eval_table(items), "eval/items.json")
    log_figure(client, run_id, metric_bars(models, ci, level=level), "eval/metric_bars.png")


__all__ = [
    "drift_histograms",
    "eval_table",
    "log_drift_histograms",
    "log_evaluation",
    "loss_curve",
    "metric_bars",
    "text_lengths",
]
