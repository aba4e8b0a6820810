"""Image-text retrieval on COCO / Flickr30k: recall@K from images to captions and from captions to images.

Two public layouts of "an image with several captions" are read:
- Karpathy's split files (`dataset_coco.json`, `dataset_flickr30k.json`): `{"images": [{"filepath": "val2014",
  "filename": "COCO_val2014_000000391895.jpg", "split": "test", "sentences": [{"raw": "..."}, ...]}, ...]}`
  (Flickr30k has no `filepath`); only images of the configured split are used (5,000 / 1,000 test images).
- The per-split files used by BLIP and ARO (`coco_karpathy_test.json`, `flickr30k_test.json`):
  `[{"image": "val2014/COCO_val2014_000000391895.jpg", "caption": ["...", ...]}, ...]`.

Image-to-text: a query image is a hit at K when one of its captions is among the K best of all captions.
Text-to-image: a caption is a hit at K when its image is among the K best images. Ties count against the query
(a wrong candidate scoring exactly as high as the best correct one is ranked before it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import EvaluationDataError, ImageRef, files_version, find_image, read_json, require_fields, require_text
from .embedding import Embedder
from .metrics import load_metric
from .results import BenchmarkResult, MetricValue
from .spec import BenchmarkConfig, require_path


@dataclass
class RetrievalConfig(BenchmarkConfig):
    """Zero-shot image-text retrieval.

    Attributes:
        annotation_file: a Karpathy split file or a BLIP/ARO per-split file.
        image_root: folder the image paths are relative to (Karpathy: `filepath/filename`; BLIP: `image`).
            None: the annotation file's folder.
        split: Karpathy split to use (`test`); records without a `split` field are all used.
        recall_at: the K of recall@K.
    """

    kind = "retrieval"
    task_type = "image-text-retrieval"
    task_name = "Zero-shot image-text retrieval"

    dataset_name: str = "COCO Karpathy"
    dataset_type: str = "coco-karpathy"
    split: str = "test"
    annotation_file: str = ""
    image_root: str | None = None
    recall_at: list[int] = field(default_factory=lambda: [1, 5, 10])

    def __post_init__(self):
        super().__post_init__()
        require_path(self, "annotation_file")


@dataclass
class CaptionedImage:
    image: ImageRef
    captions: list[str]


def read_captioned_images(path: str | Path, image_root: str | Path | None, split: str | None) -> list[CaptionedImage]:
    """The images (with all their captions) of a Karpathy split file or of a BLIP/ARO per-split file."""
    path = Path(path)
    roots = [Path(image_root) if image_root else path.parent]
    data = read_json(path)
    if isinstance(data, dict) and "images" in data:
        records = data["images"]
        if not isinstance(records, list):
            raise EvaluationDataError(f"{path}: field 'images' should be a list")
        if split and any(isinstance(r, dict) and "split" in r for r in records):
            available = sorted({str(r.get("split")) for r in records if isinstance(r, dict)})
            records = [r for r in records if isinstance(r, dict) and r.get("split") == split]
            if not records:
                raise EvaluationDataError(f"{path}: no image of split {split!r} (splits present: {available})")
        items = []
        for index, record in enumerate(records):
            name = record.get("filename", index) if isinstance(record, dict) else index
            context = f"{path}, image {name!r}"
            require_fields(record, {"filename": str, "sentences": list}, context)
            relative = str(Path(record.get("filepath", "")) / record["filename"])
            captions = []
            for number, sentence in enumerate(record["sentences"]):
                sentence_context = f"{context}, sentence {number}"
                require_fields(sentence, {"raw": str}, sentence_context)
                captions.append(require_text(sentence, "raw", sentence_context))
            items.append(_captioned(find_image(relative, roots, context), captions, context))
        return items
    if isinstance(data, list):
        items = []
        for index, record in enumerate(data):
            context = f"{path}, record {index}"
            require_fields(record, {"image": str, "caption": (list, str)}, context)
            captions = [record["caption"]] if isinstance(record["caption"], str) else record["caption"]
            for number, caption in enumerate(captions):
                if not isinstance(caption, str) or not caption.strip():
                    raise EvaluationDataError(f"{context}: caption {number} should be a non-empty string")
            items.append(_captioned(find_image(record["image"], roots, context), captions, context))
        return items
    raise EvaluationDataError(
        f"{path}: expected a Karpathy split file ({{'images': [...]}}) or a list of {{'image', 'caption'}} records"
    )


def _captioned(image: ImageRef, captions: list[str], context: str) -> CaptionedImage:
    if not captions:
        raise EvaluationDataError(f"{context}: image has no caption")
    return CaptionedImage(image, captions)


def retrieval_ranks(
    image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, text_to_image: torch.Tensor, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based rank of the best correct candidate of every query, ties counted against the query.

    Args:
        image_embeddings: `(num_images, dim)` unit rows.
        text_embeddings: `(num_texts, dim)` unit rows.
        text_to_image: `(num_texts,)` index of each caption's image.
    Returns:
        `(image_to_text_ranks (num_images,), text_to_image_ranks (num_texts,))`: the number of wrong candidates
        scoring at least as high as the query's best correct candidate.
    """
    num_images = image_embeddings.shape[0]
    image_ranks = torch.empty(num_images, dtype=torch.long)
    for start in range(0, num_images, chunk_size):
        scores = image_embeddings[start : start + chunk_size] @ text_embeddings.T  # (chunk, num_texts)
        rows = torch.arange(start, start + scores.shape[0])
        correct = text_to_image[None, :] == rows[:, None]  # (chunk, num_texts)
        best = scores.masked_fill(~correct, float("-inf")).max(dim=1).values
        image_ranks[start : start + scores.shape[0]] = ((scores >= best[:, None]) & ~correct).sum(dim=1)
    text_ranks = torch.empty(text_embeddings.shape[0], dtype=torch.long)
    for start in range(0, text_embeddings.shape[0], chunk_size):
        scores = text_embeddings[start : start + chunk_size] @ image_embeddings.T  # (chunk, num_images)
        target = text_to_image[start : start + scores.shape[0]]
        correct_score = scores.gather(1, target[:, None])
        text_ranks[start : start + scores.shape[0]] = (scores >= correct_score).sum(dim=1) - 1  # minus itself
    return image_ranks, text_ranks


def evaluate_retrieval(config: RetrievalConfig, embedder: Embedder) -> BenchmarkResult:
    items = read_captioned_images(config.annotation_file, config.image_root, config.split)
    captions = [caption for item in items for caption in item.captions]
    text_to_image = torch.tensor([index for index, item in enumerate(items) for _ in item.captions])
    images = embedder.embed_images([item.image for item in items], desc=f"{config.name} images")
    texts = embedder.embed_texts(captions, desc=f"{config.name} texts")
    image_ranks, text_ranks = retrieval_ranks(images, texts, text_to_image)

    recall = load_metric("recall_at_k")
    metrics = []
    for direction, ranks, title in (("i2t", image_ranks, "Image-to-text"), ("t2i", text_ranks, "Text-to-image")):
        values = recall.compute(ranks=ranks.tolist(), k=config.recall_at)
        for k in config.recall_at:
            metrics.append(MetricValue(f"{direction}_R@{k}", values[f"recall@{k}"], "recall", f"{title} R@{k}"))
    return config.make_result(
        metrics,
        {"total": len(items), "images": len(items), "captions": len(captions)},
        data_version=files_version([config.annotation_file]),
    )
