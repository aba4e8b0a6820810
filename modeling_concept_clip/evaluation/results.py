"""Evaluation results: the one model of what a benchmark run produced, for JSON files, training logs, Markdown
tables and the model card's `model-index`.

Metric values are fractions in [0, 1] everywhere in Python and JSON; tables and `model-index` show percentages.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from huggingface_hub import EvalResult

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"  # the name `concept-clip-eval --output`, the training script and the card use


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

    @property
    def model_index_key(self) -> tuple[str, str, str]:
        """`(task type, dataset type, split)`: three of the four fields by which the Hub groups `model-index`."""
        task_type = self.task.get("type") or "image-text-matching"
        return (
            task_type,
            self.dataset.get("type") or self.dataset.get("name") or self.name,
            self.dataset.get("split", ""),
        )

    @property
    def dataset_label(self) -> str:
        """The dataset with its split and size, e.g. `"SugarCrepe (test, 7,512 examples)"`."""
        details = [self.dataset["split"]] if self.dataset.get("split") else []
        if self.num_examples.get("total") is not None:
            details.append(f"{self.num_examples['total']:,} examples")
        label = self.dataset.get("name") or self.dataset.get("type") or self.name
        return label + (f" ({', '.join(details)})" if details else "")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkResult:
        data = dict(data)
        data["metrics"] = [MetricValue(**m) for m in data["metrics"]]
        return cls(**data)


@dataclass
class EvaluationRun:
    """The results of one model on a list of benchmarks, with what is needed to reproduce them.

    Attributes:
        model: `{"name_or_path", "class", "model_type", "num_parameters"}`, and `"label"` when one was given.
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
        version = _checked_version(data)
        return cls(
            model=data["model"],
            settings=data["settings"],
            benchmarks=[BenchmarkResult.from_dict(b) for b in data["benchmarks"]],
            schema_version=version,
        )

    def to_markdown(self) -> str:
        return comparison_table([self])

    def eval_results(self) -> list[EvalResult]:
        """One `huggingface_hub.EvalResult` per metric, in percent: the model card's `model-index`.

        The Hub merges `model-index` entries that share task type, dataset type, dataset config and split; benchmarks
        that share all four (e.g. ARO's VG-Relation and VG-Attribution) get their name as dataset config, so that
        each keeps its own entry and name when the card is written and parsed again. A metric without a finite
        value is left out, with a warning.
        """
        from huggingface_hub import EvalResult

        shared = Counter(b.model_index_key for b in self.benchmarks if b.metrics)
        results = []
        for benchmark in self.benchmarks:
            task_type, dataset_type, split = benchmark.model_index_key
            for metric in benchmark.metrics:
                if not (isinstance(metric.value, (int, float)) and math.isfinite(metric.value)):
                    logger.warning("Benchmark %s: metric %s has no finite value; left out of model-index.",
                                   benchmark.name, metric.key)  # fmt: skip
                    continue
                results.append(
                    EvalResult(
                        task_type=task_type,
                        task_name=benchmark.task.get("name") or None,
                        dataset_type=dataset_type,
                        dataset_name=benchmark.dataset.get("name") or benchmark.name,
                        dataset_split=split or None,
                        dataset_config=benchmark.name if shared[benchmark.model_index_key] > 1 else None,
                        metric_type=metric.type or "accuracy",
                        metric_name=metric.name or metric.key,
                        metric_value=round(100 * metric.value, 2),
                    )
                )
        return results

    def model_index(self, model_name: str | None = None) -> list[dict[str, Any]]:
        """The `model-index` list of a Hugging Face model card (values in percent), from [`eval_results`]."""
        from huggingface_hub.repocard_data import eval_results_to_model_index

        return eval_results_to_model_index(model_name or self.label, self.eval_results())


@dataclass
class TableRow:
    """One metric of one benchmark across runs: `values[i]` is run `i`'s value (a fraction), `None` if it has none.

    `benchmark` and `metric` are those of the first run that has the metric (names, dataset, display name).
    """

    benchmark: BenchmarkResult
    metric: MetricValue
    values: list[float | None]


def table_rows(runs: list[EvaluationRun]) -> list[TableRow]:
    """The rows of a comparison of `runs`: every benchmark metric of any run, in the order they first appear."""
    rows: dict[tuple[str, str], TableRow] = {}
    for column, run in enumerate(runs):
        for benchmark in run.benchmarks:
            for metric in benchmark.metrics:
                row = rows.setdefault((benchmark.name, metric.key), TableRow(benchmark, metric, [None] * len(runs)))
                row.values[column] = metric.value
    return list(rows.values())


def comparison_table(runs: list[EvaluationRun], labels: list[str] | None = None) -> str:
    """A Markdown table with one row per benchmark metric and one column per run (percent, one decimal).

    With two runs a last column gives the difference, second minus first, in points (e.g. C2LIP vs control).
    """
    if not runs:
        raise ValueError("Nothing to tabulate: no runs.")
    labels = labels or [run.label for run in runs]
    if len(labels) != len(runs):
        raise ValueError(f"Got {len(labels)} labels for {len(runs)} runs.")
    header = ["benchmark", "metric", *labels] + (["Δ"] if len(runs) == 2 else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for row in table_rows(runs):
        cells = [f"{100 * v:.1f}" if v is not None else "–" for v in row.values]
        if len(runs) == 2:
            both = None not in row.values
            cells.append(f"{100 * (row.values[1] - row.values[0]):+.1f}" if both else "–")
        lines.append("| " + " | ".join([row.benchmark.name, row.metric.key, *cells]) + " |")
    return "\n".join(lines)


def save_runs(runs: list[EvaluationRun], path: str | Path) -> Path:
    """Write `{"schema_version": 1, "runs": [...]}` as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"schema_version": SCHEMA_VERSION, "runs": [run.to_dict() for run in runs]}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def load_runs(path: str | Path) -> list[EvaluationRun]:
    """Read a results file written by `save_runs` (or a single run object); a malformed file is a `ValueError`
    that names it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        _checked_version(data)
        return [EvaluationRun.from_dict(run) for run in data.get("runs", [data])]
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as error:
        detail = f"missing field {error}" if isinstance(error, KeyError) else str(error)
        raise ValueError(f"{path} is not an evaluation results file: {detail}") from None


def _checked_version(data: dict[str, Any]) -> int:
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ValueError(f"results schema version {version} is not supported (expected {SCHEMA_VERSION})")
    return version
