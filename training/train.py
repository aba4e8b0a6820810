#!/usr/bin/env python
"""Fine-tune (or train) a CLIP or SigLIP model with C2LIP's concept losses, with Accelerate.

    accelerate launch training/train.py --config training/configs/siglip_b16_cc3m.yaml
    python -m training.train --model_name_or_path openai/clip-vit-base-patch32 --train_file data/train.jsonl ...

Arguments come from dataclasses (see `--help`), optionally from a YAML/JSON recipe given with `--config`; flags
given on the command line override the recipe. The run ends with a plain `CLIPModel`/`SiglipModel` folder in
`--output_dir` (safetensors weights, processor, `training_args.json`), which `from_pretrained` and
`pipeline("zero-shot-image-classification")` load without this library.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import torch
import transformers
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DistributedType, set_seed
from datasets import IterableDataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoProcessor, HfArgumentParser, get_scheduler

import modeling_concept_clip
from modeling_concept_clip import ConceptCLIPModel, ConceptLossConfig, ConceptSiglipModel
from modeling_concept_clip.collator import SKIP_REASONS, ConceptCollator
from modeling_concept_clip.concepts import ConceptExtractorConfig, add_concepts_column, spacy_model_fingerprint
from modeling_concept_clip.data import load_image_text_dataset, resolve_columns
from modeling_concept_clip.evaluation import EmbeddingConfig, evaluate_model, read_benchmark_file, save_runs
from modeling_concept_clip.hub import push_checkpoint
from modeling_concept_clip.model_cards import write_model_card

logger = get_logger(__name__)

MODEL_CLASSES = {"clip": ConceptCLIPModel, "siglip": ConceptSiglipModel}


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or folder of a plain CLIP/SigLIP checkpoint to fine-tune."}
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Config (hub id, folder or config.json) to train from scratch instead."}
    )
    processor_name: str | None = field(
        default=None, metadata={"help": "Processor (hub id or folder); default: model_name_or_path."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models and data are cached."})
    freeze_vision_tower: bool = field(default=False, metadata={"help": "Do not train the vision tower."})
    freeze_text_tower: bool = field(default=False, metadata={"help": "Do not train the text tower."})
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. 'sdpa' or 'eager'."})


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id, or a folder written by `Dataset.save_to_disk`."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config name of the Hub dataset."})
    train_file: str | None = field(
        default=None,
        metadata={"help": "JSON Lines / CSV / parquet file (image paths relative to it) or WebDataset .tar shards; "
                  "globs allowed."},
    )  # fmt: skip
    train_dir: str | None = field(default=None, metadata={"help": "An imagefolder with metadata.jsonl."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation data, same formats."})
    validation_dir: str | None = field(default=None, metadata={"help": "Validation imagefolder."})
    image_column: str | None = field(default=None, metadata={"help": "Default: image, file_name, jpg or png."})
    caption_column: str | None = field(default=None, metadata={"help": "Default: caption, text or txt."})
    concepts_column: str = field(
        default="concepts", metadata={"help": "Precomputed concepts; extracted once before training if absent."}
    )
    max_concepts_per_image: int = field(default=8, metadata={"help": "Concepts kept per caption (caption order)."})
    spacy_model: str | None = field(default=None, metadata={"help": "spaCy pipeline for concept extraction."})
    concept_extraction_mode: Literal["parser", "pos"] = field(
        default="parser", metadata={"help": "Noun chunks from the parser, or the faster POS-pattern chunker."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the data (needs --max_train_steps)."})
    shuffle_buffer_size: int = field(default=10_000, metadata={"help": "Shuffle buffer when streaming."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for extraction."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data-loader worker processes."})
    max_bad_fraction: float = field(
        default=0.01, metadata={"help": "Stop when more than this fraction of the rows seen so far were skipped."}
    )


@dataclass
class ConceptArguments:
    concept_loss: bool = field(
        default=True, metadata={"help": "False trains with the caption loss only (the control run)."}
    )
    npc_weight: float = field(default=1.0, metadata={"help": "Weight of the concept loss on global embeddings."})
    xac_weight: float = field(default=0.01, metadata={"help": "Weight of the cross-modal attention concept loss."})
    tau: float = field(default=1.0, metadata={"help": "Temperature of the parameter-free attention pooling."})
    concept_positives: Literal["owner", "shared"] = field(
        default="shared", metadata={"help": "'owner' (the paper) or 'shared' (identical concepts are positives)."}
    )
    pooling_memory_mb: float = field(default=512.0, metadata={"help": "Memory budget of one pooling chunk."})


@dataclass
class TrainingArguments:
    output_dir: str = field(default="outputs/c2lip", metadata={"help": "Where the final model goes."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow a non-empty output_dir."})
    per_device_train_batch_size: int = field(default=32)
    per_device_eval_batch_size: int = field(default=64)
    gradient_accumulation_steps: int = field(default=1)
    learning_rate: float = field(default=1e-5)
    weight_decay: float = field(default=0.1, metadata={"help": "On weight matrices only (not norms, biases, scales)."})
    adam_beta1: float = field(default=0.9)
    adam_beta2: float = field(default=0.98)
    adam_epsilon: float = field(default=1e-6)
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (0 disables it)."})
    num_train_epochs: float = field(default=1.0)
    max_train_steps: int | None = field(default=None, metadata={"help": "Overrides num_train_epochs."})
    lr_scheduler_type: str = field(default="cosine")
    num_warmup_steps: int = field(default=0)
    max_logit_scale: float = field(default=100.0, metadata={"help": "Clamp exp(logit_scale) after each step."})
    mixed_precision: Literal["no", "fp16", "bf16"] | None = field(
        default=None, metadata={"help": "Default: the accelerate config's value."}
    )
    seed: int = field(default=42)
    logging_steps: int = field(default=10)
    checkpointing_steps: int | None = field(default=None, metadata={"help": "save_state every N optimizer steps."})
    checkpoints_total_limit: int | None = field(default=2, metadata={"help": "Keep the last K checkpoints."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder."})
    export_steps: int | None = field(default=None, metadata={"help": "Also export a plain model every N steps."})
    eval_steps: int | None = field(
        default=None, metadata={"help": "Every N steps: validation loss and the --eval_benchmarks."}
    )
    eval_benchmarks: str | None = field(
        default=None,
        metadata={"help": "YAML/JSON list of benchmarks (see concept-clip-eval) run every --eval_steps and at the "
                  "end; the final results go to results.json and the model card."},
    )  # fmt: skip
    report_to: str = field(default="tensorboard", metadata={"help": "'tensorboard', 'wandb', 'all' or 'none'."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the final model to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Repository id (default: output_dir name)."})
    hub_private_repo: bool = field(default=False)
    hub_revision: str | None = field(default=None, metadata={"help": "Branch to push to."})


def parse_arguments(argv: list[str] | None = None):
    """Dataclass arguments from the command line, with defaults from an optional `--config` recipe."""
    parser = HfArgumentParser((ModelArguments, DataArguments, ConceptArguments, TrainingArguments))
    parser.add_argument("--config", default=None, help="YAML or JSON recipe; command-line flags override it.")
    argv = sys.argv[1:] if argv is None else argv
    config_path = None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            config_path = argv[i + 1]
        elif arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
    if config_path:
        with open(config_path) as handle:
            recipe = yaml.safe_load(handle) or {}  # YAML is a superset of JSON
        unknown = sorted(set(recipe) - {action.dest for action in parser._actions})
        if unknown:
            raise ValueError(f"Unknown keys in {config_path}: {unknown}")
        parser.set_defaults(**recipe)
    *outputs, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if rest:
        parser.error(f"unrecognized arguments: {rest}")
    model_args, data_args, concept_args, training_args = outputs[:4]  # outputs[4]: the --config namespace
    return model_args, data_args, concept_args, training_args, config_path


def build_model(model_args: ModelArguments, concept_config: ConceptLossConfig):
    source = model_args.model_name_or_path or model_args.config_name
    if source is None:
        raise ValueError("Give --model_name_or_path (fine-tuning) or --config_name (training from scratch).")
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
    processor_source = model_args.processor_name or model_args.model_name_or_path
    if processor_source is None:
        raise ValueError("Training from a config needs --processor_name (image processor and tokenizer).")
    processor = AutoProcessor.from_pretrained(processor_source, cache_dir=model_args.cache_dir)
    return model, processor


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices and embeddings (ndim >= 2) only: not on norms, biases, logit scale/bias."""
    decay, no_decay = [], []
    for _, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def load_split(data_args: DataArguments, model_args: ModelArguments, split: str):
    if split == "train":
        sources = dict(data_file=data_args.train_file, data_dir=data_args.train_dir)
        if data_args.dataset_name:
            sources = dict(dataset_name=data_args.dataset_name, dataset_config_name=data_args.dataset_config_name)
    else:
        sources = dict(data_file=data_args.validation_file, data_dir=data_args.validation_dir)
    return load_image_text_dataset(
        **sources, split=split, streaming=data_args.streaming, cache_dir=model_args.cache_dir
    )


