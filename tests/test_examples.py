"""Every example runs offline against tiny checkpoints (the lead's demo checkpoint replaces them later)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from transformers import AutoModel

from modeling_concept_clip.data import load_image_text_dataset
from modeling_concept_clip.hub import plan_upload
from modeling_concept_clip.testing_utils import save_tiny_checkpoint

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    sys.path.insert(0, str(EXAMPLES))  # the scripts import example_utils from their own folder
    try:
        spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look up their module while the script executes
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {kind: save_tiny_checkpoint(root / kind, kind) for kind in ("clip", "siglip")}


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """A red circle in the left half and a blue square in the right half."""
    image = Image.new("RGB", (128, 128), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 36, 56, 84), fill=(220, 30, 30))
    draw.rectangle((72, 36, 120, 84), fill=(30, 60, 220))
    path = tmp_path_factory.mktemp("img") / "scene.png"
    image.save(path)
    return path


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_zero_shot_with_from_pretrained(checkpoints, scene, kind, tmp_path):
    labels = ["a red circle and a blue square", "a blue circle and a red square"]
    output = tmp_path / "scores.json"
    scores = load_example("zero_shot").main(
        ["--model", str(checkpoints[kind]), "--image", str(scene), "--labels", *labels, "--output_json", str(output)]
    )
    assert list(scores) == labels and json.loads(output.read_text()) == scores
    assert all(0 < value < 1 for value in scores.values())
    if kind == "clip":  # softmax over the candidates; SigLIP's sigmoids are independent
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_pipeline(checkpoints, kind, capsys):
    predictions = load_example("pipeline_zero_shot").main(
        ["--model", str(checkpoints[kind]), "--labels", "a red circle", "a blue square", "a green star"]
    )
    assert sorted(p["label"] for p in predictions) == ["a blue square", "a green star", "a red circle"]
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)
    assert "a green star" in capsys.readouterr().out


def test_extract_concepts_and_score_them(checkpoints, scene, tmp_path):
    output = tmp_path / "concepts.jsonl"
    captions = ["a red couch next to a blue lamp", "Stock photo of two small brown dogs in the snow"]
    rows = load_example("extract_concepts").main(["--captions", *captions, "--output", str(output)])
    assert [row["concepts"] for row in rows] == [["a red couch", "a blue lamp"], ["two small brown dogs", "the snow"]]
    assert [json.loads(line) for line in output.read_text().splitlines()] == rows
    scored = load_example("extract_concepts").main(
        [
            "--captions",
            "a red circle next to a blue square",
            "--image",
            str(scene),
            "--model",
            str(checkpoints["clip"]),
        ]
    )
    assert len(scored[0]["scores"]) == 2 and all(-1 <= s <= 1 for s in scored[0]["scores"])


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_concept_attention_heat_map(checkpoints, scene, kind, tmp_path, capsys):
    png, report = tmp_path / "attention.png", tmp_path / "attention.json"
    summary = load_example("visualize_concept_attention").main(
        ["--model", str(checkpoints[kind]), "--image", str(scene), "--phrases", "a red circle", "a blue square",
         "--output", str(png), "--output_json", str(report)]
    )  # fmt: skip
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 300
        # A drawn figure, not a blank canvas.
        assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 50
    payload = json.loads(report.read_text())
    assert payload["grid"] == [4, 4] and [p["phrase"] for p in payload["phrases"]] == ["a red circle", "a blue square"]
    grids = [np.asarray(p["attention"]) for p in payload["phrases"]]
    for grid, item in zip(grids, payload["phrases"]):
        assert grid.shape == (4, 4) and (grid > 0).all()
        assert grid.sum() == pytest.approx(1.0, abs=1e-5)  # a distribution over the 16 patches
        regions = item["regions"]
        assert regions["left"] + regions["right"] == pytest.approx(1.0, abs=1e-5)
        assert regions["left"] == pytest.approx(grid[:, :2].sum(), abs=1e-6)
    # The two phrases name different objects: their attention maps differ.
    assert np.abs(grids[0] - grids[1]).max() > 1e-4
    assert summary[0]["regions"] == payload["phrases"][0]["regions"]
    assert "a blue square" in capsys.readouterr().out


def test_default_model_points_to_make_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no outputs/demo/c2lip here
    with pytest.raises(SystemExit, match="make demo"):
        load_example("zero_shot").main([])


def test_imagefolder_layout_is_read_by_the_training_data_loader(tmp_path):
    example = load_example("train_on_own_data")
    source = example.write_dataset(tmp_path / "folder", "imagefolder", num_images=6)
    dataset, image_root = load_image_text_dataset(data_dir=str(source))
    assert len(dataset) == 6 and image_root is None
    assert {"image", "caption"} <= set(dataset.column_names)
    assert dataset[0]["caption"].startswith("a ") and " to the left of a " in dataset[0]["caption"]


@pytest.mark.slow
def test_train_on_own_jsonl_data_end_to_end(checkpoints, tmp_path):
    example = load_example("train_on_own_data")
    output_dir = example.main(
        ["--model", str(checkpoints["clip"]), "--format", "jsonl", "--data_dir", str(tmp_path / "data"),
         "--output_dir", str(tmp_path / "out"), "--num_images", "8", "--batch_size", "4", "--max_train_steps", "2"]
    )  # fmt: skip
    assert json.loads((output_dir / "training_args.json").read_text())["completed_steps"] == 2
    assert AutoModel.from_pretrained(output_dir).__class__.__name__ == "CLIPModel"
    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: zero-shot-image-classification" in card and "| optimizer steps | 2 of 2 |" in card
    plan = plan_upload(output_dir, "me/own-data")
    assert set(plan.paths) == {"README.md", "config.json", "model.safetensors", "processor_config.json",
                               "tokenizer.json", "tokenizer_config.json", "training_args.json"}  # fmt: skip
    assert "train_log.jsonl" in plan.not_uploaded


def test_paper_recipe_script_runs_the_recipe_with_accelerate():
    command = subprocess.run(
        ["bash", str(EXAMPLES / "paper_recipe_cc3m.sh"), "--dry_run", "--model", "google/siglip-base-patch16-256"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert command[:5] == ["accelerate", "launch", "--config_file", "training/configs/accelerate/ddp_8gpu.yaml",
                           "training/train.py"]  # fmt: skip
    assert command[5:] == ["--config", "training/configs/siglip_b16_cc3m.yaml",
                           "--model_name_or_path", "google/siglip-base-patch16-256"]  # fmt: skip


def test_the_default_scene_asks_only_about_binding():
    utils = load_example("example_utils")
    from modeling_concept_clip.shapes_world.captions import object_phrase

    left, right = utils.SCENE.objects
    assert left.x + left.side <= 24 <= right.x  # one object in each half of the 48-pixel image
    assert utils.SCENE_PHRASES == [object_phrase(left), object_phrase(right)]
    true, *swapped = utils.SCENE_CAPTIONS
    assert true == " and ".join(utils.SCENE_PHRASES)
    for caption in swapped:  # the same words, one attribute exchanged between the objects: a pure binding question
        assert caption != true and sorted(caption.split()) == sorted(true.split())
        changed = [a != b for a, b in zip(caption.split(), true.split())]
        assert sum(changed) == 2 and caption.split()[-1] == "square" and caption.split()[4] == "circle"
    assert utils.draw_scene().size == (48, 48)


def test_zero_shot_defaults_and_the_checkpoints_own_evaluation(checkpoints, tmp_path, capsys):
    from modeling_concept_clip.evaluation import (
        EvaluationRun,
        MetricValue,
        SugarCrepeConfig,
        ZeroShotConfig,
        save_runs,
    )

    folder = tmp_path / "clip"
    folder.mkdir()
    for path in checkpoints["clip"].iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    probes = SugarCrepeConfig(name="probes", data_dir="x", subsets=None).make_result(
        [MetricValue("swap_att", 0.862, "accuracy", "swap")], {"total": 983}
    )
    shape = ZeroShotConfig(name="zeroshot_shape", image_folder="x").make_result(
        [MetricValue("top1", 1 / 6, "accuracy", "top-1")], {"total": 300}
    )
    save_runs([EvaluationRun({"name_or_path": str(folder)}, {}, [probes, shape])], folder / "results.json")
    scores = load_example("zero_shot").main(["--model", str(folder)])
    assert list(scores) == load_example("example_utils").SCENE_CAPTIONS
    out = capsys.readouterr().out
    assert f"Measured on this checkpoint ({folder / 'results.json'}):" in out
    assert " 86.2%  held-out captions vs the same words with an attribute swapped" in out
    assert " 16.7%  zero-shot shape of single objects (chance 16.7%)" in out
