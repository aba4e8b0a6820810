#!/usr/bin/env python
"""Fine-tune (or train) a CLIP or SigLIP model with C2LIP's concept losses, with Accelerate.

    accelerate launch training/train.py --config training/configs/siglip_b16_cc3m.yaml
    python -m training.train --model_name_or_path openai/clip-vit-base-patch32 --train_file data/train.jsonl ...

The same as the installed `concept-clip-train` (`modeling_concept_clip.training`), which works from any folder.
Arguments come from dataclasses (see `--help`), optionally from a YAML/JSON recipe given with `--config`; flags
given on the command line override the recipe. The run ends with a plain `CLIPModel`/`SiglipModel` folder in
`--output_dir` (safetensors weights, processor, `training_args.json`), which `from_pretrained` and
`pipeline("zero-shot-image-classification")` load without this library.
"""

from modeling_concept_clip.training import (
    ConceptArguments,
    DataArguments,
    ModelArguments,
    TrainingArguments,
    command_line,
    main,
    parse_arguments,
)

__all__ = ["ConceptArguments", "DataArguments", "ModelArguments", "TrainingArguments", "main", "parse_arguments"]

if __name__ == "__main__":
    raise SystemExit(command_line())
