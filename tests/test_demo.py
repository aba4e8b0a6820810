"""A tiny end-to-end run of the demo recipe (`python -m training.demo`) on CPU: world, init, prior, control, C2LIP."""

from __future__ import annotations

import json

from modeling_concept_clip.evaluation.results import load_runs
from modeling_concept_clip.shapes_world import GenerateArguments, generate_world
from training import demo

TINY_WORLD = dict(
    num_train=64, num_test=12, captions_per_test_image=2, zeroshot_per_class=2, num_unseen=6, num_validation=4
)


def test_demo_recipe_end_to_end(tmp_path, capsys):
    world_dir, root = tmp_path / "world", tmp_path / "demo"
    generate_world(GenerateArguments(output_dir=str(world_dir), **TINY_WORLD))
    argv = ["--world_dir", str(world_dir), "--output_dir", str(root), "--batch_size", "16"]
    argv += ["--prior_steps", "2", "--steps", "2", "--eval_steps", "1"]
    assert demo.main(argv) == 0
    printed = capsys.readouterr().out

    runs = load_runs(root / "results.json")
    assert [run.model["name_or_path"] for run in runs] == [
        str(root / name) for name in ("bow_prior", "control", "c2lip")
    ]
    for run in runs:
        names = {benchmark.name for benchmark in run.benchmarks}
        assert {"probes", "probes_unseen", "binding", "binding_unseen", "retrieval", "zeroshot_shape"} <= names
    table = (root / "results.md").read_text()
    assert "| probes | swap_att |" in table and "Δ (C2LIP - control)" in table
    assert (root / "learning_curves.png").stat().st_size > 0
    # The model card's model-index names the world's probes, not the public benchmarks whose format they share.
    card = (root / "c2lip" / "README.md").read_text()
    assert "dataset:\n      name: Shapes world probes (SugarCrepe format)\n      type: shapes-world" in card
    assert "sugar-crepe" not in card and "coco-karpathy" not in card

    # Identical except for the concept losses: same prior, data, seed, steps and schedule.
    control = json.loads((root / "control" / "training_args.json").read_text())
    c2lip = json.loads((root / "c2lip" / "training_args.json").read_text())
    assert control["training"] == {**c2lip["training"], "output_dir": control["training"]["output_dir"]}
    assert control["model"] == c2lip["model"] and control["model"]["model_name_or_path"] == str(root / "bow_prior")
    assert (control["concept"]["concept_loss"], c2lip["concept"]["concept_loss"]) == (False, True)
    logs = {name: demo.read_log(root / name) for name in ("control", "c2lip")}
    losses = {name: [e for e in log if "loss" in e] for name, log in logs.items()}
    assert all("npc_loss" in e for e in losses["c2lip"]) and not any("npc_loss" in e for e in losses["control"])
    assert [e["step"] for e in logs["control"] if "eval/probes/swap" in e] == [1, 2]

    # A rerun with the same settings trains nothing; a changed setting retrains what depends on it.
    assert demo.main(argv) == 0
    printed = capsys.readouterr().out
    assert "Using the cached bag-of-words prior" in printed and "$ " not in printed
    assert demo.main([*argv[:-2], "--eval_steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "Using the cached bag-of-words prior" in printed and printed.count("$ ") == 2
