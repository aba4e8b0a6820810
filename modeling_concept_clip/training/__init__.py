"""C2LIP training with Accelerate: `concept-clip-train`, `accelerate launch -m modeling_concept_clip.training`.

    accelerate launch -m modeling_concept_clip.training --config training/configs/siglip_b16_cc3m.yaml
    concept-clip-train --model_name_or_path openai/clip-vit-base-patch32 --train_file data/train.jsonl ...

`arguments` (the command line), `state` (`TrainState`), `engines` (DDP, FSDP2, DeepSpeed), `data` (this process's
loaders), `loop` (`train_one_epoch`, evaluation, checkpoints, export, `train`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .arguments import Arguments, ConceptArguments, DataArguments, ModelArguments, TrainingArguments, parse_arguments

__all__ = [
    "Arguments",
    "ConceptArguments",
    "DataArguments",
    "ModelArguments",
    "TrainingArguments",
    "command_line",
    "main",
    "parse_arguments",
]

PACKAGE = Path(__file__).resolve().parents[1]
DEBUG_VARIABLE = "C2LIP_DEBUG"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse `argv` (default: the command line) and train. `--help` and argument errors exit before the model,
    data and distributed libraries are imported."""
    arguments = parse_arguments(argv)
    from .loop import train

    return train(arguments)


def raised_by_our_checks(error: BaseException) -> bool:
    """Whether `error` is an expected error of this package's own checks: an `OSError`, `ValueError` or
    `RuntimeError` raised by a `raise` statement in `modeling_concept_clip` (not deep inside torch or datasets)."""
    frame = error.__traceback__
    if not isinstance(error, (OSError, ValueError, RuntimeError)) or frame is None:
        return False
    while frame.tb_next is not None:
        frame = frame.tb_next
    return PACKAGE in Path(frame.tb_frame.f_code.co_filename).resolve().parents


def command_line(argv: list[str] | None = None) -> int:
    """`main` for a command line: an error raised with a message by the training's own checks (a missing file, a
    folder that holds another run, too many bad rows, ...) is printed as one line, `error: <message>`, with exit
    status 1; any other error keeps its traceback, and `C2LIP_DEBUG=1` keeps it for every error."""
    try:
        main(argv)
    except (OSError, ValueError, RuntimeError) as error:
        if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0") or not raised_by_our_checks(error):
            raise
        print(f"error: {error}\n(set {DEBUG_VARIABLE}=1 for the traceback)", file=sys.stderr)
        return 1
    return 0
