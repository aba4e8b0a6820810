"""The training and validation data of one process: datasets, concepts, collator, data loaders, lockstep steps.

A dataset with a length (files, `save_to_disk` folders, Hub datasets) is read through Accelerate's data loaders:
seeded shuffling, each process its share of each epoch, resumable with `skip_first_batches`. A stream
(`--streaming`) is split between processes with `datasets.distributed.split_dataset_by_node` (whole shards per
process when their number allows it, otherwise every n-th row) and shuffled in a buffer; a resumed run reads the
same epoch's stream again and skips the rows it had already used, so it continues at the exact row
(`IterableDataset.state_dict()` would lose the shuffle buffer's content).

Processes step in lockstep (`lockstep`): every step, each process says whether it has a batch and whether that
batch has rows (the collator drops bad rows). No process with rows: every process skips the step. Some: a process
without rows takes part with a batch of zero rows (`Loaders.empty_batch`), because the others wait for it in the
loss's gathers and the gradient reduction. So a global batch is the union of the processes' valid rows, exactly as
one process would see it, and an epoch ends when every process has read its share.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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


class _ResumedStream(torch.utils.data.IterableDataset):
    """A stream that starts after its first `skip_batches` batches of `batch_size` rows.

    A data loader with workers takes batch i from worker i % num_workers, each worker reading its own part of the
    stream, so each worker skips the rows of the batches it had made.
    """

    def __init__(self, stream: IterableDataset, skip_batches: int, batch_size: int):
        self.stream, self.skip_batches, self.batch_size = stream, skip_batches, batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        workers, index = (worker.num_workers, worker.id) if worker else (1, 0)
        batches = len(range(index, self.skip_batches, workers))
        return itertools.islice(iter(self.stream), batches * self.batch_size, None)


@dataclass
class Loaders:
    """This process's data loaders.

    Args:
        train: Accelerate's prepared data loader, or (streams) this process's part of the stream.
        validation: a prepared data loader, or this process's part of a validation stream; `None` without one.
        empty_batch: what a process without rows passes to the model in a step where others have rows.
        batches_per_epoch: lockstep steps of one epoch (`None` for a stream).
        rows_per_epoch: rows that all processes read in one epoch (`None` for a stream).
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

    @property
    def streaming(self) -> bool:
        return isinstance(self.train, IterableDataset)

    def train_batches(self, epoch: int, skip_batches: int = 0) -> Iterable[dict[str, Any]]:
        """This process's batches of `epoch`, after the first `skip_batches` (read before a resume)."""
        self.train.set_epoch(epoch)  # the sampler, or the stream's shard order and buffer, shuffle with seed + epoch
        if not self.streaming:
            return self.accelerator.skip_first_batches(self.train, skip_batches) if skip_batches else self.train
        stream = _ResumedStream(self.train, skip_batches, self.batch_size) if skip_batches else self.train
        return DataLoader(
            stream, batch_size=self.batch_size, drop_last=True, collate_fn=self.collator, num_workers=self.num_workers
        )


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
        train = split_dataset_by_node(train_dataset, accelerator.process_index, accelerator.num_processes)
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
            train_dataset,
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=collator,
            num_workers=data_args.dataloader_num_workers,
        )

    validation = None
    if data_args.validation_file or data_args.validation_dir:
        eval_dataset, eval_root = load_split(data_args, arguments.model, "validation")
        if use_concepts:
            eval_dataset, _ = with_concepts(eval_dataset, data_args, caption_column, accelerator)
        eval_collator = ConceptCollator(**{**collator.__dict__, "image_root": eval_root})
        if isinstance(eval_dataset, IterableDataset):
            eval_dataset = split_dataset_by_node(eval_dataset, accelerator.process_index, accelerator.num_processes)
        validation = DataLoader(eval_dataset, batch_size=args.per_device_eval_batch_size, collate_fn=eval_collator)

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
        hard_negatives: with hard negatives, the valid rows of all processes in this step whose caption got one
            (`"made"`) and got none (`"none"`); zeros without them.
    """

    batch: dict[str, Any] | None
    processes_with_rows: int
    rows: int
    skipped: dict[str, int]
    local_skipped: list[SkippedRow]
    hard_negatives: dict[str, int]


def lockstep(batches: Iterable[dict[str, Any]], sums: ProcessSums) -> Iterator[Step]:
    """This process's batches, one per step of all processes, until every process has read all of its own.

    A process whose batches run out first keeps taking part with none. One integer sum across processes per step.
    """
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        local_skipped = batch.pop("skipped") if batch is not None else []
        rows = batch.pop("num_rows") if batch is not None else 0
        has_rows = batch is not None and "pixel_values" in batch
        reasons = [sum(row.reason == reason for row in local_skipped) for reason in SKIP_REASONS]
        # The collator makes at most one negative per caption: the captions without one are the rest.
        made = batch["negative_input_ids"].shape[0] if has_rows and "negative_input_ids" in batch else 0
        without = batch["pixel_values"].shape[0] - made if has_rows and "negative_input_ids" in batch else 0
        totals = sums([int(batch is not None), int(has_rows), rows, *reasons, made, without])
        if totals[0] == 0:
            return
        yield Step(
            batch=batch if has_rows else None,
            processes_with_rows=totals[1],
            rows=totals[2],
            skipped=dict(zip(SKIP_REASONS, totals[3 : 3 + len(SKIP_REASONS)])),
            local_skipped=local_skipped,
            hard_negatives={"made": totals[-2], "none": totals[-1]},
        )
