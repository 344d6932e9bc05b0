// csrc/cuda/outliers.cu, compiled as host C++ for the emulated CUDA backend (int8kern._emu).
#include "../../cuda/outliers.cu"
