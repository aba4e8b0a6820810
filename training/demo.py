"""The embedded default (`make demo`): C2LIP next to a control on the built-in shapes world, on a CPU in minutes.

    python -m training.demo                         # CLIP; --model_type siglip for the sigmoid form

No pretrained weights or image-caption data can be downloaded here, so the demo builds its own laboratory, and
mirrors the paper's setting (fine-tuning a model that behaves like a bag of words):

1. `world`: the shapes world (`python -m modeling_concept_clip.shapes_world`), if absent;
2. `init`: a randomly initialised world CLIP (tokenizer and processor included);
3. `bow_prior`: pretraining on order-free captions (every word of the caption, shuffled): a bag-of-words model that
   retrieves captions well and knows colours and patterns, but cannot tell which attribute belongs to which object;
4. `control` and `c2lip`: fine-tuned identically from the prior (same data, order, seed, steps and schedule) on the
   real captions, with the caption loss only and with C2LIP's concept losses (concepts from spaCy);
5. a table of the three models on the probes, zero-shot and retrieval, and the learning curves of the two
   fine-tunings against steps and against training minutes (`learning_curves.png`).

A stage is skipped when its output exists and was made with the same settings (world version, recipe, seed, the
stage it starts from), so a rerun costs only what changed. Every training stage is
`python -m training.train --config training/configs/demo/<stage>.yaml ...`, printed before it runs.
`examples/ablation_shapes_world.py` runs the same stages over several seeds and loss variants.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from modeling_concept_clip.evaluation.results import EvaluationRun, load_runs, save_runs

logger = logging.getLogger(__name__)
RECIPES = Path(__file__).resolve().parent / "configs" / "demo"
DEFAULT_WORLD = "data/shapes_world"  # the path the recipes and benchmarks.yaml name
STAGE_FILE = "demo_stage.json"
# Bump when `save_world_checkpoint` changes what it writes (2: SigLIP starts at scale 10 and bias -10).
INIT_VERSION = 2
CURVES = {
    "probes/swap_att": "swap-att (full captions)",
    "binding/color_shape": "binding colour-shape",
    "binding/color_pattern": "binding colour-pattern",
    "binding/color_size": "binding colour-size",
    "binding/pattern_shape": "binding pattern-shape",
    "zeroshot_shape/top1": "zero-shot shape",
    "retrieval/i2t_R@1": "image-to-text R@1",
}


@dataclass
class DemoArguments:
    model_type: str = field(default="clip", metadata={"help": "'clip' (softmax losses) or 'siglip' (sigmoid)."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Where the stages write their models (outputs/demo, outputs/demo_siglip)."}
    )
    world_dir: str = field(default=DEFAULT_WORLD, metadata={"help": "The shapes world (generated if absent)."})
    seed: int = field(default=0, metadata={"help": "Seed of the initialisation and of every training stage."})
    steps: int | None = field(default=None, metadata={"help": "Fine-tuning steps (default: the recipes')."})
    prior_steps: int | None = field(default=None, metadata={"help": "Prior steps (default: the recipe's)."})
    batch_size: int | None = field(default=None, metadata={"help": "Batch size of every stage (default: 128)."})
    eval_steps: int | None = field(
        default=None, metadata={"help": "Evaluate the fine-tunings every N steps (default: the recipes' 100)."}
    )
    retrain: bool = field(default=False, metadata={"help": "Train control and C2LIP again even if present."})


def ensure_world(world_dir: str | Path) -> dict:
    """The `world.json` of the shapes world in `world_dir`: a complete world of the current generator version is
    used as it is (whatever its settings); otherwise the default world is generated there (parts written by an
    interrupted run or another version are replaced)."""
    from modeling_concept_clip.shapes_world.generate import (
        GENERATOR_VERSION,
        GenerateArguments,
        generate_world,
        read_world_info,
    )

    info = read_world_info(world_dir)
    if info is not None and info.get("version") == GENERATOR_VERSION:
        print(f"Using the shapes world {world_dir} ({info['counts']['train']['scenes']} training scenes)", flush=True)
        return info
    print(f"Generating the shapes world into {world_dir} (once)", flush=True)
    return generate_world(GenerateArguments(output_dir=str(world_dir), seed=0, overwrite=True))


def benchmarks_file(root: Path, world_dir: str | Path, split: str = "test") -> Path:
    """The demo's benchmarks (`benchmarks.yaml`: test/, unseen/ and zeroshot/; `split="validation"`:
    `benchmarks_validation.yaml`, the world's validation/ part), pointed at `world_dir`, as a copy under `root`:
    the stages name the copy, so their settings (and whether a finished stage is reused) do not depend on where the
    repository is checked out."""
    if split not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation', got {split!r}.")
    recipe = RECIPES / ("benchmarks.yaml" if split == "test" else "benchmarks_validation.yaml")
    root.mkdir(parents=True, exist_ok=True)
    path = root / recipe.name
    path.write_text(recipe.read_text().replace(DEFAULT_WORLD, str(world_dir)))
    return path


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def stage_key(recipe: str | None, parent: Path | None, extra: list[str], **settings) -> dict:
    """What a stage's output depends on: its recipe file, the stage it starts from, its arguments and settings."""
    key = {"recipe": recipe, "extra": extra, **settings}
    if recipe is not None:
        key["recipe_digest"] = _digest((RECIPES / recipe).read_text())
    if parent is not None:
        key["parent"] = str(parent)
        key["parent_key"] = _digest(read_stage_key(parent))
    return key


