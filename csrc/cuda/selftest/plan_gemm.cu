// The GEMM planner (gemm_plan.cuh) run on the host, for a device described on the command line:
// which kernel family, K split and workspace a problem gets. No GPU needed, so the plans that
// tests and runbooks rely on (which shapes the wgmma kernel may take; where split-K runs) are
// checked on any machine (tests/test_gemm_plan.py).
//   plan_gemm SMS SMEM_PER_SM M N K [workspace 0|1] ...   (M N K [ws] repeated)
// prints one line per problem: "M N K family split kt_per_split workspace_elems plain".
#include <cstdio>
#include <cstdlib>

#include "../gemm_plan.cuh"

using namespace int8kern::cuda;

static const char* family_name(Family f) {
  switch (f) {
    case Family::kBig: return "big";
    case Family::kSmall: return "small";
    case Family::kDecode: return "decode";
    case Family::kMid: return "mid";
  }
  return "?";
}

int main(int argc, char** argv) {
  if (argc < 6 || (argc - 3) % 4 != 0) {
    std::fprintf(stderr, "usage: %s SMS SMEM_PER_SM (M N K WORKSPACE)...\n", argv[0]);
    return 2;
  }
  DeviceProps dev;
  dev.device = 0;
  dev.major = 9;
  dev.sms = std::atoi(argv[1]);
  dev.smem_per_sm = std::atoi(argv[2]);
  for (int i = 3; i + 3 < argc; i += 4) {
    Int8GemmParams p;
    p.M = std::atoll(argv[i]);
    p.N = std::atoll(argv[i + 1]);
    p.K = std::atoll(argv[i + 2]);
    const bool workspace = std::atoi(argv[i + 3]) != 0;
    // As launch_int8_gemm plans: with the workspace ops_cuda.cpp attaches (it asks for one
    // exactly when the planner, free to split, splits).
    const GemmPlan can = plan_gemm(p, true, dev);
    const GemmPlan plan = plan_gemm(p, workspace && can.split > 1, dev);
    const long long ws = can.split > 1 ? (long long)(p.M * p.N + can.tiles) : 0;
    std::printf("%lld %lld %lld %s %lld %lld %lld %d\n", (long long)p.M, (long long)p.N, (long long)p.K,
                family_name(plan.family), (long long)plan.split, (long long)plan.kt_per_split, ws,
                is_plain_tiled(plan) ? 1 : 0);
  }
  return 0;
}
