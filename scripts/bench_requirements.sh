#!/usr/bin/env bash
# Installs `make bench`'s anchors (requirements-bench.txt) into the Python given, once:
#   - the wheels (bitsandbytes, diskcache, sentencepiece), --no-deps;
#   - llama-cpp-python, built from its sdist for this CPU with only the library (no server,
#     tools, examples, tests, mtmd), and that sdist's llama.cpp converter (convert_hf_to_gguf.py,
#     conversion/, gguf-py/) unpacked into $INT8KERN_CACHE (default ~/.cache/int8kern), where
#     benchmarks/bench_generate.py finds it.
# When the build fails, why goes to build/llama-cpp.unavailable (the table prints it) and later
# runs do not retry: delete that file to try again. Never fails itself: the benchmark runs
# without what could not be installed.
#
# `bench_requirements.sh PY avx2` builds a second llama-cpp-python for AVX2 only (no AVX-512,
# no VNNI) into $CACHE/llama-cpp-python-VER-avx2 (a pip --target folder, not the environment):
# the llama.cpp of `bench_generate.py --emulate-avx2`, an AVX2-only CPU emulated on a newer one.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=$1
AVX2_ONLY=$([ "${2:-}" = avx2 ] && echo 1 || echo 0)
CACHE=${INT8KERN_CACHE:-$HOME/.cache/int8kern}
VER=$(sed -n 's/^llama-cpp-python==\([^ ]*\).*/\1/p' requirements-bench.txt)
SDIST_DIR=$CACHE/dist
SRC=$CACHE/llama-cpp-python-$VER
FAILED=build/llama-cpp.unavailable
mkdir -p build "$SDIST_DIR"

if ! "$PY" -c "import bitsandbytes, diskcache, sentencepiece" 2>/dev/null; then
  grep -v '^llama-cpp-python' requirements-bench.txt > build/requirements-bench-wheels.txt
  "$PY" -m pip install -q --no-deps -r build/requirements-bench-wheels.txt ||
    echo "int8kern: bitsandbytes/diskcache/sentencepiece not installed (no network?): benchmarks run without those anchors"
fi

if [ "$AVX2_ONLY" = 1 ]; then
  TARGET=$CACHE/llama-cpp-python-$VER-avx2
  FAILED=build/llama-cpp-avx2.unavailable
  export PYTHONPATH=$TARGET${PYTHONPATH:+:$PYTHONPATH}
fi
have_llama() { "$PY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VER' or
  ('$AVX2_ONLY' == '1' and not llama_cpp.__file__.startswith('${TARGET:-}/')))" 2>/dev/null; }
have_converter() { [ -f "$SRC/vendor/llama.cpp/convert_hf_to_gguf.py" ]; }
if have_llama && have_converter; then exit 0; fi
if [ -f "$FAILED" ]; then
  echo "int8kern: llama.cpp rows skipped: an earlier build failed ($FAILED; delete it to retry)"
  exit 0
fi

fail() {
  echo "$1" > "$FAILED"
  echo "int8kern: llama.cpp not available, its rows are skipped: $1"
  exit 0
}

SDIST=$SDIST_DIR/llama_cpp_python-$VER.tar.gz
if [ ! -f "$SDIST" ]; then
  "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VER" -d "$SDIST_DIR" \
    > build/llama-cpp.log 2>&1 || fail "pip download llama-cpp-python==$VER failed: $(tail -n 3 build/llama-cpp.log | tr '\n' ' ')"
fi
if ! have_converter; then
  rm -rf "$SRC.tmp" && mkdir -p "$SRC.tmp"
  tar xzf "$SDIST" -C "$SRC.tmp" --strip-components=1 --wildcards \
    '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion/*' \
    '*/vendor/llama.cpp/gguf-py/*' '*/vendor/llama.cpp/LICENSE' ||
    fail "could not unpack llama.cpp's converter from $SDIST"
  rm -rf "$SRC" && mv "$SRC.tmp" "$SRC"
fi
if ! have_llama; then
  # LLAVA_BUILD and the LLAMA_BUILD_* switches leave out what the benchmark does not load.
  COMMON="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
  if [ "$AVX2_ONLY" = 1 ]; then
    echo "int8kern: building llama-cpp-python $VER for AVX2 only into $TARGET (once; minutes; log: build/llama-cpp.log)"
    # What llama.cpp's CPU kernels can use on an AVX2-only EPYC (Zen 2/3): AVX2, FMA, F16C, BMI2.
    ISA="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
-DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF"
    DEST=(--target "$TARGET")
  else
    echo "int8kern: building llama-cpp-python $VER from source for this CPU (once; minutes; log: build/llama-cpp.log)"
    # -march=native: this CPU's AVX2/AVX-512/VNNI/AMX kernels, as a user building llama.cpp here gets.
    ISA="-DGGML_NATIVE=ON"
    DEST=()
  fi
  CMAKE_ARGS="$ISA $COMMON" CMAKE_BUILD_PARALLEL_LEVEL=${MAX_JOBS:-$(nproc)} \
    "$PY" -m pip install --no-deps "${DEST[@]}" "$SDIST" >> build/llama-cpp.log 2>&1 ||
    fail "building llama-cpp-python $VER failed: $(grep -m 3 -i 'error' build/llama-cpp.log | cut -c 1-300 | tr '\n' ' ')"
  have_llama || fail "llama-cpp-python $VER built but does not import"
fi
