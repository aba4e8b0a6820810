"""Cost of one C2LIP training step against the plain caption-loss step: time, peak memory, FLOP limit, host syncs.

    python benchmarks/bench_train_step.py                                   # CPU, float32, 16 images
    python benchmarks/bench_train_step.py --device cuda --dtype bfloat16 --images 96 256 --repeats 10

Models are randomly initialised from the base-size configs, CLIP ViT-B/16 and SigLIP B/16 (the cost does not
depend on the weights). A step is forward + backward of `model(**batch, return_loss=True)` (no optimizer: it is the
same for both), with bf16 autocast when `--dtype bfloat16`. The batch is what `ConceptCollator` gives: CLIP
captions of 12-20 tokens and concepts of 4-8 tokens with padding masks; SigLIP texts padded to 64 tokens without a
mask (its tokenizer's); `--concepts_per_image` concepts per image of which `--distinct_concepts` are new (the others
repeat other images' concepts, as "a man" does), with the collator's distinct rows and identities.

Per model and batch size, one subprocess times the plain step, the C2LIP step and the C2LIP step with concept
checkpointing interleaved (median of `--repeats` steps each, after two warm-up rounds; interleaving makes load from
other processes hit all three alike; on a CPU the process's CPU time is measured, as other jobs stretch the wall
time of every small operation) and counts the host syncs of one step of each (`HostSyncCounter`, and on
CUDA the warnings of `torch.cuda.set_sync_debug_mode`); a fresh subprocess per variant measures its peak memory
(`torch.cuda.max_memory_allocated`; on a CPU, the peak resident set size of the process).
The FLOP-limit ratio is (plain + C2LIP's extra multiply-accumulates) / plain, from the configs: transformer blocks,
patch embedding, the concept texts (distinct ones), the patch-token path, NPC and the attention pooling;
backward = 2 x forward, and with concept checkpointing one more concept text forward.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch
from transformers import CLIPConfig, SiglipConfig

from modeling_concept_clip import ConceptCLIPModel, ConceptLossConfig, ConceptSiglipModel
from modeling_concept_clip.collator import unique_rows
from modeling_concept_clip.host_syncs import HostSyncCounter

MODELS = {"clip": "CLIP ViT-B/16", "siglip": "SigLIP B/16"}
TEXT_LENGTHS = {"clip": ((12, 20), (4, 8)), "siglip": ((64, 64), (64, 64))}  # (caption, concept) length ranges


def make_config(kind: str):
    if kind == "clip":
        return CLIPConfig(vision_config={"patch_size": 16, "image_size": 224})
    return SiglipConfig()


def _texts(generator, count: int, lengths: tuple[int, int], vocab: int, eos: int | None):
    """`(input_ids, attention_mask or None)`: random tokens, right-padded like the tokenizer's output."""
    low, high = lengths
    ids = torch.randint(0, vocab - 2, (count, high), generator=generator)
    if low == high:
        return ids, None
    sizes = torch.randint(low, high + 1, (count,), generator=generator)
    mask = (torch.arange(high)[None, :] < sizes[:, None]).long()
    ids[torch.arange(count), sizes - 1] = eos  # CLIP pools at the first EOS
    ids = torch.where(mask.bool(), ids, eos)  # CLIP's tokenizer pads with EOS
    return ids, mask


