"""The seeds' comparison, through Hugging Face loading: each method is loaded with
`AutoModelForCausalLM.from_pretrained(dir, quantization_config=...)` from the same float32
safetensors checkpoint (SmolLM2-135M-Instruct, cached from its package), and measured on the
same text in the same run:

    python -m int8kern.eval --model smollm2 --compare-bnb

    fp32       dtype=float32, no quantization
    bf16       dtype=bfloat16
    int8kern   Int8KernConfig(threshold=6.0)                                   (LLM.int8())
    bnb_int8   BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)   (LLM.int8())
    bnb_nf4    BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")

The quantized rows keep their float parts (embeddings, norms, lm_head) in float32, like fp32,
so the columns differ by the linear layers only; bitsandbytes' 4-bit compute dtype is float32.

Columns: `get_memory_footprint()`; the peak memory while `from_pretrained` runs, above the
baseline after imports: each method is loaded in a fresh subprocess (so no other method's
memory, nor pytest's, counts) while a thread samples /proc/self/status every millisecond: the
peak anonymous memory (what the load allocates) and the peak RSS (which also counts the
checkpoint's memory-mapped file pages, reclaimable page cache); perplexity on the text; and
the wall time of `generate()` for a fixed number of new tokens (greedy, min_new_tokens ==
max_new_tokens so an end-of-text token cannot cut it short; median of 3 runs after a 2-token
warm-up); and the RSS above the baseline after all that (an fp32 checkpoint loads as views of
the memory-mapped file, so its weights become resident only as the forward reads them).

A bitsandbytes row that cannot run here (bitsandbytes missing, or its backend refusing on
this device) is kept, with the reason, instead of numbers.
"""
from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

from . import models
from . import report as evalreport

METHODS = ("fp32", "bf16", "int8kern", "bnb_int8", "bnb_nf4")
BNB = ("bnb_int8", "bnb_nf4")
FILE_STEM = "smollm2_hf"

# Runs in the subprocess: `python -c WORKER '<json args>'`; prints one JSON line.
WORKER = r"""
import json, sys, threading, time
args = json.loads(sys.argv[1])
method = args["method"]
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from int8kern.eval import models

if method in ("bnb_int8", "bnb_nf4"):
    import importlib.util
    if importlib.util.find_spec("bitsandbytes") is None:
        print(json.dumps({"skipped": "bitsandbytes is not installed (pip install bitsandbytes==0.50.2)"}))
        sys.exit(0)
    from transformers import BitsAndBytesConfig
    qc = (BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=args["threshold"]) if method == "bnb_int8"
          else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32))
    import bitsandbytes  # imported before the baseline, like transformers and int8kern
elif method == "int8kern":
    import int8kern.hf
    qc = int8kern.hf.Int8KernConfig(threshold=args["threshold"])
else:
    qc = None
dtype = torch.bfloat16 if method == "bf16" else torch.float32

tok = AutoTokenizer.from_pretrained(args["dir"])
ids = tok(models.read_text(args["text"]), return_tensors="pt").input_ids[:, :args["max_tokens"]]
prompt = tok(args["prompt"], return_tensors="pt")

def status(field):  # bytes
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

peak, done = {"VmRSS": 0, "RssAnon": 0}, False
def sample():
    while not done:
        for k in peak:
            peak[k] = max(peak[k], status(k))
        time.sleep(0.001)

base = {k: status(k) for k in peak}
sampler = threading.Thread(target=sample)
sampler.start()
t0 = time.perf_counter()
try:
    model = AutoModelForCausalLM.from_pretrained(args["dir"], dtype=dtype, quantization_config=qc, device_map="cpu")
except Exception as e:  # bitsandbytes' backend may refuse on this device: the reason is the row
    done = True
    sampler.join()
    if qc is None or method == "int8kern":
        raise
    print(json.dumps({"skipped": f"from_pretrained failed: {type(e).__name__}: {e}"}))
    sys.exit(0)
load_s = time.perf_counter() - t0
done = True
sampler.join()
for k in peak:
    peak[k] = max(peak[k], status(k)) - base[k]
model.eval()
r = {"footprint_bytes": model.get_memory_footprint(), "load_peak_anon_bytes": peak["RssAnon"],
     "load_peak_rss_bytes": peak["VmRSS"], "load_s": load_s,
     "linear_types": sorted({type(m).__name__ for n, m in model.named_modules()
                             if n.endswith(".q_proj") or n.endswith(".down_proj")})}
try:
    with torch.no_grad():
        r["perplexity"] = models.perplexity(model, ids, args["window"])
        gen = dict(do_sample=False, pad_token_id=tok.eos_token_id)
        model.generate(**prompt, max_new_tokens=2, min_new_tokens=2, **gen)  # warm-up
        times = []
        for _ in range(args["repeats"]):
            t0 = time.perf_counter()
            out = model.generate(**prompt, max_new_tokens=args["gen_tokens"], min_new_tokens=args["gen_tokens"],
                                 **gen)
            times.append(time.perf_counter() - t0)
        r["generate_s"], r["generate_runs_s"] = sorted(times)[len(times) // 2], times
    # Resident now, after perplexity and generate: an fp32 checkpoint loads as views of the
    # memory-mapped file, whose pages count only once the forward reads them.
    r["rss_after_eval_bytes"] = status("VmRSS") - base["VmRSS"]
    new = out[0, prompt.input_ids.shape[1]:]
    r["generated_tokens"] = int(new.numel())
    r["sample"] = args["prompt"] + tok.decode(new, skip_special_tokens=True)
except Exception as e:
    if qc is None or method == "int8kern":
        raise
    r = {"skipped": f"loaded, but its forward failed: {type(e).__name__}: {e}"}
print(json.dumps(r))
"""


