"""`concept-clip-eval` end to end on tiny CLIP and SigLIP checkpoints and fixtures of every benchmark."""

import json
import subprocess
import sys

import pytest

from modeling_concept_clip.evaluation.cli import main
from modeling_concept_clip.evaluation.presets import PRESETS
from modeling_concept_clip.testing_utils import save_tiny_checkpoint

from .eval_fixtures import build_benchmark_tree, write_json


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    return {
        "data": build_benchmark_tree(root / "data"),
        "clip": save_tiny_checkpoint(root / "tiny-clip", "clip"),
        "siglip": save_tiny_checkpoint(root / "tiny-siglip", "siglip"),
        "root": root,
    }


def test_cli_runs_every_benchmark_for_clip_and_siglip(workspace, capsys):
    output = workspace["root"] / "results.json"
    karpathy = workspace["data"] / "coco" / "dataset_coco.json"
    tokens = [f"retrieval={karpathy}" if name == "retrieval" else name for name in PRESETS]
    argv = ["--model", str(workspace["clip"]), str(workspace["siglip"]), "--label", "clip", "siglip",
            "--benchmarks", *tokens, "--data_dir", str(workspace["data"]), "--output", str(output),
            "--no_progress", "--image_batch_size", "3"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads(output.read_text())
    assert results["schema_version"] == 1
    assert [run["model"]["label"] for run in results["runs"]] == ["clip", "siglip"]
    for run in results["runs"]:
        assert [b["name"] for b in run["benchmarks"]] == list(PRESETS)
        assert run["settings"]["text_padding"] == ("longest" if run["model"]["model_type"] == "clip" else "max_length")
        assert run["model"]["num_parameters"] > 0
        for benchmark in run["benchmarks"]:
            assert set(benchmark) >= {"task", "dataset", "metrics", "num_examples", "data_version", "config"}
            assert benchmark["data_version"] and benchmark["num_examples"]["total"] > 0
            for metric in benchmark["metrics"]:
                assert 0.0 <= metric["value"] <= 1.0 and metric["type"] in {"accuracy", "recall"}
    by_name = {b["name"]: b for b in results["runs"][0]["benchmarks"]}
    assert [m["key"] for m in by_name["sugarcrepe"]["metrics"]][-3:] == ["add", "replace", "swap"]
    assert by_name["imagenet"]["num_examples"] == {"total": 6, "classes": 3}
    assert by_name["imagenet"]["config"]["templates"] == "imagenet80"
    table = capsys.readouterr().out
    assert "| benchmark | metric | clip | siglip | Δ |" in table
    assert "| sugarcrepe | add_obj |" in table

    # Comparison of saved results, without evaluating anything.
    capsys.readouterr()
    assert main(["--compare", str(output)]) == 0
    assert "| winoground | group |" in capsys.readouterr().out


def test_cli_benchmark_config_file(workspace, tmp_path, capsys):
    config = write_json(tmp_path / "benchmarks.json", [
        {"kind": "sugarcrepe", "name": "probes", "data_dir": str(workspace["data"] / "probes"), "subsets": None},
        {"kind": "retrieval", "name": "demo_retrieval",
         "annotation_file": str(workspace["data"] / "coco" / "dataset_coco.json"), "recall_at": [1, 2]},
    ])  # fmt: skip
    assert main(["--model", str(workspace["siglip"]), "--benchmark_config", str(config), "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "| probes | swap |" in out and "| demo_retrieval | t2i_R@2 |" in out


def test_cli_missing_data_is_a_clear_error(workspace, tmp_path, caplog):
    argv = [
        "--model",
        str(workspace["clip"]),
        "--benchmarks",
        "sugarcrepe",
        "--data_dir",
        str(tmp_path),
        "--no_progress",
    ]
    assert main(argv) == 1
    assert f"{tmp_path / 'sugarcrepe'}: benchmark folder not found" in caplog.text


def test_cli_unknown_benchmark_option_names_the_entry(workspace, tmp_path, caplog):
    config = write_json(tmp_path / "b.json", [{"kind": "winoground", "data_dir": "x", "colour": "red"}])
    assert main(["--model", str(workspace["clip"]), "--benchmark_config", str(config)]) == 1
    assert "b.json, entry 0: Benchmark kind 'winoground' has no option(s) ['colour']" in caplog.text


@pytest.mark.slow
def test_python_dash_m_entry_point():
    completed = subprocess.run(
        [sys.executable, "-m", "modeling_concept_clip.evaluation", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--benchmarks" in completed.stdout and "sugarcrepe_pp:" in completed.stdout


def test_imagenet_preset_requires_class_names(workspace, tmp_path, caplog):
    (tmp_path / "imagenet" / "val").mkdir(parents=True)
    argv = ["--model", str(workspace["clip"]), "--benchmarks", "imagenet", "--data_dir", str(tmp_path)]
    assert main(argv) == 1
    assert "classnames.txt: file not found; the ImageNet preset needs the 1,000 class names" in caplog.text


def test_training_hook_matches_the_command_line(workspace, tmp_path):
    """`evaluate_model` on an in-memory model (dict specs, as a training config gives them) gives the numbers that
    the command line gives for the same weights saved to disk."""
    from modeling_concept_clip.evaluation import EmbeddingConfig, evaluate_model, load_runs
    from modeling_concept_clip.testing_utils import build_tiny_model_and_processor

    specs = [{"kind": "sugarcrepe", "name": "probes", "data_dir": str(workspace["data"] / "probes"), "subsets": None},
             {"kind": "retrieval", "annotation_file": str(workspace["data"] / "coco" / "dataset_coco.json")}]  # fmt: skip
    model, processor = build_tiny_model_and_processor("siglip")
    model.save_pretrained(tmp_path / "checkpoint")  # the same weights and processor, for the command line
    processor.save_pretrained(tmp_path / "checkpoint")
    run = evaluate_model(model, processor, specs, EmbeddingConfig(progress=False), model_name="step-100")
    metrics = run.flat_metrics(prefix="eval/")
    assert "eval/probes/swap" in metrics and "eval/retrieval/t2i_R@10" in metrics
    assert all(isinstance(v, float) for v in metrics.values())

    config = write_json(tmp_path / "specs.json", specs)
    output = tmp_path / "cli.json"
    argv = [
        "--model",
        str(tmp_path / "checkpoint"),
        "--benchmark_config",
        str(config),
        "--output",
        str(output),
        "--no_progress",
    ]
    assert main(argv) == 0
    assert load_runs(output)[0].flat_metrics(prefix="eval/") == pytest.approx(metrics)
