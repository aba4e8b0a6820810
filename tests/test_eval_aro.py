"""ARO: VG-Relation and VG-Attribution (crops, macro accuracies, exclusions) and COCO/Flickr order."""

from collections import Counter

import numpy as np
import pytest

from modeling_concept_clip.evaluation import (
    EvaluationDataError,
    OrderConfig,
    VGAttributionConfig,
    VGRelationConfig,
    run_benchmarks,
)
from modeling_concept_clip.evaluation.aro import (
    ORDER_PERTURBATIONS,
    load_tagger,
    order_options,
    pre_caption,
    shuffle_nouns_and_adjectives,
)

from .eval_fixtures import LookupEmbedder, write_image, write_json

OUTCOMES = {"win": ((1, 0), (0, 1)), "tie": ((0.6, 0.8), (0.6, 0.8)), "lose": ((0, 1), (1, 0))}


def vg_records(specs, group_field):
    """`specs`: (group, outcome, box) -> ARO records and the caption vectors (the crop embeds to (1, 0))."""
    records, texts = [], {}
    for index, (group, outcome, (x, y, w, h)) in enumerate(specs):
        true, false = f"true {index}", f"false {index}"
        texts[true], texts[false] = OUTCOMES[outcome]
        record = {"image_path": "2315375.jpg", "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h,
                  "true_caption": true, "false_caption": false}  # fmt: skip
        record[group_field] = group
        records.append(record)
    return records, texts


def test_vg_relation_crops_and_macro_accuracy_without_symmetric_relations(tmp_path):
    specs = [
        ("on", "win", (0, 0, 10, 10)),
        ("on", "tie", (5, 5, 10, 10)),  # strict: a tie is wrong -> "on" = 0.5
        ("wearing", "win", (0, 0, 10, 10)),  # 1.0
        ("next to", "lose", (0, 0, 20, 10)),  # symmetric: out of the macro accuracy
        ("next to", "lose", (0, 0, 20, 10)),
    ]
    records, texts = vg_records(specs, "relation_name")
    write_json(tmp_path / "visual_genome_relation.json", records)
    write_image(tmp_path / "images" / "2315375.jpg", size=(40, 30))
    crops = []

    def crop_vector(ref):
        crops.append(ref.box)
        assert ref.load().size == (ref.box[2] - ref.box[0], ref.box[3] - ref.box[1])
        return (1, 0)

    (result,) = run_benchmarks([VGRelationConfig(data_dir=str(tmp_path))], LookupEmbedder(crop_vector, texts))
    assert result.metric("macro_accuracy") == pytest.approx((0.5 + 1.0) / 2)  # with "next to": 0.5
    assert result.metric("accuracy") == pytest.approx(2 / 5)
    assert result.excluded == {"symmetric_relations": 1, "examples_of_symmetric_relations": 2}
    assert sorted(crops) == [(0.0, 0.0, 10.0, 10.0), (0.0, 0.0, 20.0, 10.0), (5.0, 5.0, 15.0, 15.0)]  # once each


def test_vg_attribution_macro_over_pairs_with_25_examples(tmp_path):
    box = (0, 0, 8, 8)
    specs = [("red_big".split("_"), "win" if i < 20 else "lose", box) for i in range(25)]  # 0.8
    specs += [("blue_small".split("_"), "win", box) for _ in range(25)]  # 1.0
    specs += [("green_tall".split("_"), "lose", box) for _ in range(3)]  # under 25: out of the macro accuracy
    records, texts = vg_records(specs, "attributes")
    write_json(tmp_path / "visual_genome_attribution.json", records)
    write_image(tmp_path / "images" / "2315375.jpg")
    (result,) = run_benchmarks(
        [VGAttributionConfig(data_dir=str(tmp_path))], LookupEmbedder(lambda ref: (1, 0), texts)
    )
    assert result.metric("macro_accuracy") == pytest.approx(0.9)
    assert result.metric("accuracy") == pytest.approx(45 / 53)
    assert result.excluded == {"attribute_pairs_under_25_examples": 1, "examples_of_those_pairs": 3}


def test_vg_malformed_box_names_file_and_record(tmp_path):
    records, _ = vg_records([("on", "win", (0, 0, 10, 10))], "relation_name")
    records[0]["bbox_w"] = "10"
    write_json(tmp_path / "visual_genome_relation.json", records)
    write_image(tmp_path / "images" / "2315375.jpg")
    with pytest.raises(
        EvaluationDataError, match=r"visual_genome_relation\.json, record 0: field 'bbox_w' should be int or float"
    ):
        run_benchmarks([VGRelationConfig(data_dir=str(tmp_path))], LookupEmbedder({}, {}))


# --- Order ---------------------------------------------------------------------------------------------------------

LONG = "A man in a red jacket is riding a brown horse across a wide green field near the old barn."


@pytest.fixture(scope="module")
def nlp():
    return load_tagger()


def test_pre_caption_matches_aro():
    assert pre_caption("A Dog (brown)  jumps!  Over: the fence.") == "a dog brown jumps over the fence"
    assert pre_caption("one two three four", max_words=2) == "one two"


def test_perturbations_keep_words_and_are_seeded(nlp):
    doc = nlp(LONG)
    tokens, tags = [t.text for t in doc], [t.tag_ for t in doc]
    for perturb in ORDER_PERTURBATIONS:
        shuffled = perturb(tokens, tags, np.random.default_rng([1, 0]))
        assert Counter(shuffled.split(" ")) == Counter(tokens), perturb.__name__
        assert shuffled == perturb(tokens, tags, np.random.default_rng([1, 0]))  # same seed, same text
    # Nouns and adjectives move only onto noun and adjective positions.
    shuffled = shuffle_nouns_and_adjectives(tokens, tags, np.random.default_rng([1, 0])).split(" ")
    for token, tag, new in zip(tokens, tags, shuffled):
        if tag not in {"NN", "NNS", "NNP", "NNPS", "JJ", "JJR", "JJS"}:
            assert new == token
    assert order_options([LONG], 1, 30, nlp) != order_options([LONG], 2, 30, nlp)


def test_order_accuracy_lets_the_true_caption_win_ties(tmp_path, nlp):
    """Image A = (1, 0), image B = (0, 1); true captions embed to (1, 0), perturbations to (0, 1).

    A's caption wins. B's long caption loses to its perturbations. B's one-word caption "dogs" has four
    perturbations identical to it: a 5-way tie, which ARO's argmax gives to the true caption.
    Expected 2/3 (a strict rule would give 1/3).
    """
    originals = {pre_caption(c) for c in ("A small cat on a big table.", LONG, "dogs")}
    assert all(len(set(o)) > 1 for o in order_options([LONG], 1, 30, nlp))  # B's long caption has real shuffles
    write_image(tmp_path / "val2014" / "A.jpg")
    write_image(tmp_path / "val2014" / "B.jpg")
    annotation = write_json(
        tmp_path / "coco_karpathy_test.json",
        [
            {"image": "val2014/A.jpg", "caption": ["A small cat on a big table."]},
            {"image": "val2014/B.jpg", "caption": [LONG, "dogs"]},
        ],
    )
    embedder = LookupEmbedder({"A.jpg": (1, 0), "B.jpg": (0, 1)}, lambda t: (1, 0) if t in originals else (0, 1))
    (result,) = run_benchmarks([OrderConfig(annotation_file=str(annotation))], embedder)
    assert result.metric("accuracy") == pytest.approx(2 / 3)
    assert result.num_examples == {"total": 3, "images": 2}
    assert result.data_version["seed"] == "1" and "==" in result.data_version["spacy"]
