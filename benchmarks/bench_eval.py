"""Throughput of the evaluation embedding loop (`ModelEmbedder`): images/s and texts/s, on randomly initialised
tiny and base-size CLIP and SigLIP models.

Images are 640x480 JPEG files on disk (COCO-sized), so the image numbers include decoding, resizing and
normalising with the PIL processors in the worker threads. Texts are unique 12-word captions (no cache hits);
CLIP pads each batch to its longest text, SigLIP pads to 64 tokens. Each number is the best of `--repeats` timed
passes after one warm-up pass, with a fresh embedder (empty cache) per pass.

    python benchmarks/bench_eval.py                # all four models
    python benchmarks/bench_eval.py --models tiny-clip tiny-siglip --images 64 --texts 256
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipProcessor,
)

from modeling_concept_clip.evaluation import EmbeddingConfig, ImageRef, ModelEmbedder
from modeling_concept_clip.testing_utils import TINY_WORDS, build_tiny_model_and_processor
from modeling_concept_clip.tokenization import build_word_level_clip_tokenizer

MODELS = ("tiny-clip", "tiny-siglip", "clip-base", "siglip-base")


def build(name: str):
    """`(model, processor, description)`; base sizes are the library defaults (ViT-B/32 CLIP, ViT-B/16 SigLIP)."""
    if name.startswith("tiny-"):
        model, processor = build_tiny_model_and_processor(name.removeprefix("tiny-"))
        return model, processor, "2 layers, width 32, 32 px images"
    torch.manual_seed(0)
    if name == "clip-base":
        tokenizer = build_word_level_clip_tokenizer(TINY_WORDS, model_max_length=77)
        ids = {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
               "pad_token_id": tokenizer.eos_token_id}  # fmt: skip
        model = CLIPModel(CLIPConfig(text_config=ids))
        processor = CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tokenizer)
        return model.eval(), processor, "CLIPConfig() defaults: ViT-B/32, 224 px, text 77 tokens"
    tokenizer = build_word_level_clip_tokenizer(TINY_WORDS, model_max_length=64)
    ids = {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
           "pad_token_id": tokenizer.eos_token_id}  # fmt: skip
    model = SiglipModel(SiglipConfig(text_config=ids))
    processor = SiglipProcessor(image_processor=SiglipImageProcessorPil(), tokenizer=tokenizer)
    return model.eval(), processor, "SiglipConfig() defaults: ViT-B/16, 224 px, text 64 tokens"


def make_inputs(folder: Path, num_images: int, num_texts: int) -> tuple[list[ImageRef], list[str]]:
    rng = np.random.default_rng(0)
    refs = []
    for index in range(num_images):
        path = folder / f"{index:05d}.jpg"
        if not path.exists():
            pixels = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, quality=90)
        refs.append(ImageRef.from_file(path, origin=f"bench image {index}"))
    words = random.Random(0)
    texts = [" ".join(words.choice(TINY_WORDS) for _ in range(12)) + f" {i}" for i in range(num_texts)]
    return refs, texts


def best_rate(run, count: int, repeats: int) -> float:
    run(slice(0, min(count, 8)))  # warm-up: allocator, thread pools, first-call overheads
    best = min(_timed(run, slice(0, count)) for _ in range(repeats))
    return count / best


def _timed(run, items: slice) -> float:
    start = time.perf_counter()
    run(items)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--images", type=int, default=48, help="images per timed pass")
    parser.add_argument("--texts", type=int, default=128, help="texts per timed pass")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--image_batch_size", type=int, default=EmbeddingConfig.image_batch_size)
    parser.add_argument("--text_batch_size", type=int, default=EmbeddingConfig.text_batch_size)
    parser.add_argument("--num_workers", type=int, default=EmbeddingConfig.num_workers)
    args = parser.parse_args()

    config = EmbeddingConfig(
        image_batch_size=args.image_batch_size, text_batch_size=args.text_batch_size,
        num_workers=args.num_workers, progress=False,
    )  # fmt: skip
    rows, load_before = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        refs, texts = make_inputs(Path(folder), args.images, args.texts)
        for name in args.models:
            model, processor, description = build(name)
            parameters = sum(p.numel() for p in model.parameters()) / 1e6

            def embed_images(items, model=model, processor=processor):
                ModelEmbedder(model, processor, config).embed_images(refs[items])

            def embed_texts(items, model=model, processor=processor):
                ModelEmbedder(model, processor, config).embed_texts(texts[items])

            image_rate = best_rate(embed_images, args.images, args.repeats)
            text_rate = best_rate(embed_texts, args.texts, args.repeats)
            rows.append((name, description, parameters, image_rate, text_rate))
            print(f"{name}: {image_rate:.1f} images/s, {text_rate:.1f} texts/s", file=sys.stderr, flush=True)

    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    print(f"Command: `{command}`\n")
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, transformers {transformers.__version__}, float32, "
        f"1-minute load average {load_before:.1f} before the run and {os.getloadavg()[0]:.1f} after it.\n"
        f"Embedding loop: image batch {config.image_batch_size}, text batch {config.text_batch_size}, "
        f"{config.num_workers} image worker threads; {args.images} JPEG images of 640x480 and {args.texts} "
        f"unique 12-word captions per pass, best of {args.repeats} passes.\n"
    )
    print("| model | configuration | parameters (M) | images/s | texts/s |")
    print("|---|---|---:|---:|---:|")
    for name, description, parameters, image_rate, text_rate in rows:
        print(f"| {name} | {description} | {parameters:.2f} | {image_rate:.1f} | {text_rate:.1f} |")


if __name__ == "__main__":
    main()
