"""A checkpoint that bitsandbytes 0.50.2 itself writes (LLM.int8(), its CPU backend) from
SmolLM2-135M-Instruct loads into int8kern without bitsandbytes: the same int8 values and
scales as the checkpoint, and mostly the same top-1 tokens as bitsandbytes' forward.

bitsandbytes runs only in a subprocess (it writes the checkpoint and its logits), so this
process shows that int8kern does not need it.
"""
import importlib.util
import subprocess
import sys
import textwrap

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
if importlib.util.find_spec("bitsandbytes") is None:
    pytest.skip("bitsandbytes is not installed (pip install bitsandbytes==0.50.2): it writes the checkpoint "
                "this test reads", allow_module_level=True)

import int8kern  # noqa: E402
import int8kern.hf  # noqa: E402
from int8kern.eval import models  # noqa: E402

TOKENS = 128

WRITE = """
import sys, torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
src, out, ids = sys.argv[1], sys.argv[2], torch.load(sys.argv[3])
cfg = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)
model = AutoModelForCausalLM.from_pretrained(src, quantization_config=cfg, dtype=torch.float32)
model.save_pretrained(out)
with torch.no_grad():
    torch.save(model(ids).logits, out + "/bnb_logits.pt")
"""


def test_bitsandbytes_checkpoint(smollm2_dir, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = tok(models.read_text()[:4000], return_tensors="pt").input_ids[:, :TOKENS]
    torch.save(ids, tmp_path / "ids.pt")
    bnb_dir = tmp_path / "smollm2-bnb8"
    subprocess.run([sys.executable, "-c", textwrap.dedent(WRITE), str(smollm2_dir), str(bnb_dir),
                    str(tmp_path / "ids.pt")], check=True, capture_output=True, text=True)

    bnb_was_imported = "bitsandbytes" in sys.modules  # by another test in this session
    model = AutoModelForCausalLM.from_pretrained(bnb_dir, config=int8kern.hf.config_from_bitsandbytes(bnb_dir))
    assert bnb_was_imported or "bitsandbytes" not in sys.modules
    layers = {n: m for n, m in model.named_modules() if isinstance(m, int8kern.Int8LinearLt)}
    assert len(layers) == 30 * 7 and model.config.quantization_config.threshold == 6.0
    with safe_open(bnb_dir / "model.safetensors", "pt") as f:
        for name, layer in layers.items():
            assert torch.equal(layer.weight, f.get_tensor(name + ".weight")), name
            assert torch.equal(layer.weight_absmax, f.get_tensor(name + ".SCB")), name

    with torch.no_grad():
        ours = model(ids).logits.float()
        ref = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)(ids).logits
    # bitsandbytes' arithmetic differs (its CPU path casts float32 to float16: its SCB differ
    # from int8kern's float32 absmax in 72738 rows, 0.5% of its int8 values by one, and its
    # forward casts activations to float16), so the logits differ; recorded here, and held to
    # the same top-1 tokens on most positions. On this text int8kern's plain run is further
    # from fp32 than bitsandbytes' (mean |logit - fp32| 0.81 vs 0.67). Why (2026-11-30, same
    # weights, this checkpoint): not a bug, but one draw of chaotic rounding noise.
    # * Layer by layer, fed the same input, both are equally close to the float product with
    #   the dequantized weight (x @ W_deq.T): mean relative error over the 210 layers 0.021932
    #   for int8kern, 0.021935 for bitsandbytes (its absmax also counts the non-outlier entries
    #   of outlier columns, slightly coarser; its fp16 cast of x adds 2^-11, much less than int8's
    #   1/254; its dequantize constant is 6.200124e-05, not 1/127^2 = 6.2000124e-05, 2e-5 relative).
    # * End to end, a last-bit change of the input flips roundings that grow layer by layer
    #   (int8kern.eval.run.dithered_perplexity). Dithering the embeddings by one float16 ulp
    #   (bitsandbytes casts to float16, so a float32 ulp does not move it), 10 draws each:
    #   int8kern 0.697 +- 0.037 (0.638-0.751), bitsandbytes 0.702 +- 0.047 (0.658-0.816). The
    #   plain runs, 0.813 and 0.666, are single draws from these same distributions.
    theirs = torch.load(bnb_dir / "bnb_logits.pt").float()
    err_ours, err_bnb = (ours - ref).abs().mean(), (theirs - ref).abs().mean()
    agree = (ours.argmax(-1) == theirs.argmax(-1)).float().mean()
    print(f"\nmean |logit - fp32|: int8kern {err_ours:.4f}, bitsandbytes {err_bnb:.4f}; "
          f"same top-1 token as bitsandbytes at {agree:.1%} of {TOKENS} positions")
    assert agree >= 0.85