def read_stage_key(folder: Path) -> dict | None:
    path = Path(folder) / STAGE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def is_current(folder: Path, key: dict, output: str) -> bool:
    """Whether `folder` holds `output` made with exactly `key`."""
    return (Path(folder) / output).exists() and read_stage_key(folder) == key


def write_stage_key(folder: Path, key: dict) -> None:
    (Path(folder) / STAGE_FILE).write_text(json.dumps(key, indent=1, sort_keys=True) + "\n")


def train_command(recipe: str, output_dir: Path, model: Path, extra: list[str]) -> list[str]:
    command = [sys.executable, "-m", "training.train", "--config", str(RECIPES / recipe)]
    command += ["--model_name_or_path", str(model), "--output_dir", str(output_dir), "--overwrite_output_dir"]
    return command + extra


def run_stage(recipe: str, output_dir: Path, model: Path, extra: list[str], key: dict | None = None) -> None:
    """Run one training stage as a subprocess (`python -m training.train --config <recipe> ...`)."""
    command = train_command(recipe, output_dir, model, extra)
    print("\n$ " + shlex.join(command), flush=True)
    subprocess.run(command, check=True)
    if key is not None:
        write_stage_key(output_dir, key)


def world_arguments(world_dir: str | Path, benchmarks: Path, with_eval: bool = True) -> list[str]:
    """Flags that point a demo recipe at `world_dir` (the recipes name the default world)."""
    extra = ["--train_file", str(Path(world_dir) / "train" / "metadata.jsonl")]
    return extra + (["--eval_benchmarks", str(benchmarks)] if with_eval else [])


def prepare_prior(
    root: Path, model_type: str, seed: int, world: dict, world_dir: str | Path, benchmarks: Path, extra: list[str] = ()
) -> Path:
    """The initial model and the bag-of-words prior under `root` (each reused when made with the same settings).

    `world`: the world's `world.json` (from `ensure_world`); `extra`: more flags of the prior's training stage."""
    from modeling_concept_clip.shapes_world.configs import save_world_checkpoint
    from modeling_concept_clip.shapes_world.vocabulary import WorldConfig

    init, prior = root / "init", root / "bow_prior"
    init_key = stage_key(None, None, [], model_type=model_type, seed=seed, world=_digest(world), init=INIT_VERSION)
    if not is_current(init, init_key, "config.json"):
        save_world_checkpoint(init, model_type, world=WorldConfig(**world["world"]), seed=seed)
        write_stage_key(init, init_key)
    extra = ["--seed", str(seed)] + world_arguments(world_dir, benchmarks) + list(extra)
    prior_key = stage_key("bow_prior.yaml", init, extra)
    if is_current(prior, prior_key, "results.json"):
        print(f"\nUsing the cached bag-of-words prior {prior}", flush=True)
    else:
        run_stage("bow_prior.yaml", prior, init, extra, prior_key)
    return prior


def fine_tune(
    name: str, recipe: str, root: Path, prior: Path, extra: list[str], retrain: bool = False
) -> tuple[Path, bool]:
    """Fine-tune `prior` with `recipe` into `root / name` unless a current result is there; returns (folder, ran)."""
    output_dir = root / name
    key = stage_key(recipe, prior, extra)
    if not retrain and is_current(output_dir, key, "results.json"):
        print(f"\nUsing the finished run {output_dir}", flush=True)
        return output_dir, False
    run_stage(recipe, output_dir, prior, extra, key)
    return output_dir, True


def _endless(loaders):
    """The training batches of epoch 0, 1, ... (a short data set must not end a measurement)."""
    from modeling_concept_clip.training.state import TrainState

    epoch = 0
    while True:
        yield from loaders.train_batches(TrainState(epoch=epoch))
        epoch += 1


