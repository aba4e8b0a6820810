"""Image-text retrieval on Karpathy-format and BLIP-format fixture files, with hand-computed recalls."""

import pytest
import torch

from modeling_concept_clip.evaluation import EvaluationDataError, RetrievalConfig, run_benchmarks
from modeling_concept_clip.evaluation.retrieval import read_captioned_images, retrieval_ranks

from .eval_fixtures import LookupEmbedder, write_image, write_json

IMAGES = {"A.jpg": (1, 0, 0), "B.jpg": (0, 1, 0), "C.jpg": (0, 0, 1)}
CAPTIONS = {  # caption -> vector; A has a1, a2; B has b1, b2; C has c1
    "a1": (1, 0, 0),
    "a2": (0, 1, 0.1),  # closest to B
    "b1": (0.9, 0.1, 0),  # closest to A
    "b2": (0, 0, 1),  # C first, then A and B tie at 0
    "c1": (0, 0.5, 1),
}
# Text-to-image ranks (wrong images scoring >= the right one): a1 0, a2 2, b1 1, b2 2 (tie counted), c1 0.
# Image-to-text ranks (wrong captions scoring >= the best right one): A 0, B 2 (a2, c1 beat b1), C 1 (b2 beats c1).
EXPECTED = {
    "i2t_R@1": 1 / 3, "i2t_R@2": 2 / 3, "i2t_R@3": 1.0,
    "t2i_R@1": 2 / 5, "t2i_R@2": 3 / 5, "t2i_R@3": 1.0,  # R@2 would be 4/5 if ties favoured the query
}  # fmt: skip


def karpathy_file(path, with_train_image=True):
    images = [
        {"filepath": "val2014", "filename": "A.jpg", "split": "test", "sentences": [{"raw": "a1"}, {"raw": "a2"}]},
        {"filepath": "val2014", "filename": "B.jpg", "split": "test", "sentences": [{"raw": "b1"}, {"raw": "b2"}]},
        {"filepath": "val2014", "filename": "C.jpg", "split": "test", "sentences": [{"raw": "c1", "tokens": ["c1"]}]},
    ]
    if with_train_image:  # must be left out: only the test split is scored
        images.append({"filepath": "train2014", "filename": "T.jpg", "split": "train", "sentences": [{"raw": "a1"}]})
    return write_json(path, {"images": images, "dataset": "coco"})


def test_ranks_count_ties_against_the_query():
    images = torch.eye(2)
    # Text 2 repeats text 1 word for word but belongs to image 0: every score it gets ties with text 1's.
    texts = torch.tensor([[1.0, 0.0], [0.6, 0.6], [0.6, 0.6]])
    image_ranks, text_ranks = retrieval_ranks(images, texts, torch.tensor([0, 1, 0]), chunk_size=1)
    # Image 0: best own text scores 1.0, nothing wrong reaches it. Image 1: own text 0.6, text 2 (wrong) ties.
    assert image_ranks.tolist() == [0, 1]
    # Texts 1 and 2 score 0.6 with both images: the wrong image ties with the right one.
    assert text_ranks.tolist() == [0, 1, 1]


@pytest.mark.parametrize("layout", ["karpathy", "blip"])
def test_retrieval_recalls_differ_by_direction(tmp_path, layout):
    coco = tmp_path / "coco"
    for name in IMAGES:
        write_image(coco / "val2014" / name)
    if layout == "karpathy":
        annotation = karpathy_file(coco / "dataset_coco.json")
    else:
        annotation = write_json(
            coco / "coco_karpathy_test.json",
            [
                {"image": "val2014/A.jpg", "caption": ["a1", "a2"]},
                {"image": "val2014/B.jpg", "caption": ["b1", "b2"]},
                {"image": "val2014/C.jpg", "caption": ["c1"]},
            ],
        )
    config = RetrievalConfig(annotation_file=str(annotation), image_root=str(coco), recall_at=[1, 2, 3])
    (result,) = run_benchmarks([config], LookupEmbedder(IMAGES, CAPTIONS))
    assert {m.key: m.value for m in result.metrics} == pytest.approx(EXPECTED)
    assert result.num_examples == {"total": 3, "images": 3, "captions": 5}


def test_flickr_karpathy_layout_without_filepath(tmp_path):
    for name in IMAGES:
        write_image(tmp_path / "flickr30k-images" / name)
    data = {"images": [{"filename": n, "split": "test", "sentences": [{"raw": c} for c in caps]}
                       for n, caps in (("A.jpg", ["a1", "a2"]), ("B.jpg", ["b1", "b2"]), ("C.jpg", ["c1"]))]}  # fmt: skip
    annotation = write_json(tmp_path / "dataset_flickr30k.json", data)
    items = read_captioned_images(annotation, tmp_path / "flickr30k-images", "test")
    assert [item.image.path.name for item in items] == ["A.jpg", "B.jpg", "C.jpg"]
    assert [item.captions for item in items] == [["a1", "a2"], ["b1", "b2"], ["c1"]]


def test_unknown_split_lists_the_splits_present(tmp_path):
    annotation = karpathy_file(tmp_path / "dataset_coco.json")
    with pytest.raises(EvaluationDataError, match=r"dataset_coco\.json: no image of split 'val'.*\['test', 'train'\]"):
        read_captioned_images(annotation, tmp_path, "val")


def test_malformed_sentence_names_file_and_image(tmp_path):
    write_image(tmp_path / "A.jpg")
    annotation = write_json(
        tmp_path / "dataset_coco.json",
        {"images": [{"filename": "A.jpg", "split": "test", "sentences": [{"tokens": []}]}]},
    )
    with pytest.raises(
        EvaluationDataError, match=r"dataset_coco\.json, image 'A\.jpg', sentence 0: field 'raw' is missing"
    ):
        read_captioned_images(annotation, tmp_path, "test")


def test_missing_image_names_file_and_record(tmp_path):
    annotation = write_json(tmp_path / "test.json", [{"image": "val2014/nothere.jpg", "caption": ["x"]}])
    with pytest.raises(EvaluationDataError, match=r"test\.json, record 0: image file not found .*nothere\.jpg"):
        read_captioned_images(annotation, None, None)
