"""Captions out of data files: JSON Lines and CSV read strictly, WebDataset tar shards, img2dataset parquet shards.

A file that cannot be read as it is raises [`InputFileError`], whose message names the file, the line (or the
sample) and the fix. Training reads the same files with `datasets` and reports the same problems the same way
(`modeling_concept_clip.data`), so a file that extraction refuses is never silently accepted by training.

Tar shards are read the way `datasets`' `webdataset` builder reads them (the same `__key__` of every sample: the
member path without its extensions; hidden members skipped), so the keys written by `concept-clip-extract` are
the keys that training sees.
"""

from __future__ import annotations

import csv
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from datasets.packaged_modules.webdataset.webdataset import base_plus_ext

_BLOCK_BYTES = 1 << 24


class InputFileError(ValueError):
    """A data file that cannot be read as it is; the message names the file, the line or sample, and the fix."""


def find_undecodable_line(path: str, encoding: str = "utf-8") -> tuple[int, int] | None:
    """`(line number, offending byte)` of the first line of `path` that is not valid `encoding`, or `None`.

    Reads blocks that end at a line break, so it suits the ASCII-compatible encodings that text data files use
    (UTF-8, Latin-1, cp1252, ...).
    """
    lines_before = 0
    with open(path, "rb") as handle:
        while True:
            block = handle.read(_BLOCK_BYTES)
            if not block:
                return None
            block += handle.readline()
            try:
                block.decode(encoding)
            except UnicodeDecodeError as error:
                return lines_before + block.count(b"\n", 0, error.start) + 1, block[error.start]
            lines_before += block.count(b"\n")


def check_encoding(path: str, encoding: str = "utf-8", fix: str | None = None) -> None:
    """Raise [`InputFileError`] naming the first line of `path` that is not valid `encoding`."""
    found = find_undecodable_line(path, encoding)
    if found is not None:
        line, byte = found
        fix = fix or (
            "Pass the file's encoding with --encoding (e.g. --encoding latin-1), or convert the file to UTF-8, e.g. "
            f"`iconv -f LATIN1 -t UTF-8 {path} > converted{os.path.splitext(path)[1]}`"
        )
        raise InputFileError(f"{path}, line {line}: not valid {encoding} (byte {byte:#04x}). {fix}")


def read_json_lines(path: str, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any] | None]]:
    """`(line number, row)` of every non-blank line; `row` is `None` when the line is not a JSON object."""
    with open(path, encoding=encoding) as handle:
        for line_no, line in enumerate(handle, start=1):
            if line_no == 1:
                line = line.lstrip("\ufeff")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            yield line_no, row if isinstance(row, dict) else None


def read_csv_rows(path: str, encoding: str = "utf-8") -> Iterator[dict[str, Any]]:
    """The rows of a CSV file with a header line, as dicts."""
    # The csv module rejects fields over 128 KiB by default; an absurdly long caption must not stop a run.
    csv.field_size_limit(2**31 - 1)
    with open(path, encoding=encoding, newline="") as handle:
        yield from csv.DictReader(handle)


def csv_header(path: str, encoding: str = "utf-8") -> list[str]:
    """The column names of a CSV file (empty for an empty file)."""
    with open(path, encoding=encoding, newline="") as handle:
        return next(csv.reader(handle), [])


@dataclass
class TextFileScan:
    """What one pass over a JSON Lines or CSV file found."""

    rows: int = 0
    invalid_lines: list[int] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)


def scan_text_file(path: str, input_format: str, encoding: str = "utf-8") -> TextFileScan:
    """Check that `path` decodes and count its rows; JSON Lines: the lines that are not JSON objects and the keys."""
    check_encoding(path, encoding)
    scan = TextFileScan()
    if input_format == "csv":
        scan.columns = csv_header(path, encoding)
        scan.rows = sum(1 for _ in read_csv_rows(path, encoding))
        return scan
    columns: dict[str, None] = {}
    for line_no, row in read_json_lines(path, encoding):
        if row is None:
            scan.invalid_lines.append(line_no)
            continue
        scan.rows += 1
        columns.update(dict.fromkeys(row))
    scan.columns = list(columns)
    return scan


def caption_value(value: Any, caption_key: str | None) -> Any:
    """The caption inside `value`: `value` itself, or its `caption_key` when `value` is a JSON object (or its text)."""
    if caption_key is None:
        return value
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return value.get(caption_key) if isinstance(value, dict) else None


