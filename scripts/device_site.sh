#!/usr/bin/env bash
# Packages the lent GPU machine lacks (no network there), fetched HERE for its Python 3.12 into
# .device-site/ (ignored by git); carry it along, and gpu_check.sh / gpu_bench.sh put them first
# on PYTHONPATH (scripts/device_env.sh). Pure-Python packages travel as wheels (compressed:
# transformers' is 14 MB, 60 MB unpacked) and are unpacked there; bitsandbytes travels unpacked
# with its CUDA 13 libraries only (its wheel is 43 MB, mostly libraries for other CUDA and ROCm
# versions): a call may carry 64 MiB in all.
#   transformers 5.24.0: the pin int8kern.hf is tested with (the machine has 5.17.0);
#   bitsandbytes 0.50.2: the benchmark anchor and test oracle.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .device-site
mkdir -p .device-site/wheels .device-site/site
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform any)
python3 -m pip download -q --no-deps "${plat[@]}" -d .device-site/wheels transformers==5.24.0
python3 -m pip install -q --no-deps --no-compile "${plat[@]}" --target .device-site/site bitsandbytes==0.50.2
find .device-site/site -name 'libbitsandbytes_*.so' ! -name 'libbitsandbytes_cuda13*' -delete
rm -rf .device-site/site/bin
du -sh .device-site/*
