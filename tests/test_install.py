"""`pip install .` as a user types it: in a fresh venv that has torch, no flags, offline too.

The slow test builds int8kern twice from a copy of the repository (minutes on a small CPU), so it
runs only where INT8KERN_RUN_SLOW=1 (.ci/run sets it; see conftest.py). The fast tests check
the package metadata of the installed int8kern against the source.
"""
import importlib.metadata
import json
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import int8kern

REPO = Path(__file__).resolve().parents[1]
EXTRAS = {"hf", "test", "bench"}  # the extras README tells people to install


def _cuda_build_expected(env):
    if env.get("INT8KERN_SKIP_CUDA", "0") not in ("", "0") or not torch.version.cuda:
        return False
    home = env.get("CUDA_HOME") or "/usr/local/cuda"
    return os.path.isfile(os.path.join(home, "bin", "nvcc")) or shutil.which("nvcc") is not None


def _fresh_venv(path):
    """A new venv whose only package is a .pth file naming this interpreter's site directories.

    Copying torch into it would be 5 GB; the .pth gives it torch (and the pip and setuptools
    beside it) the way a venv that `pip install torch` filled would have them, at run time and
    in pip's isolated build, where int8kern's backend re-adds the venv's site directory with its
    .pth files. `--system-site-packages` would not do: when this interpreter is itself a venv,
    the base interpreter's site-packages hold no torch. `--without-pip`: the venv's own bundled
    setuptools (65 on Python 3.11) would shadow the setuptools >= 77 that torch requires, a
    state no environment with torch installed by pip is in.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    py = path / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
    Path(purelib, "parent_env.pth").write_text("".join(d + "\n" for d in dirs))
    return py, Path(purelib)


def _copy_repo(dest):
    """What a user's checkout holds for the build: sources, metadata, the in-tree backend; no
    build outputs (a built int8kern/_C*.so would be packaged as it is)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "build")
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for name in ("_build", "csrc", "int8kern"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)


def _pip_install(py, src, *flags, env):
    cmd = [str(py), "-m", "pip", "install", *flags, "."]
    out = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
    log = out.stdout + out.stderr
    assert out.returncode == 0, f"{' '.join(cmd)} failed (exit {out.returncode}):\n{log[-6000:]}"
    # The point of the backend: the build uses the venv's torch and never fetches one.
    fetched = [line for line in log.splitlines() if re.match(r"\s*(Collecting|Downloading) torch\b", line)]
    assert not fetched, f"pip fetched a torch for the build: {fetched}"
    return log


def _probe(py, env):
    """Import int8kern in the fresh venv and report where from, its version, its metadata and
    which backends have kernels."""
    code = (
        "import importlib.metadata as md, json, torch, int8kern\n"
        "has = lambda key: torch._C._dispatch_has_kernel_for_dispatch_key('int8kern::int8_matmul', key)\n"
        "m = md.metadata('int8kern')\n"
        "print(json.dumps({'file': int8kern.__file__, 'version': int8kern.__version__,\n"
        "    'dist_version': md.version('int8kern'), 'extras': m.get_all('Provides-Extra') or [],\n"
        "    'cpu': has('CPU'), 'cuda': has('CUDA'),\n"
        "    'y': int8kern.int8_matmul(torch.ones(2, 3, dtype=torch.int8), torch.ones(4, 3, dtype=torch.int8)).tolist()}))\n"
    )
    # Run from outside the repository copy so that `import int8kern` finds the installed one.
    out = subprocess.run([str(py), "-c", code], env=env, capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, f"import int8kern in the fresh venv failed:\n{out.stderr[-4000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("flags,skip_cuda", [
    # The user's command exactly; CUDA kernels compiled where a CUDA torch and nvcc are present.
    ((), False),
    # Offline. CPU-only, so that CI pays for one CUDA build, not two: what --no-index changes
    # is pip's side, which does not depend on what setup.py compiles.
    (("--no-index",), True),
], ids=["plain", "no-index-cpu-only"])
def test_pip_install_in_fresh_venv(tmp_path, flags, skip_cuda):
    venv, src = tmp_path / "venv", tmp_path / "src"
    src.mkdir()
    _copy_repo(src)
    py, purelib = _fresh_venv(venv)
    env = {k: v for k, v in os.environ.items()
           # None of the caller's Python or venv settings, and no local wheel directory: the
           # offline run must have nothing to install from.
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_FIND_LINKS", "PIP_NO_BUILD_ISOLATION")}
    if skip_cuda:
        env["INT8KERN_SKIP_CUDA"] = "1"
    else:
        env.pop("INT8KERN_SKIP_CUDA", None)
    _pip_install(py, src, *flags, env=env)

    got = _probe(py, env)
    assert Path(got["file"]).is_relative_to(purelib), f"imported {got['file']}, not the fresh install in {purelib}"
    assert got["y"] == [[3] * 4] * 2
    assert got["cpu"], "no CPU kernels registered"
    expected = _cuda_build_expected(env)
    assert got["cuda"] == expected, (
        f"CUDA kernels registered: {got['cuda']}, expected {expected} (torch CUDA {torch.version.cuda}, "
        f"INT8KERN_SKIP_CUDA={env.get('INT8KERN_SKIP_CUDA')}, nvcc {shutil.which('nvcc')}, CUDA_HOME {env.get('CUDA_HOME')})")
    assert got["version"] == got["dist_version"] == int8kern.__version__
    assert EXTRAS <= set(got["extras"]), f"package metadata names extras {got['extras']}, expected {sorted(EXTRAS)}"
    pip_show = subprocess.run([str(py), "-m", "pip", "show", "int8kern"], env=env, capture_output=True,
                              text=True, check=True, cwd="/").stdout
    assert f"Version: {int8kern.__version__}\n" in pip_show, pip_show


def test_installed_metadata():
    """int8kern.__version__ is the one place the version is written (pyproject.toml reads it):
    what `pip show int8kern` prints must be the same string; the extras are in the metadata."""
    assert importlib.metadata.version("int8kern") == int8kern.__version__
    extras = set(importlib.metadata.metadata("int8kern").get_all("Provides-Extra") or [])
    assert EXTRAS <= extras, f"installed int8kern's metadata names extras {sorted(extras)}, expected {sorted(EXTRAS)}"
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"], "pyproject.toml must take the version from int8kern"
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "int8kern.__version__"}


def test_readme_extras_exist():
    """Every `pip install ".[x]"` extra README names is declared in pyproject.toml."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
    named = set(re.findall(r"\.\[(\w+)\]", (REPO / "README.md").read_text()))
    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert named, "README names no extras"
    assert named <= declared, f"README names extras {sorted(named - declared)} that pyproject.toml lacks"
    assert EXTRAS <= declared, f"pyproject.toml lacks extras {sorted(EXTRAS - declared)}"
