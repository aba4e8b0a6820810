"""Command-line arguments of C2LIP training: `HfArgumentParser` dataclasses, an optional YAML/JSON recipe.

The concept-loss settings are [`ConceptLossConfig`]'s own fields (declared once, in `losses.py`), inherited by
`ConceptArguments`, which adds the control run's switch. Every value is checked when the command line is parsed: a
`ValueError` raised by any dataclass's `__post_init__` becomes an argument error (exit code 2 and the message),
before any model or data is loaded.
"""

from __future__ import annotations

import math
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, NamedTuple

import yaml
from transformers import HfArgumentParser
from transformers.trainer_utils import SchedulerType

from ..losses import ConceptLossConfig

REPORT_TO = ("tensorboard", "wandb", "all", "none")
SCHEDULER_TYPES = tuple(scheduler.value for scheduler in SchedulerType)


def _check(settings, names: tuple[str, ...], valid, requirement: str) -> None:
    """Raise a `ValueError` naming the flag when `valid(value)` is false for one of `names` (unset values pass)."""
    for name in names:
        value = getattr(settings, name)
        if value is not None and not valid(value):
            raise ValueError(f"--{name} must be {requirement}, got {value!r}.")


def _finite_at_least(minimum: float):
    return lambda value: math.isfinite(value) and value >= minimum


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
    concepts_dir: str | None = field(
        default=None,
        metadata={"help": "Per-shard concepts written by `concept-clip-extract` over the --train_file WebDataset "
                  "shards, joined to each sample by its __key__."},
    )  # fmt: skip
    max_concepts_per_image: int = field(default=8, metadata={"help": "Concepts kept per caption (caption order)."})
    spacy_model: str | None = field(default=None, metadata={"help": "spaCy pipeline for concept extraction."})
    concept_extraction_mode: Literal["parser", "pos"] = field(
        default="parser", metadata={"help": "Noun chunks from the parser, or the faster POS-pattern chunker."}
    )
    hard_negatives: Literal["none", "swap"] = field(
        default="none",
        metadata={"help": "'swap': the hard-negative baseline (NegCLIP): each caption gets one negative caption, an "
                  "attribute exchanged between two of its noun phrases (from the concepts; a caption with nothing to "
                  "swap gets none, counted), added to the caption loss. Picked with --seed. 'none': off."},
    )  # fmt: skip
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream the data (needs --max_train_steps): each process reads its own part of the "
                  "stream, shuffled in a buffer; a resumed run continues at the exact row where it stopped."},
    )  # fmt: skip
    shuffle_buffer_size: int = field(default=10_000, metadata={"help": "Shuffle buffer when streaming."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for extraction."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data-loader worker processes."})
    max_bad_fraction: float = field(
        default=0.01,
        metadata={"help": "Stop (with a checkpoint to resume from) as soon as more than this fraction of an epoch's "
                  "rows is known to be bad (or, on a stream, of the rows read, after 1,000 rows)."},
    )  # fmt: skip

    def __post_init__(self):
        _check(
            self, ("max_concepts_per_image", "shuffle_buffer_size", "max_train_samples"), _finite_at_least(1), ">= 1"
        )
        _check(self, ("preprocessing_num_workers", "dataloader_num_workers"), _finite_at_least(0), ">= 0")
        _check(self, ("max_bad_fraction",), lambda value: 0 <= value <= 1, "in [0, 1]")


@dataclass
class ConceptArguments(ConceptLossConfig):
    """The concept losses' settings, which are the fields of `ConceptLossConfig` (declared there, with their checks),
    and whether the run uses them at all."""

    concept_loss: bool = field(
        default=True,
        metadata={"help": "False trains with the caption loss only (the control run): no concepts are read."},
    )

    def loss_config(self) -> ConceptLossConfig:
        """The settings as the model takes them."""
        return ConceptLossConfig(**{f.name: getattr(self, f.name) for f in fields(ConceptLossConfig)})


