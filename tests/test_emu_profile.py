"""What the CUDA emulator counts per op call (scripts/emu_profile.py): the main loops' shared-memory
accesses are bank-conflict free and their global reads coalesced, and the launches, allocations,
memsets and host syncs of one int8_linear call are what docs/design.md says."""
import os
import sys

import pytest

from conftest import _emulator_built

pytestmark = pytest.mark.skipif(not _emulator_built(), reason="int8kern built without the CUDA emulator")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import emu_profile  # noqa: E402


@pytest.fixture(scope="module")
def rows():
    return emu_profile.main([])


def _row(rows, **key):
    found = [r for r in rows if all(r[k] == v for k, v in key.items())]
    assert len(found) == 1, key
    return found[0]


def test_main_loops_conflict_free_and_coalesced(rows):
    for r in rows:
        if r["main_loop"] == "mma":
            # ldmatrix: one wavefront per 8 x 16-byte matrix (the 80-byte row stride spreads the
            # 8 rows over all 32 banks); cp.async: 512 bytes a warp in 4 wavefronts of 128.
            assert r["ldmatrix_wavefronts_per_request"] == 1.0, r
            assert r["cp_async_wavefronts_per_request"] == 4.0, r
            # 32 lanes x 16 bytes from rows of 64 contiguous bytes: 16 sectors of 32 bytes, all used.
            assert r["cp_async_sectors_per_request"] == 16.0, r
            assert r["mma_sync"] > 0 and r["wgmma"] == 0, r
        else:  # the wgmma kernel loads through TMA and multiplies from shared memory
            assert r["wgmma"] > 0 and r["tma_loads"] > 0 and r["mma_sync"] == 0, r


# Per int8_linear call today (issue 18 will bring decode to two launches and no memset):
#   threshold 0: quantize + GEMM; a split-K workspace (zeroed) at decode sizes.
#   threshold 6: + the outlier mask (zeroed), compaction, gather, the cuBLAS outlier product, spill.
@pytest.mark.parametrize("M,K,N,threshold,launches,memsets", [
    (1, 4096, 4096, 0.0, 2, 1),
    (1, 4096, 4096, 6.0, 6, 2),
    (16, 4096, 4096, 6.0, 6, 2),
    (17, 1024, 1024, 6.0, 6, 2),
    (512, 512, 512, 6.0, 6, 1),
])
def test_int8_linear_launch_counts(rows, M, K, N, threshold, launches, memsets):
    r = _row(rows, op="int8_linear", M=M, K=K, N=N, threshold=threshold)
    assert (r["launches"], r["memsets"], r["host_syncs"]) == (launches, memsets, 0), r
