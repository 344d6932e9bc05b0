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


# Per int8_linear call (docs/design.md, "Launches per call"): the quantize launch with the outlier
# bookkeeping fused and the GEMM with the outlier product in its epilogue; above 64 rows at
# threshold > 0, one more launch zeroes q's outlier columns on the whole GPU. No memset (the
# workspaces are cached per stream and left zero), no library call, no host sync, and two
# allocations from the caching allocator (y and one scratch block for q, row_absmax, the list).
@pytest.mark.parametrize("M,K,N", [(1, 4096, 4096), (16, 4096, 4096), (17, 1024, 1024), (512, 512, 512)])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_int8_linear_launch_counts(rows, M, K, N, threshold):
    r = _row(rows, op="int8_linear", M=M, K=K, N=N, threshold=threshold)
    launches = 3 if threshold > 0 and M > 64 else 2
    assert (r["launches"], r["library_calls"], r["memsets"], r["host_syncs"], r["allocations"]) == \
        (launches, 0, 0, 0, 2), r


def test_decode_launches_per_token_of_a_llama_model():
    """A whole decode step (one token, KV cache) of a small Llama-shaped model quantized with
    int8kern on the emulated CUDA backend: two launches per linear layer (fp16 nn.Linear: one
    cuBLAS GEMM each), no memset, no host sync, with emergent-feature-like outliers in play."""
    transformers = pytest.importorskip("transformers")
    import torch

    import int8kern
    from int8kern import emu

    cfg = transformers.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    torch.manual_seed(5)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a few hidden dimensions large in every layer's input: outlier columns
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight"):
                p[:3] *= 40.0
    model = int8kern.quantize_model(model, threshold=6.0)
    n_linear = sum(isinstance(m, int8kern.Int8LinearLt) for m in model.modules())
    ids = torch.randint(0, 300, (1, 6), generator=torch.Generator().manual_seed(6))
    with emu.backend(emu.device()), torch.no_grad():
        out = model(ids, use_cache=True)
        step = model(ids[:, -1:], cache=out.cache, use_cache=True)  # warm-up
        emu.reset_stats()
        model(ids[:, -1:], cache=step.cache, use_cache=True)
        s = emu.stats()
    assert n_linear == 2 * 7
    assert (s["launches"], s["memsets"], s["host_syncs"], s["library_calls"]) == (2 * n_linear, 0, 0, 0), s
