"""Run with `torchrun --nproc_per_node 2 tests/distributed_c2lip_check.py` (gloo, CPU).

Each process holds part of a global batch (uneven image counts; rank 1's images have no concepts at all). The
DDP-wrapped concept model must give, per process, a loss whose mean over processes equals the single-process
loss on the concatenated batch, and DDP-averaged gradients equal to the single-process gradients. Also checks the
pure-function contract (the losses of `c2lip_losses` with `world_size`/`rank` average to the single-process loss),
and that the C2LIP step with the collator's extras makes no host sync beyond those of the plain step (the sizes
exchanged through the CPU group are host reads by design, counted apart). Then the same with global concept
deduplication, on a batch whose processes share concepts. Last, `c2lip_losses` on embeddings of a larger uneven
global batch: the shares average to the single-process losses (inputs' gradients too), and no tensor of the forward
or backward pass has a dimension for every concept of the global batch and one for every image of it (such a
tensor grows with the square of the number of processes). And with hard negatives (NegCLIP's
baseline, with and without the concept losses), which only rank 0 has.
"""

import json

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from modeling_concept_clip import ConceptCLIPModel, ConceptLossConfig, ConceptSiglipModel, c2lip_losses
from modeling_concept_clip.collator import token_keys, unique_rows
from modeling_concept_clip.distributed import all_gather_host_lists, all_gather_sizes, plan_distinct_encoding
from modeling_concept_clip.host_syncs import HostSyncCounter
from modeling_concept_clip.testing_utils import build_tiny_model_and_processor

CAPTIONS = [
    "a big red circle and a blue square",
    "a cat next to a dog",
    "the man on the left",
    "a yellow star and a cat",
    "a green tree",
    "a white car",
]
# (concept, image); images 4 and 5 (rank 1) have none. "a cat" appears for images 1 and 3.
CONCEPTS = [("a big red circle", 0), ("a blue square", 0), ("a cat", 1), ("a dog", 1), ("the man", 2),
            ("a yellow star", 3), ("a cat", 3)]  # fmt: skip
# For global deduplication: "a cat" and "a dog" on both ranks.
CONCEPTS_ACROSS = [("a big red circle", 0), ("a cat", 1), ("a dog", 1), ("the man", 2), ("a cat", 3), ("a cat", 4),
                   ("a green tree", 4), ("a dog", 5), ("a white car", 5)]  # fmt: skip
# Hard-negative captions (text, image whose caption gave it): all on rank 0, none on rank 1.
NEGATIVES = [("a blue circle and a red square", 0), ("a dog next to a cat", 1), ("a cat and a yellow star", 3)]
SPLIT = [(0, 4), (4, 6)]  # images of rank 0 and rank 1
TOLERANCE = dict(atol=2e-5, rtol=1e-4)


def make_batch(
    processor, model_type, images, pixel_values, collator_extras=False, all_concepts=CONCEPTS, negatives=None
):
    """The batch of images `[start, stop)`; `all_concepts=None`: no concept inputs; `negatives`: the hard negatives
    of these images (`negative_input_ids` with zero rows when none is theirs)."""
    padding = "max_length" if model_type == "siglip" else True
    start, stop = images
    if start == stop:  # a process whose rows were all bad: the tensors of a batch, with zero rows (no host lists)
        batch = make_batch(processor, model_type, (0, 1), pixel_values, collator_extras, all_concepts, negatives)
        return {key: value[:0] for key, value in batch.items() if isinstance(value, torch.Tensor)}
    negative_batch = {}
    if negatives is not None:
        texts = [text for text, image in negatives if start <= image < stop] or ["a"]
        tokens = processor.tokenizer(texts, padding=padding, return_tensors="pt")
        rows = len(texts) if any(start <= image < stop for _, image in negatives) else 0
        negative_batch = {f"negative_{key}": value[:rows] for key, value in tokens.items()}
    captions = processor.tokenizer(CAPTIONS[start:stop], padding=padding, return_tensors="pt")
    if all_concepts is None:
        return dict(
            input_ids=captions.input_ids,
            attention_mask=captions.attention_mask,
            pixel_values=pixel_values[start:stop],
            **negative_batch,
        )
    concepts = [(text, image - start) for text, image in all_concepts if start <= image < stop]
    if concepts:
        tokens = processor.tokenizer([t for t, _ in concepts], padding=padding, return_tensors="pt")
        concept_ids, concept_mask = tokens.input_ids, tokens.attention_mask
    else:
        concept_ids = torch.zeros(0, 4, dtype=torch.long)
        concept_mask = torch.zeros(0, 4, dtype=torch.long)
    batch = dict(
        input_ids=captions.input_ids,
        attention_mask=captions.attention_mask,
        pixel_values=pixel_values[start:stop],
        concept_input_ids=concept_ids,
        concept_attention_mask=concept_mask,
        concept_image_index=torch.tensor([i for _, i in concepts], dtype=torch.long),
        **negative_batch,
    )
    if collator_extras:  # what ConceptCollator adds
        batch["concept_unique_index"], batch["concept_unique_inverse"] = unique_rows(concept_ids, concept_mask)
        index = batch["concept_unique_index"]
        batch["concept_unique_keys"] = token_keys(concept_ids[index], concept_mask[index])
        batch["concept_ids"] = torch.tensor([hash_free_id(t) for t, _ in concepts], dtype=torch.long)
    return batch


