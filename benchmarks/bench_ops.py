"""`make bench`: int8kern's ops against the plain PyTorch equivalents on every device found.

For each device: quantize_rowwise against the reference (plain PyTorch ops) and a copy of the
same bytes; int8_matmul against torch._int_mm and the float matmul; the LLM.int8() layer
(Int8LinearLt) against nn.Linear in float32/bfloat16 (CPU) or float16/bfloat16 (CUDA), and
bitsandbytes' Linear8bitLt when it is importable. Random inputs, 0.5% of activation columns
carrying outliers of magnitude 8-60 (LLM.int8()'s emergent features). On the CPU, also a real
model: SmolLM2-135M-Instruct's greedy decode and prefill, LLM.int8() through int8kern against
the same model in float32 and bfloat16 (skipped, with the reason, if its package is missing).
Prints a table and writes benchmarks/results/<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re

# No progress bars in the table (transformers' GGUF de-quantization one); tqdm reads this
# when it is imported.
os.environ.setdefault("TQDM_DISABLE", "1")

import torch
import torch.nn.functional as F

import int8kern
from int8kern import ops, reference

from timing import bench, environment, rotation

HERE = os.path.dirname(os.path.abspath(__file__))


def activations(M, K, dtype, device, seed, outlier_frac=0.005):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g)
    n_out = max(1, int(round(outlier_frac * K))) if outlier_frac > 0 else 0
    if n_out:
        cols = torch.randperm(K, generator=g)[:n_out]
        mag = torch.rand(M, n_out, generator=g) * 52 + 8
        sign = torch.randint(0, 2, (M, n_out), generator=g) * 2 - 1
        x[:, cols] = mag * sign
    return x.to(device=device, dtype=dtype)


def try_bitsandbytes():
    try:
        import bitsandbytes as bnb  # noqa: F401
        return bnb
    except Exception:
        return None


class Table:
    def __init__(self, device):
        self.device, self.rows = device, []

    def add(self, group, name, shape, seconds, anchors, extra=""):
        """anchors: {label: seconds}; ratio = anchor time / our time (> 1: we are faster)."""
        row = {"group": group, "op": name, "shape": shape, "ms": seconds * 1e3, "extra": extra,
               "vs": {k: v / seconds for k, v in anchors.items()}, "anchor_ms": {k: v * 1e3 for k, v in anchors.items()}}
        self.rows.append(row)
        ratios = "  ".join(f"{k} {v * 1e3:8.3f} ms ({v / seconds:5.2f}x)" for k, v in anchors.items())
        print(f"{group:<12} {name:<22} {shape:<18} {seconds * 1e3:9.3f} ms  {extra:<14} {ratios}", flush=True)


def bench_quantize(t: Table, device, shapes, dtype):
    for M, K in shapes:
        sets = rotation(lambda i: (activations(M, K, dtype, device, i),), M * K * dtype.itemsize, device)
        ours = bench(lambda x: ops.quantize_rowwise(x, 6.0), sets, device)
        plain = bench(lambda x: reference.quantize_rowwise(x, 6.0), sets, device, max_reps=20)
        copy = bench(lambda x: x.clone(), sets, device)
        moved = M * K * (dtype.itemsize + 1)  # read x, write q
        t.add("quantize", f"quantize_rowwise {str(dtype)[6:]}", f"{M}x{K}", ours,
              {"plain torch": plain, "copy": copy}, f"{moved / ours / 1e9:6.1f} GB/s")


def bench_matmul(t: Table, device, shapes, float_dtypes):
    for M, K, N in shapes:
        def make(i):
            g = torch.Generator().manual_seed(i)
            return (torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8).to(device),
                    torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8).to(device))
        sets = rotation(make, (M + N) * K, device)
        ours = bench(ops.int8_matmul, sets, device)
        anchors = {}
        try:
            anchors["torch._int_mm"] = bench(lambda a, b: torch._int_mm(a, b.t()), sets, device, min_reps=3, budget_s=2.0)
        except RuntimeError as e:
            print(f"  torch._int_mm unavailable for {M}x{K}x{N}: {str(e).splitlines()[0]}")
        for fd in float_dtypes:
            fsets = [(a.to(fd), b.to(fd)) for a, b in sets]
            anchors[f"mm {str(fd)[6:]}"] = bench(lambda a, b: torch.mm(a, b.t()), fsets, device, min_reps=3)
        tops = 2 * M * N * K / ours / 1e12
        t.add("int8_matmul", "int8_matmul", f"{M}x{K}x{N}", ours, anchors, f"{tops:7.3f} TOPS")
        if device == "cuda" and torch.cuda.get_device_capability() == (9, 0):
            # The sm_90a wgmma kernel, opt-in while unvalidated (INT8KERN_CUDA_GEMM is read on
            # every launch); same inputs, same anchors.
            prev = os.environ.get("INT8KERN_CUDA_GEMM")
            os.environ["INT8KERN_CUDA_GEMM"] = "wgmma"
            try:
                wg = bench(ops.int8_matmul, sets, device)
            finally:
                if prev is None:
                    del os.environ["INT8KERN_CUDA_GEMM"]
                else:
                    os.environ["INT8KERN_CUDA_GEMM"] = prev
            t.add("int8_matmul", "int8_matmul wgmma", f"{M}x{K}x{N}", wg, anchors,
                  f"{2 * M * N * K / wg / 1e12:7.3f} TOPS")


def layer_copies(make_layer, weight_bytes, device):
    """Copies of a layer whose weights together exceed twice the GPU's L2, so that a timed
    call never finds its weight in L2 from the previous one (one copy on the CPU)."""
    if device != "cuda":
        return [make_layer()]
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    return [make_layer() for _ in range(max(1, min(8, (2 * l2) // weight_bytes + 1)))]


def bench_linear(t: Table, device, K, N, Ms, x_dtype, float_dtypes, bnb, outlier_fracs=(0.005,),
                 ceilings=None):
    """Int8LinearLt (thresholds 6 and 0) against nn.Linear in float_dtypes and bitsandbytes'
    Linear8bitLt on the same inputs. Reports the weight bytes streamed per second (the floor
    at small M) and TOPS, against the measured ceilings when given."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(K, N).to(device)
    layers = {th: layer_copies(lambda: int8kern.Int8LinearLt.from_linear(lin, threshold=th).to(device), N * K, device)
              for th in (6.0, 0.0)}
    float_layers = {fd: layer_copies(lambda: torch.nn.Linear(K, N).to(device=device, dtype=fd), N * K * fd.itemsize, device)
                    for fd in float_dtypes}
    bnb_layers = {}
    if bnb is not None:
        state = {k: v.to(torch.float16) for k, v in lin.state_dict().items()}
        for th in (6.0, 0.0):
            try:
                def make_bnb():
                    layer = bnb.nn.Linear8bitLt(K, N, has_fp16_weights=False, threshold=th)
                    layer.load_state_dict(state)
                    return layer.to(device)
                bnb_layers[th] = layer_copies(make_bnb, N * K, device)
            except Exception as e:  # bitsandbytes without a backend for this device
                print(f"  bitsandbytes Linear8bitLt unavailable on {device}: {e}")
                break
    for frac in outlier_fracs:
        for M in Ms:
            xs = [activations(M, K, x_dtype, device, i, outlier_frac=frac) for i in range(8)]
            for th in (6.0, 0.0):
                def pairs(mods, dtype=x_dtype):
                    return [(m, xs[i % len(xs)].to(dtype)) for i, m in enumerate(mods)] if len(mods) > 1 else \
                        [(mods[0], x.to(dtype)) for x in xs]
                call = lambda m, x: m(x)  # noqa: E731
                with torch.no_grad():
                    ours = bench(call, pairs(layers[th]), device)
                    anchors = {f"Linear {str(fd)[6:]}": bench(call, pairs(float_layers[fd], fd), device, min_reps=3)
                               for fd in float_dtypes}
                    if th in bnb_layers:  # the same inputs, in the same dtype
                        anchors["bnb Linear8bitLt"] = bench(call, pairs(bnb_layers[th]), device, min_reps=3)
                gbs = N * K / ours / 1e9
                extra = f"{gbs:6.0f} GB/s w" if M <= 16 else f"{2 * M * N * K / ours / 1e12:6.1f} TOPS"
                if ceilings and M <= 16:
                    extra += f" ({100 * gbs / ceilings['copy_GBps']:.0f}% copy)"
                t.add("int8_linear", f"Int8LinearLt th={th:g} {str(x_dtype)[6:]}",
                      f"M={M} {K}x{N}" + ("" if frac else " no-outl"), ours, anchors, extra)


