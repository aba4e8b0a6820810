"""SugarCrepe, SugarCrepe-style probes and SugarCrepe++ on fixture files in their public formats."""

import pytest

from modeling_concept_clip.evaluation import (
    EvaluationDataError,
    SugarCrepeConfig,
    SugarCrepePlusPlusConfig,
    run_benchmarks,
)
from modeling_concept_clip.evaluation.sugarcrepe import SUGARCREPE_SUBSETS

from .eval_fixtures import LookupEmbedder, write_image, write_json, write_sugarcrepe_subset

# Image "a.png" embeds to A; each outcome fixes the caption and negative vectors against A.
A = (1.0, 0.0)
OUTCOME_VECTORS = {"win": ((1.0, 0.0), (0.0, 1.0)), "tie": ((0.6, 0.8), (0.6, 0.8)), "lose": ((0.0, 1.0), (1.0, 0.0))}

SUBSET_OUTCOMES = {
    "add_obj": ["win", "tie", "lose", "win"],  # 0.5 (>= would give 0.75, a reversed comparison 0.25)
    "add_att": ["win"],  # 1.0
    "replace_obj": ["win", "win"],  # 1.0
    "replace_att": ["lose"],  # 0.0
    "replace_rel": ["win", "lose", "lose"],  # 1/3
    "swap_obj": ["tie", "win"],  # 0.5
    "swap_att": ["lose", "win", "win", "win"],  # 0.75
}
EXPECTED = {
    "add_obj": 0.5,
    "add_att": 1.0,
    "replace_obj": 1.0,
    "replace_att": 0.0,
    "replace_rel": 1 / 3,
    "swap_obj": 0.5,
    "swap_att": 0.75,
    "add": (0.5 + 1.0) / 2,  # mean of subsets, not of examples (which would be 3/5)
    "replace": (1.0 + 0.0 + 1 / 3) / 3,
    "swap": (0.5 + 0.75) / 2,
}


def write_outcome_files(folder, subsets, image_name="a.png"):
    """One file per subset; returns the caption vectors the embedder must use."""
    texts = {}
    for subset in subsets:
        records = []
        for index, outcome in enumerate(SUBSET_OUTCOMES[subset]):
            caption, negative = f"{subset} {index} caption", f"{subset} {index} negative"
            texts[caption], texts[negative] = OUTCOME_VECTORS[outcome]
            records.append((image_name, caption, negative))
        write_sugarcrepe_subset(folder / f"{subset}.json", records)
    return texts


def test_sugarcrepe_subset_accuracies_strict_ties_and_group_means(tmp_path):
    coco = tmp_path / "coco" / "val2017"
    write_image(coco / "a.png")
    texts = write_outcome_files(tmp_path / "sugarcrepe", SUGARCREPE_SUBSETS)
    embedder = LookupEmbedder({"a.png": A}, texts)
    config = SugarCrepeConfig(data_dir=str(tmp_path / "sugarcrepe"), image_root=str(coco))
    (result,) = run_benchmarks([config], embedder)

    assert {m.key: m.value for m in result.metrics} == pytest.approx(EXPECTED)
    assert [m.key for m in result.metrics][:7] == list(SUGARCREPE_SUBSETS)
    assert result.num_examples["total"] == 17 and result.num_examples["add_obj"] == 4
    assert embedder.num_images_encoded == 1  # one image, shared by 17 records and 7 files
    assert set(result.data_version) == {f"{s}.json" for s in SUGARCREPE_SUBSETS}
    assert result.dataset == {"name": "SugarCrepe", "type": "RAIVNLab/sugar-crepe", "split": "test"}


def test_sugarcrepe_style_probes_read_any_file_set(tmp_path):
    """The demo's probes: a folder of SugarCrepe-format files, images in `images/`, other JSON files ignored."""
    probes = tmp_path / "probes"
    write_image(probes / "images" / "a.png")
    texts = write_outcome_files(probes, ["swap_att", "replace_att", "replace_obj", "add_obj"])
    write_json(probes / "captions.json", {"images": [{"filename": "a.png", "sentences": [{"raw": "x"}]}]})
    config = SugarCrepeConfig(name="probes", data_dir=str(probes), subsets=None)
    (result,) = run_benchmarks([config], LookupEmbedder({"a.png": A}, texts))
    metrics = {m.key: m.value for m in result.metrics}
    assert metrics == pytest.approx(
        {
            "add_obj": 0.5,
            "replace_att": 0.0,
            "replace_obj": 1.0,
            "swap_att": 0.75,
            "add": 0.5,
            "replace": 0.5,
            "swap": 0.75,
        }
    )
    assert result.name == "probes" and result.kind == "sugarcrepe"


def test_sugarcrepe_configured_groups(tmp_path):
    write_image(tmp_path / "a.png")
    texts = write_outcome_files(tmp_path, ["add_obj", "swap_att"])
    config = SugarCrepeConfig(
        data_dir=str(tmp_path), subsets=["add_obj", "swap_att"], groups={"all": ["add_obj", "swap_att"]}
    )
    (result,) = run_benchmarks([config], LookupEmbedder({"a.png": A}, texts))
    assert result.metric("all") == pytest.approx((0.5 + 0.75) / 2)


def test_sugarcrepe_missing_file_names_the_file(tmp_path):
    write_image(tmp_path / "a.png")
    write_outcome_files(tmp_path, ["add_obj"])
    config = SugarCrepeConfig(data_dir=str(tmp_path), subsets=["add_obj", "swap_att"])
    with pytest.raises(EvaluationDataError, match=r"swap_att\.json: file not found"):
        run_benchmarks([config], LookupEmbedder({}, {}))


