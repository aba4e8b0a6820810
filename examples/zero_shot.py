#!/usr/bin/env python
"""Zero-shot classification with `AutoModel.from_pretrained` and the processor (no pipeline, no extra library).

    python examples/zero_shot.py --model outputs/demo/c2lip --image photo.jpg \
        --labels "a red circle and a blue square" "a blue circle and a red square"

Without --image, a drawn scene (a red circle left, a blue square right) is classified. A C2LIP checkpoint is a
plain CLIPModel/SiglipModel: this script runs the same on the base model, so you can compare the two.
"""

from __future__ import annotations

import argparse
import json

import torch
from example_utils import DEFAULT_MODEL, load_image, require_model
from transformers import AutoModel, AutoProcessor

DEFAULT_LABELS = ["a red circle and a blue square", "a blue circle and a red square", "a green triangle"]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Checkpoint folder or Hub id.")
    parser.add_argument("--image", default=None, help="Image file (default: a drawn red circle and blue square).")
    parser.add_argument("--labels", nargs="+", default=DEFAULT_LABELS, help="Candidate texts.")
    parser.add_argument("--output_json", default=None, help="Also write the scores to this JSON file.")
    args = parser.parse_args(argv)

    model = AutoModel.from_pretrained(require_model(args.model)).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    siglip = model.config.model_type == "siglip"
    # SigLIP was trained on texts padded to the full length; CLIP pads to the longest text of the batch.
    inputs = processor(
        text=args.labels,
        images=load_image(args.image),
        padding="max_length" if siglip else True,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**inputs).logits_per_image[0]
    # SigLIP scores each text on its own (sigmoid); CLIP shares one distribution over the candidates (softmax).
    scores = torch.sigmoid(logits) if siglip else logits.softmax(dim=-1)
    result = dict(zip(args.labels, scores.tolist()))
    for label, score in sorted(result.items(), key=lambda item: -item[1]):
        print(f"{score:.4f}  {label}")
    if args.output_json:
        with open(args.output_json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
