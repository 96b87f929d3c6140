// Operator schemas of penact (TORCH_LIBRARY) and the argument checks both back-ends share.
// Device implementations register themselves in cpu/ and cuda/; the backward passes and the fake
// (meta) kernels are registered from Python (penact/_ops.py).
#include "ops.h"

#include <torch/library.h>

#include <algorithm>

#if defined(PENACT_WITH_CUDA)
#include <ATen/cuda/CUDAGraphsUtils.cuh>
#endif

namespace penact {
namespace {

bool is_real_floating(const at::Tensor& t) { return at::isFloatingType(t.scalar_type()); }

bool is_compute_floating(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble;
}

void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  TORCH_CHECK(a.device() == b.device(), "penact: ", a_name, " and ", b_name,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

void check_radius(double radius) {
  TORCH_CHECK(std::isfinite(radius) && radius > 0, "penact: radius must be a finite positive number, got ", radius);
}

}  // namespace

// Reading a label outside [0, C) would read out of bounds, so the range is always checked. On CUDA
// this costs one synchronization, which graph capture forbids: there the kernels' own guard
// (a NaN row instead of an out-of-bounds read) is the check.
bool can_check_values(const at::Tensor& t) {
#if defined(PENACT_WITH_CUDA)
  if (t.is_cuda()) return at::cuda::currentStreamCaptureStatus() == at::cuda::CaptureStatus::None;
#endif
  (void)t;
  return true;
}

void check_elementwise_args(const at::Tensor& order, const at::Tensor& x) {
  TORCH_CHECK(is_real_floating(x), "penact: x must be a floating point tensor, got ", x.scalar_type());
  TORCH_CHECK(is_real_floating(order), "penact: order must be a floating point tensor, got ", order.scalar_type());
  TORCH_CHECK(order.sizes() == x.sizes(), "penact: order and x must have the same shape (broadcast them first), got ",
              order.sizes(), " and ", x.sizes());
  check_same_device(order, "order", x, "x");
}

void check_log_normalizer_args(const at::Tensor& kappa, int64_t dim) {
  TORCH_CHECK(is_real_floating(kappa), "penact: kappa must be a floating point tensor, got ", kappa.scalar_type());
  TORCH_CHECK(dim >= 2, "penact: dim must be at least 2, got ", dim);
}

at::Tensor checked_labels(const at::Tensor& labels, int64_t num_classes) {
  TORCH_CHECK(labels.dim() == 1, "penact: labels must have shape [N], got ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt,
              "penact: labels must be int64 or int32, got ", labels.scalar_type());
  const at::Tensor out = labels.to(at::kLong).contiguous();
  if (out.numel() > 0 && can_check_values(out)) {
    int64_t lowest, highest;
    if (out.is_cpu()) {
      // One serial pass (~30 us per 1e5 labels): at::aminmax would open a parallel region, which
      // on a loaded machine waits for a preempted thread (measured 12 ms on 2 busy cores).
      const int64_t* data = out.data_ptr<int64_t>();
      lowest = highest = data[0];
      for (int64_t i = 1; i < out.numel(); ++i) {
        lowest = std::min(lowest, data[i]);
        highest = std::max(highest, data[i]);
      }
    } else {
      const auto [low, high] = at::aminmax(out);
      lowest = low.item<int64_t>();
      highest = high.item<int64_t>();
    }
    TORCH_CHECK(lowest >= 0 && highest < num_classes, "penact: labels must lie in [0, ", num_classes,
                "), got values from ", lowest, " to ", highest);
  }
  return out;
}

void check_sample_args(const at::Tensor& mean_direction, const at::Tensor& kappa, const at::Tensor& labels,
                       double radius, int64_t offset, std::optional<at::ScalarType> dtype) {
  TORCH_CHECK(mean_direction.dim() == 2, "penact: mean_direction must have shape [C, D], got ",
              mean_direction.sizes());
  TORCH_CHECK(is_compute_floating(mean_direction), "penact: mean_direction must be float32 or float64, got ",
              mean_direction.scalar_type());
  TORCH_CHECK(mean_direction.size(1) >= 2, "penact: the dimension D must be at least 2, got ",
              mean_direction.size(1));
  TORCH_CHECK(kappa.dim() == 1 && kappa.size(0) == mean_direction.size(0), "penact: kappa must have shape [C] = [",
              mean_direction.size(0), "], got ", kappa.sizes());
  TORCH_CHECK(kappa.scalar_type() == mean_direction.scalar_type(), "penact: kappa must have the dtype of ",
              "mean_direction (", mean_direction.scalar_type(), "), got ", kappa.scalar_type());
  check_same_device(mean_direction, "mean_direction", kappa, "kappa");
  check_same_device(mean_direction, "mean_direction", labels, "labels");
  check_radius(radius);
  TORCH_CHECK(offset >= 0, "penact: offset must be non-negative, got ", offset);
  if (dtype.has_value()) {
    const bool reduced = (*dtype == at::kHalf || *dtype == at::kBFloat16) && mean_direction.scalar_type() == at::kFloat;
    TORCH_CHECK(*dtype == mean_direction.scalar_type() || reduced, "penact: dtype must be the dtype of mean_direction (",
                mean_direction.scalar_type(), "), or float16/bfloat16 with float32 mean_direction; got ", *dtype);
  }
}

void check_log_prob_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* log_normalizer,
                         const at::Tensor* labels, double radius) {
  TORCH_CHECK(weight.dim() == 2, "penact: weight must have shape [C, D], got ", weight.sizes());
  TORCH_CHECK(is_compute_floating(weight), "penact: weight must be float32 or float64, got ", weight.scalar_type());
  TORCH_CHECK(x.dim() == 2 && x.size(1) == weight.size(1), "penact: x must have shape [N, D] with D = ",
              weight.size(1), ", got ", x.sizes());
  TORCH_CHECK(is_real_floating(x), "penact: x must be a floating point tensor, got ", x.scalar_type());
  const bool reduced_x = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(x.scalar_type() == weight.scalar_type() || (reduced_x && weight.scalar_type() == at::kFloat),
              "penact: x must have the dtype of weight (", weight.scalar_type(),
              "), or be float16/bfloat16 with float32 weight; got ", x.scalar_type());
  check_same_device(x, "x", weight, "weight");
  if (log_normalizer != nullptr) {
    TORCH_CHECK(log_normalizer->dim() == 1 && log_normalizer->size(0) == weight.size(0),
                "penact: log_normalizer must have shape [C] = [", weight.size(0), "], got ", log_normalizer->sizes());
    TORCH_CHECK(log_normalizer->scalar_type() == weight.scalar_type(),
                "penact: log_normalizer must have the dtype of weight (", weight.scalar_type(), "), got ",
                log_normalizer->scalar_type());
    check_same_device(weight, "weight", *log_normalizer, "log_normalizer");
  }
  if (labels != nullptr) {
    check_same_device(x, "x", *labels, "labels");
    TORCH_CHECK(labels->dim() == 1 && labels->size(0) == x.size(0), "penact: labels must have shape [N] = [",
                x.size(0), "], got ", labels->sizes());
  }
  check_radius(radius);
}

void check_log_prob_backward_args(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& labels, double radius) {
  check_log_prob_args(x, weight, nullptr, &labels, radius);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == x.size(0), "penact: grad must have shape [N] = [", x.size(0),
              "], got ", grad.sizes());
  check_same_device(x, "x", grad, "grad");
}

TORCH_LIBRARY(penact, m) {
  m.def("log_bessel_iv(Tensor order, Tensor x) -> Tensor");
  m.def("bessel_iv_ratio(Tensor order, Tensor x) -> Tensor");
  m.def("vmf_log_normalizer(Tensor kappa, int dim) -> Tensor");
  m.def(
      "vmf_sample(Tensor mean_direction, Tensor kappa, Tensor labels, float radius, int seed, int offset, "
      "ScalarType? dtype=None) -> Tensor");
  m.def("vmf_log_prob(Tensor x, Tensor weight, Tensor log_normalizer, Tensor labels, float radius) -> Tensor");
  m.def(
      "vmf_log_prob_backward(Tensor grad, Tensor x, Tensor weight, Tensor labels, float radius, "
      "bool need_x_grad, bool need_weight_grad) -> (Tensor, Tensor)");
  m.def("vmf_log_prob_all(Tensor x, Tensor weight, Tensor log_normalizer, float radius) -> Tensor");
}

}  // namespace penact
