"""Build int8kern._C with torch.utils.cpp_extension.

CUDA sources are compiled whenever torch is a CUDA build and nvcc is found, even with no
GPU visible; otherwise a CPU-only extension is built. Environment:
  INT8KERN_SKIP_CUDA=1     build the CPU-only extension
  TORCH_CUDA_ARCH_LIST     CUDA archs (default "8.0+PTX;9.0a": A100 and H100/H200, plus sm_80
                           PTX); the wgmma GEMM is built only when it has 9.0a
  CUDA_HOME                the CUDA toolkit (default: torch's guess, else /usr/local/cuda)
  MAX_JOBS                 parallel compile jobs (ninja)
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

try:
    import torch
except ImportError:
    # Under pip, _build/int8kern_build.py has already put the target environment on sys.path,
    # so torch is missing there. uv builds in a venv of its own that cannot see the target.
    sys.exit(
        "int8kern compiles against the torch you will import, so it needs torch installed first, "
        f"in the environment int8kern is installed into (found no torch for {sys.executable}):\n"
        "    pip install torch\n    pip install .\n"
        "With uv, which builds in an isolated environment of its own, build against the target's "
        "torch with:\n    uv pip install --no-build-isolation ."
    )


def find_cuda_home():
    """torch guesses CUDA_HOME from `which nvcc`; a wrapper script such as /usr/local/bin/nvcc
    makes that guess wrong. Keep a guess only if it holds bin/nvcc and the runtime headers."""

    def is_toolkit(path):
        return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
            os.path.join(path, "include", "cuda_runtime.h")
        )

    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    return next((c for c in candidates if is_toolkit(c)), None)


cuda_home = find_cuda_home()
skip_cuda = os.environ.get("INT8KERN_SKIP_CUDA", "0") not in ("", "0")
with_cuda = bool(torch.version.cuda) and cuda_home is not None and not skip_cuda
if with_cuda:
    os.environ["CUDA_HOME"] = cuda_home  # before cpp_extension reads it
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0+PTX;9.0a")

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
# -fopenmp: at::parallel_for is a header template that runs serially unless the extension
# itself is compiled with OpenMP (_OPENMP); linked, it shares torch's libgomp.so.1.
cxx_flags = ["-O3", "-std=c++20", "-fno-math-errno", "-ffp-contract=off", "-fopenmp", "-Wall",
             "-Wno-unused-function"]
link_flags = ["-fopenmp"]
nvcc_flags = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo", "-Xptxas=-O3"]
# Code for one architecture only (the wgmma GEMM: wgmma and setmaxnreg exist on sm_90a alone)
# is compiled on its own for that architecture, as torchao and flash-attention do, and linked
# into _C only when TORCH_CUDA_ARCH_LIST asks for it; gemm_mma.cu finds it through a weak
# symbol, so nothing else needs to know. No kernel then carries a trap body for other archs.
SM90A_SOURCES = ["csrc/cuda/gemm_wgmma.cu"]
CUDA_HEADERS = sorted(glob.glob("csrc/cuda/*.cuh") + glob.glob("csrc/cuda/*.h") + glob.glob("csrc/*.h"))
archs = set(re.split(r"[;\s]+", os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace("+PTX", "")))
with_sm90a = with_cuda and "9.0a" in archs
if with_cuda:
    cuda_sources = sorted(set(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu")) - set(SM90A_SOURCES))
    ext = CUDAExtension(
        "int8kern._C",
        sources + cuda_sources,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        include_dirs=[os.path.join(here, "csrc")],
        extra_link_args=link_flags,
        # a change to the sm_90a sources (built outside ninja, below) relinks _C
        depends=SM90A_SOURCES + CUDA_HEADERS,
    )
else:
    ext = CppExtension("int8kern._C", sources, extra_compile_args={"cxx": cxx_flags},
                       include_dirs=[os.path.join(here, "csrc")], extra_link_args=link_flags)
# int8kern._emu: the same CUDA kernels and host code compiled as host C++ under the warp-level
# emulator (csrc/emu), run on CPU tensors through torch.ops.int8kern_emu (int8kern.emu). It needs
# the CUDA toolkit's headers only (cuda_fp16.h and friends compile for the host), no GPU and no
# CUDA build of torch. INT8KERN_SKIP_CUDA=1 skips it too.
with_emu = cuda_home is not None and not skip_cuda
ext_modules = [ext]
if with_emu:
    emu_sources = sorted(["csrc/emu/emu_runtime.cpp", "csrc/emu/ops_emu.cpp", "csrc/int8_linear.cpp"]
                         + glob.glob("csrc/emu/kernels/*.cpp"))
    emu_flags = [f for f in cxx_flags if f != "-O3"] + [
        "-O2", "-DINT8KERN_EMU", "-Wno-psabi", "-Wno-unknown-pragmas", "-Wno-class-memaccess"]
    ext_modules.append(CppExtension(
        "int8kern._emu", emu_sources, extra_compile_args={"cxx": emu_flags},
        include_dirs=[os.path.join(here, "csrc"), os.path.join(cuda_home, "include")],
        extra_link_args=link_flags,
        depends=CUDA_HEADERS + sorted(glob.glob("csrc/emu/*.h") + glob.glob("csrc/cuda/*.cu"))))
print(f"int8kern: building the {'CUDA + CPU' if with_cuda else 'CPU-only'} extension "
      f"(torch {torch.__version__}, CUDA {torch.version.cuda}, CUDA_HOME {cuda_home}"
      + (f", archs {os.environ['TORCH_CUDA_ARCH_LIST']}; wgmma GEMM {'built' if with_sm90a else 'not built (no 9.0a)'}"
         if with_cuda else "") + ")" + ("; the CUDA emulator (int8kern._emu)" if with_emu else ""))


class BuildExtensionWithArchObjects(BuildExtension):
    """BuildExtension, plus SM90A_SOURCES compiled by nvcc for sm_90a alone and linked into _C
    (cpp_extension compiles every .cu of an extension for the same list of archs)."""

    def build_extensions(self):
        if with_sm90a:
            for ext_ in self.extensions:
                if ext_.name != "int8kern._C":
                    continue  # the emulator's module runs the host-compiled copy of the same source
                ext_.extra_objects = [self._compile_sm90a(src) for src in SM90A_SOURCES]
        super().build_extensions()

    def _compile_sm90a(self, src):
        obj = os.path.join(self.build_temp, "sm90a", os.path.basename(src) + ".o")
        if os.path.exists(obj) and os.path.getmtime(obj) >= max(os.path.getmtime(d) for d in [src] + CUDA_HEADERS):
            return obj
        os.makedirs(os.path.dirname(obj), exist_ok=True)
        abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
        cmd = [os.path.join(cuda_home, "bin", "nvcc"), "-c", src, "-o", obj, *nvcc_flags,
               "-gencode", "arch=compute_90a,code=sm_90a", "-Xcompiler", "-fPIC", abi,
               "-I", os.path.join(here, "csrc")]
        print("int8kern: " + " ".join(cmd))
        subprocess.check_call(cmd)
        return obj


# Name, version and packages are in pyproject.toml.
setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtensionWithArchObjects},
)
