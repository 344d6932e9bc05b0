"""The benchmark scripts run end to end on tiny shapes (--dry-run) on the CPU, so that they
cannot rot between GPU sessions: every suite of bench_ops.py (the GPU suite included, on the
CPU; the generation table, bench_generate.py, on a tiny model) and bench_model.py's whole flow
(int8kern, float16, bitsandbytes when importable; eager and compiled decode). Each writes its
JSON, which is checked for the rows it must hold."""
import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _run(script, out, *args):
    proc = subprocess.run([sys.executable, os.path.join(BENCH, script), "--dry-run", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, f"{script} --dry-run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    (path,) = [p for p in out.iterdir() if p.suffix == ".json"]
    return json.loads(path.read_text()), proc.stdout


def test_bench_ops_dry_run(tmp_path):
    res, stdout = _run("bench_ops.py", tmp_path, "--device", "cpu")
    assert res["dry_run"] and set(res["timing"]) >= {"ms", "kernel_ms"}
    groups = {r["group"] for r in res["rows"]}
    assert groups >= {"ceiling", "quantize", "int8_matmul", "int8_linear"}
    lin = [r for r in res["rows"] if r["group"] == "int8_linear"]
    # the GPU suite's float16 layers, at both thresholds, against F.linear float16
    assert {(r["params"]["threshold"], r["params"]["M"]) for r in lin if "Linear float16" in r["vs"]} >= \
        {(6.0, 1), (0.0, 1), (6.0, 33), (0.0, 33)}
    for r in res["rows"]:
        assert r["ms"] > 0 and r["kernel_ms"] is None  # no kernel time off CUDA
        assert all(v > 0 for v in r["vs"].values())
    assert any(p.suffix == ".png" for p in tmp_path.iterdir()), stdout
    assert stdout.startswith("CPU: ") and "ISA: " in stdout.splitlines()[0]  # the ISA comes first
    gen = res["generate"]
    assert gen["cpu"]["isa"] and gen["threads"] >= 1
    rows = {r["method"]: r for r in gen["rows"]}
    assert set(rows) == {"llama.cpp F32", "llama.cpp BF16", "llama.cpp Q8_0", "transformers fp32, eager",
                         "transformers bf16, eager", "int8kern th 6, eager", "int8kern th 6, eager, lm_head int8",
                         "int8kern th 6, compiled, static cache", "int8kern th 6, compiled, int8kern attention",
                         "int8kern th 6, compiled C++, int8kern attention", "the same, torch's ops on 1 thread",
                         "the same, a greedy loop instead of generate()",
                         "the same, no Dynamo guards on the modules"}, stdout
    for name, r in rows.items():
        if name.startswith("llama.cpp") and r["error"]:
            continue  # llama.cpp not built here: the row keeps why
        assert r["error"] is None, (name, r["error"])
        assert r["prefill_ms"] > 0 and r["decode_ms"] > 0 and r["decode_samples"] == gen["new_tokens"] - 1
        assert len(r["tokens"]) == gen["new_tokens"] and r["decode_weight_MB"] > 0
    # the greedy loop decodes what generate() decodes (same model, threads and attention)
    loop = rows["the same, a greedy loop instead of generate()"]["tokens"]
    assert loop == rows["the same, torch's ops on 1 thread"]["tokens"]
    assert loop == rows["the same, no Dynamo guards on the modules"]["tokens"]
    # int8 weights: a decode step reads about a quarter of the float32 bytes once the lm_head is int8 too
    assert rows["int8kern th 6, eager, lm_head int8"]["decode_weight_MB"] < \
        0.3 * rows["transformers fp32, eager"]["decode_weight_MB"]
    if rows["llama.cpp Q8_0"]["error"] is None:  # the same float weights, converted by llama.cpp
        assert rows["llama.cpp F32"]["decode_weight_MB"] == pytest.approx(rows["transformers fp32, eager"]["decode_weight_MB"], rel=0.01)


def test_bench_generate_methods_filter(tmp_path):
    """--methods times only the named rows (and float32, the tokens' reference), each with the
    int8kern stalls its timed runs saw."""
    out = tmp_path / "gen.json"
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "bench_generate.py"), "--dry-run", "--out", str(out),
                           "--methods", "greedy loop,Q8_0"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    gen, stdout = json.loads(out.read_text()), proc.stdout
    names = [r["method"] for r in gen["rows"]]
    assert names == ["llama.cpp Q8_0", "transformers fp32, eager", "the same, a greedy loop instead of generate()"], \
        stdout
    assert gen["methods_filter"] == ["greedy loop", "Q8_0"]
    loop = gen["rows"][2]
    assert loop["error"] is None and loop["decode_samples"] == gen["new_tokens"] - 1
    assert isinstance(loop["int8kern_stalls"], int) and loop["int8kern_stalls"] >= 0
    # a name that matches nothing is an error that lists the names, not a table of float32 alone
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "bench_generate.py"), "--dry-run", "--out",
                           str(tmp_path / "none.json"), "--methods", "greedy loop,Q9_9"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "--methods Q9_9 names no method" in proc.stderr, proc.stderr[-2000:]
    assert "llama.cpp Q8_0" in proc.stderr and not (tmp_path / "none.json").exists()


def test_bench_model_dry_run(tmp_path):
    res, stdout = _run("bench_model.py", tmp_path, "--device", "cpu")
    methods = res["methods"]
    assert {"int8kern", "float16"} <= set(methods), stdout
    assert methods["int8kern"]["outlier_cols_layer0"] >= res["outlier_dims"]  # the planted features are outliers
    for name, row in methods.items():
        assert "error" not in row, (name, row)
        assert row["prefill_s"] > 0 and row["weights_GiB"] > 0
        for key in ("decode_eager", "decode_graphs"):
            assert row[key]["tok_per_s"] > 0, (name, key, row[key])
        assert row["decode_graphs"]["dynamo_graphs"] >= 1  # the decode step was compiled, fullgraph
    # the same greedy tokens, compiled or not (float16 itself; int8 ones may differ by rounding)
    assert methods["float16"]["decode_eager"]["first_tokens"] == methods["float16"]["decode_graphs"]["first_tokens"]


def test_bench_generate_emulating_avx2_dry_run(tmp_path):
    """--emulate-avx2 reruns the table in a process whose kernels (int8kern's, torch's, MKL's,
    oneDNN's, inductor's) are all capped at AVX2, with llama.cpp's AVX2-only build when one is
    there (scripts/bench_requirements.sh PY avx2); without it the llama.cpp rows say so."""
    sys.path.insert(0, BENCH)
    from timing import cpu_isa
    if not cpu_isa()["flags"]["avx2"]:
        pytest.skip("this CPU has no AVX2 to cap the kernels at")
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "bench_generate.py"), "--dry-run", "--emulate-avx2",
                           "--out", str(tmp_path / "gen.json")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    res = json.loads((tmp_path / "gen.json").read_text())
    assert res["emulated_isa"] == "avx2" and "EMULATING an AVX2-only CPU" in proc.stdout
    assert res["kernel_isa"] == {"int8kern": "avx2", "torch": "AVX2"}
    rows = {r["method"]: r for r in res["rows"]}
    assert rows["the same, a greedy loop instead of generate()"]["error"] is None
    q8 = rows["llama.cpp Q8_0"]
    if q8["error"] is None:  # the AVX2-only build: ggml reports no AVX-512 feature
        assert "AVX2 = 1" in res["llama_cpp_system_info"] and "AVX512" not in res["llama_cpp_system_info"]
    else:
        assert "AVX2" in q8["error"] or "llama" in q8["error"], q8["error"]