def step_costs(runs: dict[str, list[str]], pairs: int = 20, warmup: int = 3) -> dict[str, dict[str, float]]:
    """What one training step of each run costs, measured in one process with the runs' steps interleaved.

    `runs`: name -> arguments of `python -m training.train` (recipe, model, data, flags), e.g. from
    `train_command(...)[3:]`. Each run is set up as `training.train` sets it up (model, data with concepts, optimizer,
    schedule), with its batches collated in this process (no loader workers, so that the data's cost counts too);
    then `warmup` steps of each, and `pairs` rounds of one step of every run in turn. A step is a batch, forward,
    backward, clipping, update and logit-scale clamp, as in training.

    Interleaving gives every run the same machine: on a shared machine the load changes from minute to minute and
    would bias runs timed one after the other. Returns per run the median CPU seconds of this process per step
    (`cpu_seconds`, what the ratio of two runs is read from) and the median wall-clock seconds (`wall_seconds`).
    """
    import torch
    from accelerate.utils import send_to_device, set_seed

    from modeling_concept_clip.training.arguments import parse_arguments
    from modeling_concept_clip.training.data import build_loaders
    from modeling_concept_clip.training.engines import build_accelerator, clamp_parameter_
    from modeling_concept_clip.training.loop import build_model, prepare_training

    states = {}
    for name, argv in runs.items():
        arguments = parse_arguments([*argv, "--dataloader_num_workers", "0", "--report_to", "none"])
        args = arguments.training
        accelerator = build_accelerator(args)
        set_seed(args.seed)
        model, processor = build_model(arguments.model, arguments.concept.loss_config())
        loaders, _ = build_loaders(accelerator, arguments, processor, model.config.model_type)
        model, optimizer, scheduler = prepare_training(accelerator, model, loaders, args)
        states[name] = (accelerator, args, model, optimizer, scheduler, _endless(loaders))

    def step(name: str) -> tuple[float, float]:
        accelerator, args, model, optimizer, scheduler, batches = states[name]
        cpu, wall = time.process_time(), time.perf_counter()
        batch = next(batches)
        batch.pop("skipped"), batch.pop("num_rows")
        outputs = model(**send_to_device(batch, accelerator.device), return_loss=True)
        accelerator.backward(outputs.loss)
        if args.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        clamp_parameter_(accelerator, model, "logit_scale", math.log(args.max_logit_scale))
        return time.process_time() - cpu, time.perf_counter() - wall

    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    torch.manual_seed(0)
    for round_ in range(warmup + pairs):
        for name in runs:
            cost = step(name)
            if round_ >= warmup:
                measured[name].append(cost)

    def median(values: list[float]) -> float:
        values = sorted(values)
        middle = len(values) // 2
        return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2

    return {
        name: {
            "cpu_seconds": median([cpu for cpu, _ in costs]),
            "wall_seconds": median([wall for _, wall in costs]),
            "steps": len(costs),
        }
        for name, costs in measured.items()
    }


def read_log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(folder) / "train_log.jsonl").read_text().splitlines()]


def start_entry(prior: Path) -> dict:
    """The prior's evaluation as a log entry at step 0 (where every fine-tuning's learning curve starts)."""
    run = load_runs(Path(prior) / "results.json")[-1]
    return {"step": 0, "train_seconds": 0.0, **run.flat_metrics(prefix="eval/")}


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def curve_points(logs: list[list[dict]], metric: str) -> list[tuple[int, float, float, float]]:
    """(step, mean training minutes, mean %, std %) over runs, at the steps every run evaluated."""
    by_step: dict[int, list[dict]] = {}
    for entries in logs:
        for entry in entries:
            if f"eval/{metric}" in entry:
                by_step.setdefault(entry["step"], []).append(entry)
    points = []
    for step in sorted(by_step):
        entries = by_step[step]
        if len(entries) != len(logs):
            continue
        mean, std = _mean_std([100 * e[f"eval/{metric}"] for e in entries])
        minutes = sum(e["train_seconds"] for e in entries) / len(entries) / 60
        points.append((step, minutes, mean, std))
    return points


