"""Whole-model speed (issue 11): a Llama-architecture model of TinyLlama-1.1B's shape, built on
the device from its config with random weights and planted outlier features, in float16,
LLM.int8() through int8kern (int8kern.quantize_model, threshold 6) and bitsandbytes 8-bit
(Linear8bitLt, threshold 6, when importable).

For each: greedy decode tokens/s at batch 1 through transformers' generate(), eagerly
(dynamic cache) and with CUDA graphs (static cache + torch.compile, backend --compile-backend);
the time of a --prefill-tokens prefill (one forward, eager); the weights' memory and the peak
GPU memory of the runs. Decode time per token: the median interval between tokens of one
generate() call, after its first --skip-tokens (compilation and graph capture happen there).

Planted outliers: LLM.int8()'s emergent features are a few hidden dimensions that are large in
every layer's input. Scaling --outlier-dims dimensions of every RMSNorm weight by
--outlier-scale makes those columns of the q/k/v and gate/up projections' inputs about that
large (|x| >= 6 on nearly every token), so the threshold-6 outlier path does real work; the
JSON reports how many outlier columns the first layer's input held.

Writes <out>/model-<device>.json (after each step). --dry-run: a tiny model of the same
architecture on whatever device exists (tests/test_bench_dry_run.py runs it on the CPU).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from torch import nn

import int8kern

from timing import environment

HERE = os.path.dirname(os.path.abspath(__file__))

# TinyLlama-1.1B (TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T config.json).
TINYLLAMA = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096,
                 rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
TINY = dict(TINYLLAMA, vocab_size=512, hidden_size=256, intermediate_size=704, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def build_model(shape: dict, device, dtype, outlier_dims: int, outlier_scale: float, seed=0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(**shape, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    dims = torch.randperm(shape["hidden_size"], generator=g)[:outlier_dims].to(device)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.endswith("layernorm"):  # input_layernorm, post_attention_layernorm
                mod.weight[dims] *= outlier_scale
    return model.eval()


def outlier_columns(model, ids, threshold):
    """Columns of the first layer's q_proj input with any |x| >= threshold, on these ids."""
    seen = {}
    layer = model.model.layers[0].self_attn.q_proj
    hook = layer.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    try:
        with torch.no_grad():
            model(ids, logits_to_keep=1)
    finally:
        hook.remove()
    x = seen["x"].reshape(-1, seen["x"].shape[-1])
    return int((x.abs() >= threshold).any(0).sum())


def to_bitsandbytes(model, bnb, threshold, device):
    """Every nn.Linear but lm_head -> bnb Linear8bitLt (int8 weights, LLM.int8() threshold);
    bitsandbytes quantizes when a layer moves from the CPU to the device."""
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.Linear) and child_name != "lm_head":
                new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                          has_fp16_weights=False, threshold=threshold)
                new.load_state_dict({k: v.to("cpu") for k, v in child.state_dict().items()})
                setattr(mod, child_name, new.to(device))
    return model


def model_bytes(model):
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


class TokenClock:
    """A generate() streamer that records when each new token reaches it."""

    def __init__(self, device):
        self.device, self.stamps, self.prompt_seen = device, [], False

    def put(self, value):
        if not self.prompt_seen:  # generate() hands the prompt over first
            self.prompt_seen = True
            return
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())

    def end(self):
        pass


def decode_speed(model, prompt, new_tokens, skip, device, graphs, backend):
    """Median time per decoded token of one greedy generate() call, and its first tokens."""
    from transformers import CompileConfig

    clock = TokenClock(device)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, streamer=clock)
    if graphs:
        # backend "cudagraphs": Dynamo + CUDA graphs, seconds to compile; "inductor": also
        # fuses kernels (mode reduce-overhead = CUDA graphs), a minute or more per model.
        cfg = CompileConfig(fullgraph=True, backend=backend, mode="reduce-overhead" if backend == "inductor" else None)
        cfg._compile_all_devices = True  # also on the CPU (the dry run); no graphs there
        kw.update(cache_implementation="static", compile_config=cfg)
    else:
        kw.update(disable_compile=True)
    counters = torch._dynamo.utils.counters
    counters.clear()
    with torch.no_grad():
        out = model.generate(prompt, **kw)
    steps = [b - a for a, b in zip(clock.stamps[skip:], clock.stamps[skip + 1:])]
    res = {"ms_per_token": statistics.median(steps) * 1e3, "tok_per_s": 1 / statistics.median(steps),
           "first_tokens": out[0, prompt.shape[1]:].tolist()[:8]}
    if graphs:  # what actually happened: graphs compiled, and CUDA graphs skipped (with why)
        res["dynamo_graphs"] = counters["stats"]["unique_graphs"]
        res["cudagraph_skips"] = counters["inductor"]["cudagraph_skips"]
        if res["dynamo_graphs"] == 0:
            raise RuntimeError("bench_model: generate() did not compile the decode step")
    return res


