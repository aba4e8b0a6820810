"""training/train.py end to end on tiny models and tiny data written by the tests (CPU, offline)."""

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
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
    listing = tmp_path / "benchmarks.yaml"  # a YAML file that is not a recipe (a list): named, not a TypeError
    listing.write_text("- name: probes\n  path: probes.json\n")
    with pytest.raises(ValueError, match=f"--config {listing} holds a list, not a recipe"):
        run_training(["--config", str(listing)])


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


def printed_resume_flags(message: str) -> list[str]:
    """The flags that the bad-row stop says to add to the same command, parsed as a shell would."""
    return shlex.split(re.search(r"the same command with `([^`]+)`", message).group(1))


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
    resume = printed_resume_flags(message)
    checkpoint = resume[resume.index("--resume_from_checkpoint") + 1]
    assert Path(checkpoint).parent == stopped / "checkpoints" and int(checkpoint.rsplit("-", 1)[1]) < 3
    assert not (stopped / "model.safetensors").exists()
    # Resumed with a higher threshold, it ends as the run that never stopped: same rows, counts and weights.
    run_training(flags + ["--max_bad_fraction", "0.5"] + resume)
    same = ("step", "loss", "rows_seen", "skipped_image", "skipped_caption", "skipped_concepts")
    assert [[e[k] for k in same] for e in read_log(stopped)] == [[e[k] for k in same] for e in read_log(out)]
    expected, actual = load_file(out / "model.safetensors"), load_file(stopped / "model.safetensors")
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def test_bad_row_stop_advice_works_after_fixing_the_rows(checkpoints, tmp_path):
    """The stop says: fix the bad rows in place, then the same command with `--resume_from_checkpoint ...`. Done
    as printed, the run finishes: the rows counted as bad are read again, and the fixed ones no longer count."""
    data = write_bad_rows(tmp_path / "data")
    out = tmp_path / "out"
    flags = common_flags(checkpoints["clip"], out, steps=3, batch=7) + as_flags(data) + ["--max_bad_fraction", "0.1"]
    with pytest.raises(RuntimeError, match="Too many bad rows: 3 of the 14 rows") as error:
        run_training(flags)
    # Fixed in place: the same 21 rows in the same order, each now with an image, a caption and concepts.
    rows = [json.loads(line) for line in Path(data["train_file"]).read_text().splitlines()]
    for row in rows[16:]:
        row.update(image=f"images/{row['image'].split('/')[-1]}", caption="a red star", concepts=["a red star"])
    Path(data["train_file"]).write_text("".join(json.dumps(row) + "\n" for row in rows))
    for name in ("missing.png", "corrupt.png"):
        Image.new("RGB", (32, 32), (200, 0, 0)).save(tmp_path / "data" / "images" / name)
    result = run_training(flags + printed_resume_flags(str(error.value)))
    assert result["completed_steps"] == 3
    log = read_log(out)
    assert [entry["step"] for entry in log] == [1, 2, 3]
    assert log[1]["skipped_image"] + log[1]["skipped_caption"] + log[1]["skipped_concepts"] == 3  # before the stop
    assert (log[-1]["rows_seen"], log[-1]["skipped_image"], log[-1]["skipped_caption"]) == (21, 0, 0)
    assert log[-1]["skipped_concepts"] == 0
    assert (out / "model.safetensors").is_file()


