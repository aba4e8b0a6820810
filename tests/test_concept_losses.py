"""Pooling and losses against the naive per-concept loop of `c2lip_reference`, forward and gradients."""

import pytest
import torch
import torch.nn.functional as F

from modeling_concept_clip import (
    ConceptLossConfig,
    c2lip_losses,
    concept_attention_scores,
    concept_ids_from_tokens,
    concept_positive_mask,
)
from modeling_concept_clip.pooling import concept_chunk_size

from .c2lip_reference import naive_c2lip_loss, naive_pooled_scores, naive_positives

ATOL = 1e-5


def random_batch(seed=0, num_images=5, num_tokens=7, dim=16):
    generator = torch.Generator().manual_seed(seed)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=generator), dim=-1).requires_grad_()

    # Concepts per image: 2, 0, 3, 1, 2; concept 5 repeats concept 0's text in another image ("a man" twice).
    index = torch.tensor([0, 0, 2, 2, 2, 3, 4, 4])
    ids = torch.tensor([10, 11, 12, 13, 14, 10, 15, 11])
    return dict(
        image=unit(num_images, dim),
        text=unit(num_images, dim),
        concepts=unit(len(index), dim),
        tokens=unit(num_images, num_tokens, dim),
        index=index,
        ids=ids,
    )


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, retain_graph=True)


@pytest.mark.parametrize("tau", [1.0, 10.0])
def test_pooled_scores_match_naive_loop(tau):
    batch = random_batch()
    inputs = [batch["concepts"], batch["tokens"]]
    ours = concept_attention_scores(*inputs, tau=tau)
    naive = naive_pooled_scores(*inputs, tau=tau)
    assert ours.shape == (8, 5)
    torch.testing.assert_close(ours, naive, atol=ATOL, rtol=0)
    weights = torch.randn(ours.shape)
    for mine, theirs in zip(grads((ours * weights).sum(), inputs), grads((naive * weights).sum(), inputs)):
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)


def test_chunked_pooling_equals_single_chunk_forward_and_backward():
    batch = random_batch(num_tokens=50, dim=32)
    inputs = [batch["concepts"], batch["tokens"]]
    # 1 concept of 5 images x 50 tokens needs 5 * 5 * 50 * 4 bytes = 5 kB; 0.006 MB -> 1 concept per chunk.
    assert concept_chunk_size(8, 5, 50, memory_budget_mb=0.006) == 1
    whole = concept_attention_scores(*inputs, tau=3.0, memory_budget_mb=None)
    chunked = concept_attention_scores(*inputs, tau=3.0, memory_budget_mb=0.006)
    torch.testing.assert_close(chunked, whole, atol=ATOL, rtol=0)
    for a, b in zip(grads(chunked.square().sum(), inputs), grads(whole.square().sum(), inputs)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_uniform_attention_pools_the_mean_token():
    # tau = 0: every token gets 1/T, so z is the mean token (hand computation).
    tokens = F.normalize(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), dim=-1)
    concept = torch.tensor([[1.0, 0.0]])
    score = concept_attention_scores(concept, tokens, tau=0.0)
    # z = (0.5, 0.5), |z| = sqrt(0.5), <z/|z|, c> = 0.5 / sqrt(0.5) = sqrt(0.5)
    assert score.item() == pytest.approx(0.5**0.5, abs=1e-7)


@pytest.mark.parametrize("mode", ["owner", "shared"])
def test_positive_mask_matches_naive(mode):
    batch = random_batch()
    ours = concept_positive_mask(batch["index"], 5, batch["ids"], mode)
    assert torch.equal(ours, naive_positives(batch["index"], 5, batch["ids"], mode))
    if mode == "shared":
        # concept 0 (id 10, image 0) is also positive for image 3, whose concept 5 has id 10
        assert ours[0, 3] and ours[5, 0]
        assert not ours[0, 2]


