"""The base class of benchmark configurations: what every benchmark records about its task and dataset."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from .results import BenchmarkResult, MetricValue


@dataclass
class BenchmarkConfig:
    """One benchmark to run. Subclasses add the paths and options of their benchmark.

    Attributes:
        name: key of the benchmark in the results; defaults to `kind`. Two benchmarks of one run need two names.
        dataset_name, dataset_type, split: the `model-index` dataset fields of the model card.
    """

    kind: ClassVar[str] = ""
    task_type: ClassVar[str] = ""
    task_name: ClassVar[str] = ""

    name: str = ""
    dataset_name: str = ""
    dataset_type: str = ""
    split: str = ""

    def __post_init__(self):
        self.name = self.name or self.kind

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    def make_result(
        self,
        metrics: list[MetricValue],
        num_examples: dict[str, int],
        excluded: dict[str, int] | None = None,
        data_version: dict[str, str] | None = None,
    ) -> BenchmarkResult:
        return BenchmarkResult(
            name=self.name,
            kind=self.kind,
            task={"type": self.task_type, "name": self.task_name},
            dataset={"name": self.dataset_name, "type": self.dataset_type, "split": self.split},
            metrics=metrics,
            num_examples=num_examples,
            excluded=excluded or {},
            data_version=data_version or {},
            config=self.to_dict(),
        )


def require_path(config: BenchmarkConfig, field_name: str) -> None:
    """Configurations are dataclasses with defaults throughout; the paths they need are checked here."""
    if not getattr(config, field_name):
        raise ValueError(f"{type(config).__name__} ({config.name!r}) needs `{field_name}`.")


def macro_average(values: list[float]) -> float:
    """Unweighted mean of subset scores: SugarCrepe's Add/Replace/Swap and ARO's macro accuracies."""
    if not values:
        raise ValueError("Cannot average zero subsets.")
    return sum(values) / len(values)
