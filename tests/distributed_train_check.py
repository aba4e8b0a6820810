"""Training runs in 2 processes (gloo, CPU), each `modeling_concept_clip.training.main(argv)` (what `training/train.py`
and `concept-clip-train` call), several runs per launch to save start-up time:

    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 tests/distributed_train_check.py SPEC.json
    accelerate launch --use_deepspeed --zero_stage 2 --num_processes 2 tests/distributed_train_check.py SPEC.json

SPEC.json: `{"runs": [{"name": ..., "argv": [...], "engine": "ddp"|"fsdp2", "fsdp": {plugin settings},
"zero_stage": 2|3, "before": {"delete": [paths]}, "record_rows": bool, "record_scale": bool, "count_syncs": bool,
"count_layer_calls": bool}], "report": path, "check_host_group": bool}`. Each process writes `<report>.rank<N>`: per
run, the steps, the log, the process-group timeout, the wall time and, when asked:
- "record_rows": the rows its collator received, batch by batch, after an "epoch N" marker and the number of rows
  this process had read from parquet files at the start of each epoch;
- "record_scale": the dtype and value of the logit scale (and bias) that each forward passed to the losses;
- "count_syncs": the host syncs (`HostSyncCounter`) of each `training_step`, reads by design left out
  (`reads_by_design`);
- "count_layer_calls": how many times the encoder layers ran (twice per step with activation checkpointing).

FSDP2: Accelerate turns FSDP on only on accelerators, so on these CPU processes the run switches Accelerate's state
to FSDP2 after building the `Accelerator`, as `accelerate launch --use_fsdp --fsdp_version 2` does on GPUs (the
plugin's settings are those of training/configs/accelerate/fsdp_8gpu.yaml, with the run's "fsdp" settings on top,
and the run's mixed precision as `AcceleratorState` gives it to the plugin). Everything after that is Accelerate's and
the loop's own code: `prepare`, `save_state`/`load_state`, `get_state_dict`, clipping, the clamp.

DeepSpeed: the launch's ZeRO stage applies to runs without "zero_stage"; a run with one builds its DeepSpeed plugin
with that stage (the plugin reads the stage from the environment that `accelerate launch` sets).
"""

import json
import os
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from datasets.packaged_modules.parquet.parquet import Parquet
from torch.optim.adam import adam

from modeling_concept_clip import distributed, training
from modeling_concept_clip import modeling_concept_clip as concept_models
from modeling_concept_clip.collator import ConceptCollator
from modeling_concept_clip.distributed import all_gather_host_lists, all_gather_sizes
from modeling_concept_clip.host_syncs import HostSyncCounter
from modeling_concept_clip.training import loop
from modeling_concept_clip.training.data import Loaders
from modeling_concept_clip.training.engines import ProcessSums

ROOT = Path(__file__).resolve().parents[1]
FSDP_CONFIG = ROOT / "training" / "configs" / "accelerate" / "fsdp_8gpu.yaml"


def switch_to_fsdp2(accelerator, settings: dict):
    config = load_config_from_file(str(FSDP_CONFIG)).fsdp_config
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        reshard_after_forward=config["fsdp_reshard_after_forward"],
        state_dict_type=config["fsdp_state_dict_type"],
        auto_wrap_policy=config["fsdp_auto_wrap_policy"].lower(),
        **settings,
    )
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)  # as `AcceleratorState` does for an FSDP launch
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP


PARQUET_ROWS_READ = [0]  # by this process (not by data-loader workers)


def counting_parquet_reads(generate_tables):
    def generate(self, *args, **kwargs):
        for key, table in generate_tables(self, *args, **kwargs):
            PARQUET_ROWS_READ[0] += table.num_rows
            yield key, table

    return generate


Parquet._generate_tables = counting_parquet_reads(Parquet._generate_tables)


def reads_by_design() -> list:
    """What reads host values by design in a training step, counted apart from its host syncs: Adam's step counters
    (host tensors without `capturable`), the model's exchange of batch sizes over a CPU group and, under DeepSpeed,
    its own optimizer step (it checks the gradient norm it clips with), so that what is left is the loop's."""
    functions = [adam, all_gather_sizes, all_gather_host_lists]
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        from deepspeed.runtime.engine import DeepSpeedEngine

        functions.append(DeepSpeedEngine._take_model_step)
    return functions


def encoder_layer_classes() -> list[type]:
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer
    from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

    return [CLIPEncoderLayer, SiglipEncoderLayer]


def process_group_timeout() -> float:
    group = dist.distributed_c10d._get_default_group()
    return group._get_backend(torch.device("cpu")).options._timeout / timedelta(seconds=1)


def check_host_group(timeout_seconds: int) -> dict:
    """The CPU (gloo) side group that runs next to a GPU backend, made here as if the default group were NCCL: one
    group for the step bookkeeping and the losses' size exchanges, with the loop's timeout; and, when gloo cannot
    be set up (here: an interface that does not exist), an error that names GLOO_SOCKET_IFNAME."""
    get_backend, dist.get_backend = dist.get_backend, lambda group=None: "nccl"
    try:
        distributed._HOST_GROUPS.clear()
        sums = ProcessSums(
            SimpleNamespace(num_processes=dist.get_world_size(), process_index=dist.get_rank()), timeout_seconds
        )
        total = sums([dist.get_rank() + 1])
        distributed.all_gather_sizes((dist.get_rank(),), dist.get_world_size())  # the losses' side of it
        groups = [sums.group, *distributed._HOST_GROUPS.values()]
        result = {
            "sum": total,
            "groups": len({id(group) for group in groups}),
            "timeouts": [
                group._get_backend(torch.device("cpu")).options._timeout / timedelta(seconds=1) for group in groups
            ],  # fmt: skip
        }
        distributed._HOST_GROUPS.clear()
        os.environ["GLOO_SOCKET_IFNAME"] = "no-such-interface"
        try:
            ProcessSums(
                SimpleNamespace(num_processes=dist.get_world_size(), process_index=dist.get_rank()), timeout_seconds
            )
            result["error"] = None
        except RuntimeError as error:
            result["error"] = str(error)
    finally:
        os.environ.pop("GLOO_SOCKET_IFNAME", None)
        dist.get_backend = get_backend
        distributed._HOST_GROUPS.clear()
    return result


