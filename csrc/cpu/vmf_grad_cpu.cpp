// CPU implementation of vmf_cosine_kappa_grad: elementwise in double over at::parallel_for; the
// math is core/vmf_grad.h, shared with any other back-end.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../core/vmf_grad.h"
#include "../ops.h"

namespace penact {
namespace {

// Each element costs a few microseconds (an adaptive quadrature), so small grains still pay.
constexpr int64_t kCosineGrain = 16;

at::Tensor vmf_cosine_kappa_grad_cpu(const at::Tensor& t, const at::Tensor& sine, const at::Tensor& kappa,
                                     int64_t dim) {
  check_cosine_kappa_grad_args(t, sine, kappa, dim);
  const at::Tensor td = t.to(at::kDouble).contiguous();
  const at::Tensor sd = sine.to(at::kDouble).contiguous();
  const at::Tensor kd = kappa.to(at::kDouble).contiguous();
  at::Tensor out = at::empty(td.sizes(), td.options());
  const double* t_data = td.data_ptr<double>();
  const double* sine_data = sd.data_ptr<double>();
  const double* kappa_data = kd.data_ptr<double>();
  double* out_data = out.data_ptr<double>();
  const double d = static_cast<double>(dim);
  at::parallel_for(0, td.numel(), kCosineGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out_data[i] = vmf_cosine_kappa_grad(d, kappa_data[i], t_data[i], sine_data[i]);
  });
  return out.to(t.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(penact, CPU, m) { m.impl("vmf_cosine_kappa_grad", &vmf_cosine_kappa_grad_cpu); }

}  // namespace penact
