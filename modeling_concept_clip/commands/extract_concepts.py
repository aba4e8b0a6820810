"""`concept-clip-extract`: the concepts of every caption of a data set, written resumably, on one machine or many.

Two kinds of input:

- **One table**: a JSON Lines (`.jsonl`/`.json`), CSV or parquet file, a folder of parquet files, or a `datasets`
  folder saved with `save_to_disk`. The same rows, in order, are written with a `concepts` column as numbered
  chunks (`part-00000.jsonl` or `.parquet`, `--chunk_size` rows each). Relative image paths (column
  `--image_column`, default `image` or `file_name`) are rewritten relative to `--output_dir`, so the output
  trains as it is.
- **Shards**: WebDataset tar shards or img2dataset's per-shard parquet files, named by a brace pattern or a glob
  (`'cc3m/{00000..00331}.tar'`). Each shard gets one concepts file, `<output_dir>/<shard name>.parquet` with the
  columns `__key__` and `concepts`, which training joins to the shard's samples (`--concepts_dir`).

```
output_dir/
  _run.json                the settings of the run (a rerun must match them, or pass --overwrite)
  part-00000.jsonl         a chunk (one table) or 00042.parquet (shard 00042), written to a temporary name and renamed
  part-00000.stats.json    the chunk or shard is finished (written after its data); its counts
  00043.error.json         why shard 00043 failed (missing, corrupt, undecodable); removed when a rerun succeeds
  summary.json             totals over every finished chunk or shard
```

A killed run never leaves a half file, and a rerun skips every finished chunk or shard. `--num_shards N
--shard_index I` runs job I of N (a SLURM array task, a Kubernetes indexed job): the chunks or shards are split
into N contiguous blocks as `datasets.Dataset.shard` splits rows, so N jobs with no coordinator cover every one
exactly once, all writing to one `--output_dir`. `--merge` then checks that every chunk or shard is finished,
names the missing ones (exit status 1) and writes `summary.json`.

Bad input: a row whose caption is missing, not a string, empty or longer than `--max_caption_chars` gets an
empty concept list and is counted by reason. A file that is not valid `--encoding` fails at once, naming the line;
a JSON Lines line that is not a JSON object fails at once, naming the lines, unless `--skip_invalid_lines` skips
them (counted, listed in the stats); a `--caption_column` that no row has fails at once, naming the columns.
A shard that is missing, truncated or undecodable is reported by name and the others go on; the exit status is
then 1.

The extraction settings are the fields of `ConceptExtractorConfig` (`--mode`, `--max_concepts`, ...).

Example:

```bash
concept-clip-extract --input captions.jsonl --output_dir outputs/concepts
concept-clip-extract --input 'cc3m/{00000..00331}.tar' --output_dir cc3m-concepts --num_shards 8 --shard_index 0
concept-clip-extract --input 'cc3m/{00000..00331}.tar' --output_dir cc3m-concepts --merge
```
"""

import functools
import glob
import json
import logging
import os
import socket
import sys
import tarfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from modeling_concept_clip.concepts import (
    EXTRACTION_RULES_VERSION,
    INVALID_REASONS,
    ConceptExtractor,
    ConceptExtractorConfig,
    SpacyModelNotFoundError,
    check_caption,
    clean_caption,
    spacy_model_fingerprint,
)
from modeling_concept_clip.concepts.config import WORD_LIST_FIELDS
from modeling_concept_clip.concepts.readers import (
    InputFileError,
    caption_value,
    read_csv_rows,
    read_json_lines,
    read_parquet_captions,
    read_tar_captions,
    scan_text_file,
)
from modeling_concept_clip.concepts.shards import (
    KEY_COLUMN,
    SHARD_SUFFIXES,
    check_unique_names,
    expand_pattern,
    is_pattern,
    partition,
    shard_name,
)

logger = logging.getLogger(__name__)

