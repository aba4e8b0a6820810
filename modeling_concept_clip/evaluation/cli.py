"""`concept-clip-eval`: evaluate CLIP/SigLIP checkpoints (baselines and C2LIP alike) on benchmarks from local files.

    concept-clip-eval --model PATH_OR_HUB_ID [PATH_OR_HUB_ID ...] --benchmarks sugarcrepe imagenet coco_retrieval \
        --data_dir data --output results.json
    concept-clip-eval --compare control.json c2lip.json       # side-by-side table of saved results

Results go to `--output` as JSON; a Markdown table (one column per model) is printed at the end.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from .data import EvaluationDataError
from .embedding import EmbeddingConfig
from .presets import preset_benchmark, presets_help
from .results import EvaluationRun, comparison_table, load_runs, save_runs
from .runner import evaluate_model, read_benchmark_file
from .spec import BenchmarkConfig

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16", "auto")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help, and the preset list printed as written."""


@dataclass
class ModelArguments:
    model: list[str] = field(
        default_factory=list,
        metadata={"help": "Checkpoint folders or Hub ids of CLIPModel/SiglipModel; several give a comparison."},
    )
    label: list[str] = field(
        default_factory=list, metadata={"help": "Column names of the models in the table (default: --model)."}
    )
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16, float16 or auto."})
    device: str = field(
        default="auto", metadata={"help": "auto (cuda if available, else cpu), cpu, cuda, cuda:1, mps."}
    )


@dataclass
class BenchmarkArguments:
    benchmarks: list[str] = field(
        default_factory=list,
        metadata={"help": "Benchmark presets, NAME or NAME=PATH (PATH replaces the default location; see below)."},
    )
    data_dir: str = field(default="data", metadata={"help": "Root of the presets' default locations."})
    benchmark_config: str | None = field(
        default=None,
        metadata={"help": "JSON or YAML list of {'kind': ..., <options>} benchmark entries (added to --benchmarks)."},
    )
    output: str | None = field(default=None, metadata={"help": "Where to write the results JSON."})
    compare: list[str] = field(
        default_factory=list, metadata={"help": "Results JSON files to put side by side with the new runs."}
    )


def build_benchmarks(args: BenchmarkArguments) -> list[BenchmarkConfig]:
    benchmarks = [preset_benchmark(token, args.data_dir) for token in args.benchmarks]
    if args.benchmark_config:
        benchmarks += read_benchmark_file(args.benchmark_config)
    return benchmarks


def resolve_device(device: str) -> torch.device:
    if device != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model_and_processor(name_or_path: str, dtype: str, device: torch.device):
    """`AutoModel` + `AutoProcessor` of a dual encoder; anything without image and text towers is refused."""
    from transformers import AutoModel, AutoProcessor

    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = AutoModel.from_pretrained(name_or_path, dtype=torch_dtype)
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise ValueError(f"{name_or_path}: {type(model).__name__} is not an image-text dual encoder")
    processor = AutoProcessor.from_pretrained(name_or_path)
    return model.to(device).eval(), processor


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(
        (ModelArguments, BenchmarkArguments, EmbeddingConfig),
        description=__doc__.split("\n\n")[0],
        epilog="benchmark presets (NAME: what PATH is [default under --data_dir]):\n" + presets_help(),
        formatter_class=_HelpFormatter,
    )
    model_args, bench_args, embedding_config = parser.parse_args_into_dataclasses(args=argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if model_args.label and len(model_args.label) != len(model_args.model):
        parser.error(f"--label needs one name per --model ({len(model_args.model)}), got {len(model_args.label)}")
    if model_args.dtype not in DTYPES:
        parser.error(f"--dtype must be one of {', '.join(DTYPES)}, got {model_args.dtype!r}")
    if not model_args.model and not bench_args.compare:
        parser.error("give --model (to evaluate) and/or --compare (saved results)")

    try:
        runs: list[EvaluationRun] = [run for path in bench_args.compare for run in load_runs(path)]
        benchmarks = build_benchmarks(bench_args) if model_args.model else []
    except (EvaluationDataError, ValueError, OSError) as error:  # bad input: a message, not a traceback
        logger.error("%s", error)
        return 1
    if model_args.model and not benchmarks:
        parser.error("give --benchmarks and/or --benchmark_config")
    device = resolve_device(model_args.device)
    for index, name in enumerate(model_args.model):
        logger.info("Evaluating %s on %s (%s)", name, device, model_args.dtype)
        try:
            model, processor = load_model_and_processor(name, model_args.dtype, device)
        except (OSError, ValueError) as error:  # not found, not loadable, not a dual encoder
            logger.error("Cannot load model %s: %s", name, error)
            return 1
        try:
            run = evaluate_model(model, processor, benchmarks, embedding_config, model_name=name)
        except EvaluationDataError as error:
            logger.error("%s", error)
            return 1
        run.model["label"] = model_args.label[index] if model_args.label else name
        runs.append(run)
        del model, processor
        gc.collect()
    if bench_args.output:
        logger.info("Results written to %s", save_runs(runs, bench_args.output))
    print(comparison_table(runs))
    return 0
