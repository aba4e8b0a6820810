"""What differs between one process, DDP, FSDP2 and DeepSpeed ZeRO in C2LIP training, written once.

- The accelerator: process-group timeout and backend, gradient accumulation counted in batches (not ended by
  the data loader: processes may hold different numbers of batches), no repeated rows to even out the last batch,
  batches copied to the device without blocking the host.
- FSDP2: Accelerate's own FSDP2 preparation (accelerate 1.15) shards the input embeddings again after its
  transformer-layer policy has sharded the module that holds them (CLIP and SigLIP list their embeddings in
  `_no_split_modules`), which fails, and FSDP cannot shard CLIP's 0-dimensional `logit_scale`. So the model is
  sharded here as OpenCLIP's `prepare_fsdp` does: every 0-dim parameter takes shape `[1]`, the
  `_no_split_modules` blocks are sharded (with activation checkpointing when the plugin asks for it), then every
  other module that holds parameters, then the root, which then holds only the logit scale (and SigLIP's bias):
  its group computes in fp32 whatever the mixed precision, as DDP's autocast does. Accelerate's `prepare` then
  keeps the model as it is.
- DeepSpeed cannot take a 0-dim parameter either (it broadcasts parameters viewed as bytes, also under ZeRO-3's
  `zero.Init`, so the model is built whole and partitioned by `deepspeed.initialize`): `[1]` too. Its optimizer
  steps from fp32 master weights of its own, so parameter reads and the clamp go through them. Mixed precision runs
  as `torch.autocast` over fp32 weights (DeepSpeed's `torch_autocast`), as under DDP: the logit scale stays fp32 in
  the forward and a frozen tower keeps its fp32 weights.
- Reading a parameter (`read_parameter`), the logit-scale clamp (`clamp_parameter_`) and the full model on the
  main process for export and evaluation (`gather_plain_model`, 0-dim parameters restored) work under every engine.
- Bookkeeping across processes (`ProcessSums`) runs on the CPU (a gloo group), so that deciding whether a step has
  rows never waits for the GPU.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    FullyShardedDataParallelPlugin,
    GradientAccumulationPlugin,
    InitProcessGroupKwargs,
)
from transformers import PreTrainedModel

from ..distributed import host_group
from .arguments import TrainingArguments

logger = logging.getLogger(__name__)

SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


def build_accelerator(args: TrainingArguments) -> Accelerator:
    """The run's `Accelerator` (engine and mixed precision from `accelerate launch`/its config, the rest from `args`)."""
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
        # Counted in batches: a data loader that ends early on one process must not end the accumulation there.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        # Seeded shuffling (a resumed run sees the same order); no rows repeated to even out the last batches: a
        # process without a batch takes part in the step with an empty one (see `data.lockstep`).
        # Batches come from pinned memory on an accelerator (`data.build_loaders`): copied without waiting for them.
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=args.seed, even_batches=False, non_blocking=True
        ),
        kwargs_handlers=[
            InitProcessGroupKwargs(backend=args.ddp_backend, timeout=timedelta(seconds=args.ddp_timeout))
        ],
    )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # DeepSpeed batches, clips and accumulates itself, from its config: make it follow the command line (the
        # batch size also where no data loader goes through `prepare`: a stream).
        config = accelerator.state.deepspeed_plugin.deepspeed_config
        batch, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
        settings = {
            "train_micro_batch_size_per_gpu": batch,
            "train_batch_size": batch * accumulation * accelerator.num_processes,
            "gradient_clipping": args.max_grad_norm,
            "gradient_accumulation_steps": accumulation,
        }
        for key, value in settings.items():
            if config.get(key, "auto") not in ("auto", value):
                logger.warning(
                    f"The DeepSpeed config's {key} {config[key]} is replaced by the command line's {value}."
                )
            config[key] = value
        if accelerator.mixed_precision == "bf16":
            _deepspeed_autocast(config)
    if accelerator.distributed_type == DistributedType.FSDP:
        check_fsdp_plugin(accelerator.state.fsdp_plugin)
    return accelerator


