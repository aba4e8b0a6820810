"""`examples/ablation_shapes_world.py`: the aggregation against hand computations, and a tiny run of two seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modeling_concept_clip.evaluation.results import load_runs
from modeling_concept_clip.shapes_world import GenerateArguments, generate_world

from .test_examples import load_example

ablation = load_example("ablation_shapes_world")


def test_table_cells_are_mean_and_sample_std_over_seeds_and_paired_differences():
    results = {
        "control": {0: {"probes/swap_att": 0.5, "steps": 500}, 1: {"probes/swap_att": 0.6, "steps": 500}},
        "c2lip": {0: {"probes/swap_att": 0.7, "steps": 500}, 1: {"probes/swap_att": 0.9, "steps": 500}},
    }
    table = ablation.markdown_table(results, [0, 1], "t")
    row = next(line for line in table.splitlines() if line.startswith("| swap-att |"))
    # control 50, 60 -> 55.0 ± 7.1; C2LIP 70, 90 -> 80.0 ± 14.1; paired differences 20, 30 -> 25.0 ± 7.1.
    assert row == "| swap-att | 55.0 ± 7.1 | 80.0 ± 14.1 | 25.0 ± 7.1 |"
    assert "| zero-shot shape | – | – |" in table  # a metric no run has is shown as missing, not as 0

    summary = ablation.aggregate(results, [0, 1])
    assert summary["c2lip"]["probes/swap_att"]["mean"] == pytest.approx(0.8)
    assert summary["c2lip_minus_control"]["probes/swap_att"]["std"] == pytest.approx(0.0707107, rel=1e-5)
    # With NegCLIP: its column after C2LIP's, then C2LIP - control, C2LIP - NegCLIP and NegCLIP - control.
    results["negclip"] = {0: {"probes/swap_att": 0.8}, 1: {"probes/swap_att": 0.7}}
    table = ablation.markdown_table(results, [0, 1], "t")
    header = next(line for line in table.splitlines() if line.startswith("| metric"))
    assert header.endswith(
        "| control | C2LIP | NegCLIP | Δ C2LIP - control (equal steps) | Δ C2LIP - NegCLIP (equal steps) "
        "| Δ NegCLIP - control (equal steps) |"
    )
    row = next(line for line in table.splitlines() if line.startswith("| swap-att |"))
    # NegCLIP 80, 70 -> 75.0 ± 7.1; C2LIP - NegCLIP -10, 20 -> 5.0 ± 21.2; NegCLIP - control 30, 10 -> 20.0 ± 14.1.
    assert row == "| swap-att | 55.0 ± 7.1 | 80.0 ± 14.1 | 75.0 ± 7.1 | 25.0 ± 7.1 | 5.0 ± 21.2 | 20.0 ± 14.1 |"
    summary = ablation.aggregate(results, [0, 1])
    assert summary["c2lip_minus_negclip"]["probes/swap_att"]["mean"] == pytest.approx(0.05)


def test_equal_time_steps_scale_c2lips_steps_by_the_cost_ratio():
    costs = {"control": {"cpu_seconds": 0.4}, "c2lip": {"cpu_seconds": 0.52}}
    costs = {"control": {"cpu_seconds": 0.4}, "negclip": {"cpu_seconds": 0.5}, "c2lip": {"cpu_seconds": 0.52}}
    assert ablation.equal_time_steps(500, costs, "control") == 650  # 500 x 1.3
    assert ablation.equal_time_steps(500, costs, "negclip") == 520  # 500 x 1.04
    costs["c2lip"]["cpu_seconds"] = 0.841
    assert ablation.equal_time_steps(500, costs, "control") == 1051  # 1051.25, rounded
    costs = {"control": {"cpu_seconds": 1.0}, "c2lip": {"cpu_seconds": 0.1}}
    assert ablation.equal_time_steps(1, costs, "control") == 1


def test_short_runs_do_not_read_as_zero_minutes():
    results = {variant: {0: {"steps": 5, "train_minutes": 2.4 / 60}} for variant in ("control", "c2lip")}
    table = ablation.markdown_table(results, [0], "t")
    assert "| training minutes | 0.04 | 0.04 |" in table  # one seed: no spread to show
    assert "| swap-att | – | – |" in table
    results = {"control": {0: {"probes/swap_att": 0.5}}, "c2lip": {0: {"probes/swap_att": 0.75}}}
    assert "| swap-att | 50.0 | 75.0 | 25.0 |" in ablation.markdown_table(results, [0], "t")


def test_an_equal_time_variant_without_c2lip_or_a_step_count_is_refused_before_any_training(tmp_path):
    root = tmp_path / "ablation"
    for variant, flag in (
        ("control_equal_time", "--equal_time_steps"),
        ("negclip_equal_time", "--negclip_equal_time_steps"),
    ):
        argv = ["--variants", variant, "--output_dir", str(root), "--world_dir", str(tmp_path / "world")]
        with pytest.raises(ValueError, match=f"{variant} needs c2lip in --variants .* or {flag} N"):
            ablation.main(argv)
    assert not root.exists() and not (tmp_path / "world").exists()


def test_tiny_ablation_over_two_seeds_then_added_variants_reuse_the_finished_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the script changes into the repository root; the fixture changes back
    world = tmp_path / "world"
    tiny = dict(
        num_train=48, num_test=8, captions_per_test_image=2, zeroshot_per_class=2, num_unseen=4, num_validation=4
    )
    generate_world(GenerateArguments(output_dir=str(world), **tiny))
    # No --results_dir: the results go under the output folder, never over the committed benchmarks/results.
    root = tmp_path / "ablation"
    results_dir = root / "results"
    committed = {path: path.stat().st_mtime_ns for path in (ablation.ROOT / "benchmarks" / "results").iterdir()}
    common = ["--world_dir", str(world), "--output_dir", str(root), "--steps", "2", "--prior_steps", "2"]
    common += ["--batch_size", "16"]
    assert ablation.main(common + ["--seeds", "0", "1", "--variants", "control", "c2lip", "--name", "tiny"]) == 0
    # A run's settings never name the repository's folder, so another checkout reuses them (the lead adds variants
    # from its own checkout); the folders are this test's.
    stage_files = sorted(root.rglob("demo_stage.json"))
    assert len(stage_files) == 2 * 4  # per seed: init, bow_prior, control, c2lip
    for path in stage_files:
        assert str(ablation.ROOT) not in path.read_text(), path

    payload = json.loads((results_dir / "tiny.json").read_text())
    assert set(payload["runs"]) == {"prior", "control", "c2lip"}
    for variant in ("control", "c2lip"):
        for seed in (0, 1):
            expected = load_runs(root / f"seed{seed}" / variant / "results.json")[-1].flat_metrics()
            assert payload["runs"][variant][str(seed)]["probes/swap_att"] == expected["probes/swap_att"]
            assert payload["runs"][variant][str(seed)]["steps"] == 2
    # Each seed has its own prior, and both variants of a seed start from it.
    args = {
        (seed, variant): json.loads((root / f"seed{seed}" / variant / "training_args.json").read_text())
        for seed in (0, 1)
        for variant in ("control", "c2lip")
    }
    for seed in (0, 1):
        starts = {args[seed, v]["model"]["model_name_or_path"] for v in ("control", "c2lip")}
        assert starts == {str(root / f"seed{seed}" / "bow_prior")}
        assert args[seed, "c2lip"]["training"]["seed"] == seed
    swap = {v: [payload["runs"][v][s]["probes/swap_att"] for s in ("0", "1")] for v in ("control", "c2lip")}
    delta = payload["summary"]["c2lip_minus_control"]["probes/swap_att"]["mean"]
    assert delta == pytest.approx((swap["c2lip"][0] - swap["control"][0] + swap["c2lip"][1] - swap["control"][1]) / 2)
    table = (results_dir / "tiny.md").read_text()
    assert "Δ C2LIP - control (equal steps)" in table and "Command: `python examples/ablation_shapes_world.py" in table
    assert Path(results_dir / "tiny_curves.png").stat().st_size > 0

    # Variants added to the finished ablation train only themselves: the initial model, prior, control and C2LIP of
    # seed 0 are reused as they are (their files untouched). The equal-time step counts come from interleaved step
    # costs of C2LIP, the control and NegCLIP (measured once, cached).
    seed0 = root / "seed0"
    finished = {path: path.stat().st_mtime_ns for path in seed0.glob("*/*") if path.is_file()}
    capsys.readouterr()
    added = ["--seeds", "0", "--variants", "control", "c2lip", "control_equal_time", "negclip", "negclip_equal_time"]
    assert ablation.main(common + added + ["--name", "tiny_negclip", "--step_cost_pairs", "2"]) == 0
    assert {path: path.stat().st_mtime_ns for path in finished} == finished
    printed = capsys.readouterr().out
    assert f"Using the cached bag-of-words prior {seed0 / 'bow_prior'}" in printed
    assert all(f"Using the finished run {seed0 / variant}" in printed for variant in ("control", "c2lip"))
    costs = json.loads((root / "step_costs.json").read_text())["costs"]
    assert set(costs) == {"c2lip", "control", "negclip"} and costs["c2lip"]["steps"] == 2
    payload = json.loads((results_dir / "tiny_negclip.json").read_text())
    assert set(payload["runs"]) == {"prior", "control", "c2lip", "control_equal_time", "negclip", "negclip_equal_time"}
    # NegCLIP: the control's recipe from the same prior, seed and steps, plus the hard negatives, counted in its log;
    # not a curve variant, it trains without evaluation during training (the recipe's eval_steps off).
    control = json.loads((seed0 / "control" / "training_args.json").read_text())
    negclip = json.loads((seed0 / "negclip" / "training_args.json").read_text())
    assert negclip["training"]["eval_steps"] is None and control["training"]["eval_steps"] == 100
    assert negclip["data"]["hard_negatives"] == "swap" and control["data"]["hard_negatives"] == "none"
    assert negclip["concept"]["concept_loss"] is False and negclip["training"]["seed"] == 0
    for group, key in (("model", "model_name_or_path"), ("training", "max_train_steps"), ("data", "train_file")):
        assert negclip[group][key] == control[group][key]
    last = ablation.read_log(seed0 / "negclip")[-1]
    assert last["hard_negatives"] > 0 and last["hard_negatives"] + last["captions_without_hard_negative"] == 32
    # Equal time: as many control (NegCLIP) steps as cost C2LIP's 2 steps.
    assert payload["step_costs"]["costs"] == costs
    for variant, reference in (("control_equal_time", "control"), ("negclip_equal_time", "negclip")):
        steps = ablation.equal_time_steps(2, costs, reference)
        assert payload["runs"][variant]["0"]["steps"] == steps
    assert payload["equal_time_steps"] == ablation.equal_time_steps(2, costs, "control")
    assert payload["negclip_equal_time_steps"] == ablation.equal_time_steps(2, costs, "negclip")
    table = (results_dir / "tiny_negclip.md").read_text()
    assert "| NegCLIP | NegCLIP, equal time |" in table and "Δ C2LIP - NegCLIP (equal time)" in table
    assert "c2lip_minus_negclip_equal_time" in payload["summary"]
    assert "Δ NegCLIP - control (equal time)" in table
    # The refusal's advice as printed: a step count instead of c2lip trains that variant alone from the cached prior.
    fixed = ["--seeds", "0", "--variants", "control_equal_time", "--equal_time_steps", "3", "--name", "tiny_fixed"]
    assert ablation.main(common + fixed) == 0
    payload = json.loads((results_dir / "tiny_fixed.json").read_text())
    assert set(payload["runs"]) == {"prior", "control_equal_time"} and payload["equal_time_steps"] == 3
    assert payload["runs"]["control_equal_time"]["0"]["steps"] == 3
    assert {
        path: path.stat().st_mtime_ns for path in (ablation.ROOT / "benchmarks" / "results").iterdir()
    } == committed