def with_concepts(dataset, data_args: DataArguments, caption_column: str, accelerator: Accelerator):
    """Return the dataset with a concepts column, extracting it once (cached by `datasets`) when absent."""
    columns = dataset.column_names
    if columns is None or data_args.concepts_column in columns:  # a stream of unknown columns: the collator checks
        return dataset, None
    extractor = ConceptExtractorConfig(
        spacy_model=data_args.spacy_model,
        mode=data_args.concept_extraction_mode,
        max_concepts=data_args.max_concepts_per_image,
    )
    if isinstance(dataset, IterableDataset):
        raise ValueError(
            f"The streamed dataset has no {data_args.concepts_column!r} column. Extract the concepts once with "
            "`concept-clip-extract` and train on its output (concepts are not extracted inside the data loader)."
        )
    with accelerator.main_process_first():
        dataset = add_concepts_column(
            dataset,
            extractor,
            caption_column=caption_column,
            output_column=data_args.concepts_column,
            num_proc=data_args.preprocessing_num_workers,
        )
    return dataset, extractor


class SkipCounter:
    """Rows dropped by the collator, per reason, with a few examples for the error message."""

    def __init__(self):
        self.seen = 0
        self.counts = dict.fromkeys(SKIP_REASONS, 0)
        self.examples: list[str] = []

    def add(self, batch: dict[str, Any]) -> None:
        self.seen += batch.pop("num_rows")
        for row in batch.pop("skipped"):
            self.counts[row.reason] += 1
            if len(self.examples) < 5:
                self.examples.append(f"{row.reason}: {row.detail}")

    def totals(self, accelerator: Accelerator) -> tuple[int, dict[str, int]]:
        local = torch.tensor([self.seen, *self.counts.values()], device=accelerator.device)
        total = accelerator.reduce(local, reduction="sum").tolist()
        return total[0], dict(zip(self.counts, total[1:]))

    def check(self, accelerator: Accelerator, max_fraction: float, final: bool = False) -> dict[str, int]:
        seen, counts = self.totals(accelerator)
        skipped = sum(counts.values())
        # Early in a run a few bad rows are a large fraction; judge after 1,000 rows or at the epoch's end.
        if (final or seen >= 1000) and seen and skipped / seen > max_fraction:
            raise RuntimeError(
                f"{skipped} of {seen} rows ({skipped / seen:.1%}) were skipped, more than --max_bad_fraction "
                f"{max_fraction:.1%}: {counts}. Examples on this process: {self.examples}"
            )
        return {"rows_seen": seen, **{f"skipped_{reason}": count for reason, count in counts.items()}}


