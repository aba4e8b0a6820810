"""The training and validation data of one process: datasets, concepts, collator, data loaders, lockstep steps.

A dataset with a length (files, `save_to_disk` folders, Hub datasets) is read through Accelerate's data loaders:
seeded shuffling, each process its share of each epoch, resumable with `skip_first_batches`. A stream
(`--streaming`) is split between processes by `split_stream` (whole shards per process whenever there are at least
as many shards as processes, otherwise every n-th row) and shuffled in a buffer; a resumed run reads the same
epoch's stream again and skips the rows it had already used, so it continues at the exact row
(`IterableDataset.state_dict()` would lose the shuffle buffer's content). With data-loader workers, each worker
reads its own shards, and the loop counts the batches of each worker (`TrainState.stream_worker_batches`), so that
a resumed run's workers skip exactly their own and take their turns in the same order (`_StreamBatches`).

Processes step in lockstep (`lockstep`): every step, each process says whether it has a batch and whether that
batch has rows (the collator drops bad rows). No process with rows: every process skips the step. Some: a process
without rows takes part with a batch of zero rows (`Loaders.empty_batch`), because the others wait for it in the
loss's gathers and the gradient reduction. So a global batch is the union of the processes' valid rows, exactly as
one process would see it, and an epoch ends when every process has read its share. Each step is known to be the
epoch's last one with rows before it is trained (one step of look-ahead), so that it can end the gradient
accumulation with the rows there are.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from accelerate import Accelerator
from datasets import IterableDataset
from datasets.distributed import split_dataset_by_node
from PIL import Image
from torch.utils.data import DataLoader, get_worker_info

from ..collator import SKIP_REASONS, ConceptCollator, SkippedRow
from ..concepts import ConceptExtractorConfig, add_concepts_column
from ..data import load_image_text_dataset, resolve_columns
from .arguments import Arguments, DataArguments, ModelArguments
from .engines import ProcessSums
from .state import TrainState

logger = logging.getLogger(__name__)


def load_split(data_args: DataArguments, model_args: ModelArguments, split: str):
    """`(dataset, image_root)` of the training or validation split."""
    if split == "train":
        sources = dict(data_file=data_args.train_file, data_dir=data_args.train_dir)
        if data_args.dataset_name:
            sources = dict(dataset_name=data_args.dataset_name, dataset_config_name=data_args.dataset_config_name)
        if data_args.concepts_dir:  # load_image_text_dataset refuses it for anything but tar shards
            sources.update(concepts_dir=data_args.concepts_dir, concepts_column=data_args.concepts_column)
    else:
        sources = dict(data_file=data_args.validation_file, data_dir=data_args.validation_dir)
    return load_image_text_dataset(
        **sources, split=split, streaming=data_args.streaming, cache_dir=model_args.cache_dir
    )


def with_concepts(dataset, data_args: DataArguments, caption_column: str, accelerator: Accelerator):
    """Return the dataset with a concepts column, extracting it once (cached by `datasets`) when absent."""
    columns = dataset.column_names
    if columns is None or data_args.concepts_column in columns:  # a stream of unknown columns: the collator checks
        return dataset, None
    if isinstance(dataset, IterableDataset):
        raise ValueError(
            f"The streamed dataset has no {data_args.concepts_column!r} column. Extract the concepts once with "
            "`concept-clip-extract` and train on its output (concepts are not extracted inside the data loader)."
        )
    extractor = ConceptExtractorConfig(
        spacy_model=data_args.spacy_model,
        mode=data_args.concept_extraction_mode,
        max_concepts=data_args.max_concepts_per_image,
    )
    with accelerator.main_process_first():
        dataset = add_concepts_column(
            dataset,
            extractor,
            caption_column=caption_column,
            output_column=data_args.concepts_column,
            num_proc=data_args.preprocessing_num_workers,
        )
    return dataset, extractor


def empty_batch(collator: ConceptCollator) -> dict[str, torch.Tensor]:
    """A batch of zero rows with the keys and trailing shapes of `collator`'s batches (made from one blank row)."""
    row = {collator.image_column: Image.new("RGB", (8, 8)), collator.caption_column: "a"}
    if collator.concepts_column is not None:
        row[collator.concepts_column] = ["a"]
    batch = collator([row])
    return {key: value[:0] for key, value in batch.items() if isinstance(value, torch.Tensor)}


def pin_memory(accelerator: Accelerator) -> bool:
    """Batches for an accelerator are collated into pinned memory, so that their copy does not block the host
    (`training_step` copies them with `non_blocking=True`)."""
    return accelerator.device.type != "cpu"


