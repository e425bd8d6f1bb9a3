"""Training-data drift: does the new training data differ from the data the champion was trained on?

Two families of evidence:

* **Embedding drift** (``drift.method``):
  ``domain_classifier`` trains a logistic regression to tell reference from current embeddings; its
  cross-validated ROC AUC is the effect size (0.5 = indistinguishable) and a label-permutation test
  (the procedure of ``sklearn.model_selection.permutation_test_score``, ``drift.n_permutations``) gives the p-value.
  ``mmd`` computes the unbiased squared Maximum Mean Discrepancy with an RBF kernel (median-heuristic bandwidth)
  and a permutation p-value.
* **Distribution statistics** (scipy): two-sample KS tests on token counts and character lengths, and a
  chi-square test of homogeneity on each categorical field given (topic, source, ...).

Current texts that also occur verbatim in the reference are set aside first (a rolling training window mostly
repeats the champion's data), so the tests compare what is new against the reference.

Severity rule (``p`` = the embedding test's permutation p-value):

* ``severe``   -- p < ``drift.p_value`` AND effect > threshold (AUC > ``drift.max_auc``, or MMD^2 > ``drift.max_mmd``);
* ``moderate`` -- not severe, but the embedding test or any distribution test has p < ``drift.p_value``;
* ``none``     -- otherwise (also when every test was skipped for lack of samples; the reasons say so).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from evertune.config import DriftParams

EmbedFn = Callable[[list[str]], Any]
_SEVERITY_LEVEL = {"none": 0, "moderate": 1, "severe": 2}
_CLASSIFIER_DIMS = 32  # principal components fed to the domain classifier


@dataclass
class DriftReport:
    """Everything :func:`check_drift` measured.

    Attributes:
        method: ``domain_classifier`` or ``mmd``.
        severity: ``none``, ``moderate`` or ``severe`` (see the module docstring for the rule).
        reasons: Human-readable sentences explaining the severity, one per test.
        n_reference: Texts on the reference side (before subsampling).
        n_current: Texts on the current side as given (before removing shared texts and subsampling).
        embedding: The embedding test: ``skipped``, ``n_used_reference``, ``n_used_current``, and ``auc``,
            ``auc_fold_std`` (domain classifier) or ``mmd2``, ``gamma`` (MMD), plus ``p_value`` and
            ``n_permutations``.
        tests: Distribution tests by name (``token_count_ks``, ``char_length_ks``, ``<field>_chi2``), each a dict
            with ``statistic``, ``p_value`` and details, or ``skipped`` with a reason.
        thresholds: The thresholds applied (``p_value``, ``max_auc``, ``max_mmd``).
        n_shared: Current texts set aside because the reference holds the same text (``exclude_shared``).
    """

    method: str
    severity: str
    reasons: list[str]
    n_reference: int
    n_current: int
    embedding: dict[str, Any] = field(default_factory=dict)
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    n_shared: int = 0

    @property
    def severity_level(self) -> int:
        """0, 1, 2 for none, moderate, severe (a metric-friendly form)."""
        return _SEVERITY_LEVEL[self.severity]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (for ``mlflow.log_dict`` or XCom)."""
        return asdict(self)

    def to_mlflow(self) -> dict[str, dict[str, Any]]:
        """Flat ``{"metrics": {...}, "params": {...}}`` for ``mlflow.log_metrics`` / ``mlflow.log_params``.

        Metrics are numbers only (statistics, p-values, sizes, severity level); params hold the method, the
        thresholds applied and the severity label.
        """
        metrics: dict[str, float] = {
            "drift_severity_level": float(self.severity_level),
            "drift_n_reference": float(self.n_reference),
            "drift_n_current": float(self.n_current),
            "drift_n_shared": float(self.n_shared),
        }
        for key, value in sorted(self.embedding.items()):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            metrics[f"drift_embedding_{key}"] = float(value)
        for name, test in sorted(self.tests.items()):
            for key in ("statistic", "p_value"):
                if isinstance(test.get(key), (int, float)):
                    metrics[f"drift_{name}_{key}"] = float(test[key])
        params: dict[str, Any] = {"drift_method": self.method, "drift_severity": self.severity,
                                  "drift_embedding_skipped": bool(self.embedding.get("skipped", True))}
        for key, value in sorted(self.thresholds.items()):
            params[f"drift_threshold_{key}"] = value
        return {"metrics": metrics, "params": params}


