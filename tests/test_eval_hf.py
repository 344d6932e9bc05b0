"""python -m int8kern.eval --model smollm2 --compare-bnb: the seeds' comparison through
from_pretrained(quantization_config=...), on the real SmolLM2 and real text, CI-sized (32
tokens of text, 2 generated tokens): every row is there with its numbers, or (bitsandbytes
rows only) with the reason it could not run here."""
import json
import math

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from int8kern.eval import hf_compare, models  # noqa: E402
from int8kern.eval import run as ev  # noqa: E402


def test_compare_bnb_cli_writes_every_row(tmp_path, capsys):
    try:
        models.smollm2_safetensors_dir()
    except models.ModelPackageMissing as e:
        pytest.skip(str(e))
    rc = ev.main(["--model", "smollm2", "--compare-bnb", "--max-tokens", "32", "--window", "32",
                  "--gen-tokens", "2", "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "smollm2_hf.json").read_text())
    md = (tmp_path / "smollm2_hf.md").read_text()
    assert list(report["methods"]) == list(hf_compare.METHODS)
    for name, r in report["methods"].items():
        assert f"| {name} |" in md and name in printed
        if "skipped" in r:
            assert name in hf_compare.BNB, f"{name} must run here: {r['skipped']}"
            assert len(r["skipped"]) > 20  # a reason, not a flag
            continue
        assert math.isfinite(r["perplexity"]) and 1 < r["perplexity"] < 1000, (name, r)
        assert r["footprint_bytes"] > 0 and r["load_peak_rss_bytes"] > 0 and r["generate_s"] > 0, (name, r)
        assert r["generated_tokens"] == 2
    m = report["methods"]
    # the rows are what they claim: the linear layers' types, and the weights' bytes
    assert m["int8kern"]["linear_types"] == ["Int8LinearLt"]
    assert m["fp32"]["linear_types"] == m["bf16"]["linear_types"] == ["Linear"]
    assert m["int8kern"]["footprint_bytes"] < m["bf16"]["footprint_bytes"] < m["fp32"]["footprint_bytes"]
    if "skipped" not in m["bnb_int8"]:
        assert m["bnb_int8"]["linear_types"] == ["Linear8bitLt"]
    if "skipped" not in m["bnb_nf4"]:
        assert m["bnb_nf4"]["linear_types"] == ["Linear4bit"]
        assert m["bnb_nf4"]["footprint_bytes"] < m["int8kern"]["footprint_bytes"]


def test_compare_bnb_needs_smollm2(capsys):
    assert ev.main(["--model", "minilm", "--compare-bnb"]) == 2
    assert "--compare-bnb loads SmolLM2" in capsys.readouterr().err
