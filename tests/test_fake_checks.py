"""The fake (meta) kernels refuse bad input exactly as the real kernels do: same first error,
same message. test_errors.py's tests are run again here with every int8kern op call checked
twice, once on FakeTensor copies of its arguments (the registered fake, what torch.compile
and opcheck run) and once for real, so each bad-input case there, present and future, is
held to it. A call the kernel accepts must be accepted by the fake too, with the same output
shapes and dtypes."""
import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from torch.utils._pytree import tree_flatten, tree_map_only

import test_errors
from int8kern import ops

# test_errors' tests, collected again in this module under the checking fixture below.
globals().update({name: fn for name, fn in vars(test_errors).items() if name.startswith("test_")})


def _error(fn):
    try:
        return fn(), None
    except RuntimeError as e:
        return None, str(e)


class _EagerAndFake:
    """Stands in for torch.ops.int8kern inside int8kern.ops: each call runs the fake, then the
    kernel, compares them, and returns (or raises) what the kernel did."""

    def __init__(self, namespace):
        self.namespace = namespace  # torch.ops.int8kern, or int8kern_emu for the "cuda_emu" device
        self.calls, self.errors = 0, 0

    def __getattr__(self, name):
        op = getattr(self.namespace, name)

        def call(*args):
            # Static input shapes (the messages print sizes); a ShapeEnv for quantize_rowwise's
            # data-dependent output size.
            with FakeTensorMode(shape_env=ShapeEnv(), static_shapes=True) as mode:
                fake_args = tree_map_only(torch.Tensor, mode.from_tensor, args)
                fake_out, fake_err = _error(lambda: op(*fake_args))
            out, err = _error(lambda: op(*args))
            self.calls += 1
            self.errors += err is not None or fake_err is not None
            assert fake_err == err, f"int8kern.{name}: the fake says {fake_err!r}, the kernel {err!r}"
            if err is not None:
                raise RuntimeError(err)
            for got, want in zip(tree_flatten(fake_out)[0], tree_flatten(out)[0]):
                assert got.dtype == want.dtype and got.device == want.device, (name, got, want)
                # a data-dependent size (the outlier count) is a symbol in the fake
                assert all(not isinstance(g, int) or g == w for g, w in zip(got.shape, want.shape)), (name, got, want)
                assert got.dim() == want.dim()
            return out

        return call


@pytest.fixture(autouse=True)
def eager_and_fake(request, device):
    # After `device`, which selects the backend (int8kern.ops._ops) this checker then wraps, and
    # put back before `device` restores its own (not monkeypatch: it would undo last, after
    # `device`, and leave the emulated backend selected for every later test).
    checker = _EagerAndFake(ops._ops)
    backend, ops._ops = ops._ops, checker
    try:
        yield
    finally:
        ops._ops = backend
    assert checker.calls > 0, f"{request.node.name} called no int8kern op: nothing was compared"
    if "bad_input" in request.node.name:
        assert checker.errors > 0, f"{request.node.name} raised no error through an op: nothing was compared"


def test_dtype_names_match_cpp(device):
    # describe()'s dtype names for dtypes test_errors.py does not use; c10::toString's names
    # past checks.h's own list (complex, float8, uint16).
    for dtype in (torch.bool, torch.uint8, torch.int16, torch.int64, torch.float64, torch.complex64,
                  torch.float8_e4m3fn, torch.uint16):
        x = torch.zeros(2, 3, device=device).to(dtype)
        with pytest.raises(RuntimeError, match=re.escape(f"got {ops._dtype_name(dtype)} [2, 3]")):
            ops.quantize_rowwise(x)
        with pytest.raises(RuntimeError, match="a must be int8"):
            ops.int8_matmul(x, x)
    acc = torch.zeros(2, 3, dtype=torch.int32, device=device)
    scales = torch.ones(2, device=device), torch.ones(3, device=device)
    with pytest.raises(RuntimeError, match="out_dtype must be float16, bfloat16 or float32, got float64"):
        ops.dequantize_matmul(acc, *scales, out_dtype=torch.float64)


def test_compile_refuses_like_eager():
    """Under torch.compile the fake runs first: the eager message comes out of it."""
    a = torch.randint(-128, 128, (6, 32), dtype=torch.int8)
    b = torch.randint(-128, 128, (5, 32), dtype=torch.int8)
    row, col = torch.ones(6), torch.ones(4)  # col_absmax one short
    _, eager = _error(lambda: ops.int8_scaled_matmul(a, b, row, col))
    assert eager is not None and "col_absmax must be of size 5" in eager
    torch._dynamo.reset()
    # torch.ops directly: int8kern.ops._ops is the checker in this module
    compiled = torch.compile(lambda *t: torch.ops.int8kern.int8_scaled_matmul(*t, None, None, torch.float16),
                             fullgraph=True, backend="eager")
    with pytest.raises(Exception) as info:
        compiled(a, b, row, col)
    assert eager in str(info.value)
