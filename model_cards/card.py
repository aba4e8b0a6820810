"""The model card of a C2LIP checkpoint folder written by `training/train.py`.

[`C2LIPModelCard`] is a `huggingface_hub.ModelCard` whose template is `template.md`: every sentence of the card is
in the template. This module only gathers the data it renders:

- the checkpoint's `config.json` and the parameter count of its safetensors files;
- `training_args.json`, read by [`read_training_record`] alone (the one place that knows its keys);
- `results.json`, read as the typed [`~modeling_concept_clip.evaluation.EvaluationRun`]s that `concept-clip-eval`
  and the training script write; the evaluation table and the `model-index` come from them.

The metadata (`library_name`, `pipeline_tag`, `base_model`, `datasets`, `license`, `tags`, `model-index`) is a
`ModelCardData`, so the card round-trips through `ModelCard.load`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import ChainMap
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData

from modeling_concept_clip.evaluation.results import RESULTS_FILE, EvaluationRun, load_runs, table_rows

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).with_name("template.md")
CARD_FILE = "README.md"
TRAINING_ARGS_FILE = "training_args.json"
PAPER_ARXIV_ID = "2603.25722"
PLAIN_ARCHITECTURES = {"clip": "CLIPModel", "siglip": "SiglipModel"}
# Licenses of base-model families whose Hub cards state one; any other base model gets "other" and a warning.
KNOWN_BASE_LICENSES = (("google/siglip-", "apache-2.0"), ("google/siglip2-", "apache-2.0"))
ARGUMENT_GROUPS = ("model", "data", "concept", "training")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class ModelCardOptions:
    """What the card cannot read from the folder, or where the folder's record should be overridden.

    Also the card flags of `concept-clip-push` (parsed by `HfArgumentParser`).
    """

    base_model: str | None = field(
        default=None,
        metadata={"help": "Hub id of the base model (default: --model_name_or_path of training_args.json, when it "
                  "is a Hub id rather than a local folder)."},
    )  # fmt: skip
    datasets: list[str] | None = field(
        default=None, metadata={"help": "Hub ids of the training data (default: dataset_name of training_args.json)."}
    )
    license: str | None = field(
        default=None, metadata={"help": "License of the weights (default: the base model family's, else 'other')."}
    )
    tags: list[str] = field(default_factory=list, metadata={"help": "Extra tags, added to the card's own."})
    model_name: str | None = field(
        default=None, metadata={"help": "Card title and model-index name (default: the repository or folder name)."}
    )
    results_file: str = field(
        default=RESULTS_FILE, metadata={"help": "Evaluation results JSON in the folder (concept-clip-eval --output)."}
    )
    results_run: str | None = field(
        default=None,
        metadata={"help": "Which run of a results file with several models is this checkpoint: its label, path or "
                  "position (default: the only run, or the run whose path is this folder)."},
    )  # fmt: skip
    language: str | None = field(default="en", metadata={"help": "Language of the training captions."})


@dataclass
class TrainingRecord:
    """How a checkpoint was trained, as its card tells it. Only [`read_training_record`] reads `training_args.json`;
    the card reads these fields.

    A field named like a flag of `training/train.py` holds that flag's value, from whichever argument group records
    it; the fields of `RUN_KEYS` are the run's own entries (what it did rather than what it was asked). A key the
    file lacks, or records as null, keeps the field's default.

    Attributes:
        arguments: the argument groups of the run (`"model"`, `"data"`, `"concept"`, `"training"`), as recorded.
        model_name_or_path: the base model (a Hub id or a local folder), `None` when trained from scratch.
        initial_weights: `"random"` when the run started from no trained weights (a config, or a folder written by
            `concept-clip-init`), `"pretrained"` when from a checkpoint's; `None` in records of earlier versions.
        concept_extraction: the `ConceptExtractorConfig` of the extraction the run did itself, if any.
    """

    arguments: dict[str, dict[str, Any]]
    model_name_or_path: str | None = None
    config_name: str | None = None
    freeze_vision_tower: bool = False
    freeze_text_tower: bool = False
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_file: str | None = None
    train_dir: str | None = None
    max_train_samples: int | None = None
    streaming: bool = False
    concepts_column: str = "concepts"
    max_concepts_per_image: int | None = None
    concept_loss: bool = True
    hard_negatives: str = "none"
    npc_weight: float | None = None
    xac_weight: float | None = None
    tau: float | None = None
    concept_positives: str | None = None
    max_train_steps: int | None = None
    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    learning_rate: float | None = None
    adam_beta1: float | None = None
    adam_beta2: float | None = None
    adam_epsilon: float | None = None
    weight_decay: float | None = None
    lr_scheduler_type: str | None = None
    num_warmup_steps: int = 0
    mixed_precision: str | None = None
    seed: int | None = None
    # RUN_KEYS
    initial_weights: str | None = None
    completed_steps: int | None = None
    num_processes: int = 1
    recipe: str | None = None
    concept_extraction: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def frozen_towers(self) -> list[str]:
        return [tower for tower in ("vision", "text") if getattr(self, f"freeze_{tower}_tower")]

    @property
    def images_per_step(self) -> int:
        return (self.per_device_train_batch_size or 0) * self.num_processes * self.gradient_accumulation_steps


RUN_KEYS = ("initial_weights", "completed_steps", "num_processes", "recipe", "concept_extraction", "versions")


def read_training_record(folder: str | Path) -> TrainingRecord | None:
    """The record of `folder/training_args.json` (written by `training/train.py`), or `None` when there is none."""
    path = Path(folder) / TRAINING_ARGS_FILE
    if not path.is_file():
        return None
    run = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(run, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(run).__name__}.")
    groups = {group: run.get(group) or {} for group in ARGUMENT_GROUPS}
    flags = ChainMap(*groups.values())  # a training flag by its name, whichever group records it
    values = {}
    for item in fields(TrainingRecord)[1:]:
        source = run if item.name in RUN_KEYS else flags
        if source.get(item.name) is not None:
            values[item.name] = source[item.name]
    return TrainingRecord(arguments=groups, **values)


def looks_like_hub_id(value: str | None) -> bool:
    """True for a `namespace/name` string that is not an existing local path."""
    return bool(value) and bool(_HUB_ID.match(value)) and not Path(value).exists()


def base_model_type(base_model: str) -> tuple[str | None, str]:
    """`(model_type, how it is known)` of a Hub model: from its `config.json` (the Hub or the local cache), else from
    its name ("siglip", then "clip"); `(None, ...)` when neither tells."""
    from huggingface_hub import hf_hub_download

    try:
        config = json.loads(Path(hf_hub_download(base_model, "config.json")).read_text(encoding="utf-8"))
        return config.get("model_type"), f"its config.json says model_type {config.get('model_type')!r}"
    except Exception:  # offline, private, gated or not there: the name is all there is
        name = base_model.rsplit("/", 1)[-1].lower()
        family = next((kind for kind in ("siglip", "clip") if kind in name), None)
        return family, f"its name says {family or 'neither'}; its config.json could not be read"


def check_base_model(base_model: str, model_type: str, config_path: Path, recorded: str | None) -> None:
    """Refuse a `base_model` of another model type than the checkpoint's (a SigLIP named for a CLIP run): the card
    and the Hub's model tree would name a model this one was not trained from."""
    found, how = base_model_type(base_model)
    if found is not None and found != model_type:
        trained_from = f" (training_args.json records --model_name_or_path {recorded})" if recorded else ""
        raise ValueError(
            f"--base_model {base_model} is a {found} model ({how}), but {config_path} says model_type "
            f"{model_type!r}: pass the Hub id of the {model_type} checkpoint this model was trained from"
            f"{trained_from}, or leave --base_model out."
        )