RUN_FILE = "_run.json"
SUMMARY_FILE = "summary.json"
# Settings that change what a chunk or shard file contains: a rerun with other values cannot reuse finished ones.
_RUN_KEYS = (
    "input",
    "input_format",
    "split",
    "caption_column",
    "caption_key",
    "key_column",
    "image_column",
    "output_column",
    "output_format",
    "chunk_size",
    "encoding",
)
# Extractor settings that change the speed, not the output.
_NEUTRAL_SETTINGS = ("n_process", "batch_size", "min_captions_per_process", "start_method", "fast_pos")
_IMAGE_COLUMNS = ("image", "file_name")
# What a truncated or damaged shard raises while it is read.
_SHARD_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, pa.ArrowException, InputFileError)


@dataclass
class ExtractConceptsArguments:
    """Input and output of `concept-clip-extract` (the extraction settings are `ConceptExtractorConfig`)."""

    input: str = field(
        metadata={
            "help": "Captions: a .jsonl/.json (JSON Lines), .csv or .parquet file, a folder of .parquet files, a "
            "`datasets` folder saved with save_to_disk; or shards: WebDataset .tar files or img2dataset's per-shard "
            "parquet files, as a brace pattern or a glob ('cc3m/{00000..00331}.tar', quoted)."
        }
    )
    output_dir: str = field(metadata={"help": "Folder for the chunk or shard files, their stats and summary.json."})
    caption_column: str | None = field(
        default=None,
        metadata={
            "help": "Column, JSON key or tar member holding the captions (default: caption; txt for tar shards)."
        },
    )
    caption_key: str | None = field(
        default=None,
        metadata={
            "help": "A key inside the caption column's JSON (e.g. --caption_column json --caption_key caption)."
        },
    )
    key_column: str = field(
        default="key", metadata={"help": "Parquet shards: the column of the sample keys (img2dataset: key)."}
    )
    image_column: str | None = field(
        default=None,
        metadata={
            "help": "One table: the column of relative image paths, rewritten relative to --output_dir "
            "(default: image or file_name when present)."
        },
    )
    output_column: str = field(default="concepts", metadata={"help": "Name of the added column."})
    input_format: Literal["auto", "jsonl", "csv", "parquet", "datasets", "webdataset"] = field(
        default="auto", metadata={"help": "Input format; 'auto' guesses from the path."}
    )
    split: str | None = field(default=None, metadata={"help": "Split to read from a saved DatasetDict."})
    output_format: Literal["auto", "jsonl", "parquet"] = field(
        default="auto",
        metadata={"help": "One table: 'auto' is parquet for parquet/datasets input, jsonl for jsonl/csv input."},
    )
    chunk_size: int = field(default=100_000, metadata={"help": "One table: rows per output chunk."})
    encoding: str = field(default="utf-8", metadata={"help": "Encoding of JSON Lines and CSV input."})
    skip_invalid_lines: bool = field(
        default=False,
        metadata={"help": "Skip JSON Lines lines that are not JSON objects (counted) instead of failing."},
    )
    num_shards: int = field(default=1, metadata={"help": "Split the work into this many independent jobs."})
    shard_index: int = field(default=0, metadata={"help": "The job to run, in [0, --num_shards - 1]."})
    merge: bool = field(
        default=False,
        metadata={
            "help": "Extract nothing: check every chunk or shard is finished, name the missing ones, summarise."
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Delete earlier results in output_dir and start over."})
    progress_every: int = field(
        default=20_000, metadata={"help": "Captions per extraction call, i.e. per progress bar update."}
    )
    disable_progress_bar: bool = field(default=False, metadata={"help": "No progress bar."})

    def __post_init__(self) -> None:
        for name in ("chunk_size", "progress_every", "num_shards"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"--shard_index must be in [0, {self.num_shards - 1}], got {self.shard_index}.")
        if self.output_column in (self.caption_column, "caption" if self.caption_column is None else None):
            raise ValueError("--output_column must differ from --caption_column.")
        if self.overwrite and (self.num_shards > 1 or self.merge):
            raise ValueError("--overwrite deletes every job's results: not with --num_shards > 1 or --merge.")


def _int_or_none(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def build_parser() -> HfArgumentParser:
    """The parser of `ExtractConceptsArguments` and `ConceptExtractorConfig`."""
    parser = HfArgumentParser((ExtractConceptsArguments, ConceptExtractorConfig))
    # HfArgumentParser parses `int | None` as int and knows no tuple fields: `--max_concepts none` and
    # `--generic_nouns top bottom` (nothing after the flag: an empty list).
    for action in parser._actions:
        if action.dest in ("max_concepts", "n_process"):
            action.type = _int_or_none
        elif action.dest in WORD_LIST_FIELDS:
            action.type, action.nargs = str, "*"
    return parser


# ---------------------------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------------------------


def detect_format(path: str) -> str:
    """The input format of `path` from its extension or folder contents."""
    p = Path(path)
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists():
            return "datasets"
        if any(p.glob("*.parquet")):
            return "parquet"
        raise ValueError(f"{path} is a folder but neither a saved `datasets` folder nor a folder of .parquet files.")
    suffix = p.suffix.lower()
    formats = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
    if suffix not in formats:
        raise ValueError(f"Cannot tell the format of {path}; pass --input_format.")
    return formats[suffix]


@dataclass
class _Chunk:
    """One unit of work: a chunk of one table (python rows or an Arrow table) or one shard (keys and captions)."""

    index: int
    name: str
    rows: list[dict[str, Any]] | None = None
    table: pa.Table | None = None
    captions: list[Any] | None = None  # shards: the captions, beside a table of their keys
    invalid_json_lines: list[int] = field(default_factory=list)
    skipped_rows: int = 0

    @property
    def num_rows(self) -> int:
        return self.table.num_rows if self.table is not None else len(self.rows or [])


@dataclass
class _Source:
    """What `--input` names: one table cut into chunks, or a list of shards (one unit each)."""

    input_format: str
    unit_names: list[str]
    shards: list[str] | None = None
    table: pa.Table | None = None
    columns: list[str] = field(default_factory=list)
    rows: int = 0
    invalid_lines: list[int] = field(default_factory=list)


def _chunk_name(index: int) -> str:
    return f"part-{index:05d}"


def _open_source(args: ExtractConceptsArguments) -> _Source:
    """Find the input, check it can be read as it is (encoding, JSON, the caption column), and list its units."""
    if is_pattern(args.input) or args.input_format == "webdataset" or args.input.endswith(".tar"):
        shards = expand_pattern(args.input)
        if not shards:
            raise FileNotFoundError(f"No file matches --input {args.input!r}.")
        kinds = {Path(shard).suffix for shard in shards}
        if len(kinds) != 1 or not kinds <= set(SHARD_SUFFIXES):
            raise ValueError(f"--input {args.input!r} must name .tar or .parquet shards of one kind (found {kinds}).")
        check_unique_names(shards)
        return _Source(
            input_format="webdataset" if kinds == {".tar"} else "parquet_shards",
            unit_names=[shard_name(shard) for shard in shards],
            shards=shards,
        )
    if not os.path.exists(args.input):
        raise FileNotFoundError(f"--input {args.input} does not exist.")
    input_format = detect_format(args.input) if args.input_format == "auto" else args.input_format
    source = _Source(input_format=input_format, unit_names=[])
    if input_format in ("jsonl", "csv"):
        scan = scan_text_file(args.input, input_format, args.encoding)
        source.rows, source.columns, source.invalid_lines = scan.rows, scan.columns, scan.invalid_lines
        lines = scan.rows + len(scan.invalid_lines)
        if scan.invalid_lines and not args.skip_invalid_lines:
            shown = ", ".join(map(str, scan.invalid_lines[:20])) + (" ..." if len(scan.invalid_lines) > 20 else "")
            raise InputFileError(
                f"{args.input}: {len(scan.invalid_lines)} line(s) are not JSON objects (line {shown}). Fix or delete "
                "them, or pass --skip_invalid_lines to skip them (counted in the stats and summary.json)."
            )
    else:
        source.table = _load_table(args, input_format)
        source.columns = source.table.column_names
        source.rows = lines = source.table.num_rows
    if not lines:
        raise InputFileError(f"{args.input} has no rows.")
    source.unit_names = [_chunk_name(i) for i in range(-(-lines // args.chunk_size))]
    return source


def _default_caption_column(input_format: str) -> str:
    return "txt" if input_format == "webdataset" else "caption"


def _missing_column_error(column: str, where: str, columns: list[str]) -> ValueError:
    return ValueError(
        f"No row of {where} has the caption column {column!r} (columns: {', '.join(map(str, columns)) or 'none'}); "
        "pass --caption_column."
    )


def _load_table(args: ExtractConceptsArguments, input_format: str) -> pa.Table:
    if input_format == "parquet":
        return pq.read_table(args.input, memory_map=True)
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(args.input)
    if isinstance(dataset, DatasetDict):
        if args.split is None:
            raise ValueError(f"{args.input} holds splits {list(dataset)}: pass --split.")
        dataset = dataset[args.split]
    if dataset._indices is not None:  # a select()/shuffle() view: materialise the row order
        dataset = dataset.flatten_indices()
    return dataset.data.table


def _iter_table_chunks(args: ExtractConceptsArguments, source: _Source) -> Iterator[_Chunk]:
    """Every chunk of one table, in order. JSON Lines chunks count lines (valid or not), so reruns cut alike."""
    if source.table is not None:
        for index, start in enumerate(range(0, source.table.num_rows, args.chunk_size)):
            yield _Chunk(index, _chunk_name(index), table=source.table.slice(start, args.chunk_size))
        return
    if source.input_format == "csv":
        rows = ((None, row) for row in read_csv_rows(args.input, args.encoding))
    else:
        rows = read_json_lines(args.input, args.encoding)
    chunk = _Chunk(0, _chunk_name(0), rows=[])
    lines = 0
    for line_no, row in rows:
        if row is None:
            chunk.invalid_json_lines.append(line_no)
        else:
            chunk.rows.append(row)
        lines += 1
        if lines == args.chunk_size:
            yield chunk
            chunk = _Chunk(chunk.index + 1, _chunk_name(chunk.index + 1), rows=[])
            lines = 0
    if lines:
        yield chunk


def _load_shard(args: ExtractConceptsArguments, source: _Source, index: int) -> _Chunk:
    """The keys and captions of shard `index` (errors of a damaged shard propagate)."""
    path = source.shards[index]
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    if source.input_format == "webdataset":
        shard = read_tar_captions(path, args.caption_column, args.caption_key)
    else:
        shard = read_parquet_captions(path, args.caption_column, args.caption_key, args.key_column)
    if shard.keys and args.caption_column not in shard.members:
        raise _missing_column_error(args.caption_column, path, list(shard.members))
    keys = pa.table({KEY_COLUMN: pa.array(shard.keys, pa.string())})
    return _Chunk(index, shard_name(path), table=keys, captions=shard.captions, skipped_rows=shard.skipped_rows)


def _rebase_image_paths(chunk: _Chunk, column: str | None, input_dir: str, output_dir: str) -> None:
    """Rewrite relative image paths, relative to the input file's folder, to be relative to the output folder."""
    if column is None:
        return

    def rebase(value: Any) -> Any:
        if not isinstance(value, str) or not value or os.path.isabs(value) or "://" in value:
            return value
        return os.path.relpath(os.path.join(input_dir, value), output_dir)

    if chunk.rows is not None:
        for row in chunk.rows:
            if column in row:
                row[column] = rebase(row[column])
    elif chunk.table is not None and pa.types.is_string(chunk.table.schema.field(column).type):
        values = pa.array([rebase(v) for v in chunk.table.column(column).to_pylist()], pa.string())
        chunk.table = chunk.table.set_column(chunk.table.column_names.index(column), column, values)


def _image_column(args: ExtractConceptsArguments, source: _Source) -> str | None:
    """The column whose relative image paths are rebased (one table, file input only)."""
    if source.shards is not None or source.input_format == "datasets":
        return None
    if args.image_column is not None:
        if args.image_column not in source.columns:
            raise ValueError(
                f"--image_column {args.image_column!r} is not in {args.input} (columns: {source.columns})."
            )
        return args.image_column
    return next((column for column in _IMAGE_COLUMNS if column in source.columns), None)


# ---------------------------------------------------------------------------------------------------------------
# Processing and output
# ---------------------------------------------------------------------------------------------------------------


def _temporary(path: Path) -> Path:
    # Host and pid: jobs on several machines may share one output folder.
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = _temporary(path)
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _write_chunk(path: Path, chunk: _Chunk, concepts: list[list[str]], output_column: str, fmt: str) -> None:
    tmp = _temporary(path)
    if chunk.table is not None:
        column = pa.array(concepts, type=pa.list_(pa.string()))
        table = chunk.table
        if output_column in table.column_names:
            table = table.set_column(table.column_names.index(output_column), output_column, column)
        else:
            table = table.append_column(output_column, column)
        if fmt == "parquet":
            pq.write_table(table, tmp)
        else:
            _write_jsonl(tmp, table.to_pylist())
    else:
        rows = [{**row, output_column: value} for row, value in zip(chunk.rows or [], concepts)]
        if fmt == "parquet":
            try:
                pq.write_table(pa.Table.from_pylist(rows), tmp)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
                tmp.unlink(missing_ok=True)
                raise ValueError(
                    f"Rows of chunk {chunk.index} do not fit one parquet schema ({error}); use jsonl."
                ) from error
        else:
            _write_jsonl(tmp, rows)
    os.replace(tmp, path)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _chunk_captions(chunk: _Chunk, args: ExtractConceptsArguments) -> list[Any]:
    if chunk.captions is not None:
        return chunk.captions
    if chunk.table is not None:
        values = chunk.table.column(args.caption_column).to_pylist()
    else:
        values = [row.get(args.caption_column) for row in chunk.rows or []]
    return [caption_value(value, args.caption_key) for value in values]


def _process_chunk(
    chunk: _Chunk,
    args: ExtractConceptsArguments,
    extractor: ConceptExtractor,
    progress: tqdm,
) -> tuple[list[list[str]], dict[str, Any]]:
    captions = _chunk_captions(chunk, args)
    max_chars = extractor.config.max_caption_chars
    reasons = Counter()
    concepts: list[list[str]] = []
    fallbacks = 0
    for start in range(0, len(captions), args.progress_every):
        part = captions[start : start + args.progress_every]
        for caption in part:
            problem = check_caption(caption, max_chars)
            if problem is not None:
                reasons[problem] += 1
        extracted = extractor.extract(part, on_invalid="empty")
        for caption, found in zip(part, extracted):
            if found and len(found) == 1 and isinstance(caption, str) and found[0] == clean_caption(caption):
                fallbacks += 1
        concepts.extend(extracted)
        progress.update(len(part) + (len(chunk.invalid_json_lines) if start == 0 else 0))
    stats = {
        "chunk": chunk.index,
        "rows": len(captions),
        "invalid": {reason: reasons.get(reason, 0) for reason in INVALID_REASONS},
        "invalid_json": len(chunk.invalid_json_lines),
        "invalid_json_lines": chunk.invalid_json_lines[:100],
        "not_downloaded": chunk.skipped_rows,
        "fallback_captions": fallbacks,
        "concepts": sum(len(found) for found in concepts),
    }
    return concepts, stats


def _check_run_file(output_dir: Path, run: dict[str, Any], overwrite: bool, write: bool = True) -> None:
    run_file = output_dir / RUN_FILE
    if overwrite:
        # What earlier runs wrote: chunks, and the files of every name that has a stats or error record.
        names = {
            path.name.rsplit(".", 2)[0]
            for pattern in ("*.stats.json", "*.error.json")
            for path in output_dir.glob(pattern)
        }
        for path in [*output_dir.glob("part-*"), *(p for n in names for p in output_dir.glob(f"{glob.escape(n)}.*"))]:
            path.unlink(missing_ok=True)
        (output_dir / SUMMARY_FILE).unlink(missing_ok=True)
    elif run_file.exists():
        previous = json.loads(run_file.read_text(encoding="utf-8"))
        changed = sorted(key for key in run.keys() | previous.keys() if previous.get(key) != run.get(key))
        if changed:
            raise ValueError(
                f"{output_dir} holds results of a run with other settings ({', '.join(changed)}); "
                "use another --output_dir or pass --overwrite."
            )
    if write:
        _atomic_write_bytes(run_file, json.dumps(run, indent=2, sort_keys=True).encode("utf-8"))


def _unit_paths(output_dir: Path, name: str, suffix: str) -> tuple[Path, Path, Path]:
    """The data file, the stats file (the "finished" marker) and the error record of one chunk or shard."""
    return output_dir / f"{name}{suffix}", output_dir / f"{name}.stats.json", output_dir / f"{name}.error.json"


def run_extraction(args: ExtractConceptsArguments, config: ConceptExtractorConfig | None = None) -> dict[str, Any]:
    """Run (or with `--merge`, check) the extraction described by `args`; returns the summary (also written to
    summary.json). Shards that fail are listed in `summary["failed"]`, unfinished ones in `summary["missing"]`."""
    config = config if config is not None else ConceptExtractorConfig()
    source = _open_source(args)
    shard_mode = source.shards is not None
    args = replace(args, caption_column=args.caption_column or _default_caption_column(source.input_format))
    if not shard_mode and args.caption_column not in source.columns:
        raise _missing_column_error(args.caption_column, args.input, source.columns)
    output_format = args.output_format
    if shard_mode:
        output_format = "parquet"
    elif output_format == "auto":
        output_format = "parquet" if source.input_format in ("parquet", "datasets") else "jsonl"
    suffix = f".{output_format}"
    model = spacy_model_fingerprint(config.spacy_model)  # fails early, with the install hint
    image_column = _image_column(args, source)

    output_dir = Path(args.output_dir)
    if shard_mode and any(Path(s).resolve().parent == output_dir.resolve() for s in source.shards):
        raise ValueError(f"--output_dir {output_dir} holds the input shards: write the concepts to another folder.")
    output_dir.mkdir(parents=True, exist_ok=True)
    run = {key: getattr(args, key) for key in _RUN_KEYS}
    run.update(input=os.path.abspath(args.input), input_format=source.input_format, output_format=output_format)
    run.update(image_column=image_column)
    run.update(spacy_model=model, rules_version=EXTRACTION_RULES_VERSION)
    run.update({f"extractor.{key}": value for key, value in config.to_dict().items() if key not in _NEUTRAL_SETTINGS})
    _check_run_file(output_dir, json.loads(json.dumps(run)), args.overwrite, write=not args.merge)
    if args.merge:
        return _finish(output_dir, run, source, suffix, {}, 0, 0, 0, 0.0)

    owned = partition(len(source.unit_names), args.num_shards, args.shard_index)
    for name in (source.unit_names[i] for i in owned):  # temporary files of this job's units, left by a killed run
        for stale in output_dir.glob(f".{name}.*.tmp-*"):
            stale.unlink()
    total = None
    if not shard_mode:  # the lines of this job's chunks
        total = (
            min(source.rows + len(source.invalid_lines), owned.stop * args.chunk_size) - owned.start * args.chunk_size
        )
    input_dir = os.path.dirname(os.path.abspath(args.input))
    failed: dict[str, str] = {}
    processed_rows = skipped = processed = 0
    start_time = time.perf_counter()
    progress = tqdm(total=total, unit=" captions", unit_scale=True, disable=args.disable_progress_bar)
    with ConceptExtractor(config) as extractor:
        for index, load in _units(args, source, owned):
            part_path, stats_path, error_path = _unit_paths(output_dir, source.unit_names[index], suffix)
            if stats_path.exists() and part_path.exists():
                skipped += 1
                if not shard_mode:  # a chunk is read anyway (the file is read in order); a shard is not
                    progress.update(load().num_rows + len(load().invalid_json_lines))
                continue
            unit_start = time.perf_counter()
            try:
                chunk = load()
            except _SHARD_ERRORS as error:
                failed[source.shards[index]] = reason = f"{type(error).__name__}: {error}"
                logger.error("Shard %s failed: %s", source.shards[index], reason)
                _atomic_write_bytes(error_path, json.dumps({"shard": source.shards[index], "error": reason}).encode())
                continue
            _rebase_image_paths(chunk, image_column, input_dir, str(output_dir.resolve()))
            concepts, stats = _process_chunk(chunk, args, extractor, progress)
            _write_chunk(part_path, chunk, concepts, args.output_column, output_format)
            stats.update(file=part_path.name, seconds=round(time.perf_counter() - unit_start, 3))
            if shard_mode:
                stats.update(shard=source.shards[index])
            # The stats file is the "finished" marker, so it is written last.
            _atomic_write_bytes(stats_path, json.dumps(stats, indent=2).encode("utf-8"))
            error_path.unlink(missing_ok=True)
            processed_rows += stats["rows"] + stats["invalid_json"]
            processed += 1
    progress.close()
    seconds = time.perf_counter() - start_time
    return _finish(output_dir, run, source, suffix, failed, processed_rows, processed, skipped, seconds)


def _units(
    args: ExtractConceptsArguments, source: _Source, owned: range
) -> Iterator[tuple[int, Callable[[], _Chunk]]]:
    """This job's chunks or shards in order, as `(index, load)`. A shard is read only when `load` is called; the
    chunks of one table come from one pass over it."""
    if source.shards is not None:
        for index in owned:
            yield index, functools.partial(_load_shard, args, source, index)
        return
    for chunk in _iter_table_chunks(args, source):
        if chunk.index in owned:
            yield chunk.index, lambda chunk=chunk: chunk


def _finish(
    output_dir: Path,
    run: dict[str, Any],
    source: _Source,
    suffix: str,
    failed: dict[str, str],
    processed_rows: int,
    processed: int,
    skipped: int,
    seconds: float,
) -> dict[str, Any]:
    """Totals over every finished chunk or shard, including those of earlier runs and other jobs; the unfinished
    ones by name (with the reason a job recorded, if any)."""
    missing: dict[str, str] = {}
    all_stats = []
    for index, name in enumerate(source.unit_names):
        part_path, stats_path, error_path = _unit_paths(output_dir, name, suffix)
        if stats_path.exists() and part_path.exists():
            all_stats.append(json.loads(stats_path.read_text(encoding="utf-8")))
            continue
        label = source.shards[index] if source.shards is not None else name
        reason = json.loads(error_path.read_text())["error"] if error_path.exists() else "not extracted yet"
        missing[label] = failed.get(label, reason)
    invalid = {reason: sum(s["invalid"][reason] for s in all_stats) for reason in INVALID_REASONS}
    rows = sum(s["rows"] for s in all_stats)
    unit = "shards" if source.shards is not None else "chunks"
    summary = {
        "output_dir": str(output_dir),
        "files": [s["file"] for s in all_stats],
        "rows": rows,
        "rows_with_concepts": rows - sum(invalid.values()),
        "invalid_rows": invalid,
        "invalid_json_lines": sum(s["invalid_json"] for s in all_stats),
        "not_downloaded": sum(s.get("not_downloaded", 0) for s in all_stats),
        # Captions whose only concept is the caption itself: the fallback, or a caption that is one noun phrase.
        "fallback_captions": sum(s["fallback_captions"] for s in all_stats),
        "concepts": sum(s["concepts"] for s in all_stats),
        unit: {"total": len(all_stats), "processed_now": processed, "skipped_finished": skipped},
        "failed": failed,
        "missing": missing,
        "seconds": round(seconds, 2),
        "captions_per_second_this_run": round(processed_rows / seconds, 1) if processed_rows and seconds else None,
        "spacy_model": run["spacy_model"],
        "mode": run["extractor.mode"],
    }
    _atomic_write_bytes(output_dir / SUMMARY_FILE, json.dumps(summary, indent=2).encode("utf-8"))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point of `concept-clip-extract`; returns the process exit code (1: an error, or shards failed or
    missing)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = build_parser()
    try:
        args, config = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:  # the dataclasses' checks read as argument errors
        parser.error(str(error))
    try:
        summary = run_extraction(args, config)
    except (ValueError, FileNotFoundError, SpacyModelNotFoundError) as error:
        print(f"concept-clip-extract: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    problems = summary["missing"] if args.merge else summary["failed"]
    if problems:
        what = "not finished" if args.merge else "failed (a rerun retries them)"
        print(f"concept-clip-extract: {len(problems)} {what}:", file=sys.stderr)
        for name, reason in sorted(problems.items()):
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
