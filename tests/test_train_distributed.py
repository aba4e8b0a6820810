"""The training loop on 2 CPU processes (gloo): DDP with bad rows, FSDP2 for CLIP and SigLIP, DeepSpeed ZeRO-2,
streaming, the process-group timeout; each against one process, or DDP, on the same global batches."""

import json
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
from modeling_concept_clip.testing_utils import save_tiny_checkpoint

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


def run_spec(root: Path, runs: list[dict], launcher: list[str], **env: str) -> dict[str, list[dict]]:
    """Run `runs` with tests/distributed_train_check.py in 2 processes; each run's results, per process."""
    spec = root / "spec.json"
    spec.write_text(json.dumps({"runs": runs, "report": str(root / "report.json")}))
    launch([*launcher, str(ROOT / "tests" / "distributed_train_check.py"), str(spec)], **env)
    reports = [json.loads((root / f"report.json.rank{rank}").read_text()) for rank in (0, 1)]
    return {run["name"]: [report[run["name"]] for report in reports] for run in runs}


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


def engine_runs(root: Path, model_type: str, engine: str, extra: list[str] = ()) -> list[dict]:
    """4 steps with a checkpoint every 2; then the same run resumed from its latest checkpoint (step 4's removed)."""
    data = {"train_file": str(root / "data" / "train.jsonl")}
    flags = common_flags(str(root / model_type), root / f"{engine}-{model_type}", steps=4, batch=2) + as_flags(data)
    flags += ["--lr_scheduler_type", "constant", "--max_logit_scale", str(MAX_LOGIT_SCALE[model_type]), *extra]
    if engine == "ddp":
        return [{"name": f"ddp-{model_type}", "argv": flags}]
    flags += ["--checkpointing_steps", "2"]
    resumed = flags + ["--resume_from_checkpoint", "latest", "--overwrite_output_dir"]
    latest = root / f"{engine}-{model_type}" / "checkpoints" / "checkpoint-4"
    return [
        {"name": f"{engine}-{model_type}", "engine": engine, "argv": flags},
        {"name": f"{engine}-{model_type}-resumed", "engine": engine, "argv": resumed, "before": {"delete": [str(latest)]}},
    ]  # fmt: skip