def _deepspeed_autocast(config: dict) -> None:
    """Run DeepSpeed's bf16 as `torch.autocast` over fp32 weights (its `torch_autocast` section), as DDP does.

    DeepSpeed's own bf16 mode casts every weight to bf16: the forward would see the logit scale (and SigLIP's bias)
    rounded (a scale of 100 becomes 98.9, and updates smaller than its rounding step vanish from the forward), and a
    frozen tower would only exist in bf16. Under autocast the weights stay fp32 and matrix products run in bf16;
    DeepSpeed reduces the gradients of linear and convolution layers in bf16, the others in fp32.
    """
    bf16 = config.get("bf16", {})
    if str(bf16.get("enabled", False)).lower() != "true":
        return
    if config.get("torch_autocast", {}).get("enabled"):
        return
    config["bf16"] = {**bf16, "enabled": False}
    config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    logger.info("DeepSpeed bf16 runs as torch.autocast over fp32 weights (its `torch_autocast` section).")


def check_fsdp_plugin(plugin: FullyShardedDataParallelPlugin) -> None:
    """Refuse the FSDP settings that the loop's own sharding (`_fully_shard`) cannot honour, before the model loads:
    only FSDP2; no `cpu_ram_efficient_loading` (it needs Accelerate's own preparation to send process 0's weights to
    the others' shards); no `ignored_modules` (FSDP would not average their gradients)."""
    if plugin.fsdp_version != 2:
        raise ValueError("C2LIP trains with FSDP version 2: set `fsdp_version: 2` in the Accelerate config.")
    unsupported = {
        "fsdp_cpu_ram_efficient_loading": (
            plugin.cpu_ram_efficient_loading,
            "every process loads the model on its CPU before it is sharded; set `fsdp_cpu_ram_efficient_loading: "
            "false` in the Accelerate config (or unset FSDP_CPU_RAM_EFFICIENT_LOADING)",
        ),
        "fsdp_ignored_modules": (
            plugin.ignored_modules,
            "FSDP would neither shard these modules nor average their gradients across processes; remove "
            "`fsdp_ignored_modules` from the Accelerate config (freeze a tower with --freeze_vision_tower or "
            "--freeze_text_tower instead)",
        ),
    }
    for setting, (value, fix) in unsupported.items():
        if value:
            raise ValueError(f"FSDP2 setting {setting} is not supported by C2LIP training: {fix}.")


@contextlib.contextmanager
def whole_model_init(accelerator: Accelerator) -> Iterator[None]:
    """Build models whole on each process, not partitioned at creation by DeepSpeed ZeRO-3's `zero.Init`.

    `zero.Init` broadcasts each new parameter viewed as bytes, which a 0-dim parameter (CLIP's `logit_scale`) cannot
    be, and a model created on the main process alone (the export) would wait for the others. ZeRO-3 partitions the
    whole model in `deepspeed.initialize` instead (each process holds the full fp32 model in CPU memory until then).
    transformers applies `zero.Init` whenever Accelerate has registered a ZeRO-3 config with it (Accelerate 1.16's
    `zero3_init_context_manager(enable=False)` registers it again), so the registration is lifted here.
    """
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        yield
        return
    from transformers.integrations import set_hf_deepspeed_config, unset_hf_deepspeed_config

    registered = getattr(accelerator.state.deepspeed_plugin, "dschf", None)
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if registered is not None:
            set_hf_deepspeed_config(registered)


def _scalars_as_vectors(model: torch.nn.Module) -> None:
    """Give every 0-dim parameter (CLIP's `logit_scale`) shape `[1]`: FSDP and DeepSpeed need a dimension to shard
    or broadcast. Forward passes broadcast it as before; `gather_plain_model` restores the 0-dim shape."""
    for module in model.modules():
        for name, parameter in list(module.named_parameters(recurse=False)):
            if parameter.ndim == 0:
                vector = torch.nn.Parameter(parameter.detach().reshape(1), requires_grad=parameter.requires_grad)
                setattr(module, name, vector)