@dataclass
class ShardCaptions:
    """The samples of one shard: their keys, their captions (`None` where absent) and the members seen."""

    keys: list[str] = field(default_factory=list)
    captions: list[Any] = field(default_factory=list)
    members: dict[str, None] = field(default_factory=dict)
    skipped_rows: int = 0  # img2dataset rows whose download failed (they are not in the tar shards)


def read_tar_captions(path: str, caption_member: str = "txt", caption_key: str | None = None) -> ShardCaptions:
    """The `__key__` and caption of every sample of a WebDataset tar shard.

    Samples are grouped as `datasets`' `webdataset` builder groups them. The caption is the text of the member
    with extension `caption_member` (`txt`), or with `caption_key`, that key of the JSON member (`json`).

    Raises:
        InputFileError: a caption is not valid UTF-8, or a key is not unique (named by key): the concepts of a
            sample are joined to it by its key, so two samples with one key would get the same concepts.
        tarfile.TarError, EOFError, OSError: the shard is truncated (no end-of-archive blocks) or not a tar file.
    """
    shard = ShardCaptions()
    sample_members: set[str] = set()  # the members of the current sample
    with tarfile.open(path, mode="r|*") as stream:
        for member in stream:
            if not member.isreg() or os.path.basename(member.name).startswith((".", "__")):
                continue
            key, extension = base_plus_ext(member.name)
            if key is None:
                continue
            if not shard.keys or shard.keys[-1] != key:
                shard.keys.append(key)
                shard.captions.append(None)
                sample_members = set()
            if extension in sample_members:  # `datasets` refuses it too ("Duplicate field")
                raise InputFileError(
                    f"{path}, sample {key!r}: a second {extension} member ({member.name}). Give each sample of a "
                    "shard its own key (the member name without its extensions) and rewrite the shard."
                )
            sample_members.add(extension)
            shard.members[extension] = None
            if extension != caption_member:
                continue
            data = stream.extractfile(member).read()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InputFileError(
                    f"{path}, sample {key!r}: the {extension} member is not valid UTF-8 (byte {data[error.start]:#04x}); "
                    "WebDataset text members are UTF-8: rewrite the shard with its captions encoded as UTF-8."
                ) from None
            shard.captions[-1] = caption_value(text, caption_key)
        # tarfile ends quietly where a truncated archive stops; a complete one ends with two zero blocks.
        size = os.path.getsize(path)
        if size < stream.offset + 2 * tarfile.BLOCKSIZE:
            after = f"after sample {shard.keys[-1]!r}" if shard.keys else "before any sample"
            raise tarfile.ReadError(f"{path} is truncated: it stops at byte {size}, {after}, with no end-of-archive")
    check_unique_keys(path, shard.keys)
    return shard


def check_unique_keys(path: str, keys: list[str], what: str = "samples") -> None:
    """Raise [`InputFileError`] naming the first key that `keys` (of the file `path`) holds twice, with positions.

    WebDataset keys name samples within a shard, and training joins each sample to its concepts by its key: two
    samples with one key would both get the concepts of one of them.
    """
    first: dict[str, int] = {}
    for position, key in enumerate(keys):
        earlier = first.setdefault(key, position)
        if earlier != position:
            count = len(keys) - len(set(keys))
            raise InputFileError(
                f"{path}: {what} {earlier} and {position} have the same key {key!r} ({count} repeated key"
                f"{'s' if count > 1 else ''} in all). Concepts are joined to samples by key: give each sample of a "
                "shard its own key and rewrite the shard."
            )


def read_parquet_captions(
    path: str, caption_column: str, caption_key: str | None = None, key_column: str = "key"
) -> ShardCaptions:
    """Keys and captions of an img2dataset per-shard parquet file (columns `key`, `caption`, `status`, ...).

    Rows whose `status` is not `success` (failed downloads, absent from the tar shards) are left out and counted.
    """
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if key_column not in table.column_names:
        raise ValueError(
            f"{path} has no key column {key_column!r} (columns: {table.column_names}); pass --key_column."
        )
    shard = ShardCaptions(members=dict.fromkeys(table.column_names))
    if "status" in table.column_names:
        downloaded = [status == "success" for status in table.column("status").to_pylist()]
        shard.skipped_rows = downloaded.count(False)
        table = table.filter(downloaded)
    shard.keys = [str(key) for key in table.column(key_column).to_pylist()]
    check_unique_keys(path, shard.keys, what="rows")
    if caption_column not in table.column_names:
        shard.captions = [None] * len(shard.keys)
    else:
        shard.captions = [caption_value(value, caption_key) for value in table.column(caption_column).to_pylist()]
    return shard
