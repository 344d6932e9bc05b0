// One constant shared by the CUDA kernels (csrc/cuda/*.cu: no torch headers), the host code
// and Python (exported as int8kern._C.OUTLIER_CAPACITY): a dependency-free header on purpose.
#pragma once

namespace int8kern {

// Outlier columns the CUDA int8_linear multiplies on its fast path. The outlier count is only
// known on the device, so the 16-bit outlier product is a fixed-shape cuBLAS GEMM
// [M, kOutlierCapacity] x [kOutlierCapacity, N] over the gathered columns (zero-padded past
// the count). A call with more outlier columns than this is still right (within the
// reference's tolerance) and still sync-free: a spill kernel then recomputes the whole outlier
// product on CUDA cores, slower. Cost of the fixed shape, paid on every call with threshold > 0:
// x_out and w_out hold 2 * kOutlierCapacity bytes per row of x and of the weight in 16-bit,
// written once and read once by cuBLAS; next to a K = 4096 int8 weight row that is +12.5% of
// the bytes a decode step (small M) moves. 128 is ~8x the mean count measured on SmolLM2
// (16 columns of K = 576..1536); lower it to trade decode bytes for more spills.
constexpr int kOutlierCapacity = 128;

}  // namespace int8kern
