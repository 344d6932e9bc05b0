"""The CUDA GEMM planner (csrc/cuda/gemm_plan.cuh), compiled for the host and run for an
H100/H200-sized device (132 SMs, 228 KiB of shared memory each): no GPU needed. It decides which
shapes the wgmma kernel may take (plain tiled plans only) and where K is split, so the shape
lists of test_wgmma.py, test_cuda_hardware.py and the self-test are checked here before any GPU
time is spent on them."""
import os
import shutil
import subprocess

import pytest

from test_wgmma import SHAPES, SPLIT_SHAPES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
H200 = ("132", str(228 * 1024))


@pytest.fixture(scope="module")
def planner(tmp_path_factory):
    nvcc = NVCC if os.path.isfile(NVCC) else shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("needs nvcc to compile the planner for the host")
    exe = tmp_path_factory.mktemp("plan") / "plan_gemm"
    subprocess.run([nvcc, "-std=c++17", "-I", os.path.join(ROOT, "csrc"),
                    os.path.join(ROOT, "csrc", "cuda", "selftest", "plan_gemm.cu"), "-o", str(exe)],
                   check=True, capture_output=True, text=True)

    def plan(problems, device=H200):
        """problems: (M, N, K) -> {(M, N, K): (family, split, workspace_elems, plain)}"""
        args = [str(v) for M, N, K in problems for v in (M, N, K, 1)]
        out = subprocess.run([str(exe), *device, *args], check=True, capture_output=True, text=True).stdout
        rows = [line.split() for line in out.strip().splitlines()]
        return {(int(r[0]), int(r[1]), int(r[2])): (r[3], int(r[4]), int(r[6]), r[7] == "1") for r in rows}

    return plan


def test_wgmma_shapes_are_plain_tiled_and_split_shapes_are_not(planner):
    # test_wgmma's lists are (M, K, N)
    plans = planner([(M, N, K) for M, K, N in SHAPES + SPLIT_SHAPES])
    for M, K, N in SHAPES:
        family, split, ws, plain = plans[(M, N, K)]
        assert plain and split == 1 and ws == 0, (M, K, N, family)
    for M, K, N in SPLIT_SHAPES:
        family, _, _, plain = plans[(M, N, K)]
        assert not plain and family in ("decode", "mid"), (M, K, N, family)


def test_decode_streams_the_weight_on_every_sm(planner):
    plans = planner([(1, 4096, 4096), (16, 4096, 4096), (1, 14336, 4096), (1, 28672, 8192), (16, 200, 40000)])
    # 64 tiles of 16x64 on 132 SMs: K split 8 ways (512 blocks), the workspace M*N + 64 counters
    assert plans[(1, 4096, 4096)] == ("decode", 8, 4096 + 64, False)
    assert plans[(16, 4096, 4096)][:2] == ("decode", 8)
    assert plans[(1, 14336, 4096)][:2] == ("decode", 2)   # 224 tiles: 2 slices fill the SMs
    assert plans[(1, 28672, 8192)] == ("decode", 1, 0, False)  # 448 tiles: enough, no split, no workspace
    assert plans[(16, 200, 40000)][0] == "decode" and plans[(16, 200, 40000)][1] > 8


def test_prefill_and_hardware_check_shapes(planner):
    plans = planner([(512, 4096, 4096), (8, 4096, 4096), (2048, 4096, 4096), (2048, 11008, 4096),
                     (8192, 8192, 8192), (300, 4096, 4096), (1100, 1100, 131056)])
    assert plans[(512, 4096, 4096)][3] and not plans[(8, 4096, 4096)][3]  # test_cuda_hardware's graph capture
    assert plans[(2048, 4096, 4096)][:2] == ("big", 1) and plans[(8192, 8192, 8192)][:2] == ("big", 1)
    assert plans[(2048, 11008, 4096)][3] and plans[(300, 4096, 4096)][3]
    assert plans[(1100, 1100, 131056)][3]  # test_wgmma's extremes at the K limit


def test_selftest_routing_and_grid_y_cases(planner):
    # gemm_selftest.cu: test_wgmma_routing's cases, and the 128x128 kernel's grid.y loop
    plans = planner([(1, 4096, 4096), (16, 200, 40000), (100, 1000, 5137), (256, 4096, 1024),
                     (1500, 1500, 48), (17, 128 * 65535 + 100, 16)])
    assert [plans[k][3] for k in [(1, 4096, 4096), (16, 200, 40000), (100, 1000, 5137)]] == [False] * 3
    assert plans[(100, 1000, 5137)][0] == "mid"
    assert plans[(256, 4096, 1024)][3] and plans[(1500, 1500, 48)][3]
    assert plans[(17, 128 * 65535 + 100, 16)][:2] == ("big", 1)  # 65536 column tiles > grid.y's 65535
