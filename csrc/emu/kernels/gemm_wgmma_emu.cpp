// csrc/cuda/gemm_wgmma.cu, compiled as host C++ for the emulated CUDA backend (int8kern._emu).
#include "../../cuda/gemm_wgmma.cu"
