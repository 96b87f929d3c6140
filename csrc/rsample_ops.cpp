// Operator schemas of penact's differentiable sampling (SPEC section 3, "Gradients of samples"),
// a fragment beside ops.cpp's library: the kappa-derivative of a draw's cosine (device kernels in
// cpu/vmf_grad_cpu.cpp) and vmf_rsample, whose forward is the fused sampler itself. The backward of
// vmf_rsample and the fake kernels are registered from Python (penact/_rsample_ops.py).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

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
}

TORCH_LIBRARY_IMPL(penact, CompositeExplicitAutograd, m) { m.impl("vmf_rsample", &vmf_rsample); }

}  // namespace penact
