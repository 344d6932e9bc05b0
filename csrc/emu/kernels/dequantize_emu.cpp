// csrc/cuda/dequantize.cu, compiled as host C++ for the emulated CUDA backend (int8kern._emu).
#include "../../cuda/dequantize.cu"