def ddp_against_single_process(
    model_type, plain, processor, pixel_values, config, all_concepts, rank, world_size, split=SPLIT, negatives=None
):
    """One DDP step of two processes against one process on the concatenated batch: losses, gradients, syncs."""
    concept_cls = ConceptCLIPModel if model_type == "clip" else ConceptSiglipModel
    # Single process on the concatenated batch (the process group is ignored).
    single = {**config, "gather_across_processes": False, "global_concept_dedup": False}
    reference = concept_cls(plain.config, ConceptLossConfig(**single))
    reference.load_state_dict(plain.state_dict())
    reference.train()
    full = make_batch(processor, model_type, (split[0][0], split[-1][1]), pixel_values, False, all_concepts, negatives)
    ref_out = reference(**full, return_loss=True)
    ref_out.loss.backward()
    ref_grads = {name: p.grad.clone() for name, p in reference.named_parameters()}

    # Two processes, DDP.
    model = concept_cls(plain.config, ConceptLossConfig(**config))
    model.load_state_dict(plain.state_dict())
    model.train()
    ddp = DistributedDataParallel(model)
    local = make_batch(processor, model_type, split[rank], pixel_values, True, all_concepts, negatives)
    with HostSyncCounter(host_only=[all_gather_sizes, all_gather_host_lists]) as syncs:
        out = ddp(**local, return_loss=True)
        out.loss.backward()

    results = {}
    for name in ("loss", "caption_loss", "npc_loss", "xac_loss"):
        if getattr(ref_out, name) is None:
            continue
        value = out[name].detach().clone()
        dist.all_reduce(value)
        torch.testing.assert_close(value / world_size, ref_out[name].detach(), **TOLERANCE)
        results[name] = [float(value / world_size), float(ref_out[name])]
    worst = 0.0
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], **TOLERANCE, msg=lambda m, n=name: f"{n}: {m}")
        worst = max(worst, float((p.grad - ref_grads[name]).abs().max()))
    results["max_grad_diff"] = worst
    return results, model, ddp, local, ref_out, syncs


