"""Count the operations that make the host wait for an accelerator, on any device (the CPU included).

A CUDA training step runs at the GPU's pace only while the host can queue kernels ahead of it. An operation whose
result the host must read (a scalar, a data-dependent shape, a copy to host memory) drains that queue. On a GPU,
`torch.cuda.set_sync_debug_mode("warn")` reports such operations; `HostSyncCounter` finds the same operations by
their kind, so that a test on a CPU-only machine can show that a code path has none.

What it counts, each by the name of the operation:

- scalar reads: `_local_scalar_dense` (`.item()`, `int(t)`, `float(t)`, `bool(t)`, `if t:`);
- data-dependent output shapes: `nonzero`, `masked_select`, `unique*`, boolean-mask indexing (`t[mask]`,
  `t[mask] = v`), `repeat_interleave` without `output_size`, `bincount`, `equal`;
- copies to host memory: `.tolist()`, `.numpy()`, `.cpu()`;
- uploads of host data: `torch.tensor(data, device=...)` / `torch.as_tensor(data, device=...)` (a blocking copy
  from pageable memory on a GPU).

It cannot see a `.to(device)` of a CPU tensor (on a CPU-only machine every tensor is already there), nor tell a read
of a tensor that would live on the accelerator from a read of one that stays in host memory on every machine; name
the functions that read only host tensors by design in `host_only`, and their reads are counted apart.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

_ALWAYS_SYNC = {
    aten._local_scalar_dense.default: "_local_scalar_dense",
    aten.nonzero.default: "nonzero",
    aten.nonzero.out: "nonzero",
    aten.nonzero_numpy.default: "nonzero",
    aten.masked_select.default: "masked_select",
    aten._unique.default: "unique",
    aten._unique2.default: "unique",
    aten.unique_dim.default: "unique_dim",
    aten.unique_consecutive.default: "unique_consecutive",
    aten.unique_dim_consecutive.default: "unique_consecutive",
    aten.bincount.default: "bincount",
    aten.equal.default: "equal",
}
_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}  # indices: second argument
_HOST_READS = {torch.Tensor.tolist: "tolist", torch.Tensor.numpy: "numpy", torch.Tensor.cpu: "cpu"}
_UPLOADS = {torch.tensor: "tensor(data, device)", torch.as_tensor: "as_tensor(data, device)"}


class _Counts:
    """Counts by operation name; kept apart while a `host_only` function is on the Python stack."""

    def __init__(self, host_only: Iterable[Callable]):
        self.syncs: Counter = Counter()
        self.host_only: Counter = Counter()
        self._codes = {function.__code__ for function in host_only}

    def record(self, name: str) -> None:
        frame = sys._getframe(1)
        while frame is not None and frame.f_code not in self._codes:
            frame = frame.f_back
        (self.syncs if frame is None else self.host_only)[name] += 1


def _has_bool_index(indices) -> bool:
    return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, counts: _Counts):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ALWAYS_SYNC:
            self.counts.record(_ALWAYS_SYNC[func])
        elif func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self.counts.record("repeat_interleave")
        elif func in _INDEXING and _has_bool_index(args[1]):
            self.counts.record("boolean-mask index")
        return func(*args, **kwargs)


class _FunctionCounter(TorchFunctionMode):
    def __init__(self, counts: _Counts):
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _HOST_READS:
            self.counts.record(_HOST_READS[func])
        elif func in _UPLOADS and kwargs.get("device") is not None and not isinstance(args[0], torch.Tensor):
            self.counts.record(_UPLOADS[func])
        return func(*args, **kwargs)


class HostSyncCounter:
    """Context manager that counts host syncs (see the module docstring) by operation name.

    Args:
        host_only: functions that read host tensors by design (e.g. an exchange of sizes through a CPU process
            group); reads made while one of them runs go to `host_only_counts`, not to `counts`.

    Example:

    ```python
    >>> import torch
    >>> from modeling_concept_clip.host_syncs import HostSyncCounter
    >>> x = torch.arange(5)
    >>> with HostSyncCounter() as syncs:
    ...     y = x[x > 2]  # boolean mask: the output size depends on the data
    ...     n = int(x.sum())  # scalar read
    >>> dict(syncs.counts), syncs.total
    ({'boolean-mask index': 1, '_local_scalar_dense': 1}, 2)
    ```
    """

    def __init__(self, host_only: Iterable[Callable] = ()):
        self._counts = _Counts(host_only)
        self._modes = (_FunctionCounter(self._counts), _DispatchCounter(self._counts))

    @property
    def counts(self) -> Counter:
        return self._counts.syncs

    @property
    def host_only_counts(self) -> Counter:
        return self._counts.host_only

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __enter__(self) -> HostSyncCounter:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc_info):
        for mode in reversed(self._modes):
            mode.__exit__(*exc_info)


__all__ = ["HostSyncCounter"]
