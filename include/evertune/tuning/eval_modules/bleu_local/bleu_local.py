"""Offline corpus BLEU for ``evaluate.load(<path>)``: a thin wrapper around ``sacrebleu`` (no hub access)."""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "Corpus-level BLEU (0-100) computed locally with sacrebleu (evertune)."
_INPUTS = """
Args:
    predictions: list of generated strings.
    references: list of lists of reference strings (every prediction needs the same number of references).
    tokenize: sacrebleu tokenizer name, default "13a".
    lowercase: compare case-insensitively (default False).
Returns:
    dict: bleu (0-100), precisions (1..4-gram, 0-100), brevity_penalty, sys_len, ref_len.
"""


class BleuLocal(evaluate.Metric):
    """Corpus BLEU with sacrebleu's standard settings."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Post, 2018. A Call for Clarity in Reporting BLEU Scores.",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references, tokenize="13a", lowercase=False):
        counts = {len(refs) for refs in references}
        if len(counts) > 1:
            raise ValueError("every prediction needs the same number of references")
        n_refs = counts.pop() if counts else 1
        # sacrebleu wants one stream per reference position: [[ref0 of each], [ref1 of each], ...].
        streams = [[refs[i] for refs in references] for i in range(n_refs)]
        score = sacrebleu.corpus_bleu(list(predictions), streams, tokenize=tokenize, lowercase=lowercase)
        return {
            "bleu": float(score.score),
            "precisions": [float(p) for p in score.precisions],
            "brevity_penalty": float(score.bp),
            "sys_len": int(score.sys_len),
            "ref_len": int(score.ref_len),
        }