@pytest.mark.parametrize("form", ["sigmoid", "softmax"])
@pytest.mark.parametrize("mode", ["owner", "shared"])
def test_losses_match_naive_loop_forward_and_backward(form, mode):
    batch = random_batch(seed=1)
    scale = torch.tensor(7.5, requires_grad=True)
    bias = torch.tensor(-2.0, requires_grad=True) if form == "sigmoid" else None
    config = ConceptLossConfig(npc_weight=0.7, xac_weight=0.3, tau=2.0, concept_positives=mode)
    ours = c2lip_losses(
        image_embeds=batch["image"],
        text_embeds=batch["text"],
        logit_scale=scale,
        logit_bias=bias,
        loss_form=form,
        concept_embeds=batch["concepts"],
        image_tokens=batch["tokens"],
        concept_image_index=batch["index"],
        concept_ids=batch["ids"],
        config=config,
    )
    naive = naive_c2lip_loss(
        batch["image"], batch["text"], batch["concepts"], batch["tokens"], batch["index"], batch["ids"],
        scale, bias if bias is not None else 0.0, form, mode, tau=2.0, npc_w=0.7, xac_w=0.3,
    )  # fmt: skip
    for mine, theirs in zip((ours.loss, ours.caption_loss, ours.npc_loss, ours.xac_loss), naive):
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)
    leaves = [batch["image"], batch["text"], batch["concepts"], batch["tokens"], scale] + ([bias] if bias else [])
    for mine, theirs in zip(grads(ours.loss, leaves), grads(naive[0], leaves)):
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)


def test_shared_positives_differ_from_owner_when_texts_repeat():
    batch = random_batch(seed=2)
    common = dict(
        image_embeds=batch["image"], text_embeds=batch["text"], logit_scale=torch.tensor(10.0), logit_bias=None,
        loss_form="softmax", concept_embeds=batch["concepts"], image_tokens=batch["tokens"],
        concept_image_index=batch["index"], concept_ids=batch["ids"],
    )  # fmt: skip
    owner = c2lip_losses(**common, config=ConceptLossConfig(concept_positives="owner"))
    shared = c2lip_losses(**common, config=ConceptLossConfig(concept_positives="shared"))
    assert owner.caption_loss == shared.caption_loss
    assert abs(owner.npc_loss.item() - shared.npc_loss.item()) > 1e-4


def test_zero_weight_skips_the_term():
    batch = random_batch()
    out = c2lip_losses(
        image_embeds=batch["image"], text_embeds=batch["text"], logit_scale=torch.tensor(10.0), logit_bias=None,
        loss_form="softmax", concept_embeds=batch["concepts"], image_tokens=None, concept_image_index=batch["index"],
        concept_ids=batch["ids"], config=ConceptLossConfig(xac_weight=0.0),
    )  # fmt: skip
    assert out.xac_loss is None
    torch.testing.assert_close(out.loss, out.caption_loss + out.npc_loss)


