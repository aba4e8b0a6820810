"""The training loop on 2 CPU processes (gloo): DDP with bad rows, FSDP2 for CLIP and SigLIP (with activation
checkpointing, in bf16), DeepSpeed ZeRO-2 and ZeRO-3, streaming, the process-group timeout; each against one process,
or DDP, on the same global batches."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from accelerate.data_loader import SeedableRandomSampler
from safetensors.torch import load_file
from transformers import CLIPModel, SiglipModel

from modeling_concept_clip.commands import extract_concepts as extract_cli
from modeling_concept_clip.testing_utils import build_tiny_model_and_processor, save_tiny_checkpoint

from .shard_fixtures import gold_captions, sample_key, write_tar_shard
from .test_train import common_flags, read_log, run_training
from .train_fixtures import as_flags, make_rows, write_dataset, write_shards

ROOT = Path(__file__).resolve().parents[1]
PLAIN = {"clip": CLIPModel, "siglip": SiglipModel}
LOSSES = ("loss", "caption_loss", "npc_loss", "xac_loss")
SEED = 42  # the training script's default --seed, which also seeds the data order


def subprocess_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def launch(command: list[str], **env: str) -> None:
    result = subprocess.run(command, env=subprocess_env(**env), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]  # fmt: skip


def run_spec(
    root: Path, runs: list[dict], launcher: list[str], check_host_group: bool = False, **env: str
) -> dict[str, list[dict]]:
    """Run `runs` with tests/distributed_train_check.py in 2 processes; each run's results (and with
    `check_host_group`, the side-group check's under "host_group"), per process."""
    spec = root / "spec.json"
    report = str(root / "report.json")
    spec.write_text(json.dumps({"runs": runs, "report": report, "check_host_group": check_host_group}))
    launch([*launcher, str(ROOT / "tests" / "distributed_train_check.py"), str(spec)], **env)
    reports = [json.loads((root / f"report.json.rank{rank}").read_text()) for rank in (0, 1)]
    names = [run["name"] for run in runs] + (["host_group"] if check_host_group else [])
    return {name: [report[name] for report in reports] for name in names}


def max_difference(folder_a: Path, folder_b: Path) -> float:
    a, b = load_file(folder_a / "model.safetensors"), load_file(folder_b / "model.safetensors")
    assert a.keys() == b.keys()
    return max((a[key] - b[key]).abs().max().item() for key in a)


def assert_loads_as_plain(folder: Path, model_type: str) -> PLAIN:
    model, info = PLAIN[model_type].from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return model


# --- DDP through `accelerate launch training/train.py`, with bad rows ----------------------------------------------


def write_data_with_bad_rows(folder: Path) -> dict[str, str]:
    """32 training rows whose second global batch (rows 8-15 of epoch 0's order) starts with 4 bad rows, which
    process 0 gets as its whole batch (process 1: the next 4, valid); 10 validation rows whose first two (process
    0's first validation batch of 2) are bad. 5 validation batches: process 1 has none in the last step."""
    rows = make_rows(32)
    data = write_dataset(folder, "jsonl", rows)
    (folder / "images" / "corrupt.png").write_bytes(b"not a png")
    order = list(SeedableRandomSampler(range(32), data_seed=SEED))  # Accelerate's order of epoch 0
    bad = {
        order[8]: {"image": "images/missing.png"},
        order[9]: {"image": "images/corrupt.png"},
        order[10]: {"caption": "   "},
        order[11]: {"concepts": []},
    }
    table = [json.loads(line) for line in Path(data["train_file"]).read_text().splitlines()]
    validation = table[16:26]
    table = [{**row, **bad.get(i, {})} for i, row in enumerate(table)]
    Path(data["train_file"]).write_text("".join(json.dumps(row) + "\n" for row in table))
    validation[0] = {**validation[0], "image": "images/missing.png"}
    validation[1] = {**validation[1], "concepts": []}
    (folder / "validation.jsonl").write_text("".join(json.dumps(row) + "\n" for row in validation))
    return {**data, "validation_file": str(folder / "validation.jsonl")}


