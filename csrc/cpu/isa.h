// Which instruction set int8kern's hand-written CPU kernels may use.
//
// Detected once from CPUID (__builtin_cpu_supports). INT8KERN_CPU_ISA=generic|avx2|avx512|vnni,
// read once at the first CPU op, caps it: the kernels then run as on a CPU that has only that
// much (an AVX2-only machine's GEMM can be tested and timed on an AVX512-VNNI one). Asking for
// more than the CPU has, or for an unknown name, is an error naming the variable.
// Compiler-chosen variants (quantize_cpu.cpp's target_clones) are not capped.
#pragma once

#include <string>

namespace int8kern {
namespace cpu {

// Ordered: each level includes the ones below it.
enum class CpuIsa {
  kGeneric = 0,     // portable C++ only
  kAvx2 = 1,        // AVX2 (256-bit integer SIMD: vpmaddubsw, vpmaddwd, vpsignb)
  kAvx512 = 2,      // AVX-512 F/BW/VL/DQ (the dequantize epilogue and quantize loops)
  kAvx512Vnni = 3,  // AVX512-VNNI (vpdpbusd)
};

// The level the kernels use: detected, capped by INT8KERN_CPU_ISA (cached).
CpuIsa cpu_isa();

// The level this CPU supports, ignoring the override.
CpuIsa detected_cpu_isa();

// "generic", "avx2", "avx512", "vnni": the names INT8KERN_CPU_ISA takes.
const char* cpu_isa_name(CpuIsa isa);

}  // namespace cpu
}  // namespace int8kern
