// The kernel interface of the sphere (von Mises-Fisher) family (vmf.cpp: schemas, checks and
// glue; kernels: cpu/vmf_cpu.cpp and cuda/vmf_cuda.cu): plain parameter structs and one launcher
// per device for each, no torch type. The row formulas are core/vmf_rows.h, the draws
// core/wood.h and core/normals.h, dt/dkappa core/vmf_grad.h.
#pragma once

#include <cstdint>

#include "launch.h"

namespace penact {

// u_i ~ vMF(mean_direction[labels[i]], kappa[labels[i]]), out_i = radius u_i; row i draws from the
// Philox stream (seed, offset + i) whatever the device (docs/randomness.md).
struct VmfSampleParams {
  const void* mean_direction;  // [C, D] contiguous, dtype `compute` (float32 or float64)
  const double* kappa;         // [C]; an invalid concentration (core/vmf_rows.h) gives a NaN row
  const int64_t* labels;       // [N]; a label outside [0, C) gives a NaN row and is reported
  void* out;                   // [N, D] contiguous, dtype `out_dtype`
  int64_t num_rows, num_classes, dim;
  double radius;
  double unit_tolerance;       // of the mean directions' norms (checks.h)
  uint64_t seed, offset;
  Dtype compute, out_dtype;    // out_dtype: compute, or float16/bfloat16 when compute is float32
  CheckStatus* status;         // the labels; slot 0: sampled rows whose mean direction is not a
                               // unit vector (index: the class)
};

// The row-wise operators on x: [N, D] (unit column stride, row stride x_row_stride) and
// weight: [C, D] contiguous. dtypes: x float16/bfloat16/float32 with float32 weight, or both
// float64. Every other tensor has the dtype of weight and is contiguous.
struct VmfRowParams {
  const void* x;
  int64_t x_row_stride;
  const void* weight;          // [C, D]
  const void* log_normalizer;  // [C]            (log_prob, log_prob_all)
  const int64_t* labels;       // [N]            (log_prob, backward); outside [0, C): NaN, reported
  const void* grad;            // [N]            (backward)
  void* out;                   // [N] (log_prob), [N, C] (log_prob_all) or [N, D] (scale_rows_to_radius)
  void* grad_x;                // [N, D] contiguous, dtype of x, or null (backward)
  void* grad_weight;           // [C, D] zero-filled, or null (backward)
  int64_t num_rows, num_classes, dim;
  double radius;
  Dtype x_dtype, weight_dtype;
  CheckStatus* status;         // the labels
};

// dt/dkappa of draws with cosine t[k], sine sine[k] under kappa[k] on S^{dim-1}, all float64.
struct CosineKappaGradParams {
  const double* t;
  const double* sine;
  const double* kappa;
  double* out;
  double dim;
  int64_t numel;
};

// The backward of vmf_rsample (core/vmf_rows.h): the gradients of mean_direction and kappa from
// the draws, their labels and the incoming gradient.
struct RsampleBackwardParams {
  const void* grad;            // [N, D], row stride grad_row_stride (0: one row for all), unit column stride
  int64_t grad_row_stride;
  const void* sample;          // [N, D] contiguous
  const void* mean_direction;  // [C, D] contiguous
  const void* kappa;           // [C]
  const int64_t* labels;       // [N]; outside [0, C): the row adds nothing and is reported
  void* grad_mean_direction;   // [C, D]: zero-filled on CUDA, written by the CPU kernel; or null
  double* grad_kappa;          // [C] zero-filled, or null
  double* row_scalars;         // [5, N] workspace: t, g . mu, s^2, g . o, the row's kappa term
  int64_t num_rows, num_classes, dim;
  double radius;
  Dtype dtype;                 // of grad, sample, mean_direction, kappa: float32 or float64
  CheckStatus* status;         // the labels
};

namespace cpu {
void vmf_sample(const VmfSampleParams& params);
void vmf_log_prob(const VmfRowParams& params);
void vmf_log_prob_backward(const VmfRowParams& params);
// out = (radius x_i / ||x_i||) . w_c + log_normalizer[c], [N, C] in weight's dtype: blocks of rows
// through BLAS with an epilogue that reads each block once.
void vmf_log_prob_all(const VmfRowParams& params);
void vmf_cosine_kappa_grad(const CosineKappaGradParams& params);
void vmf_rsample_backward(const RsampleBackwardParams& params);
}  // namespace cpu

}  // namespace penact

#if defined(PENACT_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>

namespace penact {
namespace cuda {
cudaError_t vmf_sample(const VmfSampleParams& params, cudaStream_t stream);
cudaError_t vmf_log_prob(const VmfRowParams& params, cudaStream_t stream);
// grad_weight is summed with atomics: its summation order varies from run to run.
cudaError_t vmf_log_prob_backward(const VmfRowParams& params, cudaStream_t stream);
// out = radius x_i / ||x_i|| in weight's dtype, [N, D]: the operand of log_prob_all's cuBLAS addmm.
cudaError_t vmf_scale_rows_to_radius(const VmfRowParams& params, cudaStream_t stream);
cudaError_t vmf_cosine_kappa_grad(const CosineKappaGradParams& params, cudaStream_t stream);
// Both gradients are summed with atomics (grad_kappa in float64).
cudaError_t vmf_rsample_backward(const RsampleBackwardParams& params, cudaStream_t stream);
}  // namespace cuda
}  // namespace penact
#endif
