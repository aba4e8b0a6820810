"""The state of a training run that is not in the model, optimizer and scheduler: where it is, what it skipped."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..collator import SKIP_REASONS

STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    """Progress and bad-row counts of a run, saved next to each checkpoint so that a resumed run continues exactly.

    Args:
        completed_steps: optimizer steps done.
        epoch: the epoch in progress.
        batches_in_epoch: batches of that epoch already read (every process reads as many: its own, or nothing
            once its share of the epoch is done); a resumed run skips them.
        train_seconds: time spent in training steps (data, forward, backward, update), without evaluation and
            checkpoints: comparisons at equal wall-clock time use it.
        rows_seen: rows read by all processes together.
        rows_in_epoch: the part of `rows_seen` read in the epoch in progress.
        skipped: rows dropped by the collator, per reason, all processes together.
        stream_worker_batches: streams only: for each process, the batches of the epoch in progress that each of its
            data-loader workers made (the workers read different shards, which may run out at different times); a
            resumed run's workers skip them.
        bad_rows: the index in the training data of each row counted in `skipped`, per reason (map-style data; a
            row read in several epochs is listed as often), up to the last checkpoint: a resumed run reads them
            again and no longer counts those that are good now.
        data_rows: rows of the map-style training data the run started with.
        hard_negatives: with `--hard_negatives`, the captions read (valid rows, all processes) that got a hard
            negative (`"made"`) and that had nothing to swap (`"none"`).
    """

    completed_steps: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    train_seconds: float = 0.0
    rows_seen: int = 0
    rows_in_epoch: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    stream_worker_batches: list[list[int]] = field(default_factory=list)
    bad_rows: dict[str, list[int]] = field(default_factory=dict)
    data_rows: int | None = None
    hard_negatives: dict[str, int] = field(default_factory=lambda: {"made": 0, "none": 0})

    def save(self, folder: str | Path) -> None:
        Path(folder, STATE_FILE).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> TrainState:
        """Read the state of a checkpoint folder (keys this version does not know are an error; missing keys, as in
        checkpoints of earlier versions, keep their defaults)."""
        saved = json.loads(Path(folder, STATE_FILE).read_text())
        known = {f.name for f in fields(cls)}
        if set(saved) - known:
            raise ValueError(f"{Path(folder, STATE_FILE)} has unknown keys {sorted(set(saved) - known)}.")
        state = cls(**saved)
        state.skipped = {**dict.fromkeys(SKIP_REASONS, 0), **state.skipped}
        return state

    def count_rows(
        self,
        rows: int,
        skipped: dict[str, int],
        stream_workers: list[int] | None = None,
        hard_negatives: dict[str, int] | None = None,
    ) -> None:
        """Count a step's rows and skipped rows (all processes), with `stream_workers` (the data-loader worker that
        made each process's batch, -1 for none) its batches per worker, and its captions with and without a hard
        negative."""
        self.rows_seen += rows
        self.rows_in_epoch += rows
        for reason, count in skipped.items():
            self.skipped[reason] += count
        if stream_workers is not None:
            if not self.stream_worker_batches:
                self.stream_worker_batches = [[] for _ in stream_workers]
            for counts, worker in zip(self.stream_worker_batches, stream_workers, strict=True):
                if worker >= 0:
                    counts.extend([0] * (worker + 1 - len(counts)))
                    counts[worker] += 1
        for kind, count in (hard_negatives or {}).items():
            self.hard_negatives[kind] += count

    def start_epoch(self, epoch: int) -> None:
        """Go to the start of `epoch`."""
        self.epoch, self.batches_in_epoch, self.rows_in_epoch, self.stream_worker_batches = epoch, 0, 0, []

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def counts(self) -> dict[str, int]:
        """The counts as they appear in the training log (those of hard negatives only in a run that makes them)."""
        counts = {"rows_seen": self.rows_seen, **{f"skipped_{reason}": n for reason, n in self.skipped.items()}}
        if any(self.hard_negatives.values()):
            counts["hard_negatives"] = self.hard_negatives["made"]
            counts["captions_without_hard_negative"] = self.hard_negatives["none"]
        return counts
