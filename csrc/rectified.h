// The kernel interface of the rectified family (rectified.cpp: schemas, checks and glue; kernels:
// cpu/rectified_cpu.cpp and cuda/rectified_cuda.cu): plain parameter structs and one launcher per
// device for each, no torch type. The math is core/rectified.h.
//
// The value checks of every rectified operator fill the same status slots (launch.h):
//   slot 0: activations a that are negative or NaN (index: the flat entry i D + j), or, for the
//           sampler, weight entries that are not finite (index: their class);
//   slot 1: scale entries that are not finite and positive (index: the coordinate);
//   slot 2: zero_mass entries that are not finite and non-negative (index: the coordinate).
#pragma once

#include <cstdint>

#include "launch.h"

namespace penact {

enum RectifiedCheck { kActivationsOrWeight = 0, kScale = 1, kZeroMass = 2 };

// Per coordinate j, the base measure's terms in the weight's dtype, base = [2, D]:
// base[0][j] = 1 / (2 s_j^2), base[1][j] = log m_j; checks scale and zero_mass.
struct RectifiedBaseParams {
  const void* scale;      // [D]
  const void* zero_mass;  // [D]
  void* base;             // [2, D]
  int64_t dim;
  Dtype dtype;            // of all three: float32 or float64
  CheckStatus* status;
};

// Per class and coordinate: log_partition out [C] = sum_j log z(w_cj; s_j, m_j) (summed in float64),
// or coordinate_stats out [5, C, D] = log z, P(a = 0), E[a], E[a^2], E[a^4]. Checks scale and zero_mass.
struct RectifiedTableParams {
  const void* weight;     // [C, D]
  const void* scale;      // [D]
  const void* zero_mass;  // [D]
  void* out;
  int64_t num_classes, dim;
  Dtype dtype;
  CheckStatus* status;
};

// a_i ~ p(a | labels[i]): the stream layout of core/rectified.h (row i draws only from the Philox
// counters of offset + i, whatever the device).
struct RectifiedSampleParams {
  const void* weight;     // [C, D]
  const void* scale;      // [D]
  const void* zero_mass;  // [D]
  const int64_t* labels;  // [N]; outside [0, C): a NaN row, reported
  void* out;              // [N, D]
  // CUDA only (null on the CPU, which builds its tables for the classes drawn): the per-class draw
  // tables, [4, C, D] in the dtype (1 / P(a > 0), t, Phibar(alpha), Phi(alpha)), and [C, D] bytes
  // marking the coordinates drawn from their own stream.
  void* tables;
  uint8_t* own_stream;
  int64_t num_rows, num_classes, dim;
  uint64_t seed;
  int64_t offset;
  Dtype dtype;
  CheckStatus* status;    // the labels, slots 0 (weight), 1, 2
};

// The log-densities: log p(a_i | y_i) = w_y . a_i + B(a_i) - log Z_y with the base-measure term
// B(a) = sum_j [a_j > 0] (-a_j^2 / (2 s_j^2)) + [a_j = 0] log m_j, and their backward.
struct RectifiedDensityParams {
  const void* a;              // [N, D] contiguous
  const void* weight;         // [C, D]
  const void* base;           // [2, D] (RectifiedBaseParams)
  const void* log_partition;  // [C]              (log_prob, log_prob_all)
  const int64_t* labels;      // [N]              (log_prob, backward); outside [0, C): NaN, reported
  const void* grad;           // [N]              (backward)
  const void* scale;          // [D]              (backward)
  const void* zero_mass;      // [D]              (backward)
  void* out;                  // [N] (log_prob), or [N, C] holding a W^T on entry (log_prob_all)
  void* grad_a;               // [N, D] dtype of a, or null          (backward)
  void* grad_weight;          // [C, D] zero-filled, or null         (backward)
  void* grad_scale;           // [D], or null                        (backward)
  void* grad_zero_mass;       // [D], or null                        (backward)
  double* column_sums;        // [2, D] zero-filled float64 workspace for the CUDA backward, else null
  int64_t num_rows, num_classes, dim;
  Dtype a_dtype, weight_dtype;
  CheckStatus* status;        // the labels; slot 0 (activations; not checked by the backward)
};

// The backward of rectified_rsample (core/rectified.h, rectified_draw_derivatives): per non-zero
// draw, its derivatives times the incoming gradient, summed per class (weight) and over all rows
// (scale, zero mass), in float64.
struct RectifiedRsampleBackwardParams {
  const void* grad;          // [N, D] contiguous
  const void* sample;        // [N, D] contiguous: the draws
  const void* weight;        // [C, D]
  const void* scale;         // [D]
  const void* zero_mass;     // [D]
  const int64_t* labels;     // [N]; outside [0, C): the row adds nothing and is reported
  double* log_z;             // [C, D] workspace: log z(w_cj; s_j, m_j)
  double* grad_weight;       // [C, D] zero-filled
  double* column_sums;       // [2, D] zero-filled: the scale's and the zero mass's gradients
  int64_t num_rows, num_classes, dim;
  Dtype dtype;               // of grad, sample, weight, scale, zero_mass: float32 or float64
  CheckStatus* status;       // the labels
};

namespace cpu {
void rectified_base(const RectifiedBaseParams& params);
void rectified_log_partition(const RectifiedTableParams& params);
void rectified_coordinate_stats(const RectifiedTableParams& params);
void rectified_sample(const RectifiedSampleParams& params);
void rectified_log_prob(const RectifiedDensityParams& params);
void rectified_log_prob_all_epilogue(const RectifiedDensityParams& params);
void rectified_log_prob_backward(const RectifiedDensityParams& params);
void rectified_rsample_backward(const RectifiedRsampleBackwardParams& params);
}  // namespace cpu

}  // namespace penact

#if defined(PENACT_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>

namespace penact {
namespace cuda {
cudaError_t rectified_base(const RectifiedBaseParams& params, cudaStream_t stream);
cudaError_t rectified_log_partition(const RectifiedTableParams& params, cudaStream_t stream);
cudaError_t rectified_coordinate_stats(const RectifiedTableParams& params, cudaStream_t stream);
cudaError_t rectified_sample(const RectifiedSampleParams& params, cudaStream_t stream);
cudaError_t rectified_log_prob(const RectifiedDensityParams& params, cudaStream_t stream);
cudaError_t rectified_log_prob_all_epilogue(const RectifiedDensityParams& params, cudaStream_t stream);
// grad_weight and the column sums are added with atomics: their summation order varies run to run.
cudaError_t rectified_log_prob_backward(const RectifiedDensityParams& params, cudaStream_t stream);
// The weight's and the columns' sums by float64 atomics: their summation order varies run to run.
cudaError_t rectified_rsample_backward(const RectifiedRsampleBackwardParams& params, cudaStream_t stream);
}  // namespace cuda
}  // namespace penact
#endif
