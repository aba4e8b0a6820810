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

Hard negatives
--------------
Optional extra captions that match no image (`negative_embeds`, e.g. NegCLIP's attribute swaps made by
`ConceptCollator(hard_negatives="swap")`), added to the caption loss as NegCLIP does: softmax, extra columns of the
image -> text direction (each image's caption competes with every caption and every negative of the global batch;
the text -> image direction is unchanged); sigmoid, extra rows of negative pairs (every negative against every
image, label -1), divided by the number of images like the rest of the caption loss. Each process gives its own
number of negatives, possibly none.

Positives
---------
`"owner"` (the paper): a concept is positive only for the image whose caption gave it. `"shared"`: every image of
the batch that has a concept with the same identity (`concept_ids`) is a positive, so "a man" from two captions is
no false negative for either image.

Distributed
-----------
`world_size` and `rank` are arguments (the model passes those of the default process group). With more than one
process, each computes the loss terms of its own images (columns) against the concepts and captions of all
processes (one differentiable all-gather), and, for the softmax form, the rows of its own concepts (from per-concept
sums over each process's images: one all-reduce of a few values per concept). No process holds a tensor of all
concepts by all images of the global batch, so memory grows linearly with the number of processes. Each returned
value is this process's share of the global batch's loss times `world_size`: their mean over processes (what DDP
does to gradients, and `accelerator.gather(loss).mean()` to logs) is the loss of the single-process run on the
concatenated batch, and so are the averaged gradients (the all-gather's backward sums them across processes).

Host syncs
----------
None: every shape is known on the host (the per-process numbers of images and concepts are exchanged host to host,
see `distributed.all_gather_sizes`), positives are built with sort and scatter instead of `unique`, and rows
without positives contribute exact zeros instead of being selected with a boolean mask.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from .distributed import all_gather_rows, all_gather_sizes, all_reduce_max, all_reduce_sum
from .pooling import concept_attention_scores

LossForm = Literal["sigmoid", "softmax"]
ConceptPositives = Literal["owner", "shared"]


@dataclass
class ConceptLossConfig:
    """Settings of the C2LIP concept losses. Training-only: they are never written into a checkpoint's config.

    Every field has `help` metadata, so `HfArgumentParser(ConceptLossConfig)` gives the command-line flags.
    """

    npc_weight: float = field(
        default=1.0, metadata={"help": "Weight of NPC, the concept loss on the global image embedding (0: off)."}
    )
    xac_weight: float = field(
        default=0.01,
        metadata={"help": "Weight of XAC, the concept loss on the concept-specific attention-pooled image "
                  "embedding (0: off, and the patch tokens are not computed)."},
    )  # fmt: skip
    tau: float = field(
        default=1.0,
        metadata={"help": "Temperature of the parameter-free attention pooling (1.0 in the authors' release: "
                  "close to uniform attention)."},
    )  # fmt: skip
    concept_positives: ConceptPositives = field(
        default="shared",
        metadata={"help": "'owner' (the paper: a concept is positive only for its own image) or 'shared' (images "
                  "with a concept of the same normalised text are positives of each other)."},
    )  # fmt: skip
    pooling_memory_mb: float | None = field(
        default=512.0,
        metadata={"help": "Peak memory of one chunk of concepts in the attention pooling, in MB; more chunks are "
                  "recomputed in the backward pass. None or inf: one chunk."},
    )  # fmt: skip
    concept_gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute the concept text forward in the backward pass instead of keeping its "
                  "activations (SigLIP's 64-token concepts dominate the memory of a C2LIP step)."},
    )  # fmt: skip
    global_concept_dedup: bool = field(
        default=False,
        metadata={"help": "With a process group, encode each distinct concept of the global batch once, on one "
                  "process, and share the embeddings (with gradients) instead of encoding it on every process that "
                  "has it. Needs ConceptCollator's concept_unique_keys."},
    )  # fmt: skip
    gather_across_processes: bool = field(
        default=True,
        metadata={"help": "With a process group, compute the losses over the global batch (all processes' "
                  "captions and concepts are negatives); False: each process's own batch only."},
    )  # fmt: skip

    def __post_init__(self):
        for name in ("npc_weight", "xac_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 (0 turns the term off), got {value}.")
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"tau must be a finite number > 0 (1.0 in the authors' release), got {self.tau}.")
        if self.concept_positives not in ("owner", "shared"):
            raise ValueError(f"concept_positives must be 'owner' or 'shared', got {self.concept_positives!r}.")
        if self.pooling_memory_mb is not None:
            if math.isnan(self.pooling_memory_mb) or self.pooling_memory_mb <= 0:
                raise ValueError(
                    f"pooling_memory_mb must be > 0 (MB per chunk), or None/inf for one chunk, got "
                    f"{self.pooling_memory_mb}."
                )
            if math.isinf(self.pooling_memory_mb):
                self.pooling_memory_mb = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class C2LIPLosses:
    """Each loss term (see the module docstring for the scaling with processes); `None` for a term that was skipped."""

    loss: torch.Tensor
    caption_loss: torch.Tensor
    npc_loss: torch.Tensor | None = None
    xac_loss: torch.Tensor | None = None