def select_run(
    runs: list[EvaluationRun], folder: str | Path, repo_id: str | None = None, results_run: str | None = None
) -> int:
    """Index of the run that describes the checkpoint in `folder` (see `ModelCardOptions.results_run`)."""
    if not runs:
        raise ValueError("The results file holds no run.")
    if results_run is not None:
        for index, run in enumerate(runs):
            if results_run in (str(index), run.model.get("label"), run.model.get("name_or_path")):
                return index
        raise ValueError(f"No run {results_run!r} in the results; runs: {[run.label for run in runs]}.")
    if len(runs) == 1:
        return 0
    folder = Path(folder).resolve()
    matches = []
    for index, run in enumerate(runs):
        name = str(run.model.get("name_or_path") or "")
        if (repo_id and name == repo_id) or (name and Path(name).exists() and Path(name).resolve() == folder):
            matches.append(index)
    if len(matches) != 1:
        raise ValueError(
            f"The results hold {len(runs)} runs ({[run.label for run in runs]}) and {len(matches)} of them match "
            f"{folder}; say which one describes this checkpoint with `results_run` (label, path or index)."
        )
    return matches[0]


def count_parameters(folder: str | Path) -> int | None:
    """Number of weights in the folder's safetensors files, read from their headers (no tensor is loaded)."""
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        files = [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else []
    if not files:
        return None
    total = 0
    for path in files:
        with safe_open(str(path), framework="np") as handle:
            for key in handle.keys():
                total += math.prod(handle.get_slice(key).get_shape())
    return total


def _as_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).strip()


