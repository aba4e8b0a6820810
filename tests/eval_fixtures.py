"""Shared builders for the evaluation tests: images, benchmark files in their public formats, a fixed embedder."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image

from modeling_concept_clip.evaluation.data import ImageRef
from modeling_concept_clip.evaluation.embedding import Embedder

Vector = Sequence[float]


def write_image(path: Path, color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 32)) -> Path:
    """A solid-colour image; the format follows the suffix (PNG or JPEG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


class LookupEmbedder(Embedder):
    """Fixed vectors chosen by the test: images by file name (or a function of the `ImageRef`), texts by string
    (or a function of the text). Any input the test did not plan for raises `KeyError`."""

    def __init__(
        self,
        images: Mapping[str, Vector] | Callable[[ImageRef], Vector],
        texts: Mapping[str, Vector] | Callable[[str], Vector],
    ):
        super().__init__(progress=False)
        self.images, self.texts = images, texts
        self.image_batches: list[int] = []

    def _image(self, ref: ImageRef) -> Vector:
        return self.images(ref) if callable(self.images) else self.images[ref.path.name]

    def _text(self, text: str) -> Vector:
        return self.texts(text) if callable(self.texts) else self.texts[text]

    def iter_image_embeddings(self, refs: Sequence[ImageRef]) -> Iterator[torch.Tensor]:
        self.image_batches.append(len(refs))
        yield torch.tensor([list(self._image(ref)) for ref in refs], dtype=torch.float64)

    def iter_text_embeddings(self, texts: Sequence[str]) -> Iterator[torch.Tensor]:
        yield torch.tensor([list(self._text(text)) for text in texts], dtype=torch.float64)


def by_color(vectors: Mapping[tuple[int, int, int], Vector]) -> Callable[[ImageRef], Vector]:
    """Image vectors chosen by the colour of the (solid) image, read through `ImageRef.load()`."""

    def lookup(ref: ImageRef) -> Vector:
        return vectors[ref.load().getpixel((0, 0))]

    return lookup


def write_sugarcrepe_subset(path: Path, records: list[tuple[str, str, str]]) -> Path:
    """SugarCrepe's own layout: `{"<id>": {"filename", "caption", "negative_caption"}}`."""
    data = {str(i): {"filename": f, "caption": c, "negative_caption": n} for i, (f, c, n) in enumerate(records)}
    return write_json(path, data)


def build_benchmark_tree(root: Path) -> Path:
    """Every preset's files, in their public layouts, under `root` (the `--data_dir`), with tiny images and
    captions from the tiny tokenizer's vocabulary."""
    colors = [(220, 40, 40), (40, 200, 60), (50, 60, 230), (230, 220, 40)]
    coco = root / "coco"
    for i, color in enumerate(colors):
        write_image(coco / "val2017" / f"00000000000{i}.jpg", color, size=(36, 32))
        write_image(coco / "val2014" / f"COCO_val2014_00000000000{i}.jpg", color, size=(36, 32))
        write_image(root / "flickr30k" / "flickr30k-images" / f"{i}.jpg", color, size=(32, 36))
    pairs = [("a red circle", "a green circle"), ("a dog next to a cat", "a cat next to a dog"),
             ("a big blue car", "a small blue car"), ("a man with a lamp", "a woman with a lamp")]  # fmt: skip
    for subset in ("add_obj", "add_att", "replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att"):
        write_sugarcrepe_subset(root / "sugarcrepe" / f"{subset}.json",
                                [(f"00000000000{i}.jpg", c, n) for i, (c, n) in enumerate(pairs)])  # fmt: skip
    for subset in ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att"):
        write_json(root / "sugarcrepe_pp" / f"{subset}.json",
                   [{"id": i, "filename": f"00000000000{i}.jpg", "caption": c, "caption2": f"the photo of {c}",
                     "negative_caption": n} for i, (c, n) in enumerate(pairs)])  # fmt: skip
    for i, color in enumerate(colors):
        write_image(root / "probes" / "images" / f"scene{i}.png", color)
    for subset in ("swap_att", "replace_att", "replace_obj", "add_obj"):
        write_sugarcrepe_subset(root / "probes" / f"{subset}.json",
                                [(f"scene{i}.png", c, n) for i, (c, n) in enumerate(pairs)])  # fmt: skip
    sentences = [[{"raw": c}, {"raw": f"the photo of {c}"}] for c, _ in pairs]
    write_json(coco / "dataset_coco.json", {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": f"COCO_val2014_00000000000{i}.jpg", "split": "test", "sentences": s}
        for i, s in enumerate(sentences)]})  # fmt: skip
    write_json(root / "flickr30k" / "dataset_flickr30k.json", {"dataset": "flickr30k", "images": [
        {"filename": f"{i}.jpg", "split": "test", "sentences": s} for i, s in enumerate(sentences)]})  # fmt: skip
    for name, color in (("red_circle", colors[0]), ("green_square", colors[1]), ("blue_star", colors[2])):
        for j in range(2):
            write_image(root / "zeroshot" / name / f"{j}.png", color)
            write_image(root / "imagenet" / "val" / f"n0{len(name)}{name[0]}" / f"{j}.JPEG", color)
    (root / "imagenet" / "classnames.txt").write_text("blue star\ngreen square\nred circle\n", encoding="utf-8")
    write_image(root / "aro" / "images" / "1.jpg", colors[0], size=(48, 40))
    relation = [{"image_path": "1.jpg", "bbox_x": 4 * i, "bbox_y": 2, "bbox_w": 30, "bbox_h": 30,
                 "relation_name": r, "true_caption": c, "false_caption": n}
                for i, (r, (c, n)) in enumerate(zip(["on", "with", "on", "next to"], pairs))]  # fmt: skip
    write_json(root / "aro" / "visual_genome_relation.json", relation)
    attribution = [{"image_path": "1.jpg", "bbox_x": 0, "bbox_y": 0, "bbox_w": 20 + i % 5, "bbox_h": 20,
                    "attributes": ["red", "big"], "true_caption": "the red dog and the big cat",
                    "false_caption": "the big dog and the red cat"} for i in range(25)]  # fmt: skip
    write_json(root / "aro" / "visual_genome_attribution.json", attribution)
    rows = []
    for i, (c, n) in enumerate(pairs[:2]):
        rows.append({"id": i, "image_0": f"ex_{i}_img_0", "image_1": f"ex_{i}_img_1", "caption_0": c,
                     "caption_1": n, "tag": "Object", "secondary_tag": "", "num_main_preds": 1,
                     "collapsed_tag": "Object"})  # fmt: skip
        write_image(root / "winoground" / "images" / f"ex_{i}_img_0.png", colors[i])
        write_image(root / "winoground" / "images" / f"ex_{i}_img_1.png", colors[i + 2])
    write_jsonl(root / "winoground" / "examples.jsonl", rows)
    return root
