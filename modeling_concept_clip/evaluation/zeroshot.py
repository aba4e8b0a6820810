"""Zero-shot image classification with prompt-template ensembles: top-K accuracy.

Each class gets the mean of its unit prompt embeddings, re-normalised (CLIP's ensembling); an image is
classified by cosine similarity to these class embeddings. Top-K counts an image as correct when fewer than K
other classes score at least as high as its true class (ties count against the image).

Images come from an image folder (`root/<class>/<image>`, classes in sorted folder order, as `datasets`'
`imagefolder` and torchvision's `ImageFolder` order them) or from any `datasets` image-classification set.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from .data import IMAGE_EXTENSIONS, EvaluationDataError, ImageRef, files_version, read_json
from .embedding import Embedder
from .metrics import load_metric
from .results import BenchmarkResult, MetricValue
from .spec import BenchmarkConfig
from .templates import fill_template, load_templates

logger = logging.getLogger(__name__)


@dataclass
class ZeroShotConfig(BenchmarkConfig):
    """Zero-shot classification on an image folder or a `datasets` set (set exactly one of the two).

    Attributes:
        image_folder: `root/<class folder>/<images>`.
        dataset: a `datasets` Hub id, a folder written by `save_to_disk`, or a folder `load_dataset` reads.
        image_column, label_column: default: the first `Image` and the first `ClassLabel` column.
        class_names_file: prompts' class names. `.txt`: one per line, in label order. `.json`: such a list, or
            an object mapping folder (or label) names to class names. Default: the folder names (with `_` read as
            a space when `underscores_to_spaces`) or the `ClassLabel` names.
        templates: `imagenet80`, `simple`, `classname`, or a `.json`/`.txt` file of templates.
        top_k: the K of top-K accuracy.
    """

    kind = "zeroshot"
    task_type = "zero-shot-image-classification"
    task_name = "Zero-shot image classification"

    dataset_name: str = ""
    dataset_type: str = ""
    split: str = "test"
    image_folder: str | None = None
    dataset: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    class_names_file: str | None = None
    templates: str = "simple"
    top_k: list[int] = field(default_factory=lambda: [1, 5])
    underscores_to_spaces: bool = True

    def __post_init__(self):
        super().__post_init__()
        if (self.image_folder is None) == (self.dataset is None):
            raise ValueError(f"ZeroShotConfig ({self.name!r}) needs exactly one of `image_folder` and `dataset`.")
        source = self.image_folder or self.dataset
        self.dataset_name = self.dataset_name or Path(str(source)).name
        self.dataset_type = self.dataset_type or ("imagefolder" if self.image_folder else str(self.dataset))


@dataclass
class LabelledImages:
    images: list[ImageRef]
    labels: list[int]
    label_names: list[str]  # folder or `ClassLabel` names, indexed by label
    version: dict[str, str] = field(default_factory=dict)  # what identifies the data: listing or fingerprint


def read_image_folder(root: str | Path) -> LabelledImages:
    root = Path(root)
    if not root.is_dir():
        raise EvaluationDataError(f"{root}: image folder not found")
    class_dirs = sorted(path for path in root.iterdir() if path.is_dir())
    if not class_dirs:
        raise EvaluationDataError(f"{root}: no class folder (expected <root>/<class>/<image>)")
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            logger.warning("%s: class folder without images (the class still competes in the prediction)", class_dir)
        for path in files:
            images.append(ImageRef.from_file(path, origin=f"{root}, class {class_dir.name!r}"))
            labels.append(label)
    if not images:
        raise EvaluationDataError(f"{root}: no image file ({', '.join(IMAGE_EXTENSIONS)})")
    listing = "\n".join(str(ref.path.relative_to(root)) for ref in images).encode()
    version = {"listing": f"sha256:{hashlib.sha256(listing).hexdigest()[:16]}"}
    return LabelledImages(images, labels, [d.name for d in class_dirs], version)


def read_hf_dataset(config: ZeroShotConfig) -> LabelledImages:
    """Rows of a `datasets` set; images are decoded lazily by the embedder, so nothing is held in memory."""
    import datasets

    source = Path(str(config.dataset))
    try:
        if source.is_dir() and any((source / name).is_file() for name in ("state.json", "dataset_dict.json")):
            table = datasets.load_from_disk(str(source))
            if isinstance(table, datasets.DatasetDict):
                if config.split not in table:
                    raise EvaluationDataError(f"{source}: no split {config.split!r} (has {list(table)})")
                table = table[config.split]
        else:
            table = datasets.load_dataset(str(config.dataset), split=config.split)
    except (FileNotFoundError, ValueError) as error:
        if isinstance(error, EvaluationDataError):
            raise
        raise EvaluationDataError(f"{config.dataset}: cannot load split {config.split!r}: {error}") from None
    features = table.features
    image_column = config.image_column or next(
        (name for name, feature in features.items() if isinstance(feature, datasets.Image)), None
    )
    label_column = config.label_column or next(
        (name for name, feature in features.items() if isinstance(feature, datasets.ClassLabel)), None
    )
    for role, column in (("image", image_column), ("label", label_column)):
        if column is None or column not in features:
            raise EvaluationDataError(f"{config.dataset}: no {role} column (columns: {list(features)})")
    label_feature = features[label_column]
    if isinstance(label_feature, datasets.ClassLabel):
        label_names = list(label_feature.names)
    elif config.class_names_file:
        label_names = []  # filled from the class-names file
    else:
        raise EvaluationDataError(
            f"{config.dataset}: column {label_column!r} is not a ClassLabel; give class_names_file"
        )
    labels = [int(v) if v is not None else -1 for v in table[label_column]]
    pixels = table.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    origin = f"{config.dataset} [{config.split}]"
    fingerprint = getattr(table, "_fingerprint", "")
    images = [
        ImageRef(
            key=f"{config.dataset}:{config.split}:{fingerprint}:{row}",
            origin=f"{origin}, row {row}",
            loader=_RowImage(pixels, image_column, row),
        )  # fmt: skip
        for row in range(len(table))
    ]
    return LabelledImages(images, labels, label_names, {"fingerprint": fingerprint})


class _RowImage:
    """Opens the encoded image of one table row (bytes or a path) when the embedder needs it."""

    def __init__(self, table, column: str, row: int):
        self.table, self.column, self.row = table, column, row

    def __call__(self) -> Image.Image:
        value = self.table[self.row][self.column]
        if value is None:
            raise ValueError("no image in this row")
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"]))
        return Image.open(value["path"])


def read_class_names(path: str | Path, label_names: list[str], num_labels: int) -> list[str]:
    """Class names of a `.txt` (one per line) or `.json` (list, or mapping of folder/label names) file."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationDataError(f"{path}: class names file not found")
    if path.suffix == ".json":
        data = read_json(path)
        if isinstance(data, dict):
            missing = [name for name in label_names if name not in data]
            if missing:
                raise EvaluationDataError(f"{path}: no class name for {missing[:5]} ({len(missing)} missing)")
            return [str(data[name]) for name in label_names]
        names = data
    else:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise EvaluationDataError(f"{path}: expected a list of non-empty class names")
    if len(names) != num_labels:
        raise EvaluationDataError(f"{path}: {len(names)} class names for {num_labels} classes")
    return names


