// Operator schemas of penact's differentiable sampling (SPEC section 3, "Gradients of samples"),
// a fragment beside ops.cpp's library: the kappa-derivative of a draw's cosine (device kernels in
// cpu/vmf_grad_cpu.cpp) and vmf_rsample, whose forward is the fused sampler itself. The backward of
// vmf_rsample is registered from Python (penact/_rsample_ops.py): on the CPU it calls the fused
// vmf_rsample_backward (cpu/vmf_grad_cpu.cpp), elsewhere it composes torch operators.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "ops.h"

namespace penact {

void check_cosine_kappa_grad_args(const at::Tensor& t, const at::Tensor& sine, const at::Tensor& kappa,
                                  int64_t dim) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "penact: t must be a floating point tensor, got ", t.scalar_type());
  TORCH_CHECK(sine.sizes() == t.sizes() && kappa.sizes() == t.sizes(),
              "penact: t, sine and kappa must have the same shape (broadcast them first), got ", t.sizes(), ", ",
              sine.sizes(), " and ", kappa.sizes());
  TORCH_CHECK(at::isFloatingType(sine.scalar_type()) && at::isFloatingType(kappa.scalar_type()),
              "penact: sine and kappa must be floating point tensors, got ", sine.scalar_type(), " and ",
              kappa.scalar_type());
  TORCH_CHECK(sine.device() == t.device() && kappa.device() == t.device(),
              "penact: t, sine and kappa must be on one device, got ", t.device(), ", ", sine.device(), " and ",
              kappa.device());
  TORCH_CHECK(dim >= 2, "penact: dim must be at least 2, got ", dim);
}

void check_rsample_backward_args(const at::Tensor& grad, const at::Tensor& sample, const at::Tensor& mean_direction,
                                 const at::Tensor& kappa, const at::Tensor& labels, double radius) {
  TORCH_CHECK(mean_direction.dim() == 2 && (mean_direction.scalar_type() == at::kFloat ||
                                            mean_direction.scalar_type() == at::kDouble),
              "penact: mean_direction must be a float32 or float64 tensor of shape [C, D], got ",
              mean_direction.scalar_type(), " ", mean_direction.sizes());
  TORCH_CHECK(kappa.dim() == 1 && kappa.size(0) == mean_direction.size(0), "penact: kappa must have shape [C] = [",
              mean_direction.size(0), "], got ", kappa.sizes());
  TORCH_CHECK(labels.dim() == 1, "penact: labels must have shape [N], got ", labels.sizes());
  const std::vector<int64_t> rows{labels.size(0), mean_direction.size(1)};
  TORCH_CHECK(sample.sizes() == at::IntArrayRef(rows) && grad.sizes() == at::IntArrayRef(rows), "penact: sample and grad must have shape [N, D] = ",
              rows, ", got ", sample.sizes(), " and ", grad.sizes());
  const at::ScalarType dtype = mean_direction.scalar_type();
  TORCH_CHECK(kappa.scalar_type() == dtype && sample.scalar_type() == dtype && grad.scalar_type() == dtype,
              "penact: kappa, sample and grad must have the dtype of mean_direction (", dtype, "), got ",
              kappa.scalar_type(), ", ", sample.scalar_type(), " and ", grad.scalar_type());
  for (const at::Tensor* other : {&kappa, &labels, &sample, &grad}) {
    TORCH_CHECK(other->device() == mean_direction.device(),
                "penact: kappa, labels, sample and grad must be on the device of mean_direction (",
                mean_direction.device(), "), got ", other->device());
  }
  TORCH_CHECK(std::isfinite(radius) && radius > 0, "penact: radius must be a finite positive number, got ", radius);
}

namespace {

// The draw is exactly vmf_sample's in the dtype of mean_direction (same streams, same values);
// only autograd differs.
at::Tensor vmf_rsample(const at::Tensor& mean_direction, const at::Tensor& kappa, const at::Tensor& labels,
                       double radius, int64_t seed, int64_t offset) {
  static const auto sample =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("penact::vmf_sample", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, int64_t, int64_t,
                            std::optional<at::ScalarType>)>();
  return sample.call(mean_direction, kappa, labels, radius, seed, offset, std::nullopt);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(penact, m) {
  m.def("vmf_cosine_kappa_grad(Tensor t, Tensor sine, Tensor kappa, int dim) -> Tensor");
  m.def("vmf_rsample(Tensor mean_direction, Tensor kappa, Tensor labels, float radius, int seed, int offset) -> Tensor");
  m.def(
      "vmf_rsample_backward(Tensor grad, Tensor sample, Tensor mean_direction, Tensor kappa, Tensor labels, "
      "float radius, bool need_mean_direction_grad, bool need_kappa_grad) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(penact, CompositeExplicitAutograd, m) { m.impl("vmf_rsample", &vmf_rsample); }

}  // namespace penact
