"""Winoground on an `examples.jsonl` + `images/` fixture: text, image and group scores by hand."""

import pytest

from modeling_concept_clip.evaluation import EvaluationDataError, WinogroundConfig, run_benchmarks

from .eval_fixtures import LookupEmbedder, write_image, write_jsonl

# image_0 -> x axis, image_1 -> y axis; a caption (x, y, z) with unit norm scores x with image_0, y with image_1.
CAPTIONS = {  # example: (caption_0 (s00, s01), caption_1 (s10, s11))
    0: ((0.9, 0.1), (0.1, 0.9)),  # text, image, group
    1: ((0.5, 0.7), (0.1, 0.8)),  # text only: caption_0 prefers image_1
    2: ((0.6, 0.5), (0.65, 0.7)),  # image only: image_0 prefers caption_1
    3: ((0.6, 0.6), (0.3, 0.9)),  # text only: caption_0 ties between the images
}


def unit(x, y):
    return (x, y, (1 - x * x - y * y) ** 0.5)


def write_winoground(folder):
    rows, texts = [], {}
    for index, (c0, c1) in CAPTIONS.items():
        rows.append({"id": index, "image_0": f"ex_{index}_img_0", "image_1": f"ex_{index}_img_1",
                     "caption_0": f"caption {index} 0", "caption_1": f"caption {index} 1", "tag": "Object",
                     "secondary_tag": "", "num_main_preds": 1, "collapsed_tag": "Object"})  # fmt: skip
        texts[f"caption {index} 0"], texts[f"caption {index} 1"] = unit(*c0), unit(*c1)
        for image in (0, 1):
            write_image(folder / "images" / f"ex_{index}_img_{image}.png")
    write_jsonl(folder / "examples.jsonl", rows)
    return texts


def image_vector(ref):
    return (1, 0, 0) if ref.path.stem.endswith("img_0") else (0, 1, 0)


def test_winoground_scores(tmp_path):
    texts = write_winoground(tmp_path)
    (result,) = run_benchmarks([WinogroundConfig(data_dir=str(tmp_path))], LookupEmbedder(image_vector, texts))
    assert {m.key: m.value for m in result.metrics} == pytest.approx({"text": 0.75, "image": 0.5, "group": 0.25})
    assert result.num_examples == {"total": 4}
    assert "examples.jsonl" in result.data_version


def test_winoground_missing_caption_names_file_line_and_id(tmp_path):
    write_winoground(tmp_path)
    lines = (tmp_path / "examples.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"caption_1"', '"caption_x"')
    (tmp_path / "examples.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(EvaluationDataError, match=r"examples\.jsonl, line 3 \(id 2\): field 'caption_1' is missing"):
        run_benchmarks([WinogroundConfig(data_dir=str(tmp_path))], LookupEmbedder({}, {}))


def test_winoground_missing_image_names_it(tmp_path):
    write_winoground(tmp_path)
    (tmp_path / "images" / "ex_1_img_1.png").unlink()
    with pytest.raises(EvaluationDataError, match=r"line 2 \(id 1\): image file not found: .*ex_1_img_1"):
        run_benchmarks([WinogroundConfig(data_dir=str(tmp_path))], LookupEmbedder({}, {}))
