"""Shard sets: brace patterns, the partition of shards over independent jobs, one concepts file per shard.

`concept-clip-extract` writes the concepts of shard `cc3m/00042.tar` to `<output_dir>/00042.parquet` (columns
`__key__` and `concepts`); training finds them there by the same rule ([`concepts_file`]) and joins them to the
shard's samples by `__key__`.
"""

from __future__ import annotations

import functools
import glob
import os
from pathlib import Path

from braceexpand import braceexpand

SHARD_SUFFIXES = (".tar", ".parquet")
KEY_COLUMN = "__key__"


def expand_pattern(pattern: str) -> list[str]:
    """The files a shard pattern names, in order.

    Braces expand first, as in WebDataset and OpenCLIP (`cc3m/{00000..00331}.tar`, `{train,extra}/*.tar`), then
    each alternative with wildcards is globbed (sorted). An alternative without wildcards is kept whether or not it
    exists, so that a missing shard can be named.
    """
    files: list[str] = []
    for alternative in braceexpand(pattern):
        if any(char in alternative for char in "*?["):
            files.extend(sorted(glob.glob(alternative)))
        else:
            files.append(alternative)
    return list(dict.fromkeys(files))


def is_pattern(path: str) -> bool:
    """Whether `path` is a glob or brace pattern rather than one path."""
    return any(char in path for char in "*?[{")


def partition(num_items: int, num_shards: int, index: int) -> range:
    """The items of job `index` out of `num_shards`: the contiguous block `datasets.Dataset.shard` selects.

    The first `num_items % num_shards` jobs get one item more; the blocks of jobs `0..num_shards-1` cover every
    item once, in order, with no coordination between the jobs.
    """
    if num_shards < 1 or not 0 <= index < num_shards:
        raise ValueError(f"--shard_index must be in [0, --num_shards - 1], got {index} of {num_shards}.")
    size, extra = divmod(num_items, num_shards)
    start = size * index + min(index, extra)
    return range(start, start + size + (1 if index < extra else 0))


def shard_name(path: str) -> str:
    """The name of a shard's outputs: its file name without the extension (`cc3m/00042.tar` -> `00042`)."""
    return Path(path.rstrip("/")).stem


def check_unique_names(shards: list[str]) -> None:
    """Two shards with one name would write one concepts file: refuse them."""
    seen: dict[str, str] = {}
    for shard in shards:
        other = seen.setdefault(shard_name(shard), shard)
        if other != shard:
            raise ValueError(f"Shards {other} and {shard} have the same name; their concepts files would collide.")


def concepts_file(concepts_dir: str | os.PathLike, shard: str) -> Path:
    """Where the concepts of `shard` are: `<concepts_dir>/<shard name>.parquet`."""
    return Path(concepts_dir) / f"{shard_name(shard)}.parquet"


def missing_concepts_files(concepts_dir: str | os.PathLike, shards: list[str]) -> list[str]:
    """The shards whose concepts file is not in `concepts_dir`."""
    return [shard for shard in shards if not concepts_file(concepts_dir, shard).is_file()]


def read_concepts_file_keys(path: str | os.PathLike) -> list[str]:
    """The `__key__` column of one concepts file, in order."""
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=[KEY_COLUMN]).column(KEY_COLUMN).to_pylist()


@functools.lru_cache(maxsize=8)
def _read_concepts_file(path: str, mtime_ns: int, column: str) -> dict[str, list[str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=[KEY_COLUMN, column])
    return dict(zip(table.column(KEY_COLUMN).to_pylist(), table.column(column).to_pylist()))


def read_shard_concepts(path: str | os.PathLike, column: str = "concepts") -> dict[str, list[str]]:
    """`{__key__: concepts}` of one concepts file. The last few files read stay in memory: samples arrive shard
    by shard, so each file is read once per pass."""
    path = str(path)
    return _read_concepts_file(path, os.stat(path).st_mtime_ns, column)
