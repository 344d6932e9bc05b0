"""torch.library.opcheck on every op and device: schema, fake (meta) kernels, dispatch,
autograd registration and AOT dispatch all agree with the real kernels."""
import pytest
import torch

from int8kern import ops  # noqa: F401
from int8kern import reference as ref

from conftest import randint8, randn


def _cases(device):
    x = randn((7, 67), torch.float16, device, seed=1, scale=3)
    a, b = randint8((7, 67), device, seed=2), randint8((5, 67), device, seed=3)
    row = torch.rand(7, device=device) + 0.5
    col = torch.rand(5, device=device) + 0.5
    acc = torch.ops.int8kern.int8_matmul(a, b)
    bias = randn((5,), torch.float32, device, seed=4)
    add = randn((7, 5), torch.bfloat16, device, seed=5)
    weight, absmax = ref.quantize_weight(randn((5, 67), torch.float32, device, seed=6))
    x3 = randn((2, 3, 67), torch.float32, device, seed=7, scale=3)
    return [
        (torch.ops.int8kern.quantize_rowwise.default, (x, 0.0)),
        (torch.ops.int8kern.quantize_rowwise.default, (x, 6.0)),
        (torch.ops.int8kern.int8_matmul.default, (a, b)),
        (torch.ops.int8kern.dequantize_matmul.default, (acc, row, col, bias, None, torch.float16)),
        (torch.ops.int8kern.dequantize_matmul.default, (acc, row, col, None, add, torch.bfloat16)),
        (torch.ops.int8kern.int8_scaled_matmul.default, (a, b, row, col, bias, add, torch.float32)),
        (torch.ops.int8kern.int8_linear.default, (x3, weight, absmax, bias, 6.0)),
        (torch.ops.int8kern.int8_linear.default, (x3.half(), weight, absmax, None, 0.0)),
    ]


@pytest.mark.parametrize("case", range(8))
def test_opcheck(device, case):
    op, args = _cases(device)[case]
    torch.library.opcheck(op, args)


def test_opcheck_int8_linear_with_grad(device):
    x = randn((4, 32), torch.float32, device, seed=8, scale=3).requires_grad_()
    weight, absmax = ref.quantize_weight(randn((6, 32), torch.float32, device, seed=9))
    torch.library.opcheck(torch.ops.int8kern.int8_linear.default, (x, weight, absmax, None, 6.0))
