"""int8kern.ops.decode_attention (csrc/cpu/attention_cpu.cpp) against int8kern.reference and
torch's SDPA, and the transformers attention implementation "int8kern" built on it."""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from int8kern import ops, reference as ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (B, Hq, Hkv, S, D): SmolLM2's heads; Llama-3's 4:1 at D = 128; MHA; D = 80 (AVX-512 with 5
# registers a row), 17 and 1 (the portable loops); 16 query heads a KV head (pass 3 in runs of
# 6, 6, 4 heads), D = 256 (one head a run); S across block boundaries (256) and below 16.
SHAPES = [(1, 9, 3, 660, 64), (2, 8, 2, 513, 128), (1, 4, 4, 37, 80), (3, 6, 1, 256, 17), (1, 2, 1, 5, 1),
          (2, 3, 3, 1, 64), (1, 16, 1, 100, 64), (1, 4, 2, 40, 256)]


def inputs(B, Hq, Hkv, S, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=g).to(dtype) for shape in ((B, Hq, 1, D), (B, Hkv, S, D), (B, Hkv, S, D)))
    return q, k, v


def masks(B, S, seed=0):
    g = torch.Generator().manual_seed(seed)
    prefix = torch.zeros(1, 1, 1, S, dtype=torch.bool)
    prefix[..., : max(1, 2 * S // 3)] = True  # a static cache's filled part
    per_batch = torch.rand(B, 1, 1, S, generator=g) > 0.4
    per_batch[:, ..., 0] = True
    return {"none": None, "prefix": prefix, "random per batch": per_batch}


def tolerance(dtype):
    # the reference sums in float64, the kernel in float32: the output's rounding, plus a few
    # float32 ulps carried into float32 outputs
    return {torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]


def assert_close(got, want, dtype):
    assert got.dtype == want.dtype and got.shape == want.shape
    err = (got.float() - want.float()).abs().max().item()
    assert err <= tolerance(dtype) * max(1.0, want.float().abs().max().item()), err


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(shape, dtype):
    B, Hq, Hkv, S, D = shape
    q, k, v = inputs(*shape, dtype)
    for name, mask in masks(B, S).items():
        got = ops.decode_attention(q, k, v, mask)
        assert_close(got, ref.decode_attention(q, k, v, mask), dtype)
        # and torch's own SDPA (enable_gqa: query head h reads KV head h // (Hq // Hkv))
        sdpa = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, enable_gqa=True)
        assert_close(got, sdpa.to(dtype), dtype)


def test_scale_and_strided_cache():
    """A static cache's view (positions [:S] of a longer buffer), a transposed query, an explicit
    scale: used in place, same values as contiguous copies."""
    B, Hq, Hkv, S, D = 2, 8, 4, 300, 64
    cache_k = torch.randn(B, Hkv, 1024, D)
    cache_v = torch.randn(B, Hkv, 1024, D)
    k, v = cache_k[:, :, :S], cache_v[:, :, :S]
    q = torch.randn(B, 1, Hq, D).transpose(1, 2)  # [B, Hq, 1, D], not contiguous
    got = ops.decode_attention(q, k, v, None, scale=0.3)
    want = ref.decode_attention(q.contiguous(), k.contiguous(), v.contiguous(), None, scale=0.3)
    assert_close(got, want, torch.float32)
    assert got.is_contiguous()


def test_masked_rows_are_not_read_and_empty_rows_give_zero():
    B, Hq, Hkv, S, D = 2, 6, 2, 300, 64
    q, k, v = inputs(B, Hq, Hkv, S, D, torch.float32)
    mask = torch.zeros(B, 1, 1, S, dtype=torch.bool)
    mask[0, ..., :100] = True  # batch 1 attends to nothing
    # torch's CPU SDPA also gives 0 to a query that attends to nothing
    sdpa = F.scaled_dot_product_attention(q[1:], k[1:], v[1:], attn_mask=mask[1:], enable_gqa=True)
    assert torch.equal(sdpa, torch.zeros_like(sdpa))
    k[:, :, 100:] = float("nan")
    v[:, :, 100:] = float("inf")
    got = ops.decode_attention(q, k, v, mask)
    assert torch.isfinite(got).all()
    assert torch.equal(got[1], torch.zeros_like(got[1]))
    assert_close(got, ref.decode_attention(q, k, v, mask), torch.float32)


@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_nan_in_gives_nan_out(where):
    B, Hq, Hkv, S, D = 1, 4, 2, 400, 64
    q, k, v = inputs(B, Hq, Hkv, S, D, torch.float32)
    t = {"q": q, "k": k, "v": v}[where]
    if where == "q":
        t[0, 1, 0, 5] = float("nan")  # query head 1 only
    else:
        t[0, 1, 300, 5] = float("nan")  # KV head 1 (query heads 2, 3), a row in the second block
    got = ops.decode_attention(q, k, v)
    want = ref.decode_attention(q, k, v)
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.isnan(got).any()
    nan_heads = {"q": [1], "k": [2, 3], "v": [2, 3]}[where]
    assert all(torch.isnan(got[0, h]).any() == (h in nan_heads) for h in range(Hq))


def test_extreme_scores():
    """Scores far apart (exp underflows) and huge ones: the maximum is subtracted first."""
    B, Hq, Hkv, S, D = 1, 2, 1, 600, 64
    q, k, v = inputs(B, Hq, Hkv, S, D, torch.float32)
    k *= 40.0
    got = ops.decode_attention(q, k, v, None, scale=1.0)
    assert torch.isfinite(got).all()
    assert_close(got, ref.decode_attention(q, k, v, None, scale=1.0), torch.float32)


ISA_SCRIPT = """
import torch
from int8kern import ops, reference as ref
bad = []
for (B, Hq, Hkv, S, D) in [(1, 9, 3, 660, 64), (2, 4, 2, 300, 80), (1, 2, 1, 40, 17)]:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        g = torch.Generator().manual_seed(S)
        q = torch.randn(B, Hq, 1, D, generator=g).to(dtype)
        k = torch.randn(B, Hkv, S, D, generator=g).to(dtype)
        v = torch.randn(B, Hkv, S, D, generator=g).to(dtype)
        mask = torch.rand(B, 1, 1, S, generator=g) > 0.3
        got, want = ops.decode_attention(q, k, v, mask), ref.decode_attention(q, k, v, mask)
        err = (got.float() - want.float()).abs().max().item()
        if not err <= {torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype] * 4:
            bad.append((B, Hq, Hkv, S, D, str(dtype), err))
print(torch.ops.int8kern._cpu_isa(), "BAD", bad)
"""


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_portable_path_per_isa(isa):
    """Below AVX-512 the portable loops run: the same values."""
    env = dict(os.environ, INT8KERN_CPU_ISA=isa)
    out = subprocess.run([sys.executable, "-c", ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0 and "asks for more than this CPU has" in out.stderr:
        pytest.skip(f"this CPU has no {isa}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [isa, "BAD", "[]"], out.stdout


def test_threads_same_values():
    """Split over the helper threads (or not): the same bits, since each task and the merge
    order are fixed."""
    q, k, v = inputs(2, 8, 2, 4000, 64, torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.decode_attention(q, k, v)
        torch.set_num_threads(2)
        two = ops.decode_attention(q, k, v)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@pytest.mark.parametrize(
    "args, message",
    [
        (lambda q, k, v: (q.int(), k, v, None), "query must be float16, bfloat16 or float32 [B, Hq, 1, D]"),
        (lambda q, k, v: (q.expand(1, 6, 2, 64), k, v, None), "query must be [B, Hq, 1, D] (one query position)"),
        (lambda q, k, v: (q, k.half(), v, None), "key must be float32 [B, Hkv, S, D] (query's dtype)"),
        (lambda q, k, v: (q, k.repeat(1, 2, 1, 1)[:, :4], v, None), "key must be [B, Hkv, S, D] with B = 1, D = 64 and Hkv "
                                                         "dividing Hq = 6"),
        (lambda q, k, v: (q, k, v[:, :, :7], None), "value must be of key's dtype and shape (float32 [1, 3, 9, 64]"),
        (lambda q, k, v: (q, k, v, torch.ones(1, 1, 1, 9)), "attn_mask must be bool [B or 1, 1, 1, S] with S = 9"),
        (lambda q, k, v: (q, k, v, torch.ones(1, 6, 1, 9, dtype=torch.bool)), "attn_mask must be bool"),
    ],
)
def test_bad_input_is_a_clear_error(args, message):
    q, k, v = torch.randn(1, 6, 1, 64), torch.randn(1, 3, 9, 64), torch.randn(1, 3, 9, 64)
    with pytest.raises(RuntimeError, match="int8kern.decode_attention: ") as e:
        ops.decode_attention(*args(q, k, v))
    assert message in str(e.value)
    # torch.compile's fake implementation refuses it with the same words
    with pytest.raises(Exception) as e2:
        torch.compile(lambda *a: ops.decode_attention(*a), fullgraph=True, backend="eager")(*args(q, k, v))
    assert message in str(e2.value)


def test_bad_scale():
    q, k, v = torch.randn(1, 2, 1, 8), torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8)
    with pytest.raises(RuntimeError, match="int8kern.decode_attention: scale must be finite, got nan"):
        ops.decode_attention(q, k, v, None, scale=math.nan)


def test_opcheck_and_compile():
    q, k, v = inputs(1, 4, 2, 300, 64, torch.float32)
    mask = masks(1, 300)["prefix"]
    torch.library.opcheck(torch.ops.int8kern.decode_attention.default, (q, k, v, mask, 0.125))
    compiled = torch.compile(lambda *a: ops.decode_attention(*a) * 2, fullgraph=True)
    assert torch.equal(compiled(q, k, v, mask), ops.decode_attention(q, k, v, mask) * 2)


# ---------------------------------------------------------------- transformers

LLAMA = dict(vocab_size=256, hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=6,
             num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**LLAMA)).eval()


def decode_logits(model, impl, ids, steps, static):
    """Logits of a prompt's last token and of `steps` tokens fed one at a time."""
    from transformers import DynamicCache, StaticCache
    model.set_attn_implementation(impl)
    cache = (StaticCache(config=model.config, max_cache_len=ids.shape[1] + steps + 5) if static
             else DynamicCache(config=model.config))
    out, logits = model(ids, past_key_values=cache, use_cache=True), []
    with torch.no_grad():
        for t in range(steps):
            logits.append(out.logits[:, -1])
            nxt = ids[:, t : t + 1]  # any tokens will do: the same for both implementations
            out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
    logits.append(out.logits[:, -1])
    return torch.stack(logits)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic cache", "static cache"])
def test_transformers_attention_matches_sdpa(llama, static):
    import int8kern.hf
    from int8kern.hf import attention as hf_attention

    ids = torch.randint(0, LLAMA["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(3))
    calls = []
    real = ops.decode_attention
    try:
        hf_attention.ops.decode_attention = lambda *a: calls.append(1) or real(*a)
        with torch.no_grad():
            got = decode_logits(llama, int8kern.hf.ATTN_IMPLEMENTATION, ids, 6, static)
    finally:
        hf_attention.ops.decode_attention = real
    with torch.no_grad():
        want = decode_logits(llama, "sdpa", ids, 6, static)
    llama.set_attn_implementation("sdpa")
    # decode steps through decode_attention (one call a layer), the prompt through SDPA
    assert len(calls) == 6 * LLAMA["num_hidden_layers"]
    assert (got - want).abs().max().item() < 1e-4


def test_transformers_generate_compiled(llama):
    """generate() with a static cache and the decode step under torch.compile(fullgraph=True):
    no graph break, and the greedy tokens of SDPA's."""
    import int8kern.hf
    from transformers import CompileConfig

    ids = torch.randint(0, LLAMA["vocab_size"], (1, 12), generator=torch.Generator().manual_seed(4))
    cfg = CompileConfig(fullgraph=True, backend="eager", mode=None)
    cfg._compile_all_devices = True  # transformers compiles on CUDA only unless told
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, cache_implementation="static", compile_config=cfg)
    out = {}
    for impl in ("sdpa", int8kern.hf.ATTN_IMPLEMENTATION):
        llama.set_attn_implementation(impl)
        with torch.no_grad():
            out[impl] = llama.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    llama.set_attn_implementation("sdpa")
    assert torch.equal(out["sdpa"], out[int8kern.hf.ATTN_IMPLEMENTATION])


def test_transformers_falls_back_to_sdpa():
    """What decode_attention does not cover goes to SDPA: a prompt, dropout, a float mask."""
    from int8kern.hf.attention import decode_attention_applies
    q, k, v = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    assert decode_attention_applies(q, k, v, None)
    assert decode_attention_applies(q, k, v, torch.ones(1, 1, 1, 5, dtype=torch.bool))
    assert not decode_attention_applies(torch.randn(1, 4, 3, 8), k, v, None)
    assert not decode_attention_applies(q, k, v, None, dropout=0.1)
    assert not decode_attention_applies(q, k, v, torch.zeros(1, 1, 1, 5))
    assert not decode_attention_applies(q, k, v, torch.ones(1, 4, 1, 5, dtype=torch.bool))
    assert not decode_attention_applies(q, k, v, None, softcap=30.0)
    assert not decode_attention_applies(q.half(), k, v, None)


def test_needing_a_gradient_is_a_clear_error():
    """No backward: a call that would need one fails at once (not an output without grad_fn);
    under no_grad or inference_mode the same inputs run."""
    q, k, v = inputs(1, 4, 2, 40, 64, torch.float32)
    for which in range(3):
        args = [t.clone() for t in (q, k, v)]
        args[which].requires_grad_()
        with pytest.raises(RuntimeError, match=r"int8kern.decode_attention: has no backward \(inference only\), "
                                               r"but query, key or value requires grad"):
            ops.decode_attention(*args)
        with torch.no_grad():
            assert torch.equal(ops.decode_attention(*args), ops.decode_attention(q, k, v))
        with torch.inference_mode():
            assert torch.equal(ops.decode_attention(*args), ops.decode_attention(q, k, v))


def test_transformers_decode_step_with_grad_goes_to_sdpa(llama):
    """A decode step with grad mode on (the float parameters make the query require a gradient)
    is computed by SDPA, so gradients come out as SDPA's."""
    import int8kern.hf
    from int8kern.hf.attention import decode_attention_applies
    from transformers import DynamicCache

    q, k, v = torch.randn(1, 4, 1, 8, requires_grad=True), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    assert not decode_attention_applies(q, k, v, None)
    with torch.no_grad():
        assert decode_attention_applies(q, k, v, None)
    ids = torch.randint(0, LLAMA["vocab_size"], (1, 9), generator=torch.Generator().manual_seed(5))
    grads, logits = {}, {}
    for impl in ("sdpa", int8kern.hf.ATTN_IMPLEMENTATION):
        llama.set_attn_implementation(impl)
        llama.zero_grad()
        cache = DynamicCache(config=llama.config)
        with torch.no_grad():
            llama(ids[:, :-1], past_key_values=cache, use_cache=True)
        out = llama(ids[:, -1:], past_key_values=cache, use_cache=True).logits
        out.square().sum().backward()
        logits[impl] = out.detach()
        grads[impl] = llama.model.layers[0].self_attn.q_proj.weight.grad.clone()
    llama.set_attn_implementation("sdpa")
    llama.zero_grad()
    assert torch.equal(logits["sdpa"], logits[int8kern.hf.ATTN_IMPLEMENTATION])
    assert grads["sdpa"].abs().max() > 0
    assert torch.equal(grads["sdpa"], grads[int8kern.hf.ATTN_IMPLEMENTATION])
