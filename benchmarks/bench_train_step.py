"""Time of one C2LIP training step against the plain caption-loss step, same model and batch, with a breakdown.

    python benchmarks/bench_train_step.py                       # CLIP ViT-B/16 and SigLIP B/16, 16 images, 4 concepts each

Models are randomly initialised from the base-size configs (the cost does not depend on the weights). Each step is
forward + backward (no optimizer: it is the same for both). Captions are 20 tokens and concepts 8 for CLIP (padded
to the longest); SigLIP pads every text to 64 tokens, as it was trained. Distinct concepts are encoded once; the
batch has `--distinct_concepts` of them per image (the rest repeat other images' concepts, as "a man" does).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, SiglipConfig

from modeling_concept_clip import ConceptCLIPModel, ConceptLossConfig, ConceptSiglipModel, c2lip_losses


def make_model(kind: str):
    if kind == "clip":
        config = CLIPConfig(vision_config={"patch_size": 16, "image_size": 224})
        return ConceptCLIPModel(config, ConceptLossConfig()), 20, 8
    return ConceptSiglipModel(SiglipConfig(), ConceptLossConfig()), 64, 64


def make_batch(model, images: int, concepts_per_image: int, caption_length: int, concept_length: int, distinct: int):
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.text_config.vocab_size
    size = model.config.vision_config.image_size
    num_concepts = images * concepts_per_image
    # `distinct` concepts per image are new; the others repeat concepts of other images.
    pool = torch.randint(0, vocab - 2, (images * distinct, concept_length), generator=generator)
    choice = torch.cat(
        [
            torch.arange(images * distinct),
            torch.randint(0, images * distinct, (num_concepts - images * distinct,), generator=generator),
        ]
    )
    batch = dict(
        pixel_values=torch.randn(images, 3, size, size, generator=generator),
        input_ids=torch.randint(0, vocab - 2, (images, caption_length), generator=generator),
        concept_input_ids=pool[choice],
        concept_image_index=torch.arange(images).repeat_interleave(concepts_per_image),
    )
    if isinstance(model, ConceptCLIPModel):  # CLIP pools at the first EOS: put one at the end of every text
        eos = model.config.text_config.eos_token_id
        batch["input_ids"][:, -1] = eos
        batch["concept_input_ids"][:, -1] = eos
    return batch


def timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def step_breakdown(model, batch, with_concepts: bool) -> dict[str, float]:
    """The model's forward split into its parts (same calls as `forward`), then the backward pass."""
    times = {}
    (_, image_embeds, tokens), times["image forward"] = timed(
        lambda: model._image_embeds_and_tokens(batch["pixel_values"], False)
    )
    (_, text_embeds), times["caption text forward"] = timed(lambda: model._text_embeds(batch["input_ids"], None))
    concept_embeds = None
    if with_concepts:
        concept_embeds, times["concept text forward"] = timed(
            lambda: model._concept_embeds(batch["concept_input_ids"], None)
        )
        concept_embeds = F.normalize(concept_embeds, dim=-1)
    losses, times["losses (pooling, NPC, XAC, caption)" if with_concepts else "losses (caption)"] = timed(
        lambda: c2lip_losses(
            image_embeds=F.normalize(image_embeds, dim=-1),
            text_embeds=F.normalize(text_embeds, dim=-1),
            logit_scale=model.logit_scale.exp(),
            logit_bias=getattr(model, "logit_bias", None),
            loss_form=model.loss_form,
            concept_embeds=concept_embeds,
            image_tokens=F.normalize(tokens, dim=-1),
            concept_image_index=batch["concept_image_index"],
            concept_ids=torch.arange(batch["concept_image_index"].shape[0]),
            config=model.concept_config,
        )
    )
    _, times["backward"] = timed(lambda: losses.loss.backward())
    model.zero_grad(set_to_none=True)
    times["step"] = sum(times.values())
    return times


def full_step(model, batch, with_concepts: bool) -> float:
    inputs = dict(batch) if with_concepts else {k: batch[k] for k in ("pixel_values", "input_ids")}
    start = time.perf_counter()
    model(**inputs, return_loss=True).loss.backward()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["clip", "siglip"], choices=["clip", "siglip"])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--concepts_per_image", type=int, default=4)
    parser.add_argument(
        "--distinct_concepts", type=int, default=3, help="new concepts per image (<= concepts_per_image)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.images} images, "
        f"{args.concepts_per_image} concepts per image ({args.distinct_concepts} distinct); median of {args.repeats}\n"
    )
    for kind in args.models:
        model, caption_length, concept_length = make_model(kind)
        model.train()
        batch = make_batch(
            model, args.images, args.concepts_per_image, caption_length, concept_length, args.distinct_concepts
        )
        full_step(model, batch, True)  # warm-up
        rows = {}
        for label, with_concepts in (("plain (caption loss)", False), ("C2LIP", True)):
            parts = [step_breakdown(model, batch, with_concepts) for _ in range(args.repeats)]
            rows[label] = {name: statistics.median(p[name] for p in parts) for name in parts[0]}
            rows[label]["model(...) + backward"] = statistics.median(
                full_step(model, batch, with_concepts) for _ in range(args.repeats)
            )
        names = list(dict.fromkeys(name for row in rows.values() for name in row))
        print(
            f"### {kind}: {type(model).__name__} from the default base config ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters)\n"
        )
        print("| part (s) | plain (caption loss) | C2LIP |")
        print("|---|---|---|")
        for name in names:
            cells = [f"{rows[label][name]:.3f}" if name in rows[label] else "-" for label in rows]
            print(f"| {name} | " + " | ".join(cells) + " |")
        ratio = rows["C2LIP"]["model(...) + backward"] / rows["plain (caption loss)"]["model(...) + backward"]
        print(f"\nC2LIP step / plain step: {ratio:.2f}x\n")


if __name__ == "__main__":
    main()
