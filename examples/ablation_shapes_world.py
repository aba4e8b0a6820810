"""Ablation of C2LIP on the shapes world: the demo's stages over several seeds and loss variants, aggregated.

    python examples/ablation_shapes_world.py                                  # CLIP, seeds 0 1 2, every variant
    python examples/ablation_shapes_world.py --results_dir benchmarks/results # rewrite the committed results
    python examples/ablation_shapes_world.py --model_type siglip --seeds 0 1 2 --variants control c2lip

For every seed it builds its own initial model and bag-of-words prior (`training/configs/demo/bow_prior.yaml`), then
fine-tunes that prior with every variant, each a `python -m training.train` subprocess (the demo's code path):

| variant | recipe | change |
|---|---|---|
| `control` | `control.yaml` | caption loss only |
| `c2lip` | `c2lip.yaml` | caption + NPC + XAC, as in the recipe |
| `npc_only` | `c2lip.yaml` | `--xac_weight 0` |
| `xac_only` | `c2lip.yaml` | `--npc_weight 0 --xac_weight 1` (at the recipe's 0.01 alone it would be the control) |
| `owner` | `c2lip.yaml` | `--concept_positives owner` (the paper; the recipe uses "shared") |
| `control_equal_time` | `control.yaml` | more steps: as many as cost C2LIP's training time (equal time) |
| `negclip` | `control.yaml` | `--hard_negatives swap`: the hard-negative baseline (NegCLIP), caption loss with one swap negative per caption |
| `negclip_equal_time` | `control.yaml` | as `negclip`, with as many steps as cost C2LIP's training time |

The seed changes the initialisation, the prior's and the fine-tuning's data order and dropout-free randomness; the
world (data and probes) is the same for every seed. Every variant of one seed starts from the same prior, with the
same data order. Results, in `--results_dir` (default `<output_dir>/results`): `<name>.md` (mean ± standard deviation
over seeds of every probe, zero-shot task and retrieval R@1, at equal steps and at equal training time), `<name>.json`
(every metric of every run, and the learning curves) and `<name>_curves.png` (control vs C2LIP, mean ± std over
seeds, against steps and minutes).
A finished run is reused when its settings did not change, so an interrupted ablation resumes where it stopped, and
adding a variant later trains only that variant (keep `--output_dir` and `--world_dir` the same, outside the
repository or absolute: a run's settings name them, never the repository's own folder), e.g. `--variants control c2lip
negclip negclip_equal_time` after `--variants control c2lip`.

Equal time: `control_equal_time` (`negclip_equal_time`) trains `round(C2LIP steps x r)` steps, where r is the cost of
a C2LIP step over a control (NegCLIP) step, measured once (on the first seed's prior) with the runs' steps interleaved
in one process (`training.demo.step_costs`: median CPU seconds per step, data included), so that the load of a shared
machine changes all of them alike; cached in `<output_dir>/step_costs.json`. The equal-time variants need `c2lip`
(its steps), not their reference's run: `--variants c2lip control_equal_time negclip_equal_time` is the equal-time
comparison alone. Seeds added by a later call are measured on that call's first seed: to keep one step count for all
seeds, pass the first call's counts (printed, and in `<name>.json`) as `--equal_time_steps` and
`--negclip_equal_time_steps`. `--eval_split validation` evaluates every run on the world's validation split instead
of test/ and unseen/ (for choosing settings; the reported results use test/).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from transformers import HfArgumentParser  # noqa: E402

from modeling_concept_clip.evaluation.results import load_runs  # noqa: E402
from training.demo import (  # noqa: E402
    CURVES,
    _mean_std,
    benchmarks_file,
    curve_points,
    ensure_world,
    fine_tune,
    machine_description,
    plot_learning_curves,
    prepare_prior,
    read_log,
    stage_key,
    start_entry,
    step_costs,
    train_command,
    world_arguments,
)

VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "control": ("control.yaml", [], "control"),
    "c2lip": ("c2lip.yaml", [], "C2LIP"),
    "npc_only": ("c2lip.yaml", ["--xac_weight", "0"], "NPC only"),
    "xac_only": ("c2lip.yaml", ["--npc_weight", "0", "--xac_weight", "1"], "XAC only (w=1)"),
    "owner": ("c2lip.yaml", ["--concept_positives", "owner"], "owner positives"),
    "control_equal_time": ("control.yaml", [], "control, equal time"),
    "negclip": ("control.yaml", ["--hard_negatives", "swap"], "NegCLIP"),
    "negclip_equal_time": ("control.yaml", ["--hard_negatives", "swap"], "NegCLIP, equal time"),
}
# Equal-time variants: the variant whose time per step sets their steps (to fill C2LIP's training time).
EQUAL_TIME = {"control_equal_time": "control", "negclip_equal_time": "negclip"}
# The argument that fixes each equal-time variant's steps (None: from the measured step costs).
EQUAL_TIME_STEPS_ARGUMENT = {
    "control_equal_time": "equal_time_steps",
    "negclip_equal_time": "negclip_equal_time_steps",
}
# Paired differences shown in the table and the summary: (variant, reference), when both ran.
DELTAS: list[tuple[str, str, str]] = [
    ("c2lip", "control", "Δ C2LIP - control (equal steps)"),
    ("c2lip", "control_equal_time", "Δ C2LIP - control (equal time)"),
    ("c2lip", "negclip", "Δ C2LIP - NegCLIP (equal steps)"),
    ("c2lip", "negclip_equal_time", "Δ C2LIP - NegCLIP (equal time)"),
    ("negclip", "control", "Δ NegCLIP - control (equal steps)"),
    ("negclip_equal_time", "control_equal_time", "Δ NegCLIP - control (equal time)"),
]
# Rows of the table: (key in the flat metrics, label).
TABLE_ROWS: list[tuple[str, str]] = [
    ("probes/swap_att", "swap-att"),
    ("probes/replace_att", "replace-att"),
    ("probes/replace_obj", "replace-obj"),
    ("probes/add_obj", "add-obj"),
    ("probes_unseen/swap_att", "unseen swap-att"),
    ("probes_unseen/replace_att", "unseen replace-att"),
    ("probes_unseen/replace_obj", "unseen replace-obj"),
    ("probes_unseen/add_obj", "unseen add-obj"),
    ("binding/color_shape", "binding colour-shape"),
    ("binding/color_pattern", "binding colour-pattern"),
    ("binding/color_size", "binding colour-size"),
    ("binding/pattern_shape", "binding pattern-shape"),
    ("binding_unseen/color_shape", "unseen binding colour-shape"),
    ("binding_unseen/color_pattern", "unseen binding colour-pattern"),
    ("binding_unseen/color_size", "unseen binding colour-size"),
    ("binding_unseen/pattern_shape", "unseen binding pattern-shape"),
    ("zeroshot_shape/top1", "zero-shot shape"),
    ("zeroshot_color/top1", "zero-shot colour"),
    ("zeroshot_pattern/top1", "zero-shot pattern"),
    ("zeroshot_size/top1", "zero-shot size"),
    ("retrieval/i2t_R@1", "retrieval i2t R@1"),
    ("retrieval/t2i_R@1", "retrieval t2i R@1"),
]


@dataclass
class AblationArguments:
    model_type: str = field(default="clip", metadata={"help": "'clip' (softmax losses) or 'siglip' (sigmoid)."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "One prior and run set per seed."})
    variants: list[str] = field(default_factory=lambda: list(VARIANTS), metadata={"help": f"Of {list(VARIANTS)}."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Models (default outputs/ablation/<model_type>): <seed>/<variant>/."}
    )
    world_dir: str = field(default="data/shapes_world", metadata={"help": "The shapes world (generated if absent)."})
    results_dir: str | None = field(
        default=None,
        metadata={"help": "Where the tables and plot go (default <output_dir>/results; the README's committed results "
                  "are written with --results_dir benchmarks/results)."},
    )  # fmt: skip
    name: str | None = field(
        default=None, metadata={"help": "File name stem of the results (default ablation_shapes_world[_siglip])."}
    )
    steps: int | None = field(default=None, metadata={"help": "Fine-tuning steps (default: the recipes')."})
    prior_steps: int | None = field(default=None, metadata={"help": "Prior steps (default: the recipe's)."})
    batch_size: int | None = field(default=None, metadata={"help": "Batch size of every stage (default: 128)."})
    equal_time_steps: int | None = field(
        default=None,
        metadata={"help": "Steps of `control_equal_time` (default: C2LIP's steps times the cost of a C2LIP step over "
                  "a control step, measured once with their steps interleaved)."},
    )  # fmt: skip
    negclip_equal_time_steps: int | None = field(
        default=None,
        metadata={"help": "Steps of `negclip_equal_time` (default: C2LIP's steps times the cost of a C2LIP step over "
                  "a NegCLIP step, measured once with their steps interleaved)."},
    )  # fmt: skip
    curve_variants: list[str] = field(
        default_factory=lambda: ["control", "c2lip"],
        metadata={"help": "Variants evaluated every 100 steps (learning curves); the others only at the end."},
    )
    eval_split: str = field(
        default="test",
        metadata={"help": "'test' (test/, unseen/ and zeroshot/: the reported results) or 'validation' (the "
                  "world's validation/ part: for choosing settings)."},
    )  # fmt: skip
    step_cost_pairs: int = field(
        default=20, metadata={"help": "Interleaved steps of each run measured for the equal-time step counts."}
    )
    retrain: bool = field(default=False, metadata={"help": "Train every run again even if a current one exists."})


def final_metrics(folder: Path) -> dict[str, float]:
    metrics = load_runs(folder / "results.json")[-1].flat_metrics()
    log = read_log(folder)
    metrics["train_minutes"] = log[-1]["train_seconds"] / 60
    metrics["steps"] = log[-1]["step"]
    return metrics


def equal_time_steps(c2lip_steps: int, costs: dict[str, dict[str, float]], reference: str) -> int:
    """Steps of `reference` (control or NegCLIP) that cost as much as `c2lip_steps` C2LIP steps, from `step_costs`'
    per-step CPU seconds."""
    return max(1, round(c2lip_steps * costs["c2lip"]["cpu_seconds"] / costs[reference]["cpu_seconds"]))


def measured_step_costs(root: Path, prior: Path, flags: list[str], pairs: int, variants: list[str]) -> dict:
    """The per-step costs of `variants` fine-tuned from `prior` with `flags` (`training.demo.step_costs`, their steps
    interleaved), cached in `<root>/step_costs.json` and measured again only when the prior, the variants, the
    recipes or the flags change."""
    runs = {
        variant: train_command(VARIANTS[variant][0], root / "step_costs_scratch", prior, flags + VARIANTS[variant][1])
        for variant in variants
    }
    key = {
        variant: stage_key(VARIANTS[variant][0], prior, flags + VARIANTS[variant][1], pairs=pairs) for variant in runs
    }
    path = root / "step_costs.json"
    cached = json.loads(path.read_text()) if path.is_file() else None
    if cached is not None and cached.get("key") == key:
        return cached
    print(
        f"\nMeasuring the step costs of {', '.join(variants)} ({pairs} interleaved steps each, from {prior})",
        flush=True,
    )
    load_before = os.getloadavg()
    costs = step_costs({variant: command[3:] for variant, command in runs.items()}, pairs=pairs)
    record = {
        "key": key,
        "costs": costs,
        "load_average": [load_before, os.getloadavg()],
        "machine": machine_description(),
    }
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _cell(values: list[float], scale: float = 100, digits: int = 1) -> str:
    """Mean ± sample std over seeds of `scale * values` (default: in %); one seed has no spread, so its value is
    shown alone."""
    mean, std = _mean_std([scale * v for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def aggregate(results: dict[str, dict[int, dict[str, float]]], seeds: list[int]) -> dict:
    """Mean and std over seeds of every metric of every variant, and the paired differences to the control."""
    summary: dict = {}
    for variant, by_seed in results.items():
        keys = sorted(set.intersection(*(set(by_seed[s]) for s in seeds if s in by_seed)))
        summary[variant] = {}
        for key in keys:
            values = [by_seed[s][key] for s in seeds if s in by_seed]
            mean, std = _mean_std(values)
            summary[variant][key] = {"mean": mean, "std": std, "values": values}
    for variant, reference, _ in DELTAS:
        if reference not in results or variant not in results:
            continue
        paired = [s for s in seeds if s in results[reference] and s in results[variant]]
        summary[f"{variant}_minus_{reference}"] = {
            key: dict(zip(("mean", "std"), _mean_std([results[variant][s][key] - results[reference][s][key] for s in paired])))
            for key, _ in TABLE_ROWS
            if all(key in results[variant][s] and key in results[reference][s] for s in paired)
        }  # fmt: skip
    return summary


def markdown_table(results: dict[str, dict[int, dict[str, float]]], seeds: list[int], title: str) -> str:
    variants = [v for v in ["prior", *VARIANTS] if v in results]
    labels = ["BoW prior" if v == "prior" else VARIANTS[v][2] for v in variants]
    deltas = [delta for delta in DELTAS if {delta[0], delta[1]} <= set(results)]
    header = ["metric (%)", *labels, *(label for _, _, label in deltas)]
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for key, label in TABLE_ROWS:
        cells = []
        for variant in variants:
            values = [results[variant][s][key] for s in seeds if s in results[variant] and key in results[variant][s]]
            cells.append(_cell(values) if values else "–")
        for variant, reference, _ in deltas:
            pairs = [(results[variant].get(s, {}), results[reference].get(s, {})) for s in seeds]
            differences = [run[key] - ref[key] for run, ref in pairs if key in run and key in ref]
            cells.append(_cell(differences) if differences else "–")
        lines.append("| " + " | ".join([label, *cells]) + " |")
    for key, label in (("steps", "steps"), ("train_minutes", "training minutes")):
        cells = []
        for variant in variants:
            values = [results[variant][s].get(key) for s in seeds if s in results[variant]]
            values = [v for v in values if v is not None]
            if values:
                # Minutes to 0.01 (0.6 s): a short run must not read as 0.0 minutes.
                cells.append(f"{_mean_std(values)[0]:.0f}" if key == "steps" else _cell(values, scale=1, digits=2))
            else:
                cells.append("–")
        cells += [""] * len(deltas)
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    (args,) = HfArgumentParser(AblationArguments).parse_args_into_dataclasses(args=argv)
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"Unknown variants {unknown}; choose from {list(VARIANTS)}.")
    equal_steps = {variant: getattr(args, argument) for variant, argument in EQUAL_TIME_STEPS_ARGUMENT.items()}
    # Checked before any training. The reference's step cost is measured on the prior: its run is not needed.
    for variant, argument in EQUAL_TIME_STEPS_ARGUMENT.items():
        if variant in args.variants and equal_steps[variant] is None and "c2lip" not in args.variants:
            raise ValueError(f"{variant} needs c2lip in --variants (its steps set the time), or --{argument} N.")
    os.chdir(ROOT)  # the recipes and the `python -m training.train` subprocesses use paths relative to the root
    root = Path(args.output_dir or f"outputs/ablation/{args.model_type}")
    name = args.name or ("ablation_shapes_world" if args.model_type == "clip" else "ablation_shapes_world_siglip")
    world = ensure_world(args.world_dir)
    benchmarks = benchmarks_file(root, args.world_dir, args.eval_split)
    # The equal-steps runs first: C2LIP's steps set those of the equal-time variants.
    order = [v for v in ("control", "c2lip", "negclip") if v in args.variants]
    order += [v for v in args.variants if v not in order]
    # Step costs to measure: C2LIP's and those of the references of the equal-time variants without a step count.
    timed = ["c2lip"] + [EQUAL_TIME[v] for v in EQUAL_TIME if v in args.variants and equal_steps[v] is None]
    costs = None
    batch = ["--per_device_train_batch_size", str(args.batch_size)] if args.batch_size else []
    prior_extra = batch + (["--max_train_steps", str(args.prior_steps)] if args.prior_steps else [])
    results: dict[str, dict[int, dict[str, float]]] = {}
    logs: dict[str, list[list[dict]]] = {}
    for seed in args.seeds:
        seed_root = root / f"seed{seed}"
        prior = prepare_prior(seed_root, args.model_type, seed, world, args.world_dir, benchmarks, prior_extra)
        results.setdefault("prior", {})[seed] = final_metrics(prior)
        base = ["--seed", str(seed)] + world_arguments(args.world_dir, benchmarks) + batch
        base += ["--max_train_steps", str(args.steps)] if args.steps else []
        for variant in order:
            recipe, flags, _ = VARIANTS[variant]
            extra = base + flags + ([] if variant in args.curve_variants else ["--eval_steps", "none"])
            if variant in EQUAL_TIME:
                reference = EQUAL_TIME[variant]
                if equal_steps[variant] is None:
                    costs = costs or measured_step_costs(root, prior, base, args.step_cost_pairs, timed)
                    equal_steps[variant] = equal_time_steps(results["c2lip"][seed]["steps"], costs["costs"], reference)
                    ratio = costs["costs"]["c2lip"]["cpu_seconds"] / costs["costs"][reference]["cpu_seconds"]
                    print(
                        f"\n{variant}: {equal_steps[variant]} steps (a C2LIP step costs {ratio:.2f} {reference} steps)"
                    )
                extra = extra + ["--max_train_steps", str(equal_steps[variant])]
            folder, _ = fine_tune(variant, recipe, seed_root, prior, extra, retrain=args.retrain)
            results.setdefault(variant, {})[seed] = final_metrics(folder)
            logs.setdefault(variant, []).append([start_entry(prior), *read_log(folder)])

    results_dir = Path(args.results_dir) if args.results_dir else root / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    title = (
        f"Shapes world, {args.model_type}, {len(args.seeds)} seeds ({' '.join(map(str, args.seeds))}): mean ± std "
        "over seeds (each seed: its own init and prior; Δ: mean ± std of the paired differences)"
    )
    table = markdown_table(results, args.seeds, title)
    command = "python examples/ablation_shapes_world.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = machine_description()
    (results_dir / f"{name}.md").write_text(f"{table}\n\nCommand: `{command.strip()}` ({machine})\n")
    curves = {
        label: {metric: curve_points(logs[variant], metric) for metric in CURVES}
        for variant, label in (("control", "control"), ("c2lip", "C2LIP"))
        if variant in logs
    }
    payload = {
        "command": command.strip(),
        "machine": machine,
        "model_type": args.model_type,
        "seeds": args.seeds,
        "equal_time_steps": equal_steps["control_equal_time"],
        "negclip_equal_time_steps": equal_steps["negclip_equal_time"],
        "step_costs": costs,
        "runs": {variant: {str(s): m for s, m in by_seed.items()} for variant, by_seed in results.items()},
        "summary": aggregate(results, args.seeds),
        "curves": curves,
    }
    (results_dir / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    plotted = {VARIANTS[v][2]: logs[v] for v in ("control", "c2lip") if v in logs}
    png = plot_learning_curves(
        plotted, results_dir / f"{name}_curves.png", f"{title.split(':')[0]}: mean ± std over seeds", machine
    )
    print("\n" + table)
    print(f"\nWritten: {results_dir / f'{name}.md'}, {results_dir / f'{name}.json'}" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
