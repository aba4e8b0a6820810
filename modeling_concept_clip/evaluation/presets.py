"""Named benchmarks of the command line: each preset knows where its files live under `--data_dir`.

`NAME` uses the default location, `NAME=PATH` points the preset's main path elsewhere (taken as given, i.e.
absolute or relative to the working directory). Anything else is configured in a `--benchmark_config` file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .aro import OrderConfig, VGAttributionConfig, VGRelationConfig
from .data import EvaluationDataError
from .retrieval import RetrievalConfig
from .spec import BenchmarkConfig
from .sugarcrepe import SugarCrepeConfig
from .sugarcrepe_pp import SugarCrepePlusPlusConfig
from .winoground import WinogroundConfig
from .zeroshot import ZeroShotConfig


def _zeroshot_source(path: Path) -> dict[str, str]:
    """An image folder, a `save_to_disk` folder, or (not a folder) a `datasets` Hub id."""
    is_saved = any((path / name).is_file() for name in ("state.json", "dataset_dict.json"))
    return {"image_folder": str(path)} if path.is_dir() and not is_saved else {"dataset": str(path)}


def _imagenet(root: Path, path: Path | None) -> ZeroShotConfig:
    names = root / "imagenet" / "classnames.txt"
    if not names.is_file():  # WordNet-id folder names as prompts would give meaningless numbers, silently
        raise EvaluationDataError(
            f"{names}: file not found; the ImageNet preset needs the 1,000 class names used in prompts, one per "
            "line in the sorted order of the class folders (e.g. CLIP's curated names)"
        )
    return ZeroShotConfig(
        name="imagenet", image_folder=str(path or root / "imagenet" / "val"), templates="imagenet80",
        class_names_file=str(names), underscores_to_spaces=False,
        dataset_name="ImageNet-1k", dataset_type="imagenet-1k", split="validation",
    )  # fmt: skip


# name -> (what PATH means, builder(data_dir, PATH or None))
PRESETS: dict[str, tuple[str, Callable[[Path, Path | None], BenchmarkConfig]]] = {
    "sugarcrepe": (
        "folder of the 7 SugarCrepe JSON files [sugarcrepe/]; images: <data_dir>/coco/val2017/",
        lambda root, path: SugarCrepeConfig(
            data_dir=str(path or root / "sugarcrepe"), image_root=str(root / "coco" / "val2017")
        ),
    ),
    "sugarcrepe_pp": (
        "folder of the 5 SugarCrepe++ JSON files [sugarcrepe_pp/]; images: <data_dir>/coco/val2017/",
        lambda root, path: SugarCrepePlusPlusConfig(
            data_dir=str(path or root / "sugarcrepe_pp"), image_root=str(root / "coco" / "val2017")
        ),
    ),
    "probes": (
        "folder of SugarCrepe-format JSON files (every one found) with their images beside them or in images/ [probes/]",
        lambda root, path: SugarCrepeConfig(
            name="probes",
            data_dir=str(path or root / "probes"),
            subsets=None,
            dataset_name="SugarCrepe-style probes",
            dataset_type="sugarcrepe-style",
        ),  # fmt: skip
    ),
    "coco_retrieval": (
        "Karpathy dataset_coco.json [coco/dataset_coco.json]; images: <data_dir>/coco/<filepath>/<filename>",
        lambda root, path: RetrievalConfig(
            name="coco_retrieval",
            annotation_file=str(path or root / "coco" / "dataset_coco.json"),
            image_root=str(root / "coco"),
            dataset_name="COCO (Karpathy 5k test)",
            dataset_type="coco-karpathy",
        ),  # fmt: skip
    ),
    "flickr30k_retrieval": (
        "Karpathy dataset_flickr30k.json [flickr30k/dataset_flickr30k.json]; images: <data_dir>/flickr30k/flickr30k-images/",
        lambda root, path: RetrievalConfig(
            name="flickr30k_retrieval",
            annotation_file=str(path or root / "flickr30k" / "dataset_flickr30k.json"),
            image_root=str(root / "flickr30k" / "flickr30k-images"),
            dataset_name="Flickr30k (Karpathy 1k test)",
            dataset_type="flickr30k-karpathy",
        ),  # fmt: skip
    ),
    "retrieval": (
        "any Karpathy-style or BLIP-style caption file, images relative to its folder [retrieval.json]",
        lambda root, path: RetrievalConfig(
            name="retrieval",
            annotation_file=str(path or root / "retrieval.json"),
            dataset_name=(path or root / "retrieval.json").stem,
            dataset_type="karpathy-style",
        ),  # fmt: skip
    ),
    "imagenet": (
        "ImageNet validation image folder [imagenet/val/]; class names (required): <data_dir>/imagenet/classnames.txt",
        _imagenet,
    ),
    "zeroshot": (
        "image folder <class>/<image>, save_to_disk folder, or datasets Hub id [zeroshot/]",
        lambda root, path: ZeroShotConfig(name="zeroshot", **_zeroshot_source(path or root / "zeroshot")),
    ),
    "vg_relation": (
        "folder with visual_genome_relation.json and images/ [aro/]",
        lambda root, path: VGRelationConfig(name="vg_relation", data_dir=str(path or root / "aro")),
    ),
    "vg_attribution": (
        "folder with visual_genome_attribution.json and images/ [aro/]",
        lambda root, path: VGAttributionConfig(name="vg_attribution", data_dir=str(path or root / "aro")),
    ),
    "coco_order": (
        "Karpathy dataset_coco.json or BLIP coco_karpathy_test.json [coco/dataset_coco.json]; images under <data_dir>/coco/",
        lambda root, path: OrderConfig(
            name="coco_order",
            annotation_file=str(path or root / "coco" / "dataset_coco.json"),
            image_root=str(root / "coco"),
        ),  # fmt: skip
    ),
    "flickr30k_order": (
        "Karpathy dataset_flickr30k.json [flickr30k/dataset_flickr30k.json]; images: <data_dir>/flickr30k/flickr30k-images/",
        lambda root, path: OrderConfig(
            name="flickr30k_order",
            annotation_file=str(path or root / "flickr30k" / "dataset_flickr30k.json"),
            image_root=str(root / "flickr30k" / "flickr30k-images"),
            dataset_name="Flickr30k-Order",
        ),  # fmt: skip
    ),
    "winoground": (
        "folder with examples.jsonl and images/ [winoground/]",
        lambda root, path: WinogroundConfig(data_dir=str(path or root / "winoground")),
    ),
}


def preset_benchmark(token: str, data_dir: str | Path) -> BenchmarkConfig:
    """`"NAME"` or `"NAME=PATH"` -> the preset's configuration under `data_dir`."""
    name, _, path = token.partition("=")
    if name not in PRESETS:
        raise ValueError(f"Unknown benchmark {name!r}; presets: {', '.join(PRESETS)}.")
    return PRESETS[name][1](Path(data_dir), Path(path) if path else None)


def presets_help() -> str:
    return "\n".join(f"  {name}: {meaning}" for name, (meaning, _) in PRESETS.items())
