"""training/train.py end to end on tiny models and tiny data written by the tests (CPU, offline)."""

import json
import os
import re
import shutil
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


def test_hard_negative_baseline_trains_and_counts_captions_without_a_negative(checkpoints, tmp_path):
    rows = make_rows(8)
    for row in rows[5:]:  # one noun phrase: nothing to swap
        row["caption"], row["concepts"] = row["caption"].split(" on the left")[0], row["concepts"][:1]
    data = write_dataset(tmp_path / "data", "jsonl", rows)
    out = tmp_path / "out"
    flags = ["--concept_loss", "false", "--hard_negatives", "swap"]
    run_training(common_flags(checkpoints["clip"], out) + as_flags(data) + flags)  # 2 steps of 4: every row once
    log = read_log(out)
    assert all("npc_loss" not in entry and entry["loss"] == entry["caption_loss"] for entry in log)
    assert (log[-1]["hard_negatives"], log[-1]["captions_without_hard_negative"]) == (5, 3)
    assert json.loads((out / "training_args.json").read_text())["data"]["hard_negatives"] == "swap"
    card = (out / "README.md").read_text()
    assert "the hard-negative (NegCLIP-style) baseline of a C2LIP experiment" in card
    assert "Used only to make the hard negatives" in card and "| hard negatives | `swap`" in card


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
    # 10% of 21 rows is 2.1: the run stops as soon as a third bad row is read, with a checkpoint to resume from.
    stopped = tmp_path / "stopped"
    flags = common_flags(checkpoints["clip"], stopped, steps=3, batch=7) + as_flags(data)
    with pytest.raises(RuntimeError, match=r"Too many bad rows: 3 of the \d+ rows read so far were skipped") as error:
        run_training(flags + ["--max_bad_fraction", "0.1"])
    message = str(error.value)
    assert "--max_bad_fraction 10.0% of the 21 rows read by the end of epoch 0" in message
    assert "missing.png" in message or "corrupt.png" in message or "caption" in message
    checkpoint = re.search(r"--resume_from_checkpoint (\S+)\.$", message).group(1)
    assert Path(checkpoint).parent == stopped / "checkpoints" and int(checkpoint.rsplit("-", 1)[1]) < 3
    assert not (stopped / "model.safetensors").exists()
    # Resumed with a higher threshold, it ends as the run that never stopped: same rows, counts and weights.
    resume = ["--max_bad_fraction", "0.5", "--resume_from_checkpoint", checkpoint]
    run_training(flags + resume)
    same = ("step", "loss", "rows_seen", "skipped_image", "skipped_caption", "skipped_concepts")
    assert [[e[k] for k in same] for e in read_log(stopped)] == [[e[k] for k in same] for e in read_log(out)]
    expected, actual = load_file(out / "model.safetensors"), load_file(stopped / "model.safetensors")
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


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


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be >= 1, got 0"),
        (["--learning_rate", "-0.001"], "--learning_rate must be finite and >= 0"),
        (["--max_train_steps", "0"], "--max_train_steps must be >= 1"),
        (["--max_bad_fraction", "1.5"], "--max_bad_fraction must be in [0, 1]"),
        (["--lr_scheduler_type", "cosin"], "--lr_scheduler_type must be one of"),
        (["--ddp_timeout", "0"], "--ddp_timeout must be >= 1"),
        (["--xac_weight", "-1"], "xac_weight must be a finite number >= 0"),  # ConceptLossConfig's own checks
        (["--tau", "0"], "tau must be a finite number > 0"),
        (["--tau", "-5"], "tau must be a finite number > 0"),
        (["--streaming", "true"], "--streaming needs --max_train_steps"),
        (["--tau", "abc"], "invalid float value: 'abc'"),
    ],
)
def test_invalid_flags_fail_when_parsed(flags, message, capsys):
    """An argument error (exit code 2, usage and the message), before any model or data is loaded."""
    from modeling_concept_clip.training import parse_arguments

    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(["--model_name_or_path", "m", "--train_file", "t.jsonl", *flags])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("usage:") and message in error, error


def test_loss_settings_are_the_loss_config_s_own_fields(tmp_path):
    """`ConceptLossConfig` is handed to the parser as it is: every field is a flag; optional ones take 'none'."""
    from dataclasses import fields

    from modeling_concept_clip import ConceptLossConfig
    from modeling_concept_clip.training import parse_arguments

    arguments = parse_arguments(["--tau", "2.5", "--pooling_memory_mb", "none", "--concept_positives", "owner"])
    assert arguments.concept.loss_config() == ConceptLossConfig(
        tau=2.5, pooling_memory_mb=None, concept_positives="owner"
    )
    assert parse_arguments(["--max_train_samples", "None"]).data.max_train_samples is None
    help_text = subprocess.run(
        [sys.executable, "-m", "modeling_concept_clip.training", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert all(f"--{field.name}" in help_text for field in fields(ConceptLossConfig))


def test_missing_local_model_folder_is_named(tmp_path):
    missing = tmp_path / "models" / "my-clip"
    with pytest.raises(FileNotFoundError, match=f"--model_name_or_path '{missing}': no such file or folder"):
        run_training(["--model_name_or_path", str(missing), "--train_file", "t.jsonl", "--report_to", "none"])


def test_console_script_trains_from_any_folder_with_accelerate_launch(checkpoints, tmp_path):
    """`concept-clip-train` is installed, runs outside the repository and is a script `accelerate launch` runs."""
    data = write_dataset(tmp_path / "data", "jsonl", make_rows(8))
    script = shutil.which("concept-clip-train", path=str(Path(sys.executable).parent))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", script]  # fmt: skip
    flags = common_flags(checkpoints["clip"], Path("out"), steps=1) + as_flags(data)
    env = {key: value for key, value in subprocess_env().items() if key != "PYTHONPATH"}
    subprocess.run(launch + flags, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=600)
    assert_plain_checkpoint(tmp_path / "out", "clip")


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


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
        assert parse_arguments(["--config", str(recipe)]).model.model_name_or_path, recipe
    paper = parse_arguments(["--config", str(ROOT / "training/configs/siglip_b16_cc3m.yaml")])
    training = paper.training
    assert (training.learning_rate, training.per_device_train_batch_size, training.num_warmup_steps) == (1e-5, 96, 50)
    loss = paper.concept
    assert (loss.npc_weight, loss.xac_weight, loss.concept_positives) == (1.0, 0.01, "owner")
    for config in sorted((ROOT / "training" / "configs" / "accelerate").glob("*.yaml")):
        assert load_config_from_file(str(config)).num_processes >= 1, config
