"""Recall@K from ranks: the share of queries whose best correct candidate is ranked within the first K."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Recall@K (top-K accuracy) for retrieval and classification. Each input is the 0-based rank of a query's best
correct candidate, i.e. the number of wrong candidates that score at least as high as it (ties are counted
against the query). A query is a hit at K when its rank is below K. With one correct candidate per query
(zero-shot classification), recall@K is top-K accuracy.
"""

_KWARGS_DESCRIPTION = """
Args:
    ranks (`list[int]`): one non-negative rank per query.
    k (`list[int]`, defaults to `[1, 5, 10]`): the cut-offs.
Returns:
    `{"recall@K": float in [0, 1]}` for each K.
Examples:
    >>> metric = evaluate.load("modeling_concept_clip/evaluation/metrics/recall_at_k")
    >>> metric.compute(ranks=[0, 3, 12], k=[1, 5])
    {'recall@1': 0.3333333333333333, 'recall@5': 0.6666666666666666}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RecallAtK(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"ranks": datasets.Value("int64")}),
        )

    def _compute(self, ranks, k=(1, 5, 10)):
        ranks = np.asarray(ranks, dtype=np.int64)
        if ranks.size == 0:
            raise ValueError("recall_at_k needs at least one rank.")
        if (ranks < 0).any():
            raise ValueError("Ranks must be non-negative (0 = the correct candidate is first).")
        if any(int(cutoff) < 1 for cutoff in k):
            raise ValueError(f"Every K must be at least 1, got {list(k)}.")
        return {f"recall@{int(cutoff)}": float((ranks < int(cutoff)).mean()) for cutoff in k}