def bench_ceilings(t: Table, device):
    """What the machine can do, measured in this run: a large device-to-device copy (bytes
    read + written per second) and a large bf16 matmul."""
    x = torch.empty(1 << 29, dtype=torch.float16, device=device).normal_()  # 1 GiB
    copy = bench(lambda a: a.clone(), [(x,)], device)
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    mm = bench(torch.mm, [(a, a.T)], device)
    ceil = {"copy_GBps": 2 * x.numel() * 2 / copy / 1e9, "bf16_TFLOPS": 2 * 8192**3 / mm / 1e12}
    t.add("ceiling", "copy 1 GiB", "", copy, {}, f"{ceil['copy_GBps']:6.0f} GB/s")
    t.add("ceiling", "mm bf16", "8192^3", mm, {}, f"{ceil['bf16_TFLOPS']:6.0f} TFLOPS")
    del x, a
    return ceil


def bench_bnb_functional(t: Table, device, bnb, shapes):
    """bitsandbytes' own int8 pieces against ours, when importable on this device."""
    try:
        F_bnb = bnb.functional
        for M, K, N in shapes:
            x = activations(M, K, torch.float16, device, 0)
            ours = bench(lambda v: ops.quantize_rowwise(v, 6.0), [(x,)], device)
            theirs = bench(lambda v: F_bnb.int8_vectorwise_quant(v, threshold=6.0), [(x,)], device)
            t.add("bnb", "quantize_rowwise th=6", f"{M}x{K}", ours, {"bnb int8_vectorwise_quant": theirs})
            a = torch.randint(-127, 128, (M, K), dtype=torch.int8, device=device)
            b = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=device)
            ours = bench(ops.int8_matmul, [(a, b)], device)
            theirs = bench(F_bnb.int8_linear_matmul, [(a, b)], device)
            t.add("bnb", "int8_matmul", f"{M}x{K}x{N}", ours, {"bnb int8_linear_matmul": theirs})
    except Exception as e:
        print(f"  bitsandbytes functional API unavailable on {device}: {e}")


