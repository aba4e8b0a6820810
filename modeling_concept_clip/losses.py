"""C2LIP losses: the caption loss of the backbone, NPC (global image vs concepts) and XAC (pooled image vs concepts).

All functions are pure functions of tensors, usable without the model classes.

Loss forms
----------
SigLIP (`loss_form="sigmoid"`), as in the paper and the authors' release: every (concept, image) pair of the batch
is a binary problem, `-log sigmoid(y * (scale * s + bias))` with `y = +1` on positives and `-1` elsewhere, summed
over the matrix and divided by the number of concepts (the caption loss: by the number of images).

CLIP (`loss_form="softmax"`): CLIP has no logit bias and was trained with InfoNCE, whose softmax normalises each
row by the competing pairs; an unbiased sigmoid would start with every negative pair pushed hard and its gradient
scale would not match the caption loss that the paper's weights were tuned against. So each concept loss is the
symmetric InfoNCE of the caption loss, generalised to several positives: the mean of

- concept -> images: for each concept, cross-entropy of the softmax over the batch's images;
- image -> concepts: for each image that has at least one concept, cross-entropy of the softmax over the batch's
  concepts,

where the target distribution is uniform over the row's positives (one image per concept in "owner" mode; all of
an image's concepts, which must all score high, in the image -> concepts direction). The first term makes a concept
pick its image among images with other attribute combinations; the second makes an image prefer its own concepts.

Positives
---------
`"owner"` (the paper): a concept is positive only for the image whose caption gave it. `"shared"`: every image of
the batch that has a concept with the same identity (`concept_ids`) is a positive, so "a man" from two captions is
no false negative for either image.

Distributed
-----------
With a process group, each process computes the loss terms of its own images (columns) against the concepts and
captions of all processes (differentiable all-gather), and, for the softmax form, the rows of its own concepts.
Every returned value is this process's *share*: the shares of all processes sum to the loss of the single-process
run on the concatenated batch, and so do the gradients (the all-gather's backward sums them across processes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .distributed import all_gather_rows, world_size_and_rank
from .pooling import concept_attention_scores

LossForm = Literal["sigmoid", "softmax"]
ConceptPositives = Literal["owner", "shared"]


@dataclass
class ConceptLossConfig:
    """Settings of the C2LIP concept losses. Training-only: they are never written into a checkpoint's config.

    Args:
        npc_weight: weight of the noun-phrase (concept) contrastive loss on the global image embedding.
        xac_weight: weight of the cross-modal attention-pooled concept loss.
        tau: temperature of the parameter-free attention (1.0 in the release: close to uniform attention).
        concept_positives: `"owner"` (the paper) or `"shared"` (identical concepts are positives of each other).
        pooling_memory_mb: peak memory of one chunk of concepts in the pooling (`None`: no chunking).
        gather_across_processes: compute the losses over the global batch when a process group is initialised.
    """

    npc_weight: float = 1.0
    xac_weight: float = 0.01
    tau: float = 1.0
    concept_positives: ConceptPositives = "shared"
    pooling_memory_mb: float | None = 512.0
    gather_across_processes: bool = True

    def __post_init__(self):
        if self.concept_positives not in ("owner", "shared"):
            raise ValueError(f"concept_positives must be 'owner' or 'shared', got {self.concept_positives!r}.")
        if self.npc_weight < 0 or self.xac_weight < 0:
            raise ValueError(f"Loss weights must be >= 0, got npc={self.npc_weight}, xac={self.xac_weight}.")
        if self.pooling_memory_mb is not None and self.pooling_memory_mb <= 0:
            raise ValueError(f"pooling_memory_mb must be positive or None, got {self.pooling_memory_mb}.")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class C2LIPLosses:
    """This process's share of each loss term (see the module docstring); `None` for a term that was skipped."""

    loss: torch.Tensor
    caption_loss: torch.Tensor
    npc_loss: torch.Tensor | None = None
    xac_loss: torch.Tensor | None = None