def folder_content(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def test_a_new_run_needs_an_empty_folder_and_overwrite_empties_it(checkpoints, tmp_path):
    rows = make_rows(16)
    data = write_dataset(tmp_path / "data", "jsonl", rows)
    out = tmp_path / "out"
    flags = common_flags(checkpoints["clip"], out) + as_flags(data)
    run_training(
        flags + ["--eval_benchmarks", str(write_probe_benchmark(tmp_path, rows)), "--checkpointing_steps", "1"]
    )
    assert (out / "results.json").is_file() and (out / "checkpoints" / "checkpoint-2").is_dir()
    # A folder holding a run, finished or stopped (checkpoints and a log only), is refused before anything is loaded.
    stopped = tmp_path / "stopped"
    shutil.copytree(out / "checkpoints", stopped / "checkpoints")
    shutil.copy(out / "train_log.jsonl", stopped)
    for folder in (out, stopped):
        before = folder_content(folder)
        with pytest.raises(FileExistsError, match=f"--output_dir {folder} holds another run or other files"):
            run_training(flags[: -len(as_flags(data))] + ["--output_dir", str(folder)] + as_flags(data))
        assert folder_content(folder) == before
    # --overwrite_output_dir empties it: the new run's card and folder have nothing of the old run.
    run_training(flags + ["--overwrite_output_dir"])
    assert not (out / "results.json").exists() and not (out / "checkpoints").exists()
    assert "No evaluation results accompany this checkpoint" in (out / "README.md").read_text()
    assert [entry["step"] for entry in read_log(out)] == [1, 2]
    # ... but never a folder holding what the run reads.
    with pytest.raises(ValueError, match="--overwrite_output_dir would delete .*data, which holds"):
        run_training(
            common_flags(checkpoints["clip"], tmp_path / "data") + as_flags(data) + ["--overwrite_output_dir"]
        )
    assert Path(data["train_file"]).is_file()


def test_resuming_from_an_older_checkpoint_drops_the_abandoned_history(checkpoints, tmp_path):
    """Resumed from checkpoint 1 of a 3-step run, the folder holds this run's history only: `latest` and the
    checkpoint limit never see the abandoned checkpoint 3, its export or its final model."""
    data = write_dataset(tmp_path / "data", "jsonl", make_rows(16))
    out = tmp_path / "out"
    flags = as_flags(data) + ["--checkpointing_steps", "1", "--checkpoints_total_limit", "3", "--export_steps", "3"]
    run_training(common_flags(checkpoints["clip"], out, steps=3) + flags)
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == [f"checkpoint-{i}" for i in (1, 2, 3)]
    resume = ["--resume_from_checkpoint", str(out / "checkpoints" / "checkpoint-1")]
    run_training(common_flags(checkpoints["clip"], out, steps=2) + flags + resume)
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["checkpoint-1", "checkpoint-2"]
    assert not (out / "export-3").exists()
    assert json.loads((out / "training_args.json").read_text())["completed_steps"] == 2
    assert [entry["step"] for entry in read_log(out)] == [1, 2]


def test_checkpoints_on_a_disk_per_node(tmp_path):
    """With --save_on_each_node the first process of every node (here: of node 1, not the main process) turns its
    `.partial-N` into `checkpoint-N`; without it only process 0 writes, on the one shared file system."""
    from types import SimpleNamespace

    from modeling_concept_clip.training.arguments import TrainingArguments
    from modeling_concept_clip.training.loop import save_checkpoint
    from modeling_concept_clip.training.state import TrainState

    def node_1(save_on_each_node: bool) -> Path:
        out = tmp_path / f"each-node-{save_on_each_node}"
        accelerator = SimpleNamespace(
            is_main_process=False, is_local_main_process=True, wait_for_everyone=lambda: None,
            save_state=lambda folder: Path(folder, "random_states_1.pkl").write_bytes(b"state"),
        )  # fmt: skip
        args = TrainingArguments(output_dir=str(out), save_on_each_node=save_on_each_node)
        run = SimpleNamespace(accelerator=accelerator, args=args, new_bad_rows=[])
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("modeling_concept_clip.training.loop.gather_object", lambda rows: rows)
            if not save_on_each_node:  # process 0 created it on the shared file system
                (out / "checkpoints" / ".partial-4").mkdir(parents=True)
            save_checkpoint(run, TrainState(completed_steps=4))
        return out / "checkpoints"

    each_node = node_1(save_on_each_node=True)
    assert [p.name for p in each_node.iterdir()] == ["checkpoint-4"]
    assert (each_node / "checkpoint-4" / "trainer_state.json").is_file()
    shared = node_1(save_on_each_node=False)
    assert [p.name for p in shared.iterdir()] == [".partial-4"]  # its part written; process 0 renames the folder
    assert (shared / ".partial-4" / "random_states_1.pkl").is_file()


def test_an_unwritable_or_full_output_folder_stops_before_the_first_step(checkpoints, tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data", "jsonl", make_rows(16))
    parent = Path(tempfile.mkdtemp())
    parent.chmod(0o755)
    read_only = parent / "read-only"
    read_only.mkdir(mode=0o555)
    try:
        with pytest.raises(PermissionError, match=f"--output_dir {read_only} cannot be written"):
            with without_write_permission():  # root writes anywhere: the check runs as another user
                run_training(common_flags(checkpoints["clip"], read_only) + as_flags(data))
    finally:
        shutil.rmtree(parent)
    # A disk without room for the final model and a checkpoint: refused after loading, before the first step.
    out = tmp_path / "full"
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 10**5, 10**5))
    with pytest.raises(OSError, match=f"--output_dir {out} has 0.1 MB free, less than this run needs for the final "
                       r"model \(\d+\.\d MB\) and one checkpoint"):  # fmt: skip
        run_training(common_flags(checkpoints["clip"], out) + as_flags(data) + ["--checkpointing_steps", "1"])
    assert not (out / "train_log.jsonl").exists()