def stream_runs(root: Path) -> list[dict]:
    """9 steps of a parquet stream in 4 shards (6, 6, 4 and 8 rows, 2 of them without concepts), batches of 2 per
    process, a checkpoint at step 4 (mid-epoch); then the run resumed from it."""
    rows = make_rows(24)
    rows[3]["concepts"] = rows[17]["concepts"] = []
    data = write_shards(root / "stream", rows, [6, 6, 4, 8])
    flags = common_flags(str(root / "clip"), root / "stream-out", steps=9, batch=2) + as_flags(data)
    flags += ["--streaming", "true", "--shuffle_buffer_size", "5", "--max_bad_fraction", "0.5"]
    flags += ["--checkpointing_steps", "4", "--checkpoints_total_limit", "3"]
    resumed = flags + ["--resume_from_checkpoint", str(root / "stream-out" / "checkpoints" / "checkpoint-4")]
    return [
        {"name": "stream", "argv": flags, "record_rows": True},
        {"name": "stream-resumed", "argv": resumed, "record_rows": True},
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


TAR_KEYS = [sample_key(shard, i) for shard, size in enumerate([6, 6, 4, 8]) for i in range(size)]
TAR_KEYS_WITHOUT_CONCEPTS = (sample_key(1, 2), sample_key(3, 5))


@pytest.fixture(scope="module")
def engines_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    write_dataset(root / "data", "jsonl", make_rows(16))
    for model_type in PLAIN:
        save_tiny_checkpoint(root / model_type, model_type)
    return root


@pytest.fixture(scope="module")
def torchrun_results(engines_root):
    """One torchrun launch: DDP and FSDP2 (with a resume) for CLIP and SigLIP, the stream and its resume."""
    root = engines_root
    runs = [run for kind in ("clip", "siglip") for engine in ("ddp", "fsdp2") for run in engine_runs(root, kind, engine)]  # fmt: skip
    runs[0]["argv"] += ["--ddp_timeout", "1234"]  # the first run initialises the process group that all runs share
    runs += stream_runs(root) + tar_stream_runs(root)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return run_spec(root, runs, torchrun, ACCELERATE_USE_CPU="1")


def losses_and_scales(result: dict) -> list[tuple]:
    return [(e["step"], *(e[name] for name in LOSSES), e["logit_scale"]) for e in result["log"] if "loss" in e]


@pytest.mark.slow
def test_ddp_timeout_reaches_the_process_group(torchrun_results):
    assert torchrun_results["ddp-clip"][0]["process_group_timeout"] == 1234.0
    assert torchrun_results["ddp-clip"][1]["process_group_timeout"] == 1234.0


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
    # 4 Adam steps at lr 1e-3 on the same batches; float32 sums in another order (seen: 3e-7 CLIP, 2e-6 SigLIP).
    assert max_difference(ddp_dir, fsdp_dir) < 1e-5
    plain = assert_loads_as_plain(fsdp_dir, model_type)
    expected_shape = () if model_type == "clip" else (1,)  # each model's own shape: 0-dim for CLIP, [1] for SigLIP
    assert tuple(plain.logit_scale.shape) == expected_shape
    assert plain.logit_scale.exp().item() <= MAX_LOGIT_SCALE[model_type] * (1 + 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, expected_rows",
    [("stream", [f"images/{i:04d}.png" for i in range(24)]), ("tar-stream", sorted(TAR_KEYS))],
)
def test_stream_is_split_between_processes_and_resumes_at_the_same_row(name, expected_rows, torchrun_results):
    """Parquet files, and tar shards with their concepts joined by key: each row once per epoch across processes,
    the rows without concepts counted as bad rows, and a mid-epoch resume that reads the same rows after it."""
    full, resumed = torchrun_results[name], torchrun_results[f"{name}-resumed"]

    def epochs(rows: list) -> list[list[list[str]]]:  # per epoch, the batches (image paths) this process read
        split = []
        for entry in rows:
            if isinstance(entry, str):
                split.append([])
            elif entry:  # (an empty entry is `empty_batch`'s blank row)
                split[-1].append(entry)
        return split

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
def test_deepspeed_zero2_trains_checkpoints_resumes_and_exports_as_ddp(torchrun_results, engines_root):
    """ZeRO-2 through `accelerate launch --use_deepspeed` on 2 CPU processes (DeepSpeed's CPU accelerator, gloo):
    the clamp acts on DeepSpeed's fp32 master weights, the export gathers them."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is an optional engine (pip install deepspeed)")
    root = engines_root
    runs = engine_runs(root, "clip", "deepspeed", extra=["--ddp_backend", "gloo"])
    stream = ["--streaming", "true", "--train_file", str(root / "stream" / "part-*.parquet"), "--max_bad_fraction", "0.5"]  # fmt: skip
    runs.append({"name": "deepspeed-stream", "argv": runs[0]["argv"] + stream + ["--output_dir", str(root / "ds-stream")]})  # fmt: skip
    (root / "deepspeed").mkdir()
    results = run_spec(root / "deepspeed", runs, [*ACCELERATE, "--use_deepspeed", "--zero_stage", "2"])
    ddp, deepspeed, resumed = torchrun_results["ddp-clip"][0], results["deepspeed-clip"][0], results["deepspeed-clip-resumed"][0]  # fmt: skip
    for expected, actual in zip(losses_and_scales(ddp), losses_and_scales(deepspeed), strict=True):
        assert actual == pytest.approx(expected, rel=1e-5)
    assert losses_and_scales(resumed) == losses_and_scales(deepspeed)[2:]
    scales = [e[-1] for e in losses_and_scales(deepspeed)]  # read from DeepSpeed's fp32 master weights
    assert scales[0] == pytest.approx(MAX_LOGIT_SCALE["clip"]) and max(scales) <= MAX_LOGIT_SCALE["clip"] * (1 + 1e-6)
    folder = root / "deepspeed-clip"
    assert json.loads((folder / "training_args.json").read_text())["distributed_type"] == "DEEPSPEED"
    # 4 Adam steps at lr 1e-3 on the same batches; float32 sums in another order (seen: 1e-6).
    assert max_difference(root / "ddp-clip", folder) < 1e-5
    plain = assert_loads_as_plain(folder, "clip")
    assert plain.logit_scale.shape == () and plain.logit_scale.dtype == torch.float32
    assert results["deepspeed-stream"][0]["completed_steps"] == 4  # no data loader through `prepare`: batch size set
    assert_loads_as_plain(root / "ds-stream", "clip")
