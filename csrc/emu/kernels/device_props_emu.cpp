// csrc/cuda/device_props.cu, compiled as host C++ for the emulated CUDA backend (int8kern._emu).
#include "../../cuda/device_props.cu"
