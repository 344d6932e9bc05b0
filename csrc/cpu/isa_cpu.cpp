// isa.h: the CPU instruction-set level, detected and overridable.
#include "isa.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

namespace int8kern {
namespace cpu {

CpuIsa detected_cpu_isa() {
  static const CpuIsa isa = [] {
    if (!__builtin_cpu_supports("avx2")) return CpuIsa::kGeneric;
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")))
      return CpuIsa::kAvx2;
    if (!__builtin_cpu_supports("avx512vnni")) return CpuIsa::kAvx512;
    return CpuIsa::kAvx512Vnni;
  }();
  return isa;
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kGeneric: return "generic";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx512Vnni: return "vnni";
  }
  return "?";
}

CpuIsa cpu_isa() {
  static const CpuIsa isa = [] {
    const CpuIsa detected = detected_cpu_isa();
    const char* env = std::getenv("INT8KERN_CPU_ISA");
    if (env == nullptr || *env == '\0') return detected;
    for (CpuIsa asked : {CpuIsa::kGeneric, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Vnni}) {
      if (std::strcmp(env, cpu_isa_name(asked)) != 0) continue;
      TORCH_CHECK(asked <= detected, "INT8KERN_CPU_ISA=", env, " asks for more than this CPU has (",
                  cpu_isa_name(detected), ")");
      return asked;
    }
    TORCH_CHECK(false, "INT8KERN_CPU_ISA must be one of generic, avx2, avx512, vnni; got '", env, "'");
    return detected;  // not reached
  }();
  return isa;
}

namespace {
std::string cpu_isa_op() { return cpu_isa_name(cpu_isa()); }
}  // namespace

TORCH_LIBRARY_FRAGMENT(int8kern, m) {
  // The instruction-set level the CPU kernels use (cpu_isa(), isa.h).
  m.def("_cpu_isa() -> str", &cpu_isa_op);
}

}  // namespace cpu
}  // namespace int8kern
