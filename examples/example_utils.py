"""Helpers shared by the example scripts: the default checkpoint and a drawn test scene."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

# Written by `make demo`; every example takes --model to use any other folder or Hub id instead.
DEFAULT_MODEL = "outputs/demo/c2lip"
SCENE_PHRASES = ["a red circle", "a blue square"]


def require_model(model: str) -> str:
    """Exit with a hint when the default demo checkpoint has not been trained yet."""
    if model == DEFAULT_MODEL and not Path(model).exists():
        sys.exit(
            f"{model} does not exist: run `make demo` first (it trains the demo checkpoint), or pass "
            "--model PATH_OR_HUB_ID (a checkpoint folder or a Hub id such as google/siglip-base-patch16-224)."
        )
    return model


def draw_scene(size: int = 224) -> Image.Image:
    """A square test image: a red circle in the left half, a blue square in the right half, on white."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    unit = size / 16
    draw.ellipse((1 * unit, 4 * unit, 7 * unit, 10 * unit), fill=(220, 30, 30))
    draw.rectangle((9 * unit, 4 * unit, 15 * unit, 10 * unit), fill=(30, 60, 220))
    return image


def load_image(path: str | None) -> Image.Image:
    """The image at `path` (RGB), or the drawn scene when no path is given."""
    return Image.open(path).convert("RGB") if path else draw_scene()
