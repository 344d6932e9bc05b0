"""The CPU kernels on a shared core (issue 21): default threads against one thread, with and
without a busy neighbour.

Conditions, each measured in the same run so that their ratios share the machine's load:
  idle       nothing started by this script
  neighbour  a busy loop pinned to one of this process's CPUs at higher priority
             (`taskset -c CPU nice -n -10`), as another program holding that core would be;
             started here, bounded by its own deadline, stopped here
and in each, torch's default thread count (int8kern uses min(that, its CPU budget)) and one
thread, interleaved round by round. Rows: Int8LinearLt (thresholds 6 and 0) against
nn.Linear float32, K = N = 4096, at M = 1 (decode) and M = 512 (prefill); SmolLM2-135M greedy
decode per token, int8kern (threshold 6) against float32 (skipped, with the reason, when the
model package is missing). Times are medians of every call of every round, in ms.

Usage: python benchmarks/bench_shared_cpu.py [--rounds N] [--no-model] [--json PATH]
       python benchmarks/bench_shared_cpu.py --dry-run   (tiny shapes, seconds; the tests run it)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

# No progress bar in the output (transformers' GGUF de-quantization one); tqdm reads this
# when it is imported.
os.environ.setdefault("TQDM_DISABLE", "1")

import torch

import int8kern

from timing import environment

HERE = os.path.dirname(os.path.abspath(__file__))
NEIGHBOUR_NICE = -10


def isa() -> str:
    """The CPU features that pick int8kern's kernels, from /proc/cpuinfo's flags."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    names = [("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX-512 VNNI"),
             ("avx_vnni", "AVX-VNNI"), ("amx_int8", "AMX-INT8")]
    have = [label for flag, label in names if flag in flags]
    return ", ".join(have) if have else "no AVX2"


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


@contextlib.contextmanager
def busy_neighbour(cpu: int, max_seconds: float):
    """A busy loop pinned to `cpu` at nice NEIGHBOUR_NICE, ending by itself after max_seconds
    at the latest and killed on exit. Yields the nice value it really got (raising priority
    needs CAP_SYS_NICE; without it `nice` warns and runs it at 0)."""
    loop = f"import time\nend = time.monotonic() + {max_seconds}\nwhile time.monotonic() < end: pass\n"
    p = subprocess.Popen(["taskset", "-c", str(cpu), "nice", "-n", str(NEIGHBOUR_NICE), sys.executable, "-c", loop],
                         stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)  # taskset and nice exec into the loop
        try:
            with open(f"/proc/{p.pid}/stat") as f:
                nice = int(f.read().rsplit(")", 1)[1].split()[16])
        except (OSError, ValueError, IndexError):
            nice = None
        yield nice
    finally:
        p.kill()
        p.wait()


def median_ms(samples):
    return statistics.median(samples) * 1e3


