// CUDA kernels of the special functions (interface: special.h): one thread per element,
// grid-stride, the core functions the CPU back-end calls.
#include "../core/special.h"
#include "../special.h"
#include "common.cuh"

namespace penact {
namespace cuda {
namespace {

template <SpecialFunction F>
__global__ void __launch_bounds__(kThreads) special_kernel(const SpecialParams p) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < p.numel; k += stride) {
    const double order = p.order != nullptr ? p.order[k] : p.order_scalar;
    if constexpr (F == SpecialFunction::kLogBesselIv) p.out[k] = log_bessel_iv(order, p.x[k]);
    if constexpr (F == SpecialFunction::kBesselIvRatio) p.out[k] = bessel_iv_ratio(order, p.x[k]);
    if constexpr (F == SpecialFunction::kVmfLogNormalizer) p.out[k] = vmf_log_normalizer(order, p.x[k]);
  }
}

template <SpecialFunction F>
cudaError_t launch(const SpecialParams& p, cudaStream_t stream) {
  cudaError_t error = cudaSuccess;
  const int multiprocessors = multiprocessor_count(&error);
  if (error != cudaSuccess) return error;
  special_kernel<F><<<grid_for(ceil_div(p.numel, kThreads), multiprocessors), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t special_function(const SpecialParams& p, cudaStream_t stream) {
  switch (p.function) {
    case SpecialFunction::kLogBesselIv: return launch<SpecialFunction::kLogBesselIv>(p, stream);
    case SpecialFunction::kBesselIvRatio: return launch<SpecialFunction::kBesselIvRatio>(p, stream);
    case SpecialFunction::kVmfLogNormalizer: return launch<SpecialFunction::kVmfLogNormalizer>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace penact
