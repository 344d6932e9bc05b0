// int8kern: the op schemas, declared once. Each backend registers its kernels in the file
// that implements them (cpu/*.cpp, cuda/ops_cuda.cpp); int8_linear.cpp holds the argument
// checks of the LLM.int8() forward that both backends share (checks.h the rest). Fake (meta)
// kernels live in Python (int8kern/ops.py) so that torch.compile and torch.library.opcheck
// see every op.
#include <Python.h>
#include <torch/library.h>

#include "outlier_capacity.h"

extern "C" {
// `import int8kern._C` loads this shared library, which runs the static registrations below.
// Every op is reached through torch.ops.int8kern.*; the module holds only OUTLIER_CAPACITY
// (outlier_capacity.h), so that Python and the tests never repeat the number.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr &&
      PyModule_AddIntConstant(module, "OUTLIER_CAPACITY", int8kern::kOutlierCapacity) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

TORCH_LIBRARY(int8kern, m) {
  // x [M, K] float -> (q int8 [M, K], row_absmax float32 [M], outlier_cols int64 [n_out])
  m.def("quantize_rowwise(Tensor x, float threshold) -> (Tensor, Tensor, Tensor)");
  // a int8 [M, K], b int8 [N, K] -> a @ b.T, int32 [M, N], exact
  m.def("int8_matmul(Tensor a, Tensor b) -> Tensor");
  // acc int32 [M, N] -> acc * row_absmax[:, None] * col_absmax / 127^2 + bias + add
  m.def(
      "dequantize_matmul(Tensor acc, Tensor row_absmax, Tensor col_absmax, Tensor? bias, "
      "Tensor? add, ScalarType out_dtype) -> Tensor");
  // dequantize_matmul(int8_matmul(a, b), ...) without the int32 matrix in memory
  m.def(
      "int8_scaled_matmul(Tensor a, Tensor b, Tensor row_absmax, Tensor col_absmax, "
      "Tensor? bias, Tensor? add, ScalarType out_dtype) -> Tensor");
  // The LLM.int8() forward: y = x @ dequant(weight).T + bias, outliers in 16-bit
  m.def(
      "int8_linear(Tensor x, Tensor weight, Tensor weight_absmax, Tensor? bias, "
      "float threshold) -> Tensor");
}
