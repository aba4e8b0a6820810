"""Evaluation of CLIP/SigLIP checkpoints on compositionality, zero-shot and retrieval benchmarks.

Benchmarks read their public release formats from local folders; the scoring rules are `evaluate` metric
modules in `metrics/`. Command line: `concept-clip-eval` (`cli.py`). In a training loop:

    from modeling_concept_clip.evaluation import SugarCrepeConfig, evaluate_model

    run = evaluate_model(model, processor, [SugarCrepeConfig(name="probes", data_dir="probes", subsets=None)])
    accelerator.log(run.flat_metrics(prefix="eval/"), step=step)
"""

from .aro import OrderConfig, VGAttributionConfig, VGRelationConfig
from .data import EvaluationDataError, ImageRef
from .embedding import Embedder, EmbeddingConfig, ModelEmbedder
from .metrics import load_metric
from .presets import PRESETS, preset_benchmark
from .results import BenchmarkResult, EvaluationRun, MetricValue, comparison_table, load_runs, save_runs
from .retrieval import RetrievalConfig
from .runner import BENCHMARK_KINDS, benchmark_from_dict, evaluate_model, read_benchmark_file, run_benchmarks
from .spec import BenchmarkConfig
from .sugarcrepe import SugarCrepeConfig
from .sugarcrepe_pp import SugarCrepePlusPlusConfig
from .winoground import WinogroundConfig
from .zeroshot import ZeroShotConfig

__all__ = [
    "BENCHMARK_KINDS",
    "PRESETS",
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
    "RetrievalConfig",
    "SugarCrepeConfig",
    "SugarCrepePlusPlusConfig",
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
]