def class_embeddings(
    class_names: list[str], templates: tuple[str, ...], embedder: Embedder, desc: str
) -> torch.Tensor:
    """`(num_classes, dim)`: per class, the re-normalised mean of its unit prompt embeddings."""
    prompts = [fill_template(template, name) for name in class_names for template in templates]
    embeddings = embedder.embed_texts(prompts, desc=desc)  # (num_classes * num_templates, dim)
    return F.normalize(embeddings.view(len(class_names), len(templates), -1).mean(dim=1), dim=-1)


def true_class_ranks(image_embeddings: torch.Tensor, classifier: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`(num_images,)`: how many other classes score at least as high as the true one (0 = correct top-1)."""
    ranks = torch.empty(len(labels), dtype=torch.long)
    for start in range(0, len(labels), 4096):
        scores = image_embeddings[start : start + 4096] @ classifier.T  # (chunk, num_classes)
        true_scores = scores.gather(1, labels[start : start + 4096, None])
        ranks[start : start + len(scores)] = (scores >= true_scores).sum(dim=1) - 1
    return ranks


def evaluate_zeroshot(config: ZeroShotConfig, embedder: Embedder) -> BenchmarkResult:
    data = read_image_folder(config.image_folder) if config.image_folder else read_hf_dataset(config)
    num_labels = len(data.label_names) or (max(data.labels) + 1)
    version = dict(data.version)
    if config.class_names_file:
        class_names = read_class_names(config.class_names_file, data.label_names, num_labels)
        version.update(files_version([config.class_names_file]))
    elif config.image_folder and config.underscores_to_spaces:
        class_names = [name.replace("_", " ") for name in data.label_names]
    else:
        class_names = data.label_names
    for image, label in zip(data.images, data.labels):
        if not 0 <= label < len(class_names):
            raise EvaluationDataError(f"{image.origin}: label {label} outside 0..{len(class_names) - 1}")
    templates = load_templates(config.templates)
    version["templates"] = f"{config.templates} ({len(templates)} templates)"
    if Path(config.templates).is_file():
        version.update(files_version([config.templates]))

    classifier = class_embeddings(class_names, templates, embedder, desc=f"{config.name} prompts")
    images = embedder.embed_images(data.images, desc=f"{config.name} images")
    ranks = true_class_ranks(images, classifier, torch.tensor(data.labels))
    values = load_metric("recall_at_k").compute(ranks=ranks.tolist(), k=config.top_k)
    metrics = [MetricValue(f"top{k}", values[f"recall@{k}"], "accuracy", f"Top-{k} accuracy") for k in config.top_k]
    return config.make_result(metrics, {"total": len(data.images), "classes": len(class_names)}, data_version=version)