def _dense_identity(concept_ids: torch.Tensor) -> torch.Tensor:
    """`(N,)` int64 ids -> `(N,)` labels in `[0, N)`, equal exactly where the ids are equal.

    `torch.unique(return_inverse=True)` gives the same grouping, but its output size depends on the data (a host
    sync on a GPU); a sort, a cumulative sum and a scatter have static shapes.
    """
    sorted_ids, order = torch.sort(concept_ids)
    starts = torch.ones_like(sorted_ids, dtype=torch.bool)
    starts[1:] = sorted_ids[1:] != sorted_ids[:-1]
    labels = torch.cumsum(starts, 0) - 1
    return torch.empty_like(labels).scatter_(0, order, labels)


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
    if mode not in ("owner", "shared"):
        raise ValueError(f"mode must be 'owner' or 'shared', got {mode!r}.")
    if mode == "shared" and concept_ids is None:
        raise ValueError("concept_positives='shared' needs concept_ids (an integer identity per concept text).")
    every_concept = slice(0, concept_image_index.shape[0])
    return _positive_block(concept_image_index, concept_ids, every_concept, slice(0, num_images), mode)


def _positive_block(
    concept_image_index: torch.Tensor,
    concept_ids: torch.Tensor | None,
    concepts: slice,
    images: slice,
    mode: ConceptPositives,
) -> torch.Tensor:
    """`concept_positive_mask(...)[concepts, images]`, made without the whole mask (whose size grows with the
    square of the global batch).

    Returns:
        `torch.BoolTensor` of shape `(len(concepts), len(images))`.
    """
    device = concept_image_index.device
    columns = torch.arange(images.start, images.stop, device=device)
    rows = concept_image_index[concepts]
    if mode == "owner":
        return rows[:, None] == columns[None, :]
    # Image m is a positive of concept n when m owns some concept with n's identity. Each row's identity gets a slot
    # (rows of one identity share one, any of them), every concept owned by an image of the block adds a count to
    # its identity's slot and image, and each row reads its slot; concepts of other identities or images go to a
    # spare slot.
    num_rows, num_columns = rows.shape[0], columns.shape[0]
    identity = _dense_identity(concept_ids)
    slot = torch.full_like(identity, num_rows)
    slot[identity[concepts]] = torch.arange(num_rows, device=device)
    in_block = (concept_image_index >= images.start) & (concept_image_index < images.stop)
    target = torch.where(in_block, slot[identity], num_rows)
    column = (concept_image_index - images.start).clamp(0, max(num_columns - 1, 0))
    owned = torch.zeros(num_rows + 1, num_columns, device=device)
    if num_columns:
        owned.index_put_((target, column), torch.ones_like(target, dtype=owned.dtype), accumulate=True)
    return owned[slot[identity[concepts]]] > 0


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
        logits (`torch.Tensor` of shape `(..., rows, classes)`).
        positives (`torch.BoolTensor` of shape `(rows, classes)`); a row without positives gives exactly 0.

    Returns:
        `torch.Tensor` of shape `(..., rows)`.
    """
    target = positives.float() / positives.sum(-1, keepdim=True).clamp_min(1)
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1)


@dataclass
class _GlobalBatch:
    """The global batch as one process sees it: all processes' embeddings (rank order) and its own place in them."""

    texts: torch.Tensor  # (num_images, dim)
    images: torch.Tensor  # (num_images, dim)
    concepts: torch.Tensor  # (num_concepts, dim)
    negatives: torch.Tensor  # (num_negatives, dim): hard-negative captions, matching no image
    concept_image_index: torch.Tensor | None  # (num_concepts,), index into all images
    concept_ids: torch.Tensor | None  # (num_concepts,)
    image_counts: list[int]  # images of each process
    local_images: slice  # this process's images
    local_concepts: slice  # this process's concepts