@contextlib.contextmanager
def without_write_permission():
    """Run as user `nobody` when the tests run as root (for whom file permissions do not apply)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


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


def test_missing_local_model_folder_is_named(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "models" / "my-clip"
    argv = ["--model_name_or_path", str(missing), "--train_file", "t.jsonl", "--report_to", "none"]
    argv += ["--output_dir", str(tmp_path / "out")]
    with pytest.raises(FileNotFoundError, match=f"--model_name_or_path '{missing}': no such file or folder"):
        run_training(argv)
    # The command line prints the project's own errors as one line (exit status 1), others with their traceback.
    from modeling_concept_clip.training import command_line, raised_by_our_checks

    monkeypatch.delenv("C2LIP_DEBUG", raising=False)
    capsys.readouterr()
    assert command_line(argv) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: --model_name_or_path '{missing}': no such file") and "Traceback" not in error
    monkeypatch.setenv("C2LIP_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        command_line(argv)
    try:
        json.loads("{")
    except ValueError as error:
        assert not raised_by_our_checks(error)  # raised inside the json module: a traceback


def test_a_processor_that_does_not_fit_the_model_is_refused_before_training(checkpoints, tmp_path):
    """A CLIP config with a SigLIP processor, and a model folder without tokenizer_config.json (the tokenizer then
    loads with no length limit), are refused with the file named; the printed fix works as printed."""
    from modeling_concept_clip import ConceptLossConfig
    from modeling_concept_clip.training.arguments import ModelArguments
    from modeling_concept_clip.training.loop import build_model

    clip, siglip = Path(checkpoints["clip"]), Path(checkpoints["siglip"])
    flags = ["--train_file", "never-read.jsonl", "--output_dir", str(tmp_path / "o"), "--report_to", "none"]
    with pytest.raises(ValueError) as error:
        run_training(["--config_name", str(clip), "--processor_name", str(siglip), *flags])
    assert str(error.value).startswith(
        f"--processor_name {siglip} is a siglip processor ({siglip / 'processor_config.json'}: SiglipProcessor), "
        f"but the model is a clip ({clip / 'config.json'}: model_type 'clip')"
    )
    with pytest.raises(ValueError, match=f"--processor_name {clip} is a clip processor .* the model is a siglip"):
        build_model(ModelArguments(model_name_or_path=str(siglip), processor_name=str(clip)), ConceptLossConfig())
    folder = tmp_path / "no-tokenizer-config"
    shutil.copytree(clip, folder)
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError) as error:
        run_training(["--model_name_or_path", str(folder), *flags])
    message = str(error.value)
    assert message.startswith(
        f"{folder / 'tokenizer_config.json'} is missing: the tokenizer loads without a length limit, more than the "
        f"model's 32 text positions ({folder / 'config.json'}: model_type 'clip'): a longer caption would crash"
    )
    fix = re.search(r'python -c "(.*)"\.$', message).group(1)
    subprocess.run([sys.executable, "-c", fix], check=True, env=subprocess_env())
    model, processor = build_model(ModelArguments(model_name_or_path=str(folder)), ConceptLossConfig())
    assert processor.tokenizer.model_max_length == 32
    assert processor.tokenizer("a red circle " * 40, truncation=True).input_ids.__len__() == 32


def test_resuming_a_checkpoint_of_another_size_says_so_in_one_line(checkpoints, tmp_path, monkeypatch):
    from transformers import CLIPModel

    from modeling_concept_clip.testing_utils import tiny_clip_config
    from modeling_concept_clip.training import loop

    data = write_dataset(tmp_path / "data", "jsonl", make_rows(8))
    out = tmp_path / "out"
    run_training(common_flags(checkpoints["clip"], out, steps=1) + as_flags(data) + ["--checkpointing_steps", "1"])
    bigger = tmp_path / "bigger"
    shutil.copytree(checkpoints["clip"], bigger)
    plain = CLIPModel.from_pretrained(bigger)
    tower = {"hidden_size": 64, "num_hidden_layers": 3, "intermediate_size": 128}
    ids = {name: getattr(plain.config.text_config, name) for name in ("vocab_size", "eos_token_id", "bos_token_id")}
    CLIPModel(tiny_clip_config(**ids, text_config=tower, vision_config=tower)).save_pretrained(bigger)
    checkpoint = out / "checkpoints" / "checkpoint-1"
    with pytest.raises(ValueError) as error:
        run_training(common_flags(str(bigger), out, steps=2) + as_flags(data) + ["--resume_from_checkpoint", "latest"])
    assert str(error.value) == (
        f"--resume_from_checkpoint {checkpoint} holds a model of other sizes than this run builds (checkpoint: text 2 "
        "layers x 32, 160 tokens; vision 2 layers x 32, 17 positions; this run: text 3 layers x 64, 160 tokens; "
        "vision 3 layers x 64, 17 positions (109 of 110 tensors differ, e.g. text_model.embeddings.position_embedding.weight "
        "is [32, 32] there, [32, 64] here)). Resume with the model flags of the run that saved it (its "
        "training_args.json in the output folder records them), or start a new run in another --output_dir."
    )
    # FSDP and DeepSpeed checkpoints are not read ahead: load_state's error (a line per tensor) is shortened.
    monkeypatch.setattr(loop, "check_checkpoint_sizes", lambda path, model: None)
    with pytest.raises(ValueError) as error:
        run_training(common_flags(str(bigger), out, steps=2) + as_flags(data) + ["--resume_from_checkpoint", "latest"])
    shortened = re.fullmatch(
        rf"--resume_from_checkpoint {checkpoint} holds a model of other sizes than this run builds \((\d+) tensors "
        r"differ, e\.g\. text_model\.embeddings\.token_embedding\.weight is \[160, 32\] there, \[160, 64\] here\)\. "
        r"Resume with .*",
        str(error.value),
    )
    assert shortened and int(shortened.group(1)) > 50


def test_help_shows_every_default():
    from modeling_concept_clip.training.arguments import build_parser

    options = re.split(r"\n(?=  -)", build_parser().format_help().split("options:", 1)[1])
    missing = [option.split()[0] for option in options if option.strip() and "(default:" not in option]
    assert missing == ["-h,"]
    assert "(default: 32)" in next(option for option in options if "--per_device_train_batch_size" in option)


def test_readme_own_data_commands_run_from_another_folder(tmp_path, monkeypatch):
    """The README's commands for your own images and captions, as written (smaller model and 2 steps), from a folder
    outside the repository, without it on sys.path: `concept-clip-init`, then `concept-clip-train` through
    `accelerate launch --num_processes 2`, which on a CPU starts one process; the run says so in its start-up
    summary."""
    from modeling_concept_clip.commands.init_model import main as init_main

    from .test_docs import FENCE, split_commands

    block = next(code for _, code in FENCE.findall((ROOT / "README.md").read_text()) if "concept-clip-init" in code)
    (init, *init_args), (train, *train_args) = split_commands(block)
    assert (init, train) == ("concept-clip-init", "concept-clip-train")
    write_dataset(tmp_path / "data", "jsonl", make_rows(32))  # data/train.jsonl, as in the README
    monkeypatch.chdir(tmp_path)
    assert init_main([*init_args, "--image_size", "32", "--width", "32", "--layers", "2"]) == 0
    script = shutil.which(train, path=str(Path(sys.executable).parent))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", script]  # fmt: skip
    env = {key: value for key, value in subprocess_env().items() if key != "PYTHONPATH"}
    result = subprocess.run(
        launch + train_args + ["--max_train_steps", "2", "--report_to", "none"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert_plain_checkpoint(tmp_path / "outputs" / "c2lip", "clip")
    summary = result.stderr[result.stderr.index("***** C2LIP training *****") :]
    for line in ("processes = 1 (one process, cpu)", "global batch = 32 rows per optimizer step", "optimizer steps = 2",
                 "training data = 32 rows, 1 global batches per epoch", "concepts per image = at most 8, 2.00 on",
                 f"output folder = {tmp_path / 'outputs' / 'c2lip'}"):  # fmt: skip
        assert line in summary, summary[:1500]
    assert "`accelerate launch` was given several processes" in summary


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


def write_probe_benchmark(folder: Path, rows: list[dict]) -> Path:
    """A SugarCrepe-style probe on the first 6 images of `rows` (written by `write_dataset` into folder/data)."""
    probes = {
        str(i): {"filename": f"{row['key']}.png", "caption": row["caption"], "negative_caption": "a purple cat"}
        for i, row in enumerate(rows[:6])
    }
    (folder / "data" / "images" / "swap_att.json").write_text(json.dumps(probes))
    benchmarks = folder / "benchmarks.yaml"
    benchmarks.write_text(
        f"- {{kind: sugarcrepe, name: probes, data_dir: {folder / 'data' / 'images'}, subsets: null}}\n"
    )
    return benchmarks


def test_streaming_validation_benchmarks_and_exports(checkpoints, tmp_path):
    """--streaming (8 steps: more than one pass over 24 rows), --validation_file + --eval_steps (loss terms),
    --eval_benchmarks (results.json), --export_steps."""
    rows = make_rows(24)
    data = write_dataset(tmp_path / "data", "jsonl", rows)
    benchmarks = write_probe_benchmark(tmp_path, rows)
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
        if "accelerate" in recipe.parts or recipe.name.startswith("benchmarks"):  # benchmark lists, not recipes
            continue
        assert parse_arguments(["--config", str(recipe)]).model.model_name_or_path, recipe
    paper = parse_arguments(["--config", str(ROOT / "training/configs/siglip_b16_cc3m.yaml")])
    training = paper.training
    assert (training.learning_rate, training.per_device_train_batch_size, training.num_warmup_steps) == (1e-5, 96, 50)
    loss = paper.concept
    assert (loss.npc_weight, loss.xac_weight, loss.concept_positives) == (1.0, 0.01, "owner")
    for config in sorted((ROOT / "training" / "configs" / "accelerate").glob("*.yaml")):
        assert load_config_from_file(str(config)).num_processes >= 1, config