def checkpoint_folders(output_dir: str) -> list[Path]:
    root = Path(output_dir) / "checkpoints"
    found = [p for p in root.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)] if root.exists() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(accelerator: Accelerator, output_dir: str, state: dict[str, int], keep: int | None) -> None:
    """`save_state` into a temporary folder renamed when complete, so a killed run never leaves half a checkpoint."""
    root = Path(output_dir) / "checkpoints"
    final = root / f"checkpoint-{state['completed_steps']}"
    partial = root / f".partial-{state['completed_steps']}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        (partial / "trainer_state.json").write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        if keep:
            for old in checkpoint_folders(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def export_model(accelerator: Accelerator, model, processor, folder: str, run_info: dict[str, Any]) -> None:
    """Write a plain CLIPModel/SiglipModel folder (safetensors), its processor and the training arguments."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(folder, state_dict=state_dict)
        processor.save_pretrained(folder)
        Path(folder, "training_args.json").write_text(json.dumps(run_info, indent=2, default=str))
        write_model_card(folder, repo_id=run_info["training"]["hub_model_id"])
    accelerator.wait_for_everyone()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    model_args, data_args, concept_args, args, config_path = parse_arguments(argv)

    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
        # Seeded shuffling, so that a resumed run sees the same data order; with a stream, every process reads
        # the stream and keeps its own share of each global batch (no dispatch from process 0).
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=args.seed, dispatch_batches=False if data_args.streaming else None
        ),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    if not (args.overwrite_output_dir or args.resume_from_checkpoint) and (output_dir / "config.json").exists():
        raise FileExistsError(f"{output_dir} already holds a model; pass --overwrite_output_dir or resume.")

    concept_config = ConceptLossConfig(
        npc_weight=concept_args.npc_weight,
        xac_weight=concept_args.xac_weight,
        tau=concept_args.tau,
        concept_positives=concept_args.concept_positives,
        pooling_memory_mb=concept_args.pooling_memory_mb,
    )
    model, processor = build_model(model_args, concept_config)

    train_dataset, image_root = load_split(data_args, model_args, "train")
    image_column, caption_column = resolve_columns(train_dataset, data_args.image_column, data_args.caption_column)
    extractor_config = None
    if concept_args.concept_loss:
        train_dataset, extractor_config = with_concepts(train_dataset, data_args, caption_column, accelerator)
    if data_args.max_train_samples is not None:
        if isinstance(train_dataset, IterableDataset):
            train_dataset = train_dataset.take(data_args.max_train_samples)
        else:
            train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))

    collator = ConceptCollator(
        processor,
        image_column=image_column,
        caption_column=caption_column,
        concepts_column=data_args.concepts_column if concept_args.concept_loss else None,
        image_root=image_root,
        max_concepts_per_image=data_args.max_concepts_per_image,
        pad_to_max_length=model.config.model_type == "siglip",
    )
    if isinstance(train_dataset, IterableDataset):
        if args.max_train_steps is None:
            raise ValueError("--streaming needs --max_train_steps (a stream has no length).")
        train_dataset = train_dataset.shuffle(seed=args.seed, buffer_size=data_args.shuffle_buffer_size)
    elif len(train_dataset) < args.per_device_train_batch_size * accelerator.num_processes:
        raise ValueError(
            f"The training set has {len(train_dataset)} rows, fewer than one global batch "
            f"({args.per_device_train_batch_size} x {accelerator.num_processes} processes)."
        )
    # Contrastive batches drop the incomplete last batch: a small batch is a weaker, noisier contrastive task.
    train_dataloader = DataLoader(
        train_dataset,
        batch_size=args.per_device_train_batch_size,
        shuffle=not isinstance(train_dataset, IterableDataset),
        drop_last=True,
        collate_fn=collator,
        num_workers=data_args.dataloader_num_workers,
    )

    eval_dataloader = None
    if data_args.validation_file or data_args.validation_dir:
        eval_dataset, eval_root = load_split(data_args, model_args, "validation")
        if concept_args.concept_loss:
            eval_dataset, _ = with_concepts(eval_dataset, data_args, caption_column, accelerator)
        eval_collator = ConceptCollator(**{**collator.__dict__, "image_root": eval_root})
        eval_dataloader = DataLoader(
            eval_dataset, batch_size=args.per_device_eval_batch_size, collate_fn=eval_collator
        )

    optimizer = torch.optim.AdamW(
        optimizer_groups(model, args.weight_decay),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )
    model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
    if eval_dataloader is not None:
        eval_dataloader = accelerator.prepare(eval_dataloader)
    if args.max_train_steps is None:
        updates_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
        args.max_train_steps = math.ceil(args.num_train_epochs * updates_per_epoch)
    # The prepared scheduler steps once per process for each optimizer step (as in the accelerate examples).
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    scheduler = accelerator.prepare(scheduler)

    if isinstance(train_dataset, IterableDataset):  # a stream is read again, reshuffled, until max_train_steps
        epochs = itertools.count()
    else:
        epochs = range(math.ceil(args.max_train_steps * args.gradient_accumulation_steps / len(train_dataloader)))
    run_info = {
        "model": asdict(model_args),
        "data": asdict(data_args),
        "concept": asdict(concept_args),
        "training": asdict(args),
        "recipe": config_path,
        "concept_extraction": (
            {**extractor_config.to_dict(), "spacy_pipeline": spacy_model_fingerprint(extractor_config.spacy_model)}
            if extractor_config
            else None
        ),
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
    if args.report_to != "none":
        flat = {
            f"{group}/{k}": v for group in ("model", "data", "concept", "training") for k, v in run_info[group].items()
        }
        accelerator.init_trackers(
            "c2lip", config={k: v for k, v in flat.items() if isinstance(v, (int, float, str, bool))}
        )

    benchmarks = read_benchmark_file(args.eval_benchmarks) if args.eval_benchmarks else []
    completed_steps, start_epoch, resume_batches, train_seconds = 0, 0, 0, 0.0
    if args.resume_from_checkpoint:
        path = args.resume_from_checkpoint
        if path == "latest":
            found = checkpoint_folders(args.output_dir)
            path = str(found[-1]) if found else None
        if path:
            accelerator.print(f"Resuming from {path}")
            accelerator.load_state(path)
            state = json.loads(Path(path, "trainer_state.json").read_text())
            completed_steps, start_epoch, resume_batches = (
                state["completed_steps"], state["epoch"], state["batches_in_epoch"]
            )  # fmt: skip
            train_seconds = state.get("train_seconds", 0.0)
        else:
            accelerator.print("No checkpoint found; starting from scratch.")

    log_path = output_dir / "train_log.jsonl"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if log_path.exists():  # a resumed run rewrites the steps after its checkpoint; a new run starts afresh
            kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= completed_steps]
            log_path.write_text("".join(line + "\n" for line in kept))
    skips = SkipCounter()
    window = {name: [] for name in ("loss", "caption_loss", "npc_loss", "xac_loss")}
    window_samples, window_start = 0, time.perf_counter()
    progress = tqdm(
        total=args.max_train_steps, initial=completed_steps, disable=not accelerator.is_local_main_process,
        desc="training", unit="step",
    )  # fmt: skip
    unwrapped = accelerator.unwrap_model(model)
    history = []

    def write_log(entry: dict[str, Any]) -> None:
        entry = {"step": completed_steps, **entry}
        history.append(entry)
        if accelerator.is_main_process:
            with open(log_path, "a") as handle:
                handle.write(json.dumps(entry) + "\n")

    epoch_start_totals: dict[str, int] = {}

    for epoch in epochs:
        if epoch < start_epoch:
            continue
        if completed_steps >= args.max_train_steps:
            break
        model.train()
        clock = time.perf_counter()
        if hasattr(train_dataloader, "set_epoch"):
            train_dataloader.set_epoch(epoch)
        batches = train_dataloader
        batches_done = 0
        if epoch == start_epoch and resume_batches:
            batches = accelerator.skip_first_batches(train_dataloader, resume_batches)
            batches_done = resume_batches
        for batch in batches:
            batches_done += 1
            skips.add(batch)
            has_rows = torch.tensor(int("pixel_values" in batch), device=accelerator.device)
            if accelerator.num_processes > 1:
                has_rows = accelerator.reduce(has_rows, reduction="min")
            if not has_rows:  # a batch of only bad rows somewhere: every process skips the step together
                continue
            with accelerator.accumulate(model):
                outputs = model(**batch, return_loss=True)
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            for name, value in loss_terms(outputs).items():
                window[name].append(value.detach())
            window_samples += batch["pixel_values"].shape[0]
            if not accelerator.sync_gradients:
                continue
            with torch.no_grad():
                unwrapped.logit_scale.clamp_(max=math.log(args.max_logit_scale))
            completed_steps += 1
            progress.update(1)
            # Training time only (data, forward, backward, update): comparisons at equal wall-clock time use it.
            train_seconds += time.perf_counter() - clock

            if completed_steps % args.logging_steps == 0 or completed_steps == args.max_train_steps:
                logs = {
                    name: accelerator.reduce(torch.stack(v).mean(), "mean").item() for name, v in window.items() if v
                }
                samples = accelerator.reduce(torch.tensor(window_samples, device=accelerator.device), "sum").item()
                elapsed = time.perf_counter() - window_start
                logs.update(
                    lr=scheduler.get_last_lr()[0],
                    logit_scale=unwrapped.logit_scale.exp().item(),
                    samples_per_second=samples / elapsed,
                    epoch=epoch,
                    train_seconds=train_seconds,
                    **skips.check(accelerator, data_args.max_bad_fraction),
                )
                accelerator.log(logs, step=completed_steps)
                progress.set_postfix(loss=f"{logs['loss']:.4f}")
                write_log(logs)
                window = {name: [] for name in window}
                window_samples, window_start = 0, time.perf_counter()

            if args.eval_steps and completed_steps % args.eval_steps == 0:
                eval_logs = {}
                if eval_dataloader is not None:
                    eval_logs.update(evaluate_loss(model, eval_dataloader, accelerator))
                    model.train()
                if benchmarks:
                    run = run_benchmarks(accelerator, model, processor, benchmarks, f"step-{completed_steps}")
                    eval_logs.update(run.flat_metrics(prefix="eval/") if run else {})
                if eval_logs:
                    accelerator.log(eval_logs, step=completed_steps)
                    write_log({**eval_logs, "train_seconds": train_seconds})
            if args.checkpointing_steps and completed_steps % args.checkpointing_steps == 0:
                state = {
                    "completed_steps": completed_steps,
                    "epoch": epoch,
                    "batches_in_epoch": batches_done,
                    "train_seconds": train_seconds,
                }
                save_checkpoint(accelerator, args.output_dir, state, args.checkpoints_total_limit)
            if args.export_steps and completed_steps % args.export_steps == 0:
                export = str(output_dir / f"export-{completed_steps}")
                export_model(accelerator, model, processor, export, {**run_info, "completed_steps": completed_steps})
            clock = time.perf_counter()
            if completed_steps >= args.max_train_steps:
                break
        if batches_done == 0:
            raise ValueError("The training data gave no batch in an epoch (an empty stream or split).")
        totals = skips.check(accelerator, data_args.max_bad_fraction, final=True)
        epoch_counts = {k: v - epoch_start_totals.get(k, 0) for k, v in totals.items()}
        epoch_start_totals = totals
        accelerator.print(f"epoch {epoch}: {epoch_counts}")
        accelerator.log({f"epoch_{k}": v for k, v in epoch_counts.items()}, step=completed_steps)

    progress.close()
    run_info["completed_steps"] = completed_steps
    if benchmarks:
        # Before the export, so that the model card's evaluation table and model-index include the results.
        run = run_benchmarks(accelerator, model, processor, benchmarks, args.hub_model_id or str(output_dir))
        if run is not None:
            accelerator.log(run.flat_metrics(prefix="eval/"), step=completed_steps)
            save_runs([run], output_dir / "results.json")
            accelerator.print(run.to_markdown())
    export_model(accelerator, model, processor, str(output_dir), run_info)
    if args.push_to_hub and accelerator.is_main_process:
        # Uploads an allow-list of files (weights, processor, card, arguments, results), never checkpoints/.
        push_checkpoint(
            str(output_dir),
            repo_id=args.hub_model_id or output_dir.name,
            private=args.hub_private_repo,
            revision=args.hub_revision,
            allow_checkpoint_dirs=True,
        )
    accelerator.end_training()
    return {"completed_steps": completed_steps, "history": history, "output_dir": str(output_dir)}


def run_benchmarks(accelerator: Accelerator, model, processor, benchmarks, name: str):
    """Benchmarks on the main process (the others wait); `None` where the weights are sharded across processes."""
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        logger.warning("--eval_benchmarks needs the full weights on one process: skipped under FSDP/DeepSpeed.")
        return None
    run = None
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        run = evaluate_model(unwrapped, processor, benchmarks, EmbeddingConfig(progress=False), model_name=name)
    accelerator.wait_for_everyone()
    return run


def loss_terms(outputs) -> dict[str, torch.Tensor]:
    """The loss and its components that this step computed (a caption-only step returns the base class output)."""
    terms = {name: getattr(outputs, name, None) for name in ("loss", "caption_loss", "npc_loss", "xac_loss")}
    if terms["caption_loss"] is None:
        terms["caption_loss"] = outputs.loss
    return {name: value for name, value in terms.items() if value is not None}


@torch.no_grad()
def evaluate_loss(model, dataloader, accelerator: Accelerator) -> dict[str, float]:
    """Mean of each loss term over the validation set (batches of only bad rows are left out)."""
    model.eval()
    totals: dict[str, list[torch.Tensor]] = {}
    for batch in dataloader:
        batch.pop("skipped")
        batch.pop("num_rows")
        if "pixel_values" not in batch:
            continue
        outputs = model(**batch, return_loss=True)
        for name, value in loss_terms(outputs).items():
            totals.setdefault(name, []).append(value)
    return {f"eval_{k}": accelerator.reduce(torch.stack(v).mean(), "mean").item() for k, v in totals.items()}


if __name__ == "__main__":
    main()