def _gather_batch(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    concept_embeds: torch.Tensor,
    concept_image_index: torch.Tensor | None,
    concept_ids: torch.Tensor | None,
    world_size: int,
    rank: int,
    negative_embeds: torch.Tensor | None = None,
) -> _GlobalBatch:
    """Captions, images, concepts and hard negatives of all processes (differentiable), with the concepts' images
    and identities."""
    num_images, num_concepts = image_embeds.shape[0], concept_embeds.shape[0]
    negative_embeds = image_embeds[:0] if negative_embeds is None else negative_embeds
    num_negatives = negative_embeds.shape[0]
    if world_size == 1:
        return _GlobalBatch(
            texts=text_embeds,
            images=image_embeds,
            concepts=concept_embeds,
            negatives=negative_embeds,
            concept_image_index=concept_image_index,
            concept_ids=concept_ids,
            image_counts=[num_images],
            local_images=slice(0, num_images),
            local_concepts=slice(0, num_concepts),
        )
    counts = all_gather_sizes((num_images, num_concepts, num_negatives), world_size)
    image_offset = sum(m for m, _, _ in counts[:rank])
    concept_offset = sum(n for _, n, _ in counts[:rank])
    # One differentiable gather of [texts; images; concepts; negatives]: a single collective, whose backward every
    # process runs at the same point.
    rows = [2 * m + n + k for m, n, k in counts]
    packed = torch.cat([text_embeds, image_embeds, concept_embeds, negative_embeds])
    pieces = all_gather_rows(packed, rows, with_grad=True).split(rows)
    index, ids = concept_image_index, concept_ids
    if concept_image_index is not None:  # (num_concepts, 2): global image index and identity, one gather
        labels = torch.stack([index.long() + image_offset, (index if ids is None else ids).long()], 1)
        labels = all_gather_rows(labels, [n for _, n, _ in counts], with_grad=False)
        index, ids = labels[:, 0], None if ids is None else labels[:, 1]
    return _GlobalBatch(
        texts=torch.cat([piece[:m] for piece, (m, _, _) in zip(pieces, counts)]),
        images=torch.cat([piece[m : 2 * m] for piece, (m, _, _) in zip(pieces, counts)]),
        concepts=torch.cat([piece[2 * m : 2 * m + n] for piece, (m, n, _) in zip(pieces, counts)]),
        negatives=torch.cat([piece[2 * m + n :] for piece, (m, n, _) in zip(pieces, counts)]),
        concept_image_index=index,
        concept_ids=ids,
        image_counts=[m for m, _, _ in counts],
        local_images=slice(image_offset, image_offset + num_images),
        local_concepts=slice(concept_offset, concept_offset + num_concepts),
    )


def _caption_loss(
    batch: _GlobalBatch,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | float,
    loss_form: LossForm,
) -> torch.Tensor:
    """This process's share of the backbone's image-caption loss (its images' columns, or rows), with the hard
    negatives of all processes as captions that match no image."""
    num_images = batch.texts.shape[0]
    local_images = torch.arange(batch.local_images.start, batch.local_images.stop, device=image_embeds.device)
    # Rows num_images.. are the negatives: no image index equals theirs.
    texts = torch.cat([batch.texts, batch.negatives]) if batch.negatives.shape[0] else batch.texts
    if loss_form == "sigmoid":
        positives = torch.arange(texts.shape[0], device=image_embeds.device)[:, None] == local_images[None, :]
        logits = logit_scale * texts @ image_embeds.T + logit_bias
        return sigmoid_loss_sum(logits, positives) / num_images
    image_to_text = F.cross_entropy(logit_scale * image_embeds @ texts.T, local_images, reduction="sum")
    text_to_image = F.cross_entropy(logit_scale * text_embeds @ batch.images.T, local_images, reduction="sum")
    return (image_to_text + text_to_image) / (2 * num_images)


