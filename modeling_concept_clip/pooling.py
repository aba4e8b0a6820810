"""Parameter-free cross-modal attention pooling (C2LIP's XAC scores), vectorised over concepts and images.

For a concept embedding `c` and the projected patch tokens `u_1..u_T` of one image (all L2-normalised):

    a_t = softmax_t(tau * <u_t, c>),    z = sum_t a_t u_t,    score = <z / |z|, c>

The score only needs inner products, so it is computed without the pooled vectors `z`:

    <z, c> = sum_t a_t <u_t, c>          |z|^2 = a^T (U U^T) a

which costs N x M x T memory (plus the M x T x T Gram matrices) instead of the N x M x D tensor of pooled vectors
that a per-concept loop materialises. Chunks of concepts bound the peak memory; when there is more than one chunk,
each chunk is recomputed in the backward pass (activation checkpointing) so that the intermediates of only one
chunk are alive at a time.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

# Float32 intermediates of shape (chunk, M, T) alive at once while a chunk is computed with autograd:
# similarities, attention weights, attention @ Gram, and two products.
_INTERMEDIATES_PER_ELEMENT = 5


def concept_chunk_size(num_concepts: int, num_images: int, num_tokens: int, memory_budget_mb: float | None) -> int:
    """Number of concepts per chunk so that one chunk's intermediates fit in `memory_budget_mb` (at least 1)."""
    if memory_budget_mb is None or num_concepts == 0:
        return max(num_concepts, 1)
    bytes_per_concept = _INTERMEDIATES_PER_ELEMENT * num_images * num_tokens * 4
    return max(1, min(num_concepts, int(memory_budget_mb * 2**20) // max(bytes_per_concept, 1)))


def _pooled_scores(
    concept_embeds: torch.Tensor, image_tokens: torch.Tensor, token_gram: torch.Tensor, tau: float, eps: float
) -> torch.Tensor:
    num_images, num_tokens, dim = image_tokens.shape
    # (n, M, T): <u_mt, c_n>, one matrix product over all images' tokens.
    similarity = (concept_embeds @ image_tokens.reshape(-1, dim).T).view(len(concept_embeds), num_images, num_tokens)
    attention = torch.softmax(tau * similarity, dim=-1)
    dot = (attention * similarity).sum(-1)  # <z, c>
    # (M, n, T) @ (M, T, T) -> (M, n, T): a^T G per image, batched over images.
    attention_gram = torch.bmm(attention.transpose(0, 1), token_gram).transpose(0, 1)
    squared_norm = (attention_gram * attention).sum(-1)  # |z|^2
    # Same guard as F.normalize(z, eps): divide by max(|z|, eps).
    return dot / squared_norm.clamp_min(eps * eps).sqrt()


def concept_attention_scores(
    concept_embeds: torch.Tensor,
    image_tokens: torch.Tensor,
    tau: float = 1.0,
    memory_budget_mb: float | None = 512.0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Cosine similarity between each concept and its concept-specific attention-pooled embedding of each image.

    Args:
        concept_embeds (`torch.Tensor` of shape `(num_concepts, dim)`):
            L2-normalised concept (text) embeddings in the joint space; they are the attention queries.
        image_tokens (`torch.Tensor` of shape `(num_images, num_tokens, dim)`):
            L2-normalised patch tokens projected into the joint space.
        tau (`float`): attention temperature (1.0 in the authors' release, i.e. close to uniform attention).
        memory_budget_mb (`float`, *optional*): peak memory for one chunk of concepts (`None`: a single chunk).
        eps (`float`): lower bound of |z|, as in `F.normalize`.

    Returns:
        `torch.Tensor` of shape `(num_concepts, num_images)` in float32: `<z_nm / |z_nm|, c_n>`.
    """
    if concept_embeds.dim() != 2 or image_tokens.dim() != 3 or concept_embeds.shape[-1] != image_tokens.shape[-1]:
        raise ValueError(
            "Expected concept_embeds (num_concepts, dim) and image_tokens (num_images, num_tokens, dim), got "
            f"{tuple(concept_embeds.shape)} and {tuple(image_tokens.shape)}."
        )
    # Low-precision softmax and Gram products lose the small differences the score is made of.
    concept_embeds = concept_embeds.float()
    image_tokens = image_tokens.float()
    num_concepts = concept_embeds.shape[0]
    num_images, num_tokens, _ = image_tokens.shape
    with torch.autocast(device_type=image_tokens.device.type, enabled=False):
        token_gram = image_tokens @ image_tokens.transpose(1, 2)  # (M, T, T)
        chunk = concept_chunk_size(num_concepts, num_images, num_tokens, memory_budget_mb)
        if chunk >= num_concepts:
            return _pooled_scores(concept_embeds, image_tokens, token_gram, tau, eps)
        needs_grad = torch.is_grad_enabled() and (
            concept_embeds.requires_grad or image_tokens.requires_grad or token_gram.requires_grad
        )
        blocks = []
        for start in range(0, num_concepts, chunk):
            block = concept_embeds[start : start + chunk]
            if needs_grad:
                blocks.append(
                    checkpoint(_pooled_scores, block, image_tokens, token_gram, tau, eps, use_reentrant=False)
                )
            else:
                blocks.append(_pooled_scores(block, image_tokens, token_gram, tau, eps))
        return torch.cat(blocks)


def concept_attention_weights(
    concept_embeds: torch.Tensor, image_tokens: torch.Tensor, tau: float = 1.0
) -> torch.Tensor:
    """Attention weights `a` of each concept over each image's tokens, e.g. to visualise them as heat maps.

    Args:
        concept_embeds (`torch.Tensor` of shape `(num_concepts, dim)`): L2-normalised concept embeddings.
        image_tokens (`torch.Tensor` of shape `(num_images, num_tokens, dim)`): L2-normalised projected tokens.

    Returns:
        `torch.Tensor` of shape `(num_concepts, num_images, num_tokens)`; each `[n, m]` row sums to 1.
    """
    similarity = torch.einsum("nd,mtd->nmt", concept_embeds.float(), image_tokens.float())
    return torch.softmax(tau * similarity, dim=-1)


__all__ = ["concept_attention_scores", "concept_attention_weights", "concept_chunk_size"]
