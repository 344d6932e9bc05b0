"""Registers, barriers, shared memory and spills of every CUDA kernel, per architecture, from
ptxas -v: the resource report a kernel change is checked against without a GPU (a refactor
must leave it identical; a new tile configuration shows its cost here first).

    python scripts/ptxas_report.py > benchmarks/results/ptxas.txt

Compiles each csrc/cuda/*.cu with setup.py's nvcc flags for sm_80 and sm_90a (gemm_wgmma.cu for
sm_90a alone, as setup.py does) into a temporary folder; prints one sorted line per kernel and
architecture, demangled.
"""
import glob
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
FLAGS = ["-std=c++17", "-O3", "--expt-relaxed-constexpr", "-Xptxas=-O3", "-Xptxas", "-v",
         "-I", os.path.join(ROOT, "csrc")]
ARCHS = {"default": ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90a,code=sm_90a"],
         "sm90a": ["-gencode", "arch=compute_90a,code=sm_90a"]}


def demangle(name):
    out = subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip() or name
    out = re.sub(r"\(anonymous namespace\)::|int8kern::cuda::", "", out)
    return re.sub(r"\(.*\)$", "", out)  # the parameter list adds nothing the template args do not say


def report(source, tmp):
    archs = ARCHS["sm90a"] if source.endswith("gemm_wgmma.cu") else ARCHS["default"]
    obj = os.path.join(tmp, os.path.basename(source) + ".o")
    proc = subprocess.run([NVCC, *FLAGS, *archs, "-c", source, "-o", obj], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{source}: nvcc failed\n{proc.stderr[-2000:]}")
    rows, fn, arch, spill = [], None, None, ""
    for line in proc.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(\S+)'", line)
        if m:
            fn, arch = m.groups()
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            spill = f"stack {m.group(1)}, spills {m.group(2)}/{m.group(3)}"
            continue
        m = re.search(r"Used (\d+) registers, used (\d+) barriers(?:, \d+ bytes cumulative stack size)?"
                      r"(?:, (\d+) bytes smem)?", line)
        if m and fn:
            rows.append(f"{arch:6} {demangle(fn)}: {m.group(1)} regs, {m.group(2)} barriers, "
                        f"{m.group(3) or 0} B static smem, {spill}")
            fn = None
    return rows


def main():
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))):
            rows += report(source, tmp)
    print("\n".join(sorted(rows)))


if __name__ == "__main__":
    main()
