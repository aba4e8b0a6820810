"""Image-caption datasets for C2LIP training, loaded with `datasets` from the Hub or from local files.

Supported sources, all giving rows with an image column and a caption column (plus an optional concepts column):

- a Hub dataset id or a folder written by `Dataset.save_to_disk` (`dataset_name`);
- JSON Lines / JSON, CSV or parquet files whose image column holds paths relative to the file's folder (or
  absolute paths), also as globs (`train_file`);
- WebDataset tar shards (`train_file` ending in `.tar`, a glob or a brace pattern such as
  `cc3m/{00000..00331}.tar`; image columns `jpg`/`png`/..., caption column `txt`), optionally with their concepts
  joined by `__key__` from the per-shard files that `concept-clip-extract` writes (`concepts_dir`);
- an `imagefolder` directory with `metadata.jsonl` (`train_dir`; image column `image`).

Images are not decoded here: image features are cast to `Image(decode=False)` so that the collator reads them,
and a corrupt file becomes a counted skip instead of an exception inside a data-loader worker. A data file that
cannot be read as it is (not UTF-8, a line that is not JSON, empty) raises `InputFileError` naming the file, the
line and the fix, before training starts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets import Dataset, IterableDataset
from datasets.fingerprint import Hasher

from .concepts.readers import InputFileError, check_encoding, check_unique_keys, read_json_lines
from .concepts.shards import (
    concepts_file,
    expand_pattern,
    is_pattern,
    missing_concepts_files,
    read_concepts_file_keys,
    read_shard_concepts,
)

logger = logging.getLogger(__name__)

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".tar": "webdataset"}
_WEBDATASET_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def _expand(pattern: str) -> list[str]:
    """A path, a glob or a brace pattern, as a list of existing files (a clear error naming any that is missing)."""
    if "://" in pattern or os.path.exists(pattern):
        return [pattern]
    matches = expand_pattern(pattern) if is_pattern(pattern) else []
    missing = [path for path in matches if "://" not in path and not os.path.exists(path)]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise FileNotFoundError(f"{len(missing)} file(s) of {pattern!r} do not exist: {shown}.")
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
    concepts_dir: str | None = None,
    concepts_column: str = "concepts",
) -> tuple[Dataset | IterableDataset, str | None]:
    """Load one split; returns `(dataset, image_root)`.

    `image_root` is the folder against which relative image paths are resolved (the data file's folder), or
    `None` when the images are stored in the dataset itself.

    With `concepts_dir` (WebDataset shards only), each sample gets `concepts_column` from its shard's concepts file
    in `concepts_dir` (see `modeling_concept_clip.concepts.shards`); every shard must have one. A sample whose key
    is not in its shard's file gets `None`, which the collator counts as a "concepts" skip.
    """
    given = [x for x in (dataset_name, data_file, data_dir) if x]
    if len(given) != 1:
        raise ValueError("Give exactly one data source: dataset_name, a data file (train_file) or train_dir.")
    if concepts_dir and not data_file:
        raise ValueError("concepts_dir joins concepts to WebDataset tar shards given as a data file (train_file).")
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
        if concepts_dir and builder != "webdataset":
            raise ValueError(
                f"concepts_dir joins concepts to WebDataset tar shards, not to {builder} files: train on the files "
                "that concept-clip-extract wrote (they carry a concepts column)."
            )
        dataset = _load_data_files(builder, files, streaming, cache_dir)
        if concepts_dir:
            dataset = join_shard_concepts(dataset, files, concepts_dir, concepts_column)
        if builder != "webdataset":
            image_root = str(Path(files[0]).resolve().parent)
    return _undecoded_images(dataset), image_root


def _load_data_files(builder: str, files: list[str], streaming: bool, cache_dir: str | None):
    """`datasets.load_dataset` of local data files; what it cannot read is reported by file, line and fix."""
    local = [f for f in files if "://" not in f]
    if builder in ("json", "csv"):
        for path in local:
            if _is_blank(path):
                raise InputFileError(f"{path} is empty: remove it from the data files or fill it.")
            # pyarrow's JSON reader takes bytes that are not UTF-8 and fails only when the row is read, mid-run.
            fix = (
                f"Convert it to UTF-8 (e.g. `iconv -f LATIN1 -t UTF-8 {path} > converted{Path(path).suffix}`), or "
                f"write a UTF-8 copy with `concept-clip-extract --input {path} --encoding <its encoding> "
                "--output_dir <folder>` and train on the copy."
            )
            check_encoding(path, fix=fix)
            if builder == "json" and streaming:  # a stream would fail on a bad line only when it gets there
                _check_json_lines(path)
    if builder == "webdataset":
        for path in local:
            _check_tar_end(path)
    try:
        return datasets.load_dataset(
            builder, data_files={"train": files}, split="train", streaming=streaming, cache_dir=cache_dir
        )
    except (datasets.exceptions.DatasetGenerationError, pa.ArrowInvalid, StopIteration) as error:
        if builder == "json":
            for path in local:
                _check_json_lines(path)
        cause = error.__cause__ or error.__context__ or error
        raise InputFileError(
            f"Could not read {', '.join(files[:5])}{' ...' if len(files) > 5 else ''} as {builder}: "
            f"{type(cause).__name__}: {cause}"
        ) from error


def _check_tar_end(path: str) -> None:
    """A tar archive ends with two zero blocks; `datasets` (through `tarfile`) stops quietly where a truncated
    shard stops, losing its remaining samples unseen. Reads only the last 1 KiB (a complete shard always passes)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        handle.seek(max(0, size - 2 * tarfile.BLOCKSIZE))
        tail = handle.read()
    if size < 2 * tarfile.BLOCKSIZE or tail.count(0) != len(tail):
        raise InputFileError(
            f"{path} is truncated or not a tar shard ({size} bytes, no end-of-archive blocks): download or write it "
            "again, or leave it out of --train_file."
        )


def _is_blank(path: str) -> bool:
    with open(path, "rb") as handle:
        return not any(block.strip() for block in iter(lambda: handle.read(1 << 16), b""))


def _check_json_lines(path: str) -> None:
    for line_no, row in read_json_lines(path):
        if row is None:
            raise InputFileError(
                f"{path}, line {line_no}: not a JSON object. Fix or delete the line, or write a copy without it with "
                f"`concept-clip-extract --input {path} --skip_invalid_lines --output_dir <folder>` and train on "
                "the copy."
            )


@dataclass(frozen=True)
class ShardConceptsJoin:
    """The concepts of each sample of a batch, by its shard (`__url__`) and `__key__` ([`join_shard_concepts`]).
    Plain data only, so `datasets` fingerprints it the same in every process; `files_digest` (names, sizes and
    modification times of the concepts files) makes a changed concepts file a new fingerprint."""

    concepts_dir: str
    column: str
    files_digest: str

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[list[str] | None]]:
        concepts = []
        for url, key in zip(batch["__url__"], batch["__key__"]):
            concepts.append(read_shard_concepts(concepts_file(self.concepts_dir, url), self.column).get(key))
        return {self.column: concepts}


