"""Evaluation results: the JSON schema, flat metrics for training logs, Markdown tables and `model-index` entries.

Metric values are fractions in [0, 1] everywhere in Python and JSON; tables and `model-index` show percentages.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


@dataclass
class MetricValue:
    """One number of a benchmark. `type` and `name` are the `model-index` metric type and display name."""

    key: str
    value: float
    type: str
    name: str


@dataclass
class BenchmarkResult:
    """Everything one benchmark produced for one model.

    Attributes:
        name: key of the benchmark in the run (e.g. `"sugarcrepe"`, `"probes"`).
        kind: which implementation scored it (e.g. `"sugarcrepe"` for the demo probes too).
        task: `{"type", "name"}` of the `model-index` task.
        dataset: `{"name", "type", "split"}` of the `model-index` dataset.
        metrics: the scores, in display order.
        num_examples: scored examples, in total (`"total"`) and per subset where the benchmark has subsets.
        excluded: examples or groups the benchmark's own protocol leaves out of a metric, counted by reason.
        data_version: digest of every annotation file read (and of tools that change the data, e.g. spaCy).
        config: the benchmark configuration, as given.
        seconds: wall-clock time, embedding included.
    """

    name: str
    kind: str
    task: dict[str, str]
    dataset: dict[str, str]
    metrics: list[MetricValue]
    num_examples: dict[str, int]
    excluded: dict[str, int] = field(default_factory=dict)
    data_version: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def metric(self, key: str) -> float:
        for metric in self.metrics:
            if metric.key == key:
                return metric.value
        raise KeyError(f"Benchmark {self.name!r} has no metric {key!r}; it has {[m.key for m in self.metrics]}.")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkResult:
        data = dict(data)
        data["metrics"] = [MetricValue(**m) for m in data["metrics"]]
        return cls(**data)


@dataclass
class EvaluationRun:
    """The results of one model on a list of benchmarks, with what is needed to reproduce them.

    Attributes:
        model: `{"name_or_path", "class", "model_type", "num_parameters"}`.
        settings: device, dtype, batch sizes, text padding and library versions.
        benchmarks: one result per benchmark, in the order they ran.
    """

    model: dict[str, Any]
    settings: dict[str, Any]
    benchmarks: list[BenchmarkResult]
    schema_version: int = SCHEMA_VERSION

    @property
    def label(self) -> str:
        return str(self.model.get("label") or self.model.get("name_or_path") or "model")

    def benchmark(self, name: str) -> BenchmarkResult:
        for result in self.benchmarks:
            if result.name == name:
                return result
        raise KeyError(f"No benchmark {name!r} in this run; it has {[b.name for b in self.benchmarks]}.")

    def flat_metrics(self, prefix: str = "") -> dict[str, float]:
        """`{"<prefix><benchmark>/<metric>": value}`: ready for `accelerator.log` or TensorBoard."""
        return {f"{prefix}{b.name}/{m.key}": m.value for b in self.benchmarks for m in b.metrics}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationRun:
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ValueError(f"Results schema version {version} is not supported (expected {SCHEMA_VERSION}).")
        return cls(
            model=data["model"],
            settings=data["settings"],
            benchmarks=[BenchmarkResult.from_dict(b) for b in data["benchmarks"]],
            schema_version=version,
        )

    def to_markdown(self) -> str:
        return comparison_table([self])

    def model_index(self, model_name: str | None = None) -> list[dict[str, Any]]:
        """The `model-index` list of a Hugging Face model card (values in percent)."""
        results = []
        for benchmark in self.benchmarks:
            results.append(
                {
                    "task": dict(benchmark.task),
                    "dataset": {k: v for k, v in benchmark.dataset.items() if v},
                    "metrics": [
                        {"type": m.type, "value": round(100 * m.value, 2), "name": m.name} for m in benchmark.metrics
                    ],
                }
            )
        return [{"name": model_name or self.label, "results": results}]


def comparison_table(runs: list[EvaluationRun], labels: list[str] | None = None) -> str:
    """A Markdown table with one row per benchmark metric and one column per run (percent, one decimal).

    With two runs a last column gives the difference, second minus first, in points (e.g. C2LIP vs control).
    """
    if not runs:
        raise ValueError("Nothing to tabulate: no runs.")
    labels = labels or [run.label for run in runs]
    if len(labels) != len(runs):
        raise ValueError(f"Got {len(labels)} labels for {len(runs)} runs.")
    rows: dict[tuple[str, str], list[float | None]] = {}
    for column, run in enumerate(runs):
        for benchmark in run.benchmarks:
            for metric in benchmark.metrics:
                rows.setdefault((benchmark.name, metric.key), [None] * len(runs))[column] = metric.value
    header = ["benchmark", "metric", *labels] + (["Δ"] if len(runs) == 2 else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for (benchmark, key), values in rows.items():
        cells = [f"{100 * v:.1f}" if v is not None else "–" for v in values]
        if len(runs) == 2:
            both = values[0] is not None and values[1] is not None
            cells.append(f"{100 * (values[1] - values[0]):+.1f}" if both else "–")
        lines.append("| " + " | ".join([benchmark, key, *cells]) + " |")
    return "\n".join(lines)


def save_runs(runs: list[EvaluationRun], path: str | Path) -> Path:
    """Write `{"schema_version": 1, "runs": [...]}` as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"schema_version": SCHEMA_VERSION, "runs": [run.to_dict() for run in runs]}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def load_runs(path: str | Path) -> list[EvaluationRun]:
    """Read a results file written by `save_runs` (or a single run object)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if "runs" in data:
        return [EvaluationRun.from_dict(run) for run in data["runs"]]
    return [EvaluationRun.from_dict(data)]
