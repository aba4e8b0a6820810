"""SugarCrepe and SugarCrepe-style probes: an image must score its caption strictly above a hard negative.

Public format (RAIVNLab/sugar-crepe, `data/<subset>.json`), one file per subset:
`{"<id>": {"filename": "000000544519.jpg", "caption": "...", "negative_caption": "..."}, ...}` with the images
of COCO val2017. The official scorer counts an example as correct when `pos_score > neg_score` (strict), and
papers (PAPER.md included) report the unweighted mean of the subsets of each of Add, Replace and Swap.
The demo world writes its probes in the same format, so any folder of such files is a benchmark here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .data import EvaluationDataError, ImageRef, files_version, find_image, read_json, records_with_ids, require_text
from .embedding import Embedder
from .metrics import load_metric
from .results import BenchmarkResult, MetricValue
from .spec import BenchmarkConfig, macro_average, require_path

logger = logging.getLogger(__name__)

SUGARCREPE_SUBSETS = ("add_obj", "add_att", "replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att")


@dataclass
class SugarCrepeConfig(BenchmarkConfig):
    """SugarCrepe (Hsieh et al., NeurIPS 2023), or any folder of files in its format (the demo probes).

    Attributes:
        data_dir: folder of the `<subset>.json` files.
        image_root: folder that the records' `filename` is relative to (COCO `val2017/` for SugarCrepe).
            None: `data_dir`, then `data_dir/images`.
        subsets: file stems to read, in order. None: every `*.json` file of `data_dir` whose records have a
            `negative_caption` (other JSON files, e.g. a retrieval file next to the probes, are skipped).
        groups: `{group: [subset, ...]}` averaged without weights. None: subsets grouped by the part of their
            name before the first `_` (`add_obj`, `add_att` -> `add`), as in SugarCrepe's Add/Replace/Swap.
    """

    kind = "sugarcrepe"
    task_type = "image-text-matching"
    task_name = "Compositional image-text matching"

    dataset_name: str = "SugarCrepe"
    dataset_type: str = "RAIVNLab/sugar-crepe"
    split: str = "test"
    data_dir: str = ""
    image_root: str | None = None
    subsets: list[str] | None = field(default_factory=lambda: list(SUGARCREPE_SUBSETS))
    groups: dict[str, list[str]] | None = None

    def __post_init__(self):
        super().__post_init__()
        require_path(self, "data_dir")


@dataclass
class PreferenceExample:
    """One image with the captions that must win and the captions that must lose."""

    image: ImageRef
    positives: list[str]
    negatives: list[str]


def image_roots(data_dir: Path, image_root: str | None) -> list[Path]:
    """Where `filename` fields are looked up: the configured root, else the data folder and its `images/`."""
    return [Path(image_root)] if image_root else [data_dir, data_dir / "images"]


def subset_files(data_dir: Path, subsets: list[str] | None, required_field: str) -> list[Path]:
    """The JSON files of the requested subsets, or the ones found in `data_dir` whose records have the field."""
    if not data_dir.is_dir():
        raise EvaluationDataError(f"{data_dir}: benchmark folder not found")
    if subsets is not None:
        return [data_dir / f"{subset}.json" for subset in subsets]
    found = []
    for path in sorted(data_dir.glob("*.json")):
        records = read_json(path)
        first = next(iter(records.values() if isinstance(records, dict) else records or []), None)
        if isinstance(first, dict) and required_field in first:
            found.append(path)
        else:
            logger.info("%s: not a file of this benchmark (no %r field), skipped", path, required_field)
    if not found:
        raise EvaluationDataError(f"{data_dir}: no JSON file with {required_field!r} records")
    return found


def default_groups(subsets: list[str]) -> dict[str, list[str]]:
    """`add_obj`, `add_att` -> `{"add": [...]}`; a subset name without `_` belongs to no group."""
    groups: dict[str, list[str]] = {}
    for subset in subsets:
        if "_" in subset:
            groups.setdefault(subset.split("_")[0], []).append(subset)
    return groups


def read_sugarcrepe_file(path: Path, roots: list[Path]) -> list[PreferenceExample]:
    """Parse one subset file; a missing file, a malformed record or a missing image names file and record."""
    examples = []
    for record_id, record in records_with_ids(read_json(path), path):
        context = f"{path}, record {record_id!r}"
        caption = require_text(record, "caption", context)
        negative = require_text(record, "negative_caption", context)
        filename = require_text(record, "filename", context)
        examples.append(PreferenceExample(find_image(filename, roots, context), [caption], [negative]))
    if not examples:
        raise EvaluationDataError(f"{path}: no records")
    return examples


def score_preferences(
    subsets: dict[str, list[PreferenceExample]], embedder: Embedder, desc: str, positive_wins_ties: bool = False
) -> dict[str, float]:
    """Accuracy per subset of "every positive caption scores above every negative caption" (cosine)."""
    examples = [e for subset in subsets.values() for e in subset]
    images = embedder.embed_images([e.image for e in examples], desc=f"{desc} images")  # (N, D)
    texts = [t for e in examples for t in (*e.positives, *e.negatives)]
    text_embeddings = embedder.embed_texts(texts, desc=f"{desc} texts")  # (sum of captions, D)
    metric = load_metric("preference_accuracy")
    accuracies, row, text_row = {}, 0, 0
    for subset, subset_examples in subsets.items():
        positives, negatives = [], []
        for example in subset_examples:
            image = images[row]
            count = len(example.positives) + len(example.negatives)
            scores = (text_embeddings[text_row : text_row + count] @ image).tolist()
            positives.append(scores[: len(example.positives)])
            negatives.append(scores[len(example.positives) :])
            row, text_row = row + 1, text_row + count
        result = metric.compute(
            positive_scores=positives, negative_scores=negatives, positive_wins_ties=positive_wins_ties
        )
        accuracies[subset] = result["accuracy"]
    return accuracies


def evaluate_sugarcrepe(config: SugarCrepeConfig, embedder: Embedder) -> BenchmarkResult:
    data_dir = Path(config.data_dir)
    files = subset_files(data_dir, config.subsets, "negative_caption")
    roots = image_roots(data_dir, config.image_root)
    subsets = {path.stem: read_sugarcrepe_file(path, roots) for path in files}
    accuracies = score_preferences(subsets, embedder, desc=config.name)

    metrics = [MetricValue(s, acc, "accuracy", f"Accuracy ({s})") for s, acc in accuracies.items()]
    for group, members in (config.groups or default_groups(list(subsets))).items():
        unknown = [m for m in members if m not in accuracies]
        if unknown:
            raise ValueError(f"{config.name}: group {group!r} names subsets that were not read: {unknown}")
        value = macro_average([accuracies[m] for m in members])
        metrics.append(MetricValue(group, value, "accuracy", f"Accuracy ({group.capitalize()}, mean of subsets)"))
    counts = {s: len(e) for s, e in subsets.items()}
    return config.make_result(metrics, {"total": sum(counts.values()), **counts}, data_version=files_version(files))
