"""Winoground (Thrush et al., CVPR 2022): two images, two captions with the same words in another order.

Public format (Hub dataset `facebook/winoground`, `data/`): `examples.jsonl` with one
`{"id": 0, "image_0": "ex_0_img_0", "image_1": "ex_0_img_1", "caption_0": "...", "caption_1": "...", ...}` per
line, and `images/<image_0>.png` (the unzipped `images.zip`). Text, image and group scores as in the paper;
see `metrics/winoground_scores`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data import EvaluationDataError, ImageRef, files_version, find_image, read_jsonl, require_text
from .embedding import Embedder
from .metrics import load_metric
from .results import BenchmarkResult, MetricValue
from .spec import BenchmarkConfig, require_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class WinogroundConfig(BenchmarkConfig):
    """Winoground. `data_dir` holds `examples.jsonl` (or `metadata.jsonl`) and `images/`."""

    kind = "winoground"
    task_type = "image-text-matching"
    task_name = "Visio-linguistic compositional reasoning"

    dataset_name: str = "Winoground"
    dataset_type: str = "facebook/winoground"
    split: str = "test"
    data_dir: str = ""
    examples_file: str = "examples.jsonl"
    image_dir: str = "images"

    def __post_init__(self):
        super().__post_init__()
        require_path(self, "data_dir")


@dataclass
class WinogroundExample:
    images: tuple[ImageRef, ImageRef]
    captions: tuple[str, str]


def _image(stem: str, image_dir: Path, context: str) -> ImageRef:
    """`ex_0_img_0` names `images/ex_0_img_0.png` (extensions other than .png are accepted too)."""
    if Path(stem).suffix:
        return find_image(stem, [image_dir], context)
    for suffix in IMAGE_SUFFIXES:
        if (image_dir / f"{stem}{suffix}").is_file():
            return find_image(f"{stem}{suffix}", [image_dir], context)
    raise EvaluationDataError(f"{context}: image file not found: {image_dir / stem}{{{','.join(IMAGE_SUFFIXES)}}}")


def read_winoground(path: Path, image_dir: Path) -> list[WinogroundExample]:
    examples = []
    for line_number, record in read_jsonl(path):
        record_id = record.get("id", line_number) if isinstance(record, dict) else line_number
        context = f"{path}, line {line_number} (id {record_id!r})"
        captions = (require_text(record, "caption_0", context), require_text(record, "caption_1", context))
        images = tuple(_image(require_text(record, f"image_{i}", context), image_dir, context) for i in (0, 1))
        examples.append(WinogroundExample(images, captions))
    if not examples:
        raise EvaluationDataError(f"{path}: no examples")
    return examples


def evaluate_winoground(config: WinogroundConfig, embedder: Embedder) -> BenchmarkResult:
    data_dir = Path(config.data_dir)
    path = data_dir / config.examples_file
    if not path.is_file() and (data_dir / "metadata.jsonl").is_file():
        path = data_dir / "metadata.jsonl"  # newer copies of the Hub dataset name the file so
    examples = read_winoground(path, data_dir / config.image_dir)
    images = embedder.embed_images([i for e in examples for i in e.images], desc=f"{config.name} images")
    texts = embedder.embed_texts([c for e in examples for c in e.captions], desc=f"{config.name} texts")
    scores = (texts.view(-1, 2, texts.shape[-1]) @ images.view(-1, 2, images.shape[-1]).transpose(1, 2)).tolist()
    # scores[n][c][i]: caption c with image i of example n, shape (num_examples, 2, 2).
    values = load_metric("winoground_scores").compute(
        c0_i0=[s[0][0] for s in scores], c0_i1=[s[0][1] for s in scores],
        c1_i0=[s[1][0] for s in scores], c1_i1=[s[1][1] for s in scores],
    )  # fmt: skip
    metrics = [
        MetricValue("text", values["text_score"], "accuracy", "Text score"),
        MetricValue("image", values["image_score"], "accuracy", "Image score"),
        MetricValue("group", values["group_score"], "accuracy", "Group score"),
    ]
    return config.make_result(metrics, {"total": len(examples)}, data_version=files_version([path]))
