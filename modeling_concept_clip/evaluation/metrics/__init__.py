"""The scoring rules of the benchmarks as `evaluate` metric modules, loaded from this folder (works offline).

Each sub-folder is a standard `evaluate` metric script (`<name>/<name>.py`), so a result computed here can be
recomputed with `evaluate.load("<path to this folder>/<name>")` anywhere, without this package installed.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("preference_accuracy", "recall_at_k", "winoground_scores")


@cache
def load_metric(name: str):
    """`evaluate.load` of one of the project's metric modules, by name (cached per process).

    A local path never reaches the Hub; `keep_in_memory=True` avoids Arrow cache files and their locks, which
    matters when evaluation runs inside a training job.
    """
    import evaluate

    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; available: {', '.join(METRIC_NAMES)}.")
    return evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)