@pytest.mark.slow
def test_two_processes_with_bad_rows_give_the_losses_and_weights_of_one_process(tmp_path):
    """Process 0 reads a training batch and a validation batch with no valid row while process 1 has valid rows:
    it takes part with an empty batch, so both runs train on the same rows (the old loop crashed here)."""
    checkpoint = save_tiny_checkpoint(tmp_path / "clip", "clip")
    data = write_data_with_bad_rows(tmp_path / "data")
    single, double = tmp_path / "single", tmp_path / "double"
    flags = as_flags(data) + ["--eval_steps", "3", "--max_bad_fraction", "0.5"]
    run_training(
        common_flags(str(checkpoint), single, steps=3, batch=8) + flags + ["--per_device_eval_batch_size", "4"]
    )
    # On a machine without GPUs, Accelerate starts CPU processes (gloo) only with ACCELERATE_USE_CPU set.
    flags += common_flags(str(checkpoint), double, steps=3, batch=4) + ["--per_device_eval_batch_size", "2"]
    launch([*ACCELERATE, "--multi_gpu", str(ROOT / "training" / "train.py"), *flags], ACCELERATE_USE_CPU="1")
    run = json.loads((double / "training_args.json").read_text())
    assert (run["num_processes"], run["distributed_type"]) == (2, "MULTI_CPU")
    one, two = read_log(single), read_log(double)
    for expected, actual in zip(one, two, strict=True):
        for name in LOSSES:
            # Same global batch and weights; float32 sums in another order: 1e-5 relative.
            key = name if name in expected else f"eval_{name}"
            assert actual[key] == pytest.approx(expected[key], rel=1e-5), (expected["step"], key)
    counts = {"rows_seen": 24, "skipped_image": 2, "skipped_caption": 1, "skipped_concepts": 1}
    assert {k: two[-2][k] for k in counts} == {k: one[-2][k] for k in counts} == counts
    eval_counts = {"eval_rows_seen": 10, "eval_skipped_image": 1, "eval_skipped_caption": 0, "eval_skipped_concepts": 1}  # fmt: skip
    assert {k: two[-1][k] for k in eval_counts} == {k: one[-1][k] for k in eval_counts} == eval_counts
    # 3 Adam steps at lr 1e-3 move a weight by up to 3e-3; Adam's division by sqrt(v) + eps magnifies the float32
    # rounding of near-zero gradients (seen: 7e-6 on one position-embedding row, 5e-7 elsewhere).
    assert max_difference(single, double) < 5e-5


# --- FSDP2, DDP, streaming (torchrun) and DeepSpeed ZeRO-2 (accelerate launch) ------------------------------------

MAX_LOGIT_SCALE = {"clip": 10.0, "siglip": 0.9985}  # below the initial scale (CLIP 14.3, SigLIP 1.0): the clamp acts


ENGINES = {"ddp": {}, "fsdp2": {"engine": "fsdp2"}, "deepspeed": {}, "zero3": {"zero_stage": 3}}


def engine_runs(root: Path, model_type: str, engine: str, extra: list[str] = ()) -> list[dict]:
    """4 steps (cosine schedule, 2 of warm-up) with a checkpoint every 2; then the same run resumed from its latest
    checkpoint (step 4's removed). `engine`: a key of `ENGINES` (DeepSpeed: the stage of the launch, or ZeRO-3)."""
    data = {"train_file": str(root / "data" / "train.jsonl")}
    flags = common_flags(str(root / model_type), root / f"{engine}-{model_type}", steps=4, batch=2) + as_flags(data)
    flags += ["--lr_scheduler_type", "cosine", "--num_warmup_steps", "2"]
    flags += ["--max_logit_scale", str(MAX_LOGIT_SCALE[model_type]), *extra]
    if engine == "ddp":
        return [{"name": f"ddp-{model_type}", "argv": flags}]
    flags += ["--checkpointing_steps", "2"]
    resumed = flags + ["--resume_from_checkpoint", "latest"]
    latest = root / f"{engine}-{model_type}" / "checkpoints" / "checkpoint-4"
    return [
        {"name": f"{engine}-{model_type}", **ENGINES[engine], "argv": flags},
        {"name": f"{engine}-{model_type}-resumed", **ENGINES[engine], "argv": resumed, "before": {"delete": [str(latest)]}},
    ]  # fmt: skip


STREAM_SHARDS = [6, 6, 4, 5, 3]  # 5 parquet files for 2 processes: split by file, 3 and 2 files per process
WORKER_SHARDS = [10, 2, 2, 10]  # per process 2 files, one per worker: with seed 42, 10 and 2 rows on each process