def make_batch(kind: str, config, images: int, concepts_per_image: int, distinct: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    vocab = config.text_config.vocab_size
    eos = getattr(config.text_config, "eos_token_id", None)
    caption_lengths, concept_lengths = TEXT_LENGTHS[kind]
    size = config.vision_config.image_size
    num_concepts = images * concepts_per_image
    pool_ids, pool_mask = _texts(generator, images * distinct, concept_lengths, vocab, eos)
    # `distinct` new concepts per image, the others repeat concepts of other images.
    repeats = torch.randint(0, images * distinct, (num_concepts - images * distinct,), generator=generator)
    choice = torch.cat([torch.arange(images * distinct), repeats])
    input_ids, attention_mask = _texts(generator, images, caption_lengths, vocab, eos)
    batch = dict(pixel_values=torch.randn(images, 3, size, size, generator=generator), input_ids=input_ids)
    concepts = dict(concept_input_ids=pool_ids[choice], concept_ids=choice)
    if attention_mask is not None:
        batch["attention_mask"] = attention_mask
        concepts["concept_attention_mask"] = pool_mask[choice]
    concepts["concept_image_index"] = torch.arange(images).repeat_interleave(concepts_per_image)
    masks = [concepts["concept_attention_mask"]] if attention_mask is not None else []
    concepts["concept_unique_index"], concepts["concept_unique_inverse"] = unique_rows(
        concepts["concept_input_ids"], *masks
    )
    return batch, concepts


def _block_macs(length: int, width: int, mlp: int, layers: int) -> int:
    """Forward multiply-accumulates of `layers` transformer blocks on one sequence."""
    return layers * (length * (4 * width * width + 2 * width * mlp) + 2 * length * length * width)


def flop_limit(
    kind: str, config, images: int, concepts_per_image: int, distinct: int, checkpointing: bool
) -> tuple[float, float]:
    """`(plain forward MACs per image, C2LIP / plain training-step ratio)` from the configs."""
    vision, text = config.vision_config, config.text_config
    patches = (vision.image_size // vision.patch_size) ** 2
    tokens = patches + (1 if kind == "clip" else 0)
    v_width, v_mlp, t_width, t_mlp = (
        vision.hidden_size,
        vision.intermediate_size,
        text.hidden_size,
        text.intermediate_size,
    )
    image = (
        _block_macs(tokens, v_width, v_mlp, vision.num_hidden_layers) + patches * 3 * vision.patch_size**2 * v_width
    )
    caption_length, concept_length = (TEXT_LENGTHS[kind][0][1], TEXT_LENGTHS[kind][1][1])
    if kind == "clip":
        dim = config.projection_dim
        image += v_width * dim
        patch_path = patches * v_width * dim  # visual_projection of every patch
        caption = _block_macs(caption_length, t_width, t_mlp, text.num_hidden_layers) + t_width * dim
        concept = _block_macs(concept_length, t_width, t_mlp, text.num_hidden_layers) + t_width * dim
    else:
        dim = v_width
        # The attention-pooling head: one probe query over all tokens; every patch token also goes through it
        # as a sequence of one (query, key/value and output projections, MLP).
        image += 2 * v_width * v_width + 2 * patches * v_width * v_width + 2 * v_width * v_mlp
        patch_path = patches * (4 * v_width * v_width + 2 * v_width * v_mlp)
        caption = concept = _block_macs(caption_length, t_width, t_mlp, text.num_hidden_layers) + t_width * t_width
    plain = image + caption
    num_concepts = images * concepts_per_image
    pooling = num_concepts * patches * (dim + patches) + patches * patches * dim  # per image, see pooling.py
    npc = num_concepts * dim
    concepts = distinct * concept
    extra_step = 3 * (concepts + patch_path + pooling + npc) + (concepts if checkpointing else 0)
    return plain, (3 * plain + extra_step) / (3 * plain)


VARIANTS = ("plain", "c2lip", "c2lip+checkpointing")


class _Steps:
    """The model and batch of one (model, images) row; `step(variant)` runs forward + backward."""

    def __init__(self, args):
        if args.threads:
            torch.set_num_threads(args.threads)
        self.device = torch.device(args.device)
        self.dtype = getattr(torch, args.dtype)
        torch.manual_seed(0)
        config = make_config(args.model)
        model_class = ConceptCLIPModel if args.model == "clip" else ConceptSiglipModel
        self.model = model_class(config, ConceptLossConfig()).to(self.device).train()
        batch, concepts = make_batch(args.model, config, args.images, args.concepts_per_image, args.distinct_concepts)
        self.batches = {"plain": batch, "c2lip": {**batch, **concepts}}
        self.batches = {k: {n: t.to(self.device) for n, t in b.items()} for k, b in self.batches.items()}

    def step(self, variant: str) -> None:
        checkpointing = variant == "c2lip+checkpointing"
        self.model.concept_config = ConceptLossConfig(concept_gradient_checkpointing=checkpointing)
        batch = self.batches["plain" if variant == "plain" else "c2lip"]
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            loss = self.model(**batch, return_loss=True).loss
        loss.backward()
        self.model.zero_grad(set_to_none=True)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def run_timing(args) -> dict:
    """Median step time and host syncs of every variant, interleaved step by step so that load from other
    processes on a shared machine hits all variants alike."""
    steps = _Steps(args)
    for variant in VARIANTS * 2:  # warm-up
        steps.step(variant)
    # On a CPU, the process's CPU time: other jobs on a shared machine stretch the wall time of every small
    # operation (the scheduler's time slices), which inflates the step with more operations.
    clock = time.perf_counter if steps.device.type == "cuda" else time.process_time
    times = {variant: [] for variant in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            steps.synchronize()
            start = clock()
            steps.step(variant)
            steps.synchronize()
            times[variant].append(clock() - start)
    results = {}
    for variant in VARIANTS:
        with HostSyncCounter() as syncs:
            steps.step(variant)
        steps.synchronize()
        debug_syncs = None
        if steps.device.type == "cuda":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                steps.step(variant)
                torch.cuda.set_sync_debug_mode("default")
            debug_syncs = sum("synchronizing" in str(w.message) for w in caught)
        results[variant] = {
            "seconds": statistics.median(times[variant]),
            "syncs": syncs.total,
            "sync_ops": dict(syncs.counts),
            "debug_syncs": debug_syncs,
        }
    return results


def run_memory(args) -> float:
    """Peak memory of a step of `args.variant` in this (fresh) process, in MB."""
    steps = _Steps(args)
    steps.step(args.variant)  # warm-up
    steps.synchronize()
    if steps.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        steps.step(args.variant)
        return torch.cuda.max_memory_allocated() / 2**20
    steps.step(args.variant)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def launch(args, model: str, images: int, variant: str | None):
    """`run_timing` (variant None) or `run_memory` in a fresh subprocess."""
    command = [sys.executable, __file__, "--row", model, str(images), variant or "timing"]
    for name in ("device", "dtype", "concepts_per_image", "distinct_concepts", "repeats", "threads"):
        command.append(f"--{name}={getattr(args, name)}")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(output.strip().splitlines()[-1])


def _syncs(row: dict) -> str:
    return f"{row['syncs']}" + ("" if row["debug_syncs"] is None else f" ({row['debug_syncs']})")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["clip", "siglip"], choices=list(MODELS))
    parser.add_argument("--images", nargs="+", type=int, default=[16], help="images per step (one row each)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--concepts_per_image", type=int, default=4)
    parser.add_argument("--distinct_concepts", type=int, default=3, help="new concepts per image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per process on a CPU (0: torch's default); with 1, the "
        "CPU time of a step is its compute alone, without the spinning of idle worker threads",
    )
    parser.add_argument("--row", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        args.model, args.images, args.variant = args.row[0], int(args.row[1]), args.row[2]
        print(json.dumps(run_timing(args) if args.variant == "timing" else run_memory(args)))
        return

    machine = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU, torch threads: {args.threads or torch.get_num_threads()}"
    )
    memory = "torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else "peak RSS of the process"
    clock = "wall time" if args.device.startswith("cuda") else "CPU time of the process (all threads)"
    print(
        f"{machine}; torch {torch.__version__}; {args.dtype}; step time: {clock}; {args.concepts_per_image} "
        f"concepts per image "
        f"({args.distinct_concepts} distinct); forward + backward, median of {args.repeats} steps; peak memory: "
        f"{memory}; host syncs per step: HostSyncCounter"
        + (" (torch.cuda.set_sync_debug_mode)" if args.device.startswith("cuda") else "")
        + "\n"
    )
    print(
        "| model, images per step | plain step | C2LIP step | C2LIP / plain | FLOP-limit ratio | "
        "peak memory plain -> C2LIP | host syncs plain / C2LIP |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind in args.models:
        config = make_config(kind)
        for images in args.images:
            timing = launch(args, kind, images, None)
            memory = {variant: launch(args, kind, images, variant) for variant in VARIANTS}
            plain = timing["plain"]
            for variant in VARIANTS[1:]:
                row, checkpointing = timing[variant], "checkpointing" in variant
                _, limit = flop_limit(
                    kind, config, images, args.concepts_per_image, args.distinct_concepts, checkpointing
                )
                label = f"{MODELS[kind]}, {images}" + (", concept checkpointing" if checkpointing else "")
                print(
                    f"| {label} | {plain['seconds'] * 1e3:.0f} ms | {row['seconds'] * 1e3:.0f} ms | "
                    f"{row['seconds'] / plain['seconds']:.2f}x | {limit:.2f}x | "
                    f"{memory['plain'] / 1024:.1f} -> {memory[variant] / 1024:.1f} GB | "
                    f"{_syncs(plain)} / {_syncs(row)} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
