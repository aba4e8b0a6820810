"""The output folder of a run: what a new, an overwriting and a resumed run find there and leave, checked before
the first step.

- A **new run** needs a new or empty folder. A folder that holds anything (another run's model, results,
  checkpoints, log) is refused before the model is loaded, unless `--overwrite_output_dir`, which empties it first
  (never a folder that holds the current directory or a file the run reads).
- A **resumed run** (`--resume_from_checkpoint latest|PATH`, a checkpoint of this folder) continues one history: it
  keeps the checkpoints up to the one it resumes from, the training log up to its step (`TrainingLog`) and the
  trackers' logs, and deletes what belongs to the history it abandons: newer checkpoints and exports, unfinished
  checkpoints (`.partial-N`), and the previous attempt's final model, card and results, which it writes again at its
  end. So `latest`, `--checkpoints_total_limit` and the model card see this run only.
- The folder must be **writable** and hold at least the final model and one checkpoint (free space), also checked
  before the first step.
- **Who writes**: the main process, on one file system that every process sees (the default); with
  `--save_on_each_node` (a disk per node), the first process of each node, on its node's disk. Every process must
  find the same checkpoint to resume from.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from glob import has_magic
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import gather_object

from .arguments import Arguments, TrainingArguments

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
TRAINING_LOG = "train_log.jsonl"
# Errors of the folder checks, raised again on every process (the others would wait for it in the next collective).
_ERRORS = {error.__name__: error for error in (FileExistsError, NotADirectoryError, PermissionError, OSError)}


def writes_files(accelerator: Accelerator, args: TrainingArguments) -> bool:
    """Whether this process writes the run's files: the main process, or each node's first with a disk per node."""
    return accelerator.is_local_main_process if args.save_on_each_node else accelerator.is_main_process


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """The finished checkpoints `checkpoint-N` of a run's folder, by step."""
    root = Path(output_dir) / CHECKPOINTS
    found = [p for p in root.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)] if root.exists() else []
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: str | Path) -> int:
    return int(Path(path).name.rsplit("-", 1)[1])


def find_checkpoint(args: TrainingArguments) -> Path | None:
    """The checkpoint `--resume_from_checkpoint` names: a folder, the newest of `--output_dir` ('latest'), or none."""
    if args.resume_from_checkpoint == "latest":
        found = checkpoint_folders(args.output_dir)
        return found[-1] if found else None
    return Path(args.resume_from_checkpoint) if args.resume_from_checkpoint else None


def _is_within(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _inputs(arguments: Arguments) -> list[Path]:
    """The local files and folders the run reads (models, data, recipes), for the checks before deleting anything."""
    names = [arguments.model.model_name_or_path, arguments.model.config_name, arguments.model.processor_name,
             arguments.data.dataset_name, arguments.data.train_file, arguments.data.train_dir,
             arguments.data.validation_file, arguments.data.validation_dir, arguments.data.concepts_dir,
             arguments.training.eval_benchmarks, arguments.config_path]  # fmt: skip
    paths = []
    for name in filter(None, names):
        parts = Path(name).parts
        fixed = [part for part in parts[: next((i for i, p in enumerate(parts) if has_magic(p) or "{" in p),
                                               len(parts))]]  # fmt: skip
        path = Path(*fixed) if fixed else Path(".")
        if path.exists():
            paths.append(path)
    return paths


def _describe(entries: list[Path]) -> str:
    names = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in entries)
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _empty_for_new_run(output_dir: Path, arguments: Arguments) -> None:
    entries = list(output_dir.iterdir()) if output_dir.is_dir() else []
    if not entries:
        return
    if not arguments.training.overwrite_output_dir:
        raise FileExistsError(
            f"--output_dir {output_dir} holds another run or other files ({_describe(entries)}). Choose a new "
            "folder, continue that run with --resume_from_checkpoint latest, or pass --overwrite_output_dir to "
            "delete everything in it first."
        )
    kept = [path for path in [Path.cwd(), *_inputs(arguments)] if _is_within(path, output_dir)]
    if kept:
        raise ValueError(
            f"--overwrite_output_dir would delete {output_dir}, which holds {kept[0]} (the current directory or a "
            "file this run reads): choose another --output_dir."
        )
    for entry in entries:
        _remove(entry)
    logger.warning(f"--overwrite_output_dir: deleted the previous content of {output_dir}: {_describe(entries)}.")


