"""Zero-shot classification: prompt ensembles, top-K with ties, image folders and `datasets` sets."""

import pytest

from modeling_concept_clip.evaluation import EvaluationDataError, ZeroShotConfig, run_benchmarks
from modeling_concept_clip.evaluation.templates import IMAGENET_TEMPLATES, load_templates

from .eval_fixtures import LookupEmbedder, by_color, write_image, write_json

COLORS = {  # image colour -> embedding
    (0, 0, 255): (1, 0, 0),  # blue_square/b0: scores B=1, G=0, R=.71 -> rank 0
    (0, 255, 0): (0, 1, 0),  # green_star/g0: G=1 -> rank 0
    (0, 200, 100): (0.5, 0.5, 0.5**0.5),  # green_star/g1: B=.5 ties G=.5, R=.85 -> rank 2 (ties count against)
    (255, 0, 0): (0.6, 0, 0.8),  # red_circle/r0: R=.99 > B=.6 -> rank 0
    (200, 50, 50): (0.9, 0, 0.19**0.5),  # red_circle/r1: R=.945 > B=.9 -> rank 0; with template 1 only, R=.44
}
FILES = {"blue_square": {"b0.png": (0, 0, 255)}, "green_star": {"g0.png": (0, 255, 0), "g1.png": (0, 200, 100)},
         "red_circle": {"r0.png": (255, 0, 0), "r1.png": (200, 50, 50)}}  # fmt: skip
PROMPTS = {  # two templates per class; red's two prompts disagree, so only the ensemble gets r1 right
    "a photo of a blue square.": (1, 0, 0), "a drawing of the blue square.": (1, 0, 0),
    "a photo of a green star.": (0, 1, 0), "a drawing of the green star.": (0, 1, 0),
    "a photo of a red circle.": (0, 0, 1), "a drawing of the red circle.": (1, 0, 0),
}  # fmt: skip
EXPECTED = {"top1": 4 / 5, "top2": 4 / 5, "top3": 1.0}  # top2 would be 1.0 if ties favoured the image


@pytest.fixture
def image_folder(tmp_path):
    for class_name, files in FILES.items():
        for file_name, color in files.items():
            write_image(tmp_path / "zeroshot" / class_name / file_name, color)
    templates = write_json(tmp_path / "templates.json", ["a photo of a {}.", "a drawing of the {c}."])
    return tmp_path / "zeroshot", templates


def test_zeroshot_image_folder_ensemble_and_ties(image_folder):
    folder, templates = image_folder
    config = ZeroShotConfig(image_folder=str(folder), templates=str(templates), top_k=[1, 2, 3])
    embedder = LookupEmbedder(by_color(COLORS), PROMPTS)
    (result,) = run_benchmarks([config], embedder)
    assert {m.key: m.value for m in result.metrics} == pytest.approx(EXPECTED)
    assert result.num_examples == {"total": 5, "classes": 3}
    assert result.dataset["type"] == "imagefolder"
    assert embedder.num_texts_encoded == 6


def test_zeroshot_class_names_file_maps_folders(image_folder, tmp_path):
    folder, templates = image_folder
    names = write_json(tmp_path / "names.json", {"blue_square": "blue square", "green_star": "green star",
                                                 "red_circle": "red circle"})  # fmt: skip
    config = ZeroShotConfig(
        image_folder=str(folder), templates=str(templates), class_names_file=str(names),
        underscores_to_spaces=False, top_k=[1, 2, 3],
    )  # fmt: skip
    (result,) = run_benchmarks([config], LookupEmbedder(by_color(COLORS), PROMPTS))
    assert {m.key: m.value for m in result.metrics} == pytest.approx(EXPECTED)
    assert "names.json" in result.data_version


def test_zeroshot_datasets_source_matches_image_folder(image_folder, tmp_path):
    import datasets

    folder, templates = image_folder
    class_names = ["blue square", "green star", "red circle"]
    rows = [(str(folder / c / f), label) for label, c in enumerate(FILES) for f in FILES[c]]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=class_names)})
    table = datasets.Dataset.from_dict({"image": [r[0] for r in rows], "label": [r[1] for r in rows]}, features)
    datasets.DatasetDict({"test": table}).save_to_disk(str(tmp_path / "saved"))
    config = ZeroShotConfig(dataset=str(tmp_path / "saved"), split="test", templates=str(templates), top_k=[1, 2, 3])
    (result,) = run_benchmarks([config], LookupEmbedder(by_color(COLORS), PROMPTS))
    assert {m.key: m.value for m in result.metrics} == pytest.approx(EXPECTED)
    assert result.data_version["fingerprint"]


def test_zeroshot_datasets_missing_split_is_named(tmp_path):
    import datasets

    table = datasets.Dataset.from_dict({"label": [0]}, datasets.Features({"label": datasets.ClassLabel(names=["a"])}))
    datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "saved"))
    config = ZeroShotConfig(dataset=str(tmp_path / "saved"), split="validation")
    with pytest.raises(EvaluationDataError, match=r"saved: no split 'validation' \(has \['train'\]\)"):
        run_benchmarks([config], LookupEmbedder({}, {}))


def test_zeroshot_class_names_count_must_match(image_folder, tmp_path):
    folder, _ = image_folder
    names = tmp_path / "names.txt"
    names.write_text("blue square\ngreen star\n", encoding="utf-8")
    config = ZeroShotConfig(image_folder=str(folder), class_names_file=str(names))
    with pytest.raises(EvaluationDataError, match=r"names\.txt: 2 class names for 3 classes"):
        run_benchmarks([config], LookupEmbedder({}, {}))


def test_template_sets():
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    assert load_templates("simple") == ("a photo of a {}.",)
    with pytest.raises(EvaluationDataError, match="neither a template set"):
        load_templates("no-such-set")


def test_zeroshot_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one of `image_folder` and `dataset`"):
        ZeroShotConfig()
