"""Fine-tune a shapes-world prior with a demo recipe and extra flags, evaluated on the world's validation split: one
point of a recipe search (`benchmarks/results/demo_lab_notebook.md` lists the points and their commands).

    python benchmarks/demo_sweep.py --prior outputs/demo_siglip/bow_prior --recipe c2lip.yaml --name lr1e-3 \
        -- --learning_rate 1e-3

The run goes to `<prior>/../sweep/<name>` (reused when its settings did not change, like the demo's stages), with
the demo's seed and data, `--eval_benchmarks` the validation split (`benchmarks_validation.yaml`) and no evaluation
during training unless the flags ask for it. Prints the run's validation metrics (percent) as one JSON line. Settings
are chosen on these numbers only, never on test/ or unseen/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from modeling_concept_clip.evaluation.results import load_runs  # noqa: E402
from training.demo import benchmarks_file, fine_tune, read_log, world_arguments  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior", required=True)
    parser.add_argument("--recipe", required=True, help="control.yaml, c2lip.yaml or bow_prior.yaml")
    parser.add_argument("--name", required=True)
    parser.add_argument("--world_dir", default="data/shapes_world")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(own)
    prior = Path(args.prior).resolve()
    root = prior.parent / "sweep"
    benchmarks = benchmarks_file(root, args.world_dir, "validation")
    extra = ["--seed", str(args.seed), *world_arguments(args.world_dir, benchmarks), "--eval_steps", "none", *flags]
    folder, _ = fine_tune(args.name, args.recipe, root, prior, extra)
    metrics = load_runs(folder / "results.json")[-1].flat_metrics()
    minutes = read_log(folder)[-1]["train_seconds"] / 60
    shown = {
        key: round(100 * value, 1) for key, value in metrics.items() if key.endswith(("top1", "R@1")) or "/" in key
    }
    print(json.dumps({"name": args.name, "train_minutes": round(minutes, 2), **shown}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
