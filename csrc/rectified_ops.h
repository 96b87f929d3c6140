// Argument checks of the rectified operators (schemas in rectified_ops.cpp), shared by the CPU and
// CUDA implementations. Each runs once at the operator boundary and names the argument.
#pragma once

#include <ATen/ATen.h>

namespace penact {

// weight: [C, D] float32/float64; scale: [D] finite and > 0; zero_mass: [D] finite and >= 0, both
// of weight's dtype and device.
void check_rectified_params(const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& zero_mass);

// The parameters as above, labels on weight's device, offset >= 0.
void check_rectified_sample_args(const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& zero_mass,
                                 const at::Tensor& labels, int64_t offset);

// a: [N, D] in weight's dtype (or float16/bfloat16 with float32 weight); log_partition: [C]; labels:
// [N] (undefined for the all-classes operator). Values of a are checked by the kernels' own pass.
void check_rectified_activations(const at::Tensor& a, const at::Tensor& weight, const at::Tensor* log_partition,
                                 const at::Tensor* labels);

// Raises unless every activation was >= 0 (a count of the entries that were negative or NaN).
void check_nonnegative_activations(int64_t bad_entries);

}  // namespace penact