def time_calls(fn, calls):
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def layer_items(K, N, Ms, copies, seed=0):
    """(name, M, fn, float32 row's name) per row: each fn runs one layer call, rotating `copies` layers so that a
    call does not find its weight left in the cache by the previous one more than a real model
    would."""
    g = torch.Generator().manual_seed(seed)
    floats = [torch.nn.Linear(K, N) for _ in range(copies)]
    items = []
    for M in Ms:
        x = torch.randn(M, K, generator=g)
        cols = torch.randperm(K, generator=g)[:max(1, K // 200)]
        x[:, cols] = 30.0  # LLM.int8()'s outlier features, 0.5% of the columns
        def rotate(layers, x=x):
            state = {"i": 0}
            def call():
                layers[state["i"] % len(layers)](x)
                state["i"] += 1
            return call
        base = f"nn.Linear float32, M = {M}"
        items.append((base, M, rotate(floats), None))
        for th in (6.0, 0.0):
            int8 = [int8kern.Int8LinearLt.from_linear(lin, threshold=th) for lin in floats]
            items.append((f"Int8LinearLt th {th:g}, M = {M}", M, rotate(int8), base))
    return items


def model_items(tokens):
    """SmolLM2 greedy decode, one fn per model that decodes `tokens` tokens and returns the
    seconds of each step; or the reason it cannot run. The int8kern model also with its decode
    attention (attn_implementation "int8kern": no OpenMP region of torch's SDPA per layer), and
    that once more with torch's own ops on one thread and int8kern's kernels on the condition's
    thread count (int8kern.set_num_threads), README's advice for a shared machine."""
    from int8kern.eval import models, run as ev
    try:
        bundle = models.load("smollm2", "cpu")
        import int8kern.hf  # the attention implementation "int8kern"
    except Exception as e:  # the model package (requirements-eval.txt) is not installed
        return None, f"{type(e).__name__}: {e}"
    prompt = bundle.tokenizer(ev.DEFAULT_PROMPT, return_tensors="pt").input_ids

    def torch_on_one_thread(fn):
        def run():
            n = torch.get_num_threads()
            torch.set_num_threads(1)
            int8kern.set_num_threads(n)
            try:
                return fn()
            finally:
                torch.set_num_threads(n)
                int8kern.set_num_threads(0)
        return run

    base = "SmolLM2 decode float32, per token"
    fp32 = ev.build("fp32", bundle.model, 6.0, "cpu")
    int8 = ev.build("llm_int8", bundle.model, 6.0, "cpu")
    int8_attention = ev.build("llm_int8", bundle.model, 6.0, "cpu")
    int8_attention.set_attn_implementation(int8kern.hf.ATTN_IMPLEMENTATION)
    decode = lambda model: lambda: ev.greedy(model, prompt, tokens, "cpu")[1]  # noqa: E731
    items = []
    for name, fn in ((base, decode(fp32)),
                     ("SmolLM2 decode Int8LinearLt th 6, per token", decode(int8)),
                     ("SmolLM2 decode th 6 + int8kern attention, per token", decode(int8_attention)),
                     ("the same, torch's ops on 1 thread, per token", torch_on_one_thread(decode(int8_attention)))):
        fn()  # warm-up
        items.append((name, 1, fn, None if name == base else base))
    return items, None


def run_condition(items, thread_counts, rounds, calls_for):
    """{(name, threads): [seconds, ...]}: every item at every thread count, interleaved by round."""
    samples = {}
    for _ in range(rounds):
        for n in thread_counts:
            torch.set_num_threads(n)
            for name, M, fn, kind, _ in items:
                if kind == "model":
                    got = fn()
                else:
                    fn()  # one call to settle after the thread change
                    got = time_calls(fn, calls_for(M))
                samples.setdefault((name, n), []).extend(got)
    return samples


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-model", action="store_true", help="leave out the SmolLM2 rows")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes and few calls: checks the script")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    default_threads = torch.get_num_threads()
    threads, quota, affinity, override = torch.ops.int8kern._cpu_budget()
    env = environment("cpu")
    env.update(isa=isa(), load_before=load_average(), torch_threads=default_threads,
               int8kern_threads=int(torch.ops.int8kern._cpu_threads()),
               budget=dict(threads=threads, quota_cpus=quota, affinity_cpus=affinity, override=override))
    print(f"# {env['cpu']} ({env['isa']}), torch {env['torch']}, int8kern {env['commit']}, {env['date']}")
    print(f"# torch threads {default_threads}; int8kern CPU budget {threads} "
          f"(affinity {affinity} CPUs, cgroup quota {quota:g} CPUs (0: none), INT8KERN_NUM_THREADS "
          f"{override or 'unset'}); load average before: {env['load_before']}")

    if override:
        print("# INT8KERN_NUM_THREADS is set: int8kern ignores torch's thread count, so the one-thread "
              "columns are one thread for torch's ops only")
    rounds = 2 if args.dry_run else args.rounds
    K = N = 256 if args.dry_run else 4096
    Ms = [1, 16] if args.dry_run else [1, 512]
    layer_calls = {1: 5 if args.dry_run else 40}
    calls_for = lambda M: layer_calls.get(M, 3)  # noqa: E731 (prefill: a few calls a round)
    items = [(name, M, fn, "layer", base) for name, M, fn, base in layer_items(K, N, Ms, copies=4)]
    model_skip = "--dry-run" if args.dry_run else ("--no-model" if args.no_model else None)
    if model_skip is None:
        got, model_skip = model_items(tokens=12)
        items += [(name, M, fn, "model", base) for name, M, fn, base in got or []]
    if model_skip:
        print(f"# SmolLM2 rows skipped: {model_skip}")

    thread_counts = [default_threads, 1] if default_threads > 1 else [1]
    cpus = sorted(os.sched_getaffinity(0))
    conditions = {"idle": None}
    results = {}
    with torch.inference_mode():
        results["idle"] = run_condition(items, thread_counts, rounds, calls_for)
        if len(cpus) < 2:
            print("# neighbour condition skipped: this process may run on one CPU only")
        else:
            with busy_neighbour(cpus[-1], max_seconds=60 if args.dry_run else 1800) as nice:
                conditions["neighbour"] = nice
                results["neighbour"] = run_condition(items, thread_counts, rounds, calls_for)
    torch.set_num_threads(default_threads)
    env["load_after"] = load_average()
    if "neighbour" in conditions:
        print(f"# neighbour: a busy loop on CPU {cpus[-1]} at nice {conditions['neighbour']} "
              f"(asked {NEIGHBOUR_NICE}); load average after: {env['load_after']}")

    names = list(dict.fromkeys(name for name, _, _, _, _ in items))
    baseline = {name: base for name, _, _, _, base in items}
    cols = [(c, n) for c in results for n in thread_counts]
    head = " | ".join(f"{c}, {n} thr" for c, n in cols)
    ratio_head = " | ".join(f"{c}: {default_threads}/1" for c in results) if len(thread_counts) > 1 else ""
    print(f"\n| ms (median) | {head} |" + (f" {ratio_head} |" if ratio_head else ""))
    print("|---" * (1 + len(cols) + (len(results) if ratio_head else 0)) + "|")
    table = {}
    for name in names:
        ms = {f"{c}/{n}": median_ms(results[c][(name, n)]) for c, n in cols}
        table[name] = ms
        cells = " | ".join(f"{ms[f'{c}/{n}']:.3f}" for c, n in cols)
        ratios = " | ".join(f"{ms[f'{c}/{default_threads}'] / ms[f'{c}/1']:.2f}x" for c in results) \
            if ratio_head else ""
        print(f"| {name} | {cells} |" + (f" {ratios} |" if ratios else ""))

    # Issue 21's criteria, per condition: int8kern on the default threads within 1.2x of its own
    # one-thread time, and faster than float32 on the default threads.
    print()
    checks = []
    for c in results:
        for name in names:
            if baseline[name] is None:
                continue
            ours, one = table[name][f"{c}/{default_threads}"], table[name][f"{c}/1"]
            base = table[baseline[name]][f"{c}/{default_threads}"]
            ok_threads = ours <= 1.2 * one
            ok_fp32 = ours < base
            checks.append(dict(condition=c, row=name, default_over_one=ours / one,
                               fp32_over_ours=base / ours, met=ok_threads and ok_fp32))
            print(f"{c:9s} {name:46s} default/1 {ours / one:5.2f}x (<= 1.2x)  fp32/int8kern "
                  f"{base / ours:5.2f}x (> 1)  {'met' if ok_threads and ok_fp32 else 'MISSED'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(env=env, neighbour_nice=conditions.get("neighbour"), rounds=rounds,
                           table_ms=table, checks=checks, model_skipped=model_skip), f, indent=1)
    return table


if __name__ == "__main__":
    main()