def prefill_seconds(model, ids, device, repeats=3):
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
    ts = []
    with torch.no_grad():
        for i in range(repeats + 1):  # the first is a warm-up
            sync()
            t0 = time.perf_counter()
            model(ids, logits_to_keep=1)
            sync()
            if i:
                ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dry-run", action="store_true",
                   help="a tiny model, few tokens; writes to a temporary directory unless --out is given")
    p.add_argument("--methods", default="int8kern,float16,bnb", help="comma-separated, in this order")
    p.add_argument("--threshold", type=float, default=6.0)
    p.add_argument("--decode-tokens", type=int, default=None, help="new tokens per generate() (default 64; dry 6)")
    p.add_argument("--skip-tokens", type=int, default=None,
                   help="first intervals left out of the median (default 8; dry 1)")
    p.add_argument("--prefill-tokens", type=int, default=None, help="default 2048; dry 64")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--outlier-dims", type=int, default=10, help="planted feature dimensions (default 10 of 2048)")
    p.add_argument("--outlier-scale", type=float, default=25.0)
    p.add_argument("--compile-backend", choices=["cudagraphs", "inductor", "eager"], default=None,
                   help="torch.compile backend of the CUDA-graph decode (default cudagraphs on CUDA; eager "
                        "elsewhere: no graphs, but the model must still compile with fullgraph=True)")
    p.add_argument("--no-graphs", action="store_true", help="eager decode only")
    p.add_argument("--budget-s", type=float, default=180.0,
                   help="wall-time budget: steps not started by then are skipped and listed in the JSON")
    p.add_argument("--out", help="output directory (default benchmarks/results)")
    args = p.parse_args(argv)

    dry = args.dry_run
    shape = TINY if dry else TINYLLAMA
    decode_tokens = args.decode_tokens or (6 if dry else 64)
    skip = args.skip_tokens if args.skip_tokens is not None else (1 if dry else 8)
    prefill_tokens = args.prefill_tokens or (64 if dry else 2048)
    device = args.device
    backend = args.compile_backend or ("cudagraphs" if device == "cuda" else "eager")
    dtype = torch.float16
    out_dir = args.out or (tempfile.mkdtemp(prefix="int8kern-bench-dry-") if dry else os.path.join(HERE, "results"))
    os.makedirs(out_dir, exist_ok=True)
    env = environment(device)
    name = env.get("gpu") if device == "cuda" else f"cpu-{env['cpu']}"
    path = os.path.join(out_dir, "model-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") + ".json")
    try:
        import bitsandbytes as bnb
    except Exception:
        bnb = None
    start = time.perf_counter()
    elapsed = lambda: time.perf_counter() - start  # noqa: E731
    result = {"environment": env, "dry_run": dry, "config": shape, "dtype": "float16", "threshold": args.threshold,
              "outlier_dims": args.outlier_dims, "outlier_scale": args.outlier_scale,
              "decode": f"batch 1, prompt {args.prompt_tokens} tokens, {decode_tokens} new, median interval after "
                        f"the first {skip}", "prefill_tokens": prefill_tokens,
              "compile_backend": backend, "bitsandbytes": getattr(bnb, "__version__", None),
              "budget_s": args.budget_s, "methods": {}, "skipped": []}

    def write():
        result["elapsed_s"] = elapsed()
        with open(path, "w") as f:
            json.dump(result, f, indent=1)

    def due(what):
        if elapsed() > args.budget_s:
            result["skipped"].append(f"{what}: time budget of {args.budget_s:g} s spent")
            print(f"  skipped {what}: time budget spent", flush=True)
            return False
        return True

    print(f"== int8kern whole-model benchmark on {name}{' (dry run)' if dry else ''}: "
          + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    print(f"   Llama {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, float16, random weights, "
          f"{args.outlier_dims} planted outlier dims x{args.outlier_scale:g}; bitsandbytes "
          f"{getattr(bnb, '__version__', 'not installed')}", flush=True)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, shape["vocab_size"], (1, args.prompt_tokens), generator=g).to(device)
    long_ids = torch.randint(0, shape["vocab_size"], (1, prefill_tokens), generator=g).to(device)

    for method in args.methods.split(","):
        if method == "bnb" and bnb is None:
            result["skipped"].append("bnb: bitsandbytes not importable")
            print("  skipped bnb: bitsandbytes not importable", flush=True)
            continue
        if not due(f"{method}"):
            continue
        print(f"-- {method} (at {elapsed():.0f} s)", flush=True)
        row = result["methods"].setdefault(method, {})
        try:
            model = build_model(shape, device, dtype, args.outlier_dims, args.outlier_scale)
            if method == "int8kern":
                row["outlier_cols_layer0"] = outlier_columns(model, long_ids, args.threshold)
                int8kern.quantize_model(model, threshold=args.threshold)
            elif method == "bnb":
                to_bitsandbytes(model, bnb, args.threshold, device)
            elif method != "float16":
                raise ValueError(f"bench_model: --methods takes int8kern, float16, bnb; got {method!r}")
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            row["weights_GiB"] = model_bytes(model) / 2**30
            row["prefill_s"] = prefill_seconds(model, long_ids, device)
            row["prefill_tok_per_s"] = prefill_tokens / row["prefill_s"]
            print(f"   prefill {prefill_tokens} tokens: {row['prefill_s'] * 1e3:.1f} ms "
                  f"({row['prefill_tok_per_s']:.0f} tok/s)", flush=True)
            write()
            for graphs in ([False] if args.no_graphs else [False, True]):
                key = "decode_graphs" if graphs else "decode_eager"
                if not due(f"{method} {key}"):
                    continue
                try:
                    row[key] = decode_speed(model, prompt, decode_tokens, skip, device, graphs, backend)
                    how = f"static cache + torch.compile({backend})" if graphs else "eager, dynamic cache"
                    print(f"   decode, {how}: {row[key]['ms_per_token']:.2f} ms/token ({row[key]['tok_per_s']:.1f} "
                          f"tok/s)" + (f", CUDA graph skips: {row[key]['cudagraph_skips']}" if graphs and device == "cuda" else ""), flush=True)
                except Exception as e:  # e.g. a layer that does not compile with fullgraph=True
                    row[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                    print(f"   decode {key} failed: {row[key]['error']}", flush=True)
                torch._dynamo.reset()
                write()
            if device == "cuda":
                row["peak_GiB"] = torch.cuda.max_memory_allocated() / 2**30
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"
            print(f"   {method} failed: {row['error']}", flush=True)
        finally:
            model = None
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        write()

    ours, fp16 = result["methods"].get("int8kern", {}), result["methods"].get("float16", {})
    for key in ("decode_eager", "decode_graphs"):
        if "tok_per_s" in ours.get(key, {}) and "tok_per_s" in fp16.get(key, {}):
            r = ours[key]["tok_per_s"] / fp16[key]["tok_per_s"]
            result[f"int8kern_vs_float16_{key}"] = r
            print(f"   int8kern / float16 tokens/s, {key}: {r:.2f}x")
    if "prefill_s" in ours and "prefill_s" in fp16:
        result["int8kern_vs_float16_prefill"] = fp16["prefill_s"] / ours["prefill_s"]
        print(f"   int8kern / float16 prefill speed: {result['int8kern_vs_float16_prefill']:.2f}x")
    write()
    print(f"   written: {os.path.relpath(path)} ({elapsed():.0f} s)")


if __name__ == "__main__":
    main()
