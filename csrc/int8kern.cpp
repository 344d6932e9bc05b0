// int8kern: the op schemas, declared once. Each backend registers its kernels in the file
// that implements them (cpu/*.cpp, cuda/ops_cuda.cpp); int8_linear.cpp holds the argument
// checks of the LLM.int8() forward that both backends share (checks.h the rest). Fake (meta)
// kernels live in Python (int8kern/ops.py) so that torch.compile and torch.library.opcheck
// see every op.
#include <Python.h>
#include <torch/library.h>

#include "op_schemas.h"

extern "C" {
// `import int8kern._C` loads this shared library, which runs the static registrations below.
// Every op is reached through torch.ops.int8kern.*; the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(int8kern, m) { int8kern::define_ops(m); }
