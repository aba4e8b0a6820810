#!/usr/bin/env python
"""Zero-shot classification with `AutoModel.from_pretrained` and the processor (no pipeline, no extra library).

    python examples/zero_shot.py                                   # the demo's C2LIP on a drawn scene
    python examples/zero_shot.py --model outputs/demo/control      # the control, for comparison
    python examples/zero_shot.py --model openai/clip-vit-base-patch32 --image photo.jpg \
        --labels "a red couch next to a blue lamp" "a blue couch next to a red lamp"

Without --image, a scene of the demo's shapes world is drawn (a big red stripy circle left, a small blue dotted
square right), and the default candidates are its caption and the same words with the sizes, patterns or colours of
the two objects swapped: a bag-of-words model cannot tell them apart. When the checkpoint folder has a results.json
(the demo's do), the script also prints what that evaluation measured on such swaps. A C2LIP checkpoint is a plain
CLIPModel/SiglipModel: this script runs the same on the base model, so you can compare the two.
"""

from __future__ import annotations

import argparse
import json

import torch
from example_utils import DEFAULT_MODEL, SCENE_CAPTIONS, load_image, print_evidence, require_model
from transformers import AutoModel, AutoProcessor


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Checkpoint folder or Hub id.")
    parser.add_argument("--image", default=None, help="Image file (default: a drawn scene of the shapes world).")
    parser.add_argument("--labels", nargs="+", default=SCENE_CAPTIONS, help="Candidate texts.")
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
    print_evidence(args.model)
    if args.output_json:
        with open(args.output_json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
