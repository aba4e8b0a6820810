#!/usr/bin/env python
"""Draw where each phrase looks in an image: C2LIP's cross-modal attention of a phrase over the patch tokens.

    python examples/visualize_concept_attention.py --model outputs/demo/c2lip --image room.jpg \
        --phrases "a red couch" "a blue lamp" --output attention.png --output_json attention.json

For each phrase, its concept embedding attends over the image's patch tokens in the joint space,
`a_t = softmax_t(tau * <u_t, c>)` (`modeling_concept_clip.concept_attention_weights`, the pooling of the XAC loss),
and the weights are drawn over the image as the model sees it (resized and cropped by its processor). Each panel's
colours span that phrase's own minimum to maximum: with tau = 1 (the training value) the weights are close to uniform,
and the numbers printed per region (left/right/top/bottom halves) say how far from uniform they are.
Without --image, a scene of the demo's shapes world is drawn (a big red stripy circle in the left half, a small blue
dotted square in the right half) and the phrases are its two objects. The demo's tiny models do not localise: see
examples/README.md for what they print, and look at a larger model before reading a heat map as a location.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from example_utils import DEFAULT_MODEL, SCENE_PHRASES, load_image, require_model
from PIL import Image
from transformers import AutoConfig, AutoProcessor

from modeling_concept_clip import ConceptCLIPModel, ConceptSiglipModel, concept_attention_weights

MODEL_CLASSES = {"clip": ConceptCLIPModel, "siglip": ConceptSiglipModel}


@torch.no_grad()
def phrase_attention(model, processor, image: Image.Image, phrases: list[str], tau: float):
    """Attention of each phrase over the image's patch grid.

    Returns:
        `(attention, view)`: a `(num_phrases, rows, cols)` array whose grids each sum to 1, and the image as the
        model sees it (after its processor's resize, crop and normalisation, undone for display).
    """
    siglip = model.config.model_type == "siglip"
    pixel_values = processor.image_processor(image, return_tensors="pt").pixel_values
    # The phrases are tokenised as training tokenises concepts (SigLIP: padded to the full length).
    text = processor.tokenizer(phrases, padding="max_length" if siglip else True, truncation=True, return_tensors="pt")
    outputs = model(
        input_ids=text.input_ids,
        attention_mask=text.get("attention_mask"),
        pixel_values=pixel_values,
        concept_input_ids=text.input_ids,
        concept_attention_mask=text.get("attention_mask"),
        concept_image_index=torch.zeros(len(phrases), dtype=torch.long),
    )
    # (N, 1, T): CLIP's tokens exclude the CLS token, SigLIP has none; both are the patch grid in row-major order.
    weights = concept_attention_weights(outputs.concept_embeds, outputs.image_token_embeds, tau=tau)[:, 0]
    vision = model.config.vision_config
    rows = cols = pixel_values.shape[-1] // vision.patch_size
    if rows * cols != weights.shape[-1]:
        raise ValueError(f"{weights.shape[-1]} image tokens do not form the expected {rows}x{cols} patch grid.")
    return weights.reshape(len(phrases), rows, cols).numpy(), model_view(processor.image_processor, pixel_values[0])


def model_view(image_processor, pixel_values: torch.Tensor) -> Image.Image:
    """Undo the processor's normalisation and rescaling: the image exactly as the model sees it."""
    array = pixel_values.float().numpy().transpose(1, 2, 0)
    if getattr(image_processor, "do_normalize", True):
        array = array * np.asarray(image_processor.image_std) + np.asarray(image_processor.image_mean)
    scale = getattr(image_processor, "rescale_factor", 1 / 255) if getattr(image_processor, "do_rescale", True) else 1
    return Image.fromarray(np.clip(array / scale, 0, 255).round().astype(np.uint8))


def region_masses(grid: np.ndarray) -> dict[str, float]:
    """Attention mass in the left/right and top/bottom halves (a middle row or column counts half to each)."""
    rows, cols = grid.shape

    def split(size: int) -> np.ndarray:  # share of each row/column that lies in the first half
        centres = (np.arange(size) + 0.5) / size
        return np.where(centres < 0.5, 1.0, np.where(centres > 0.5, 0.0, 0.5))

    first_cols, first_rows = split(cols), split(rows)
    left = float((grid * first_cols[None, :]).sum())
    top = float((grid * first_rows[:, None]).sum())
    total = float(grid.sum())
    return {"left": left, "right": total - left, "top": top, "bottom": total - top}


def summarize(phrases: list[str], attention: np.ndarray) -> list[dict]:
    """Per phrase: the attention grid, its region masses, its peak cell and how peaked it is (1 = uniform)."""
    summary = []
    for phrase, grid in zip(phrases, attention):
        peak = np.unravel_index(int(grid.argmax()), grid.shape)
        summary.append(
            {
                "phrase": phrase,
                "regions": region_masses(grid),
                "peak_cell": [int(peak[0]), int(peak[1])],
                "peak_over_uniform": float(grid.max() * grid.size),
                "attention": grid.tolist(),
            }
        )
    return summary


def draw(view: Image.Image, summary: list[dict], output: str, tau: float) -> None:
    """One panel with the image, then one overlay per phrase; written as PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SystemExit(
            "Drawing needs matplotlib: pip install matplotlib (or modeling_concept_clip[plots])."
        ) from error
    panels = len(summary) + 1
    figure, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.9), squeeze=False)
    axes = axes[0]
    width, height = view.size
    axes[0].imshow(view)
    axes[0].set_title("model input", fontsize=10)
    for axis, item in zip(axes[1:], summary):
        grid = np.asarray(item["attention"])
        axis.imshow(view)
        # Nearest-neighbour: one block per patch token, i.e. the resolution the attention actually has.
        axis.imshow(grid, cmap="inferno", alpha=0.6, extent=(0, width, height, 0), interpolation="nearest",
                    vmin=grid.min(), vmax=grid.max())  # fmt: skip
        regions = item["regions"]
        axis.set_title(
            f"{item['phrase']}\nleft {regions['left']:.3f} | right {regions['right']:.3f}\n"
            f"peak {item['peak_over_uniform']:.2f}x uniform",
            fontsize=9,
        )
    for axis in axes:
        axis.axis("off")
    figure.suptitle(f"cross-modal attention (tau = {tau:g}; colours: each panel's min to max)", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.92))  # room for the suptitle
    figure.savefig(output, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Checkpoint folder or Hub id (CLIP or SigLIP).")
    parser.add_argument("--image", default=None, help="Image file (default: a drawn scene of the shapes world).")
    parser.add_argument("--phrases", nargs="+", default=SCENE_PHRASES, help="Phrases (concepts) to locate.")
    parser.add_argument("--tau", type=float, default=1.0, help="Attention temperature (training used 1.0).")
    parser.add_argument("--output", default="concept_attention.png", help="PNG to write.")
    parser.add_argument("--output_json", default=None, help="Also write the grids and region masses as JSON.")
    args = parser.parse_args(argv)

    config = AutoConfig.from_pretrained(require_model(args.model))
    if config.model_type not in MODEL_CLASSES:
        raise SystemExit(f"{args.model} is a {config.model_type!r} model; this example needs CLIP or SigLIP.")
    # The Concept* classes load any plain checkpoint unchanged; they add the patch tokens in the joint space.
    model = MODEL_CLASSES[config.model_type].from_pretrained(args.model, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    attention, view = phrase_attention(model, processor, load_image(args.image), args.phrases, args.tau)
    summary = summarize(args.phrases, attention)

    draw(view, summary, args.output, args.tau)
    width = max(len(phrase) for phrase in args.phrases)
    print(f"{'phrase':<{width}}  left    right   top     bottom  peak/uniform")
    for item in summary:
        r = item["regions"]
        print(f"{item['phrase']:<{width}}  {r['left']:.4f}  {r['right']:.4f}  {r['top']:.4f}  {r['bottom']:.4f}  "
              f"{item['peak_over_uniform']:.3f}")  # fmt: skip
    print(f"Wrote {args.output}")
    if args.output_json:
        payload = {"model": args.model, "image": args.image, "tau": args.tau, "grid": list(attention.shape[1:]),
                   "phrases": summary}  # fmt: skip
        with open(args.output_json, "w") as handle:
            json.dump(payload, handle, indent=2)
    return summary


if __name__ == "__main__":
    main()