def test_concept_ids_from_tokens_ignores_padding_and_separates_texts():
    ids = torch.tensor([[5, 8, 9, 0, 0], [5, 8, 9, 0, 0], [5, 8, 7, 0, 0], [0, 5, 8, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    short = concept_ids_from_tokens(ids[:1, :3], mask[:1, :3])
    out = concept_ids_from_tokens(ids, mask)
    assert out.dtype == torch.long
    assert out[0] == out[1] == short[0]  # same text, other padding length
    assert len({int(x) for x in out[[0, 2, 3]]}) == 3  # another word; a leading id 0


def test_dense_identity_groups_like_unique():
    from modeling_concept_clip.losses import _dense_identity

    ids = torch.tensor([7, 2**62, 7, -3, 2**62, 5, 7])
    labels = _dense_identity(ids)
    _, inverse = torch.unique(ids, return_inverse=True)
    assert ((labels[:, None] == labels[None, :]) == (inverse[:, None] == inverse[None, :])).all()
    assert 0 <= labels.min() and labels.max() < len(ids)
    assert _dense_identity(torch.zeros(0, dtype=torch.long)).shape == (0,)


@pytest.mark.parametrize("form", ["sigmoid", "softmax"])
def test_logit_scale_and_bias_of_shape_one(form):
    """FSDP2 needs CLIP's 0-dim logit_scale as shape (1,) (SigLIP's logit_bias has it already)."""
    batch = random_batch(seed=3)
    common = dict(
        image_embeds=batch["image"], text_embeds=batch["text"], loss_form=form, concept_embeds=batch["concepts"],
        image_tokens=batch["tokens"], concept_image_index=batch["index"], concept_ids=batch["ids"],
    )  # fmt: skip
    bias = torch.tensor(-2.0) if form == "sigmoid" else None
    scalar = c2lip_losses(logit_scale=torch.tensor(7.0), logit_bias=bias, **common)
    ones = c2lip_losses(
        logit_scale=torch.tensor([7.0]), logit_bias=None if bias is None else bias.reshape(1), **common
    )
    for name in ("loss", "caption_loss", "npc_loss", "xac_loss"):
        assert getattr(ones, name).shape == ()
        torch.testing.assert_close(getattr(ones, name), getattr(scalar, name), rtol=0, atol=0)


def test_rank_outside_the_world_raises():
    batch = random_batch()
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size\)"):
        c2lip_losses(batch["image"], batch["text"], torch.tensor(1.0), None, "softmax", world_size=2, rank=2)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(tau=0.0), "tau must be a finite number > 0"),
        (dict(tau=-1.0), "tau must be a finite number > 0"),
        (dict(tau=float("nan")), "tau must be a finite number > 0"),
        (dict(tau=float("inf")), "tau must be a finite number > 0"),
        (dict(npc_weight=-0.5), "npc_weight must be a finite number >= 0"),
        (dict(xac_weight=float("nan")), "xac_weight must be a finite number >= 0"),
        (dict(xac_weight=float("inf")), "xac_weight must be a finite number >= 0"),
        (dict(pooling_memory_mb=0.0), "pooling_memory_mb must be > 0"),
        (dict(pooling_memory_mb=-64.0), "pooling_memory_mb must be > 0"),
        (dict(pooling_memory_mb=float("nan")), "pooling_memory_mb must be > 0"),
        (dict(concept_positives="all"), "concept_positives must be 'owner' or 'shared'"),
    ],
)
def test_config_rejects_bad_settings_with_clear_messages(settings, message):
    with pytest.raises(ValueError, match=message):
        ConceptLossConfig(**settings)


def test_config_accepts_edge_settings():
    assert ConceptLossConfig(npc_weight=0.0, xac_weight=0.0).xac_weight == 0.0
    assert ConceptLossConfig(pooling_memory_mb=None).pooling_memory_mb is None
    assert ConceptLossConfig(pooling_memory_mb=float("inf")).pooling_memory_mb is None  # "inf" on a command line


def test_config_is_a_command_line_of_its_own():
    """Every field has help; HfArgumentParser parses the dataclass directly (validation included)."""
    from dataclasses import fields

    from transformers import HfArgumentParser

    assert all(f.metadata.get("help") for f in fields(ConceptLossConfig))
    parser = HfArgumentParser(ConceptLossConfig)
    (config,) = parser.parse_args_into_dataclasses(
        [
            "--tau",
            "2",
            "--concept_positives",
            "owner",
            "--pooling_memory_mb",
            "inf",
            "--concept_gradient_checkpointing",
        ]
    )
    assert config == ConceptLossConfig(
        tau=2.0, concept_positives="owner", pooling_memory_mb=None, concept_gradient_checkpointing=True
    )
    assert parser.parse_args_into_dataclasses([])[0] == ConceptLossConfig()
    with pytest.raises(ValueError, match="tau must be"):
        parser.parse_args_into_dataclasses(["--tau", "0"])
    with pytest.raises(SystemExit):  # argparse's own error for a value outside the choices
        parser.parse_args_into_dataclasses(["--concept_positives", "all"])


def test_one_chunk_is_not_recomputed(monkeypatch):
    """Chunks are recomputed in the backward pass only when there is more than one."""
    import modeling_concept_clip.pooling as pooling

    batch = random_batch(num_tokens=50, dim=32)
    monkeypatch.setattr(pooling, "checkpoint", lambda *args, **kwargs: pytest.fail("recomputed"))
    for budget in (None, 512.0):
        concept_attention_scores(batch["concepts"], batch["tokens"], memory_budget_mb=budget).sum().backward()
    monkeypatch.undo()
    calls = []
    monkeypatch.setattr(pooling, "checkpoint", lambda *args, **kwargs: calls.append(1) or args[0](*args[1:]))
    concept_attention_scores(batch["concepts"], batch["tokens"], memory_budget_mb=0.006)
    assert len(calls) == 8  # one chunk per concept


