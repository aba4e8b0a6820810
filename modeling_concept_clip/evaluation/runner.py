"""Running benchmarks: the registry of benchmark kinds and `evaluate_model`, the entry point for training loops."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import yaml

from .aro import (
    OrderConfig,
    VGAttributionConfig,
    VGRelationConfig,
    evaluate_order,
    evaluate_vg_attribution,
    evaluate_vg_relation,
)
from .data import EvaluationDataError
from .embedding import Embedder, EmbeddingConfig, ModelEmbedder
from .results import BenchmarkResult, EvaluationRun
from .retrieval import RetrievalConfig, evaluate_retrieval
from .spec import BenchmarkConfig
from .sugarcrepe import SugarCrepeConfig, evaluate_sugarcrepe
from .sugarcrepe_pp import SugarCrepePlusPlusConfig, evaluate_sugarcrepe_pp
from .winoground import WinogroundConfig, evaluate_winoground
from .zeroshot import ZeroShotConfig, evaluate_zeroshot

logger = logging.getLogger(__name__)

BENCHMARK_KINDS: dict[str, tuple[type[BenchmarkConfig], Callable[[Any, Embedder], BenchmarkResult]]] = {
    ZeroShotConfig.kind: (ZeroShotConfig, evaluate_zeroshot),
    RetrievalConfig.kind: (RetrievalConfig, evaluate_retrieval),
    SugarCrepeConfig.kind: (SugarCrepeConfig, evaluate_sugarcrepe),
    SugarCrepePlusPlusConfig.kind: (SugarCrepePlusPlusConfig, evaluate_sugarcrepe_pp),
    VGRelationConfig.kind: (VGRelationConfig, evaluate_vg_relation),
    VGAttributionConfig.kind: (VGAttributionConfig, evaluate_vg_attribution),
    OrderConfig.kind: (OrderConfig, evaluate_order),
    WinogroundConfig.kind: (WinogroundConfig, evaluate_winoground),
}


def benchmark_from_dict(data: Mapping[str, Any]) -> BenchmarkConfig:
    """Build a benchmark configuration from `{"kind": ..., <fields>}` (a config file entry, or `to_dict()`)."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in BENCHMARK_KINDS:
        raise ValueError(f"Unknown benchmark kind {kind!r}; available: {', '.join(BENCHMARK_KINDS)}.")
    config_class = BENCHMARK_KINDS[kind][0]
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"Benchmark kind {kind!r} has no option(s) {unknown}; options: {sorted(known)}.")
    return config_class(**data)


def read_benchmark_file(path: str | Path) -> list[BenchmarkConfig]:
    """Benchmarks of a JSON or YAML file: a list of `{"kind": ..., <options>}` (or `{"benchmarks": [...]}`)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationDataError(f"{path}: benchmark config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        entries = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise EvaluationDataError(f"{path}: not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {error}") from None
    if isinstance(entries, dict):
        entries = entries.get("benchmarks", [entries])
    if not isinstance(entries, list):
        raise EvaluationDataError(f"{path}: expected a list of benchmark entries")
    benchmarks = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise EvaluationDataError(f"{path}, entry {index}: expected an object with a 'kind'")
        try:
            benchmarks.append(benchmark_from_dict(entry))
        except (TypeError, ValueError) as error:
            raise EvaluationDataError(f"{path}, entry {index}: {error}") from None
    return benchmarks


def run_benchmarks(
    benchmarks: Sequence[BenchmarkConfig | Mapping[str, Any]], embedder: Embedder
) -> list[BenchmarkResult]:
    """Score every benchmark with one embedder, so images and texts shared by benchmarks are embedded once.

    A benchmark is a configuration object or its dict form (`{"kind": "sugarcrepe", "data_dir": ...}`).
    """
    benchmarks = [b if isinstance(b, BenchmarkConfig) else benchmark_from_dict(b) for b in benchmarks]
    names = [b.name for b in benchmarks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Benchmark names must be unique in a run; repeated: {duplicates} (set `name`).")
    results = []
    for benchmark in benchmarks:
        if benchmark.kind not in BENCHMARK_KINDS:
            raise ValueError(f"Unknown benchmark kind {benchmark.kind!r}.")
        start = time.perf_counter()
        result = BENCHMARK_KINDS[benchmark.kind][1](benchmark, embedder)
        result.seconds = round(time.perf_counter() - start, 3)
        logger.info(
            "%s: %s (%.1f s)",
            benchmark.name,
            ", ".join(f"{m.key}={100 * m.value:.1f}" for m in result.metrics),
            result.seconds,
        )
        results.append(result)
    return results


def describe_model(model: torch.nn.Module, model_name: str | None = None) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return {
        "name_or_path": model_name or getattr(config, "_name_or_path", "") or type(model).__name__,
        "class": type(model).__name__,
        "model_type": getattr(config, "model_type", ""),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }


def library_versions() -> dict[str, str]:
    import transformers

    from .. import __version__

    return {"modeling_concept_clip": __version__, "transformers": transformers.__version__, "torch": torch.__version__}


def evaluate_model(
    model: torch.nn.Module,
    processor,
    benchmarks: Sequence[BenchmarkConfig | Mapping[str, Any]],
    config: EmbeddingConfig | None = None,
    model_name: str | None = None,
) -> EvaluationRun:
    """Evaluate an in-memory `CLIPModel`/`SiglipModel` (e.g. during training) on `benchmarks`.

    The model stays on its device and dtype; it is put in eval mode for the call and given back in the mode it
    was in. Embeddings are cached for the duration of the call only (the weights change between calls).

    Args:
        model: the model (unwrapped from DDP/Accelerate).
        processor: its `CLIPProcessor`/`SiglipProcessor` (tokenizer + image processor).
        benchmarks: benchmark configurations (`SugarCrepeConfig(...)`, ...) or their dicts
            (`{"kind": "sugarcrepe", ...}`, e.g. from `read_benchmark_file`).
        config: batch sizes, worker threads and progress bars.
        model_name: recorded in the results (default: `model.config._name_or_path`).

    Returns:
        An `EvaluationRun`; `run.flat_metrics(prefix="eval/")` is the `dict[str, float]` to log.
    """
    config = config or EmbeddingConfig()
    embedder = ModelEmbedder(model, processor, config)
    was_training = model.training
    model.eval()
    try:
        results = run_benchmarks(benchmarks, embedder)
    finally:
        model.train(was_training)
    settings = {**embedder.settings(), "num_workers": config.num_workers, **library_versions()}
    return EvaluationRun(model=describe_model(model, model_name), settings=settings, benchmarks=results)
