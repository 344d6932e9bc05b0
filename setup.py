"""Build int8kern._C with torch.utils.cpp_extension.

CUDA sources are compiled whenever torch is a CUDA build and nvcc is found, even with no
GPU visible; otherwise a CPU-only extension is built. Environment:
  INT8KERN_SKIP_CUDA=1     build the CPU-only extension
  TORCH_CUDA_ARCH_LIST     CUDA archs (default "8.0;9.0a": A100 and H100, plus sm_80 PTX)
  CUDA_HOME                the CUDA toolkit (default: torch's guess, else /usr/local/cuda)
  MAX_JOBS                 parallel compile jobs (ninja)
"""
import glob
import os
import shutil
import sys

from setuptools import setup

try:
    import torch
except ImportError:
    sys.exit(
        "int8kern compiles against the torch you will import, so it needs torch installed first "
        "and no build isolation:\n    pip install torch\n    pip install --no-build-isolation ."
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
if with_cuda:
    sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
    ext = CUDAExtension(
        "int8kern._C",
        sources,
        extra_compile_args={
            "cxx": cxx_flags + ["-DINT8KERN_WITH_CUDA"],
            "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo", "-Xptxas=-O3"],
        },
        include_dirs=[os.path.join(here, "csrc")],
        extra_link_args=link_flags,
    )
else:
    ext = CppExtension("int8kern._C", sources, extra_compile_args={"cxx": cxx_flags},
                       include_dirs=[os.path.join(here, "csrc")], extra_link_args=link_flags)
print(f"int8kern: building the {'CUDA + CPU' if with_cuda else 'CPU-only'} extension "
      f"(torch {torch.__version__}, CUDA {torch.version.cuda}, CUDA_HOME {cuda_home})")

# Name, version and packages are in pyproject.toml.
setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension},
)
