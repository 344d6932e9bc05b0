"""The CUDA self-test (csrc/cuda/selftest/gemm_selftest.cu) under the warp-level CPU emulator.

scripts/build_selftest_emu.sh builds it with g++ (-DINT8KERN_EMU) into build/emu/<variant>/:
  * plain: the full self-test, every case, with the mma.sync GEMM and again with
    INT8KERN_CUDA_GEMM=wgmma (the emulated device is an H200, so the sm_90a wgmma/TMA kernel runs
    in both: directly, and for every plain tiled GEMM in the second run);
  * asan (ASan + UBSan) and tsan (ThreadSanitizer, fibers annotated): `selftest --small`, clean;
  * the checks can fail: each planted bug (an INT8KERN_PLANT_* switch at one spot of the kernel
    source, never defined in a normal build) is built as its own variant,
    build/emu/plant-<name>[-<sanitizer>]/, and its `selftest --small --only GROUP` must exit
    non-zero with the diagnostic that names the bug.

Skips (saying why) only where g++ or the CUDA toolkit headers (CUDA_HOME, else /usr/local/cuda)
are missing. Objects are cached per flags: a planted-bug build compiles only the sources that
include the plant and copies the rest from the clean build of the same variant.
"""
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "build_selftest_emu.sh"
BUILD = REPO / "build" / "emu"
CUDA_HOME = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
CXX = os.environ.get("CXX") or "g++"

_missing = []
if shutil.which(CXX.split()[0]) is None:
    _missing.append(f"no C++ compiler ({CXX})")
if not (Path(CUDA_HOME) / "include" / "cuda_runtime_api.h").is_file():
    _missing.append(f"no CUDA headers ({CUDA_HOME}/include/cuda_runtime_api.h; set CUDA_HOME)")
pytestmark = pytest.mark.skipif(bool(_missing), reason="the CUDA emulator needs g++ and the CUDA toolkit "
                                "headers: " + "; ".join(_missing))

# Any sanitizer report fails the run (exit status 66 for ASan and TSan, a UBSan report aborts:
# the build has -fno-sanitize-recover=all).
SANITIZER_ENV = {
    "ASAN_OPTIONS": "halt_on_error=1:exitcode=66:detect_leaks=1:abort_on_error=0",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    "TSAN_OPTIONS": "halt_on_error=1:exitcode=66",
}
SANITIZER_REPORT = re.compile(r"AddressSanitizer|LeakSanitizer|ThreadSanitizer|runtime error:|"
                              r"^(WARNING|ERROR|SUMMARY):", re.M)
FULL_TIMEOUT = 2400  # the full self-test: 4 CPU-minutes each, far more on a loaded machine
SMALL_TIMEOUT = 1200
PLANT_TIMEOUT = 600
BUILD_TIMEOUT = 1200


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("INT8KERN_CUDA_GEMM", "INT8KERN_EMU_DEVICE", "INT8KERN_EMU_MAX_GRID_Y", *SANITIZER_ENV)}
    env.update(SANITIZER_ENV)
    env.update(extra)
    return env


@dataclass
class Run:
    cmd: list
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def describe(self):
        return (f"$ {' '.join(map(str, self.cmd))}  (exit {self.returncode}, {self.seconds:.0f} s)\n"
                f"--- stdout (tail)\n{self.stdout[-4000:]}\n--- stderr (tail)\n{self.stderr[-6000:]}")


def _run_all(jobs, timeout):
    """Runs [(cmd, env), ...] at once (this machine has two cores; the runs are single-threaded)."""
    start = time.monotonic()

    def one(job):
        cmd, env = job
        p = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, errors="replace")
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            return Run(cmd, None, out, err, time.monotonic() - start)
        return Run(cmd, p.returncode, out, err, time.monotonic() - start)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        runs = list(pool.map(one, jobs))
    for r in runs:
        if r.returncode is None:
            pytest.fail(f"ran past {timeout} s:\n" + r.describe())
    return runs


@pytest.fixture(scope="module")
def build():
    """build(variant, plant=None) -> path of the self-test binary, built once per module."""
    done = {}

    def _build(variant="plain", plant=None):
        key = (variant, plant)
        if key in done:
            return done[key]
        env = _env(CXX=CXX)
        env.pop("EMU_CXXFLAGS", None)
        env.pop("EMU_REUSE_OBJDIR", None)
        if plant is None:
            out = BUILD / variant / "selftest"
        else:
            clean = _build(variant)  # its objects are reused for the sources without the plant
            out = BUILD / (f"plant-{plant.lower()}" + ("" if variant == "plain" else f"-{variant}")) / "selftest"
            env["EMU_CXXFLAGS"] = f"-DINT8KERN_PLANT_{plant}"
            env["EMU_REUSE_OBJDIR"] = str(clean.parent / "obj")
        start = time.monotonic()
        r = subprocess.run(["bash", str(SCRIPT), variant, str(out.relative_to(REPO))], cwd=REPO, env=env,
                           capture_output=True, text=True, errors="replace", timeout=BUILD_TIMEOUT)
        assert r.returncode == 0 and out.is_file(), \
            f"build of {variant} {plant or ''} failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
        print(f"built {out.relative_to(REPO)} in {time.monotonic() - start:.0f} s")
        done[key] = out
        return out

    return _build