def check(model_type, positives, rank, world_size):
    plain, processor = build_tiny_model_and_processor(model_type, seed=0)
    pixel_values = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    config = dict(npc_weight=1.0, xac_weight=0.5, tau=2.0, concept_positives=positives)
    results, model, ddp, local, ref_out, syncs = ddp_against_single_process(
        model_type, plain, processor, pixel_values, config, CONCEPTS, rank, world_size
    )

    # Host syncs of the same DDP model's plain step (captions only, local loss: the base class's forward).
    model.concept_config = ConceptLossConfig(**config, gather_across_processes=False)
    captions_only = {k: local[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with HostSyncCounter() as plain_syncs:
        ddp(**captions_only, return_loss=True).loss.backward()
    model.concept_config = ConceptLossConfig(**config)
    model.zero_grad()
    added = syncs.counts - plain_syncs.counts
    assert not added, f"the C2LIP step adds host syncs to the plain step: {dict(added)}"
    assert dict(syncs.host_only_counts) == {"tolist": world_size}, dict(syncs.host_only_counts)
    results["host_syncs"] = {"plain": dict(plain_syncs.counts), "c2lip": dict(syncs.counts)}

    # Pure function: shares of this process sum to the single-process loss, gradients of the inputs included.
    with torch.no_grad():
        out_local = model(**local)
    embeds = {
        "image_embeds": out_local.image_embeds.clone().requires_grad_(),
        "text_embeds": out_local.text_embeds.clone().requires_grad_(),
        "concept_embeds": out_local.concept_embeds.clone().requires_grad_(),
        "image_tokens": out_local.image_token_embeds.clone().requires_grad_(),
    }
    local_loss = c2lip_losses(
        **embeds,
        logit_scale=model.logit_scale.exp().detach(),
        logit_bias=getattr(model, "logit_bias", None),
        loss_form=model.loss_form,
        concept_image_index=local["concept_image_index"],
        concept_ids=torch.tensor([hash_free_id(t) for t, i in CONCEPTS if SPLIT[rank][0] <= i < SPLIT[rank][1]]),
        config=ConceptLossConfig(**config),
        world_size=world_size,
        rank=rank,
    ).loss
    local_loss.backward()
    total = local_loss.detach().clone()
    dist.all_reduce(total)
    total /= world_size  # each process returns world_size times its share
    torch.testing.assert_close(total, ref_out.loss.detach(), **TOLERANCE)
    results["sum_of_shares"] = [float(total), float(ref_out.loss)]

    # Global deduplication: each distinct concept of the two processes is encoded once, on one of them.
    dedup, *_, dedup_syncs = ddp_against_single_process(
        model_type, plain, processor, pixel_values, {**config, "global_concept_dedup": True}, CONCEPTS_ACROSS,
        rank, world_size,
    )  # fmt: skip
    assert not dedup_syncs.counts - plain_syncs.counts, dict(dedup_syncs.counts)
    assert dict(dedup_syncs.host_only_counts) == {"tolist": 3 * world_size}, dict(dedup_syncs.host_only_counts)
    # 8 distinct concepts per process in all, 6 in the global batch ("a cat" and "a dog" once), though the two
    # processes pad their concept tokens to different lengths.
    keys = make_batch(processor, model_type, SPLIT[rank], pixel_values, True, CONCEPTS_ACROSS)["concept_unique_keys"]
    plan = plan_distinct_encoding(all_gather_host_lists(keys, world_size), rank)
    assert plan.counts == [3, 3], plan
    results["global_dedup"] = {**dedup, "encoded_per_process": plan.counts}

    # A process whose rows were all bad takes part with a batch of zero rows (images, captions and concepts).
    empty, *_ = ddp_against_single_process(
        model_type, plain, processor, pixel_values, {**config, "global_concept_dedup": True}, CONCEPTS_ACROSS,
        rank, world_size, split=[(0, 4), (4, 4)],
    )  # fmt: skip
    results["process_without_rows"] = empty
    return results


class TensorShapes(TorchDispatchMode):
    """The shapes of the tensors that every operation makes (forward and backward, collectives' buffers too)."""

    def __init__(self):
        super().__init__()
        self.shapes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes.update(tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


# Images and concepts per image of each process; the global sizes (12 images, 31 concepts) are no local size.
EMBEDDING_SPLIT = [(7, 3), (5, 2)]


def check_linear_memory(form, positives, rank, world_size):
    """`c2lip_losses` on random embeddings (NPC and XAC) in 2 processes against one process on the global batch."""
    generator = torch.Generator().manual_seed(7)
    num_images = sum(m for m, _ in EMBEDDING_SPLIT)
    index = torch.cat([torch.arange(m).repeat_interleave(k) for m, k in EMBEDDING_SPLIT])
    index += torch.tensor([sum(m for m, _ in EMBEDDING_SPLIT[:p]) for p, (m, k) in enumerate(EMBEDDING_SPLIT) for _ in range(m * k)])  # fmt: skip
    ids = torch.randint(0, 6, index.shape, generator=generator)  # repeated identities across images and processes
    full = {
        "image_embeds": F.normalize(torch.randn(num_images, 4, generator=generator), dim=-1),
        "text_embeds": F.normalize(torch.randn(num_images, 4, generator=generator), dim=-1),
        "concept_embeds": F.normalize(torch.randn(len(index), 4, generator=generator), dim=-1),
        "image_tokens": F.normalize(torch.randn(num_images, 3, 4, generator=generator), dim=-1),
    }
    config = ConceptLossConfig(npc_weight=1.0, xac_weight=0.5, tau=2.0, concept_positives=positives)
    common = dict(logit_scale=torch.tensor(8.0), logit_bias=torch.tensor(-3.0) if form == "sigmoid" else None,
                  loss_form=form, config=config)  # fmt: skip
    leaves = {name: value.clone().requires_grad_() for name, value in full.items()}
    reference = c2lip_losses(**leaves, concept_image_index=index, concept_ids=ids, **common)
    reference_grads = torch.autograd.grad(reference.loss, list(leaves.values()))

    image_start = sum(m for m, _ in EMBEDDING_SPLIT[:rank])
    images = slice(image_start, image_start + EMBEDDING_SPLIT[rank][0])
    concepts = (index >= images.start) & (index < images.stop)
    local = {
        name: (value[concepts] if name == "concept_embeds" else value[images]).clone().requires_grad_()
        for name, value in full.items()
    }
    with TensorShapes() as made:
        shares = c2lip_losses(
            **local, concept_image_index=index[concepts] - images.start, concept_ids=ids[concepts],
            world_size=world_size, rank=rank, **common,
        )  # fmt: skip
        grads = torch.autograd.grad(shares.loss, list(local.values()))
    for name in ("loss", "caption_loss", "npc_loss", "xac_loss"):
        total = getattr(shares, name).detach().clone()
        dist.all_reduce(total)
        torch.testing.assert_close(total / world_size, getattr(reference, name), **TOLERANCE)
    worst = 0.0
    for name, grad, expected in zip(local, grads, reference_grads):
        # Each process returns world_size times its share, so its inputs' gradients are world_size times theirs.
        expected = expected[concepts] if name == "concept_embeds" else expected[images]
        torch.testing.assert_close(grad / world_size, expected, **TOLERANCE)
        worst = max(worst, float((grad / world_size - expected).abs().max()))
    quadratic = [shape for shape in made.shapes if len(index) in shape and num_images in shape]
    assert not quadratic, f"tensors of (global concepts x global images): {quadratic}"
    return {"max_grad_diff": worst, "shapes": len(made.shapes)}


def check_hard_negatives(model_type, rank, world_size):
    """Hard negatives on rank 0 only (uneven: 3 and 0), without concepts (NegCLIP's baseline) and with them (C2LIP
    plus hard negatives): DDP losses and gradients against one process, and no host sync beyond the plain step."""
    plain, processor = build_tiny_model_and_processor(model_type, seed=0)
    pixel_values = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    config = dict(npc_weight=1.0, xac_weight=0.5, tau=2.0, concept_positives="shared")
    results = {}
    for name, concepts in (("negclip", None), ("c2lip", CONCEPTS)):
        result, model, ddp, local, _, syncs = ddp_against_single_process(
            model_type, plain, processor, pixel_values, config, concepts, rank, world_size, negatives=NEGATIVES
        )
        assert local["negative_input_ids"].shape[0] == (3 if rank == 0 else 0)
        model.concept_config = ConceptLossConfig(**config, gather_across_processes=False)
        captions_only = {k: local[k] for k in ("input_ids", "attention_mask", "pixel_values")}
        with HostSyncCounter() as plain_syncs:
            ddp(**captions_only, return_loss=True).loss.backward()
        assert not syncs.counts - plain_syncs.counts, dict(syncs.counts)
        results[name] = result
    return results


def hash_free_id(text):
    return sorted({t for t, _ in CONCEPTS + CONCEPTS_ACROSS}).index(text)


def main():
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    assert world_size == 2, "run with --nproc_per_node 2"
    report = {}
    for model_type in ("clip", "siglip"):
        for positives in ("owner", "shared"):
            report[f"{model_type}/{positives}"] = check(model_type, positives, rank, world_size)
    for form in ("softmax", "sigmoid"):
        for positives in ("owner", "shared"):
            report[f"embeddings/{form}/{positives}"] = check_linear_memory(form, positives, rank, world_size)
    report["hard_negatives"] = {
        model_type: check_hard_negatives(model_type, rank, world_size) for model_type in ("clip", "siglip")
    }
    if rank == 0:
        print("C2LIP-DISTRIBUTED-OK " + json.dumps(report))
    dist.barrier()  # no process tears gloo down while a peer still has traffic in flight (an abort at exit)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
