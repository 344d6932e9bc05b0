// csrc/cuda/gemm_mma.cu, compiled as host C++ for the emulated CUDA backend (int8kern._emu).
#include "../../cuda/gemm_mma.cu"
