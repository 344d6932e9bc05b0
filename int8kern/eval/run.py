"""Model-level evaluation: quality, memory and speed of LLM.int8() against float and the
naive per-tensor quantizers, on real pretrained models.

    python -m int8kern.eval --model smollm2            # perplexity (causal LM)
    python -m int8kern.eval --model minilm             # embedding cosine to fp32 (encoder)
    python -m int8kern.eval --model gpt2 --methods fp32,llm_int8   # memory/speed only

Writes a table to the terminal, <out>/<model>.json, <out>/<model>.md and PNG plots.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

from . import models, naive
from . import report as evalreport  # `report` is the name of the result dict below

# "half" is bf16 on the CPU (fp16 matmuls are not a CPU fast path) and fp16 on CUDA.
ALL_METHODS = ("fp32", "half", "absmax", "zeropoint", "vectorwise", "llm_int8", "llm_int8_sim")
ALIASES = {"bf16": "half", "fp16": "half", "sim": "llm_int8_sim", "vector-wise": "vectorwise"}
DEFAULT_OUT = Path("benchmarks/results/eval")
DEFAULT_PROMPT = "The capital of France is"


def _int8kern():
    try:
        import int8kern
        return int8kern
    except ImportError as e:  # the compiled extension is missing: say how to build it
        raise RuntimeError(f"int8kern is not importable ({e}); build it with "
                           "`pip install -e .`") from e


def method_label(method: str, device: str) -> str:
    if method == "half":
        return "fp16" if str(device).startswith("cuda") else "bf16"
    return method


def build(method: str, base: torch.nn.Module, threshold: float, device: str) -> torch.nn.Module:
    """A model for `method`, made from a copy of the fp32 base (never mutated)."""
    if method == "fp32":
        return base
    m = copy.deepcopy(base)
    cuda = str(device).startswith("cuda")
    if method == "half":
        return m.to(torch.float16 if cuda else torch.bfloat16)
    if method in ("absmax", "zeropoint"):
        return naive.quantize_model_naive(m, method)
    if cuda:  # LLM.int8() is a 16-bit-activation method on GPUs, as in bitsandbytes
        m = m.half()
    if method == "llm_int8_sim":
        return naive.simulate_llm_int8(m, threshold)
    return _int8kern().quantize_model(m, threshold=0.0 if method == "vectorwise" else threshold,
                                      progress=False)


# ----------------------------------------------------------------------------- outliers

class OutlierCounter:
    """Mean outlier columns per layer call, via forward pre-hooks. For Int8LinearLt the
    hook calls int8kern.ops.quantize_rowwise on the layer's input (the kernels' own count);
    SimLLMInt8Linear counts in its forward. Detached before anything is timed."""

    def __init__(self, model: torch.nn.Module):
        self.calls, self.cols, self.handles = {}, {}, []
        self.sim = {n: m for n, m in model.named_modules() if isinstance(m, naive.SimLLMInt8Linear)}
        for n, m in self.sim.items():
            m.calls, m.outlier_cols_total = 0, 0
        kern = [(n, m) for n, m in model.named_modules() if type(m).__name__ == "Int8LinearLt"]
        if kern:
            ops = _int8kern().ops
            for n, m in kern:
                def hook(mod, args, n=n, ops=ops):
                    x = args[0].reshape(-1, args[0].shape[-1])
                    _, _, cols = ops.quantize_rowwise(x, float(mod.threshold))
                    self.calls[n] = self.calls.get(n, 0) + 1
                    self.cols[n] = self.cols.get(n, 0) + int(cols.numel())
                self.handles.append(m.register_forward_pre_hook(hook))

    def detach(self) -> dict:
        for h in self.handles:
            h.remove()
        for n, m in self.sim.items():
            self.calls[n], self.cols[n] = m.calls, m.outlier_cols_total
        return {n: self.cols[n] / self.calls[n] for n in self.calls if self.calls[n]}


# ----------------------------------------------------------------------------- speed

def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def greedy(model, ids: torch.Tensor, n_new: int, device) -> tuple[torch.Tensor, list[float]]:
    """Greedy decoding with the KV cache; returns the new tokens and the seconds of each
    decode step after the first (the prompt's prefill is not a per-token cost)."""
    out = model(ids, use_cache=True)
    # transformers >= 5 names the KV cache `cache`; older versions `past_key_values`.
    key = "cache" if "cache" in out else "past_key_values"
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    toks, times = [nxt], []
    for _ in range(n_new - 1):
        _sync(device)
        t0 = time.perf_counter()
        out = model(nxt, use_cache=True, **{key: out[key]})
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        times.append(time.perf_counter() - t0)
        toks.append(nxt)
    return torch.cat(toks, dim=1), times


@torch.no_grad()
def timed(fn, device, repeats=3) -> float:
    fn()  # warm-up: first-call allocations, oneDNN/cuBLAS heuristics, packing
    ts = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def dithered_perplexity(model, ids, window, stride, runs: int, progress=None) -> list[float]:
    """Perplexity, plain, then again under `runs` different one-ulp perturbations of the
    input embeddings. LLM.int8() (any rounding to int8, bf16 too) is discontinuous: a
    last-bit change flips a few roundings, whose errors flip more in the next layers; on
    SmolLM2 two such runs differ by 0.6% of the hidden state after three layers and by 5%,
    the size of the quantization error itself, at layer 15: independent draws of the
    rounding noise. fp32 perplexity does not move under this dither; SmolLM2's int8
    perplexity moves by 1 to 1.6% (sd) on 512 tokens. Two implementations that differ in the
    last bit (summation order) are two such draws: compare them by means over draws."""
    vals = [models.perplexity(model, ids, window, stride, progress)]
    emb = model.get_input_embeddings()
    for seed in range(runs):
        g = torch.Generator(device="cpu").manual_seed(seed)

        def dither(mod, args, out, g=g):
            noise = torch.randn(out.shape, generator=g).to(out.device)
            return (out.float() * (1 + torch.finfo(out.dtype).eps * noise)).to(out.dtype)

        h = emb.register_forward_hook(dither)
        try:
            vals.append(models.perplexity(model, ids, window, stride, progress))
        finally:
            h.remove()
    return vals


@torch.no_grad()
def kernel_vs_sim_layers(base, threshold: float, run, device) -> dict:
    """The kernels' own error, free of the chaos above: the simulation runs the model, and
    at every layer int8kern's Int8LinearLt gets the very same input. Returns the largest
    per-row relative difference of the outputs and the layers where the outlier columns
    differ (kernel quantize_rowwise against the simulation's rule)."""
    sim = build("llm_int8_sim", base, threshold, device)
    kern = build("llm_int8", base, threshold, device)
    ops, worst, mismatched = _int8kern().ops, 0.0, []

    def hook(mod, args, out, name):
        nonlocal worst
        x = args[0]
        yk = kern.get_submodule(name)(x).reshape(-1, out.shape[-1]).float()
        ys = out.reshape(-1, out.shape[-1]).float()
        rel = (yk - ys).norm(dim=1) / ys.norm(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
        worst = max(worst, float(rel.max()))
        x2 = x.reshape(-1, x.shape[-1])
        cols = ops.quantize_rowwise(x2, threshold)[2] if threshold > 0 else None
        if cols is not None and not torch.equal(
                cols.cpu(), (x2.float().abs() >= threshold).any(0).nonzero().flatten().cpu()):
            mismatched.append(name)

    handles = [m.register_forward_hook(lambda m, a, o, n=n: hook(m, a, o, n))
               for n, m in sim.named_modules() if isinstance(m, naive.SimLLMInt8Linear)]
    run(sim)
    for h in handles:
        h.remove()
    return {"layers": len(handles), "max_row_rel_diff": worst, "outlier_col_mismatches": mismatched}


def evaluate(bundle: models.Bundle, methods=ALL_METHODS, text: str | None = None,
             threshold: float = 6.0, max_tokens: int = 4096, window: int = 1024,
             stride: int | None = None, gen_tokens: int = 16, prompt: str = DEFAULT_PROMPT,
             device: str = "cpu", prefill_tokens: int = 256, progress: bool = True,
             text_name: str | None = None, speed: bool = True, dither: int = 0) -> dict:
    """Runs every method on `bundle` and returns the report (a JSON-able dict)."""
    from tqdm.auto import tqdm

    methods = [ALIASES.get(m, m) for m in methods]
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {ALL_METHODS} or {tuple(ALIASES)}")
    if text is None:
        text, text_name = models.read_text(), str(models.default_text_path())
    base, tok, causal = bundle.model, bundle.tokenizer, bundle.kind == "causal"
    window = min(window, bundle.context)
    report = {"model": bundle.name, "kind": bundle.kind, "threshold": threshold,
              "text": text_name or "given text", "device": str(device),
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": evalreport.machine_info(), "commit": evalreport.git_commit(),
              "methods": {}}

    if causal and tok is not None:
        ids = tok(text, return_tensors="pt").input_ids[:, :max_tokens]
        prompt_ids = tok(prompt, return_tensors="pt").input_ids
    elif causal:  # random-weight GPT-2 has no tokenizer: random ids, for speed only
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, base.config.vocab_size, (1, min(max_tokens, 1024)), generator=gen)
        prompt_ids = ids[:, :8]
        report["text"] = "random token ids"
    if causal:
        units = models.n_windows(ids.shape[1], window, stride) if bundle.meaningful_quality else 0
        report.update(tokens=int(ids.shape[1]), window=window, stride=stride or window,
                      dither_runs=dither)
        first = ids[:, :window].to(device)
        run_once = lambda m: m(first)  # noqa: E731
    else:
        sentences, budget = [], max_tokens
        for s in models.split_sentences(text):
            n = len(tok(s, truncation=True, max_length=bundle.context).input_ids)
            if n > budget:
                break
            sentences.append(s)
            budget -= n
        units = -(-len(sentences) // 32)
        report.update(tokens=max_tokens - budget, sentences=len(sentences))
        ref_emb = models.sentence_embeddings(base, tok, sentences)  # what every method matches
        enc = tok(sentences[:32], padding=True, truncation=True, return_tensors="pt").to(device)
        run_once = lambda m: m(**enc)  # noqa: E731

    if "llm_int8" in methods and "llm_int8_sim" in methods:
        report["kernel_vs_sim_layers"] = kernel_vs_sim_layers(base, threshold, run_once, device)
    runs = {m: 1 + (dither if m != "fp32" else 0) for m in methods}  # fp32 is continuous
    bar = tqdm(total=units * sum(runs.values()), disable=not progress, unit="window", leave=False)
    fp32_bytes = models.footprint(base)["bytes"]
    for method in methods:
        label = method_label(method, device)
        bar.set_description(label)
        model = build(method, base, threshold, device)
        r = {"label": label, **models.footprint(model)}
        r["compression"] = fp32_bytes / r["bytes"]
        counter = OutlierCounter(model)
        if causal and bundle.meaningful_quality:
            vals = dithered_perplexity(model, ids, window, stride, runs[method] - 1, bar)
            r["perplexity"] = statistics.mean(vals)
            if len(vals) > 1:
                r["perplexity_sd"], r["perplexity_runs"] = statistics.stdev(vals), vals
        elif not causal:
            emb = models.sentence_embeddings(model, tok, sentences, progress=bar)
            cos = (emb * ref_emb).sum(-1)  # both L2-normalized
            r["cosine_mean"], r["cosine_min"] = float(cos.mean()), float(cos.min())
        per_layer = counter.detach()
        if per_layer:
            r["outlier_cols_per_call"] = statistics.mean(per_layer.values())
            r["outlier_cols_per_layer"] = per_layer

        if causal:  # greedy sample; speed: decode latency per token, prefill throughput
            if speed:
                greedy(model, prompt_ids.to(device), 3, device)  # warm-up
            new, times = greedy(model, prompt_ids.to(device), gen_tokens, device)
            if tok is not None:
                r["sample"] = prompt + tok.decode(new[0], skip_special_tokens=True)
            if speed:
                r["load_avg_1min"] = evalreport.machine_info()["load_avg_1min"]
                r["ms_per_token"] = 1e3 * statistics.median(times)
                pre = ids[:, :prefill_tokens].to(device)
                r["prefill_tokens_per_s"] = pre.shape[1] / timed(lambda: model(pre), device)
        elif speed:
            r["load_avg_1min"] = evalreport.machine_info()["load_avg_1min"]
            r["ms_per_sentence"] = 1e3 * timed(lambda: run_once(model), device) / enc["input_ids"].shape[0]
        report["methods"][label] = r
        del model
    bar.close()
    _relative(report)
    return report


def _relative(report: dict) -> None:
    ref = report["methods"].get("fp32", {})
    for r in report["methods"].values():
        if "perplexity" in r and "perplexity" in ref:
            r["ppl_vs_fp32"] = r["perplexity"] / ref["perplexity"] - 1
        if "ms_per_token" in r and "ms_per_token" in ref:
            r["speedup_vs_fp32"] = ref["ms_per_token"] / r["ms_per_token"]
    sim, kern = report["methods"].get("llm_int8_sim"), report["methods"].get("llm_int8")
    if sim and kern and "perplexity" in sim:  # mean over dithered runs when --dither > 0
        report["kernel_vs_sim"] = kern["perplexity"] / sim["perplexity"] - 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m int8kern.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=models.MODELS, default="smollm2")
    p.add_argument("--methods", default=",".join(ALL_METHODS),
                   help="comma-separated subset of %(default)s (aliases: bf16, fp16, sim)")
    p.add_argument("--threshold", type=float, default=6.0, help="LLM.int8() outlier threshold")
    p.add_argument("--text", default=None, help=f"text file (default {models.default_text_path()})")
    p.add_argument("--max-tokens", type=int, default=4096, help="tokens of the text evaluated")
    p.add_argument("--window", type=int, default=1024, help="perplexity window (causal LMs)")
    p.add_argument("--stride", type=int, default=None, help="window stride (default: window)")
    p.add_argument("--gen-tokens", type=int, default=None,
                   help="greedy tokens timed and shown (default 16; 64 with --compare-bnb)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default %(default)s)")
    p.add_argument("--dither", type=int, default=0, metavar="N",
                   help="also run perplexity under N one-ulp input perturbations and report "
                   "the mean (int8 perplexity is a noisy statistic: see dithered_perplexity)")
    p.add_argument("--no-speed", action="store_true", help="skip the latency measurements")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--compare-bnb", action="store_true",
                   help="instead of the methods above: fp32, bf16, int8kern (Int8KernConfig) and "
                   "bitsandbytes 8-bit and 4-bit NF4, each loaded by from_pretrained(quantization_config=...) "
                   "in its own process: footprint, peak memory while loading, perplexity, generate() time "
                   "(smollm2 only; writes <out>/smollm2_hf.json and .md; see int8kern.eval.hf_compare)")
    a = p.parse_args(argv)
    if a.compare_bnb:
        return _compare_bnb(a)
    a.gen_tokens = 16 if a.gen_tokens is None else a.gen_tokens
    try:
        bundle = models.load(a.model, a.device)
    except models.ModelPackageMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text_path = Path(a.text) if a.text else models.default_text_path()
    report = evaluate(bundle, a.methods.split(","), models.read_text(text_path), a.threshold,
                      a.max_tokens, a.window, a.stride, a.gen_tokens, a.prompt, a.device,
                      progress=not a.no_progress, text_name=str(text_path), speed=not a.no_speed,
                      dither=a.dither)
    print(evalreport.describe(report) + "\n\n" + evalreport.format_table(report))
    for r in report["methods"].values():
        if "sample" in r:
            print(f"{r['label']:>13}: {r['sample']!r}")
    check = evalreport.kernel_vs_sim_line(report)
    if check:
        print(check)
    for path in evalreport.write_report(report, a.out, bundle.model):
        print("wrote", path)
    return 0


def _compare_bnb(a) -> int:
    from . import hf_compare

    if a.model != "smollm2":
        print(f"error: --compare-bnb loads SmolLM2 from its safetensors checkpoint; got --model {a.model}",
              file=sys.stderr)
        return 2
    try:
        report = hf_compare.compare(a.text, a.max_tokens, a.window, 64 if a.gen_tokens is None else a.gen_tokens,
                                    a.threshold, a.prompt, progress=not a.no_progress)
    except models.ModelPackageMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(hf_compare.describe(report) + "\n\n" + hf_compare.format_table(report))
    for name, r in report["methods"].items():
        if "sample" in r:
            print(f"{name:>9}: {r['sample']!r}")
    for path in hf_compare.write(report, a.out):
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