def machine_description() -> str:
    """The hardware the training stages run on (this machine), for the time axis and the result files: the GPU's
    name, else the CPU cores available and torch's thread count (timings and, through the order of float sums, the
    numbers themselves depend on both)."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU, {cores} cores, {torch.get_num_threads()} torch threads"


def plot_learning_curves(
    logs: dict[str, list[list[dict]]], path: Path, title: str | None = None, machine: str | None = None
) -> Path | None:
    """Each probe (one row) against steps (left) and against training minutes (right), one line per model: the mean
    over runs (the `train_log.jsonl` entries of each seed), with a band of one standard deviation when there are
    several. `machine`: where the training ran, for the time axis (default: `machine_description()`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no learning curves (pip install matplotlib).")
        return None
    metrics = [m for m in CURVES if any(curve_points(runs, m) for runs in logs.values())]
    if not metrics:
        logger.warning("No evaluation during training (--eval_steps): no learning curves.")
        return None
    machine = machine or machine_description()
    figure, axes = plt.subplots(len(metrics), 2, figsize=(8, 2.3 * len(metrics) + 0.6), squeeze=False)
    for row, metric in enumerate(metrics):
        for label, runs in logs.items():
            points = curve_points(runs, metric)
            if not points:
                continue
            steps, minutes, means, stds = (list(values) for values in zip(*points))
            for column, xs in ((0, steps), (1, minutes)):
                line = axes[row][column].plot(xs, means, marker="o", markersize=3, label=label)[0]
                if len(runs) > 1:
                    low = [m - s for m, s in zip(means, stds)]
                    high = [m + s for m, s in zip(means, stds)]
                    axes[row][column].fill_between(xs, low, high, color=line.get_color(), alpha=0.15)
        axes[row][0].set_ylabel(f"{CURVES[metric]} (%)", fontsize=8)
        for column in (0, 1):
            axes[row][column].grid(alpha=0.3)
    axes[-1][0].set_xlabel("optimizer steps")
    axes[-1][1].set_xlabel(f"training minutes ({machine})", fontsize=8)
    axes[0][0].legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def demo_table(runs: list[EvaluationRun], labels: list[str]) -> str:
    """A Markdown table, one row per metric, one column per model, and C2LIP minus control (the last two runs)."""
    rows: dict[tuple[str, str], list[float | None]] = {}
    for column, run in enumerate(runs):
        for benchmark in run.benchmarks:
            for metric in benchmark.metrics:
                rows.setdefault((benchmark.name, metric.key), [None] * len(runs))[column] = metric.value
    lines = ["| benchmark | metric | " + " | ".join(labels) + " | Δ (C2LIP - control) |"]
    lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(labels) + 1)) + "|")
    for (benchmark, key), values in rows.items():
        cells = [f"{100 * v:.1f}" if v is not None else "–" for v in values]
        control, c2lip = values[-2], values[-1]
        cells.append(f"{100 * (c2lip - control):+.1f}" if control is not None and c2lip is not None else "–")
        lines.append("| " + " | ".join([benchmark, key, *cells]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    (args,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.model_type not in ("clip", "siglip"):
        raise ValueError(f"--model_type must be 'clip' or 'siglip', got {args.model_type!r}.")
    root = Path(args.output_dir or ("outputs/demo" if args.model_type == "clip" else "outputs/demo_siglip"))
    start = time.perf_counter()

    world = ensure_world(args.world_dir)
    benchmarks = benchmarks_file(root, args.world_dir)
    batch = ["--per_device_train_batch_size", str(args.batch_size)] if args.batch_size else []
    prior_extra = batch + (["--max_train_steps", str(args.prior_steps)] if args.prior_steps else [])
    prior = prepare_prior(root, args.model_type, args.seed, world, args.world_dir, benchmarks, prior_extra)
    extra = ["--seed", str(args.seed)] + world_arguments(args.world_dir, benchmarks) + batch
    extra += ["--max_train_steps", str(args.steps)] if args.steps else []
    extra += ["--eval_steps", str(args.eval_steps)] if args.eval_steps else []
    for name in ("control", "c2lip"):
        fine_tune(name, f"{name}.yaml", root, prior, extra, retrain=args.retrain)

    folders = {"BoW prior": prior, "control": root / "control", "C2LIP": root / "c2lip"}
    runs = [load_runs(folder / "results.json")[-1] for folder in folders.values()]
    table = demo_table(runs, list(folders))
    save_runs(runs, root / "results.json")
    (root / "results.md").write_text(table + "\n")
    logs = {label: [[start_entry(prior), *read_log(folders[label])]] for label in ("control", "C2LIP")}
    title = f"shapes world, {args.model_type}, seed {args.seed}: control vs C2LIP fine-tuned from the same prior"
    curves = plot_learning_curves(logs, root / "learning_curves.png", title)
    print(f"\nShapes world, {args.model_type}, held-out probes (percent; last column: C2LIP - control):\n")
    print(table)
    seconds = {label: read_log(folders[label])[-1]["train_seconds"] for label in ("control", "C2LIP")}
    print(
        f"\nTraining time (evaluation excluded; {machine_description()}): control {seconds['control'] / 60:.2f} min, "
        f"C2LIP {seconds['C2LIP'] / 60:.2f} min for the same steps."
    )
    print(f"Models: {root / 'control'} and {root / 'c2lip'} (plain checkpoints with model cards)")
    if curves:
        print(f"Learning curves: {curves}")
    print(f"Demo time: {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
