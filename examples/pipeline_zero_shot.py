#!/usr/bin/env python
"""Zero-shot classification with `pipeline("zero-shot-image-classification")`.

    python examples/pipeline_zero_shot.py --model outputs/demo/c2lip --image photo.jpg --labels cat dog "a red car"

Without --image, the drawn scene of `zero_shot.py` is classified, with the same candidates (its caption and the
same words with one attribute swapped between the objects).

The pipeline reads the model type from the checkpoint's config (CLIP: softmax over the labels, SigLIP: one sigmoid
per label) and wraps each label in `--hypothesis_template`.
"""

from __future__ import annotations

import argparse
import json

from example_utils import DEFAULT_MODEL, SCENE_CAPTIONS, load_image, require_model
from transformers import pipeline


def main(argv: list[str] | None = None) -> list[dict[str, float | str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Checkpoint folder or Hub id.")
    parser.add_argument("--image", default=None, help="Image file or URL (default: a drawn shapes-world scene).")
    parser.add_argument("--labels", nargs="+", default=SCENE_CAPTIONS, help="Candidate labels.")
    parser.add_argument("--hypothesis_template", default="{}", help='e.g. "a photo of {}." (default: the label).')
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda:0 (default: the pipeline's choice).")
    parser.add_argument("--output_json", default=None, help="Also write the predictions to this JSON file.")
    args = parser.parse_args(argv)

    classifier = pipeline("zero-shot-image-classification", model=require_model(args.model), device=args.device)
    image = args.image if args.image and "://" in args.image else load_image(args.image)
    predictions = classifier(image, candidate_labels=args.labels, hypothesis_template=args.hypothesis_template)
    for prediction in predictions:
        print(f"{prediction['score']:.4f}  {prediction['label']}")
    if args.output_json:
        with open(args.output_json, "w") as handle:
            json.dump(predictions, handle, indent=2)
    return predictions


if __name__ == "__main__":
    main()
