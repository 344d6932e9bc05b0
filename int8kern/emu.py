"""int8kern's CUDA kernels on the CPU: the warp-level CUDA emulator as a third backend.

The extension module ``int8kern._emu`` holds the CUDA backend's host code (csrc/cuda/ops_cuda.cpp)
and every CUDA kernel (csrc/cuda/*.cu), compiled as host C++ against the emulator (csrc/emu): each
CUDA thread is a fiber, with the hardware's per-lane semantics for ldmatrix, mma.sync, cp.async,
shuffles, barriers, mbarriers, TMA and wgmma. Its ops, ``torch.ops.int8kern_emu.*``, take CPU
tensors. Inside ``with int8kern.emu.backend():`` the public ops (and so ``Int8LinearLt``) run
there instead of on the CPU kernels::

    with int8kern.emu.backend("h200"):
        y = int8kern.int8_linear(x, w, w_absmax, bias, 6.0)   # the CUDA kernels, emulated
    print(int8kern.emu.stats())                                # launches, memsets, host syncs, ...

It is built wherever the CUDA toolkit's headers are (no GPU and no CUDA torch needed). It is for
testing: a 4096 x 4096 GEMM takes seconds. What it proves and what only a GPU can show:
csrc/emu/README.md.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator

import torch

from . import ops as _ops_module

try:
    from . import _emu  # noqa: F401  registers torch.ops.int8kern_emu.*
except ImportError as e:  # built without the CUDA headers, or INT8KERN_SKIP_CUDA=1
    _UNAVAILABLE = f"int8kern was built without the CUDA emulator ({e}); it needs the CUDA toolkit's headers at build time"
else:
    _UNAVAILABLE = ""
    _ops_module._register_python_parts("int8kern_emu")

#: The devices the emulator can pretend to be (device properties, planner inputs, limits).
DEVICES = ("h200", "a100")

# emu_stats()'s order (csrc/emu/ops_emu.cpp).
_STAT_NAMES = ("launches", "blocks", "memsets", "allocations", "memcpys", "library_calls", "host_syncs",
               "cp_async_16", "mma_sync", "wgmma", "tma_loads", "ldmatrix_requests", "ldmatrix_wavefronts",
               "cp_async_requests", "cp_async_wavefronts", "cp_async_sectors")


def available() -> bool:
    """Whether this build of int8kern has the emulated CUDA backend."""
    return not _UNAVAILABLE


def _require() -> None:
    if _UNAVAILABLE:
        raise RuntimeError(_UNAVAILABLE)


def ops():
    """torch.ops.int8kern_emu: the int8kern ops, on CPU tensors, through the emulated CUDA kernels."""
    _require()
    return torch.ops.int8kern_emu


def set_device(kind: str) -> None:
    """Pretend to be an H200 ("h200", sm_90, 132 SMs: the default) or an A100 ("a100", sm_80)."""
    _require()
    if not torch.ops.int8kern_emu.emu_set_device(kind):
        raise ValueError(f"int8kern.emu.set_device: kind must be one of {DEVICES}, got {kind!r}")


def device() -> str:
    _require()
    return torch.ops.int8kern_emu.emu_device()


def stats() -> Dict[str, int]:
    """What the emulated kernels and host code did since the last reset_stats(): kernel launches and
    blocks, memsets, device allocations, library (cuBLAS) calls and host synchronisations the CUDA
    host code would make, and instruction counts with shared-memory bank-conflict wavefronts."""
    _require()
    return dict(zip(_STAT_NAMES, torch.ops.int8kern_emu.emu_stats()))


def reset_stats() -> None:
    _require()
    torch.ops.int8kern_emu.emu_reset_stats()


class Graph:
    """Launches recorded by `graph()` (as a `torch.cuda.CUDAGraph` records them): `replay()` runs
    them again, in order, on whatever the captured tensors hold then."""

    def __init__(self) -> None:
        self._id = 0

    def replay(self) -> None:
        if not self._id:
            raise RuntimeError("int8kern.emu.Graph.replay: nothing captured")
        torch.ops.int8kern_emu.emu_graph_replay(self._id)

    def reset(self) -> None:
        if self._id:
            torch.ops.int8kern_emu.emu_graph_drop(self._id)
            self._id = 0

    def __del__(self) -> None:
        if self._id and not _UNAVAILABLE:
            try:
                torch.ops.int8kern_emu.emu_graph_drop(self._id)
            except Exception:  # interpreter shutdown
                pass


@contextlib.contextmanager
def graph() -> Iterator[Graph]:
    """Stream capture under the emulator, like `with torch.cuda.graph(g):`. Inside, the CUDA
    backend's kernel launches and memsets are recorded instead of run (the outputs the ops return
    are allocated but not yet written: poisoned with 0xFF bytes, NaN in every float dtype); a host
    synchronisation raises, as it invalidates a capture on a GPU. `Graph.replay()` then runs the
    recorded launches with the arguments they were captured with: results that depend on the
    inputs' contents only through device memory (an outlier count the host never reads) come out
    right for new contents of the same tensors. Unlike a GPU capture, ATen work the host code
    does itself (a copy of a non-contiguous input, a dtype conversion) runs once, at capture, and
    is not replayed: capture with contiguous inputs of the op's dtypes."""
    _require()
    g = Graph()
    torch.ops.int8kern_emu.emu_capture_begin()
    try:
        yield g
    finally:
        g._id = torch.ops.int8kern_emu.emu_capture_end()


@contextlib.contextmanager
def backend(kind: str = "h200") -> Iterator[None]:
    """Within the block, int8kern's public ops run the CUDA kernels under the emulator (CPU
    tensors in and out), on an emulated `kind` device. Not thread-safe across threads that use
    int8kern's ops at the same time (the switch is module-wide)."""
    _require()
    previous_ops, previous_kind = _ops_module._ops, device()
    set_device(kind)
    _ops_module._ops = torch.ops.int8kern_emu
    try:
        yield
    finally:
        _ops_module._ops = previous_ops
        set_device(previous_kind)
