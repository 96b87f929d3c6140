// CUDA implementations of the vMF operators, the counterpart of cpu/vmf_cpu.cpp: argument checks
// (shared with the CPU, ops.h), allocation, the device guard and the current stream; the kernels
// themselves live in vmf_cuda.cu behind the torch-free interface of vmf_cuda.h.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../ops.h"
#include "vmf_cuda.h"

namespace penact {
namespace {

using cuda::Dtype;

Dtype dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return Dtype::kFloat16;
    case at::kBFloat16: return Dtype::kBFloat16;
    case at::kFloat: return Dtype::kFloat32;
    case at::kDouble: return Dtype::kFloat64;
    default: TORCH_CHECK(false, "penact: unsupported dtype on CUDA: ", t.scalar_type());
  }
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// x: [N, D] as the kernels read it: any row stride, unit column stride (a copy otherwise).
at::Tensor with_unit_column_stride(const at::Tensor& x) { return x.stride(1) == 1 ? x : x.contiguous(); }

at::Tensor vmf_sample_cuda(const at::Tensor& mean_direction, const at::Tensor& kappa, const at::Tensor& labels,
                           double radius, int64_t seed, int64_t offset, std::optional<at::ScalarType> dtype) {
  check_sample_args(mean_direction, kappa, labels, radius, offset, dtype);
  const c10::cuda::CUDAGuard device_guard(mean_direction.device());
  const at::Tensor mu = mean_direction.contiguous(), kap = kappa.contiguous();
  const at::Tensor lab = checked_labels(labels, mu.size(0));
  at::Tensor out = at::empty({lab.size(0), mu.size(1)}, mu.options().dtype(dtype.value_or(mu.scalar_type())));
  cuda::SampleParams params{};
  params.mean_direction = mu.const_data_ptr();
  params.kappa = kap.const_data_ptr();
  params.labels = lab.const_data_ptr<int64_t>();
  params.out = out.mutable_data_ptr();
  params.num_rows = out.size(0);
  params.num_classes = mu.size(0);
  params.dim = mu.size(1);
  params.radius = radius;
  params.seed = static_cast<uint64_t>(seed);
  params.offset = static_cast<uint64_t>(offset);
  params.compute = dtype_of(mu);
  params.out_dtype = dtype_of(out);
  C10_CUDA_CHECK(cuda::launch_vmf_sample(params, current_stream()));
  return out;
}

// The fields of cuda::RowParams that every row operator fills: x, weight and their shapes.
cuda::RowParams row_params(const at::Tensor& x, const at::Tensor& weight, double radius) {
  cuda::RowParams params{};
  params.x = x.const_data_ptr();
  params.x_row_stride = x.stride(0);
  params.weight = weight.const_data_ptr();
  params.num_rows = x.size(0);
  params.num_classes = weight.size(0);
  params.dim = weight.size(1);
  params.radius = radius;
  params.x_dtype = dtype_of(x);
  params.weight_dtype = dtype_of(weight);
  return params;
}

at::Tensor vmf_log_prob_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& log_normalizer,
                             const at::Tensor& labels, double radius) {
  check_log_prob_args(x, weight, &log_normalizer, &labels, radius);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor xs = with_unit_column_stride(x), w = weight.contiguous(), lognorm = log_normalizer.contiguous();
  const at::Tensor lab = checked_labels(labels, w.size(0));
  at::Tensor out = at::empty({xs.size(0)}, w.options());
  cuda::RowParams params = row_params(xs, w, radius);
  params.log_normalizer = lognorm.const_data_ptr();
  params.labels = lab.const_data_ptr<int64_t>();
  params.out = out.mutable_data_ptr();
  C10_CUDA_CHECK(cuda::launch_vmf_log_prob(params, current_stream()));
  return out;
}