def _concept_terms(
    batch: _GlobalBatch,
    image_embeds: torch.Tensor,
    image_tokens: torch.Tensor | None,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | float,
    loss_form: LossForm,
    config: ConceptLossConfig,
) -> dict[str, torch.Tensor]:
    """This process's share of NPC and XAC (the terms with a weight > 0): all concepts against its images."""
    every_concept = slice(0, batch.concepts.shape[0])
    positives = _positive_block(  # (num_concepts, num_local_images)
        batch.concept_image_index, batch.concept_ids, every_concept, batch.local_images, config.concept_positives
    )
    scores = {}  # (num_concepts, num_local_images) per term
    if config.npc_weight > 0:
        scores["npc"] = batch.concepts @ image_embeds.T
    if config.xac_weight > 0:
        scores["xac"] = concept_attention_scores(batch.concepts, image_tokens, config.tau, config.pooling_memory_mb)
    if not scores:
        return {}
    logits = logit_scale * torch.stack(list(scores.values()))  # (num_terms, num_concepts, num_local_images)
    if loss_form == "sigmoid":
        shares = [sigmoid_loss_sum(block + logit_bias, positives) / batch.concepts.shape[0] for block in logits]
        return dict(zip(scores, shares))
    return dict(zip(scores, _softmax_concept_shares(batch, logits, positives).unbind()))