# ---------------------------------------------------------------------------------------------
# (a) The full self-test with each GEMM main loop.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_runs(build):
    exe = build("plain")
    # The grid.y limit lowered from 65535 to 1024: the two cases with more N tiles than grid.y holds
    # (the grid-stride loop over y) then run 2,050 tiles, not 131,074, and the emulator refuses any
    # launch past the lowered limit, as a GPU refuses one past 65535 (the GPU self-test runs the real one).
    small_grid = {"INT8KERN_EMU_MAX_GRID_Y": "1024"}
    runs = _run_all([([exe], _env(**small_grid)), ([exe], _env(INT8KERN_CUDA_GEMM="wgmma", **small_grid))],
                    FULL_TIMEOUT)
    return {"mma": runs[0], "wgmma": runs[1]}


def _assert_all_passed(r):
    assert r.returncode == 0, r.describe()
    assert "ALL PASSED: 0 failure(s)" in r.stdout, r.describe()
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert not fails, r.describe()
    assert r.stdout.count("PASS  ") > 0


@pytest.mark.parametrize("gemm", ["mma", "wgmma"])
def test_full_selftest(full_runs, gemm):
    r = full_runs[gemm]
    _assert_all_passed(r)
    # The emulated device is an sm_90 H200: the wgmma kernel's own cases ran, not its refusal.
    assert "(sm_90)" in r.stdout, r.describe()
    assert "PASS  wgmma kernel has its hand-off registers" in r.stdout
    assert re.search(r"^PASS  wgmma int32 M=", r.stdout, re.M), r.describe()
    assert "wgmma refuses: not an sm_90 device" not in r.stdout
    print(f"selftest ({gemm}): {r.stdout.count('PASS  ')} checks in {r.seconds:.0f} s")


# ---------------------------------------------------------------------------------------------
# (b) `--small` under ASan + UBSan and under TSan: clean.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sanitized_runs(build):
    exes = {v: build(v) for v in ("asan", "tsan")}
    runs = _run_all([([exes[v], "--small"], _env()) for v in exes], SMALL_TIMEOUT)
    return dict(zip(exes, runs))


@pytest.mark.parametrize("variant", ["asan", "tsan"])
def test_sanitized_small_selftest(sanitized_runs, variant):
    r = sanitized_runs[variant]
    assert not SANITIZER_REPORT.search(r.stderr), f"{variant} reported:\n" + r.describe()
    _assert_all_passed(r)
    print(f"selftest --small ({variant}): {r.seconds:.0f} s")


def test_only_rejects_an_unknown_group(build):
    r = _run_all([([build("plain"), "--small", "--only", "nope"], _env())], 120)[0]
    assert r.returncode == 2 and "unknown group nope" in r.stderr, r.describe()


# ---------------------------------------------------------------------------------------------
# (c) Planted bugs: each is caught, by the check that should catch it.
# ---------------------------------------------------------------------------------------------
@dataclass
class Plant:
    name: str      # INT8KERN_PLANT_<name>
    variant: str   # plain, asan, tsan
    group: str     # selftest --small --only <group>
    returncode: int
    stderr: list = field(default_factory=list)  # regexes that must match stderr
    stdout: list = field(default_factory=list)  # ... stdout
    why: str = ""

    @property
    def id(self):
        return self.name.lower() + ("" if self.variant == "plain" else f"-{self.variant}")


