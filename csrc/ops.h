// Argument checks shared by the CPU and CUDA implementations of penact's operators. Each check
// runs once at the operator boundary and names the argument and what was expected.
#pragma once

#include <ATen/ATen.h>

namespace penact {

// order: [...], x: [...] of the same shape, floating point, on one device.
void check_elementwise_args(const at::Tensor& order, const at::Tensor& x);

// kappa: [...] floating point; dim >= 2.
void check_log_normalizer_args(const at::Tensor& kappa, int64_t dim);

// mean_direction: [C, D], kappa: [C], labels: [N] integer in [0, C), radius > 0, seed, offset >= 0.
// dtype: the output's, absent for mean_direction's; float16/bfloat16 only with float32 mean_direction.
void check_sample_args(const at::Tensor& mean_direction, const at::Tensor& kappa, const at::Tensor& labels,
                       double radius, int64_t offset, std::optional<at::ScalarType> dtype);

// x: [N, D], weight: [C, D], log_normalizer: [C], labels: [N]; a null pointer skips that argument.
void check_log_prob_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* log_normalizer,
                         const at::Tensor* labels, double radius);

// grad: [N] on the device of x, and the checks of check_log_prob_args for the backward pass of
// vmf_log_prob (which takes no log_normalizer).
void check_log_prob_backward_args(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& labels, double radius);

// Whether a check may read tensor values: false on CUDA during graph capture (no synchronization).
bool can_check_values(const at::Tensor& t);

// t, sine, kappa: [...] of one shape, floating point, on one device; dim >= 2 (rsample_ops.cpp).
void check_cosine_kappa_grad_args(const at::Tensor& t, const at::Tensor& sine, const at::Tensor& kappa,
                                  int64_t dim);

// The backward of vmf_rsample (rsample_ops.cpp): grad and sample: [N, D] (grad may repeat one row,
// stride 0), mean_direction: [C, D] float32 or float64, kappa: [C], labels: [N], all in
// mean_direction's dtype and on its device; radius > 0.
void check_rsample_backward_args(const at::Tensor& grad, const at::Tensor& sample, const at::Tensor& mean_direction,
                                 const at::Tensor& kappa, const at::Tensor& labels, double radius);

// Labels as contiguous int64, after checking their range against num_classes.
at::Tensor checked_labels(const at::Tensor& labels, int64_t num_classes);

// Rows processed per task so that each task touches about 32K elements.
inline int64_t row_grain(int64_t row_length) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(row_length, 1)); }

}  // namespace penact