def test_sugarcrepe_malformed_record_names_file_and_record(tmp_path):
    write_image(tmp_path / "a.png")
    write_json(tmp_path / "add_obj.json", {"0": {"filename": "a.png", "caption": "x", "negative_caption": "y"},
                                          "17": {"filename": "a.png", "caption": "x"}})  # fmt: skip
    config = SugarCrepeConfig(data_dir=str(tmp_path), subsets=["add_obj"])
    with pytest.raises(EvaluationDataError, match=r"add_obj\.json, record '17': field 'negative_caption' is missing"):
        run_benchmarks([config], LookupEmbedder({}, {}))


def test_sugarcrepe_missing_image_names_file_record_and_image(tmp_path):
    write_sugarcrepe_subset(tmp_path / "add_obj.json", [("missing.jpg", "x", "y")])
    config = SugarCrepeConfig(data_dir=str(tmp_path), subsets=["add_obj"], image_root=str(tmp_path / "val2017"))
    with pytest.raises(EvaluationDataError, match=r"add_obj\.json, record '0': image file not found .*missing\.jpg"):
        run_benchmarks([config], LookupEmbedder({}, {}))


def test_sugarcrepe_invalid_json_names_the_file(tmp_path):
    (tmp_path / "add_obj.json").write_text('{"0": {"filename": ', encoding="utf-8")
    config = SugarCrepeConfig(data_dir=str(tmp_path), subsets=["add_obj"])
    with pytest.raises(EvaluationDataError, match=r"add_obj\.json: invalid JSON at line 1"):
        run_benchmarks([config], LookupEmbedder({}, {}))


# --- SugarCrepe++ ------------------------------------------------------------------------------------------------

IMAGE = (1.0, 0.0, 0.0)  # the image of every example


def test_sugarcrepe_pp_image_to_text_and_text_only_scores(tmp_path):
    """Hand-computed cosines (image I = x axis):

    r0: p1=(1,.2,0) p2=(1,-.2,0) n=(0,1,0): ITT yes (1/1.02 > 0); TOT yes (cos p1p2=.92 > .196 and > -.196).
    r1: p1=(1,0,0) p2=(0,1,0) n=(1,1,0): ITT no (p2 scores 0 < .707); TOT no (cos p1p2=0 < .707).
    r2: p1=(0,1,0) p2=(.1,1,0) n=(1,0,0): ITT no (p1 scores 0 < 1); TOT yes (.995 > 0 and > .0995).
    s0: p1=(1,1,0) p2=(1,0,0) n=(1,1,0): ITT no (tie of p1 and n); TOT no (cos p1p2=.707 < cos p1n=1).
    s1: p1=(1,0,0) p2=(.6,.8,0) n=(0,1,0): ITT yes (1 and .6 > 0); TOT no: cos p1p2=.6 beats cos p1n=0 but not
        cos p2n=.8 (a rule needing only one of the two comparisons would count it).
    """
    vectors = {
        "r0": ((1, 0.2, 0), (1, -0.2, 0), (0, 1, 0)),
        "r1": ((1, 0, 0), (0, 1, 0), (1, 1, 0)),
        "r2": ((0, 1, 0), (0.1, 1, 0), (1, 0, 0)),
        "s0": ((1, 1, 0), (1, 0, 0), (1, 1, 0)),
        "s1": ((1, 0, 0), (0.6, 0.8, 0), (0, 1, 0)),
    }
    texts = {}
    for key, (p1, p2, n) in vectors.items():
        texts[f"{key} p1"], texts[f"{key} p2"], texts[f"{key} n"] = p1, p2, n

    def records(keys):
        return [{"id": i, "filename": "000000000001.jpg", "caption": f"{k} p1", "caption2": f"{k} p2",
                 "negative_caption": f"{k} n"} for i, k in enumerate(keys)]  # fmt: skip

    data = tmp_path / "sugarcrepe_pp"
    write_json(data / "replace_rel.json", records(["r0", "r1", "r2"]))
    write_json(data / "swap_att.json", records(["s0", "s1"]))
    write_image(tmp_path / "val2017" / "000000000001.jpg")
    config = SugarCrepePlusPlusConfig(
        data_dir=str(data), image_root=str(tmp_path / "val2017"), subsets=["replace_rel", "swap_att"]
    )
    (result,) = run_benchmarks([config], LookupEmbedder({"000000000001.jpg": IMAGE}, texts))
    assert {m.key: m.value for m in result.metrics} == pytest.approx(
        {
            "replace_rel_itt": 1 / 3,
            "replace_rel_tot": 2 / 3,
            "swap_att_itt": 0.5,
            "swap_att_tot": 0.0,
            "replace_itt": 1 / 3,
            "replace_tot": 2 / 3,
            "swap_itt": 0.5,
            "swap_tot": 0.0,
        }
    )


def test_sugarcrepe_pp_malformed_record_names_file_and_record(tmp_path):
    write_json(tmp_path / "swap_obj.json", [{"id": 5, "filename": "a.jpg", "caption": "x", "negative_caption": "y"}])
    config = SugarCrepePlusPlusConfig(data_dir=str(tmp_path), subsets=["swap_obj"])
    with pytest.raises(EvaluationDataError, match=r"swap_obj\.json, record 5: field 'caption2' is missing"):
        run_benchmarks([config], LookupEmbedder({}, {}))
