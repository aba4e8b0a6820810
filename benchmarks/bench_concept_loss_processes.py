"""Peak memory of the softmax concept loss (CLIP's NPC) per process, at growing batch and process counts.

    python benchmarks/bench_concept_loss_processes.py   # 2 and 4 CPU processes (gloo), 128-1024 images per process

Each process holds its part of a global batch (`--images` per process, `--concepts_per_image` concepts each, random
L2-normalised embeddings of `--dim`) and runs `c2lip_losses` forward and backward with `world_size`/`rank`, as a
training step does after the towers. XAC is off by default (`--xac_weight`): its attention pooling holds chunks of
at most `pooling_memory_mb` (512 MB by default) whatever the number of processes, which would hide the part that
grows with it. Peak memory is the process's peak resident set size
(VmHWM, reset through /proc/self/clear_refs after the inputs are built and a first step) minus its resident size at
that point, the largest over processes; the processes run with glibc's mmap threshold at 64 kB so that freed tensors
leave the resident set at once (as in bench_concept_loss.py). The table also gives the size of one float32 matrix of
every concept against every image of the global batch: what a process held, several times over, when it gathered
the global logits. Run it with `PYTHONPATH` at another checkout to measure that code instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from modeling_concept_clip import ConceptLossConfig, c2lip_losses


def resident_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))


def peak_mb(images: int, args, rank: int, world_size: int) -> float:
    """This process's peak memory of one loss step above its inputs, in MB."""
    generator = torch.Generator().manual_seed(rank)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=generator), dim=-1).requires_grad_()

    num_concepts = images * args.concepts_per_image
    inputs = dict(
        image_embeds=unit(images, args.dim),
        text_embeds=unit(images, args.dim),
        concept_embeds=unit(num_concepts, args.dim),
    )
    if args.xac_weight > 0:
        inputs["image_tokens"] = unit(images, args.tokens, args.dim)
    index = torch.arange(images).repeat_interleave(args.concepts_per_image)
    ids = torch.randint(0, 4 * num_concepts, (num_concepts,), generator=generator)  # a few repeated identities
    config = ConceptLossConfig(xac_weight=args.xac_weight, concept_positives=args.concept_positives)

    def step():
        losses = c2lip_losses(
            **inputs, logit_scale=torch.tensor(100.0), logit_bias=None, loss_form="softmax",
            concept_image_index=index, concept_ids=ids, config=config, world_size=world_size, rank=rank,
        )  # fmt: skip
        torch.autograd.grad(losses.loss, list(inputs.values()))

    step()  # warm-up
    dist.barrier()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    baseline = resident_kb("VmRSS")
    step()
    peak = torch.tensor((resident_kb("VmHWM") - baseline) / 1024)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return float(peak)


def worker(args) -> None:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    results = {images: peak_mb(images, args, rank, world_size) for images in args.images}
    if rank == 0:
        print(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--images", type=int, nargs="+", default=[128, 256, 512, 1024], help="per process")
    parser.add_argument("--concepts_per_image", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--xac_weight", type=float, default=0.0)
    parser.add_argument("--concept_positives", choices=["owner", "shared"], default="shared")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}
    print(
        f"softmax NPC{' + XAC' if args.xac_weight > 0 else ''} forward+backward per process, "
        f"{args.concepts_per_image} concepts per image, D={args.dim}, '{args.concept_positives}' positives, float32, CPU (gloo), "
        f"torch {torch.__version__}; peak memory above the inputs, largest over processes\n"
    )
    print("| processes | images per process | global batch | peak memory per process (MB) | one global "
          "(concepts x images) matrix (MB) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|")
    for processes in args.processes:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command += [__file__, "--worker", "--images", *map(str, args.images)]
        command += [
            f"--{name}={getattr(args, name)}" for name in ("concepts_per_image", "tokens", "dim", "xac_weight")
        ]
        command.append(f"--concept_positives={args.concept_positives}")
        output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
        results = json.loads(output.strip().splitlines()[-1])
        for images in args.images:
            total = images * processes
            matrix = total * args.concepts_per_image * total * 4 / 2**20
            print(f"| {processes} | {images} | {total} | {results[str(images)]:.0f} | {matrix:.0f} |")


if __name__ == "__main__":
    main()