def bf16_run(root: Path, engine: str) -> dict:
    """3 bf16 steps of SigLIP (logit scale and bias) with a frozen vision tower, recording the scalars that each
    forward passes to the losses."""
    data = {"train_file": str(root / "data" / "train.jsonl")}
    flags = common_flags(str(root / "siglip-scaled"), root / f"{engine}-bf16", steps=3, batch=2) + as_flags(data)
    flags += ["--mixed_precision", "bf16", "--freeze_vision_tower", "true", "--lr_scheduler_type", "constant"]
    flags += ["--max_logit_scale", "1000"]
    return {"name": f"{engine}-bf16", **ENGINES[engine], "argv": flags, "record_scale": True}


def stream_runs(root: Path) -> list[dict]:
    """9 steps of a parquet stream in 5 shards (6, 6, 4, 5 and 3 rows, 2 of them without concepts), batches of 2 per
    process, a checkpoint at step 4 (mid-epoch); then the run resumed from it. The same with 2 data-loader workers
    per process over 4 shards of uneven sizes (24 rows), 6 steps (one epoch) with a
    checkpoint at step 3, after some worker has run out."""
    rows = make_rows(24)
    rows[3]["concepts"] = rows[17]["concepts"] = []
    data = write_shards(root / "stream", rows, STREAM_SHARDS)
    flags = common_flags(str(root / "clip"), root / "stream-out", steps=9, batch=2) + as_flags(data)
    flags += ["--streaming", "true", "--shuffle_buffer_size", "5", "--max_bad_fraction", "0.5"]
    flags += ["--checkpointing_steps", "4", "--checkpoints_total_limit", "3"]
    resumed = flags + ["--resume_from_checkpoint", str(root / "stream-out" / "checkpoints" / "checkpoint-4")]
    workers_data = write_shards(root / "stream-workers", make_rows(24, seed=1), WORKER_SHARDS)
    workers = common_flags(str(root / "clip"), root / "workers-out", steps=6, batch=2) + as_flags(workers_data)
    workers += ["--streaming", "true", "--shuffle_buffer_size", "3", "--dataloader_num_workers", "2"]
    workers += ["--checkpointing_steps", "3"]
    workers_resumed = workers + ["--resume_from_checkpoint", str(root / "workers-out" / "checkpoints" / "checkpoint-3")]  # fmt: skip
    return [
        {"name": "stream", "argv": flags, "record_rows": True},
        {"name": "stream-resumed", "argv": resumed, "record_rows": True},
        {"name": "stream-workers", "argv": workers, "record_rows": True},
        {"name": "stream-workers-resumed", "argv": workers_resumed, "record_rows": True},
    ]


def tar_stream_runs(root: Path) -> list[dict]:
    """The same 9 steps over WebDataset tar shards (6, 6, 4 and 8 samples, gold-set captions) whose concepts come
    from `concept-clip-extract` over the shards, joined by key (`--concepts_dir`); 2 keys are taken out of their
    shard's concepts file, so 2 samples have no concepts. Checkpoint at step 4; then the run resumed from it."""
    shards = root / "tars"
    for shard, (offset, size) in enumerate([(0, 6), (6, 6), (12, 4), (16, 8)]):
        write_tar_shard(shards / f"{shard:05d}.tar", shard, gold_captions(size, offset=offset))
    pattern = str(shards / "{00000..00003}.tar")
    concepts = root / "tar-concepts"
    assert extract_cli.main(["--input", pattern, "--output_dir", str(concepts), "--n_process", "1", "--disable_progress_bar"]) == 0  # fmt: skip
    for key in TAR_KEYS_WITHOUT_CONCEPTS:
        path = concepts / f"{key[:5]}.parquet"
        table = pq.read_table(path)
        pq.write_table(table.filter(pc.field("__key__") != key), path)
    flags = common_flags(str(root / "clip"), root / "tar-stream-out", steps=9, batch=2)
    flags += ["--train_file", pattern, "--concepts_dir", str(concepts), "--image_column", "png", "--caption_column", "txt"]  # fmt: skip
    flags += ["--streaming", "true", "--shuffle_buffer_size", "5", "--max_bad_fraction", "0.5"]
    flags += ["--checkpointing_steps", "4", "--checkpoints_total_limit", "3"]
    resumed = flags + ["--resume_from_checkpoint", str(root / "tar-stream-out" / "checkpoints" / "checkpoint-4")]
    return [
        {"name": "tar-stream", "argv": flags, "record_rows": True},
        {"name": "tar-stream-resumed", "argv": resumed, "record_rows": True},
    ]