# Exit status: 2 = a CUDA call failed (the selftest's CK macro; a fault or deadlock the emulator
# reported fails the launch, the report in cudaGetErrorString); 1 = a FAIL line (mismatch);
# 66 = a sanitizer report (SANITIZER_ENV).
PLANTS = [
    Plant("MISSING_SYNCTHREADS", "plain", "gemm", 2,
          stderr=[r"kernel int8_gemm_kernel<.*: ldmatrix reads shared bytes at 0x[0-9a-f]+ that a cp\.async "
                  r"of thread \(\d+, 0, 0\) has not landed yet"],
          why="int8_gemm_kernel without the __syncthreads between cp.async.wait_group and the ldmatrix "
              "of compute_stage: a warp reads chunks another warp's cp.async has not landed"),
    Plant("MISSING_SYNCTHREADS", "tsan", "gemm", 66,
          stderr=[r"WARNING: ThreadSanitizer: data race",
                  r"Location is global '[^']*int8_gemm_kernel<[^']*::s[ab]' of size \d+",
                  r"ldmatrix_x4"],
          why="the same plant under TSan: a data race on the kernel's __shared__ stage array between "
              "one warp's ldmatrix and another warp's stores"),
    Plant("MISSING_CP_ASYNC_WAIT", "plain", "gemm", 2,
          stderr=[r"kernel int8_gemm_kernel<.*: ldmatrix reads shared bytes at 0x[0-9a-f]+ that a cp\.async "
                  r"of thread \(\d+, 0, 0\) has not landed yet"],
          why="int8_gemm_kernel without cp.async.wait_group<1> in the k loop"),
    Plant("TILE_EDGE_STORE_OFF_BY_ONE", "asan", "decode", 66,
          stderr=[r"ERROR: AddressSanitizer: heap-buffer-overflow", r"WRITE of size 4",
                  r"Int32Epilogue::apply.* csrc/cuda/epilogue\.cuh:\d+",
                  r"is located 0 bytes to the right of \d+-byte region"],
          why="Int32Epilogue stores j <= N: one element past the last row of an exactly allocated output "
              "(test_decode_int32)"),
    Plant("SWAPPED_LDMATRIX_LANES", "plain", "gemm", 1,
          stdout=[r"^FAIL  gemm int32 ", r"mismatch at flat \d+ \(row \d+ col \d+\): got -?\d+ want -?\d+",
                  r"^FAILED: [1-9]\d* failure\(s\)"],
          why="compute_stage feeds ldmatrix matrices 1 and 2 to the wrong mma B fragments"),
    Plant("OUTLIER_MASK_NOT_CLEARED", "plain", "outliers", 1,
          stdout=[r"^FAIL  quantize f16 M=16 K=300 ", r"^FAILED: [1-9]\d* failure\(s\)"],
          why="the quantize launch's last block lists the outlier columns but leaves their marks in the "
              "cached mask: the workspace is not zero after the launch, and a later call on the stream "
              "would list this call's columns too"),
    Plant("WRONG_MBARRIER_PARITY_EMPTY", "plain", "wgmma", 2,
          stderr=[r"kernel int8_gemm_wgmma_kernel<Epilogue>, block \(0, 0, 0\): deadlock: every live thread "
                  r"waits for something no other thread will do",
                  r"thread \(0, 0, 0\) \[warp 0 lane 0\] waits at mbarrier\.try_wait\.parity",
                  r"thread \(128, 0, 0\) \[warp 4 lane 0\] waits at mbarrier\.try_wait\.parity",
                  r"\(on hardware: a hang\)"],
          why="the wgmma producer waits parity `phase` on the empty barrier (not `phase ^ 1`): it waits for "
              "consumers that wait for it"),
    Plant("WRONG_MBARRIER_PARITY_FULL", "plain", "wgmma", 2,
          stderr=[r"kernel int8_gemm_wgmma_kernel<Epilogue>, block \(0, 0, 0\), thread \(0, 0, 0\) "
                  r"\[warp 0 lane 0\]: mbarrier\.arrive at 0x[0-9a-f]+: more arrivals than its count 1 in one phase"],
          why="the wgmma consumers wait parity `phase ^ 1` on the full barrier: they run ahead of the TMA "
              "(a fresh barrier's preceding phase counts as complete), free stages early, and the producer "
              "arrives a second time on a full barrier whose phase is still pending; the emulator reports "
              "that arrival (on hardware: a race between the TMA's completion and the next arrive)"),
]


@pytest.mark.parametrize("plant", PLANTS, ids=lambda p: p.id)
def test_planted_bug_is_caught(build, plant):
    exe = build(plant.variant, plant.name)
    macro = f"-DINT8KERN_PLANT_{plant.name}"
    planted = [f.name[:-len(".flags")] for f in sorted((exe.parent / "obj").glob("*.flags"))
               if macro in f.read_text().split()]
    assert planted, f"no source of {exe} was compiled with {macro} (is it still in csrc/cuda?)"
    r = _run_all([([exe, "--small", "--only", plant.group], _env())], PLANT_TIMEOUT)[0]
    assert r.returncode != 0, f"INT8KERN_PLANT_{plant.name} ({plant.why}) was not caught:\n" + r.describe()
    assert r.returncode == plant.returncode, r.describe()
    for pattern in plant.stderr:
        assert re.search(pattern, r.stderr, re.M), f"stderr lacks /{pattern}/\n" + r.describe()
    for pattern in plant.stdout:
        assert re.search(pattern, r.stdout, re.M), f"stdout lacks /{pattern}/\n" + r.describe()
    diag = next((line for line in (r.stderr + r.stdout).splitlines()
                 if re.search(r"landed|Sanitizer|deadlock|arrivals|^FAIL", line)), "")
    print(f"INT8KERN_PLANT_{plant.name} ({plant.variant}, in {', '.join(planted)}): exit {r.returncode} "
          f"in {r.seconds:.0f} s: {diag[:300]}")
