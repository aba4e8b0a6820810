"""Host syncs: the counter catches every kind it names, and the concept part of a C2LIP step adds none.

A CPU-only machine cannot observe a GPU sync, so `HostSyncCounter` counts the operations that force one on a GPU.
The model tests compare a C2LIP step (forward + backward, the collator's batch) with the plain step of the same
checkpoint (the base class's forward + backward on the captions alone).
"""

import pytest
import torch
from PIL import Image

from modeling_concept_clip import ConceptCLIPModel, ConceptCollator, ConceptLossConfig, ConceptSiglipModel
from modeling_concept_clip.host_syncs import HostSyncCounter
from modeling_concept_clip.testing_utils import build_tiny_model_and_processor


class _ItemInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * float(grad.sum())


def _backward_with_sync(x):
    _ItemInBackward.apply(x.float().requires_grad_()).sum().backward()


x = torch.tensor([3, 0, 5, 5, 1])
SYNCS = {
    "item": (lambda: x.sum().item(), "_local_scalar_dense"),
    "int": (lambda: int(x[0]), "_local_scalar_dense"),
    "if tensor": (lambda: bool(x.any()), "_local_scalar_dense"),
    "tolist": (lambda: x.tolist(), "tolist"),
    "numpy": (lambda: x.numpy(), "numpy"),
    "cpu": (lambda: x.cpu(), "cpu"),
    "nonzero": (lambda: x.nonzero(), "nonzero"),
    "where(condition)": (lambda: torch.where(x > 2), "nonzero"),
    "unique": (lambda: torch.unique(x), "unique"),
    "unique(dim=0)": (lambda: torch.unique(x[:, None], dim=0), "unique_dim"),
    "unique_consecutive": (lambda: torch.unique_consecutive(x), "unique_consecutive"),
    "masked_select": (lambda: x.masked_select(x > 2), "masked_select"),
    "boolean-mask read": (lambda: x[x > 2], "boolean-mask index"),
    "boolean-mask write": (lambda: x.clone().__setitem__(x > 2, 0), "boolean-mask index"),
    "repeat_interleave(tensor)": (lambda: torch.arange(5).repeat_interleave(x), "repeat_interleave"),
    "bincount": (lambda: x.bincount(), "bincount"),
    "equal": (lambda: torch.equal(x, x), "equal"),
    "upload of host data": (lambda: torch.tensor([1, 2], device=x.device), "tensor(data, device)"),
    "scalar read in backward": (lambda: _backward_with_sync(x), "_local_scalar_dense"),
}
SYNC_FREE = {
    "long index": lambda: x[torch.tensor([0, 2])],
    "sort, cumsum, scatter": lambda: torch.empty(5).scatter_(0, x.sort().indices, x.cumsum(0).float()),
    "repeat_interleave with output_size": lambda: torch.arange(5).repeat_interleave(x, output_size=14),
    "host tensor": lambda: torch.tensor([1, 2]),
    "reductions kept on device": lambda: (x > 2).sum().clamp_min(1),
}


@pytest.mark.parametrize("name", SYNCS)
def test_counter_catches_each_kind_of_sync(name):
    function, expected = SYNCS[name]
    with HostSyncCounter() as syncs:
        function()
    assert syncs.counts[expected] >= 1, dict(syncs.counts)


@pytest.mark.parametrize("name", SYNC_FREE)
def test_counter_ignores_sync_free_operations(name):
    with HostSyncCounter() as syncs:
        SYNC_FREE[name]()
    assert syncs.total == 0, dict(syncs.counts)


def test_host_only_functions_are_counted_apart():
    def exchange():
        return torch.tensor([4, 2]).tolist()

    with HostSyncCounter(host_only=[exchange]) as syncs:
        exchange()
        x.tolist()
    assert dict(syncs.counts) == {"tolist": 1} and dict(syncs.host_only_counts) == {"tolist": 1}


ROWS = [
    ("red", "a red circle next to a cat", ["a red circle", "a cat"]),
    ("blue", "a cat on a blue couch", ["a cat", "a blue couch"]),
    ("green", "the man on the left", ["the man"]),
    ("white", "a yellow star, a dog and a cat", ["a yellow star", "a dog", "a cat"]),
]
CLASSES = {"clip": ConceptCLIPModel, "siglip": ConceptSiglipModel}