def split_stream(stream: IterableDataset, rank: int, world_size: int) -> IterableDataset:
    """This process's part of `stream`: whole shards whenever there are at least as many shards as processes (each
    process reads only its own shards; parts of different sizes are fine, see `lockstep`), otherwise every
    `world_size`-th row (every process then reads the whole stream and keeps its rows)."""
    if world_size > 1 and stream.num_shards < world_size:
        logger.warning(
            f"The stream has {stream.num_shards} shard(s) for {world_size} processes: every process reads all of it "
            "and keeps every n-th row. Split the data into at least as many files as processes to read each once."
        )
    strategy = "shards" if stream.num_shards >= world_size else "examples"
    return split_dataset_by_node(stream, rank=rank, world_size=world_size, strategy=strategy)


class _StreamBatches(torch.utils.data.IterableDataset):
    """This process's part of a stream as `(worker, rows)` batches of `batch_size` rows, made in each data-loader
    worker from its own shards (`worker` is 0 without workers).

    A data loader takes one batch from each worker in turn, passing over the workers whose part has run out, so
    which worker made the i-th batch depends on where each part ends. A resumed run gets the number of batches each
    worker had made (`skip`): each worker skips its own, and the workers that had made the most (those that had had
    their turn in the interrupted round, or had run out) first give an empty batch, which `Loaders.train_batches`
    drops, so that the turn goes on to the worker whose batch was next.
    """

    def __init__(self, stream: IterableDataset, batch_size: int, skip: list[int]):
        self.stream, self.batch_size, self.skip = stream, batch_size, skip

    def __iter__(self) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        info = get_worker_info()
        worker = info.id if info else 0
        skip = self.skip[worker] if worker < len(self.skip) else 0
        rows = iter(self.stream)  # in a worker, `datasets` gives it its own shards
        if skip and skip == max(self.skip):
            yield worker, []
        rows = itertools.islice(rows, skip * self.batch_size, None)
        while len(batch := list(itertools.islice(rows, self.batch_size))) == self.batch_size:
            yield worker, batch


@dataclass
class _WorkerBatchCollator:
    """The collator's batch of `(worker, rows)` with the worker that made it (`"stream_worker"`); `None` for a
    placeholder without rows."""

    collator: ConceptCollator

    def __call__(self, item: tuple[int, list[dict[str, Any]]]) -> dict[str, Any] | None:
        worker, rows = item
        return {**self.collator(rows), "stream_worker": worker} if rows else None


class IndexedRows(torch.utils.data.Dataset):
    """A map-style dataset's rows as `(index, row)`, so that a row the collator drops is known by its index: a
    resumed run reads the rows it counted as bad again (`loop.recount_bad_rows`)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, dict[str, Any]]:
        return index, self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[int, dict[str, Any]]]:  # one read per batch
        return list(zip(indices, self.dataset.__getitems__(indices)))


@dataclass
class IndexedCollator:
    """`collator` over the rows of `IndexedRows`; each skipped row carries its index in the dataset."""

    collator: ConceptCollator

    def __call__(self, items: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        batch = self.collator([row for _, row in items])
        batch["skipped"] = [replace(row, index=items[row.position][0]) for row in batch["skipped"]]
        return batch


def mean_concepts(dataset, column: str, cap: int, rows: int = 1000) -> float | None:
    """The mean number of concepts (at most `cap` each) of the first `rows` rows of a map-style dataset."""
    if column not in (dataset.column_names or []) or len(dataset) == 0:
        return None
    values = dataset.select_columns([column])[: min(rows, len(dataset))][column]
    lengths = [len(json.loads(v)) if isinstance(v, str) and v.startswith("[") else len(v or []) for v in values]
    return sum(min(length, cap) for length in lengths) / len(lengths)


@dataclass
class Loaders:
    """This process's data loaders.

    Args:
        train: Accelerate's prepared data loader, or (streams) this process's part of the stream.
        validation: a prepared data loader, or this process's part of a validation stream; `None` without one.
        empty_batch: what a process without rows passes to the model in a step where others have rows.
        batches_per_epoch: lockstep steps of one epoch (`None` for a stream).
        rows_per_epoch: rows that all processes read in one epoch (`None` for a stream).
        dataset: the map-style training dataset (`None` for a stream); `len(dataset)` rows.
        concepts_per_image: mean number of concepts of its first 1,000 rows (`None`: a stream, or no concepts).
    """

    accelerator: Accelerator
    train: Any
    validation: Any
    collator: ConceptCollator
    batch_size: int
    num_workers: int
    empty_batch: dict[str, torch.Tensor]
    batches_per_epoch: int | None
    rows_per_epoch: int | None
    dataset: Any = None
    concepts_per_image: float | None = None

    @property
    def streaming(self) -> bool:
        return isinstance(self.train, IterableDataset)

    def train_batches(self, state: TrainState) -> Iterable[dict[str, Any]]:
        """This process's batches of epoch `state.epoch`, after those read before a resume (`state.batches_in_epoch`;
        of a stream: each data-loader worker's, `state.stream_worker_batches`)."""
        # The sampler, or the stream's shard order and buffer, shuffle with seed + epoch.
        self.train.set_epoch(state.epoch)
        skip_batches = state.batches_in_epoch
        if not self.streaming:
            return self.accelerator.skip_first_batches(self.train, skip_batches) if skip_batches else self.train
        skip = self._worker_skips(state) if skip_batches else []
        loader = DataLoader(
            _StreamBatches(self.train, self.batch_size, skip),
            batch_size=None,  # batches of rows from `_StreamBatches`, made in the workers
            collate_fn=_WorkerBatchCollator(self.collator),
            num_workers=self.num_workers,
            pin_memory=pin_memory(self.accelerator),
        )
        return (batch for batch in loader if batch is not None)

    def _worker_skips(self, state: TrainState) -> list[int]:
        """The batches that each of this process's data-loader workers had made before the checkpoint."""
        accelerator, workers = self.accelerator, max(self.num_workers, 1)
        table = state.stream_worker_batches
        if not table:  # a checkpoint of an earlier version: the batches went to the workers in turn
            if workers > 1:
                logger.warning(
                    "The checkpoint has no per-worker batch counts (written by an earlier version): assuming no "
                    "data-loader worker had run out of rows before it."
                )
            return [len(range(worker, state.batches_in_epoch, workers)) for worker in range(workers)]
        if len(table) != accelerator.num_processes or any(len(row) > workers for row in table):
            raise ValueError(
                f"The checkpoint was written while streaming with {len(table)} process(es) and up to "
                f"{max(map(len, table))} data-loader worker(s) each, which split the stream; resume it with "
                f"{len(table)} process(es) and --dataloader_num_workers {max(map(len, table))} to continue at the "
                "exact row."
            )
        return table[accelerator.process_index] + [0] * (workers - len(table[accelerator.process_index]))