def _arguments_yaml(groups: dict[str, dict[str, Any]]) -> tuple[str, bool]:
    """The training arguments as YAML, and whether it is flat (usable as a `--config` recipe): flat when no two
    groups share an argument name."""
    names = [name for values in groups.values() for name in values]
    if names and len(names) == len(set(names)):
        return _as_yaml({name: value for values in groups.values() for name, value in values.items()}), True
    return _as_yaml(groups), False


class C2LIPModelCard(ModelCard):
    """The model card of a C2LIP (or control) checkpoint: `ModelCard.from_template` renders `template.md`."""

    default_template_path = TEMPLATE_PATH


def build_model_card(
    folder: str | Path, repo_id: str | None = None, options: ModelCardOptions | None = None
) -> C2LIPModelCard:
    """Render the model card of a checkpoint folder (nothing is written).

    Args:
        folder: a plain CLIP/SigLIP checkpoint folder, normally the `--output_dir` of `training/train.py`.
        repo_id: the Hub repository the card is for (used in the usage snippets); default: the local folder path.
        options: metadata the folder does not record, and overrides (see [`ModelCardOptions`]).

    Returns:
        A [`C2LIPModelCard`]; `card.data` holds the metadata, `str(card)` the README text.
    """
    folder = Path(folder)
    options = options or ModelCardOptions()
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a checkpoint folder.")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if model_type not in PLAIN_ARCHITECTURES:
        raise ValueError(f"{config_path}: model_type {model_type!r} is not a CLIP or SigLIP checkpoint.")
    training = read_training_record(folder)
    if training is None:
        logger.warning("%s has no %s: the card cannot say how the model was trained.", folder, TRAINING_ARGS_FILE)

    # A run from no trained weights (a config, or a concept-clip-init folder) has no base model.
    from_random = training is not None and training.initial_weights == "random"
    base_source = training.model_name_or_path if training and not from_random else None
    if options.base_model:
        check_base_model(options.base_model, model_type, config_path, base_source)
    base_model = options.base_model or (base_source if looks_like_hub_id(base_source) else None)
    dataset_on_hub = training is not None and looks_like_hub_id(training.dataset_name)
    datasets = options.datasets
    if datasets is None and dataset_on_hub:
        datasets = [training.dataset_name]
    license_ = options.license
    if license_ is None:
        license_ = next((lic for prefix, lic in KNOWN_BASE_LICENSES if (base_model or "").startswith(prefix)), None)
        if license_ is None:
            logger.warning(
                "No license is known for base model %s: the card says 'other'; pass `license` to set it.",
                base_model or base_source or "(not recorded)",
            )
            license_ = "other"
    model_name = options.model_name or (repo_id.split("/")[-1] if repo_id else folder.resolve().name)

    runs: list[EvaluationRun] = []
    this_run = 0
    if (folder / options.results_file).is_file():
        runs = load_runs(folder / options.results_file)
        this_run = select_run(runs, folder, repo_id, options.results_run)
    eval_results = runs[this_run].eval_results() if runs else []

    tags = ["c2lip", "concept-centric", "compositionality", model_type, "vision", f"arxiv:{PAPER_ARXIV_ID}"]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        license=license_,
        base_model=base_model,
        datasets=datasets or None,
        language=options.language,
        tags=tags + [tag for tag in options.tags if tag not in tags],
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    arguments_yaml, arguments_flat = _arguments_yaml(training.arguments) if training else ("", False)
    extraction = training.concept_extraction if training else None
    return C2LIPModelCard.from_template(
        card_data,
        model_name=model_name,
        model_type=model_type,
        model_class=PLAIN_ARCHITECTURES[model_type],
        model_config=config,
        num_parameters=count_parameters(folder),
        model_ref=repo_id or str(folder),
        base_model=base_model,
        base_source=base_source,
        from_random=from_random,
        init_folder=training.model_name_or_path if from_random else None,
        training=training,
        control=training is not None and not training.concept_loss,
        negclip=training is not None and not training.concept_loss and training.hard_negatives != "none",
        dataset_on_hub=dataset_on_hub,
        arguments_yaml=arguments_yaml,
        arguments_flat=arguments_flat,
        extraction=extraction,
        extraction_yaml=_as_yaml(extraction) if extraction else "",
        runs=runs,
        this_run=this_run,
        table_rows=table_rows(runs),
        results_file=options.results_file,
    )


def write_model_card(folder: str | Path, repo_id: str | None = None, options: ModelCardOptions | None = None) -> Path:
    """Render the card of a checkpoint folder (see [`build_model_card`]) and save it as `folder/README.md`."""
    card = build_model_card(folder, repo_id=repo_id, options=options)
    path = Path(folder) / CARD_FILE
    card.save(path)
    logger.info("Model card written to %s", path)
    return path