@pytest.fixture(scope="module", params=["clip", "siglip"])
def tiny_batch(request):
    model_type = request.param
    plain, processor = build_tiny_model_and_processor(model_type, seed=1)
    rows = [{"image": Image.new("RGB", (32, 32), color), "caption": c, "concepts": k} for color, c, k in ROWS]
    batch = ConceptCollator(processor, pad_to_max_length=model_type == "siglip")(rows)
    del batch["skipped"], batch["num_rows"]
    return model_type, plain.train(), batch, processor


def step_syncs(model, batch) -> HostSyncCounter:
    with HostSyncCounter() as syncs:
        model(**batch, return_loss=True).loss.backward()
    model.zero_grad(set_to_none=True)
    return syncs


@pytest.mark.parametrize("positives", ["owner", "shared"])
def test_concept_part_adds_no_host_sync(tiny_batch, positives):
    model_type, plain, batch, _ = tiny_batch
    model = CLASSES[model_type](plain.config, ConceptLossConfig(concept_positives=positives, xac_weight=0.5))
    model.load_state_dict(plain.state_dict())
    model.train()
    captions = {key: batch[key] for key in ("pixel_values", "input_ids", "attention_mask")}
    plain_step = step_syncs(plain, captions)
    c2lip_step = step_syncs(model, batch)
    assert not c2lip_step.counts - plain_step.counts, dict(c2lip_step.counts)
    # The model builds the text towers' attention masks itself, so the C2LIP step has none of transformers'.
    assert c2lip_step.total == 0, dict(c2lip_step.counts)
    # Without the collator's extras, forward finds the distinct concepts itself and checks the indices: syncs.
    fallback = {k: v for k, v in batch.items() if k not in ("concept_unique_index", "concept_unique_inverse")}
    assert step_syncs(model, fallback).counts - plain_step.counts


def test_logit_scale_of_shape_one_adds_no_sync(tiny_batch):
    """FSDP2 needs CLIP's 0-dim logit_scale as shape (1,); the step stays sync-free and gives the same loss."""
    model_type, plain, batch, _ = tiny_batch
    model = CLASSES[model_type](plain.config, ConceptLossConfig(concept_positives="shared"))
    model.load_state_dict(plain.state_dict())
    scalar_loss = model(**batch, return_loss=True).loss
    model.logit_scale = torch.nn.Parameter(model.logit_scale.detach().reshape(1))
    with HostSyncCounter() as syncs:
        out = model(**batch, return_loss=True)
        out.loss.backward()
    assert syncs.total == 0 and out.loss.shape == () and out.npc_loss.shape == ()
    torch.testing.assert_close(out.loss, scalar_loss, rtol=0, atol=1e-6)
    assert model.logit_scale.grad.shape == (1,)


@pytest.mark.parametrize("concept_inputs", [True, False])
def test_hard_negatives_add_no_host_sync(tiny_batch, concept_inputs):
    """The NegCLIP baseline (caption loss with hard negatives) and C2LIP with them: no sync beyond the plain step."""
    model_type, plain, _, processor = tiny_batch
    rows = [{"image": Image.new("RGB", (32, 32), color), "caption": c, "concepts": k} for color, c, k in ROWS]
    rows.append({"image": Image.new("RGB", (32, 32)), "caption": "a red star and a blue dog",
                 "concepts": ["a red star", "a blue dog"]})  # fmt: skip
    collator = ConceptCollator(
        processor, concept_inputs=concept_inputs, hard_negatives="swap", pad_to_max_length=model_type == "siglip"
    )
    batch = collator(rows)
    del batch["skipped"], batch["num_rows"]
    assert batch["negative_input_ids"].shape[0] == 1
    model = CLASSES[model_type](plain.config, ConceptLossConfig(concept_positives="shared"))
    model.load_state_dict(plain.state_dict())
    model.train()
    syncs = step_syncs(model, batch)
    assert syncs.total == 0, dict(syncs.counts)