def build_loaders(
    accelerator: Accelerator, arguments: Arguments, processor, model_type: str
) -> tuple[Loaders, ConceptExtractorConfig | None]:
    """Datasets (with concepts), collator and data loaders; also the extraction settings when concepts were
    extracted here. The map-style loaders still need `accelerator.prepare` (`loop.prepare_training`)."""
    data_args, args = arguments.data, arguments.training
    # Concepts feed the concept losses, the hard negatives, or both.
    use_concepts = arguments.concept.concept_loss or data_args.hard_negatives != "none"
    train_dataset, image_root = load_split(data_args, arguments.model, "train")
    image_column, caption_column = resolve_columns(train_dataset, data_args.image_column, data_args.caption_column)
    extractor = None
    if use_concepts:
        train_dataset, extractor = with_concepts(train_dataset, data_args, caption_column, accelerator)
    if data_args.max_train_samples is not None:
        if isinstance(train_dataset, IterableDataset):
            train_dataset = train_dataset.take(data_args.max_train_samples)
        else:
            train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))

    collator = ConceptCollator(
        processor,
        image_column=image_column,
        caption_column=caption_column,
        concepts_column=data_args.concepts_column if use_concepts else None,
        image_root=image_root,
        max_concepts_per_image=data_args.max_concepts_per_image,
        pad_to_max_length=model_type == "siglip",
        concept_inputs=arguments.concept.concept_loss,
        hard_negatives=data_args.hard_negatives,
        hard_negative_seed=args.seed,
    )
    batch_size = args.per_device_train_batch_size
    batches_per_epoch = rows_per_epoch = None
    if isinstance(train_dataset, IterableDataset):
        # Shuffled identically on every process, then split: each process reads its own part of the stream.
        train_dataset = train_dataset.shuffle(seed=args.seed, buffer_size=data_args.shuffle_buffer_size)
        train = split_stream(train_dataset, accelerator.process_index, accelerator.num_processes)
    else:
        # Contrastive batches drop the incomplete last global batch (a small batch is a weaker contrastive task).
        batches_per_epoch = len(train_dataset) // (batch_size * accelerator.num_processes)
        if batches_per_epoch == 0:
            raise ValueError(
                f"The training set has {len(train_dataset)} rows, fewer than one global batch "
                f"({batch_size} x {accelerator.num_processes} processes)."
            )
        rows_per_epoch = batches_per_epoch * batch_size * accelerator.num_processes
        train = DataLoader(
            IndexedRows(train_dataset),
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=IndexedCollator(collator),
            num_workers=data_args.dataloader_num_workers,
            pin_memory=pin_memory(accelerator),
        )

    validation = None
    if data_args.validation_file or data_args.validation_dir:
        eval_dataset, eval_root = load_split(data_args, arguments.model, "validation")
        if use_concepts:
            eval_dataset, _ = with_concepts(eval_dataset, data_args, caption_column, accelerator)
        eval_collator = ConceptCollator(**{**collator.__dict__, "image_root": eval_root})
        if isinstance(eval_dataset, IterableDataset):
            eval_dataset = split_stream(eval_dataset, accelerator.process_index, accelerator.num_processes)
        validation = DataLoader(
            eval_dataset,
            batch_size=args.per_device_eval_batch_size,
            collate_fn=eval_collator,
            pin_memory=pin_memory(accelerator),
        )

    loaders = Loaders(
        accelerator=accelerator,
        train=train,
        validation=validation,
        collator=collator,
        batch_size=batch_size,
        num_workers=data_args.dataloader_num_workers,
        empty_batch=empty_batch(collator),
        batches_per_epoch=batches_per_epoch,
        rows_per_epoch=rows_per_epoch,
    )
    if not isinstance(train_dataset, IterableDataset):
        loaders.dataset = train_dataset
        if use_concepts:
            loaders.concepts_per_image = mean_concepts(
                train_dataset, data_args.concepts_column, data_args.max_concepts_per_image
            )
    return loaders, extractor


