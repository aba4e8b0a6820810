"""C2LIP training with Accelerate: setup, `train_one_epoch`, evaluation, checkpoints, export, `finish_run`.

`train(arguments)` is the run, as a numbered sequence of the functions below. Every function runs on every
process: the ones that read parameters, gather weights or save checkpoints are collectives under FSDP2 and
DeepSpeed (see `engines`); only file writes are left to the main process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import huggingface_hub
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, gather_object, send_to_device, set_seed
from huggingface_hub.errors import HFValidationError
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoProcessor, PreTrainedModel, get_scheduler

import modeling_concept_clip

from .. import ConceptCLIPModel, ConceptLossConfig, ConceptSiglipModel
from ..collator import SKIP_REASONS
from ..concepts import ConceptExtractorConfig, spacy_model_fingerprint
from ..evaluation import EmbeddingConfig, evaluate_model, read_benchmark_file, save_runs
from ..hub import push_checkpoint
from ..model_cards import write_model_card
from ..small_models import read_init_record
from .arguments import Arguments, ModelArguments, TrainingArguments
from .data import Loaders, build_loaders, lockstep
from .engines import (
    ProcessSums,
    build_accelerator,
    clamp_parameter_,
    gather_plain_model,
    prepare,
    prepare_for_engine,
    read_parameter,
    whole_model_init,
)
from .output import (
    CHECKPOINTS,
    check_free_space,
    checkpoint_folders,
    prepare_output_dir,
    writes_files,
)
from .state import TrainState

logger = get_logger(__name__)

MODEL_CLASSES = {"clip": ConceptCLIPModel, "siglip": ConceptSiglipModel}
# How the class names of each model type's processors begin (CLIPProcessor, SiglipImageProcessorPil, ...).
PROCESSOR_PREFIXES = {"clip": "CLIP", "siglip": "Siglip"}
LOSS_TERMS = ("loss", "caption_loss", "npc_loss", "xac_loss")
STREAM_JUDGED_AFTER_ROWS = 1000  # a stream has no known size: its bad-row fraction is judged after this many rows


# --- setup ------------------------------------------------------------------------------------------------------


def _check_source(flag: str, name: str | None) -> None:
    """A missing local folder is reported as such (transformers would call it a malformed Hub repo id)."""
    if name is None or Path(name).exists():
        return
    try:
        huggingface_hub.utils.validate_repo_id(name)
    except HFValidationError:
        raise FileNotFoundError(
            f"--{flag} {name!r}: no such file or folder (and not a Hub repo id either). Check the path; relative "
            f"paths are read from the current directory, {Path.cwd()}."
        ) from None


def _named(source: str, *files: str) -> str:
    """`source` itself when it is a file, else the first of `files` in the folder `source`, or where to find them in
    a Hub repo."""
    if Path(source).is_file():
        return source
    found = next((Path(source, name) for name in files if Path(source, name).is_file()), None)
    return str(found) if found else f"{source} ({' or '.join(files)})"


def check_processor(processor: Any, config: Any, model_source: tuple[str, str], source: tuple[str, str]) -> None:
    """Refuse, before training, a processor that does not fit the model it would feed.

    - a processor (or image processor) of the other model type: a SigLIP processor normalises images and pads texts
      as SigLIP does, and its token ids are not the CLIP model's, so training would run and learn the wrong thing;
    - a tokenizer that truncates at more tokens than the text tower has positions (a folder without
      `tokenizer_config.json` loads with no limit at all): a long caption would crash the text tower mid-run, and
      the export would keep the missing limit.

    `model_source` and `source` are `(flag, value)` of the model's config and of the processor.
    """
    model_type, (flag, path) = config.model_type, source
    config_file = f"{_named(model_source[1], 'config.json')}: model_type {model_type!r}"
    for part in (processor, getattr(processor, "image_processor", None)):
        name = type(part).__name__
        other = next(
            (t for t, prefix in PROCESSOR_PREFIXES.items() if t != model_type and name.startswith(prefix)), None
        )
        if other is not None:
            raise ValueError(
                f"{flag} {path} is a {other} processor ({_named(path, 'processor_config.json', 'preprocessor_config.json')}"
                f": {name}), but the model is a {model_type} ({config_file}): its images would be normalised and its "
                f"texts tokenised for another model. Pass the processor of a {model_type} checkpoint with "
                "--processor_name."
            )
    tokenizer = getattr(processor, "tokenizer", None)
    positions = config.text_config.max_position_embeddings
    if tokenizer is None or tokenizer.model_max_length <= positions:
        return
    file = _named(path, "tokenizer_config.json")
    if Path(path).is_dir() and not Path(file).is_file():
        problem = f"{Path(path, 'tokenizer_config.json')} is missing: the tokenizer loads without a length limit"
    else:
        problem = f"{file} sets model_max_length {tokenizer.model_max_length}"
    target = path if Path(path).is_dir() else f"./{path.rsplit('/', 1)[-1]}-processor"
    raise ValueError(
        f"{problem}, more than the model's {positions} text positions ({config_file}): a longer caption would crash "
        "the text tower during training, and the exported tokenizer would not truncate either. Restore the "
        'tokenizer_config.json saved with the tokenizer, or set the limit: python -c "from transformers import '
        f"AutoProcessor; p = AutoProcessor.from_pretrained('{path}'); p.tokenizer.model_max_length = {positions}; "
        f"p.save_pretrained('{target}')\"" + ("" if target == path else f", then pass --processor_name {target}") + "."
    )


def build_model(model_args: ModelArguments, concept_config: ConceptLossConfig) -> tuple[PreTrainedModel, Any]:
    """`(model, processor)`: a concept model from a plain CLIP/SigLIP checkpoint, or from a config (from scratch)."""
    source = model_args.model_name_or_path or model_args.config_name
    if source is None:
        raise ValueError("Give --model_name_or_path (fine-tuning) or --config_name (training from scratch).")
    processor_source = model_args.processor_name or model_args.model_name_or_path
    if processor_source is None:
        raise ValueError("Training from a config needs --processor_name (image processor and tokenizer).")
    for flag in ("model_name_or_path", "config_name", "processor_name"):
        _check_source(flag, getattr(model_args, flag))
    config = AutoConfig.from_pretrained(source, cache_dir=model_args.cache_dir)
    if config.model_type not in MODEL_CLASSES:
        raise ValueError(f"model_type {config.model_type!r} is not supported: use a CLIP or SigLIP checkpoint.")
    model_class = MODEL_CLASSES[config.model_type]
    kwargs = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    if model_args.model_name_or_path:
        model = model_class.from_pretrained(
            model_args.model_name_or_path,
            concept_config=concept_config,
            dtype=torch.float32,
            cache_dir=model_args.cache_dir,
            **kwargs,
        )
    else:
        model = model_class._from_config(config, concept_config=concept_config, dtype=torch.float32, **kwargs)
    if model_args.freeze_vision_tower:
        frozen = [model.vision_model] + ([model.visual_projection] if hasattr(model, "visual_projection") else [])
        for module in frozen:
            module.requires_grad_(False)
    if model_args.freeze_text_tower:
        frozen = [model.text_model] + ([model.text_projection] if hasattr(model, "text_projection") else [])
        for module in frozen:
            module.requires_grad_(False)
    processor = AutoProcessor.from_pretrained(processor_source, cache_dir=model_args.cache_dir)
    model_flag = "--model_name_or_path" if model_args.model_name_or_path else "--config_name"
    processor_flag = "--processor_name" if model_args.processor_name else "--model_name_or_path"
    check_processor(processor, config, (model_flag, source), (processor_flag, processor_source))
    return model, processor


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices and embeddings (ndim >= 2) only: not on norms, biases, logit scale/bias."""
    decay, no_decay = [], []
    for _, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def prepare_training(accelerator: Accelerator, model: PreTrainedModel, loaders: Loaders, args: TrainingArguments):
    """Wrap the model for the engine with its optimizer, scheduler and map-style data loaders; set max_train_steps."""
    model = prepare_for_engine(accelerator, model)
    optimizer = torch.optim.AdamW(
        optimizer_groups(model, args.weight_decay),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )
    if args.max_train_steps is None:
        updates_per_epoch = math.ceil(loaders.batches_per_epoch / args.gradient_accumulation_steps)
        args.max_train_steps = math.ceil(args.num_train_epochs * updates_per_epoch)
    # The prepared scheduler steps once per process for each optimizer step (as in the accelerate examples). It is
    # prepared with the model and optimizer: alone, DeepSpeed's `prepare` would leave it unwrapped (stepping at
    # every batch) and out of the checkpoints.
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    if loaders.streaming:  # this process's part of the stream: not for Accelerate to shard again
        model, optimizer, scheduler = prepare(accelerator, model, optimizer, scheduler)
    else:
        model, optimizer, scheduler, loaders.train = prepare(accelerator, model, optimizer, scheduler, loaders.train)
    if loaders.validation is not None and not isinstance(loaders.validation.dataset, datasets.IterableDataset):
        loaders.validation = accelerator.prepare(loaders.validation)
    return model, optimizer, scheduler


