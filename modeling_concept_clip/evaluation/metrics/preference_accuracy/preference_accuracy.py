"""Preference accuracy: the share of examples in which every positive score beats every negative score."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy of a model that must prefer the positive candidate(s) of an example over its negative candidate(s),
as in SugarCrepe (image vs. caption / hard negative), SugarCrepe++ (both positive captions vs. the negative,
and the text-only task), ARO VG-Relation / VG-Attribution and ARO COCO/Flickr order.

An example is correct when min(positive_scores) > max(negative_scores): a tie counts as wrong, so a model that
cannot tell the captions apart gets no credit. ARO's order tasks score with `argmax` over
[true caption, perturbations...], which resolves a tie in favour of the true caption; pass
`positive_wins_ties=True` to reproduce that rule (correct when min(positive) >= max(negative)).
"""

_KWARGS_DESCRIPTION = """
Args:
    positive_scores (`list[list[float]]`): per example, the scores that must win (at least one).
    negative_scores (`list[list[float]]`): per example, the scores that must lose (at least one).
    positive_wins_ties (`bool`, defaults to `False`): count a tie between the lowest positive and the highest
        negative as correct.
Returns:
    `{"accuracy": float in [0, 1]}`.
Examples:
    >>> metric = evaluate.load("modeling_concept_clip/evaluation/metrics/preference_accuracy")
    >>> metric.compute(positive_scores=[[0.3], [0.2]], negative_scores=[[0.1], [0.2]])
    {'accuracy': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PreferenceAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "positive_scores": datasets.List(datasets.Value("float64")),
                    "negative_scores": datasets.List(datasets.Value("float64")),
                }
            ),
        )

    def _compute(self, positive_scores, negative_scores, positive_wins_ties=False):
        if len(positive_scores) == 0:
            raise ValueError("preference_accuracy needs at least one example.")
        correct = []
        for index, (positives, negatives) in enumerate(zip(positive_scores, negative_scores)):
            if len(positives) == 0 or len(negatives) == 0:
                raise ValueError(f"Example {index} needs at least one positive and one negative score.")
            lowest_positive, highest_negative = min(positives), max(negatives)
            if np.isnan(lowest_positive) or np.isnan(highest_negative):
                raise ValueError(f"Example {index} has a NaN score.")
            correct.append(
                lowest_positive >= highest_negative if positive_wins_ties else lowest_positive > highest_negative
            )
        return {"accuracy": float(np.mean(correct))}
