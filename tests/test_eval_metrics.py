"""The `evaluate` metric modules: offline loading from the package folder and their scoring rules."""

import socket

import evaluate
import pytest

from modeling_concept_clip.evaluation.metrics import METRIC_NAMES, METRICS_DIR, load_metric


def test_metrics_load_from_local_folder_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("evaluate tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    load_metric.cache_clear()
    for name in METRIC_NAMES:
        metric = load_metric(name)
        assert isinstance(metric, evaluate.EvaluationModule)
        assert metric.name == name
    # The plain `evaluate` API works on the same folders, outside this package.
    plain = evaluate.load(str(METRICS_DIR / "recall_at_k"))
    assert plain.compute(ranks=[0, 2], k=[1]) == {"recall@1": 0.5}


def test_preference_accuracy_is_strict_on_ties():
    metric = load_metric("preference_accuracy")
    positives = [[0.9], [0.5], [0.2]]
    negatives = [[0.1], [0.5], [0.4]]  # win, tie, loss
    assert metric.compute(positive_scores=positives, negative_scores=negatives)["accuracy"] == pytest.approx(1 / 3)
    tie_wins = metric.compute(positive_scores=positives, negative_scores=negatives, positive_wins_ties=True)
    assert tie_wins["accuracy"] == pytest.approx(2 / 3)


def test_preference_accuracy_needs_every_positive_above_every_negative():
    metric = load_metric("preference_accuracy")
    # Two positives vs one negative (SugarCrepe++ ITT): the weaker positive decides.
    result = metric.compute(positive_scores=[[0.9, 0.3], [0.9, 0.6]], negative_scores=[[0.5], [0.5]])
    assert result["accuracy"] == pytest.approx(0.5)
    # One positive vs four negatives (ARO order): the strongest negative decides.
    result = metric.compute(positive_scores=[[0.5], [0.5]], negative_scores=[[0.1, 0.2, 0.6, 0.0], [0.4] * 4])
    assert result["accuracy"] == pytest.approx(0.5)


def test_recall_at_k_counts_ranks_below_k():
    result = load_metric("recall_at_k").compute(ranks=[0, 1, 4, 5, 9, 10], k=[1, 5, 10])
    assert result == {
        "recall@1": pytest.approx(1 / 6),
        "recall@5": pytest.approx(3 / 6),
        "recall@10": pytest.approx(5 / 6),
    }


def test_winoground_scores_follow_the_paper_definitions():
    # Per example (c0_i0, c0_i1, c1_i0, c1_i1).
    examples = [
        (0.9, 0.1, 0.1, 0.9),  # all correct
        (0.5, 0.7, 0.1, 0.8),  # text correct, image wrong (caption 0 prefers image 1)
        (0.6, 0.5, 0.7, 0.8),  # image correct, text wrong (image 0 prefers caption 1)
        (0.6, 0.6, 0.3, 0.9),  # text correct, image tie -> wrong
    ]
    columns = dict(zip(("c0_i0", "c0_i1", "c1_i0", "c1_i1"), zip(*examples)))
    result = load_metric("winoground_scores").compute(**{k: list(v) for k, v in columns.items()})
    assert result == {"text_score": 0.75, "image_score": 0.5, "group_score": 0.25}


@pytest.mark.parametrize(
    "name, inputs",
    [
        ("preference_accuracy", {"positive_scores": [], "negative_scores": []}),
        ("preference_accuracy", {"positive_scores": [[]], "negative_scores": [[0.1]]}),
        ("recall_at_k", {"ranks": [-1]}),
    ],
)
def test_metrics_reject_empty_or_invalid_inputs(name, inputs):
    with pytest.raises(ValueError):
        load_metric(name).compute(**inputs)