def initial_weights(model_args: ModelArguments) -> str:
    """'random' when the run starts from no trained weights (a config, or a folder with a `random_init.json`, as
    `concept-clip-init` writes), 'pretrained' when it starts from a checkpoint's weights (the model card says which)."""
    if model_args.model_name_or_path is None:
        return "random"
    return "random" if read_init_record(model_args.model_name_or_path) else "pretrained"


def run_record(
    accelerator: Accelerator, arguments: Arguments, extractor: ConceptExtractorConfig | None
) -> dict[str, Any]:
    """What `training_args.json` holds (the model card reads it): the argument groups, versions, processes."""
    args = arguments.training
    return {
        "model": asdict(arguments.model),
        "data": asdict(arguments.data),
        "concept": asdict(arguments.concept),
        "training": asdict(args),
        "recipe": arguments.config_path,
        "concept_extraction": (
            {**extractor.to_dict(), "spacy_pipeline": spacy_model_fingerprint(extractor.spacy_model)}
            if extractor
            else None
        ),
        "initial_weights": initial_weights(arguments.model),
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "global_batch_size": args.per_device_train_batch_size * accelerator.num_processes,
        "versions": {
            "modeling_concept_clip": modeling_concept_clip.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "datasets": datasets.__version__,
        },
    }


