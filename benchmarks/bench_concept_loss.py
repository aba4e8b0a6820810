"""NPC + XAC forward and backward: the vectorised library code against the release's per-concept loop.

    python benchmarks/bench_concept_loss.py            # M=96 images, 4 concepts each, T=196 tokens, D=768

Each variant runs in a fresh subprocess on the same seeded inputs. Peak memory is the process's peak resident set
size (VmHWM, reset through /proc/self/clear_refs after the inputs are built) minus the resident size at that point,
so it counts what the loss computation allocates on top of its inputs. The subprocesses run with glibc's mmap
threshold at 64 kB, so that freed tensors leave the resident set at once and it tracks live memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def make_inputs(num_images: int, concepts_per_image: int, num_tokens: int, dim: int):
    generator = torch.Generator().manual_seed(0)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=generator), dim=-1).requires_grad_()

    num_concepts = num_images * concepts_per_image
    return dict(
        image_embeds=unit(num_images, dim),
        text_embeds=unit(num_images, dim),
        concept_embeds=unit(num_concepts, dim),
        image_tokens=unit(num_images, num_tokens, dim),
        concept_image_index=torch.arange(num_images).repeat_interleave(concepts_per_image),
        logit_scale=torch.tensor(10.0, requires_grad=True),
        logit_bias=torch.tensor(-10.0, requires_grad=True),
    )


def naive_loss(inputs, tau=1.0, npc_weight=1.0, xac_weight=0.01):
    """The release's algorithm: one attention (and one pooled vector per image) per concept, in a Python loop."""
    image, text, concepts = inputs["image_embeds"], inputs["text_embeds"], inputs["concept_embeds"]
    tokens, index = inputs["image_tokens"], inputs["concept_image_index"]
    scale, bias = inputs["logit_scale"], inputs["logit_bias"]
    num_images = image.shape[0]
    caption_logits = scale * image @ text.T + bias
    caption_labels = 2 * torch.eye(num_images) - 1
    caption = -F.logsigmoid(caption_labels * caption_logits).sum() / num_images

    labels = -torch.ones(num_images, concepts.shape[0])
    for column, image_index in enumerate(index.tolist()):
        labels[image_index, column] = 1.0
    npc_logits = scale * image @ concepts.T + bias
    npc = -F.logsigmoid(labels * npc_logits).sum() / concepts.shape[0]

    columns = []
    for concept in concepts:
        query = concept.view(1, -1, 1).expand(num_images, -1, -1)  # (M, D, 1)
        attention = torch.softmax(tau * torch.bmm(tokens, query), dim=1)  # (M, T, 1)
        pooled = torch.bmm(tokens.transpose(1, 2), attention).squeeze(-1)  # (M, D)
        columns.append(F.normalize(pooled, dim=-1, eps=1e-8) @ concept)
    xac_logits = scale * torch.stack(columns, dim=1) + bias
    xac = -F.logsigmoid(labels * xac_logits).sum() / concepts.shape[0]
    return caption + npc_weight * npc + xac_weight * xac


def vectorised_loss(inputs, memory_budget_mb):
    from modeling_concept_clip import ConceptLossConfig, c2lip_losses

    config = ConceptLossConfig(concept_positives="owner", pooling_memory_mb=memory_budget_mb)
    return c2lip_losses(loss_form="sigmoid", config=config, **inputs).loss


def resident_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))


def run_variant(args) -> dict:
    torch.manual_seed(0)
    inputs = make_inputs(args.images, args.concepts_per_image, args.tokens, args.dim)
    leaves = [t for t in inputs.values() if t.requires_grad]

    def step():
        loss = naive_loss(inputs) if args.variant == "naive" else vectorised_loss(inputs, args.memory_budget_mb)
        grads = torch.autograd.grad(loss, leaves)
        return loss.item(), grads

    if args.variant != "naive":
        step()  # warm-up
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    baseline = resident_kb("VmRSS")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        loss, grads = step()
        times.append(time.perf_counter() - start)
    peak = resident_kb("VmHWM") - baseline
    return {
        "variant": args.variant,
        "seconds": min(times),
        "peak_mb": peak / 1024,
        "loss": loss,
        "grad_checksum": [float(g.double().abs().sum()) for g in grads],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--concepts_per_image", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=196)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the vectorised variant (best kept)")
    parser.add_argument(
        "--memory_budget_mb", type=float, nargs="+", default=[512.0, 64.0], help="pooling budgets to compare"
    )
    parser.add_argument("--variant", choices=["naive", "vectorised"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        args.memory_budget_mb = args.memory_budget_mb[0]
        print(json.dumps(run_variant(args)))
        return

    def launch(variant, budget, repeats):
        command = [sys.executable, __file__, "--variant", variant, f"--memory_budget_mb={budget}"]
        command += [f"--{name}={getattr(args, name)}" for name in ("images", "concepts_per_image", "tokens", "dim")]
        command.append(f"--repeats={repeats}")
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
        return json.loads(output.strip().splitlines()[-1])

    naive = launch("naive", args.memory_budget_mb[0], repeats=1)
    n = args.images * args.concepts_per_image
    print(
        f"NPC+XAC (+ caption) forward+backward, sigmoid form, M={args.images} images, N={n} concepts, "
        f"T={args.tokens}, D={args.dim}, torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print("| variant | time (s) | peak memory (MB) | speed-up | memory ratio | loss | max rel. grad diff |")
    print("|---|---|---|---|---|---|---|")
    print(f"| per-concept loop (release) | {naive['seconds']:.2f} | {naive['peak_mb']:.0f} | 1.0x | 1.0x | "
          f"{naive['loss']:.6f} | - |")  # fmt: skip
    for budget in args.memory_budget_mb:
        fast = launch("vectorised", budget, repeats=args.repeats)
        grad_error = max(
            abs(a - b) / max(abs(a), 1e-12) for a, b in zip(naive["grad_checksum"], fast["grad_checksum"])
        )
        print(
            f"| vectorised, pooling budget {budget:g} MB | {fast['seconds']:.3f} | {fast['peak_mb']:.0f} | "
            f"{naive['seconds'] / fast['seconds']:.1f}x | {naive['peak_mb'] / max(fast['peak_mb'], 1e-9):.1f}x | "
            f"{fast['loss']:.6f} | {grad_error:.1e} |"
        )


if __name__ == "__main__":
    main()
