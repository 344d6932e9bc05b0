"""Int8LinearLt and quantize_model on real transformers architectures."""
import io

import pytest
import torch
from torch import nn

import int8kern
from int8kern import Int8LinearLt, quantize_model

from conftest import randn


def _linear(in_f, out_f, device, dtype=torch.float32, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f, bias=bias).to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_from_linear_matches_linear(device, dtype, threshold):
    lin = _linear(300, 129, device, dtype)
    layer = Int8LinearLt.from_linear(lin, threshold=threshold)
    x = randn((2, 9, 300), dtype, device, seed=1)
    x[..., 17] = 12.0  # one emergent outlier feature
    y, y_lin = layer(x), lin(x)
    assert y.dtype == dtype and y.shape == (2, 9, 129)
    rel = ((y.float() - y_lin.float()).norm() / y_lin.float().norm()).item()
    assert rel < (0.02 if threshold > 0 else 0.05)
    torch.testing.assert_close(y, int8kern.reference.int8_linear(x, layer.weight, layer.weight_absmax, layer.bias, threshold),
                               rtol=0.02, atol=0.02)


def test_module_state_and_repr(device):
    layer = Int8LinearLt(64, 32, bias=True, threshold=5.0, device=device)
    sd = layer.state_dict()
    assert set(sd) == {"weight", "weight_absmax", "bias"}
    assert sd["weight"].dtype == torch.int8 and sd["weight"].shape == (32, 64)
    assert sd["weight_absmax"].dtype == torch.float32 and sd["weight_absmax"].shape == (32,)
    assert "in_features=64, out_features=32, bias=True, threshold=5.0" in repr(layer)
    assert not layer.weight.requires_grad
    assert Int8LinearLt(8, 4, bias=False).bias is None


def test_state_dict_round_trip_bit_exact_and_size(device):
    lin = _linear(1024, 512, device, torch.float16)
    layer = Int8LinearLt.from_linear(lin)
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    fresh = Int8LinearLt(1024, 512, device=device, dtype=torch.float16)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    x = randn((5, 1024), torch.float16, device, seed=2, scale=3)
    assert torch.equal(fresh(x), layer(x))
    fp16 = io.BytesIO()
    torch.save(lin.state_dict(), fp16)
    ratio = len(buf.getvalue()) / len(fp16.getvalue())
    assert ratio <= 0.55, ratio


def test_half_keeps_int8_weight_and_float32_scales(device):
    layer = Int8LinearLt.from_linear(_linear(64, 16, device))
    absmax = layer.weight_absmax.clone()
    layer.half()
    assert layer.weight.dtype == torch.int8 and layer.bias.dtype == torch.float16
    assert layer.weight_absmax.dtype == torch.float32 and torch.equal(layer.weight_absmax, absmax)
    layer.to(torch.bfloat16)
    assert torch.equal(layer.weight_absmax, absmax)


def test_load_float_linear_state_dict_quantizes(device):
    lin = _linear(96, 40, device)
    layer = Int8LinearLt(96, 40, device=device)
    layer.load_state_dict(lin.state_dict())
    ref = Int8LinearLt.from_linear(lin)
    assert torch.equal(layer.weight, ref.weight) and torch.equal(layer.weight_absmax, ref.weight_absmax)


def test_load_wrong_shape_names_the_key():
    layer = Int8LinearLt(16, 8)
    sd = layer.state_dict()
    sd["weight_absmax"] = torch.ones(9)
    with pytest.raises(RuntimeError, match="weight_absmax"):
        layer.load_state_dict(sd)
    sd = layer.state_dict()
    sd["weight"] = torch.ones(8, 16, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="'weight' must be torch.int8"):
        layer.load_state_dict(sd)


def _gpt2(device):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_embd=128, n_layer=2, n_head=4, vocab_size=500, n_positions=64)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).to(device).eval()


