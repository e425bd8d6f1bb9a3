"""Offline ROUGE for ``evaluate.load(<path>)``: a thin wrapper around ``rouge_score`` (no hub access).

Returns the mean F-measure per requested ROUGE type and, with ``per_item=True``, the per-pair scores as
``<type>_per_item`` lists (needed for paired bootstrap confidence intervals).
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "ROUGE F-measures computed locally with the rouge-score package (evertune)."
_INPUTS = """
Args:
    predictions: list of generated strings.
    references: list of reference strings, one per prediction.
    rouge_types: ROUGE variants, default ("rouge1", "rouge2", "rougeL").
    use_stemmer: apply the Porter stemmer before matching (default True).
    per_item: also return the per-pair F-measures (default False).
Returns:
    dict: {rouge_type: mean F-measure} plus {rouge_type + "_per_item": [...]} when per_item.
"""


class RougeLocal(evaluate.Metric):
    """ROUGE-N / ROUGE-L F-measure, averaged over pairs."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, 2004. ROUGE: A Package for Automatic Evaluation of Summaries.",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, rouge_types=("rouge1", "rouge2", "rougeL"), use_stemmer=True,
                 per_item=False):
        types = list(rouge_types)
        scorer = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer)
        per_type = {name: [] for name in types}
        for prediction, reference in zip(predictions, references, strict=True):
            scores = scorer.score(reference, prediction)  # rouge_score's order is (target, prediction)
            for name in types:
                per_type[name].append(float(scores[name].fmeasure))
        result = {}
        for name in types:
            values = per_type[name]
            result[name] = sum(values) / len(values) if values else 0.0
            if per_item:
                result[f"{name}_per_item"] = values
        return result
