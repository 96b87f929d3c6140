// CUDA kernel of vmf_cosine_kappa_grad (interface: vmf_grad_cuda.h): one thread per element,
// grid-stride, the same core function as the CPU back-end. Each element runs an adaptive
// quadrature (1 to 4 panels of 21 points on average), so threads of a warp diverge a little.
#include "vmf_grad_cuda.h"

#include "../core/vmf_grad.h"

namespace penact {
namespace cuda {
namespace {

constexpr int kThreads = 128;  // the panel stack lives in local memory: fewer threads per block

__global__ void __launch_bounds__(kThreads) cosine_kappa_grad_kernel(const CosineKappaGradParams p) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < p.numel; k += stride) {
    p.out[k] = vmf_cosine_kappa_grad(p.dim, p.kappa[k], p.t[k], p.sine[k]);
  }
}

}  // namespace

cudaError_t launch_vmf_cosine_kappa_grad(const CosineKappaGradParams& params, cudaStream_t stream) {
  if (params.numel == 0) return cudaSuccess;
  int device = 0, multiprocessors = 0;
  cudaError_t error = cudaGetDevice(&device);
  if (error == cudaSuccess) error = cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device);
  if (error != cudaSuccess) return error;
  const int64_t blocks = (params.numel + kThreads - 1) / kThreads;
  const int64_t cap = static_cast<int64_t>(multiprocessors) * 16;
  cosine_kappa_grad_kernel<<<static_cast<unsigned>(blocks < cap ? blocks : cap), kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace penact