def concept_positive_mask(
    concept_image_index: torch.Tensor,
    num_images: int,
    concept_ids: torch.Tensor | None = None,
    mode: ConceptPositives = "owner",
) -> torch.Tensor:
    """Which images are positives of which concepts.

    Args:
        concept_image_index (`torch.LongTensor` of shape `(num_concepts,)`): the image each concept came from.
        num_images: number of images (columns).
        concept_ids (`torch.LongTensor` of shape `(num_concepts,)`, *optional*): identity of each concept's
            normalised text; required for `mode="shared"`.
        mode: `"owner"` or `"shared"`.

    Returns:
        `torch.BoolTensor` of shape `(num_concepts, num_images)`.
    """
    images = torch.arange(num_images, device=concept_image_index.device)
    owner = concept_image_index[:, None] == images[None, :]
    if mode == "owner":
        return owner
    if mode != "shared":
        raise ValueError(f"mode must be 'owner' or 'shared', got {mode!r}.")
    if concept_ids is None:
        raise ValueError("concept_positives='shared' needs concept_ids (an integer identity per concept text).")
    # Image m is a positive of concept n when m owns some concept with n's identity.
    _, identity = torch.unique(concept_ids, return_inverse=True)
    owns_identity = torch.zeros(int(identity.max()) + 1, num_images, dtype=torch.bool, device=owner.device)
    owns_identity[identity, concept_image_index] = True
    return owns_identity[identity]


def concept_ids_from_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """A deterministic 62-bit identity of each token sequence (same ids on every process and in every run).

    Used for "shared" positives when no `concept_ids` are given: identical concept texts tokenise identically.

    Args:
        input_ids (`torch.LongTensor` of shape `(num_concepts, sequence_length)`).
        attention_mask (`torch.LongTensor` of the same shape, *optional*): padding positions are ignored
            (without it, every position counts).

    Returns:
        `torch.LongTensor` of shape `(num_concepts,)`.
    """
    ids = input_ids.long()
    valid = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    # Two polynomial hashes modulo the Mersenne prime 2^31 - 1 over the unpadded tokens (so that processes that
    # pad to different lengths agree); every product stays below 2^62.
    modulus = 2**31 - 1
    first = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
    second = torch.zeros_like(first)
    for token, keep in zip(ids.T % (modulus - 1) + 1, valid.T):  # +1: a leading id 0 must count
        first = torch.where(keep, (first * 1_000_003 + token) % modulus, first)
        second = torch.where(keep, (second * 998_244_353 % modulus + token) % modulus, second)
    return first * modulus + second


