// The device properties the CUDA code needs (GEMM planner, wgmma path, ops_cuda.cpp's checks),
// queried once per device: an attribute query costs microseconds, a decode GEMM a few.
#include <mutex>

#include "launchers.h"

namespace int8kern {
namespace cuda {
namespace {

DeviceProps query(int device) {
  DeviceProps p;
  p.device = device;
  const cudaDeviceAttr attrs[] = {cudaDevAttrComputeCapabilityMajor, cudaDevAttrComputeCapabilityMinor,
                                  cudaDevAttrMultiProcessorCount,
                                  cudaDevAttrMaxSharedMemoryPerMultiprocessor,
                                  cudaDevAttrMaxSharedMemoryPerBlockOptin};
  int* fields[] = {&p.major, &p.minor, &p.sms, &p.smem_per_sm, &p.smem_per_block_optin};
  for (int i = 0; i < 5 && p.error == cudaSuccess; ++i)
    p.error = cudaDeviceGetAttribute(fields[i], attrs[i], device);
  if (p.error != cudaSuccess) (void)cudaGetLastError();  // reported through p.error instead
  return p;
}

}  // namespace

const DeviceProps& device_props(int device) {
  constexpr int kMaxDevices = 64;
  static DeviceProps cached[kMaxDevices];
  static std::once_flag once[kMaxDevices];
  if (device >= 0 && device < kMaxDevices) {
    std::call_once(once[device], [device] { cached[device] = query(device); });
    return cached[device];
  }
  // More devices than any machine has today: queried every time, never cached.
  thread_local DeviceProps uncached;
  uncached = query(device);
  return uncached;
}

const DeviceProps& current_device_props() {
  int device = -1;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    thread_local DeviceProps none;
    none.error = cudaErrorNoDevice;
    return none;
  }
  return device_props(device);
}

}  // namespace cuda
}  // namespace int8kern
