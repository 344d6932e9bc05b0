"""The outputs of the evaluation (int8kern.eval.run): terminal and markdown tables, JSON, and PNG plots
(matplotlib with the Agg backend: no display needed)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from . import naive


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            # other work on the machine skews the timings: recorded so a reader can tell
            "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(), "os": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]  # the repository
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def format_table(report: dict, markdown: bool = False) -> str:
    causal = report["kind"] == "causal"
    cols = ["method"]
    if "perplexity" in next(iter(report["methods"].values()), {}):
        cols += ["perplexity", "vs fp32"]
    if not causal:
        cols += ["cos mean", "cos min"]
    cols += ["MiB", "x smaller", "float share", "outlier cols"]
    first = next(iter(report["methods"].values()), {})
    if "ms_per_token" in first or "ms_per_sentence" in first:
        cols += ["ms/token", "prefill tok/s"] if causal else ["ms/sentence"]
        if "load_avg_1min" in first:  # other work on the machine inflates the timings
            cols += ["load"]
    rows = []
    for r in report["methods"].values():
        cell = {"method": r["label"], "MiB": f"{r['bytes'] / 2**20:.1f}",
                "x smaller": f"{r['compression']:.2f}", "float share": f"{r['float_share']:.1%}",
                "outlier cols": f"{r['outlier_cols_per_call']:.1f}" if "outlier_cols_per_call" in r else "-"}
        if "perplexity" in r:  # mean +- sd over the dithered runs when there were some
            cell["perplexity"] = f"{r['perplexity']:.3f}" + (
                f" ± {r['perplexity_sd']:.3f}" if "perplexity_sd" in r else "")
            cell["vs fp32"] = f"{r['ppl_vs_fp32']:+.2%}" if "ppl_vs_fp32" in r else "-"
        if "cosine_mean" in r:
            cell["cos mean"], cell["cos min"] = f"{r['cosine_mean']:.5f}", f"{r['cosine_min']:.4f}"
        if "ms_per_token" in r:
            cell["ms/token"] = f"{r['ms_per_token']:.1f}"
            cell["prefill tok/s"] = f"{r['prefill_tokens_per_s']:.0f}"
        if r.get("load_avg_1min") is not None:
            cell["load"] = f"{r['load_avg_1min']:.1f}"
        if "ms_per_sentence" in r:
            cell["ms/sentence"] = f"{r['ms_per_sentence']:.2f}"
        rows.append([cell.get(c, "-") for c in cols])
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*cols), fmt.format(*("-" * w for w in widths))]
                     + [fmt.format(*r) for r in rows])


def describe(report: dict) -> str:
    m = report["machine"]
    s = (f"{report['model']} on {report['device']} ({m['cpu']}, {m['threads']} threads"
         + (f", {m['gpu']}" if "gpu" in m else "") + f"), torch {m['torch']}, "
         f"commit {report['commit']}, {report['date']}; threshold {report['threshold']}, "
         f"{report['tokens']} tokens of {report['text']}")
    if "window" in report:
        s += f", window {report['window']}"
    if report.get("dither_runs"):
        s += (f"; perplexity: mean ± sd of 1 plain + {report['dither_runs']} one-ulp-dithered"
              " runs (fp32: plain run)")
    if "sentences" in report:
        s += f", {report['sentences']} sentences"
    return s


def kernel_vs_sim_line(report: dict) -> str:
    """int8kern against the plain-PyTorch LLM.int8(): layer by layer, then end to end."""
    parts = []
    k = report.get("kernel_vs_sim_layers")
    if k:
        parts.append(f"int8kern vs plain-PyTorch LLM.int8(), same input at each of {k['layers']} "
                     f"layers: max row-relative difference {k['max_row_rel_diff']:.2e}, "
                     f"outlier columns differ in {len(k['outlier_col_mismatches'])} layers")
    if "kernel_vs_sim" in report:
        what = "mean perplexity" if report.get("dither_runs") else "perplexity (one run)"
        parts.append(f"end to end, {what}: {report['kernel_vs_sim']:+.3%}")
    return "; ".join(parts)


def write_report(report: dict, out_dir, model: torch.nn.Module | None = None) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = report["model"].replace("/", "_")  # hub ids ("org/model") make file names
    paths = [out / f"{name}.json", out / f"{name}.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    samples = "".join(f"- {r['label']}: {r['sample']!r}\n" for r in report["methods"].values()
                      if "sample" in r)
    check = kernel_vs_sim_line(report)
    paths[1].write_text(f"{describe(report)}\n\n{format_table(report, markdown=True)}\n"
                        + (f"\n{check}\n" if check else "")
                        + (f"\nGreedy samples:\n\n{samples}" if samples else ""))
    paths += plot_all(report, out, model)
    return paths


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless: CI and servers have no display
    import matplotlib.pyplot as plt

    return plt


def first_quantized_layer(model: torch.nn.Module, skip=("lm_head",)):
    """(name, weight [out, in]) of the first layer quantize_model would replace."""
    for name, m in model.named_modules():
        if (isinstance(m, torch.nn.Linear) or naive._is_conv1d(m)) and not naive._skipped(name, skip):
            return name, naive._weight_out_in(m).float().cpu()
    raise ValueError("model has no nn.Linear / Conv1D layer")


def plot_weight_histograms(model: torch.nn.Module, path: Path, title: str) -> Path:
    """The seeds' picture: one layer's original weights against their dequantized int8
    copies, for per-tensor absmax and zero-point and for int8kern's per-row absmax."""
    plt = _plt()
    name, W = first_quantized_layer(model)
    q, absmax = naive.rowwise_quantize(W)
    variants = [("per-tensor absmax", naive.absmax_quantize(W)[1]),
                ("per-tensor zero-point", naive.zeropoint_quantize(W)[1]),
                ("per-row absmax (int8kern)", q.float() * absmax[:, None] / 127)]
    lim = float(W.abs().flatten().kthvalue(int(0.999 * W.numel())).values)  # clip rare tails
    bins = torch.linspace(-lim, lim, 201).numpy()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    for ax, (label, dq) in zip(axes, variants):
        ax.hist(W.flatten().numpy(), bins=bins, alpha=0.5, color="tab:blue", label="original (fp32)")
        ax.hist(dq.flatten().numpy(), bins=bins, alpha=0.5, color="tab:red", label="dequantized int8")
        err = float((dq - W).norm() / W.norm())
        ax.set_title(f"{label}\nrelative error {err:.2%}")
        ax.set_xlabel("weight value")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("count")
    fig.suptitle(f"{title}: weights of {name} {tuple(W.shape)}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_outliers(report: dict, path: Path) -> Path | None:
    """Mean outlier columns per call for every quantized layer, in model order."""
    rows = [(k, r) for k, r in report["methods"].items() if r.get("outlier_cols_per_layer")]
    if not rows:  # no int8 method ran
        return None
    # int8kern's own count when it ran, else the simulation's, else vector-wise (all zero)
    label, r = next(((k, r) for k, r in rows if k == "llm_int8"),
                    max(rows, key=lambda kr: kr[1].get("outlier_cols_per_call", 0)))
    names, vals = zip(*r["outlier_cols_per_layer"].items())
    plt = _plt()
    kinds = sorted({n.rsplit(".", 1)[-1] for n in names})  # q_proj, down_proj, ...
    cmap = plt.get_cmap("tab10")
    colors = [cmap(kinds.index(n.rsplit(".", 1)[-1]) % 10) for n in names]
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.06), 4))
    ax.bar(range(len(vals)), vals, color=colors, width=1.0)
    for i, k in enumerate(kinds):
        ax.bar([0], [0], color=cmap(i % 10), label=k)  # legend entries only
    ax.set_xlabel("linear layer (model order)")
    ax.set_ylabel("mean outlier columns per call")
    ax.set_title(f"{report['model']}: outlier columns (|x| >= {report['threshold']}) per layer, {label}")
    ax.set_xlim(-1, len(vals))
    ax.legend(fontsize=7, ncol=min(len(kinds), 7))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_quality_vs_memory(report: dict, path: Path) -> Path:
    """Each method as a point: model bytes against perplexity (causal LMs), 1 - cosine to
    fp32 (encoders), or decode latency (random weights, where quality means nothing)."""
    plt = _plt()
    ms = report["methods"]
    if all("perplexity" in r for r in ms.values()):
        key, ylabel, log = "perplexity", "perplexity (lower is better)", False
    elif all("cosine_mean" in r for r in ms.values()):
        ms = {k: dict(r, one_minus=max(1 - r["cosine_mean"], 1e-7)) for k, r in ms.items()}
        key, ylabel, log = "one_minus", "1 - mean cosine to fp32 (log)", True
    elif all("ms_per_token" in r for r in ms.values()):
        key, ylabel, log = "ms_per_token", "ms per generated token", False
    else:  # nothing to put against memory: memory alone
        ms = {k: dict(r, mib=r["bytes"] / 2**20) for k, r in ms.items()}
        key, ylabel, log = "mib", "parameters + buffers (MiB)", False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # A legend, not text labels: the int8 methods sit within a few pixels of each other.
    # Methods that land on the same point (int8kern and its simulation do, by design) share
    # one entry.
    points = {}
    for k, r in ms.items():
        points.setdefault((round(r["bytes"] / 2**20, 1), float(f"{r[key]:.5g}")), []).append(k)
    markers = "osD^vP*Xh<>"
    for i, ((x, y), names) in enumerate(points.items()):
        sd = ms[names[0]].get("perplexity_sd", 0.0) if key == "perplexity" else 0.0
        ax.errorbar(x, y, yerr=sd or None, fmt=markers[i % len(markers)], markersize=8,
                    alpha=0.85, capsize=4, label=" = ".join(names))
    ax.legend(fontsize=9)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("parameters + buffers (MiB)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{report['model']}: quality vs memory (threshold {report['threshold']})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_all(report: dict, out: Path, model: torch.nn.Module | None = None) -> list[Path]:
    name = report["model"].replace("/", "_")  # hub ids ("org/model") make file names
    paths = [plot_quality_vs_memory(report, out / f"{name}_quality_vs_memory.png"),
             plot_outliers(report, out / f"{name}_outliers.png")]
    if model is not None:
        paths.append(plot_weight_histograms(model, out / f"{name}_weight_hist.png", name))
    return [p for p in paths if p is not None]