ENGINES = {
    DistributedType.NO: "one process",
    DistributedType.MULTI_CPU: "DDP (CPU processes)",
    DistributedType.MULTI_GPU: "DDP",
    DistributedType.FSDP: "FSDP2",
    DistributedType.DEEPSPEED: "DeepSpeed",
}


def single_process_warning(accelerator: Accelerator) -> str | None:
    """Why this run, with one process, was evidently meant to have several (`None` when it was not)."""
    if accelerator.num_processes > 1:
        return None
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        return f"WORLD_SIZE is {world_size}, but this run has one process."
    if "ACCELERATE_DYNAMO_BACKEND" in os.environ and {"MASTER_ADDR", "MASTER_PORT"} <= set(os.environ):
        return (
            "`accelerate launch` was given several processes (it sets MASTER_ADDR and MASTER_PORT only then) but "
            "started this one alone: it starts several with --multi_gpu, on CPUs with ACCELERATE_USE_CPU=1 as well "
            "(see 'Several CPU processes' in docs/training.md)."
        )
    return None


def log_startup(
    accelerator: Accelerator, arguments: Arguments, loaders: Loaders, state: TrainState, trainable: int
) -> None:
    """What the run is about to do, before its first step, as transformers' `Trainer` logs it: processes, engine,
    precision, global batch, steps, data, concepts, output folder."""
    args, data = arguments.training, arguments.data
    processes, accumulation = accelerator.num_processes, args.gradient_accumulation_steps
    engine = ENGINES.get(accelerator.distributed_type, str(accelerator.distributed_type.value))
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        engine += f" ZeRO-{accelerator.state.deepspeed_plugin.zero_stage}"
    if loaders.dataset is not None:
        rows = f"{len(loaders.dataset):,} rows, {loaders.batches_per_epoch:,} global batches per epoch"
    else:
        rows = "a stream (each process reads its own part)"
    if not arguments.concept.concept_loss:
        concepts = "none (caption loss only: the control)"
    else:
        measured = loaders.concepts_per_image
        concepts = f"at most {data.max_concepts_per_image}" + (
            f", {measured:.2f} on average over the first 1,000 rows" if measured is not None else ""
        )
    items = {
        "processes": f"{processes} ({engine}, {accelerator.device.type})",
        "mixed precision": accelerator.mixed_precision,
        "global batch": f"{args.per_device_train_batch_size * processes * accumulation:,} rows per optimizer step "
        f"({args.per_device_train_batch_size} per process x {processes} x {accumulation} accumulation)",
        "optimizer steps": f"{args.max_train_steps:,}"
        + (f", resuming after step {state.completed_steps:,}" if state.completed_steps else ""),
        "training data": rows,
        "concepts per image": concepts,
        "trainable parameters": f"{trainable:,}",
        "output folder": str(Path(args.output_dir).resolve()),
    }
    logger.info("***** C2LIP training *****\n" + "\n".join(f"  {key} = {value}" for key, value in items.items()))
    warning = single_process_warning(accelerator)
    if warning:
        logger.warning(warning)