def _llama(device):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=500,
                                   tie_word_embeddings=False)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).to(device).eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_quantize_model_replaces_layers(device, arch):
    from transformers.pytorch_utils import Conv1D

    model = _gpt2(device) if arch == "gpt2" else _llama(device)
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(3)).to(device)
    with torch.no_grad():
        ref_logits = model(ids).logits
    targets = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D)) and "lm_head" not in n]
    assert targets
    assert quantize_model(model) is model
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], Int8LinearLt) for n in targets)
    assert isinstance(modules["lm_head"], nn.Linear) and not isinstance(modules["lm_head"], Int8LinearLt)
    assert not any(isinstance(m, Conv1D) for m in model.modules())
    with torch.no_grad():
        logits = model(ids).logits
    rel = ((logits - ref_logits).norm() / ref_logits.norm()).item()
    assert rel < 0.03, rel
    # greedy predictions mostly agree with the float model
    assert (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean() > 0.9


def test_quantize_model_skip_modules(device):
    model = _llama(device)
    quantize_model(model, skip_modules=("lm_head", "mlp"))
    names = {n for n, m in model.named_modules() if isinstance(m, Int8LinearLt)}
    assert names and not any(".mlp." in f"{n}." for n in names)


def test_quantize_model_gpt2_conv1d_orientation(device):
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(4)
    conv = Conv1D(48, 80).to(device)  # nf=48 outputs, nx=80 inputs, weight [80, 48]
    holder = nn.Sequential(conv)
    quantize_model(holder)
    x = randn((3, 80), torch.float32, device, seed=5)
    assert holder[0].weight.shape == (48, 80)
    torch.testing.assert_close(holder[0](x), conv(x), rtol=0.05, atol=0.02)


def test_compile_fullgraph_cpu():
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32))
    quantize_model(model)
    x = randn((5, 64), torch.float32, "cpu", seed=6, scale=3)
    x[:, 3] = 9.0
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    torch.testing.assert_close(compiled(x), eager)


def _tied_llama(device):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=500,
                                   tie_word_embeddings=True, max_position_embeddings=128)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).to(device).eval()


def test_quantize_model_tied_lm_head(device):
    """SmolLM2's layout: the lm_head shares the embedding's weight. Left in float by default;
    quantize_tied=True gives it an int8 copy and leaves the embedding's float weight alone."""
    model = _tied_llama(device)
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(3)).to(device)
    with torch.no_grad():
        ref_logits = model(ids).logits
    emb = model.get_input_embeddings().weight
    assert model.lm_head.weight is emb
    quantize_model(model, skip_modules=())
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.weight is emb
    quantize_model(model, skip_modules=(), quantize_tied=True)
    assert isinstance(model.lm_head, Int8LinearLt) and model.get_input_embeddings().weight is emb
    assert emb.dtype == torch.float32
    with torch.no_grad():
        logits = model(ids).logits
    rel = ((logits - ref_logits).norm() / ref_logits.norm()).item()
    assert rel < 0.03, rel
    assert (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean() > 0.9


def test_generate_static_cache_compiled_fullgraph_cpu():
    """transformers' compiled decoding (static KV cache, the decode step under torch.compile with
    fullgraph=True, as benchmarks/bench_generate.py runs it) traces an int8kern model without a
    graph break, through AOTAutograd (the ops' fakes), and decodes the tokens eager decoding
    does (the same kernels)."""
    transformers = pytest.importorskip("transformers")
    model = quantize_model(_tied_llama("cpu"), skip_modules=(), quantize_tied=True)
    ids = torch.randint(0, 500, (1, 12), generator=torch.Generator().manual_seed(3))
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(ids))
    cfg = transformers.CompileConfig(fullgraph=True, backend="aot_eager", mode=None)
    cfg._compile_all_devices = True  # transformers compiles on CUDA only unless told
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    with torch.no_grad():
        eager = model.generate(ids, disable_compile=True, **kw)
        compiled = model.generate(ids, cache_implementation="static", compile_config=cfg, **kw)
    assert counters["stats"]["unique_graphs"] >= 1  # the decode step was compiled
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert compiled.tolist() == eager.tolist()