def _fully_shard(accelerator: Accelerator, model: PreTrainedModel) -> None:
    """FSDP2 as Accelerate's `fsdp2_prepare_model` does it, with its plugin's wrap policy and settings: the blocks the
    policy picks (by default the model's `_no_split_modules`; checkpointed when `activation_checkpointing` is set, as
    Accelerate's `fsdp2_apply_ac` does), bottom-up; then every other module that holds parameters; then the root.

    The root is left with the 0-dim parameters only (the logit scale, SigLIP's bias), and its group keeps them in
    fp32 in the forward under any mixed precision policy (bf16 would round a scale of 100 to 98.9).
    """
    from accelerate.utils.fsdp_utils import (
        fsdp2_apply_ac,
        fsdp2_prepare_auto_wrap_policy,
        get_module_children_bottom_up,
    )
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import DTensor

    plugin = accelerator.state.fsdp_plugin
    plugin.set_auto_wrap_policy(model)  # resolved on the unsharded classes (Accelerate's `prepare` skips it after)
    if plugin.activation_checkpointing:  # Accelerate's `prepare` skips it too for a model sharded already
        fsdp2_apply_ac(accelerator, model)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    mp_policy = plugin.mixed_precision_policy or MixedPrecisionPolicy()
    kwargs = {"offload_policy": plugin.cpu_offload}
    if accelerator.torch_device_mesh is not None:
        kwargs["mesh"] = accelerator.torch_device_mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)]
    modules = get_module_children_bottom_up(model)[:-1]
    # A checkpointed block is sharded as its wrapper (the FSDP hooks outside the checkpoint), not again inside it.
    checkpointed = {getattr(module, "_checkpoint_wrapped_module", None) for module in modules}
    for module in modules:
        if policy is not None and policy(module) and module not in checkpointed:
            fully_shard(module, reshard_after_forward=plugin.reshard_after_forward, mp_policy=mp_policy, **kwargs)
    for module in modules:  # projections, final norms: what the policy left to the root
        if any(not isinstance(p, DTensor) for p in module.parameters(recurse=False)):
            fully_shard(module, reshard_after_forward=plugin.reshard_after_forward, mp_policy=mp_policy, **kwargs)
    scalars = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    fully_shard(model, mp_policy=scalars, **kwargs)  # the root keeps its parameters gathered after forward


def prepare_for_engine(accelerator: Accelerator, model: PreTrainedModel) -> PreTrainedModel:
    """What the engine needs before `accelerator.prepare` (build the optimizer after this: FSDP2 replaces the
    parameters with sharded ones)."""
    if accelerator.distributed_type in SHARDED:
        _scalars_as_vectors(model)
    if accelerator.distributed_type == DistributedType.FSDP:
        _fully_shard(accelerator, model)
    return model


def prepare(accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *objects):
    """`accelerator.prepare(model, optimizer, *objects)`, keeping the optimizer's parameters under FSDP2.

    Accelerate maps the optimizer's parameters to the sharded ones by `data_ptr()`, which is the same (0) for every
    empty local shard: a parameter smaller than the number of processes (CLIP's scale, SigLIP's scale, bias and
    pooling probe on process 1 of 2) would collapse into one, and saving the optimizer fails. The model is already
    sharded here, so the parameters the optimizer was built with are the right ones.
    """
    groups = [list(group["params"]) for group in optimizer.param_groups]
    model, optimizer, *objects = accelerator.prepare(model, optimizer, *objects)
    if accelerator.distributed_type == DistributedType.FSDP:
        for group, params in zip(optimizer.param_groups, groups, strict=True):
            group["params"] = params
    return model, optimizer, *objects


class ProcessSums:
    """Sums of small integer vectors over all processes, on the CPU: the gloo group of `distributed.host_group`
    (the default group when it is gloo; the losses' size exchanges share it), so that this bookkeeping never waits
    for queued GPU work. One process: no communication."""

    def __init__(self, accelerator: Accelerator, timeout_seconds: int):
        self.num_processes, self.process_index = accelerator.num_processes, accelerator.process_index
        self.active = accelerator.num_processes > 1
        self.group = host_group(timedelta(seconds=timeout_seconds)) if self.active else None

    def __call__(self, values: list[int]) -> list[int]:
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(tensor, group=self.group)
        return tensor.tolist()


