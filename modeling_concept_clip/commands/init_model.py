"""`concept-clip-init`: write a small CLIP or SigLIP for your own captions, to train from scratch offline.

    concept-clip-init --train_file data/train.jsonl --output_dir outputs/small-clip
    concept-clip-init --train_dir data/images --model_type siglip --image_size 96 --layers 4 --output_dir outputs/small-siglip

The folder holds a randomly initialised plain `CLIPModel`/`SiglipModel` (safetensors), its config, a word-level
CLIP-format tokenizer whose vocabulary is the words of your captions, in any script (every word one token, most
frequent first up to `--max_words`; other text is spelt out letter by letter, and any other character byte by byte,
so no character of a caption is unknown), a PIL image processor and `random_init.json`, which records that the
weights are a random initialisation (the model card of a run from the folder says so). `concept-clip-train` takes it
as `--model_name_or_path DIR` (start from these weights) or as `--config_name DIR --processor_name DIR` (a fresh
initialisation with the training seed). The data flags are those of `concept-clip-train`, so the same flags name the
same data in both commands.
"""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from transformers import HfArgumentParser

logger = logging.getLogger(__name__)

DATA_FLAGS = ("dataset_name", "dataset_config_name", "train_file", "train_dir", "image_column", "caption_column")


@dataclass
class InitArguments:
    output_dir: str = field(metadata={"help": "Folder to write: config, weights, tokenizer and image processor."})
    model_type: Literal["clip", "siglip"] = field(
        default="clip", metadata={"help": "'clip' (softmax losses) or 'siglip' (sigmoid losses)."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id, or a folder written by `Dataset.save_to_disk`."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config name of the Hub dataset."})
    train_file: str | None = field(
        default=None, metadata={"help": "JSON Lines / CSV / parquet file or WebDataset .tar shards; globs allowed."}
    )
    train_dir: str | None = field(default=None, metadata={"help": "An imagefolder with metadata.jsonl."})
    image_column: str | None = field(default=None, metadata={"help": "Default: image, file_name, jpg or png."})
    caption_column: str | None = field(default=None, metadata={"help": "Default: caption, text or txt."})
    max_captions: int | None = field(default=None, metadata={"help": "Read only the first N captions."})
    max_words: int = field(
        default=20_000, metadata={"help": "Most frequent caption words that become tokens; others are spelt out."}
    )
    image_size: int = field(default=64, metadata={"help": "Image side in pixels (images are resized to it)."})
    patch_size: int = field(default=8, metadata={"help": "Vision patch side in pixels; divides image_size."})
    width: int = field(default=128, metadata={"help": "Hidden size of both towers."})
    layers: int = field(default=3, metadata={"help": "Transformer layers of each tower."})
    heads: int = field(default=4, metadata={"help": "Attention heads; divides width."})
    projection_dim: int = field(default=128, metadata={"help": "Joint embedding size (CLIP; SigLIP uses width)."})
    max_length: int | None = field(
        default=None, metadata={"help": "Text length in tokens, BOS and EOS included (default: 77 CLIP, 64 SigLIP)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the initial weights."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow a non-empty output_dir."})

    def __post_init__(self):
        sources = [name for name in ("dataset_name", "train_file", "train_dir") if getattr(self, name)]
        if len(sources) != 1:
            raise ValueError("Give exactly one data source: --dataset_name, --train_file or --train_dir.")
        if self.max_length is None:
            self.max_length = 77 if self.model_type == "clip" else 64
        problems = [
            f"--{name} must be positive, got {getattr(self, name)}."
            for name in ("max_words", "image_size", "patch_size", "width", "layers", "heads", "projection_dim")
            if getattr(self, name) <= 0
        ]
        if self.image_size % self.patch_size:
            problems.append(f"--patch_size {self.patch_size} does not divide --image_size {self.image_size}.")
        if self.width % self.heads:
            problems.append(f"--heads {self.heads} does not divide --width {self.width}.")
        if self.model_type == "siglip" and self.max_length < 64:
            problems.append("--max_length must be at least 64 for SigLIP (the zero-shot pipeline pads to 64).")
        if problems:
            raise ValueError(" ".join(problems))

    def data_flags(self) -> list[str]:
        """The data flags as given, for the `training/train.py` command that trains the folder."""
        return [part for name in DATA_FLAGS if getattr(self, name) for part in (f"--{name}", getattr(self, name))]


def read_captions(args: InitArguments) -> tuple[list[str], int]:
    """The captions of the data (`--max_captions` at most) and the number of rows without a text caption."""
    from ..data import load_image_text_dataset, resolve_columns

    dataset, _ = load_image_text_dataset(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        data_file=args.train_file,
        data_dir=args.train_dir,
    )
    _, caption_column = resolve_columns(dataset, args.image_column, args.caption_column)
    if args.max_captions is not None:
        dataset = dataset.select(range(min(args.max_captions, len(dataset))))
    values = dataset[caption_column]
    captions = [value for value in values if isinstance(value, str) and value.strip()]
    return captions, len(values) - len(captions)


def write_small_model(args: InitArguments) -> Path:
    """Write the folder described by `args` (see the module docstring); returns its path."""
    # Imported here so that `--help` and argument errors come at once (torch and datasets take seconds to load).
    from ..small_models import build_small_model_and_processor, write_init_record
    from ..tokenization import PIPELINE_TEMPLATE_WORDS, build_word_level_clip_tokenizer, count_words

    output_dir = Path(args.output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not args.overwrite_output_dir:
        raise FileExistsError(
            f"{output_dir} is not empty: choose another --output_dir or pass --overwrite_output_dir."
        )
    captions, skipped = read_captions(args)
    if not captions:
        raise ValueError(f"No caption text in the data ({skipped} rows without one): check --caption_column.")
    counts = count_words(captions)
    words = [word for word, _ in counts.most_common(args.max_words)]
    tokenizer = build_word_level_clip_tokenizer(
        [*words, *PIPELINE_TEMPLATE_WORDS], model_max_length=args.max_length, byte_fallback=True
    )
    sizes = dict(patch_size=args.patch_size, width=args.width, layers=args.layers, heads=args.heads)
    if args.model_type == "clip":
        sizes["projection_dim"] = args.projection_dim
    model, processor = build_small_model_and_processor(
        args.model_type, tokenizer, args.image_size, seed=args.seed, **sizes
    )
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    write_init_record(output_dir, command="concept-clip-init", arguments=asdict(args))
    num_parameters = sum(p.numel() for p in model.parameters())
    print(
        f"Wrote {output_dir}: a {type(model).__name__} of {num_parameters / 1e6:.2f}M parameters ({args.layers} x "
        f"{args.width} per tower, {args.image_size} px images in {args.patch_size} px patches), a {len(tokenizer):,}"
        f"-token vocabulary with {len(words):,} of the {len(counts):,} distinct words of {len(captions):,} captions"
        + (f" ({skipped:,} rows without a caption skipped)" if skipped else "")
        + ".\nTrain it: "
        + shlex.join(["concept-clip-train", "--model_name_or_path", str(output_dir), *args.data_flags()])
        + " --output_dir OUTPUT_DIR"
    )
    return output_dir


def main(argv: list[str] | None = None) -> int:
    """Run `concept-clip-init`; returns the exit status (0: written, 1: bad data or a non-empty folder)."""
    parser = HfArgumentParser(InitArguments, prog="concept-clip-init", description=__doc__.split("\n\n")[0])
    try:
        (args,) = parser.parse_args_into_dataclasses(args=sys.argv[1:] if argv is None else argv)
    except ValueError as error:  # raised by InitArguments.__post_init__: a usage error, reported as argparse does
        parser.error(str(error))
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        write_small_model(args)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