def accumulation_runs(root: Path) -> list[dict]:
    """One epoch of 3 global batches (12 rows, 2 per process) with 4 and with 3 accumulation steps: one update each."""
    data = as_flags({"train_file": str(root / "data" / "train.jsonl")}) + ["--max_train_samples", "12"]
    runs = []
    for steps in (4, 3):
        flags = common_flags(str(root / "clip"), root / f"accumulation-{steps}", steps=1, batch=2) + data
        flags += ["--gradient_accumulation_steps", str(steps)]
        runs.append({"name": f"accumulation-{steps}", "argv": flags})
    return runs


TAR_KEYS = [sample_key(shard, i) for shard, size in enumerate([6, 6, 4, 8]) for i in range(size)]
TAR_KEYS_WITHOUT_CONCEPTS = (sample_key(1, 2), sample_key(3, 5))


@pytest.fixture(scope="module")
def engines_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    write_dataset(root / "data", "jsonl", make_rows(16))
    for model_type in PLAIN:
        save_tiny_checkpoint(root / model_type, model_type)
    # For the bf16 runs: a scale of 100 and a bias of -12.9, which bf16 rounds (to 98.86 and -12.875).
    model, processor = build_tiny_model_and_processor("siglip")
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))
        model.logit_bias.fill_(-12.9)
    model.save_pretrained(root / "siglip-scaled")
    processor.save_pretrained(root / "siglip-scaled")
    return root


@pytest.fixture(scope="module")
def torchrun_results(engines_root):
    """One torchrun launch: DDP and FSDP2 (with a resume) for CLIP and SigLIP, the stream and its resume."""
    root = engines_root
    runs = [run for kind in ("clip", "siglip") for engine in ("ddp", "fsdp2") for run in engine_runs(root, kind, engine)]  # fmt: skip
    runs[0]["argv"] += ["--ddp_timeout", "1234"]  # the first run initialises the process group that all runs share
    runs[0]["count_syncs"] = True
    # FSDP2 with activation checkpointing: the CLIP run again (without its resume), counting the encoder layers' calls.
    fsdp2_clip = next(run for run in runs if run["name"] == "fsdp2-clip")
    fsdp2_clip["count_layer_calls"] = True
    checkpointed = {**fsdp2_clip, "name": "fsdp2-clip-checkpointed", "fsdp": {"activation_checkpointing": True}}
    checkpointed["argv"] = fsdp2_clip["argv"] + ["--output_dir", str(root / "fsdp2-clip-checkpointed")]
    runs += [checkpointed, bf16_run(root, "ddp"), bf16_run(root, "fsdp2")]
    runs += stream_runs(root) + tar_stream_runs(root) + accumulation_runs(root)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return run_spec(root, runs, torchrun, check_host_group=True, ACCELERATE_USE_CPU="1")


def losses_and_scales(result: dict) -> list[tuple]:
    return [(e["step"], *(e[name] for name in LOSSES), e["logit_scale"]) for e in result["log"] if "loss" in e]


@pytest.mark.slow
def test_ddp_timeout_reaches_the_process_group(torchrun_results):
    assert torchrun_results["ddp-clip"][0]["process_group_timeout"] == 1234.0
    assert torchrun_results["ddp-clip"][1]["process_group_timeout"] == 1234.0


