"""Run with `torchrun --nproc_per_node 2 tests/distributed_fsdp2_check.py` (gloo, CPU).

A `ConceptSiglipModel` sharded with FSDP2 (`fully_shard` on every `_no_split_modules` module, the attention-pooling
head included, then on the root) must give, with half of the batch per process, the single-process loss and
gradients: the concept forward calls the sharded modules (the head once per patch token), never their raw weights.
(Accelerate turns FSDP on only on accelerators, so this shards the model directly. The training loop runs FSDP2 for
SigLIP and for CLIP, whose 0-dimensional `logit_scale` it gives shape [1]: tests/test_train_distributed.py.)
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from modeling_concept_clip import ConceptLossConfig, ConceptSiglipModel
from modeling_concept_clip.testing_utils import build_tiny_model_and_processor

CAPTIONS = ["a big red circle and a blue square", "a cat next to a dog", "the man on the left", "a yellow star",
            "a green tree", "a white car"]  # fmt: skip
CONCEPTS = [("a big red circle", 0), ("a blue square", 0), ("a cat", 1), ("a dog", 1), ("the man", 2),
            ("a yellow star", 3), ("a green tree", 4), ("a white car", 5)]  # fmt: skip


def main():
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    plain, processor = build_tiny_model_and_processor("siglip", seed=0)
    pixel_values = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    def batch(start, stop):
        captions = processor.tokenizer(CAPTIONS[start:stop], padding="max_length", return_tensors="pt")
        concepts = [(text, image - start) for text, image in CONCEPTS if start <= image < stop]
        tokens = processor.tokenizer([t for t, _ in concepts], padding="max_length", return_tensors="pt")
        return dict(
            input_ids=captions.input_ids, attention_mask=captions.attention_mask, pixel_values=pixel_values[start:stop],
            concept_input_ids=tokens.input_ids, concept_attention_mask=tokens.attention_mask,
            concept_image_index=torch.tensor([i for _, i in concepts]),
        )  # fmt: skip

    config = dict(npc_weight=1.0, xac_weight=0.5, tau=2.0)
    reference = ConceptSiglipModel(plain.config, ConceptLossConfig(**config, gather_across_processes=False))
    reference.load_state_dict(plain.state_dict())
    expected = reference(**batch(0, 6), return_loss=True)
    expected.loss.backward()

    model = ConceptSiglipModel(plain.config, ConceptLossConfig(**config))
    model.load_state_dict(plain.state_dict())
    mesh = init_device_mesh("cpu", (world_size,))
    sharded = [m for m in model.modules() if type(m).__name__ in model._no_split_modules]
    for module in sharded:
        fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    half = len(CAPTIONS) // world_size
    output = model(**batch(rank * half, (rank + 1) * half), return_loss=True)
    output.loss.backward()

    loss = output.loss.detach().clone()
    dist.all_reduce(loss)
    loss /= world_size  # the model's loss is scaled so that its mean over processes is the global loss
    # FSDP averages the gradients of the processes, as DDP does.
    worst = max(
        (p.grad.full_tensor() - q.grad).abs().max().item()
        for p, q in zip(model.parameters(), reference.parameters(), strict=True)
    )
    torch.testing.assert_close(loss, expected.loss.detach(), atol=1e-5, rtol=1e-5)
    if rank == 0:
        report = {"loss": [loss.item(), expected.loss.item()], "max_grad_diff": worst, "sharded_modules": len(sharded)}
        print("FSDP2-OK " + json.dumps(report))
    dist.barrier()  # no process tears gloo down while a peer still has traffic in flight (an abort at exit)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # About 1 run in 15 aborted at interpreter exit ("terminate called without an active exception": a native thread
    # still joinable when C++ statics are destroyed), after the check had passed. Leave without running destructors.
    sys.stdout.flush()
    os._exit(0)
