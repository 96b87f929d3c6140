// The interface between the torch glue (vmf_grad_cuda_ops.cpp) and the CUDA kernel of
// vmf_cosine_kappa_grad (vmf_grad_cuda.cu): a plain parameter struct and a launcher, no torch type,
// as in vmf_cuda.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace penact {
namespace cuda {

// out[k] = dt/dkappa of a draw with cosine t[k] and sine sine[k] under concentration kappa[k] on
// S^{dim-1} (core/vmf_grad.h), all float64 and contiguous.
struct CosineKappaGradParams {
  const double* t;
  const double* sine;
  const double* kappa;
  double* out;
  double dim;
  int64_t numel;
};
cudaError_t launch_vmf_cosine_kappa_grad(const CosineKappaGradParams& params, cudaStream_t stream);

}  // namespace cuda
}  // namespace penact