// Backward of vmf_log_prob (formulas in cpu/vmf_cpu.cpp): one pass over x computes grad_x and
// adds into grad_weight atomically, so the weight gradient's summation order varies run to run.
std::tuple<at::Tensor, at::Tensor> vmf_log_prob_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                              const at::Tensor& weight, const at::Tensor& labels,
                                                              double radius, bool need_x_grad,
                                                              bool need_weight_grad) {
  check_log_prob_backward_args(grad, x, weight, labels, radius);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor xs = with_unit_column_stride(x), w = weight.contiguous();
  const at::Tensor g = grad.to(w.scalar_type()).contiguous();
  const at::Tensor lab = checked_labels(labels, w.size(0));
  at::Tensor grad_x = need_x_grad ? at::empty(xs.sizes(), xs.options()) : at::empty({0}, xs.options());
  at::Tensor grad_w = need_weight_grad ? at::zeros_like(w) : at::empty({0}, w.options());
  if (xs.size(0) == 0 || !(need_x_grad || need_weight_grad)) return {grad_x, grad_w};
  if (need_weight_grad) at::globalContext().alertNotDeterministic("penact::vmf_log_prob_backward (weight) on CUDA");
  cuda::RowParams params = row_params(xs, w, radius);
  params.labels = lab.const_data_ptr<int64_t>();
  params.grad = g.const_data_ptr();
  params.grad_x = need_x_grad ? grad_x.mutable_data_ptr() : nullptr;
  params.grad_weight = need_weight_grad ? grad_w.mutable_data_ptr() : nullptr;
  C10_CUDA_CHECK(cuda::launch_vmf_log_prob_backward(params, current_stream()));
  return {grad_x, grad_w};
}

// [N, C] = (radius x_i / ||x_i||) . w_c + log C_D(kappa_c): the rows of x are scaled first (one
// pass over N x D), then one cuBLAS addmm adds the log-normalizers in its epilogue. Scaling the
// N x C product afterwards, as the CPU does, would move N x C elements twice, which for C > D is
// more than the pass over x.
at::Tensor vmf_log_prob_all_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& log_normalizer,
                                 double radius) {
  check_log_prob_args(x, weight, &log_normalizer, nullptr, radius);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor xs = with_unit_column_stride(x), w = weight.contiguous(), lognorm = log_normalizer.contiguous();
  at::Tensor scaled = at::empty(xs.sizes(), w.options());
  cuda::RowParams params = row_params(xs, w, radius);
  params.out = scaled.mutable_data_ptr();
  C10_CUDA_CHECK(cuda::launch_scale_rows_to_radius(params, current_stream()));
  return at::addmm(lognorm, scaled, w.t());
}

// Elementwise special functions, in float64 whatever the dtype (as on the CPU).
at::Tensor special_cuda(cuda::SpecialFunction function, const at::Tensor* order, double order_scalar,
                        const at::Tensor& x) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor xd = x.to(at::kDouble).contiguous();
  const at::Tensor vd = order != nullptr ? order->to(at::kDouble).contiguous() : at::Tensor();
  at::Tensor out = at::empty(xd.sizes(), xd.options());
  cuda::SpecialParams params{};
  params.function = function;
  params.order = order != nullptr ? vd.const_data_ptr<double>() : nullptr;
  params.order_scalar = order_scalar;
  params.x = xd.const_data_ptr<double>();
  params.out = out.mutable_data_ptr<double>();
  params.numel = xd.numel();
  C10_CUDA_CHECK(cuda::launch_special_function(params, current_stream()));
  return out.to(x.scalar_type());
}

at::Tensor log_bessel_iv_cuda(const at::Tensor& order, const at::Tensor& x) {
  check_elementwise_args(order, x);
  return special_cuda(cuda::SpecialFunction::kLogBesselIv, &order, 0.0, x);
}

at::Tensor bessel_iv_ratio_cuda(const at::Tensor& order, const at::Tensor& x) {
  check_elementwise_args(order, x);
  return special_cuda(cuda::SpecialFunction::kBesselIvRatio, &order, 0.0, x);
}

at::Tensor vmf_log_normalizer_cuda(const at::Tensor& kappa, int64_t dim) {
  check_log_normalizer_args(kappa, dim);
  return special_cuda(cuda::SpecialFunction::kVmfLogNormalizer, nullptr, static_cast<double>(dim), kappa);
}

}  // namespace

TORCH_LIBRARY_IMPL(penact, CUDA, m) {
  m.impl("log_bessel_iv", &log_bessel_iv_cuda);
  m.impl("bessel_iv_ratio", &bessel_iv_ratio_cuda);
  m.impl("vmf_log_normalizer", &vmf_log_normalizer_cuda);
  m.impl("vmf_sample", &vmf_sample_cuda);
  m.impl("vmf_log_prob", &vmf_log_prob_cuda);
  m.impl("vmf_log_prob_backward", &vmf_log_prob_backward_cuda);
  m.impl("vmf_log_prob_all", &vmf_log_prob_all_cuda);
}

}  // namespace penact
