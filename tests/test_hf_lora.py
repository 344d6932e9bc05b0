"""LoRA with PEFT on a frozen int8kern base: SmolLM2-135M-Instruct (from its package, quantized
on load with Int8KernConfig) and real text (GPL-3).

To stay near a minute on a 2-core CPU, the adapters sit on every projection of the last
LAYERS decoder layers (peft's layers_to_transform), so the backward pass stops there, and the
text is BATCH x SEQ tokens; the model is the real one, all 30 layers in int8.
"""
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
peft = pytest.importorskip("peft")

import int8kern  # noqa: E402
import int8kern.hf  # noqa: E402
from int8kern.eval import models  # noqa: E402
from int8kern.hf.lora import Int8LoraLinear, load_adapter, lora_config, lora_target_modules  # noqa: E402

LAYERS, BATCH, SEQ, STEPS = 2, 4, 32, 20


@pytest.fixture(scope="module")
def ids(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    flat = tok(models.read_text()[:20000], return_tensors="pt").input_ids[0]
    return flat[: BATCH * SEQ].reshape(BATCH, SEQ)


def load_int8(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, quantization_config=int8kern.hf.Int8KernConfig())


def config_for(model):
    n = model.config.num_hidden_layers
    return lora_config(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=lora_target_modules(model),
                       layers_to_transform=list(range(n - LAYERS, n)))


def int8_state(model):
    """The int8 tensors of every Int8LinearLt, keyed by the name in the plain model (peft
    prefixes `base_model.model.` and puts a wrapped layer at `<name>.base_layer`)."""
    return {n.removeprefix("base_model.model.").replace(".base_layer", ""): (m.weight.clone(), m.weight_absmax.clone())
            for n, m in model.named_modules() if isinstance(m, int8kern.Int8LinearLt)}


@pytest.fixture(scope="module")
def trained(smollm2_dir, ids, tmp_path_factory):
    torch.manual_seed(0)  # LoRA's A matrices start random: the same run every time
    model = load_int8(smollm2_dir)
    before = int8_state(model)
    pm = peft.get_peft_model(model, config_for(model))
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    pm.train()
    for _ in range(STEPS):
        loss = pm(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    pm.eval()
    with torch.no_grad():
        final = pm(ids, labels=ids).loss.item()
    out = tmp_path_factory.mktemp("smollm2-lora")
    pm.save_pretrained(out)
    return pm, before, losses, final, out


def test_lora_target_modules_and_layers(trained):
    pm = trained[0]
    assert lora_target_modules(pm) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                       "v_proj"]
    wrapped = [n for n, m in pm.named_modules() if isinstance(m, Int8LoraLinear)]
    assert len(wrapped) == 7 * LAYERS
    assert all(isinstance(m.get_base_layer(), int8kern.Int8LinearLt)
               for m in pm.modules() if isinstance(m, Int8LoraLinear))
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


def test_lora_target_modules_refuses_a_float_model():
    with pytest.raises(ValueError, match="has no Int8LinearLt layer"):
        lora_target_modules(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_training_lowers_loss_and_leaves_int8_base_bit_identical(trained):
    pm, before, losses, final, _ = trained
    print(f"\nloss over {STEPS} steps: {losses[0]:.3f} -> {losses[-1]:.3f}, after training {final:.3f}")
    assert final < 0.8 * losses[0], losses
    after = int8_state(pm)
    assert after.keys() == before.keys() and len(after) == 30 * 7
    for name, (w, absmax) in before.items():
        assert after[name][0].dtype == torch.int8 and torch.equal(after[name][0], w), name
        assert torch.equal(after[name][1], absmax), name


def test_adapter_reloads_exactly_and_merges_within_requantization_error(trained, smollm2_dir, ids):
    from transformers import AutoModelForCausalLM

    pm, _, _, _, adapter_dir = trained
    with torch.no_grad():
        want = pm(ids).logits
        with pm.disable_adapter():
            base_logits = pm(ids).logits

    # Reload: a fresh int8 base, the adapter read back with the mapping registered again.
    again = load_adapter(load_int8(smollm2_dir), adapter_dir)
    assert sum(isinstance(m, Int8LoraLinear) for m in again.modules()) == 7 * LAYERS
    with torch.no_grad():
        assert torch.equal(again(ids).logits, want)
    # Without the mapping, peft refuses the Int8LinearLt targets (nothing loads silently wrong).
    with pytest.raises(ValueError, match="Int8LinearLt"):
        peft.PeftModel.from_pretrained(load_int8(smollm2_dir), adapter_dir)

    # Merge: each targeted weight is dequantized, the delta added in float32, and the sum
    # quantized again row by row. The bound per weight is half a quantization step of the new
    # row scale (step = absmax' / 127; round to nearest), plus float32 rounding, counted in steps:
    # the scale 127 / absmax' and the product w * scale (<= 127) are each rounded to float32
    # (<= 127 * 2^-24 steps each), and so are the two products of the dequantization
    # q * (absmax' / 127) (<= 127 * 2^-24 steps each). Seen: 0.5000029 steps.
    layers = {n: m for n, m in again.named_modules() if isinstance(m, Int8LoraLinear)}
    exact = {n: m.get_base_layer().weight.float() * (m.get_base_layer().weight_absmax / 127)[:, None]
             + m.get_delta_weight("default") for n, m in layers.items()}
    with pytest.warns(UserWarning, match="rounds it again"):
        merged = again.merge_and_unload()
    assert not any(isinstance(m, Int8LoraLinear) for m in merged.modules())
    mods = dict(merged.named_modules())
    for name, w in exact.items():
        layer = mods[name.removeprefix("base_model.model.")]
        assert isinstance(layer, int8kern.Int8LinearLt) and layer.weight.dtype == torch.int8
        got = layer.weight.float() * (layer.weight_absmax / 127)[:, None]
        step = layer.weight_absmax[:, None] / 127
        assert ((got - w).abs() <= (0.5 + 4 * 127 * 2**-24) * step).all(), name

    # In the logits: the merge adds one rounding, of the same size as int8 quantization, to
    # 7 * LAYERS of the 210 layers; so it must move the logits less than quantizing all 210
    # layers does (int8 base vs fp32, same text), and far less than the adapter itself does
    # (else this bound could not catch a merge that dropped the delta).
    with torch.no_grad():
        got = merged(ids).logits
        fp32 = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)(ids).logits
    merge_err = (got - want).abs().mean().item()
    quant_err = (base_logits - fp32).abs().mean().item()
    adapter_effect = (want - base_logits).abs().mean().item()
    print(f"\nmean |logit diff|: merged vs adapter {merge_err:.4f}, int8 base vs fp32 {quant_err:.4f}, "
          f"adapter vs base {adapter_effect:.4f}")
    assert merge_err <= quant_err < adapter_effect
    agree_merge = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    agree_quant = (base_logits.argmax(-1) == fp32.argmax(-1)).float().mean().item()
    print(f"top-1 agreement: merged vs adapter {agree_merge:.3f}, int8 base vs fp32 {agree_quant:.3f}")
    # Same argument for the top-1 tokens (seen over four seeds: 0.91-0.99 against 0.875).
    assert agree_merge >= agree_quant


@pytest.mark.parametrize("kwargs", [None, {"use_reentrant": True}])
def test_gradient_checkpointing_gives_the_same_gradients(smollm2_dir, ids, kwargs):
    """With checkpointing the layers' forward is recomputed in the backward pass; the adapter
    gradients must be those of a plain backward. The reentrant variant only sees gradients
    through layers whose input requires grad: enable_input_require_grads provides that."""
    model = load_int8(smollm2_dir)
    pm = peft.get_peft_model(model, config_for(model))
    torch.manual_seed(0)
    for n, p in pm.named_parameters():  # B starts at zero: give it values so A's gradient is non-zero too
        if ".lora_B." in n:
            torch.nn.init.normal_(p, std=0.02)
    batch = ids[:2]

    def grads():
        pm.zero_grad()
        pm(batch, labels=batch).loss.backward()
        return {n: p.grad.clone() for n, p in pm.named_parameters() if p.requires_grad}

    plain = grads()
    pm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    pm.enable_input_require_grads()
    pm.train()
    assert pm.get_base_model().model.gradient_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and len(plain) == 2 * 7 * LAYERS
    for n in plain:
        assert checkpointed[n].abs().sum() > 0, n
        torch.testing.assert_close(checkpointed[n], plain[n], rtol=1e-4, atol=1e-6, msg=n)


def test_only_plain_lora():
    """DoRA and peft's other variants are not written for Int8LinearLt: peft refuses them."""
    model = torch.nn.Sequential()
    model.add_module("proj", int8kern.Int8LinearLt(16, 8))
    with pytest.raises(ValueError, match="unsupported variant combination: \\('use_dora',\\)"):
        peft.get_peft_model(model, lora_config(r=2, target_modules=["proj"], use_dora=True))
    lora = peft.get_peft_model(model, lora_config(r=2, target_modules=["proj"]))
    assert isinstance(lora.base_model.model.proj, Int8LoraLinear)


def test_merge_then_unmerge_on_one_layer():
    """merge() folds the delta into the int8 weight, unmerge() takes it out again: each a
    dequantize-add-requantize, so after both the weight is back within two roundings (half a
    step of the merged row scale, then half a step of the final one) of where it started, not
    bit-exact; the merged layer's forward is the adapter layer's within the merge rounding."""
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("proj", int8kern.Int8LinearLt(64, 48))
    lora = peft.get_peft_model(model, lora_config(r=4, lora_alpha=8, target_modules=["proj"]))
    layer = lora.base_model.model.proj
    torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.05)
    base = layer.get_base_layer()
    w0 = base.weight.float() * (base.weight_absmax / 127)[:, None]
    x = torch.randn(5, 64)
    with torch.no_grad():
        want = lora(x)
        with pytest.warns(UserWarning, match="rounds it again"):
            layer.merge()
        assert layer.merged
        merged = lora(x)  # base only: the adapter is inside the weight now
    step_merged = base.weight_absmax / 127
    assert layer.get_delta_weight("default").abs().max() > 10 * step_merged.max()  # not lost in rounding
    # y = x @ W.T: a weight error of at most half a step per entry moves y[n] by at most
    # 0.5 * step[n] * sum_k |x[k]|; the int8 rounding of x (the layer's own error) fits in the other half
    assert ((merged - want).abs() <= step_merged * x.abs().sum(1, keepdim=True)).all()
    layer.unmerge()
    assert not layer.merged
    step = base.weight_absmax / 127
    w1 = base.weight.float() * step[:, None]
    bound = (0.5 + 4 * 127 * 2**-24) * (step_merged + step)
    assert ((w1 - w0).abs() <= bound[:, None]).all()
