"""The emulator's PTX lane/element mappings (csrc/emu/ptx_layouts.h) against NVIDIA's CuTe.

csrc/emu/tests/layout_oracle.cpp is compiled with g++ against the cute/ headers of the
nvidia-cutlass wheel and run: every (thread, value) of CuTe's definitions (mma.m16n8k32 s8 A/B/C,
ldmatrix.x4, the wgmma m64nNk32 accumulators, GmmaDescriptor, Swizzle<3,4,3>, the K-major SW128
int8 operand layout and its descriptors, the TMA 128B-swizzled box) is compared with
ptx_layouts.h, and the kernels' own addressing (quoted lines of gemm_mainloop.cuh and
gemm_wgmma.cu) with the same CuTe definitions. A build with a planted ldmatrix bug must fail.
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ORACLE = REPO / "csrc" / "emu" / "tests" / "layout_oracle.cpp"
CUTLASS_PIN = next(
    (line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
     if line.startswith("nvidia-cutlass==")),
    "nvidia-cutlass",
)

# Layout -> number of elements the oracle compares (all of them, each run).
EXPECTED = {
    "mma_fragment_recast_s8_to_u32": 17,
    "mma_m16n8k32_a": 512,
    "mma_m16n8k32_b": 256,
    "mma_m16n8k32_c": 128,
    "ldmatrix_x4": 544,  # 32 lanes x 4 registers x 4 bytes (each bit compared) + 32 row providers
    "wgmma_m64nNk32_d N=8": 512,
    "wgmma_m64nNk32_d N=64": 4096,
    "wgmma_m64nNk32_d N=128": 8192,
    "wgmma_m64nNk32_d N=256": 16384,
    "gmma_desc encode/decode": 60001,
    "swizzle_128b": 8195,
    "kernel gemm_mainloop.cuh ldmatrix addressing -> mma A/B fragments": 4096,
    "kernel MmaAccLayout": 1024,
    "kernel WgmmaAccLayout": 16384,
    "wgmma_kmajor_sw128_address": 163917,
    "tma_box_sw128_offset": 32768,
}
LINE = re.compile(r"^(ok|FAIL) (.+?)(?: \(.*\))?: (\d+) checked, (\d+) mismatches$")


def _cutlass_include():
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        return None
    inc = Path(list(spec.submodule_search_locations)[0]) / "source" / "include"
    return inc if (inc / "cute" / "atom" / "mma_traits_sm80.hpp").is_file() else None


def _cuda_includes():
    """The toolkit headers CuTe needs on the host: cuda_runtime_api.h and libcu++ (cuda/std)."""
    roots = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in filter(None, roots):
        inc = Path(root) / "include"
        if not (inc / "cuda_runtime_api.h").is_file():
            continue
        for cccl in (inc / "cccl", inc):  # CUDA 13 keeps libcu++ under include/cccl
            if (cccl / "cuda" / "std" / "utility").is_file():
                return [inc] + ([cccl] if cccl != inc else [])
    return None


def _parse(stdout):
    counts = {}
    for line in stdout.splitlines():
        m = LINE.match(line)
        if m:
            counts[m.group(2)] = (m.group(1), int(m.group(3)), int(m.group(4)))
    return counts


@pytest.fixture(scope="module")
def oracle_runs(tmp_path_factory):
    """Compiles the oracle twice at once (plain and -DPLANT_SWAP_LDMATRIX) and runs both."""
    cutlass = _cutlass_include()
    if cutlass is None:
        pytest.skip(f"nvidia-cutlass (CuTe headers) not installed: pip install --no-deps {CUTLASS_PIN}")
    cuda = _cuda_includes()
    if cuda is None:
        pytest.skip("CuTe needs the CUDA toolkit's cuda_runtime_api.h and libcu++ (cuda/std) headers; "
                    "none found under $CUDA_HOME or /usr/local/cuda")
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not on PATH")
    out = tmp_path_factory.mktemp("emu_layouts")
    base = [gxx, "-std=c++17", "-O0", "-w", f"-I{REPO}", f"-I{cutlass}", *[f"-I{p}" for p in cuda],
            str(ORACLE)]
    builds = {"plain": [], "planted": ["-DPLANT_SWAP_LDMATRIX"]}
    procs = {k: subprocess.Popen(base + flags + ["-o", str(out / k)], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
             for k, flags in builds.items()}
    results = {}
    for k, p in procs.items():
        log, _ = p.communicate(timeout=600)
        assert p.returncode == 0, f"compiling the {k} oracle failed:\n{' '.join(base + builds[k])}\n{log[-6000:]}"
        r = subprocess.run([str(out / k)], capture_output=True, text=True, timeout=120)
        results[k] = r
    return results


def test_layouts_match_cute(oracle_runs):
    r = oracle_runs["plain"]
    sys.stdout.write(r.stdout)
    assert r.returncode == 0, f"ptx_layouts.h or the kernels disagree with CuTe:\n{r.stdout[-8000:]}{r.stderr}"
    counts = _parse(r.stdout)
    assert set(counts) == set(EXPECTED), f"layouts reported: {sorted(counts)}"
    for name, n in EXPECTED.items():
        status, checked, bad = counts[name]
        assert (status, checked, bad) == ("ok", n, 0), f"{name}: {status}, {checked} checked, {bad} bad"


def test_planted_ldmatrix_swap_is_caught(oracle_runs):
    r = oracle_runs["planted"]
    assert r.returncode != 0, "the oracle passed a build with ldmatrix's matrices swapped"
    counts = _parse(r.stdout)
    failed = {name for name, (status, _, _) in counts.items() if status == "FAIL"}
    assert failed == {"ldmatrix_x4"}, f"failed layouts: {sorted(failed)}"
    assert counts["ldmatrix_x4"][2] == 512  # every destination byte reads the wrong lane
    assert "MISMATCH ldmatrix_x4" in r.stdout


def _code(line):
    """The code of a `// KERNEL <file>` line of the oracle, whitespace-normalised."""
    text = line.split("// KERNEL")[0].strip()
    if text.startswith("//"):  # a quoted statement the oracle cannot call as is
        text = text[2:].strip()
    return " ".join(text.split("//")[0].split())


def test_quoted_kernel_lines_are_current():
    """The oracle checks copies of the kernels' addressing lines; each must still be in the kernel
    source it names, so a kernel change cannot leave the oracle checking stale code."""
    quotes = []
    for line in ORACLE.read_text().splitlines():
        m = re.search(r"// KERNEL (\S+)", line)
        if m:
            quotes.append((m.group(1), _code(line)))
    files = {name for name, _ in quotes}
    assert files == {"gemm_mainloop.cuh", "gemm_wgmma.cu"}, files
    assert len(quotes) >= 20
    sources = {name: " ".join((REPO / "csrc" / "cuda" / name).read_text().split()) for name in files}
    stale = [(name, code) for name, code in quotes if not code or code not in sources[name]]
    assert not stale, "oracle quotes no longer in the kernel sources (update layout_oracle.cpp):\n" + \
        "\n".join(f"  {n}: {c}" for n, c in stale)
