"""Image-caption datasets for C2LIP training, loaded with `datasets` from the Hub or from local files.

Supported sources, all giving rows with an image column and a caption column (plus an optional concepts column):

- a Hub dataset id or a folder written by `Dataset.save_to_disk` (`dataset_name`);
- JSON Lines / JSON, CSV or parquet files whose image column holds paths relative to the file's folder (or
  absolute paths), also as globs (`train_file`);
- WebDataset tar shards (`train_file` ending in `.tar`; image columns `jpg`/`png`/..., caption column `txt`);
- an `imagefolder` directory with `metadata.jsonl` (`train_dir`; image column `image`).

Images are not decoded here: image features are cast to `Image(decode=False)` so that the collator reads them,
and a corrupt file becomes a counted skip instead of an exception inside a data-loader worker.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

import datasets
from datasets import Dataset, IterableDataset

logger = logging.getLogger(__name__)

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".tar": "webdataset"}
_WEBDATASET_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def _expand(pattern: str) -> list[str]:
    """A path or a glob, as a sorted list of existing files (a clear error when none matches)."""
    if "://" in pattern or os.path.exists(pattern):
        return [pattern]
    matches = sorted(glob.glob(pattern))
    if not matches:
        raise FileNotFoundError(f"No file matches {pattern!r}.")
    return matches


def builder_for(path: str) -> str:
    """The `datasets` builder name of a data file, from its extension."""
    suffix = Path(path.split("::")[0]).suffix.lower()
    if suffix not in _BUILDERS:
        raise ValueError(f"Unsupported data file {path!r}: use one of {sorted(_BUILDERS)} or an imagefolder dir.")
    return _BUILDERS[suffix]


def load_image_text_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    data_file: str | None = None,
    data_dir: str | None = None,
    split: str = "train",
    streaming: bool = False,
    cache_dir: str | None = None,
) -> tuple[Dataset | IterableDataset, str | None]:
    """Load one split; returns `(dataset, image_root)`.

    `image_root` is the folder against which relative image paths are resolved (the data file's folder), or
    `None` when the images are stored in the dataset itself.
    """
    given = [x for x in (dataset_name, data_file, data_dir) if x]
    if len(given) != 1:
        raise ValueError("Give exactly one data source: dataset_name, a data file (train_file) or train_dir.")
    image_root = None
    if dataset_name:
        if os.path.isdir(dataset_name) and os.path.exists(os.path.join(dataset_name, "state.json")):
            dataset = datasets.load_from_disk(dataset_name)
            if isinstance(dataset, datasets.DatasetDict):
                dataset = dataset[split]
            if streaming:
                dataset = dataset.to_iterable_dataset()
        else:
            dataset = datasets.load_dataset(
                dataset_name, dataset_config_name, split=split, streaming=streaming, cache_dir=cache_dir
            )
    elif data_dir:
        if not os.path.isdir(data_dir):
            raise FileNotFoundError(f"train_dir {data_dir!r} is not a directory.")
        dataset = datasets.load_dataset(
            "imagefolder", data_dir=data_dir, split="train", streaming=streaming, cache_dir=cache_dir
        )
    else:
        files = _expand(data_file)
        builders = {builder_for(f) for f in files}
        if len(builders) != 1:
            raise ValueError(f"{data_file!r} mixes file types ({sorted(builders)}).")
        builder = builders.pop()
        dataset = datasets.load_dataset(
            builder, data_files={"train": files}, split="train", streaming=streaming, cache_dir=cache_dir
        )
        if builder != "webdataset":
            image_root = str(Path(files[0]).resolve().parent)
    return _undecoded_images(dataset), image_root


def _undecoded_images(dataset: Dataset | IterableDataset) -> Dataset | IterableDataset:
    features = dataset.features or {}
    for name, feature in features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Image(decode=False))
    return dataset


def resolve_columns(dataset: Dataset | IterableDataset, image_column: str | None, caption_column: str | None):
    """Check the image and caption columns exist (with defaults for WebDataset and imagefolder layouts)."""
    columns = list(dataset.column_names or (dataset.features or {}).keys())
    if image_column is None:
        candidates = [c for c in ("image", "file_name", *_WEBDATASET_IMAGE_KEYS) if c in columns]
        if not candidates:
            raise ValueError(f"No image column found; pass --image_column (columns: {columns}).")
        image_column = candidates[0]
    if caption_column is None:
        candidates = [c for c in ("caption", "text", "txt") if c in columns]
        if not candidates:
            raise ValueError(f"No caption column found; pass --caption_column (columns: {columns}).")
        caption_column = candidates[0]
    for kind, name in (("image", image_column), ("caption", caption_column)):
        if name not in columns:
            raise ValueError(f"The {kind} column {name!r} is not in the dataset (columns: {columns}).")
    return image_column, caption_column