@dataclass
class Step:
    """One lockstep step of this process.

    Args:
        batch: this process's valid rows, `None` when it has none this step.
        processes_with_rows: how many processes have rows (0: every process skips the step).
        rows: rows read by all processes in this step.
        skipped: rows dropped by all processes in this step, per reason.
        local_skipped: the rows this process dropped (with what was wrong with them).
        last: no later step of these batches has rows (known one step ahead).
        stream_workers: with `stream_workers=True`, the data-loader worker that made each process's batch (-1: the
            process had none).
        hard_negatives: with hard negatives, the valid rows of all processes in this step whose caption got one
            (`"made"`) and got none (`"none"`); zeros without them.
    """

    batch: dict[str, Any] | None
    processes_with_rows: int
    rows: int
    skipped: dict[str, int]
    local_skipped: list[SkippedRow]
    hard_negatives: dict[str, int] = field(default_factory=lambda: {"made": 0, "none": 0})
    last: bool = False
    stream_workers: list[int] | None = None


def _exchange(iterator: Iterator[dict[str, Any]], sums: ProcessSums, stream_workers: bool) -> Step | None:
    """This process's next batch, with what all processes have in this step; `None` when no process has a batch."""
    batch = next(iterator, None)
    local_skipped = batch.pop("skipped") if batch is not None else []
    rows = batch.pop("num_rows") if batch is not None else 0
    worker = batch.pop("stream_worker", -1) if batch is not None else -1
    has_rows = batch is not None and "pixel_values" in batch
    reasons = [sum(row.reason == reason for row in local_skipped) for reason in SKIP_REASONS]
    # The collator makes at most one negative per caption: the captions without one are the rest.
    made = batch["negative_input_ids"].shape[0] if has_rows and "negative_input_ids" in batch else 0
    without = batch["pixel_values"].shape[0] - made if has_rows and "negative_input_ids" in batch else 0
    workers = [0] * sums.num_processes if stream_workers else []  # worker + 1 in this process's slot
    if stream_workers:
        workers[sums.process_index] = worker + 1
    totals = sums([int(batch is not None), int(has_rows), rows, made, without, *reasons, *workers])
    if totals[0] == 0:
        return None
    return Step(
        batch=batch if has_rows else None,
        processes_with_rows=totals[1],
        rows=totals[2],
        skipped=dict(zip(SKIP_REASONS, totals[5 : 5 + len(SKIP_REASONS)])),
        local_skipped=local_skipped,
        hard_negatives={"made": totals[3], "none": totals[4]},
        stream_workers=[slot - 1 for slot in totals[5 + len(SKIP_REASONS) :]] if stream_workers else None,
    )


def lockstep(batches: Iterable[dict[str, Any]], sums: ProcessSums, stream_workers: bool = False) -> Iterator[Step]:
    """This process's batches, one per step of all processes, until every process has read all of its own.

    A process whose batches run out first keeps taking part with none. One integer sum across processes per step,
    made ahead of the steps until a later step with rows is known (so `Step.last` is set before a step is used).
    With `stream_workers`, the sum also says which data-loader worker made each process's batch.
    """
    iterator = iter(batches)
    ahead: list[Step] = []
    while (step := _exchange(iterator, sums, stream_workers)) is not None:
        if step.processes_with_rows and any(earlier.processes_with_rows for earlier in ahead):
            yield from ahead  # a later step has rows
            ahead = []
        ahead.append(step)
    for step in ahead:
        step.last = True
    yield from ahead