def _softmax_concept_shares(batch: _GlobalBatch, logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE shares for this process's image columns and concept rows.

    The concept -> images cross-entropy of concept n is `log sum_m exp(l_nm) - sum_m t_nm l_nm` over the images of
    all processes. Both sums split over processes, so each process sums its own image columns for every concept,
    and one all-reduce of these `(2 * num_terms + 1, num_concepts)` sums (the exponentials shifted by each row's
    global maximum, from an all-reduce of the column maxima) gives every process the rows of its concepts. Nothing
    of size concepts x images crosses processes: memory and traffic grow linearly with the number of processes.

    Args:
        logits (`torch.Tensor` of shape `(num_terms, num_concepts, num_local_images)`): all concepts against this
            process's images, one slice per loss term.
        positives (`torch.BoolTensor` of shape `(num_concepts, num_local_images)`): the positive mask's columns of
            this process's images.

    Returns:
        `torch.Tensor` of shape `(num_terms,)`.
    """
    num_terms, num_concepts = logits.shape[:2]
    # image -> concepts: this process's images over all concepts; an image without concepts adds exactly 0.
    image_to_concepts = soft_target_cross_entropy(logits.transpose(1, 2), positives.T)
    num_images = sum(batch.image_counts)
    has_concepts = torch.zeros(num_images, device=logits.device).index_fill_(0, batch.concept_image_index, 1.0)
    num_images_with_concepts = has_concepts.sum().clamp_min(1)
    # concept -> images: the sums over this process's images, then over all processes.
    targets = positives.to(logits.dtype)
    if logits.shape[-1]:
        shift = logits.detach().amax(-1)
    else:  # no images on this process
        shift = logits.new_full((num_terms, num_concepts), float("-inf"))
    shift = all_reduce_max(shift, len(batch.image_counts))  # (num_terms, num_concepts); no gradient needed
    sums = torch.cat(
        [
            (logits * targets).sum(-1),  # sum over positives of the logits
            torch.exp(logits - shift[..., None]).sum(-1),  # the softmax's denominator, shifted
            targets.sum(-1)[None],  # number of positives
        ]
    )
    sums = all_reduce_sum(sums, len(batch.image_counts), with_grad=True)[:, batch.local_concepts]
    positive_logits, exp_sums, num_positives = sums[:num_terms], sums[num_terms:-1], sums[-1]
    rows = batch.local_concepts
    concept_to_images = shift[:, rows] + torch.log(exp_sums) - positive_logits / num_positives.clamp_min(1)
    concept_to_images = concept_to_images * (num_positives > 0)  # a row without positives gives exactly 0
    return 0.5 * (concept_to_images.sum(-1) / num_concepts + image_to_concepts.sum(-1) / num_images_with_concepts)


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
    world_size: int = 1,
    rank: int = 0,
    negative_embeds: torch.Tensor | None = None,
) -> C2LIPLosses:
    """Caption, NPC and XAC losses of one batch, over all processes' batches when `world_size > 1`.

    Args:
        image_embeds (`torch.Tensor` of shape `(num_images, dim)`): L2-normalised global image embeddings.
        text_embeds (`torch.Tensor` of shape `(num_images, dim)`): L2-normalised caption embeddings, one per image.
        logit_scale (`torch.Tensor` of shape `()` or `(1,)`): the multiplier, i.e. `model.logit_scale.exp()`.
        logit_bias (`torch.Tensor` of shape `()` or `(1,)`, *optional*): SigLIP's bias (`None` for CLIP).
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
        world_size, rank: this process's place in the default process group (`(1, 0)`: no gathering).
        negative_embeds (`torch.Tensor` of shape `(num_negatives, dim)`, *optional*): L2-normalised hard-negative
            captions, matching no image (see "Hard negatives" in the module docstring); zero rows are allowed, also
            on some processes only (keep them attached to the graph, as concept rows).

    Returns:
        [`C2LIPLosses`] with `loss = caption + npc_weight * npc + xac_weight * xac`; with several processes, each
        term is this process's share times `world_size` (their mean over processes is the global batch's loss).
    """
    config = config or ConceptLossConfig()
    with_concepts = concept_embeds is not None
    if loss_form not in ("sigmoid", "softmax"):
        raise ValueError(f"loss_form must be 'sigmoid' or 'softmax', got {loss_form!r}.")
    if with_concepts and concept_image_index is None:
        raise ValueError("concept_embeds were given without concept_image_index.")
    if with_concepts and config.concept_positives == "shared" and concept_ids is None:
        raise ValueError("concept_positives='shared' needs concept_ids (or use the model, which derives them).")
    if with_concepts and config.xac_weight > 0 and image_tokens is None:
        raise ValueError("xac_weight > 0 needs image_tokens (the projected patch tokens).")
    dim = text_embeds.shape[1]
    if negative_embeds is not None and (negative_embeds.dim() != 2 or negative_embeds.shape[1] != dim):
        raise ValueError(
            f"negative_embeds must have shape (num_negatives, {dim}), got {tuple(negative_embeds.shape)}."
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}.")

    # Float32: low-precision softmax and sigmoid sums lose the small differences the losses are made of.
    with torch.autocast(device_type=image_embeds.device.type, enabled=False):
        image_embeds, text_embeds = image_embeds.float(), text_embeds.float()
        logit_scale = logit_scale.float()
        logit_bias = logit_bias.float() if logit_bias is not None else 0.0
        batch = _gather_batch(
            image_embeds,
            text_embeds,
            concept_embeds.float() if with_concepts else image_embeds[:0],
            concept_image_index if with_concepts else None,
            concept_ids if with_concepts and config.concept_positives == "shared" else None,
            world_size,
            rank,
            None if negative_embeds is None else negative_embeds.float(),
        )
        losses = {"caption_loss": _caption_loss(batch, image_embeds, text_embeds, logit_scale, logit_bias, loss_form)}
        if with_concepts:
            if batch.concepts.shape[0] == 0:
                raise ValueError("The concept batch is empty on every process: there are no concepts to align.")
            terms = _concept_terms(batch, image_embeds, image_tokens, logit_scale, logit_bias, loss_form, config)
            losses.update({f"{name}_loss": value for name, value in terms.items()})

    loss = losses["caption_loss"]
    if "npc_loss" in losses:
        loss = loss + config.npc_weight * losses["npc_loss"]
    if "xac_loss" in losses:
        loss = loss + config.xac_weight * losses["xac_loss"]
    losses["loss"] = loss
    # The shares of all processes sum to the global loss; DDP averages gradients, so each process returns
    # world_size times its share.
    return C2LIPLosses(**{name: value * world_size if world_size > 1 else value for name, value in losses.items()})


__all__ = [
    "C2LIPLosses",
    "ConceptLossConfig",
    "c2lip_losses",
    "concept_ids_from_tokens",
    "concept_positive_mask",
    "sigmoid_loss_sum",
    "soft_target_cross_entropy",
]
