"""Model cards: metadata that round-trips through `ModelCard.load`, `model-index` from the evaluation results."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image

from modeling_concept_clip.concepts import ConceptExtractorConfig
from modeling_concept_clip.evaluation import (
    EvaluationRun,
    MetricValue,
    SugarCrepeConfig,
    VGAttributionConfig,
    VGRelationConfig,
    ZeroShotConfig,
    load_runs,
    save_runs,
)
from modeling_concept_clip.model_cards import (
    ModelCardOptions,
    build_model_card,
    select_run,
    write_model_card,
)
from modeling_concept_clip.testing_utils import save_tiny_checkpoint
from training.train import ConceptArguments, DataArguments, ModelArguments, TrainingArguments

BASE = "google/siglip-base-patch16-224"


def training_args(output_dir: Path, concept_loss: bool = True, base: str = BASE, **training) -> dict:
    """`training_args.json` as `training/train.py` writes it (from its own argument dataclasses)."""
    data = DataArguments(dataset_name="pixparse/cc3m-wds", max_concepts_per_image=6)
    train = TrainingArguments(output_dir=str(output_dir), learning_rate=1e-5, per_device_train_batch_size=96,
                              max_train_steps=20000, num_warmup_steps=50, mixed_precision="bf16", **training)  # fmt: skip
    return {
        "model": asdict(ModelArguments(model_name_or_path=base)),
        "data": asdict(data),
        "concept": asdict(ConceptArguments(concept_loss=concept_loss)),
        "training": asdict(train),
        "recipe": "training/configs/siglip_b16_cc3m.yaml",
        "concept_extraction": ConceptExtractorConfig(max_concepts=6).to_dict() if concept_loss else None,
        "initial_weights": "pretrained",
        "num_processes": 8,
        "global_batch_size": 768,
        "versions": {"modeling_concept_clip": "0.1.0.dev0", "transformers": "5.24.0"},
        "completed_steps": 19990,
    }


def evaluation_run(name_or_path: str, scale: float = 1.0) -> EvaluationRun:
    """A run as `concept-clip-eval` writes it, with benchmarks whose task/dataset fields come from their configs."""
    sugarcrepe = SugarCrepeConfig(data_dir="sc", image_root="img").make_result(
        [MetricValue("add", 0.942 * scale, "accuracy", "Accuracy (Add, mean of subsets)"),
         MetricValue("swap", 0.731 * scale, "accuracy", "Accuracy (Swap, mean of subsets)")],
        {"total": 7512},
    )  # fmt: skip
    imagenet = ZeroShotConfig(
        name="imagenet", image_folder="val", dataset_name="ImageNet-1k", dataset_type="imagenet-1k", split="validation"
    ).make_result([MetricValue("top1", 0.735 * scale, "accuracy", "Top-1 accuracy")], {"total": 50000})
    # Same task type, dataset type and split: only their names tell them apart.
    relation = VGRelationConfig(name="vg_relation", data_dir="aro").make_result(
        [MetricValue("macro_accuracy", 0.5 * scale, "accuracy", "Macro accuracy over relations")], {"total": 23937}
    )
    attribution = VGAttributionConfig(name="vg_attribution", data_dir="aro").make_result(
        [MetricValue("macro_accuracy", 0.625 * scale, "accuracy", "Macro accuracy over attribute pairs")],
        {"total": 28748},
    )
    return EvaluationRun(
        model={"name_or_path": name_or_path, "class": "SiglipModel", "model_type": "siglip"},
        settings={"device": "cuda", "dtype": "float32"},
        benchmarks=[sugarcrepe, imagenet, relation, attribution],
    )


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "siglip", "siglip")


@pytest.fixture
def trained_folder(tiny_siglip, tmp_path) -> Path:
    folder = tmp_path / "c2lip"
    folder.mkdir()
    for path in tiny_siglip.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "training_args.json").write_text(json.dumps(training_args(folder), indent=2))
    save_runs([evaluation_run(str(folder))], folder / "results.json")
    return folder


def front_matter(text: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "the card has no YAML front matter"
    return yaml.safe_load(match.group(1))


def test_card_metadata_round_trips_and_model_index_parses(trained_folder):
    path = write_model_card(trained_folder, repo_id="org/c2lip-siglip-b16")
    assert path == trained_folder / "README.md"
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "zero-shot-image-classification"
    assert data.base_model == BASE
    assert data.datasets == ["pixparse/cc3m-wds"]
    assert data.license == "apache-2.0"  # the SigLIP family's license
    assert {"c2lip", "siglip", "arxiv:2603.25722"} <= set(data.tags)
    # model-index as written in the file, parsed by huggingface_hub's own parser.
    name, results = model_index_to_eval_results(front_matter(path.read_text())["model-index"])
    assert name == "c2lip-siglip-b16"
    parsed = {(r.dataset_name, r.metric_name): r.metric_value for r in results}
    assert parsed == {
        ("SugarCrepe", "Accuracy (Add, mean of subsets)"): 94.2,
        ("SugarCrepe", "Accuracy (Swap, mean of subsets)"): 73.1,
        ("ImageNet-1k", "Top-1 accuracy"): 73.5,
        ("VG-Relation", "Macro accuracy over relations"): 50.0,
        ("VG-Attribution", "Macro accuracy over attribute pairs"): 62.5,
    }
    by_dataset = {r.dataset_name: r for r in results}
    assert by_dataset["ImageNet-1k"].task_type == "zero-shot-image-classification"
    assert by_dataset["ImageNet-1k"].dataset_split == "validation"
    assert by_dataset["SugarCrepe"].dataset_type == "RAIVNLab/sugar-crepe"
    # Loading and saving again keeps the metadata (the card is valid for the Hub's own round trip).
    assert ModelCard(str(card)).data.to_dict() == data.to_dict()


def test_card_body_has_usage_training_evaluation_limitations_citation(trained_folder):
    text = str(build_model_card(trained_folder, repo_id="org/c2lip-siglip-b16"))
    assert text.count('from_pretrained("org/c2lip-siglip-b16")') == 2
    assert 'pipeline("zero-shot-image-classification", model="org/c2lip-siglip-b16")' in text
    assert "SiglipModel" in text and 'padding="max_length"' in text and "torch.sigmoid" in text
    for snippet in re.findall(r"```python\n(.*?)```", text, re.DOTALL):
        compile(snippet, "card-snippet", "exec")  # the usage snippets are valid Python
    assert "training/configs/siglip_b16_cc3m.yaml" in text  # the recipe
    assert "| images per optimizer step | 768 (96 per device × 8 processes) |" in text
    assert "caption + 1.0 × NPC + 0.01 × XAC" in text
    recipe = yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.DOTALL).group(1))
    assert recipe["learning_rate"] == 1e-5 and recipe["model_name_or_path"] == BASE  # the exact arguments
    assert "| concepts per caption (max) | 6 |" in text and "dependency-parse noun chunks" in text
    assert "| SugarCrepe (test, 7,512 examples) | Accuracy (Swap, mean of subsets) | 73.1 |" in text
    assert "ImageNet zero-shot accuracy of 73.5%" in text  # the limitation the paper reports
    assert "@inproceedings{pham2026c2lip" in text and "transformers 5.24.0" in text


def test_control_run_and_local_base_model(tiny_siglip, tmp_path):
    folder = tmp_path / "control"
    folder.mkdir()
    for path in tiny_siglip.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    args = training_args(folder, concept_loss=False, base=str(tiny_siglip))
    (folder / "training_args.json").write_text(json.dumps(args))
    card = build_model_card(folder, options=ModelCardOptions(license="mit", tags=["demo"]))
    assert card.data.base_model is None  # a local folder is not a Hub id
    assert f"`{tiny_siglip}` (a local folder)" in card.text
    assert "caption-only control" in card.text and "caption loss only" in card.text
    assert "model-index" not in card.data.to_dict() and "No evaluation results" in card.text
    assert card.data.license == "mit" and "demo" in card.data.tags
    assert f'from_pretrained("{folder}")' in card.text  # no repo id: the snippets load the folder


@pytest.mark.parametrize("start", ["pretrained", "random"])
def test_card_says_whether_the_run_started_from_trained_weights(start, tiny_siglip, tmp_path):
    """A run from a `concept-clip-init` folder (random weights) is not "a fine-tune" of it."""
    folder, start_folder = tmp_path / "c2lip", tmp_path / "small-clip"
    shutil.copytree(tiny_siglip, folder)
    shutil.copytree(tiny_siglip, start_folder)
    args = training_args(folder, base=str(start_folder))
    args["initial_weights"] = start
    (folder / "training_args.json").write_text(json.dumps(args))
    text = build_model_card(folder, options=ModelCardOptions(license="mit")).text
    if start == "random":
        assert "This is a model trained with C2LIP from a random initialisation, a `SiglipModel`" in text
        assert f"**Base model:** none: trained from a random initialisation (the folder `{start_folder}`" in text
        assert f"Trained from a random initialisation (the folder `{start_folder}`) on" in text
        assert "a C2LIP fine-tune" not in text and "Fine-tuned from" not in text
    else:
        assert f"This is a C2LIP fine-tune of `{start_folder}`, a `SiglipModel`" in text
        assert f"Fine-tuned from `{start_folder}` (a local folder)" in text


def test_folder_without_training_record(tiny_siglip):
    card = build_model_card(tiny_siglip)
    assert card.data.license == "other" and card.data.base_model is None
    assert "not recorded" in card.text
    assert ModelCard(str(card)).data.to_dict() == card.data.to_dict()


def test_choosing_the_run_of_a_comparison(trained_folder):
    base, ours = evaluation_run(BASE, scale=0.9), evaluation_run(str(trained_folder))
    save_runs([base, ours], trained_folder / "results.json")
    runs = load_runs(trained_folder / "results.json")
    assert select_run(runs, trained_folder) == 1  # matched by path
    assert select_run(runs, trained_folder, results_run="0") == 0
    card = build_model_card(trained_folder, repo_id="org/m")
    _, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert {r.metric_value for r in results} == {94.2, 73.1, 73.5, 50.0, 62.5}  # this model's numbers only
    assert f"| {BASE} | {trained_folder} (this model) |" in card.text  # both columns in the table
    save_runs([base, evaluation_run("elsewhere/model")], trained_folder / "results.json")
    with pytest.raises(ValueError, match="results_run"):
        build_model_card(trained_folder)


def test_unsupported_results_schema_and_folder(trained_folder, tmp_path):
    (trained_folder / "results.json").write_text(json.dumps({"schema_version": 2, "runs": []}))
    with pytest.raises(ValueError, match="schema version 2"):
        build_model_card(trained_folder)
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_model_card(tmp_path)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_usage_snippets_run_on_the_local_folder(kind, tmp_path, monkeypatch):
    folder = save_tiny_checkpoint(tmp_path / kind, kind)
    text = build_model_card(folder).text  # no repo id: the snippets load the folder itself
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (48, 40), (200, 30, 30)).save("photo.jpg")
    snippets = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert len(snippets) == 2
    for snippet in snippets:
        exec(compile(snippet, "card-snippet", "exec"), {})
