"""Collectives for losses that span processes: differentiable and ragged all-gathers.

`accelerator.gather` carries no gradient, so contrastive losses gather with `_AllGatherWithGrad`, whose backward
sends every process the sum of the gradients that all processes' losses send to its rows (an all-reduce: every
backend has it, unlike reduce-scatter, and the gathered embeddings are small next to the model's gradients).
Concept batches are ragged (each process has its own number of concepts, possibly zero), so rows are padded to
the largest count before the gather and the padding is dropped afterwards.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size_and_rank() -> tuple[int, int]:
    """`(world_size, rank)` of the default process group, `(1, 0)` when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _AllGatherWithGrad(torch.autograd.Function):
    """`(rows, ...)` on every process -> `(world_size, rows, ...)`, differentiable."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank = dist.get_rank()
        pieces = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(pieces, tensor.contiguous())
        return torch.stack(pieces)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank]


def all_gather_rows(tensor: torch.Tensor, sizes: list[int], with_grad: bool) -> torch.Tensor:
    """Concatenate every process's `tensor` along dim 0; `sizes[r]` is the number of rows of process `r`.

    Args:
        tensor (`torch.Tensor` of shape `(sizes[rank], ...)`): this process's rows.
        sizes: row counts of all processes; they may differ and may be zero.
        with_grad: use the differentiable all-gather (the backward pass sums the gradients that all processes'
            losses send to these rows).

    Returns:
        `torch.Tensor` of shape `(sum(sizes), ...)`, rows in rank order.
    """
    if len(sizes) == 1:
        return tensor
    max_rows = max(sizes)
    if tensor.shape[0] < max_rows:
        padding = tensor.new_zeros((max_rows - tensor.shape[0], *tensor.shape[1:]))
        tensor = torch.cat([tensor, padding])
    if with_grad:
        pieces = _AllGatherWithGrad.apply(tensor).unbind()
    else:
        pieces = [torch.empty_like(tensor) for _ in sizes]
        dist.all_gather(pieces, tensor.contiguous())
    return torch.cat([piece[:rows] for piece, rows in zip(pieces, sizes)])