@pytest.mark.slow
def test_gloo_side_group_takes_the_ddp_timeout_and_names_the_interface_fix(torchrun_results):
    """Next to NCCL, the step bookkeeping and the losses' size exchanges share one gloo group, created with
    --ddp_timeout (not torch's 30 minutes); a gloo that cannot be set up is reported with GLOO_SOCKET_IFNAME."""
    for process in torchrun_results["host_group"]:
        assert process["sum"] == [3]
        assert process["groups"] == 1 and set(process["timeouts"]) == {1234.0}, process
        assert "GLOO_SOCKET_IFNAME" in process["error"] and "no-such-interface" in process["error"], process["error"]


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["clip", "siglip"])
def test_fsdp2_trains_checkpoints_resumes_and_exports_as_ddp(model_type, torchrun_results, engines_root):
    """Accelerate's FSDP2 code paths with the loop's sharding (blocks, then root; CLIP's scale as [1]): logging,
    clamp, sharded checkpoints, `--resume_from_checkpoint latest` and a plain export, against DDP."""
    ddp, fsdp, resumed = (
        torchrun_results[name][0]
        for name in (f"ddp-{model_type}", f"fsdp2-{model_type}", f"fsdp2-{model_type}-resumed")
    )
    assert ddp["completed_steps"] == fsdp["completed_steps"] == resumed["completed_steps"] == 4
    # Same global batches: the logged losses and logit scales (read from the shards) agree to float32 rounding.
    for expected, actual in zip(losses_and_scales(ddp), losses_and_scales(fsdp), strict=True):
        assert actual == pytest.approx(expected, rel=1e-5)
    assert losses_and_scales(resumed) == losses_and_scales(fsdp)[2:]  # the resumed run goes on from step 2 exactly
    scales = [e[-1] for e in losses_and_scales(fsdp)]
    assert scales[0] == pytest.approx(MAX_LOGIT_SCALE[model_type]) and max(scales) <= MAX_LOGIT_SCALE[model_type] * (1 + 1e-6)  # fmt: skip
    fsdp_dir, ddp_dir = engines_root / f"fsdp2-{model_type}", engines_root / f"ddp-{model_type}"
    assert json.loads((fsdp_dir / "training_args.json").read_text())["distributed_type"] == "FSDP"
    assert sorted(p.name for p in (fsdp_dir / "checkpoints" / "checkpoint-2").iterdir() if p.is_dir()) == [
        "optimizer_0",
        "pytorch_model_fsdp_0",
    ]  # sharded checkpoints (fsdp_8gpu.yaml): each process writes its own shard
    # 4 Adam steps (lr 0 to 1e-3) on the same batches; float32 sums in another order (seen: 1e-7 CLIP, 2e-6 SigLIP).
    assert max_difference(ddp_dir, fsdp_dir) < 1e-5
    plain = assert_loads_as_plain(fsdp_dir, model_type)
    expected_shape = () if model_type == "clip" else (1,)  # each model's own shape: 0-dim for CLIP, [1] for SigLIP
    assert tuple(plain.logit_scale.shape) == expected_shape
    assert plain.logit_scale.exp().item() <= MAX_LOGIT_SCALE[model_type] * (1 + 1e-6)


def epochs(rows: list) -> list[list[list[str]]]:
    """Per epoch, the batches (image paths or keys) a process read, from its recorded rows."""
    split = []
    for entry in rows:
        if isinstance(entry, str):  # "epoch N"
            split.append([])
        elif isinstance(entry, list) and entry:  # (an empty entry is `empty_batch`'s blank row)
            split[-1].append(entry)
    return split


def rows_read(rows: list) -> list[int]:
    """Rows the process had read from its parquet files at the start of each epoch."""
    return [entry for entry in rows if isinstance(entry, int)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, expected_rows",
    [("stream", [f"images/{i:04d}.png" for i in range(24)]), ("tar-stream", sorted(TAR_KEYS))],
)
def test_stream_is_split_between_processes_and_resumes_at_the_same_row(name, expected_rows, torchrun_results):
    """Parquet files, and tar shards with their concepts joined by key: each row once per epoch across processes,
    the rows without concepts counted as bad rows, and a mid-epoch resume that reads the same rows after it."""
    full, resumed = torchrun_results[name], torchrun_results[f"{name}-resumed"]
    first_epoch = [path for process in full for batch in epochs(process["rows"])[0] for path in batch]
    assert sorted(first_epoch) == expected_rows  # every row once, on one process
    log = full[0]["log"]
    steps_in_first_epoch = sum(e["epoch"] == 0 for e in log)
    assert steps_in_first_epoch == max(len(epochs(process["rows"])[0]) for process in full)
    assert {e["step"]: e["skipped_concepts"] for e in log}[steps_in_first_epoch] == 2
    # Resumed at step 4 (mid-epoch), each process reads what it read after its 4th batch, then the next epoch.
    for process, again in zip(full, resumed, strict=True):
        after_checkpoint = [batch for epoch in epochs(process["rows"]) for batch in epoch][4:]
        assert [batch for epoch in epochs(again["rows"]) for batch in epoch] == after_checkpoint
    assert losses_and_scales(resumed[0]) == losses_and_scales(full[0])[4:]
    assert epochs(full[0]["rows"])[1] != epochs(full[0]["rows"])[0][: len(epochs(full[0]["rows"])[1])]  # reshuffled


