"""Evaluation of CLIP/SigLIP checkpoints on compositionality, zero-shot and retrieval benchmarks.

Benchmarks read their public release formats from local folders; the scoring rules are `evaluate` metric
modules in `metrics/`. Command line: `concept-clip-eval` (`cli.py`). In a training loop:

    from modeling_concept_clip.evaluation import SugarCrepeConfig, evaluate_model

    run = evaluate_model(model, processor, [SugarCrepeConfig(name="probes", data_dir="probes", subsets=None)])
    accelerator.log(run.flat_metrics(prefix="eval/"), step=step)

Public names load on first use, as in the top-level package: reading results (`load_runs`, the model card) does not
import torch or the benchmark code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

_EXPORTS = {
    "aro": ["OrderConfig", "VGAttributionConfig", "VGRelationConfig"],
    "data": ["EvaluationDataError", "ImageRef"],
    "embedding": ["Embedder", "EmbeddingConfig", "ModelEmbedder"],
    "metrics": ["load_metric"],
    "presets": ["PRESETS", "preset_benchmark"],
    "results": [
        "RESULTS_FILE",
        "BenchmarkResult",
        "EvaluationRun",
        "MetricValue",
        "TableRow",
        "comparison_table",
        "load_runs",
        "save_runs",
        "table_rows",
    ],
    "retrieval": ["RetrievalConfig"],
    "runner": ["BENCHMARK_KINDS", "benchmark_from_dict", "evaluate_model", "read_benchmark_file", "run_benchmarks"],
    "spec": ["BenchmarkConfig"],
    "sugarcrepe": ["SugarCrepeConfig"],
    "sugarcrepe_pp": ["SugarCrepePlusPlusConfig"],
    "winoground": ["WinogroundConfig"],
    "zeroshot": ["ZeroShotConfig"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "BENCHMARK_KINDS",
    "BenchmarkConfig",
    "BenchmarkResult",
    "Embedder",
    "EmbeddingConfig",
    "EvaluationDataError",
    "EvaluationRun",
    "ImageRef",
    "MetricValue",
    "ModelEmbedder",
    "OrderConfig",
    "PRESETS",
    "RESULTS_FILE",
    "RetrievalConfig",
    "SugarCrepeConfig",
    "SugarCrepePlusPlusConfig",
    "TableRow",
    "VGAttributionConfig",
    "VGRelationConfig",
    "WinogroundConfig",
    "ZeroShotConfig",
    "benchmark_from_dict",
    "comparison_table",
    "evaluate_model",
    "load_metric",
    "load_runs",
    "preset_benchmark",
    "read_benchmark_file",
    "run_benchmarks",
    "save_runs",
    "table_rows",
]

if TYPE_CHECKING:
    from .aro import OrderConfig, VGAttributionConfig, VGRelationConfig
    from .data import EvaluationDataError, ImageRef
    from .embedding import Embedder, EmbeddingConfig, ModelEmbedder
    from .metrics import load_metric
    from .presets import PRESETS, preset_benchmark
    from .results import (
        RESULTS_FILE,
        BenchmarkResult,
        EvaluationRun,
        MetricValue,
        TableRow,
        comparison_table,
        load_runs,
        save_runs,
        table_rows,
    )
    from .retrieval import RetrievalConfig
    from .runner import BENCHMARK_KINDS, benchmark_from_dict, evaluate_model, read_benchmark_file, run_benchmarks
    from .spec import BenchmarkConfig
    from .sugarcrepe import SugarCrepeConfig
    from .sugarcrepe_pp import SugarCrepePlusPlusConfig
    from .winoground import WinogroundConfig
    from .zeroshot import ZeroShotConfig


__getattr__, __dir__ = lazy_attributes(__name__, _MODULE_OF, globals())
