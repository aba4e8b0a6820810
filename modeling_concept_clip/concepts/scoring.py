"""Precision and recall of extracted concepts against hand-labelled ones."""

from __future__ import annotations

from collections.abc import Sequence

from .normalization import normalize_concept


def score_concepts(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged precision and recall of predicted concepts against reference concepts.

    Concepts are compared after [`normalize_concept`] (so "A red couch" matches "the red couch") as sets
    per caption. precision = matched / predicted, recall = matched / reference, both summed over all captions.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    matched = predicted = expected = 0
    for pred, ref in zip(predictions, references):
        pred_keys = {normalize_concept(text) for text in pred} - {""}
        ref_keys = {normalize_concept(text) for text in ref} - {""}
        matched += len(pred_keys & ref_keys)
        predicted += len(pred_keys)
        expected += len(ref_keys)
    precision = matched / predicted if predicted else 0.0
    recall = matched / expected if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "matched": float(matched),
        "predicted": float(predicted),
        "expected": float(expected),
    }