def plot_speedup(rows, name, env, path):
    """Int8LinearLt's speedup over the float layers (and bitsandbytes) by M, one panel per
    threshold; skipped without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("   (matplotlib not installed: no plot)")
        return
    lin = [r for r in rows if r["group"] == "int8_linear"]
    if not lin:
        return
    thresholds = sorted({r["op"].split()[1] for r in lin}, reverse=True)
    fig, axes = plt.subplots(1, len(thresholds), figsize=(6 * len(thresholds), 4.2), squeeze=False)
    for ax, th in zip(axes[0], thresholds):
        sel = [r for r in lin if r["op"].split()[1] == th]
        series = lambda r: " ".join(r["shape"].split()[1:])  # noqa: E731  "4096x4096[ no-outl]"
        for layer in sorted({series(r) for r in sel}):
            pts = sorted(((int(r["shape"].split()[0][2:]), r) for r in sel if series(r) == layer), key=lambda p: p[0])
            for anchor in pts[0][1]["vs"]:
                ax.plot([m for m, _ in pts], [r["vs"][anchor] for _, r in pts], marker="o",
                        label=f"{layer} vs {anchor}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("speedup of Int8LinearLt (x)")
        ax.set_title(f"{th.replace('th=', 'threshold ')}")
        ax.legend(fontsize=7)
    fig.suptitle(f"int8kern on {name} ({env['date']}, torch {env['torch']}, {env['commit']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"   written: {os.path.relpath(path)}")


def bench_model(t: Table, device, gen_tokens=32, prefill_tokens=512, threshold=6.0):
    """SmolLM2-135M-Instruct (int8kern.eval.models): per-token greedy decode time (median over
    gen_tokens steps with the KV cache) and prefill time of a prompt of prefill_tokens tokens
    of real text, int8kern LLM.int8() against the fp32 and bf16 models."""
    import statistics

    from int8kern.eval import models, run as ev
    try:
        bundle = models.load("smollm2", device)
    except Exception as e:  # the model package (requirements-eval.txt) is not installed
        print(f"  SmolLM2 skipped: {e}")
        return
    tok = bundle.tokenizer
    prompt = tok(ev.DEFAULT_PROMPT, return_tensors="pt").input_ids.to(device)
    text = tok(models.read_text(), return_tensors="pt").input_ids[:, :prefill_tokens].to(device)
    decode, prefill = {}, {}
    for method, label in (("llm_int8", "ours"), ("fp32", "SmolLM2 float32"), ("half", "SmolLM2 bfloat16")):
        model = ev.build(method, bundle.model, threshold, device)
        ev.greedy(model, prompt, 3, device)  # warm-up
        _, times = ev.greedy(model, prompt, gen_tokens, device)
        decode[label] = statistics.median(times)
        prefill[label] = ev.timed(lambda: model(text), device)
        del model
    ours_d, ours_p = decode.pop("ours"), prefill.pop("ours")
    t.add("model", f"SmolLM2 LLM.int8() th={threshold:g}", "decode 1 token", ours_d, decode,
          f"{1 / ours_d:6.1f} tok/s")
    t.add("model", f"SmolLM2 LLM.int8() th={threshold:g}", f"prefill {text.shape[1]} tok", ours_p, prefill,
          f"{text.shape[1] / ours_p:6.0f} tok/s")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--quick", action="store_true", help="fewer shapes")
    args = p.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    bnb = try_bitsandbytes()
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    for device in devices:
        env = environment(device)
        name = env.get("gpu") if device == "cuda" else f"cpu-{env['cpu']}"
        print(f"\n== int8kern benchmarks on {name}: " + ", ".join(f"{k} {v}" for k, v in env.items()))
        print(f"   bitsandbytes: {getattr(bnb, '__version__', 'not installed')}")
        t = Table(device)
        if device == "cpu":
            bench_quantize(t, device, [(512, 4096), (4096, 4096)], torch.float32)
            bench_quantize(t, device, [(4096, 4096)], torch.bfloat16)
            bench_matmul(t, device, [(1, 4096, 4096), (16, 4096, 4096)] + ([] if args.quick else [(512, 4096, 4096)]),
                         [torch.float32])
            bench_linear(t, device, 4096, 4096, [1, 16] + ([] if args.quick else [512]), torch.float32,
                         [torch.float32, torch.bfloat16], bnb)
            bench_model(t, device)
        else:  # the H100 suite of issue 3
            ceil = bench_ceilings(t, device)
            bench_quantize(t, device, [(8192, 8192), (2048, 4096)], torch.float16)
            bench_matmul(t, device, [(8192, 8192, 8192), (4096, 4096, 4096), (16, 4096, 4096), (2048, 4096, 11008)],
                         [torch.float16, torch.bfloat16])
            if bnb is not None:
                bench_bnb_functional(t, device, bnb, [(16, 4096, 4096), (4096, 4096, 4096)])
            layers = [(4096, 4096), (4096, 11008)] + ([] if args.quick else [(11008, 4096), (4096, 14336), (8192, 28672)])
            Ms = [1, 16, 2048] if args.quick else [1, 8, 16, 128, 2048, 8192]
            for K, N in layers:
                bench_linear(t, device, K, N, Ms, torch.float16, [torch.float16, torch.bfloat16], bnb,
                             outlier_fracs=(0.005, 0.0), ceilings=ceil)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
        plot_speedup(t.rows, name, env, os.path.join(HERE, "results", f"{slug}.png"))
        path = os.path.join(HERE, "results", f"{slug}.json")
        with open(path, "w") as f:
            json.dump({"environment": env, "bitsandbytes": getattr(bnb, "__version__", None), "rows": t.rows}, f, indent=1)
        print(f"   written: {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
