"""Collectives for losses that span processes: differentiable and ragged all-gathers, and the exchange of sizes.

`accelerator.gather` carries no gradient, so contrastive losses gather with `_AllGatherWithGrad`, whose backward
sends every process the sum of the gradients that all processes' losses send to its rows (an all-reduce: every
backend has it, unlike reduce-scatter, and the gathered embeddings are small next to the model's gradients).
Sums over processes (`all_reduce_sum`) are differentiable the same way (`torch.distributed.nn.functional`).
Concept batches are ragged (each process has its own number of concepts, possibly zero), so rows are padded to
the largest count before the gather and the padding is dropped afterwards.

The row counts themselves are host integers (tensor shapes): `all_gather_sizes` exchanges them through a CPU
(gloo) process group, host to host, so that no process waits for its accelerator to read them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

_HOST_GROUPS: dict = {}


def world_size_and_rank() -> tuple[int, int]:
    """`(world_size, rank)` of the default process group, `(1, 0)` when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def host_group(timeout: timedelta | None = None):
    """A process group that moves CPU tensors: the default one when its backend is gloo (alone or for CPU tensors,
    as in `"cpu:gloo,cuda:nccl"`), else a gloo group over the same processes, created once, collectively, by the
    first call (the training loop's, with `--ddp_timeout` as `timeout`; `None`: torch's default timeout).

    Gloo finds its own network address from the host name, which on many clusters resolves to 127.0.0.1; when the
    group cannot be created, the error says how to name the network interface (`GLOO_SOCKET_IFNAME`).
    """
    default = dist.group.WORLD
    backend = str(dist.get_backend(default))
    if "gloo" in backend:
        return default
    if default not in _HOST_GROUPS:
        try:
            _HOST_GROUPS[default] = dist.new_group(backend="gloo", timeout=timeout)
        except RuntimeError as error:
            raise RuntimeError(
                f"Could not create the CPU (gloo) process group that runs next to {backend} (for batch sizes and "
                f"step bookkeeping): {error}. Gloo takes its network address from the host name, which on many "
                "clusters resolves to 127.0.0.1 and cannot reach the other machines: set GLOO_SOCKET_IFNAME to the "
                "network interface that connects them (the one NCCL uses; `ip -brief address` lists them), e.g. "
                "`export GLOO_SOCKET_IFNAME=eth0` on every machine before `accelerate launch`."
            ) from error
    return _HOST_GROUPS[default]


def all_gather_sizes(sizes: tuple[int, ...], world_size: int) -> list[tuple[int, ...]]:
    """Every process's `sizes` (host integers, e.g. its numbers of images and concepts), in rank order.

    The exchange runs host to host through a CPU (gloo) group: unlike a gather of a device tensor followed by
    `.tolist()`, it does not wait for the accelerator to finish the work queued before it.
    """
    if world_size == 1:
        return [tuple(sizes)]
    local = torch.tensor(sizes, dtype=torch.long)
    gathered = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(gathered, local, group=host_group())
    return [tuple(piece.tolist()) for piece in gathered]


def all_gather_host_lists(values: list[int], world_size: int) -> list[list[int]]:
    """Every process's list of int64 `values` (lengths may differ), in rank order, host to host (see above)."""
    if world_size == 1:
        return [list(values)]
    lengths = [n for (n,) in all_gather_sizes((len(values),), world_size)]
    local = torch.zeros(max(lengths), dtype=torch.long)
    local[: len(values)] = torch.tensor(values, dtype=torch.long)
    gathered = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(gathered, local, group=host_group())
    return [piece[:n].tolist() for piece, n in zip(gathered, lengths)]


def to_device_async(values: list[int], device: torch.device) -> torch.Tensor:
    """A LongTensor of host `values` on `device`, copied without blocking the host (pinned memory on CUDA)."""
    tensor = torch.tensor(values, dtype=torch.long)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@dataclass
class EncodingPlan:
    """Who encodes which distinct item of the global batch (see `plan_distinct_encoding`).

    encode: positions, in this process's list of keys, of the items it encodes (in table order).
    counts: number of items each process encodes; the gathered table holds them in rank order.
    table_positions: row of the gathered table of each of this process's items.
    """

    encode: list[int]
    counts: list[int]
    table_positions: list[int]


def plan_distinct_encoding(keys_per_process: list[list[int]], rank: int) -> EncodingPlan:
    """Encode each distinct key of all processes once, on a process that holds it, balancing the counts.

    Keys held by one process go to it; each key held by several goes to the least loaded of them (ties: the lowest
    rank), in a deterministic order, so that every process computes the same plan from the same lists.
    """
    holders: dict[int, list[int]] = {}
    for process, keys in enumerate(keys_per_process):
        for key in keys:
            holders.setdefault(key, [])
            if not holders[key] or holders[key][-1] != process:
                holders[key].append(process)
    counts = [0] * len(keys_per_process)
    slot = {}  # key -> (process, position among the items that process encodes)
    for key, processes in sorted(holders.items(), key=lambda item: (len(item[1]), item[0])):
        owner = min(processes, key=lambda process: (counts[process], process))
        slot[key] = (owner, counts[owner])
        counts[owner] += 1
    offsets = [sum(counts[:process]) for process in range(len(counts))]
    own_keys = keys_per_process[rank]
    first_position = {}
    for position, key in enumerate(own_keys):
        first_position.setdefault(key, position)
    encoded = sorted((slot[key][1], key) for key in first_position if slot[key][0] == rank)
    return EncodingPlan(
        encode=[first_position[key] for _, key in encoded],
        counts=counts,
        table_positions=[offsets[slot[key][0]] + slot[key][1] for key in own_keys],
    )


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
        sizes: row counts of all processes (see `all_gather_sizes`); they may differ and may be zero.
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


def all_reduce_sum(tensor: torch.Tensor, world_size: int, with_grad: bool) -> torch.Tensor:
    """The sum of every process's `tensor` (same shape on every process); `tensor` itself when `world_size == 1`.

    With `with_grad`, differentiable: the backward pass sends every process the sum of the gradients of all
    processes' outputs (an all-reduce that every process runs at the same point of its backward pass).
    """
    if world_size == 1:
        return tensor
    if with_grad:
        return dist_nn.all_reduce(tensor)
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor


def all_reduce_max(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """The elementwise maximum of every process's `tensor` (no gradient); `tensor` itself when `world_size == 1`."""
    if world_size == 1:
        return tensor
    tensor = tensor.detach().clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


__all__ = [
    "EncodingPlan",
    "all_gather_host_lists",
    "all_gather_rows",
    "all_gather_sizes",
    "all_reduce_max",
    "all_reduce_sum",
    "host_group",
    "plan_distinct_encoding",
    "to_device_async",
    "world_size_and_rank",
]
