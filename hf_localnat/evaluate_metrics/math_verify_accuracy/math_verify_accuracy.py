"""``math_verify_accuracy``: the share of math answers that equal the reference, checked by Hugging Face's math-verify.

An :mod:`evaluate` module shipped inside hf_localnat. Load it by its folder, which works offline (nothing is
fetched from the Hub): ``evaluate.load(hf_localnat.evaluation.math_verify_accuracy_path())``, or
:func:`hf_localnat.evaluation.load_math_verify_accuracy`. ``hf-localnat evaluate`` computes its summary with it.

Each prediction (a model's generated text) is graded against its reference (the gold answer: a number, a bare
answer, a GSM8K ``#### N`` solution or a ``\\boxed{}`` solution) by :func:`hf_localnat.answers.grade_response`.
The answer is read from the last ``\\boxed{}``, a "final answer" phrase or ``#### N`` ("marked"), from a
prediction that is itself a short answer ("bare"), or else as math-verify reads free text, its last readable value
("unmarked", which can match by chance). A prediction without a readable answer counts as wrong.

Example:
    >>> import evaluate
    >>> from hf_localnat.evaluation import math_verify_accuracy_path
    >>> metric = evaluate.load(math_verify_accuracy_path())
    >>> result = metric.compute(predictions=[r"So \\boxed{\\frac{1}{2}}.", "I give up."], references=["0.5", "7"])
    >>> result["accuracy"], result["num_correct"], result["num_marked_answer"], result["num_no_answer"]
    (0.5, 1, 1, 1)
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate

from hf_localnat.answers import grade_response
from hf_localnat.evaluation import wilson_interval

_CITATION = """\
@software{math_verify,
  title = {Math-Verify: a robust mathematical expression evaluation system},
  author = {Kydlicek, Hynek},
  url = {https://github.com/huggingface/Math-Verify},
  year = {2025}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the model's generated texts ("" when there is none: no answer).
    references (`list` of `str`): the gold answers: a number, a bare answer ("\\frac{1}{2}"), a GSM8K solution
        ending in "#### N", or a solution with a \\boxed{} answer. Pass numbers as text (str(27.0)) and "" for a
        missing reference (graded as no answer).
Returns:
    accuracy (`float`): num_correct / num_problems (0.0 when there are none).
    accuracy_ci_low, accuracy_ci_high (`float`): the 95% Wilson score interval of the accuracy.
    num_problems (`int`): the number of predictions.
    num_correct (`int`): predictions whose answer equals the reference.
    num_no_answer (`int`): predictions (or references) without a readable answer; counted wrong.
    num_marked_answer (`int`): graded answers read from \\boxed{}, a "final answer" phrase or "#### N".
    num_bare_answer (`int`): graded answers where the whole prediction is a short answer ("0.5").
    num_unmarked_answer (`int`): graded answers read from free text (math-verify's last readable value).
    num_correct_unmarked (`int`): the correct ones of those, so that
        (num_correct - num_correct_unmarked) / num_problems is the accuracy on marked (and bare) answers.
    The four counts num_no_answer + num_marked_answer + num_bare_answer + num_unmarked_answer make num_problems.
"""


def summarize(predictions: Sequence[str | None], references: Sequence[str | None]) -> dict:
    """Grade each prediction against its reference and return the accuracy, its 95% Wilson CI and the counts.

    Example:
        >>> summarize(["#### 42", "It is 41"], ["42", "42"])["num_correct"]
        1
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references: give one of each.")
    graded = [
        grade_response(reference, prediction) for prediction, reference in zip(predictions, references, strict=True)
    ]
    total = len(graded)
    correct = sum(g.correct is True for g in graded)
    low, high = wilson_interval(correct, total)
    counts = {f"num_{source}_answer": 0 for source in ("marked", "bare", "unmarked")}
    for g in graded:
        if g.correct is not None:
            counts[f"num_{g.source}_answer"] += 1
    return {
        "accuracy": correct / total if total else 0.0,
        "accuracy_ci_low": low,
        "accuracy_ci_high": high,
        "num_problems": total,
        "num_correct": correct,
        "num_no_answer": sum(g.correct is None for g in graded),
        **counts,
        "num_correct_unmarked": sum(g.source == "unmarked" and g.correct is True for g in graded),
    }


class MathVerifyAccuracy(evaluate.Metric):
    """Accuracy of math answers by math-verify, with its 95% Wilson interval and where the answers were read."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__.split("\n\n")[0],
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/huggingface/Math-Verify"],
            reference_urls=[
                "https://en.wikipedia.org/wiki/Binomial_proportion_confidence_interval#Wilson_score_interval"
            ],
        )

    def _compute(self, predictions: Sequence[str | None], references: Sequence[str | None]) -> dict:
        return summarize(predictions, references)
