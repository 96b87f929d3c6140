#include "checks.h"

#include <atomic>
#include <cmath>
#include <limits>

#if defined(PENACT_WITH_CUDA)
#include <ATen/cuda/CUDAGraphsUtils.cuh>
#endif

namespace penact {

void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  PENACT_CHECK(a.device() == b.device(), a_name, " and ", b_name, " must be on the same device, got ", a.device(),
               " and ", b.device());
}

void check_radius(double radius) {
  PENACT_CHECK(std::isfinite(radius) && radius > 0, "radius must be a finite positive number, got ", radius);
}

void check_offset(int64_t offset) { PENACT_CHECK(offset >= 0, "offset must be non-negative, got ", offset); }

void check_compute_dtype(const at::Tensor& t, const char* name) {
  PENACT_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
               " must be float32 or float64, got ", t.scalar_type());
}

void check_floating(const at::Tensor& t, const char* name) {
  PENACT_CHECK(at::isFloatingType(t.scalar_type()), name, " must be a floating point tensor, got ", t.scalar_type());
}

void check_weight(const at::Tensor& weight, const char* name, int64_t min_dim) {
  PENACT_CHECK(weight.dim() == 2, name, " must have shape [C, D], got ", weight.sizes());
  check_compute_dtype(weight, name);
  PENACT_CHECK(weight.size(1) >= min_dim, "the dimension D (", name, ".size(1)) must be at least ", min_dim, ", got ",
               weight.size(1));
}

void check_rows(const at::Tensor& rows, const char* name, const at::Tensor& weight, const char* weight_name) {
  PENACT_CHECK(rows.dim() == 2 && rows.size(1) == weight.size(1), name, " must have shape [N, D] with D = ",
               weight.size(1), ", got ", rows.sizes());
  check_floating(rows, name);
  const bool reduced = rows.scalar_type() == at::kHalf || rows.scalar_type() == at::kBFloat16;
  PENACT_CHECK(rows.scalar_type() == weight.scalar_type() || (reduced && weight.scalar_type() == at::kFloat), name,
               " must have the dtype of ", weight_name, " (", weight.scalar_type(),
               "), or be float16/bfloat16 with float32 ", weight_name, "; got ", rows.scalar_type());
  check_same_device(rows, name, weight, weight_name);
}

void check_vector(const at::Tensor& v, const char* name, int64_t size, const char* size_text, const at::Tensor& like,
                  const char* like_name) {
  PENACT_CHECK(v.dim() == 1 && v.size(0) == size, name, " must have shape [", size_text, "] = [", size, "], got ",
               v.sizes());
  PENACT_CHECK(v.scalar_type() == like.scalar_type(), name, " must have the dtype of ", like_name, " (",
               like.scalar_type(), "), got ", v.scalar_type());
  check_same_device(v, name, like, like_name);
}

at::Tensor labels_as_int64(const at::Tensor& labels, int64_t rows, const at::Tensor& like, const char* like_name) {
  if (rows >= 0) {
    PENACT_CHECK(labels.dim() == 1 && labels.size(0) == rows, "labels must have shape [N] = [", rows, "], got ",
                 labels.sizes());
  } else {
    PENACT_CHECK(labels.dim() == 1, "labels must have shape [N], got ", labels.sizes());
  }
  PENACT_CHECK(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt,
               "labels must be int64 or int32, got ", labels.scalar_type());
  check_same_device(labels, "labels", like, like_name);
  return labels.to(at::kLong).contiguous();
}

namespace {
std::atomic<bool> device_checks{true};
}  // namespace

bool device_checks_enabled() { return device_checks.load(std::memory_order_relaxed); }

void set_device_checks(bool enabled) { device_checks.store(enabled, std::memory_order_relaxed); }

bool can_read_status(const at::Tensor& t) {
#if defined(PENACT_WITH_CUDA)
  if (t.is_cuda()) {
    return device_checks_enabled() && at::cuda::currentStreamCaptureStatus() == at::cuda::CaptureStatus::None;
  }
#endif
  (void)t;
  return true;
}

void raise_if_bad(const CheckStatus& status, int64_t num_classes, std::initializer_list<ValueCheck> checks) {
  PENACT_CHECK(status.bad_labels == 0, "labels must lie in [0, ", num_classes, "), got ", status.bad_labels,
               " outside it (from ", from_order_key(~status.lowest_label), " to ",
               from_order_key(status.highest_label), ")");
  int slot = 0;
  for (const ValueCheck& check : checks) {
    PENACT_CHECK(status.bad_values[slot] == 0, check.argument, " must ", check.expectation, ", but ",
                 status.bad_values[slot], " of the ", check.counted, " do not (the first: ", check.index_name, " ",
                 from_order_key(~status.first_bad[slot]), ")");
    ++slot;
  }
}

double unit_norm_tolerance(at::ScalarType dtype) {
  return std::sqrt(dtype == at::kDouble ? std::numeric_limits<double>::epsilon()
                                        : static_cast<double>(std::numeric_limits<float>::epsilon()));
}

}  // namespace penact