@dataclass
class TrainingArguments:
    output_dir: str = field(
        default="outputs/c2lip",
        metadata={"help": "Where the run writes: the final model, checkpoints/, train_log.jsonl. Must be new or "
                  "empty, unless --overwrite_output_dir or --resume_from_checkpoint."},
    )  # fmt: skip
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Empty --output_dir before a new run (everything in it is deleted). With "
                  "--resume_from_checkpoint latest: resume when the folder has a checkpoint, else empty it."},
    )  # fmt: skip
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training rows per process and step."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Validation rows per process and step."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW's peak learning rate."})
    weight_decay: float = field(default=0.1, metadata={"help": "On weight matrices only (not norms, biases, scales)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW's beta1."})
    adam_beta2: float = field(default=0.98, metadata={"help": "AdamW's beta2."})
    adam_epsilon: float = field(default=1e-6, metadata={"help": "AdamW's epsilon."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (0 disables it)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training data."})
    max_train_steps: int | None = field(default=None, metadata={"help": "Overrides num_train_epochs."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": f"One of {', '.join(SCHEDULER_TYPES)}."})
    num_warmup_steps: int = field(default=0, metadata={"help": "Optimizer steps of linear warm-up."})
    max_logit_scale: float = field(default=100.0, metadata={"help": "Clamp exp(logit_scale) after each step."})
    mixed_precision: Literal["no", "fp16", "bf16"] | None = field(
        default=None, metadata={"help": "Default: the accelerate config's value."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of the data order, the initialisation and dropout."})
    logging_steps: int = field(default=10, metadata={"help": "Log the loss terms every N optimizer steps."})
    checkpointing_steps: int | None = field(default=None, metadata={"help": "save_state every N optimizer steps."})
    checkpoints_total_limit: int | None = field(default=2, metadata={"help": "Keep the last K checkpoints."})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "'latest' (the newest checkpoint of --output_dir; none: a new run) or a checkpoint "
                  "folder. Newer checkpoints and exports of the run it continues are deleted."},
    )  # fmt: skip
    save_on_each_node: bool = field(
        default=False,
        metadata={"help": "Every node has its own disk at --output_dir: the first process of each node writes the "
                  "checkpoints there (default: one file system shared by all nodes, written by process 0)."},
    )  # fmt: skip
    export_steps: int | None = field(default=None, metadata={"help": "Also export a plain model every N steps."})
    eval_steps: int | None = field(
        default=None, metadata={"help": "Every N steps: validation loss and the --eval_benchmarks."}
    )
    eval_benchmarks: str | None = field(
        default=None,
        metadata={"help": "YAML/JSON list of benchmarks (see concept-clip-eval) run every --eval_steps and at the "
                  "end; the final results go to results.json and the model card."},
    )  # fmt: skip
    ddp_timeout: int = field(
        default=1800,
        metadata={"help": "Seconds a process waits for the others in a collective (e.g. while process 0 evaluates "
                  "or exports) before the run fails, as in transformers' TrainingArguments."},
    )  # fmt: skip
    ddp_backend: Literal["nccl", "gloo", "mpi", "ccl", "hccl", "cncl", "mccl", "xccl"] | None = field(
        default=None,
        metadata={"help": "Process-group backend (default: Accelerate's choice; 'gloo' runs DeepSpeed on CPUs)."},
    )
    report_to: str = field(default="tensorboard", metadata={"help": "'tensorboard', 'wandb', 'all' or 'none'."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the final model to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Repository id (default: output_dir name)."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})
    hub_revision: str | None = field(default=None, metadata={"help": "Branch to push to."})

    def __post_init__(self):
        at_least_one = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                        "logging_steps", "ddp_timeout", "max_train_steps", "checkpointing_steps",
                        "checkpoints_total_limit", "export_steps", "eval_steps")  # fmt: skip
        _check(self, at_least_one, _finite_at_least(1), ">= 1")
        non_negative = ("learning_rate", "weight_decay", "max_grad_norm", "num_warmup_steps")
        _check(self, non_negative, _finite_at_least(0), "finite and >= 0")
        _check(self, ("adam_beta1", "adam_beta2"), lambda value: 0 <= value < 1, "in [0, 1)")
        positive = ("adam_epsilon", "num_train_epochs", "max_logit_scale")
        _check(self, positive, lambda value: math.isfinite(value) and value > 0, "finite and > 0")
        _check(self, ("lr_scheduler_type",), SCHEDULER_TYPES.__contains__, f"one of {', '.join(SCHEDULER_TYPES)}")
        _check(self, ("report_to",), REPORT_TO.__contains__, f"one of {', '.join(REPORT_TO)}")
        if self.resume_from_checkpoint not in (None, "latest"):
            if not Path(self.resume_from_checkpoint).is_dir():
                raise ValueError(f"--resume_from_checkpoint {self.resume_from_checkpoint}: no such checkpoint folder.")
            if self.overwrite_output_dir:
                raise ValueError(
                    "--overwrite_output_dir empties the output folder for a new run; --resume_from_checkpoint "
                    f"{self.resume_from_checkpoint} continues a run: give one of them."
                )


class Arguments(NamedTuple):
    """The parsed argument groups; `training_args.json` stores them under the same names."""

    model: ModelArguments
    data: DataArguments
    concept: ConceptArguments
    training: TrainingArguments
    config_path: str | None = None


ARGUMENT_CLASSES = (ModelArguments, DataArguments, ConceptArguments, TrainingArguments)


def _none_or(convert):
    """An argparse `type` for an optional field: 'none' or 'null' (any case) gives `None`."""

    def parse(text: str):
        return None if text.lower() in ("none", "null") else convert(text)

    return parse


def _is_optional(annotation) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation
    )


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    parser.add_argument("--config", default=None, help="YAML or JSON recipe; command-line flags override it.")
    # An optional setting (e.g. --pooling_memory_mb, --max_train_samples) can be set back to None from the command line.
    optional = {
        f.name for cls in ARGUMENT_CLASSES for f in fields(cls) if _is_optional(typing.get_type_hints(cls)[f.name])
    }
    for action in parser._actions:
        if action.dest in optional and action.type is not None and action.nargs is None and not action.choices:
            action.type = _none_or(action.type)
    return parser


def _recipe_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def parse_arguments(argv: list[str] | None = None) -> Arguments:
    """Parse the command line, with defaults from an optional `--config` recipe.

    Invalid values exit with an argument error (code 2) that names the flag; a recipe with unknown keys raises a
    `ValueError` that names the file and the keys.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    config_path = _recipe_path(argv)
    if config_path:
        with open(config_path) as handle:
            recipe = yaml.safe_load(handle) or {}  # YAML is a superset of JSON
        if not isinstance(recipe, dict):
            raise ValueError(
                f"--config {config_path} holds a {type(recipe).__name__}, not a recipe: a recipe maps argument names "
                "to values (`learning_rate: 1e-5`)."
            )
        unknown = sorted(set(recipe) - {action.dest for action in parser._actions})
        if unknown:
            raise ValueError(f"Unknown keys in {config_path}: {unknown}")
        parser.set_defaults(**recipe)
    try:
        *groups, _ = parser.parse_args_into_dataclasses(args=argv)  # the last output: the --config namespace
        arguments = Arguments(*groups, config_path=config_path)
        if arguments.data.streaming and arguments.training.max_train_steps is None:
            raise ValueError("--streaming needs --max_train_steps (a stream has no length).")
    except ValueError as error:  # a dataclass's __post_init__, or HfArgumentParser itself, rejected a value
        parser.error(str(error))
    return arguments
