"""SugarCrepe++: two paraphrased positive captions and one hard negative per COCO val2017 image.

Public format (Sri-Harsha/scpp, `data/<subset>.json`, subsets replace_obj/att/rel and swap_obj/att):
`[{"id": 0, "filename": "000000460347.jpg", "caption": "...", "caption2": "...", "negative_caption": "..."}]`.
Official scores (strict comparisons of cosine similarities):
- image-to-text (ITT): cos(image, caption) > cos(image, negative) and cos(image, caption2) > cos(image, negative);
- text-only (TOT): cos(caption, caption2) > cos(caption, negative) and cos(caption, caption2) > cos(caption2, negative).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .data import EvaluationDataError, files_version, find_image, read_json, records_with_ids, require_text
from .embedding import Embedder
from .metrics import load_metric
from .results import BenchmarkResult, MetricValue
from .spec import BenchmarkConfig, macro_average, require_path
from .sugarcrepe import PreferenceExample, default_groups, image_roots, score_preferences, subset_files

SUGARCREPE_PP_SUBSETS = ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att")


@dataclass
class SugarCrepePlusPlusConfig(BenchmarkConfig):
    """SugarCrepe++ (Dumpala et al., NeurIPS 2024 Datasets and Benchmarks).

    Attributes:
        data_dir: folder of the `<subset>.json` files.
        image_root: COCO `val2017/` folder. None: `data_dir`, then `data_dir/images`.
        subsets: file stems to read. None: every `*.json` file of `data_dir` with `caption2` records.
    """

    kind = "sugarcrepe_pp"
    task_type = "image-text-matching"
    task_name = "Compositional image-text matching"

    dataset_name: str = "SugarCrepe++"
    dataset_type: str = "Aman-J/SugarCrepe_pp"
    split: str = "test"
    data_dir: str = ""
    image_root: str | None = None
    subsets: list[str] | None = field(default_factory=lambda: list(SUGARCREPE_PP_SUBSETS))

    def __post_init__(self):
        super().__post_init__()
        require_path(self, "data_dir")


def read_sugarcrepe_pp_file(path: Path, roots: list[Path]) -> list[PreferenceExample]:
    """Examples with positives `[caption, caption2]` and negatives `[negative_caption]`."""
    examples = []
    for record_id, record in records_with_ids(read_json(path), path):
        context = f"{path}, record {record_id!r}"
        positives = [require_text(record, "caption", context), require_text(record, "caption2", context)]
        negative = require_text(record, "negative_caption", context)
        image = find_image(require_text(record, "filename", context), roots, context)
        examples.append(PreferenceExample(image, positives, [negative]))
    if not examples:
        raise EvaluationDataError(f"{path}: no records")
    return examples


def text_only_accuracy(examples: list[PreferenceExample], embedder: Embedder) -> float:
    """TOT: the two positives must be closer to each other than either is to the negative."""
    positives, negatives = [], []
    for example in examples:
        caption, caption2, negative = embedder.embed_texts([*example.positives, *example.negatives])  # (3, D)
        positives.append([float(caption @ caption2)])
        negatives.append([float(caption @ negative), float(caption2 @ negative)])
    return load_metric("preference_accuracy").compute(positive_scores=positives, negative_scores=negatives)["accuracy"]


def evaluate_sugarcrepe_pp(config: SugarCrepePlusPlusConfig, embedder: Embedder) -> BenchmarkResult:
    data_dir = Path(config.data_dir)
    files = subset_files(data_dir, config.subsets, "caption2")
    roots = image_roots(data_dir, config.image_root)
    subsets = {path.stem: read_sugarcrepe_pp_file(path, roots) for path in files}
    image_to_text = score_preferences(subsets, embedder, desc=config.name)  # embeds every caption once
    text_only = {subset: text_only_accuracy(examples, embedder) for subset, examples in subsets.items()}

    metrics = []
    for subset in subsets:
        metrics.append(MetricValue(f"{subset}_itt", image_to_text[subset], "accuracy", f"ITT accuracy ({subset})"))
        metrics.append(MetricValue(f"{subset}_tot", text_only[subset], "accuracy", f"TOT accuracy ({subset})"))
    for group, members in default_groups(list(subsets)).items():
        for task, values in (("itt", image_to_text), ("tot", text_only)):
            value = macro_average([values[m] for m in members])
            name = f"{task.upper()} accuracy ({group.capitalize()}, mean of subsets)"
            metrics.append(MetricValue(f"{group}_{task}", value, "accuracy", name))
    counts = {s: len(e) for s, e in subsets.items()}
    return config.make_result(metrics, {"total": sum(counts.values()), **counts}, data_version=files_version(files))