@pytest.mark.slow
def test_stream_of_more_files_than_processes_is_split_by_file(torchrun_results):
    """5 files for 2 processes (not a multiple): each process reads only its own files, so the rows read in the first
    epoch add up to the data once (every process read all 24 rows when the files did not divide evenly)."""
    reads = [rows_read(process["rows"]) for process in torchrun_results["stream"]]
    first_epoch = [process[1] - process[0] for process in reads]
    assert sum(first_epoch) == sum(STREAM_SHARDS), first_epoch
    got = [sum(len(batch) for batch in epochs(process["rows"])[0]) for process in torchrun_results["stream"]]
    assert all(0 <= read - used < 2 for read, used in zip(first_epoch, got))  # at most an incomplete last batch


@pytest.mark.slow
def test_stream_resumes_exactly_with_data_loader_workers_of_uneven_shards(torchrun_results, engines_root):
    """2 data-loader workers per process over files of different sizes: a worker runs out of rows before the
    checkpoint, so the batches did not alternate between the workers; the resumed run's workers still skip exactly
    their own batches and take their turns as before."""
    full, resumed = torchrun_results["stream-workers"], torchrun_results["stream-workers-resumed"]
    first_epoch = [path for process in full for batch in epochs(process["rows"])[0] for path in batch]
    assert sorted(first_epoch) == [f"images/{i:04d}.png" for i in range(24)]  # each row once (a worker per file)
    state = json.loads((engines_root / "workers-out" / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())  # fmt: skip
    alternating = [len(range(worker, 3, 2)) for worker in range(2)]
    assert any(counts != alternating for counts in state["stream_worker_batches"]), state  # some worker ran out
    for process, again in zip(full, resumed, strict=True):
        after_checkpoint = [batch for epoch in epochs(process["rows"]) for batch in epoch][3:]
        assert [batch for epoch in epochs(again["rows"]) for batch in epoch] == after_checkpoint
    assert losses_and_scales(resumed[0]) == losses_and_scales(full[0])[3:]


@pytest.mark.slow
def test_epoch_of_fewer_batches_than_accumulation_steps_makes_a_partial_update(torchrun_results, engines_root):
    """3 batches with --gradient_accumulation_steps 4: the epoch's last batch ends the accumulation (it stopped with
    "gave no batch with a valid row"). The gradient is (g1 + g2 + g3) / 4, Accelerate's scaling, against
    (g1 + g2 + g3) / 3 with accumulation 3: AdamW's first update, lr * g / (|g| + eps), depends on that scale only
    through eps, by less than lr * eps / |g| per weight."""
    partial, reference = torchrun_results["accumulation-4"][0], torchrun_results["accumulation-3"][0]
    assert partial["completed_steps"] == reference["completed_steps"] == 1
    assert [e["rows_seen"] for e in partial["log"] if "loss" in e] == [12]
    # lr 1e-3 moves the weights by up to 1e-3; the two updates agree to 1% of that (seen: 3.8e-6, from weights
    # whose gradient is within a few orders of magnitude of eps = 1e-8).
    assert max_difference(engines_root / "accumulation-4", engines_root / "accumulation-3") < 1e-5


@pytest.mark.slow
def test_fsdp2_activation_checkpointing_is_applied_and_changes_no_result(torchrun_results, engines_root):
    """`fsdp_activation_checkpointing` (ignored before: the model is sharded before Accelerate sees it): each encoder
    layer runs again in the backward, and the run logs the same losses and ends with the same weights."""
    plain, checkpointed = torchrun_results["fsdp2-clip"][0], torchrun_results["fsdp2-clip-checkpointed"][0]
    assert plain["layer_calls"] > 0 and checkpointed["layer_calls"] == 2 * plain["layer_calls"]
    assert losses_and_scales(checkpointed) == losses_and_scales(plain)
    assert max_difference(engines_root / "fsdp2-clip", engines_root / "fsdp2-clip-checkpointed") == 0.0
    assert_loads_as_plain(engines_root / "fsdp2-clip-checkpointed", "clip")


@pytest.fixture(scope="module")
def deepspeed_results(engines_root):
    """One `accelerate launch --use_deepspeed` (ZeRO-2; the ZeRO-3 runs switch stage): CLIP (with a resume) and a
    stream on ZeRO-2; CLIP (with a resume) and SigLIP on ZeRO-3; a bf16 SigLIP run on each stage."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is an optional engine (pip install deepspeed)")
    root = engines_root
    runs = engine_runs(root, "clip", "deepspeed", extra=["--ddp_backend", "gloo"])
    runs[0]["count_syncs"] = True
    stream = ["--streaming", "true", "--train_file", str(root / "stream" / "part-*.parquet"), "--max_bad_fraction", "0.5"]  # fmt: skip
    runs.append({"name": "deepspeed-stream", "argv": runs[0]["argv"] + stream + ["--output_dir", str(root / "ds-stream")]})  # fmt: skip
    runs += engine_runs(root, "clip", "zero3", extra=["--ddp_backend", "gloo"])
    runs += engine_runs(root, "siglip", "zero3", extra=["--ddp_backend", "gloo"])[:1]  # (resumes: tested with CLIP)
    for engine in ("deepspeed", "zero3"):
        runs.append(bf16_run(root, engine))
        runs[-1]["argv"] += ["--ddp_backend", "gloo"]
    (root / "deepspeed").mkdir()
    return run_spec(root / "deepspeed", runs, [*ACCELERATE, "--use_deepspeed", "--zero_stage", "2"])


def learning_rates(result: dict) -> list[float]:
    return [e["lr"] for e in result["log"] if "loss" in e]


def update_syncs(result: dict) -> list[dict]:
    """Host syncs of each `training_step` after the first (one batch and one update each here; the first also builds
    the optimizer state), without the reads that are by design (`distributed_train_check.reads_by_design`)."""
    return result["syncs"][1:]


@pytest.mark.slow
def test_deepspeed_learning_rate_schedule_steps_as_under_ddp_and_resumes(torchrun_results, deepspeed_results):
    """The scheduler goes through `prepare` with the model and optimizer (alone, DeepSpeed's `prepare` left it
    unwrapped: it stepped once per batch instead of once per update and process, and no checkpoint held it)."""
    ddp, deepspeed = torchrun_results["ddp-clip"][0], deepspeed_results["deepspeed-clip"][0]
    resumed = deepspeed_results["deepspeed-clip-resumed"][0]
    # Cosine over 4 updates with 2 of warm-up, the rate after each update: exactly DDP's, also after the resume.
    assert learning_rates(ddp) == [5e-4, 1e-3, 5e-4, 0.0]
    assert learning_rates(deepspeed) == learning_rates(ddp) and learning_rates(resumed) == learning_rates(ddp)[2:]


@pytest.mark.slow
def test_deepspeed_update_reads_nothing_on_the_host(torchrun_results, deepspeed_results):
    """No host sync in an update, as under DDP: the loop neither asks Accelerate for the gradient norm (DeepSpeed
    clips in its own step) nor reads the scale to decide whether to clamp it (before: 2 per update). Counted apart:
    DeepSpeed's own step (it checks the norm it clips with: 3 scalar reads and 2 uploads per update on ZeRO-2), Adam's host-side step counters and
    the model's exchange of batch sizes over a CPU group."""
    ddp, deepspeed = torchrun_results["ddp-clip"][0], deepspeed_results["deepspeed-clip"][0]
    assert update_syncs(deepspeed) == update_syncs(ddp) == [{}, {}, {}], (deepspeed["syncs"], ddp["syncs"])


@pytest.mark.slow
def test_deepspeed_zero2_trains_checkpoints_resumes_and_exports_as_ddp(torchrun_results, deepspeed_results, engines_root):  # fmt: skip
    """ZeRO-2 through `accelerate launch --use_deepspeed` on 2 CPU processes (DeepSpeed's CPU accelerator, gloo):
    the clamp acts on DeepSpeed's fp32 master weights, the export gathers them."""
    root, results = engines_root, deepspeed_results
    ddp, deepspeed, resumed = torchrun_results["ddp-clip"][0], results["deepspeed-clip"][0], results["deepspeed-clip-resumed"][0]  # fmt: skip
    for expected, actual in zip(losses_and_scales(ddp), losses_and_scales(deepspeed), strict=True):
        assert actual == pytest.approx(expected, rel=1e-5)
    assert losses_and_scales(resumed) == losses_and_scales(deepspeed)[2:]
    scales = [e[-1] for e in losses_and_scales(deepspeed)]  # read from DeepSpeed's fp32 master weights
    assert scales[0] == pytest.approx(MAX_LOGIT_SCALE["clip"]) and max(scales) <= MAX_LOGIT_SCALE["clip"] * (1 + 1e-6)
    folder = root / "deepspeed-clip"
    assert json.loads((folder / "training_args.json").read_text())["distributed_type"] == "DEEPSPEED"
    # 4 Adam steps (lr 0 to 1e-3) on the same batches; float32 sums in another order (seen: 4e-7).
    assert max_difference(root / "ddp-clip", folder) < 1e-5
    plain = assert_loads_as_plain(folder, "clip")
    assert plain.logit_scale.shape == () and plain.logit_scale.dtype == torch.float32
    assert results["deepspeed-stream"][0]["completed_steps"] == 4  # no data loader through `prepare`: batch size set
    assert_loads_as_plain(root / "ds-stream", "clip")


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["clip", "siglip"])
def test_deepspeed_zero3_trains_checkpoints_resumes_and_exports_as_ddp(model_type, torchrun_results, deepspeed_results, engines_root):  # fmt: skip
    """ZeRO-3: the model built whole and partitioned by DeepSpeed (`zero.Init` cannot take CLIP's 0-dim scale), the
    clamp on each process's part of the 1-element scale (and its gathered copy), checkpoints (CLIP: and the resume),
    and an export built on process 0 alone; against DDP."""
    ddp, zero3 = torchrun_results[f"ddp-{model_type}"][0], deepspeed_results[f"zero3-{model_type}"][0]
    assert zero3["completed_steps"] == 4 and learning_rates(zero3) == learning_rates(ddp)
    for expected, actual in zip(losses_and_scales(ddp), losses_and_scales(zero3), strict=True):
        assert actual == pytest.approx(expected, rel=1e-5)
    if model_type == "clip":  # the resumed run goes on from step 2 exactly
        resumed = deepspeed_results["zero3-clip-resumed"][0]
        assert learning_rates(resumed) == learning_rates(ddp)[2:]
        assert losses_and_scales(resumed) == losses_and_scales(zero3)[2:]
    scales = [e[-1] for e in losses_and_scales(zero3)]
    assert scales[0] == pytest.approx(MAX_LOGIT_SCALE[model_type]) and max(scales) <= MAX_LOGIT_SCALE[model_type] * (1 + 1e-6)  # fmt: skip
    folder = engines_root / f"zero3-{model_type}"
    assert max_difference(engines_root / f"ddp-{model_type}", folder) < 1e-5
    plain = assert_loads_as_plain(folder, model_type)
    assert tuple(plain.logit_scale.shape) == (() if model_type == "clip" else (1,))


