"""C2LIP training with Accelerate: `concept-clip-train`, `accelerate launch -m modeling_concept_clip.training`.

    accelerate launch -m modeling_concept_clip.training --config training/configs/siglip_b16_cc3m.yaml
    concept-clip-train --model_name_or_path openai/clip-vit-base-patch32 --train_file data/train.jsonl ...

`arguments` (the command line), `state` (`TrainState`), `engines` (DDP, FSDP2, DeepSpeed), `data` (this process's
loaders), `loop` (`train_one_epoch`, evaluation, checkpoints, export, `train`).
"""

from __future__ import annotations

from typing import Any

from .arguments import Arguments, ConceptArguments, DataArguments, ModelArguments, TrainingArguments, parse_arguments

__all__ = [
    "Arguments",
    "ConceptArguments",
    "DataArguments",
    "ModelArguments",
    "TrainingArguments",
    "main",
    "parse_arguments",
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse `argv` (default: the command line) and train. `--help` and argument errors exit before the model,
    data and distributed libraries are imported."""
    arguments = parse_arguments(argv)
    from .loop import train

    return train(arguments)