def _subsample(array: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    if len(array) <= limit:
        return array
    keep = np.sort(rng.choice(len(array), size=limit, replace=False))
    return array[keep]


def _roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic (ties count half); equals sklearn's roc_auc_score.

    Written out because roc_auc_score's input validation dominated the permutation loop's run time.
    """
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    positives = int(y.sum())
    negatives = len(y) - positives
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _cv_auc(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """ROC AUC of a logistic regression per stratified fold (held-out fold scored by the decision function)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    scores = []
    for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
        # liblinear: several times faster than lbfgs on a few hundred rows x 32 features.
        model = LogisticRegression(C=1.0, solver="liblinear", max_iter=1000).fit(x[train], y[train])
        scores.append(_roc_auc(y[test], model.decision_function(x[test])))
    return np.asarray(scores)


def _domain_classifier(ref: np.ndarray, cur: np.ndarray, params: DriftParams, seed: int) -> dict[str, Any]:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    x = np.vstack([ref, cur])
    # Reduce to the top principal components of the pooled sample, then standardise. Both steps are label-free,
    # so the permutation test stays valid; the classifier gets fewer, denser features (less overfitting on a few
    # hundred texts) and each of the n_permutations x folds fits is much cheaper than on 384 raw dimensions.
    dims = min(_CLASSIFIER_DIMS, x.shape[1], x.shape[0] - 1)
    if dims < x.shape[1]:
        x = PCA(n_components=dims, random_state=seed).fit_transform(x)
    x = StandardScaler().fit_transform(x)
    y = np.concatenate([np.zeros(len(ref), dtype=int), np.ones(len(cur), dtype=int)])
    folds = int(min(5, len(ref), len(cur)))
    fold_scores = _cv_auc(x, y, folds, seed)
    auc = float(fold_scores.mean())
    # Label-permutation test, the same procedure as sklearn's permutation_test_score (shuffle labels, redo the
    # stratified CV, p = (#null >= observed + 1) / (n + 1)), written out to skip its per-fit clone/scorer overhead
    # (about 3x faster here).
    rng = np.random.default_rng(seed)
    null = np.array([_cv_auc(x, rng.permutation(y), folds, seed).mean() for _ in range(params.n_permutations)])
    p_value = (int((null >= auc).sum()) + 1) / (params.n_permutations + 1)
    return {
        "auc": auc,
        "auc_fold_std": float(fold_scores.std()),
        "null_auc_mean": float(null.mean()),
        "null_auc_p99": float(np.quantile(null, 0.99)),
        "p_value": float(p_value),
        "n_permutations": int(params.n_permutations),
        "cv_folds": folds,
        "classifier_dims": int(x.shape[1]),
    }


def _mmd2_unbiased(kernel: np.ndarray, row_sums: np.ndarray, diagonal: np.ndarray, is_x: np.ndarray) -> float:
    """Unbiased MMD^2 for the split ``is_x`` from block sums, with one matrix-vector product (no block copies)."""
    a = is_x.astype(np.float64)
    n, m = a.sum(), len(a) - a.sum()
    k_a = kernel @ a
    sum_xx = a @ k_a
    sum_xy = (row_sums - k_a) @ a  # sum over i in X, j in Y of K_ij
    sum_yy = row_sums.sum() - 2 * sum_xy - sum_xx
    diag_x = diagonal @ a
    diag_y = diagonal.sum() - diag_x
    term_x = (sum_xx - diag_x) / (n * (n - 1))
    term_y = (sum_yy - diag_y) / (m * (m - 1))
    return float(term_x + term_y - 2.0 * sum_xy / (n * m))


def _mmd(ref: np.ndarray, cur: np.ndarray, params: DriftParams, seed: int) -> dict[str, Any]:
    from sklearn.metrics.pairwise import euclidean_distances, rbf_kernel

    z = np.vstack([ref, cur]).astype(np.float64)
    # Median heuristic: gamma = 1 / median squared pairwise distance (on at most 1000 points).
    probe = z[np.random.default_rng(seed).permutation(len(z))[:1000]]
    sq = euclidean_distances(probe, squared=True)
    median = float(np.median(sq[np.triu_indices_from(sq, k=1)]))
    gamma = 1.0 / median if median > 0 else 1.0
    kernel = rbf_kernel(z, gamma=gamma)
    is_x = np.zeros(len(z), dtype=bool)
    is_x[: len(ref)] = True
    row_sums, diagonal = kernel.sum(axis=1), np.diag(kernel).copy()
    observed = _mmd2_unbiased(kernel, row_sums, diagonal, is_x)
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(params.n_permutations):
        if _mmd2_unbiased(kernel, row_sums, diagonal, rng.permutation(is_x)) >= observed:
            exceed += 1
    return {
        "mmd2": observed,
        "gamma": gamma,
        "p_value": (exceed + 1) / (params.n_permutations + 1),
        "n_permutations": int(params.n_permutations),
    }


def _ks(name: str, ref: Sequence[float], cur: Sequence[float]) -> dict[str, Any]:
    from scipy.stats import ks_2samp

    if len(ref) == 0 or len(cur) == 0:
        return {"skipped": True, "reason": f"{name}: a side is empty"}
    with warnings.catch_warnings():
        # Small samples with ties: scipy falls back from the exact to the asymptotic p-value and says so.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = ks_2samp(np.asarray(ref, dtype=float), np.asarray(cur, dtype=float))
    return {
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
        "reference_mean": float(np.mean(ref)),
        "current_mean": float(np.mean(cur)),
    }


def _chi2(name: str, ref: Sequence[str], cur: Sequence[str]) -> dict[str, Any]:
    from scipy.stats import chi2_contingency

    ref_counts = Counter("" if v is None else str(v) for v in ref)
    cur_counts = Counter("" if v is None else str(v) for v in cur)
    categories = sorted(set(ref_counts) | set(cur_counts))
    if not ref or not cur or len(categories) < 2:
        return {"skipped": True, "reason": f"{name}: needs both sides non-empty and at least 2 categories"}
    table = np.array([[ref_counts[c] for c in categories], [cur_counts[c] for c in categories]])
    statistic, p_value, dof, expected = chi2_contingency(table)
    return {
        "statistic": float(statistic),
        "p_value": float(p_value),
        "dof": int(dof),
        "min_expected": float(expected.min()),  # < 5: the chi-square approximation is rough
        "reference_mix": {c: round(ref_counts[c] / len(ref), 6) for c in categories},
        "current_mix": {c: round(cur_counts[c] / len(cur), 6) for c in categories},
    }


def check_drift(
    reference_texts: Sequence[str],
    current_texts: Sequence[str],
    embed_fn: EmbedFn,
    params: DriftParams,
    seed: int,
    *,
    reference_categories: Mapping[str, Sequence[str]] | None = None,
    current_categories: Mapping[str, Sequence[str]] | None = None,
    exclude_shared: bool = True,
) -> DriftReport:
    """Compare current training texts with the reference (champion's) training texts.

    Args:
        reference_texts: Texts the champion was trained on (e.g. question + answer per example).
        current_texts: Texts of the new training set.
        embed_fn: ``list[str] -> array (n, d)``; in production
            ``load_embedder(load_params().embed).encode``, in tests any cheap deterministic function.
        params: The ``drift`` section.
        seed: Seeds subsampling, CV shuffling and permutations (same inputs + seed -> same report).
        reference_categories: Optional categorical fields per reference text, e.g. ``{"topic": [...]}``;
            each field present on both sides gets a chi-square test of the mix.
        current_categories: The same fields for the current texts.
        exclude_shared: Set aside current texts that also occur (verbatim) in the reference, so only the new
            texts are compared. A rolling training window mostly repeats the champion's data; exact twins on
            both sides carry no drift, break the independence the tests assume and let the classifier
            memorise pairs (which drags its AUC below 0.5).

    Returns:
        The report; severity follows the rule in the module docstring.

    Raises:
        ValueError: A category list does not align with its texts, or ``embed_fn`` returned a wrong shape.
    """
    reference_texts, current_texts = list(reference_texts), list(current_texts)
    reference_categories = dict(reference_categories or {})
    current_categories = dict(current_categories or {})
    check_category_lengths("reference", reference_texts, reference_categories)
    check_category_lengths("current", current_texts, current_categories)

    reasons: list[str] = []
    n_current_given, n_shared = len(current_texts), 0
    if exclude_shared:
        current_texts, current_categories, n_shared = set_aside_shared(reference_texts, current_texts,
                                                                       current_categories)
        if n_shared:
            reasons.append(f"{n_shared} of {n_current_given} current texts also occur in the reference and were "
                           f"set aside: the tests compare the {len(current_texts)} new texts with the reference")
    embedding = embedding_test(reference_texts, current_texts, embed_fn, params, seed)
    tests = distribution_tests(reference_texts, current_texts, reference_categories, current_categories)
    severity, test_reasons = classify_severity(embedding, tests, params)
    reasons.extend(test_reasons)
    reasons.insert(0, f"severity {severity}: severe = embedding p < p_value and effect above its threshold; "
                      f"moderate = any test with p < p_value")
    return DriftReport(
        method=params.method,
        severity=severity,
        reasons=reasons,
        n_reference=len(reference_texts),
        n_current=n_current_given,
        embedding=embedding,
        tests=tests,
        thresholds={"p_value": params.p_value, "max_auc": params.max_auc, "max_mmd": params.max_mmd},
        n_shared=n_shared,
    )


def check_category_lengths(side: str, texts: Sequence[str], categories: Mapping[str, Sequence[str]]) -> None:
    """Check that every categorical field holds one value per text.

    Raises:
        ValueError: A field's length differs from the number of texts.
    """
    for name, values in categories.items():
        if len(values) != len(texts):
            raise ValueError(f"{side} category {name!r} has {len(values)} values for {len(texts)} texts")


def set_aside_shared(reference_texts: Sequence[str], current_texts: Sequence[str],
                     current_categories: Mapping[str, Sequence[str]]) -> tuple[list[str], dict[str, list[str]], int]:
    """Drop current texts that also occur verbatim in the reference (with their category values).

    Returns:
        The kept current texts, their category values, and how many were set aside.
    """
    seen = set(reference_texts)
    keep = [i for i, text in enumerate(current_texts) if text not in seen]
    kept_texts = [current_texts[i] for i in keep]
    kept_categories = {name: [values[i] for i in keep] for name, values in current_categories.items()}
    return kept_texts, kept_categories, len(current_texts) - len(keep)


def embedding_test(reference_texts: Sequence[str], current_texts: Sequence[str], embed_fn: EmbedFn,
                   params: DriftParams, seed: int) -> dict[str, Any]:
    """Run the embedding test of ``params.method`` on subsamples of both sides (``DriftReport.embedding``).

    Skipped (``{"skipped": True, "reason": ...}``) when a side has fewer than ``params.min_samples`` texts.

    Raises:
        ValueError: ``embed_fn`` returned a wrong shape.
    """
    rng = np.random.default_rng(seed)
    smallest = min(len(reference_texts), len(current_texts))
    if smallest < params.min_samples:
        return {"skipped": True,
                "reason": f"fewer than drift.min_samples={params.min_samples} texts on a side ({smallest})"}
    ref_idx = _subsample(np.arange(len(reference_texts)), params.max_samples, rng)
    cur_idx = _subsample(np.arange(len(current_texts)), params.max_samples, rng)
    texts = [reference_texts[i] for i in ref_idx] + [current_texts[i] for i in cur_idx]
    vectors = np.asarray(embed_fn(texts), dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise ValueError(f"embed_fn returned shape {vectors.shape} for {len(texts)} texts")
    ref_vec, cur_vec = vectors[: len(ref_idx)], vectors[len(ref_idx):]
    measured = (_mmd if params.method == "mmd" else _domain_classifier)(ref_vec, cur_vec, params, seed)
    return {"skipped": False, "n_used_reference": len(ref_idx), "n_used_current": len(cur_idx), **measured}


def distribution_tests(reference_texts: Sequence[str], current_texts: Sequence[str],
                       reference_categories: Mapping[str, Sequence[str]],
                       current_categories: Mapping[str, Sequence[str]]) -> dict[str, dict[str, Any]]:
    """KS tests on token counts and character lengths, and a chi-square test per field present on both sides."""
    tests: dict[str, dict[str, Any]] = {
        "token_count_ks": _ks("token_count_ks", [len(t.split()) for t in reference_texts],
                              [len(t.split()) for t in current_texts]),
        "char_length_ks": _ks("char_length_ks", [len(t) for t in reference_texts],
                              [len(t) for t in current_texts]),
    }
    for name in sorted(set(reference_categories) & set(current_categories)):
        tests[f"{name}_chi2"] = _chi2(f"{name}_chi2", reference_categories[name], current_categories[name])
    return tests


def classify_severity(embedding: dict[str, Any], tests: dict[str, dict[str, Any]],
                      params: DriftParams) -> tuple[str, list[str]]:
    """Apply the severity rule of the module docstring.

    Returns:
        The severity, and one reason per test (the embedding test first, then ``tests`` in order).
    """
    severity, reasons = "none", []
    if embedding["skipped"]:
        reasons.append(f"embedding test skipped: {embedding['reason']}")
    else:
        p = embedding["p_value"]
        if params.method == "mmd":
            effect, limit, label = embedding["mmd2"], params.max_mmd, "MMD^2"
        else:
            effect, limit, label = embedding["auc"], params.max_auc, "domain-classifier AUC"
        significant, large = p < params.p_value, effect > limit
        if significant and large:
            severity = "severe"
        elif significant:
            severity = "moderate"
        reasons.append(
            f"{label} = {effect:.4g} ({'>' if large else '<='} {limit:.4g}), permutation p = {p:.4g} "
            f"({'<' if significant else '>='} {params.p_value:.4g})"
        )
    for name, test in tests.items():
        if test.get("skipped"):
            reasons.append(f"{name} skipped: {test['reason']}")
            continue
        significant = test["p_value"] < params.p_value
        if significant and severity == "none":
            severity = "moderate"
        reasons.append(
            f"{name}: statistic {test['statistic']:.4g}, p = {test['p_value']:.4g} "
            f"({'<' if significant else '>='} {params.p_value:.4g})"
        )
    return severity, reasons
