#!/usr/bin/env python
"""Concept extraction on your own captions, the way C2LIP training sees them (`ConceptExtractor`, spaCy).

    python examples/extract_concepts.py --captions "a red couch next to a blue lamp" "two dogs playing in the snow"
    python examples/extract_concepts.py --file captions.txt --output concepts.jsonl        # one caption per line
    python examples/extract_concepts.py --captions "a red couch next to a blue lamp" --image room.jpg --model ...

Each caption becomes its noun phrases ("concepts"); training aligns the image with each of them. With --image (or
--score, which uses a drawn scene of a red circle and a blue square), each concept is also scored against the image
with the model (cosine similarity of the global embeddings, the NPC
loss's score), which shows which parts of a caption the model finds in the image.
"""

from __future__ import annotations

import argparse
import json

import torch
from example_utils import DEFAULT_MODEL, load_image, require_model
from transformers import AutoModel, AutoProcessor

from modeling_concept_clip.concepts import ConceptExtractor, ConceptExtractorConfig

DEFAULT_CAPTIONS = [
    "a red circle to the left of a blue square",
    "Stock photo of two small brown dogs playing with a ball in the snow",
    "A woman's hat on top of a wooden table next to a cup of coffee",
]


def concept_scores(model_name: str, image_path: str | None, concepts: list[str]) -> list[float]:
    """Cosine similarity between the image embedding and each concept's text embedding."""
    model = AutoModel.from_pretrained(require_model(model_name)).eval()
    processor = AutoProcessor.from_pretrained(model_name)
    siglip = model.config.model_type == "siglip"
    text = processor.tokenizer(
        concepts, padding="max_length" if siglip else True, truncation=True, return_tensors="pt"
    )
    pixel_values = processor.image_processor(load_image(image_path), return_tensors="pt").pixel_values
    with torch.no_grad():
        image_embeds = model.get_image_features(pixel_values=pixel_values).pooler_output
        text_embeds = model.get_text_features(**text).pooler_output
    image_embeds = torch.nn.functional.normalize(image_embeds, dim=-1)
    text_embeds = torch.nn.functional.normalize(text_embeds, dim=-1)
    return (text_embeds @ image_embeds.T)[:, 0].tolist()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", nargs="+", default=None, help="Captions (default: three examples).")
    parser.add_argument("--file", default=None, help="Text file with one caption per line.")
    parser.add_argument("--output", default=None, help="Write JSON Lines {caption, concepts[, scores]} here.")
    parser.add_argument("--mode", choices=["parser", "pos"], default="parser", help="Noun chunks or POS patterns.")
    parser.add_argument("--max_concepts", type=int, default=8, help="Concepts kept per caption.")
    parser.add_argument("--spacy_model", default=None, help="spaCy pipeline (default: en_core_web_sm if present).")
    parser.add_argument("--image", default=None, help="Score the concepts against this image with --model.")
    parser.add_argument("--score", action="store_true", help="Score the concepts (default image: a drawn scene).")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Checkpoint folder or Hub id (used for scoring).")
    args = parser.parse_args(argv)

    captions = list(args.captions or [])
    if args.file:
        with open(args.file, encoding="utf-8") as handle:
            captions += [line.strip() for line in handle if line.strip()]
    captions = captions or DEFAULT_CAPTIONS

    config = ConceptExtractorConfig(spacy_model=args.spacy_model, mode=args.mode, max_concepts=args.max_concepts)
    with ConceptExtractor(config) as extractor:
        # Invalid captions (empty, too long) get no concepts instead of stopping the run, as in training.
        concepts = extractor.extract(captions, on_invalid="empty")
    rows = [{"caption": caption, "concepts": found} for caption, found in zip(captions, concepts)]

    if args.score or args.image:
        flat = [concept for row in rows for concept in row["concepts"]]
        scores = iter(concept_scores(args.model, args.image, flat)) if flat else iter(())
        for row in rows:
            row["scores"] = [round(next(scores), 4) for _ in row["concepts"]]

    for row in rows:
        print(row["caption"])
        for i, concept in enumerate(row["concepts"]):
            score = f"  {row['scores'][i]:+.3f}" if "scores" in row else ""
            print(f"  - {concept}{score}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


if __name__ == "__main__":
    main()