def read_parameter(accelerator: Accelerator, model: torch.nn.Module, name: str) -> torch.Tensor:
    """The full fp32 value of a parameter (e.g. `"logit_scale"`), on the CPU of every process.

    Under FSDP2 and DeepSpeed this is a collective: call it on every process. DeepSpeed's value is its optimizer's
    fp32 master weight (the module's copy may be bf16, or stale between steps).
    """
    parameter = accelerator.unwrap_model(model).get_parameter(name)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        from deepspeed.utils import safe_get_full_fp32_param

        value = safe_get_full_fp32_param(parameter)
        if value is not None:
            return value.detach().float().cpu()
    if hasattr(parameter, "full_tensor"):  # a DTensor: every process holds a shard (possibly an empty one)
        return parameter.detach().full_tensor().float().cpu()
    return parameter.detach().float().cpu()


@torch.no_grad()
def clamp_parameter_(accelerator: Accelerator, model: torch.nn.Module, name: str, max_value: float) -> None:
    """Clamp a parameter in place to at most `max_value`, where the optimizer will read it next.

    DDP: the parameter. FSDP2: each process clamps its shard. DeepSpeed: each process clamps its part of the fp32
    master weight (otherwise the next step overwrites the clamp) and of the module's copy used by the next forward
    (ZeRO-1/2: the whole copy, the same on every process; ZeRO-3: its partition, and the whole copy that a small
    parameter keeps gathered). An element-wise clamp of each part is the clamp of the whole: no communication, and no
    value read on the host.
    """
    parameter = accelerator.unwrap_model(model).get_parameter(name)
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        parameter.clamp_(max=max_value)
        return
    if hasattr(parameter, "ds_id"):  # ZeRO-3: a 1-element parameter is split across processes (padding elsewhere)
        from deepspeed.utils import safe_get_local_fp32_param, safe_set_local_fp32_param

        master = safe_get_local_fp32_param(parameter)
        if master is not None:
            safe_set_local_fp32_param(parameter, master.clamp(max=max_value))
        parameter.ds_tensor.clamp_(max=max_value)  # this process's partition, gathered by the next forward
        parameter.data.clamp_(max=max_value)  # a small parameter stays gathered (persistent); empty otherwise
        return
    mapping = getattr(parameter, "_hp_mapping", None)  # ZeRO-1/2: this process's fragment of the master weight
    if mapping is not None:
        mapping.get_hp_fragment().clamp_(max=max_value)
    parameter.clamp_(max=max_value)


def _deepspeed_full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters from DeepSpeed's fp32 master weights, frozen ones from the module (fp32: see
    `_deepspeed_autocast`), each gathered from its partitions under ZeRO-3; buffers from the module."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    state_dict = {}
    for name, parameter in model.named_parameters():
        value = safe_get_full_fp32_param(parameter) if parameter.requires_grad else None  # a collective
        if value is None:
            with deepspeed.zero.GatheredParameters([parameter]):
                value = parameter.data.float().clone()
        state_dict[name] = value.detach().cpu()
    buffers = {name: b.detach().cpu() for name, b in model.state_dict().items() if name not in state_dict}
    return {**state_dict, **buffers}


def gather_plain_model(accelerator: Accelerator, model: torch.nn.Module) -> PreTrainedModel | None:
    """A plain `CLIPModel`/`SiglipModel` with the model's full fp32 weights on the main process, `None` elsewhere.

    One process or DDP: a view that shares the training model's parameters. FSDP2 and DeepSpeed: a copy on the
    CPU, assembled from the shards, with 0-dim parameters restored (a collective: call it on every process).
    """
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.distributed_type not in SHARDED:
        return unwrapped.to_plain() if accelerator.is_main_process else None
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        state_dict = _deepspeed_full_state_dict(unwrapped)
    else:
        state_dict = accelerator.get_state_dict(model)  # full, on the main process's CPU
    if not accelerator.is_main_process:
        return None
    from transformers.initialization import no_init_weights

    with no_init_weights(), whole_model_init(accelerator):  # on this process only: no ZeRO-3 partitioning
        plain = unwrapped._plain_model_class(unwrapped.config)
    shapes = {name: tensor.shape for name, tensor in plain.state_dict().items()}
    plain.load_state_dict({name: tensor.reshape(shapes[name]) for name, tensor in state_dict.items()}, strict=True)
    return plain
