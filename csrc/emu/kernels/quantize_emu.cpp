// csrc/cuda/quantize.cu, compiled as host C++ for the emulated CUDA backend (int8kern._emu).
#include "../../cuda/quantize.cu"