def skip_deepspeed_shared_memory_op():
    """DeepSpeed's CPU accelerator compiles a shared-memory collectives op at its first use (about 110 CPU-seconds
    on a fresh machine); without it DeepSpeed's collectives go through the process group (gloo), as the DDP and FSDP2
    runs' do. DeepSpeed reads its op table (`deepspeed.ops.__compatible_ops__`) when it starts its communication."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def main():
    skip_deepspeed_shared_memory_op()
    spec = json.loads(Path(sys.argv[1]).read_text())
    # The runs share one process group: torchrun's rendezvous does not take a second initialisation, and the first
    # run's --ddp_timeout is the one read back.
    destroy_process_group, PartialState.destroy_process_group = PartialState.destroy_process_group, lambda *_: None
    build_accelerator, finish_run, training_step = loop.build_accelerator, loop.finish_run, loop.training_step
    collate, train_batches, c2lip_losses = ConceptCollator.__call__, Loaders.train_batches, concept_models.c2lip_losses
    layer_forwards = {cls: cls.forward for cls in encoder_layer_classes()}
    launch_stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    report, received = {}, []
    for run in spec["runs"]:
        result = report[run["name"]] = {}
        scales, syncs, layer_calls = [], [], [0]

        def build(args, run=run):
            if launch_stage is not None:
                os.environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"] = str(run.get("zero_stage", launch_stage))
            accelerator = build_accelerator(args)
            if run.get("engine") == "fsdp2":
                switch_to_fsdp2(accelerator, run.get("fsdp", {}))
            if accelerator.is_main_process:
                for path in run.get("before", {}).get("delete", []):
                    shutil.rmtree(path)
            accelerator.wait_for_everyone()
            return accelerator

        def finish(state_run, state, result=result):
            result["process_group_timeout"] = process_group_timeout()  # before end_training tears the group down
            finish_run(state_run, state)

        def recording_collate(self, rows):  # each batch's WebDataset keys or image paths (not `empty_batch`'s row)
            ids = (row.get("__key__", row[self.image_column]) for row in rows)
            # Carried in the batch: a data-loader worker collates in its own process.
            return {**collate(self, rows), "recorded_rows": [row_id for row_id in ids if isinstance(row_id, str)]}

        def recording_train_batches(self, state):
            received.append(f"epoch {state.epoch}")
            received.append(PARQUET_ROWS_READ[0])  # rows this process has read from parquet files so far
            for batch in train_batches(self, state):
                received.append(batch.pop("recorded_rows"))
                yield batch

        def recording_losses(*args, scales=scales, **kwargs):  # values read after the run: no sync in the step
            scalars = {name: kwargs.get(name) for name in ("logit_scale", "logit_bias")}
            scales.append({name: value.detach().clone() for name, value in scalars.items() if value is not None})
            return c2lip_losses(*args, **kwargs)

        def counting_training_step(*args, syncs=syncs, **kwargs):
            with HostSyncCounter(host_only=reads_by_design()) as counter:
                updated = training_step(*args, **kwargs)
            syncs.append(dict(counter.counts))
            return updated

        def counting_forward(self, *args, layer_calls=layer_calls, **kwargs):
            layer_calls[0] += 1
            # FSDP2 gives each sharded layer a subclass of its class: find the original forward along the MRO.
            forward = next(layer_forwards[cls] for cls in type(self).__mro__ if cls in layer_forwards)
            return forward(self, *args, **kwargs)

        AcceleratorState._reset_state(reset_partial_state=True)
        received.clear()
        loop.build_accelerator, loop.finish_run = build, finish
        ConceptCollator.__call__ = recording_collate if run.get("record_rows") else collate
        Loaders.train_batches = recording_train_batches if run.get("record_rows") else train_batches
        concept_models.c2lip_losses = recording_losses if run.get("record_scale") else c2lip_losses
        loop.training_step = counting_training_step if run.get("count_syncs") else training_step
        for cls, forward in layer_forwards.items():
            cls.forward = counting_forward if run.get("count_layer_calls") else forward
        start = time.perf_counter()
        outcome = training.main(run["argv"])
        result.update(completed_steps=outcome["completed_steps"], log=outcome["history"], rows=list(received))
        result["seconds"] = time.perf_counter() - start  # wall time of the run (for the suite's budget)
        result["scales"] = [
            {name: [str(value.dtype), value.float().reshape(-1).tolist()] for name, value in entry.items()}
            for entry in scales
        ]
        result.update(syncs=syncs, layer_calls=layer_calls[0])
    if spec.get("check_host_group"):
        report["host_group"] = check_host_group(timeout_seconds=1234)
    Path(f"{spec['report']}.rank{os.environ['RANK']}").write_text(json.dumps(report))
    dist.barrier()  # no process tears gloo down while a peer still has traffic in flight (an abort at exit)
    destroy_process_group(PartialState())


if __name__ == "__main__":
    main()
    # A native thread can still be joinable when C++ statics are destroyed (an abort at exit after passing work, about
    # 1 run in 15 in tests/distributed_fsdp2_check.py): leave without running destructors.
    sys.stdout.flush()
    os._exit(0)