# --- checkpoints --------------------------------------------------------------------------------------------------


def save_checkpoint(run: Run, state: TrainState) -> Path:
    """`save_state` into a temporary folder renamed when complete, so a killed run never leaves half a checkpoint.

    The process that writes the run's files (`output.writes_files`: process 0, or the first of every node with
    `--save_on_each_node`) creates, renames and prunes the folders; every process writes its part into them.
    """
    accelerator, args = run.accelerator, run.args
    for reason, index in gather_object(run.new_bad_rows):  # every process's bad rows since the last checkpoint
        state.bad_rows.setdefault(reason, []).append(index)
    run.new_bad_rows = []
    root = Path(args.output_dir) / CHECKPOINTS
    final = root / f"checkpoint-{state.completed_steps}"
    partial = root / f".partial-{state.completed_steps}"
    writer = writes_files(accelerator, args)
    if writer:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)  # before any process writes its part (random states, shards) into it
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every process has written its part (random states, shards)
    if writer:
        state.save(partial)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        keep = args.checkpoints_total_limit
        if keep:
            for old in checkpoint_folders(args.output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def describe_sizes(shapes: dict[str, tuple[int, ...]]) -> str:
    """The towers' sizes from the names and shapes of a CLIP/SigLIP state dict: `"text 3 layers x 128, 136 tokens;
    vision 3 layers x 128, 37 positions"` (a `module.` prefix, as DDP writes it, is ignored)."""
    shapes = {name.removeprefix("module."): shape for name, shape in shapes.items()}
    parts = []
    for tower, count in (("text", "tokens"), ("vision", "positions")):
        layers = {m.group(1) for name in shapes if (m := re.match(rf"{tower}_model\.encoder\.layers\.(\d+)\.", name))}
        positions, width = shapes.get(f"{tower}_model.embeddings.position_embedding.weight", (None, None))
        size = shapes.get("text_model.embeddings.token_embedding.weight", (None,))[0] if tower == "text" else positions
        parts.append(f"{tower} {len(layers)} layers x {width}, {size} {count}")
    return "; ".join(parts)


def check_checkpoint_sizes(path: str, model: torch.nn.Module) -> None:
    """Refuse, in one line, a checkpoint whose weights have other shapes than `model` (unwrapped) of this run (otherwise
    `load_state` prints one size-mismatch line per tensor). Reads the tensor shapes of the checkpoint's
    `model.safetensors` (what `save_state` writes outside FSDP and DeepSpeed; their formats are left to
    `load_state`, whose size-mismatch error `resume_state` shortens the same way)."""
    from safetensors import safe_open

    file = Path(path, "model.safetensors")
    if not file.is_file():
        return
    with safe_open(str(file), "pt") as handle:
        saved = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    current = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    differ = sorted(name for name in saved.keys() & current.keys() if saved[name] != current[name])
    missing = sorted(current.keys() - saved.keys())
    if differ or missing:
        example = (
            f"{differ[0]} is {list(saved[differ[0]])} there, {list(current[differ[0]])} here"
            if differ
            else f"{missing[0]} is not there"
        )
        _refuse_checkpoint(path, f"checkpoint: {describe_sizes(saved)}; this run: {describe_sizes(current)} "
                           f"({len(differ) + len(missing)} of {len(current)} tensors differ, e.g. {example})")  # fmt: skip


def _refuse_checkpoint(path: str, sizes: str) -> None:
    raise ValueError(
        f"--resume_from_checkpoint {path} holds a model of other sizes than this run builds ({sizes}). Resume with "
        "the model flags of the run that saved it (its training_args.json in the output folder records them), or "
        "start a new run in another --output_dir."
    )


def resume_state(accelerator: Accelerator, checkpoint: Path | None, model: torch.nn.Module) -> TrainState:
    """A new state, or the state of `checkpoint` (with the model, optimizer, scheduler and sampler state loaded into
    the prepared objects). A checkpoint of another model size is refused in one line."""
    if checkpoint is None:
        return TrainState()
    path = str(checkpoint)
    if not Path(path, "trainer_state.json").is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: not a checkpoint folder (no trainer_state.json).")
    check_checkpoint_sizes(path, accelerator.unwrap_model(model))  # names as saved: no DDP `module.` prefix
    accelerator.print(f"Resuming from {path}")
    try:
        accelerator.load_state(path)
    except RuntimeError as error:  # FSDP and DeepSpeed formats: one line per tensor of another size
        shape = r"torch\.Size\((\[[\d, ]*\])\)"
        mismatches = re.findall(
            rf"size mismatch for (\S+): copying a param with shape {shape} from checkpoint, the shape in current "
            rf"model is {shape}",
            str(error),
        )
        if not mismatches:
            raise
        name, saved, current = mismatches[0]
        _refuse_checkpoint(path, f"{len(mismatches)} tensors differ, e.g. {name} is {saved} there, {current} here")
    return TrainState.load(path)


# --- the run ----------------------------------------------------------------------------------------------------


class TrainingLog:
    """`train_log.jsonl` (one JSON object per line, written by the main process) and the same entries in memory."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, resumed_at: int):
        self.accelerator, self.path, self.entries = accelerator, output_dir / "train_log.jsonl", []
        if accelerator.is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            if self.path.exists():  # a resumed run rewrites the steps after its checkpoint; a new run starts afresh
                lines = self.path.read_text().splitlines()
                kept = [line for line in lines if json.loads(line)["step"] <= resumed_at]
                self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, entry: dict[str, Any]) -> None:
        entry = {"step": step, **entry}
        self.entries.append(entry)
        self.accelerator.log({k: v for k, v in entry.items() if k != "step"}, step=step)
        if self.accelerator.is_main_process:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(entry) + "\n")


@dataclass
class LossWindow:
    """Loss terms and rows since the last log entry (tensors stay on the device until the entry is written)."""

    losses: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    rows: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, outputs, rows: int) -> None:
        for name, value in loss_terms(outputs).items():
            self.losses.setdefault(name, []).append(value.detach())
        self.rows += rows

    def summary(self, accelerator: Accelerator) -> dict[str, float]:
        """Each term's mean over the window's steps and processes (each process's loss is scaled so that the mean
        over processes is the global batch's loss), and the samples per second of all processes."""
        logs = {name: accelerator.reduce(torch.stack(v).mean(), "mean").item() for name, v in self.losses.items()}
        rows = accelerator.reduce(torch.tensor(self.rows, device=accelerator.device), "sum").item()
        return {**logs, "samples_per_second": rows / (time.perf_counter() - self.start)}


@dataclass
class Run:
    """What the training functions share: the prepared objects, the settings and where the run writes."""

    accelerator: Accelerator
    arguments: Arguments
    model: torch.nn.Module
    processor: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loaders: Loaders
    sums: ProcessSums
    record: dict[str, Any]
    log: TrainingLog
    progress: tqdm
    benchmarks: list = field(default_factory=list)
    window: LossWindow = field(default_factory=LossWindow)
    bad_row_examples: list[str] = field(default_factory=list)
    new_bad_rows: list[tuple[str, int]] = field(default_factory=list)  # (reason, index) since the last checkpoint

    @property
    def args(self) -> TrainingArguments:
        return self.arguments.training

    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir)


def loss_terms(outputs) -> dict[str, torch.Tensor]:
    """The loss and its components that this step computed (a caption-only step returns the base class output)."""
    terms = {name: getattr(outputs, name, None) for name in LOSS_TERMS}
    if terms["caption_loss"] is None:
        terms["caption_loss"] = outputs.loss
    return {name: value for name, value in terms.items() if value is not None}


def training_step(run: Run, batch: dict[str, Any]) -> bool:
    """Forward, backward and, every `gradient_accumulation_steps` batches, an update; True after an update."""
    accelerator, model, args = run.accelerator, run.model, run.args
    batch = send_to_device(batch, accelerator.device, non_blocking=True)  # from pinned memory (`build_loaders`)
    with accelerator.accumulate(model):
        outputs = model(**batch, return_loss=True)
        accelerator.backward(outputs.loss)
        # DeepSpeed clips in its step (`gradient_clipping`, set from --max_grad_norm); Accelerate would only read
        # the norm back to the host.
        if (
            accelerator.sync_gradients
            and args.max_grad_norm
            and accelerator.distributed_type != DistributedType.DEEPSPEED
        ):
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad()
    run.window.add(outputs, rows=batch["pixel_values"].shape[0])
    if not accelerator.sync_gradients:
        return False
    clamp_parameter_(accelerator, model, "logit_scale", math.log(args.max_logit_scale))
    return True


def check_bad_rows(run: Run, state: TrainState, final: bool = False) -> None:
    """Stop the run, with a checkpoint to resume from, as soon as too many rows are known to be bad.

    With a known epoch size, the limit is exceeded for sure once the bad rows outnumber `max_bad_fraction` of the
    rows read by the end of the epoch. A stream is judged on the rows read after 1,000 rows; every run at the end of
    each epoch and of the run (`final`).
    """
    limit, seen, bad = run.arguments.data.max_bad_fraction, state.rows_seen, state.rows_skipped
    if not seen or bad <= limit * seen:
        return
    epoch_rows = run.loaders.rows_per_epoch
    if final or (epoch_rows is None and seen >= STREAM_JUDGED_AFTER_ROWS):
        scope = "the rows read"
    elif epoch_rows is not None and bad > limit * (seen + epoch_rows - state.rows_in_epoch):
        scope = f"the {seen + epoch_rows - state.rows_in_epoch} rows read by the end of epoch {state.epoch}"
    else:
        return
    checkpoint = save_checkpoint(run, state)
    resume = f"`--resume_from_checkpoint {checkpoint}`"
    if run.loaders.dataset is not None:  # the resumed run reads the bad rows again (`recount_bad_rows`)
        advice = (
            f"Fix the bad rows in place (same rows, same order: the resumed run reads them again and no longer "
            f"counts those that are good) or raise --max_bad_fraction, then continue: the same command with {resume}. "
            "Removing rows changes the order of the data: then start a new run instead."
        )
    else:  # a stream's rows are read again only as they come
        advice = (
            f"The rows read so far keep their counts when the run continues: raise --max_bad_fraction to continue "
            f"(the same command with {resume}), or fix or remove the bad rows and start a new run."
        )
    raise RuntimeError(
        f"Too many bad rows: {bad} of the {seen} rows read so far were skipped ({state.skipped}), more than "
        f"--max_bad_fraction {limit:.1%} of {scope}. Examples on this process: {run.bad_row_examples}. The run "
        f"stopped at step {state.completed_steps} and saved {checkpoint}. {advice}"
    )


def recount_bad_rows(loaders: Loaders, state: TrainState) -> None:
    """Read the rows a resumed run had counted as bad again: those that are good now (fixed in place since the
    checkpoint) no longer count. Every process does the same, so the counts stay equal everywhere."""
    dataset = loaders.dataset
    if dataset is None or not state.bad_rows:
        return
    if state.data_rows != len(dataset):
        logger.warning(
            f"The training data has {len(dataset)} rows, the checkpoint's run started with {state.data_rows}: the "
            "epoch in progress continues in another order, and the rows counted as bad are not read again."
        )
        return
    good: dict[int, bool] = {}
    for reason, indices in state.bad_rows.items():
        for index in set(indices):
            good[index] = not loaders.collator([dataset[index]])["skipped"]
        now_good = [index for index in indices if good[index]]
        state.skipped[reason] -= len(now_good)
        state.bad_rows[reason] = [index for index in indices if not good[index]]
    fixed = sum(good.values())
    logger.info(
        f"Read the {len(good)} rows counted as bad again: {fixed} are good now and no longer count "
        f"(skipped rows: {state.skipped})."
    )


def train_one_epoch(run: Run, state: TrainState) -> None:
    """Train on epoch `state.epoch` (its rest, when resuming mid-epoch) or until `max_train_steps`.

    The epoch's last batch with rows ends the gradient accumulation: an epoch of fewer batches than
    `gradient_accumulation_steps`, or its last few, make one more update (each batch's gradient scaled by
    1 / gradient_accumulation_steps, as Accelerate does) instead of being carried into the next epoch.
    """
    accelerator, args = run.accelerator, run.args
    run.model.train()
    first_batch = state.batches_in_epoch
    steps_before = state.completed_steps
    clock = time.perf_counter()
    for step in lockstep(run.loaders.train_batches(state), run.sums, stream_workers=run.loaders.streaming):
        state.batches_in_epoch += 1
        state.count_rows(step.rows, step.skipped, step.stream_workers, step.hard_negatives)
        for row in step.local_skipped[: 5 - len(run.bad_row_examples)]:  # a few, for the error message
            run.bad_row_examples.append(f"{row.reason}: {row.detail}")
        if step.processes_with_rows and step.last:
            end_accumulation_at_next_batch(accelerator)
        run.new_bad_rows += [(row.reason, row.index) for row in step.local_skipped if row.index is not None]
        # No process has rows: every process skips the step. Some have: the others take part with zero rows.
        if step.processes_with_rows and training_step(run, step.batch or run.loaders.empty_batch):
            state.completed_steps += 1
            state.train_seconds += time.perf_counter() - clock
            run.progress.update(1)
            after_step(run, state)
            clock = time.perf_counter()
        if accelerator.sync_gradients:  # no update pending: the state matches the model and optimizer
            check_bad_rows(run, state)
        if state.completed_steps >= args.max_train_steps:
            return
    if first_batch == 0 and state.completed_steps == steps_before:
        raise ValueError(f"Epoch {state.epoch} of the training data gave no batch with a valid row.")
    check_bad_rows(run, state, final=True)
    accelerator.print(f"epoch {state.epoch} done: {state.counts()}")
    state.start_epoch(state.epoch + 1)


def end_accumulation_at_next_batch(accelerator: Accelerator) -> None:
    """Make the next `accelerator.accumulate` step synchronise the gradients and update (under every engine: DDP
    and FSDP2 leave `no_sync`, DeepSpeed reaches its accumulation boundary), however many batches it accumulated.
    Accelerate updates when its batch count `accelerator.step`, increased first, is a multiple of the accumulation
    steps; it saves and restores that count with the checkpoints."""
    accelerator.step += (-accelerator.step - 1) % accelerator.gradient_accumulation_steps


def after_step(run: Run, state: TrainState) -> None:
    """Logging, evaluation, checkpoint and export at their intervals."""
    args, step = run.args, state.completed_steps
    if step % args.logging_steps == 0 or step == args.max_train_steps:
        logs = run.window.summary(run.accelerator)
        logs.update(
            lr=run.scheduler.get_last_lr()[0],
            logit_scale=read_parameter(run.accelerator, run.model, "logit_scale").exp().item(),
            epoch=state.epoch,
            train_seconds=state.train_seconds,
            **state.counts(),
        )
        run.progress.set_postfix(loss=f"{logs['loss']:.4f}")
        run.log.write(step, logs)
        run.window = LossWindow()
    if args.eval_steps and step % args.eval_steps == 0:
        logs = evaluate_loss(run) if run.loaders.validation is not None else {}
        if run.benchmarks:
            evaluation = evaluate_benchmarks(run, gather_plain_model(run.accelerator, run.model), f"step-{step}")
            logs.update(evaluation.flat_metrics(prefix="eval/") if evaluation else {})
        if logs:
            run.log.write(step, {**logs, "train_seconds": state.train_seconds})
        run.model.train()
    if args.checkpointing_steps and step % args.checkpointing_steps == 0:
        save_checkpoint(run, state)
    if args.export_steps and step % args.export_steps == 0:
        plain = gather_plain_model(run.accelerator, run.model)
        export_model(run, plain, run.output_dir / f"export-{step}", state)


@torch.no_grad()
def evaluate_loss(run: Run) -> dict[str, float]:
    """Mean of each loss term over the validation set's global batches, with the rows it skipped (per reason)."""
    accelerator = run.accelerator
    run.model.eval()
    sums: dict[str, torch.Tensor] = {}
    batches, rows, skipped = 0, 0, dict.fromkeys(SKIP_REASONS, 0)
    for step in lockstep(run.loaders.validation, run.sums):
        rows += step.rows
        skipped = {reason: skipped[reason] + step.skipped[reason] for reason in skipped}
        if not step.processes_with_rows:
            continue
        batch = send_to_device(step.batch or run.loaders.empty_batch, accelerator.device, non_blocking=True)
        for name, value in loss_terms(run.model(**batch, return_loss=True)).items():
            sums[name] = sums.get(name, 0.0) + value
        batches += 1
    counts = {"eval_rows_seen": rows, **{f"eval_skipped_{reason}": n for reason, n in skipped.items()}}
    if not batches:
        logger.warning("The validation data gave no batch with a valid row.")
        return counts
    # Each process's loss is scaled so that the mean over processes is the global batch's loss.
    totals = {f"eval_{name}": accelerator.reduce(total, "sum").item() for name, total in sums.items()}
    return {**{name: total / (batches * accelerator.num_processes) for name, total in totals.items()}, **counts}


def evaluate_benchmarks(run: Run, plain, name: str):
    """`--eval_benchmarks` on the main process (the others wait; `--ddp_timeout` bounds the wait), with the plain
    model of `gather_plain_model`; the `EvaluationRun` on the main process, `None` elsewhere."""
    evaluation = None
    if plain is not None:
        config = EmbeddingConfig(progress=False)
        plain = plain.to(run.accelerator.device)
        evaluation = evaluate_model(plain, run.processor, run.benchmarks, config, model_name=name)
    run.accelerator.wait_for_everyone()
    return evaluation


def export_model(run: Run, plain, folder: Path, state: TrainState) -> None:
    """Write a plain CLIPModel/SiglipModel folder (safetensors), its processor, the run's record and model card."""
    if plain is not None:
        plain.save_pretrained(folder)
        run.processor.save_pretrained(folder)
        Path(folder, "training_args.json").write_text(
            json.dumps({**run.record, "completed_steps": state.completed_steps}, indent=2, default=str)
        )
        write_model_card(folder, repo_id=run.args.hub_model_id)
    run.accelerator.wait_for_everyone()


def finish_run(run: Run, state: TrainState) -> None:
    """Final benchmarks (before the export, so that the model card has them), export and upload."""
    args, accelerator = run.args, run.accelerator
    plain = gather_plain_model(accelerator, run.model)
    if run.benchmarks:
        evaluation = evaluate_benchmarks(run, plain, args.hub_model_id or str(run.output_dir))
        if evaluation is not None:
            accelerator.log(evaluation.flat_metrics(prefix="eval/"), step=state.completed_steps)
            save_runs([evaluation], run.output_dir / "results.json")
            accelerator.print(evaluation.to_markdown())
    export_model(run, plain, run.output_dir, state)
    if args.push_to_hub and accelerator.is_main_process:
        # Uploads an allow-list of files (weights, processor, card, arguments, results), never checkpoints/.
        push_checkpoint(
            str(run.output_dir),
            repo_id=args.hub_model_id or run.output_dir.name,
            private=args.hub_private_repo,
            revision=args.hub_revision,
            allow_checkpoint_dirs=True,
        )
    accelerator.end_training()


def train(arguments: Arguments) -> dict[str, Any]:
    """Run C2LIP training; returns the steps done, the log entries and the output folder."""
    args = arguments.training
    # 1. Processes (engine, mixed precision, process group), logging, seed, output folder.
    accelerator = build_accelerator(args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    accelerator.project_configuration.save_on_each_node = args.save_on_each_node
    checkpoint = prepare_output_dir(accelerator, arguments)  # new, emptied or tidied for the resume; writable
    # 2. Model and processor, with the concept losses' settings (whole on each process, even under ZeRO-3).
    with whole_model_init(accelerator):
        model, processor = build_model(arguments.model, arguments.concept.loss_config())
    parameters = [(p.numel(), p.requires_grad) for p in model.parameters()]
    # 3. Data: datasets with concepts, collator, this process's loaders.
    loaders, extractor = build_loaders(accelerator, arguments, processor, model.config.model_type)
    # 4. The engine's model, optimizer, scheduler and data loaders; room for the model and checkpoints.
    model, optimizer, scheduler = prepare_training(accelerator, model, loaders, args)
    check_free_space(accelerator, args, sum(n for n, _ in parameters), sum(n for n, grad in parameters if grad))
    # 5. A new run or the checkpoint it resumes from; the run's record, log and trackers.
    state = resume_state(accelerator, checkpoint, model)
    recount_bad_rows(loaders, state)
    if state.data_rows is None and loaders.dataset is not None:  # a new run (or a checkpoint of an older version)
        state.data_rows = len(loaders.dataset)
    log_startup(accelerator, arguments, loaders, state, sum(n for n, grad in parameters if grad))
    record = run_record(accelerator, arguments, extractor)
    if args.report_to != "none":
        groups = ("model", "data", "concept", "training")
        flat = {f"{group}/{key}": value for group in groups for key, value in record[group].items()}
        accelerator.init_trackers("c2lip", {k: v for k, v in flat.items() if isinstance(v, (int, float, str, bool))})
    progress = tqdm(
        total=args.max_train_steps, initial=state.completed_steps, desc="training", unit="step",
        disable=not accelerator.is_local_main_process,
    )  # fmt: skip
    run = Run(
        accelerator=accelerator,
        arguments=arguments,
        model=model,
        processor=processor,
        optimizer=optimizer,
        scheduler=scheduler,
        loaders=loaders,
        sums=ProcessSums(accelerator, args.ddp_timeout),
        record=record,
        log=TrainingLog(accelerator, output_dir, resumed_at=state.completed_steps),
        progress=progress,
        benchmarks=read_benchmark_file(args.eval_benchmarks) if args.eval_benchmarks else [],
    )
    # 6. Epochs until max_train_steps; the bad rows judged once more on all the rows read.
    with progress:
        while state.completed_steps < args.max_train_steps:
            train_one_epoch(run, state)
        check_bad_rows(run, state, final=True)
    # 7. Final benchmarks, export, upload.
    finish_run(run, state)
    return {"completed_steps": state.completed_steps, "history": run.log.entries, "output_dir": str(output_dir)}
