"""Helpers shared by the example scripts: the default checkpoint, a drawn test scene, and what the checkpoint's own
evaluation measured."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from modeling_concept_clip.shapes_world.scenes import Scene, ShapeObject, render_scene
from modeling_concept_clip.shapes_world.vocabulary import WorldConfig

# Written by `make demo`; every example takes --model to use any other folder or Hub id instead.
DEFAULT_MODEL = "outputs/demo/c2lip"

# The default test image: a scene of the demo's shapes world, drawn by its own renderer (48 pixels), whose two objects
# differ in size, colour and pattern, asked with the demo's full captions. Short colour-shape questions ("a red circle
# and a blue square") are what the binding probes measure over 1,000 held-out scenes; one image can go either way.
SCENE = Scene(
    objects=(
        ShapeObject("circle", "red", "big", "stripy", x=3, y=14, side=18),  # left half
        ShapeObject("square", "blue", "small", "dotted", x=31, y=18, side=11),  # right half
    ),
    background="white",
)
SCENE_PHRASES = ["a big red stripy circle", "a small blue dotted square"]
# The true caption, then the same words with one attribute swapped between the two objects (a bag of words cannot
# tell them apart; the demo's held-out probes are made the same way).
SCENE_CAPTIONS = [
    "a big red stripy circle and a small blue dotted square",
    "a small red stripy circle and a big blue dotted square",  # sizes swapped
    "a big red dotted circle and a small blue stripy square",  # patterns swapped
    "a big blue stripy circle and a small red dotted square",  # colours swapped
]
# What the demo's evaluation (`results.json` next to its checkpoints) says about these questions.
EVIDENCE = {
    ("probes", "swap_att"): "held-out captions vs the same words with an attribute swapped (chance 50%)",
    ("probes_unseen", "swap_att"): "the same on colour-shape pairs never seen in training (chance 50%)",
    ("binding", "color_shape"): "short captions, colours swapped between two shapes (chance 50%)",
    ("zeroshot_shape", "top1"): "zero-shot shape of single objects (chance 16.7%)",
    ("zeroshot_size", "top1"): "zero-shot size of single objects (chance 50%)",
    ("zeroshot_pattern", "top1"): "zero-shot pattern of single objects (chance 25%)",
}


def require_model(model: str) -> str:
    """Exit with a hint when the default demo checkpoint has not been trained yet."""
    if model == DEFAULT_MODEL and not Path(model).exists():
        sys.exit(
            f"{model} does not exist: run `make demo` first (it trains the demo checkpoint), or pass "
            "--model PATH_OR_HUB_ID (a checkpoint folder or a Hub id such as google/siglip-base-patch16-224)."
        )
    return model


def draw_scene() -> Image.Image:
    """The default test image (see `SCENE`): a big red stripy circle left, a small blue dotted square right."""
    return render_scene(SCENE, WorldConfig())


def load_image(path: str | None) -> Image.Image:
    """The image at `path` (RGB), or the drawn scene when no path is given."""
    return Image.open(path).convert("RGB") if path else draw_scene()


def print_evidence(model: str) -> dict[str, float]:
    """Print what the checkpoint's own evaluation measured on the questions the examples ask (`EVIDENCE`), when
    the folder has a `results.json` (the demo's do); returns those numbers, `{"benchmark/metric": fraction}`."""
    from modeling_concept_clip.evaluation.results import RESULTS_FILE, load_runs

    path = Path(model) / RESULTS_FILE
    if not path.is_file():
        return {}
    metrics = load_runs(path)[-1].flat_metrics()
    found = {f"{benchmark}/{metric}": (text, metrics.get(f"{benchmark}/{metric}")) for (benchmark, metric), text in
             EVIDENCE.items()}  # fmt: skip
    found = {key: value for key, value in found.items() if value[1] is not None}
    if found:
        print(f"Measured on this checkpoint ({path}):")
        for text, value in found.values():
            print(f"  {100 * value:5.1f}%  {text}")
    return {key: value for key, (_, value) in found.items()}
