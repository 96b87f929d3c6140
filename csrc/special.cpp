// Schemas, checks and glue of the special functions (kernel interface: special.h; kernels:
// cpu/special_cpu.cpp, cuda/special_cuda.cu). Computed in float64 whatever the dtype, rounded once.
#include "special.h"

#include <torch/library.h>

#include "glue.h"

namespace penact {
namespace {

template <Device D>
at::Tensor special(SpecialFunction function, const at::Tensor* order, double order_scalar, const at::Tensor& x) {
  Launch<D> launch(x);
  const at::Tensor xd = x.to(at::kDouble).contiguous();
  const at::Tensor vd = order != nullptr ? order->to(at::kDouble).contiguous() : at::Tensor();
  at::Tensor out = at::empty(xd.sizes(), xd.options());
  if (out.numel() > 0) {
    const SpecialParams params{function, order != nullptr ? vd.const_data_ptr<double>() : nullptr, order_scalar,
                               xd.const_data_ptr<double>(), out.mutable_data_ptr<double>(), out.numel()};
    launch.run(&cpu::special_function, PENACT_CUDA_LAUNCHER(special_function), params);
  }
  return out.to(x.scalar_type());
}

void check_order_and_x(const at::Tensor& order, const at::Tensor& x) {
  check_floating(x, "x");
  check_floating(order, "order");
  PENACT_CHECK(order.sizes() == x.sizes(), "order and x must have the same shape (broadcast them first), got ",
               order.sizes(), " and ", x.sizes());
  check_same_device(order, "order", x, "x");
}

template <Device D>
at::Tensor log_bessel_iv(const at::Tensor& order, const at::Tensor& x) {
  check_order_and_x(order, x);
  return special<D>(SpecialFunction::kLogBesselIv, &order, 0.0, x);
}

template <Device D>
at::Tensor bessel_iv_ratio(const at::Tensor& order, const at::Tensor& x) {
  check_order_and_x(order, x);
  return special<D>(SpecialFunction::kBesselIvRatio, &order, 0.0, x);
}

template <Device D>
at::Tensor vmf_log_normalizer(const at::Tensor& kappa, int64_t dim) {
  check_floating(kappa, "kappa");
  PENACT_CHECK(dim >= 2, "dim must be at least 2, got ", dim);
  return special<D>(SpecialFunction::kVmfLogNormalizer, nullptr, static_cast<double>(dim), kappa);
}

template <Device D>
void register_kernels(torch::Library& m) {
  m.impl("log_bessel_iv", &log_bessel_iv<D>);
  m.impl("bessel_iv_ratio", &bessel_iv_ratio<D>);
  m.impl("vmf_log_normalizer", &vmf_log_normalizer<D>);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(penact, m) {
  m.def("log_bessel_iv(Tensor order, Tensor x) -> Tensor");
  m.def("bessel_iv_ratio(Tensor order, Tensor x) -> Tensor");
  m.def("vmf_log_normalizer(Tensor kappa, int dim) -> Tensor");
}

TORCH_LIBRARY_IMPL(penact, CPU, m) { register_kernels<Device::kCPU>(m); }
#if defined(PENACT_WITH_CUDA)
TORCH_LIBRARY_IMPL(penact, CUDA, m) { register_kernels<Device::kCUDA>(m); }
#endif

}  // namespace penact