def sigmoid_loss_sum(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """`sum(-log sigmoid(y * logits))` with `y = +1` where `positives` else `-1` (any shape)."""
    return -F.logsigmoid(torch.where(positives, logits, -logits)).sum()


def soft_target_cross_entropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row's softmax against the uniform distribution over the row's positives.

    Args:
        logits (`torch.Tensor` of shape `(rows, classes)`).
        positives (`torch.BoolTensor` of shape `(rows, classes)`): at least one positive per row.

    Returns:
        `torch.Tensor` of shape `(rows,)`.
    """
    target = positives.float() / positives.sum(-1, keepdim=True).clamp_min(1)
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1)


def _softmax_concept_shares(
    block_logits: torch.Tensor,
    positives: torch.Tensor,
    image_counts: list[int],
    image_offset: int,
    concept_rows: slice,
) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE shares for this process's image columns and concept rows.

    Args:
        block_logits (`torch.Tensor` of shape `(num_terms, num_concepts, num_local_images)`): all concepts against
            this process's images, one slice per loss term (NPC, XAC).
        positives (`torch.BoolTensor` of shape `(num_concepts, num_images)`): the global positive mask.

    Returns:
        `torch.Tensor` of shape `(num_terms,)`.
    """
    num_terms, num_concepts, num_local_images = block_logits.shape
    local_positives = positives[:, image_offset : image_offset + num_local_images]
    # image -> concepts: columns of this process's images, over all concepts.
    has_concept = local_positives.any(0)
    columns = block_logits.transpose(1, 2)[:, has_concept]  # (num_terms, images with concepts, num_concepts)
    image_to_concepts = soft_target_cross_entropy(columns, local_positives.T[has_concept]).sum(-1)
    num_images_with_concepts = positives.any(0).sum().clamp_min(1)
    # concept -> images: rows of this process's concepts, over all processes' images. One gather for all terms,
    # so that every process runs the same collectives in the same order in the backward pass.
    full_logits = all_gather_rows(block_logits.permute(2, 0, 1), image_counts, with_grad=True).permute(1, 2, 0)
    concept_to_images = soft_target_cross_entropy(full_logits[:, concept_rows], positives[concept_rows]).sum(-1)
    return 0.5 * (concept_to_images / num_concepts + image_to_concepts / num_images_with_concepts)


def c2lip_losses(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
    loss_form: LossForm,
    concept_embeds: torch.Tensor | None = None,
    image_tokens: torch.Tensor | None = None,
    concept_image_index: torch.Tensor | None = None,
    concept_ids: torch.Tensor | None = None,
    config: ConceptLossConfig | None = None,
) -> C2LIPLosses:
    """Caption, NPC and XAC losses of one batch; this process's share when a process group is initialised.

    Args:
        image_embeds (`torch.Tensor` of shape `(num_images, dim)`): L2-normalised global image embeddings.
        text_embeds (`torch.Tensor` of shape `(num_images, dim)`): L2-normalised caption embeddings, one per image.
        logit_scale (`torch.Tensor`, scalar): the multiplier, i.e. `model.logit_scale.exp()`.
        logit_bias (`torch.Tensor`, scalar, *optional*): SigLIP's bias (`None` for CLIP).
        loss_form: `"sigmoid"` (SigLIP) or `"softmax"` (CLIP), see the module docstring.
        concept_embeds (`torch.Tensor` of shape `(num_concepts, dim)`, *optional*): L2-normalised concept
            embeddings; `None` computes the caption loss only. Zero rows are allowed on some processes (keep them
            attached to the autograd graph, e.g. `text_embeds[:0]`, so that every process runs the backward
            collectives).
        image_tokens (`torch.Tensor` of shape `(num_images, num_tokens, dim)`, *optional*): L2-normalised projected
            patch tokens; needed when `config.xac_weight > 0`.
        concept_image_index (`torch.LongTensor` of shape `(num_concepts,)`): each concept's image, local index.
        concept_ids (`torch.LongTensor` of shape `(num_concepts,)`, *optional*): concept identities ("shared").
        config: loss weights, temperature, positives mode, memory budget.

    Returns:
        [`C2LIPLosses`] with this process's share of `loss = caption + npc_weight * npc + xac_weight * xac`.
    """
    config = config or ConceptLossConfig()
    if loss_form not in ("sigmoid", "softmax"):
        raise ValueError(f"loss_form must be 'sigmoid' or 'softmax', got {loss_form!r}.")
    if concept_embeds is not None and concept_image_index is None:
        raise ValueError("concept_embeds were given without concept_image_index.")
    if concept_embeds is not None and config.concept_positives == "shared" and concept_ids is None:
        raise ValueError("concept_positives='shared' needs concept_ids (or use the model, which derives them).")
    if concept_embeds is not None and config.xac_weight > 0 and image_tokens is None:
        raise ValueError("xac_weight > 0 needs image_tokens (the projected patch tokens).")
    world_size, rank = world_size_and_rank() if config.gather_across_processes else (1, 0)
    device = image_embeds.device
    num_local_images = image_embeds.shape[0]
    with_concepts = concept_embeds is not None

    with torch.autocast(device_type=device.type, enabled=False):
        image_embeds, text_embeds = image_embeds.float(), text_embeds.float()
        concept_embeds = concept_embeds.float() if with_concepts else image_embeds[:0]
        logit_scale = logit_scale.float()
        bias = logit_bias.float() if logit_bias is not None else 0.0
        num_local_concepts = concept_embeds.shape[0]

        counts = torch.tensor([[num_local_images, num_local_concepts]], device=device)
        counts = all_gather_rows(counts, [1] * world_size, with_grad=False).tolist()
        image_counts, concept_counts = [c[0] for c in counts], [c[1] for c in counts]
        image_offset, concept_offset = sum(image_counts[:rank]), sum(concept_counts[:rank])
        num_images, num_concepts = sum(image_counts), sum(concept_counts)

        # One differentiable gather of [texts; images; concepts] per process: a single collective whose backward
        # every process runs at the same point.
        packed = torch.cat([text_embeds, image_embeds, concept_embeds])
        pieces = all_gather_rows(packed, [2 * m + n for m, n in counts], with_grad=True)
        pieces = pieces.split([2 * m + n for m, n in counts])
        all_texts = torch.cat([piece[:m] for piece, (m, _) in zip(pieces, counts)])
        all_images = torch.cat([piece[m : 2 * m] for piece, (m, _) in zip(pieces, counts)])
        all_concepts = torch.cat([piece[2 * m :] for piece, (m, _) in zip(pieces, counts)])
        local_images = torch.arange(num_local_images, device=device) + image_offset

        if loss_form == "sigmoid":
            positives = torch.arange(num_images, device=device)[:, None] == local_images[None, :]
            caption_loss = sigmoid_loss_sum(logit_scale * all_texts @ image_embeds.T + bias, positives) / num_images
        else:
            image_to_text = F.cross_entropy(logit_scale * image_embeds @ all_texts.T, local_images, reduction="sum")
            text_to_image = F.cross_entropy(logit_scale * text_embeds @ all_images.T, local_images, reduction="sum")
            caption_loss = (image_to_text + text_to_image) / (2 * num_images)
        if not with_concepts:
            return C2LIPLosses(loss=caption_loss, caption_loss=caption_loss)
        if num_concepts == 0:
            raise ValueError("The concept batch is empty on every process: there are no concepts to align.")

        all_index = all_gather_rows(concept_image_index.long() + image_offset, concept_counts, with_grad=False)
        all_ids = None
        if config.concept_positives == "shared":
            all_ids = all_gather_rows(concept_ids.long(), concept_counts, with_grad=False)
        positives = concept_positive_mask(all_index, num_images, all_ids, config.concept_positives)

        # (num_concepts, num_local_images) scores of all concepts against this process's images, per term.
        scores = {}
        if config.npc_weight > 0:
            scores["npc"] = all_concepts @ image_embeds.T
        if config.xac_weight > 0:
            scores["xac"] = concept_attention_scores(all_concepts, image_tokens, config.tau, config.pooling_memory_mb)
        terms = {}
        if scores and loss_form == "sigmoid":
            local_positives = positives[:, image_offset : image_offset + num_local_images]
            for name, block in scores.items():
                terms[name] = sigmoid_loss_sum(logit_scale * block + bias, local_positives) / num_concepts
        elif scores:
            concept_rows = slice(concept_offset, concept_offset + num_local_concepts)
            shares = _softmax_concept_shares(
                logit_scale * torch.stack(list(scores.values())), positives, image_counts, image_offset, concept_rows
            )
            terms = dict(zip(scores, shares.unbind()))

    loss = caption_loss
    if "npc" in terms:
        loss = loss + config.npc_weight * terms["npc"]
    if "xac" in terms:
        loss = loss + config.xac_weight * terms["xac"]
    return C2LIPLosses(loss=loss, caption_loss=caption_loss, npc_loss=terms.get("npc"), xac_loss=terms.get("xac"))
