"""The build did what it was asked: CUDA kernels exist whenever a CUDA build was expected."""
import os
import shutil

import torch

import int8kern  # noqa: F401

OPS = ["quantize_rowwise", "int8_matmul", "dequantize_matmul", "int8_scaled_matmul", "int8_linear"]


def _cuda_build_expected():
    if os.environ.get("INT8KERN_SKIP_CUDA", "0") not in ("", "0") or not torch.version.cuda:
        return False
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    return os.path.isfile(os.path.join(home, "bin", "nvcc")) or shutil.which("nvcc") is not None


def test_cpu_kernels_registered():
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"int8kern::{op}", "CPU"), op


def test_cuda_kernels_built_when_expected():
    """Fails (never skips) when nvcc and a CUDA torch are present but the CUDA sources were
    not compiled: CI must not pass on a silently CPU-only build."""
    if not _cuda_build_expected():
        return
    missing = [op for op in OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(f"int8kern::{op}", "CUDA")]
    assert not missing, f"nvcc and CUDA torch {torch.version.cuda} present, but no CUDA kernels for {missing}"


def test_import_does_not_touch_the_gpu():
    # int8kern's import must not initialise CUDA (it would break fork-based workers).
    import subprocess, sys
    code = "import torch, int8kern; print(torch.cuda.is_initialized())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _emulator_build_expected():
    """setup.py builds int8kern._emu wherever it finds the CUDA toolkit's headers."""
    if os.environ.get("INT8KERN_SKIP_CUDA", "0") not in ("", "0"):
        return False
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    return os.path.isfile(os.path.join(home, "include", "cuda_runtime_api.h"))


def test_cuda_emulator_built_when_expected():
    """Fails (never skips) when the CUDA headers are present but the emulated CUDA backend was not
    built: then CI would run none of the CUDA kernels."""
    import int8kern.emu

    if not _emulator_build_expected():
        return
    assert int8kern.emu.available(), int8kern.emu._UNAVAILABLE
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"int8kern_emu::{op}", "CPU"), op