def test_sigmoid_losses_of_a_two_image_three_concept_batch_worked_by_hand():
    """The paper's sigmoid form on a batch small enough to compute on paper: 2 images, 3 concepts, 2-d embeddings,
    multiplier 2 and bias -1, so every logit is `2 * cos - 1`; each pair costs `softplus(-x)` if positive and
    `softplus(x)` if negative; NPC and XAC are summed over the 3 x 2 matrix and divided by the 3 concepts, the caption
    loss over the 2 x 2 matrix divided by the 2 images.

    images i0 = (1, 0), i1 = (0, 1); captions t0 = (0.8, 0.6), t1 = (0, 1); concepts c0 = (1, 0) and c2 = (0.6, 0.8)
    from image 0, c1 = (0, 1) from image 1. Patch tokens: image 0 (1, 0) and (0, 1); image 1 (0, 1) twice.
    """
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    concepts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    index, ids = torch.tensor([0, 1, 0]), torch.tensor([7, 8, 8])  # c2 has c1's text in "shared" mode

    # Caption logits 2 * t.i - 1: (t0,i0) 0.6 pos, (t0,i1) 0.2 neg, (t1,i0) -1 neg, (t1,i1) 1 pos:
    # softplus(-0.6) + softplus(0.2) + softplus(-1) + softplus(-1) = 0.4374879 + 0.7981389 + 2 * 0.3132617; / 2.
    caption = 0.9310751
    # NPC logits 2 * c.i - 1: c0 (1, -1), c1 (-1, 1), c2 (0.2, 0.6). Owner positives (c0,i0), (c1,i1), (c2,i0):
    # 4 * softplus(-1) + softplus(-0.2) + softplus(0.6) = 4 * 0.3132617 + 0.5981389 + 1.0374879 = 2.8886736; / 3.
    npc_owner = 0.9628912
    # "shared": c1 and c2 have one text, so (c1,i0) and (c2,i1) become positives: softplus(-1) -> softplus(1)
    # (+1.0) and softplus(0.6) -> softplus(-0.6) (-0.6): (2.8886736 + 1 - 0.6) / 3.
    npc_shared = 1.0962245
    # XAC, tau 1. Image 1: both tokens (0, 1), so z / |z| = (0, 1) and the score is c_y: c0 0, c1 1, c2 0.8.
    # Image 0, concept c: a = softmax(c_x, c_y), z = a, score = (a . c) / |a|.
    #   c0: a = (0.7310586, 0.2689414), |a| = 0.7789584, score 0.9385079; c1: the mirror image, 0.9385079;
    #   c2: a = (0.4501660, 0.5498340), |a| = 0.7106101, score 0.7099668 / 0.7106101 = 0.9990946.
    # Logits 2 * score - 1: c0 (0.8770158, -1), c1 (0.8770158, 1), c2 (0.9981892, 0.6). Owner positives:
    # softplus(-0.8770158) + softplus(-1) + softplus(0.8770158) + softplus(-1) + softplus(-0.9981892) + softplus(0.6)
    # = 0.3478519 + 0.3132617 + 1.2248677 + 0.3132617 + 0.3137490 + 1.0374880 = 3.5504800; / 3.
    xac_owner = 1.1834933
    # "shared": (c1,i0) and (c2,i1) positive: 1.2248677 -> softplus(-0.8770158) = 0.3478519 and 1.0374880 ->
    # softplus(-0.6) = 0.4374880: 2.0734642 / 3.
    xac_shared = 0.6911547
    for mode, npc, xac in (("owner", npc_owner, xac_owner), ("shared", npc_shared, xac_shared)):
        losses = c2lip_losses(
            image, text, torch.tensor(2.0), torch.tensor(-1.0), "sigmoid", concepts, tokens, index, ids,
            ConceptLossConfig(npc_weight=1.0, xac_weight=0.01, tau=1.0, concept_positives=mode),
        )  # fmt: skip
        assert losses.caption_loss.item() == pytest.approx(caption, abs=1e-6)
        assert losses.npc_loss.item() == pytest.approx(npc, abs=1e-6), mode
        assert losses.xac_loss.item() == pytest.approx(xac, abs=1e-6), mode
        assert losses.loss.item() == pytest.approx(caption + npc + 0.01 * xac, abs=1e-6)
