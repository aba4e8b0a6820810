"""training/train.py end to end on tiny models and tiny data written by the tests (CPU, offline)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPModel, SiglipModel, pipeline

from modeling_concept_clip.testing_utils import save_tiny_checkpoint

from .train_fixtures import as_flags, make_rows, write_dataset

ROOT = Path(__file__).resolve().parents[1]
PLAIN = {"clip": CLIPModel, "siglip": SiglipModel}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {kind: str(save_tiny_checkpoint(root / kind, kind)) for kind in ("clip", "siglip")}


def run_training(argv: list[str]) -> dict:
    """`training.train.main` in this process (the Accelerate state is a singleton: reset it between runs)."""
    from accelerate.state import AcceleratorState

    from training.train import main

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        return main(argv)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def common_flags(model: str, output_dir: Path, steps: int = 2, batch: int = 4) -> list[str]:
    return [
        "--model_name_or_path", model, "--output_dir", str(output_dir), "--per_device_train_batch_size", str(batch),
        "--max_train_steps", str(steps), "--logging_steps", "1", "--learning_rate", "1e-3", "--report_to", "none",
    ]  # fmt: skip


def read_log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]


def assert_plain_checkpoint(folder: Path, model_type: str) -> None:
    plain, info = PLAIN[model_type].from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [PLAIN[model_type].__name__]
    assert sorted(p.name for p in folder.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))
    args = json.loads((folder / "training_args.json").read_text())
    assert args["completed_steps"] >= 1 and args["model"]["model_name_or_path"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "imagefolder", "webdataset", "save_to_disk"])
def test_every_data_format_trains_and_exports_plain_clip(fmt, checkpoints, tmp_path):
    # WebDataset shards carry no concepts: the script extracts them with spaCy before training.
    data = write_dataset(tmp_path / "data", fmt, make_rows(16), with_concepts=fmt != "webdataset")
    out = tmp_path / "out"
    result = run_training(common_flags(checkpoints["clip"], out) + as_flags(data))
    assert result["completed_steps"] == 2
    log = read_log(out)
    assert [entry["step"] for entry in log] == [1, 2]
    assert all(entry["npc_loss"] > 0 and entry["xac_loss"] > 0 for entry in log)
    assert log[-1]["rows_seen"] == 8 and log[-1]["skipped_image"] == 0
    assert_plain_checkpoint(out, "clip")


def test_siglip_trains_and_loads_in_the_pipeline(checkpoints, tmp_path):
    data = write_dataset(tmp_path / "data", "jsonl", make_rows(16))
    out = tmp_path / "out"
    run_training(common_flags(checkpoints["siglip"], out) + as_flags(data))
    assert_plain_checkpoint(out, "siglip")
    log = read_log(out)
    assert all(entry["npc_loss"] > 0 and entry["xac_loss"] > 0 for entry in log)
    classifier = pipeline("zero-shot-image-classification", model=str(out))
    result = classifier(Image.new("RGB", (32, 32), (220, 30, 30)), candidate_labels=["red", "blue"])
    assert {r["label"] for r in result} == {"red", "blue"}


def test_control_run_has_only_the_caption_loss(checkpoints, tmp_path):
    data = write_dataset(tmp_path / "data", "jsonl", make_rows(16))
    out = tmp_path / "out"
    run_training(common_flags(checkpoints["clip"], out) + as_flags(data) + ["--concept_loss", "false"])
    log = read_log(out)
    assert all("npc_loss" not in entry and entry["loss"] == entry["caption_loss"] for entry in log)
    assert json.loads((out / "training_args.json").read_text())["concept"]["concept_loss"] is False


def test_recipe_file_with_flag_override(checkpoints, tmp_path):
    data = write_dataset(tmp_path / "data", "jsonl", make_rows(16))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {checkpoints['clip']}\ntrain_file: {data['train_file']}\n"
        "per_device_train_batch_size: 4\nmax_train_steps: 1\nlearning_rate: 0.5\nxac_weight: 0.25\n"
        "report_to: none\nlogging_steps: 1\n"
    )
    out = tmp_path / "out"
    run_training(["--config", str(recipe), "--output_dir", str(out), "--learning_rate", "0.001"])
    args = json.loads((out / "training_args.json").read_text())
    assert args["training"]["learning_rate"] == 0.001  # the flag wins
    assert args["concept"]["xac_weight"] == 0.25  # from the recipe
    assert args["recipe"] == str(recipe)
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rte: 0.1\n")
    with pytest.raises(ValueError, match="Unknown keys .*learning_rte"):
        run_training(["--config", str(bad)])


def write_bad_rows(folder: Path) -> dict[str, str]:
    """16 good rows plus a missing image, a corrupt image, an empty caption, a numeric caption, no concepts."""
    rows = make_rows(16)
    data = write_dataset(folder, "jsonl", rows)
    (folder / "images" / "corrupt.png").write_bytes(b"not a png")
    bad = [
        {"image": "images/missing.png", "caption": "a red star", "concepts": ["a red star"]},
        {"image": "images/corrupt.png", "caption": "a blue star", "concepts": ["a blue star"]},
        {"image": "images/0000.png", "caption": "   ", "concepts": ["a thing"]},
        {"image": "images/0001.png", "caption": 42, "concepts": ["a thing"]},
        {"image": "images/0002.png", "caption": "a green star", "concepts": []},
    ]
    with open(data["train_file"], "a") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in bad)
    return data


def test_bad_rows_are_skipped_and_counted(checkpoints, tmp_path):
    data = write_bad_rows(tmp_path / "data")
    out = tmp_path / "out"
    # 21 rows, batch 7: one epoch is 3 steps and sees every row once.
    flags = common_flags(checkpoints["clip"], out, steps=3, batch=7) + as_flags(data)
    result = run_training(flags + ["--max_bad_fraction", "0.5"])
    last = read_log(out)[-1]
    assert result["completed_steps"] == 3
    assert (last["rows_seen"], last["skipped_image"], last["skipped_caption"], last["skipped_concepts"]) == (
        21,
        2,
        2,
        1,
    )
    with pytest.raises(RuntimeError, match=r"5 of 21 rows .* skipped.*--max_bad_fraction") as error:
        run_training(flags + ["--max_bad_fraction", "0.1", "--overwrite_output_dir"])
    assert "missing.png" in str(error.value) or "corrupt.png" in str(error.value) or "caption" in str(error.value)


def test_missing_columns_and_sources_give_clear_errors(checkpoints, tmp_path):
    data = write_dataset(tmp_path / "data", "jsonl", make_rows(16))
    with pytest.raises(ValueError, match="caption column 'text' is not in the dataset"):
        run_training(
            common_flags(checkpoints["clip"], tmp_path / "o1") + as_flags(data) + ["--caption_column", "text"]
        )
    with pytest.raises(ValueError, match="exactly one data source"):
        run_training(common_flags(checkpoints["clip"], tmp_path / "o2"))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        run_training(common_flags(checkpoints["clip"], tmp_path / "o3", batch=64) + as_flags(data))


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def single_process_run(checkpoints, tmp_path_factory):
    """3 steps of one process with a global batch of 8: the reference of the multi-process runs."""
    root = tmp_path_factory.mktemp("single")
    data = write_dataset(root / "data", "jsonl", make_rows(32))
    out = root / "out"
    command = [sys.executable, "-m", "training.train", *common_flags(checkpoints["clip"], out, steps=3, batch=8)]
    subprocess.run(
        command + as_flags(data), env=subprocess_env(), cwd=ROOT, check=True, capture_output=True, timeout=600
    )
    return data, out


@pytest.mark.slow
def test_two_processes_give_the_losses_and_weights_of_one_process(checkpoints, single_process_run, tmp_path):
    data, single = single_process_run
    double = tmp_path / "double"
    # On a machine without GPUs, Accelerate starts CPU processes (gloo) only with ACCELERATE_USE_CPU set.
    # (Accelerate enables FSDP only on accelerators: tests/distributed_fsdp2_check.py shards the model directly.)
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(ROOT / "training" / "train.py"),
    ]  # fmt: skip
    result = subprocess.run(
        launch + common_flags(checkpoints["clip"], double, steps=3, batch=4) + as_flags(data),
        env={**subprocess_env(), "ACCELERATE_USE_CPU": "1"}, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((double / "training_args.json").read_text())
    assert (run["num_processes"], run["distributed_type"]) == (2, "MULTI_CPU")
    for one, two in zip(read_log(single), read_log(double), strict=True):
        for name in ("loss", "caption_loss", "npc_loss", "xac_loss"):
            # Same global batch and weights; float32 sums in another order: 1e-5 relative.
            assert two[name] == pytest.approx(one[name], rel=1e-5), (one["step"], name)
    expected, actual = load_file(single / "model.safetensors"), load_file(double / "model.safetensors")
    assert expected.keys() == actual.keys()
    # 3 Adam steps at lr 1e-3 move a weight by up to 3e-3; Adam's division by sqrt(v) + eps magnifies the float32
    # rounding of near-zero gradients (seen: 7e-6 on one position-embedding row, 5e-7 elsewhere).
    differences = {key: (actual[key] - expected[key]).abs().max().item() for key in expected}
    assert max(differences.values()) < 5e-5, sorted(differences.items(), key=lambda item: -item[1])[:3]


@pytest.mark.slow
def test_resume_after_kill_ends_with_the_same_weights(checkpoints, tmp_path):
    data = write_dataset(tmp_path / "data", "jsonl", make_rows(24))
    env = subprocess_env()
    base = [sys.executable, "-m", "training.train"]
    flags = as_flags(data) + ["--checkpointing_steps", "3", "--num_warmup_steps", "2"]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    steps = 30  # several epochs of 6 steps: resuming mid-epoch must restore the data order
    subprocess.run(
        base + common_flags(checkpoints["clip"], reference, steps=steps) + flags, env=env, cwd=ROOT, check=True,
        capture_output=True, timeout=600,
    )  # fmt: skip

    process = subprocess.Popen(
        base + common_flags(checkpoints["clip"], resumed, steps=steps) + flags, env=env, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        while not (resumed / "checkpoints" / "checkpoint-9").exists():
            assert process.poll() is None and time.time() < deadline, "the run ended before it could be interrupted"
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be interrupted"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (resumed / "model.safetensors").exists()

    subprocess.run(
        base + common_flags(checkpoints["clip"], resumed, steps=steps) + flags + ["--resume_from_checkpoint", "latest"],
        env=env, cwd=ROOT, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    expected, actual = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert [e["step"] for e in read_log(resumed)] == list(range(1, steps + 1))


def test_streaming_validation_benchmarks_and_exports(checkpoints, tmp_path):
    """--streaming (8 steps: more than one pass over 24 rows), --validation_file + --eval_steps (loss terms),
    --eval_benchmarks (results.json), --export_steps."""
    rows = make_rows(24)
    data = write_dataset(tmp_path / "data", "jsonl", rows)
    probes = {
        str(i): {"filename": f"{row['key']}.png", "caption": row["caption"], "negative_caption": "a purple cat"}
        for i, row in enumerate(rows[:6])
    }
    (tmp_path / "data" / "images" / "swap_att.json").write_text(json.dumps(probes))
    benchmarks = tmp_path / "benchmarks.yaml"
    benchmarks.write_text(
        f"- {{kind: sugarcrepe, name: probes, data_dir: {tmp_path / 'data' / 'images'}, subsets: null}}\n"
    )
    out = tmp_path / "out"
    flags = common_flags(checkpoints["clip"], out, steps=8) + as_flags(data) + [
        "--streaming", "true", "--validation_file", data["train_file"], "--eval_steps", "4",
        "--eval_benchmarks", str(benchmarks), "--export_steps", "4",
    ]  # fmt: skip
    result = run_training(flags)
    assert result["completed_steps"] == 8
    evals = [e for e in read_log(out) if "eval_loss" in e]
    assert [e["step"] for e in evals] == [4, 8]
    assert all(e["eval_npc_loss"] > 0 and 0 <= e["eval/probes/swap_att"] <= 1 for e in evals)
    results = json.loads((out / "results.json").read_text())
    metrics = {m["key"]: m["value"] for m in results["runs"][0]["benchmarks"][0]["metrics"]}
    assert metrics["swap_att"] == evals[-1]["eval/probes/swap_att"]  # the final model, evaluated once more
    assert "probes" in (out / "README.md").read_text()  # the card has the evaluation
    for step in (4, 8):
        assert_plain_checkpoint(out / f"export-{step}", "clip")


def test_recipes_and_accelerate_configs_parse():
    """The shipped recipes use only known arguments; the Accelerate configs load with Accelerate's own loader."""
    from accelerate.commands.config.config_args import load_config_from_file

    from training.train import parse_arguments

    for recipe in sorted((ROOT / "training" / "configs").rglob("*.yaml")):
        if "accelerate" in recipe.parts or recipe.name == "benchmarks.yaml":
            continue
        model_args, _, concept_args, training_args, _ = parse_arguments(["--config", str(recipe)])
        assert model_args.model_name_or_path, recipe
    paper = parse_arguments(["--config", str(ROOT / "training/configs/siglip_b16_cc3m.yaml")])
    assert (paper[3].learning_rate, paper[3].per_device_train_batch_size, paper[3].num_warmup_steps) == (1e-5, 96, 50)
    assert (paper[2].npc_weight, paper[2].xac_weight, paper[2].concept_positives) == (1.0, 0.01, "owner")
    for config in sorted((ROOT / "training" / "configs" / "accelerate").glob("*.yaml")):
        assert load_config_from_file(str(config)).num_processes >= 1, config
