// Operator schemas of the rectified family (SPEC section 2b) and the argument checks both
// back-ends share. The library itself is defined in ops.cpp; this file adds to it. Device
// implementations register in cpu/ (and cuda/); backward passes and fake kernels are registered
// from Python (penact/_rectified_ops.py).
#include "rectified_ops.h"

#include <torch/library.h>

#include "ops.h"

namespace penact {
namespace {

bool is_compute_floating(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble;
}

void check_coordinate_vector(const at::Tensor& v, const char* name, const at::Tensor& weight) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == weight.size(1), "penact: ", name, " must have shape [D] = [",
              weight.size(1), "], got ", v.sizes());
  TORCH_CHECK(v.scalar_type() == weight.scalar_type(), "penact: ", name, " must have the dtype of weight (",
              weight.scalar_type(), "), got ", v.scalar_type());
  TORCH_CHECK(v.device() == weight.device(), "penact: ", name, " must be on weight's device (", weight.device(),
              "), got ", v.device());
}

}  // namespace

void check_rectified_params(const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& zero_mass) {
  TORCH_CHECK(weight.dim() == 2, "penact: weight must have shape [C, D], got ", weight.sizes());
  TORCH_CHECK(is_compute_floating(weight), "penact: weight must be float32 or float64, got ", weight.scalar_type());
  check_coordinate_vector(scale, "scale", weight);
  check_coordinate_vector(zero_mass, "zero_mass", weight);
  if (can_check_values(scale) && scale.numel() > 0) {
    TORCH_CHECK(at::all(at::isfinite(scale) & (scale > 0)).item<bool>(),
                "penact: scale must be finite and positive, got values from ", scale.min().item<double>(), " to ",
                scale.max().item<double>());
    TORCH_CHECK(at::all(at::isfinite(zero_mass) & (zero_mass >= 0)).item<bool>(),
                "penact: zero_mass must be finite and non-negative, got values from ", zero_mass.min().item<double>(),
                " to ", zero_mass.max().item<double>());
  }
}

void check_rectified_sample_args(const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& zero_mass,
                                 const at::Tensor& labels, int64_t offset) {
  check_rectified_params(weight, scale, zero_mass);
  TORCH_CHECK(labels.device() == weight.device(), "penact: labels must be on weight's device (", weight.device(),
              "), got ", labels.device());
  TORCH_CHECK(offset >= 0, "penact: offset must be non-negative, got ", offset);
}

void check_rectified_activations(const at::Tensor& a, const at::Tensor& weight, const at::Tensor* log_partition,
                                 const at::Tensor* labels) {
  TORCH_CHECK(a.dim() == 2 && a.size(1) == weight.size(1), "penact: a must have shape [N, D] with D = ",
              weight.size(1), ", got ", a.sizes());
  const bool reduced = a.scalar_type() == at::kHalf || a.scalar_type() == at::kBFloat16;
  TORCH_CHECK(a.scalar_type() == weight.scalar_type() || (reduced && weight.scalar_type() == at::kFloat),
              "penact: a must have the dtype of weight (", weight.scalar_type(),
              "), or be float16/bfloat16 with float32 weight; got ", a.scalar_type());
  TORCH_CHECK(a.device() == weight.device(), "penact: a must be on weight's device (", weight.device(), "), got ",
              a.device());
  if (log_partition != nullptr) {
    TORCH_CHECK(log_partition->dim() == 1 && log_partition->size(0) == weight.size(0),
                "penact: log_partition must have shape [C] = [", weight.size(0), "], got ", log_partition->sizes());
    TORCH_CHECK(log_partition->scalar_type() == weight.scalar_type(), "penact: log_partition must have the dtype of ",
                "weight (", weight.scalar_type(), "), got ", log_partition->scalar_type());
    TORCH_CHECK(log_partition->device() == weight.device(), "penact: log_partition must be on weight's device (",
                weight.device(), "), got ", log_partition->device());
  }
  if (labels != nullptr) {
    TORCH_CHECK(labels->dim() == 1 && labels->size(0) == a.size(0), "penact: labels must have shape [N] = [",
                a.size(0), "], got ", labels->sizes());
    TORCH_CHECK(labels->device() == weight.device(), "penact: labels must be on weight's device (", weight.device(),
                "), got ", labels->device());
  }
}

void check_nonnegative_activations(int64_t bad_entries) {
  TORCH_CHECK(bad_entries == 0, "penact: a must be non-negative (ReLU activations, no NaN); ", bad_entries,
              " entries are negative or NaN");
}

TORCH_LIBRARY_FRAGMENT(penact, m) {
  m.def("rectified_log_partition(Tensor weight, Tensor scale, Tensor zero_mass) -> Tensor");
  m.def("rectified_coordinate_stats(Tensor weight, Tensor scale, Tensor zero_mass) -> Tensor");
  m.def(
      "rectified_sample(Tensor weight, Tensor scale, Tensor zero_mass, Tensor labels, int seed, int offset) -> Tensor");
  m.def(
      "rectified_log_prob(Tensor a, Tensor weight, Tensor scale, Tensor zero_mass, Tensor log_partition, "
      "Tensor labels) -> Tensor");
  m.def(
      "rectified_log_prob_backward(Tensor grad, Tensor a, Tensor weight, Tensor scale, Tensor zero_mass, "
      "Tensor labels, bool need_a_grad, bool need_weight_grad, bool need_scale_grad, bool need_zero_mass_grad) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "rectified_log_prob_all(Tensor a, Tensor weight, Tensor scale, Tensor zero_mass, Tensor log_partition) "
      "-> Tensor");
}

}  // namespace penact