def _tidy_for_resume(output_dir: Path, checkpoint: Path, arguments: Arguments) -> None:
    """Delete what a resumed run will not continue: the history after `checkpoint` and the final outputs."""
    if not _is_within(checkpoint, output_dir / CHECKPOINTS):  # another run's checkpoint: this folder starts afresh
        _empty_for_new_run(output_dir, arguments)
        return
    step, inputs = checkpoint_step(checkpoint), _inputs(arguments)
    stale = [path for path in checkpoint_folders(output_dir) if checkpoint_step(path) > step]
    stale += list((output_dir / CHECKPOINTS).glob(".partial-*"))
    stale += [path for path in output_dir.glob("export-*") if re.fullmatch(r"export-\d+", path.name)
              and checkpoint_step(path) > step]  # fmt: skip
    stale += [path for path in output_dir.iterdir() if path.is_file() and path.name != TRAINING_LOG]
    stale = [path for path in stale if not any(_is_within(kept, path) for kept in inputs)]
    for path in stale:
        _remove(path)
    if stale:
        logger.warning(
            f"Resuming from {checkpoint}: deleted what the run after step {step} had written and this run writes "
            f"again: {_describe(stale)}."
        )


def _check_writable(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-test-") as probe:
            probe.write(b"c2lip")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise type(error)(
            f"--output_dir {output_dir} cannot be written ({error.strerror or error}): choose a folder this user "
            "can write to, on a disk with free space."
        ) from error


def _raise_on_every_process(accelerator: Accelerator, error: OSError | ValueError | None) -> None:
    """Raise `error` where it happened and the same error on every other process (which would otherwise wait for
    that process in the next collective until `--ddp_timeout`)."""
    found = [item for item in gather_object([None if error is None else (type(error).__name__, str(error))]) if item]
    if error is not None:
        raise error
    if found:
        name, message = found[0]
        raise _ERRORS.get(name, ValueError)(message)


def prepare_output_dir(accelerator: Accelerator, arguments: Arguments) -> Path | None:
    """Make `--output_dir` ready for this run (see the module docstring); returns the checkpoint to resume from
    (`None`: a new run). Call it on every process, before the model is loaded."""
    args = arguments.training
    output_dir = Path(args.output_dir)
    checkpoint = find_checkpoint(args)
    error = None
    if writes_files(accelerator, args):
        try:
            if output_dir.exists() and not output_dir.is_dir():
                raise NotADirectoryError(f"--output_dir {output_dir} is a file, not a folder.")
            if checkpoint is None:
                _empty_for_new_run(output_dir, arguments)
            else:
                _tidy_for_resume(output_dir, checkpoint, arguments)
            _check_writable(output_dir)
        except (OSError, ValueError) as caught:
            error = caught
    _raise_on_every_process(accelerator, error)
    steps = gather_object([None if checkpoint is None else checkpoint_step(checkpoint)])
    if len(set(steps)) > 1:
        raise FileNotFoundError(
            f"The processes found different checkpoints to resume from in {output_dir} (steps {steps}, by process): "
            "with a disk per node, train with --save_on_each_node so that every node keeps its checkpoints."
        )
    if args.resume_from_checkpoint == "latest" and checkpoint is None:
        accelerator.print(f"No checkpoint in {output_dir / CHECKPOINTS}: starting a new run.")
    return checkpoint


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e8 else f"{num_bytes / 1e6:.1f} MB"


def check_free_space(
    accelerator: Accelerator, args: TrainingArguments, num_parameters: int, num_trainable: int
) -> None:
    """Refuse to start when `--output_dir` cannot hold the final model (fp32 safetensors) and, when checkpointing,
    one checkpoint (weights and AdamW's two fp32 moments); warn when it cannot hold every checkpoint and export the
    run keeps. Call it on every process."""
    error = None
    if writes_files(accelerator, args):
        free = shutil.disk_usage(args.output_dir).free
        model, checkpoint = 4 * num_parameters, 4 * num_parameters + 8 * num_trainable
        steps = args.max_train_steps or 0
        checkpoints = steps // args.checkpointing_steps if args.checkpointing_steps else 0
        if args.checkpoints_total_limit:
            checkpoints = min(checkpoints, args.checkpoints_total_limit + 1)  # the newest is written, then pruned
        exports = steps // args.export_steps if args.export_steps else 0
        needed = model + (checkpoint if checkpoints else 0)
        if free < needed:
            error = OSError(
                f"--output_dir {args.output_dir} has {_size(free)} free, less than this run needs for the final "
                f"model ({_size(model)}){f' and one checkpoint ({_size(checkpoint)})' if checkpoints else ''}: free "
                "some space or choose another folder."
            )
        elif free < model * (1 + exports) + checkpoint * checkpoints:
            logger.warning(
                f"--output_dir {args.output_dir} has {_size(free)} free; this run writes about "
                f"{_size(model * (1 + exports) + checkpoint * checkpoints)} there ({checkpoints} checkpoint(s) of "
                f"{_size(checkpoint)}, {exports} export(s) and the final model of {_size(model)} each)."
            )
    _raise_on_every_process(accelerator, error)
