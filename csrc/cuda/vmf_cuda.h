// The interface between the torch glue (vmf_cuda_ops.cpp) and the CUDA kernels (vmf_cuda.cu):
// plain parameter structs and launchers, no torch type. The glue checks the arguments, allocates
// and fills a struct; a launcher picks the kernel, launches it on the given stream and returns
// cudaGetLastError(). Keeping torch out of the kernels lets CI compile them with nvcc alone.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace penact {
namespace cuda {

enum class Dtype { kFloat16, kBFloat16, kFloat32, kFloat64 };

// u_i ~ vMF(mean_direction[labels[i]], kappa[labels[i]]), out_i = radius u_i; row i draws from the
// Philox stream (seed, offset + i) exactly as the CPU back-end does.
struct SampleParams {
  const void* mean_direction;  // [C, D] contiguous, dtype `compute` (float32 or float64)
  const void* kappa;           // [C], dtype `compute`
  const int64_t* labels;       // [N]; a label outside [0, C) gives a NaN row
  void* out;                   // [N, D] contiguous, dtype `out_dtype`
  int64_t num_rows, num_classes, dim;
  double radius;
  uint64_t seed, offset;
  Dtype compute, out_dtype;  // out_dtype: compute, or float16/bfloat16 when compute is float32
};
cudaError_t launch_vmf_sample(const SampleParams& params, cudaStream_t stream);

// The row-wise operators on x: [N, D] (unit column stride, row stride x_row_stride) and
// weight: [C, D] contiguous. dtypes: x float16/bfloat16/float32 with float32 weight, or both
// float64. Every other tensor has the dtype of weight and is contiguous.
struct RowParams {
  const void* x;
  int64_t x_row_stride;
  const void* weight;          // [C, D]
  const void* log_normalizer;  // [C]            (log_prob)
  const int64_t* labels;       // [N]            (log_prob, backward); outside [0, C): NaN
  const void* grad;            // [N]            (backward)
  void* out;                   // [N] (log_prob) or [N, D] (scale_rows_to_radius)
  void* grad_x;                // [N, D] contiguous, dtype of x, or null (backward)
  void* grad_weight;           // [C, D] zero-filled, or null (backward)
  int64_t num_rows, num_classes, dim;
  double radius;
  Dtype x_dtype, weight_dtype;
};
// out_i = log_normalizer[y_i] + radius w_{y_i} . x_i / ||x_i||.
cudaError_t launch_vmf_log_prob(const RowParams& params, cudaStream_t stream);
// grad_x_i = g_i r (w_y / n - (w_y . x_i) x_i / n^3) and grad_weight_y += g_i r x_i / n (atomics).
cudaError_t launch_vmf_log_prob_backward(const RowParams& params, cudaStream_t stream);
// out_i = radius x_i / ||x_i|| in the dtype of weight: the operand of log_prob_all's matrix product.
cudaError_t launch_scale_rows_to_radius(const RowParams& params, cudaStream_t stream);

enum class SpecialFunction { kLogBesselIv, kBesselIvRatio, kVmfLogNormalizer };

// out[k] = f(order[k], x[k]) in float64; order == nullptr means order_scalar for every k (the
// dimension D of vmf_log_normalizer, whose x is kappa).
struct SpecialParams {
  SpecialFunction function;
  const double* order;
  double order_scalar;
  const double* x;
  double* out;
  int64_t numel;
};
cudaError_t launch_special_function(const SpecialParams& params, cudaStream_t stream);

}  // namespace cuda
}  // namespace penact