def run_method(method: str, ckpt: Path, text_path: Path, max_tokens: int, window: int, gen_tokens: int,
               threshold: float, prompt: str, repeats: int = 3, timeout: float = 3600) -> dict:
    args = dict(method=method, dir=str(ckpt), text=str(text_path), max_tokens=max_tokens, window=window,
                gen_tokens=gen_tokens, threshold=threshold, prompt=prompt, repeats=repeats)
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(args)], capture_output=True, text=True,
                          timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"int8kern.eval --compare-bnb: the {method} run failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def compare(text_path: Path | None = None, max_tokens: int = 4096, window: int = 1024, gen_tokens: int = 64,
            threshold: float = 6.0, prompt: str = "The capital of France is", methods=METHODS,
            progress: bool = True, repeats: int = 3) -> dict:
    text_path = Path(text_path) if text_path else models.default_text_path()
    ckpt = models.smollm2_safetensors_dir()
    report = {"model": "smollm2", "checkpoint": str(ckpt), "text": str(text_path), "max_tokens": max_tokens,
              "window": window, "gen_tokens": gen_tokens, "generate_repeats": repeats, "threshold": threshold,
              "prompt": prompt,
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": evalreport.machine_info(), "commit": evalreport.git_commit(), "methods": {}}
    for method in methods:
        if progress:
            print(f"--compare-bnb: {method} ...", file=sys.stderr, flush=True)
        r = run_method(method, ckpt, text_path, max_tokens, window, gen_tokens, threshold, prompt, repeats)
        r["load_avg_1min"] = evalreport.machine_info()["load_avg_1min"]
        report["methods"][method] = r
    fp32 = report["methods"].get("fp32", {})
    for r in report["methods"].values():
        if "perplexity" in r and "perplexity" in fp32:
            r["ppl_vs_fp32"] = r["perplexity"] / fp32["perplexity"] - 1
    return report


def format_table(report: dict, markdown: bool = False) -> str:
    mib = 2**20
    cols = ["method", "footprint MiB", "load peak anon MiB", "load peak RSS MiB", "RSS after eval MiB",
            "perplexity", "vs fp32",
            f"generate {report['gen_tokens']} tok (s)", "tok/s", "load"]
    rows = []
    for name, r in report["methods"].items():
        if "skipped" in r:
            rows.append([name, f"skipped: {r['skipped']}"] + [""] * (len(cols) - 2))
            continue
        rows.append([name, f"{r['footprint_bytes'] / mib:.1f}", f"{r['load_peak_anon_bytes'] / mib:.0f}",
                     f"{r['load_peak_rss_bytes'] / mib:.0f}", f"{r['rss_after_eval_bytes'] / mib:.0f}",
                     f"{r['perplexity']:.3f}",
                     f"{r['ppl_vs_fp32']:+.2%}" if "ppl_vs_fp32" in r else "-",
                     f"{r['generate_s']:.2f}", f"{r['generated_tokens'] / r['generate_s']:.1f}",
                     f"{r['load_avg_1min']:.1f}"])
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(c), *(len(r[i]) for r in rows if not r[1].startswith("skipped")))
              for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*cols), fmt.format(*("-" * w for w in widths))]
    out += [f"{r[0]:<{widths[0]}}  {r[1]}" if r[1].startswith("skipped") else fmt.format(*r) for r in rows]
    return "\n".join(out)


def describe(report: dict) -> str:
    m = report["machine"]
    return (f"SmolLM2-135M-Instruct through from_pretrained(quantization_config=...), CPU ({m['cpu']}, "
            f"{m['threads']} threads), torch {m['torch']}, commit {report['commit']}, {report['date']}; "
            f"perplexity on the first {report['max_tokens']} tokens of {report['text']} (window "
            f"{report['window']}); greedy generate() of {report['gen_tokens']} tokens after "
            f"{report['prompt']!r} (median of {report['generate_repeats']}); peak memory while loading "
            "above the post-import baseline, one fresh process per method; 'load' = 1-minute load "
            "average after the run (other work on the machine slows the timings)")


def write(report: dict, out_dir) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{FILE_STEM}.json", out / f"{FILE_STEM}.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    samples = "".join(f"- {k}: {r['sample']!r}\n" for k, r in report["methods"].items() if "sample" in r)
    paths[1].write_text(f"{describe(report)}\n\n{format_table(report, markdown=True)}\n"
                        + (f"\nGreedy samples:\n\n{samples}" if samples else ""))
    return paths