def bf16_result(engine: str, torchrun_results: dict, deepspeed_results: dict) -> dict:
    return (torchrun_results if engine in ("ddp", "fsdp2") else deepspeed_results)[f"{engine}-bf16"][0]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fsdp2", "deepspeed", "zero3"])
def test_bf16_forward_uses_the_fp32_logit_scale_and_bias(engine, torchrun_results, deepspeed_results):
    """In bf16, every forward multiplies by the fp32 scale (and adds the fp32 bias) that DDP's autocast uses: the
    first ones are DDP's, each next scale the fp32 value logged after the update before it (in bf16, a scale of 100
    reads 98.86, a bias of -12.9 reads -12.875, and updates of 1e-3 vanish)."""
    ddp, run = (bf16_result(name, torchrun_results, deepspeed_results) for name in ("ddp", engine))
    for forward in ddp["scales"] + run["scales"]:
        assert {name: dtype for name, (dtype, _) in forward.items()} == {"logit_scale": "torch.float32", "logit_bias": "torch.float32"}  # fmt: skip
    for name in ("logit_scale", "logit_bias"):
        assert run["scales"][0][name][1] == pytest.approx(ddp["scales"][0][name][1], rel=1e-6)
    logged = [e["logit_scale"] for e in run["log"] if "loss" in e]
    used = [forward["logit_scale"][1][0] for forward in run["scales"]]
    assert used[1:] == pytest.approx(logged[:-1], rel=1e-6) and used[1] != used[0]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fsdp2", "deepspeed", "zero3"])
def test_bf16_exports_the_frozen_tower_as_loaded(engine, torchrun_results, deepspeed_results, engines_root):
    """A frozen vision tower trained in bf16 is exported bit-identical to the fp32 weights it was loaded with (under
    DeepSpeed's own bf16 mode, 25 of its 48 tensors came back rounded)."""
    assert bf16_result(engine, torchrun_results, deepspeed_results)["completed_steps"] == 3
    initial = load_file(engines_root / "siglip-scaled" / "model.safetensors")
    exported = load_file(engines_root / f"{engine}-bf16" / "model.safetensors")
    frozen = [key for key in initial if key.startswith("vision_model.")]
    assert frozen and [key for key in frozen if not torch.equal(exported[key], initial[key])] == []
    assert all(exported[key].dtype == torch.float32 for key in exported)