def join_shard_concepts(
    dataset: Dataset | IterableDataset, shards: list[str], concepts_dir: str, column: str = "concepts"
) -> Dataset | IterableDataset:
    """Add `column` to a WebDataset dataset from the per-shard concepts files of `concept-clip-extract`.

    Raises `FileNotFoundError` naming the shards without a concepts file, and `InputFileError` naming the shard and
    the key when a key is not unique: in a concepts file, or among the samples of a shard (checked here for a
    map-style dataset; `concept-clip-extract` refuses such a shard, so a streamed shard with concepts from it has
    unique keys). A sample whose key is not in its shard's file gets `None` (never dropped: the collator counts it
    as a "concepts" skip).
    """
    missing = missing_concepts_files(concepts_dir, shards)
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise FileNotFoundError(
            f"{len(missing)} of {len(shards)} shards have no concepts file in {concepts_dir}: {shown}. Run "
            f"`concept-clip-extract --input <the shards> --output_dir {concepts_dir}` (it resumes), then "
            "`--merge` to check."
        )
    digest = hashlib.sha256()
    for shard in shards:
        path = concepts_file(concepts_dir, shard)
        check_unique_keys(f"{path} (the concepts of {shard})", read_concepts_file_keys(path), what="rows")
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    function = ShardConceptsJoin(str(Path(concepts_dir).resolve()), column, digest.hexdigest())
    feature = datasets.Sequence(datasets.Value("string"))
    if isinstance(dataset, IterableDataset):
        features = dataset.features.copy() if dataset.features is not None else None
        if features is not None:
            features[column] = feature
        return dataset.map(function, batched=True, features=features)
    # `map` would write every image again into a new cache file: compute the one new column and attach it.
    arrow_type = pa.list_(pa.string())
    keys = dataset.select_columns(["__url__", "__key__"])
    values, shard_keys = [], _ShardKeys()
    for batch in keys.iter(batch_size=10_000):
        shard_keys.add(batch["__url__"], batch["__key__"])
        values.append(pa.array(function(batch)[column], arrow_type))
    shard_keys.check()
    fingerprint = Hasher.hash((dataset._fingerprint, function))
    return dataset.add_column(
        column, pa.chunked_array(values, arrow_type), new_fingerprint=fingerprint, feature=feature
    )


class _ShardKeys:
    """The keys of the samples of one shard after the other (samples arrive shard by shard), each shard's checked
    for repeats ([`check_unique_keys`]) when the next shard begins and at the end."""

    def __init__(self):
        self.url: str | None = None
        self.keys: list[str] = []

    def add(self, urls: list[str], keys: list[str]) -> None:
        for url, key in zip(urls, keys):
            if url != self.url:
                self.check()
                self.url, self.keys = url, []
            self.keys.append(key)

    def check(self) -> None:
        if self.url is not None:
            check_unique_keys(self.url, self.keys)


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
