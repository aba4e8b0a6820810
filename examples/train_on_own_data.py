#!/usr/bin/env python
"""Fine-tune with C2LIP on your own images and captions: JSON Lines or an imagefolder, then `training/train.py`.

    python examples/train_on_own_data.py --model openai/clip-vit-base-patch32 --format jsonl --max_train_steps 100
    python examples/train_on_own_data.py --format imagefolder -- --learning_rate 5e-6   # after --: train.py flags

To show both layouts end to end, the script first writes a small data set of drawn scenes ("a red circle to the
left of a blue square") in the chosen layout; replace it with your own data in the same layout:

    JSON Lines   data/train.jsonl            {"image": "images/0.png", "caption": "..."}   (paths relative to it)
    imagefolder  data/metadata.jsonl + images {"file_name": "0.png", "caption": "..."}

Concepts are extracted with spaCy before training when the data has no `concepts` column. The run ends with a plain
checkpoint folder (and its model card) in --output_dir, which `from_pretrained` loads without this library.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import subprocess
import sys
from pathlib import Path

from example_utils import DEFAULT_MODEL, require_model
from PIL import Image, ImageDraw

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "training" / "train.py"
COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (230, 200, 20)}
SHAPES = ("circle", "square", "triangle")


def draw_pair(left: tuple[str, str], right: tuple[str, str], size: int = 64) -> Image.Image:
    """Two coloured shapes side by side: `left` and `right` are (colour, shape)."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for (color, shape), x0 in ((left, 2), (right, size // 2 + 2)):
        box = (x0, size // 4, x0 + size // 2 - 4, size // 4 + size // 2 - 4)
        fill = COLORS[color]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([((box[0] + box[2]) // 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
    return image


def write_dataset(data_dir: str | Path, layout: str, num_images: int) -> Path:
    """Write drawn scenes and their captions; returns the `--train_file` (jsonl) or `--train_dir` (imagefolder)."""
    data_dir = Path(data_dir)
    image_dir = data_dir / "images" if layout == "jsonl" else data_dir
    image_dir.mkdir(parents=True, exist_ok=True)
    objects = list(itertools.product(COLORS, SHAPES))
    pairs = [(a, b) for a, b in itertools.permutations(objects, 2) if a[0] != b[0] and a[1] != b[1]]
    rows = []
    for i in range(num_images):
        left, right = pairs[(i * 7) % len(pairs)]  # a fixed spread over the combinations
        name = f"{i}.png"
        draw_pair(left, right).save(image_dir / name)
        caption = f"a {left[0]} {left[1]} to the left of a {right[0]} {right[1]}"
        key, value = ("image", f"images/{name}") if layout == "jsonl" else ("file_name", name)
        rows.append({key: value, "caption": caption})
    target = data_dir / ("train.jsonl" if layout == "jsonl" else "metadata.jsonl")
    target.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return target if layout == "jsonl" else data_dir


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Checkpoint folder or Hub id to fine-tune.")
    parser.add_argument("--format", choices=["jsonl", "imagefolder"], default="jsonl", help="Data layout.")
    parser.add_argument("--data_dir", default="outputs/own_data/data", help="Where the data set is written.")
    parser.add_argument("--num_images", type=int, default=32)
    parser.add_argument("--output_dir", default="outputs/own_data/c2lip", help="Where the trained model goes.")
    parser.add_argument("--max_train_steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=8, help="Images per device and step.")
    parser.add_argument("--launcher", choices=["python", "accelerate"], default="python",
                        help="'accelerate' runs `accelerate launch` (your accelerate config: GPUs, processes).")  # fmt: skip
    args = parser.parse_args(argv)

    source = write_dataset(args.data_dir, args.format, args.num_images)
    print(f"Wrote {args.num_images} images and captions to {source}")
    launcher = [sys.executable] if args.launcher == "python" else ["accelerate", "launch"]
    command = [
        *launcher,
        str(TRAIN_SCRIPT),
        "--model_name_or_path", require_model(args.model),
        "--train_file" if args.format == "jsonl" else "--train_dir", str(source),
        "--output_dir", args.output_dir,
        "--overwrite_output_dir",
        "--per_device_train_batch_size", str(args.batch_size),
        "--max_train_steps", str(args.max_train_steps),
        "--logging_steps", "5",
        "--report_to", "none",
        *extra,
    ]  # fmt: skip
    print("Running:", shlex.join(command), flush=True)
    subprocess.run(command, check=True)

    output_dir = Path(args.output_dir)
    if not (output_dir / "README.md").exists():
        from modeling_concept_clip.model_cards import write_model_card

        write_model_card(output_dir)
    print(f"Trained model: {output_dir} ({', '.join(sorted(p.name for p in output_dir.iterdir()))})")
    return output_dir


if __name__ == "__main__":
    main()
