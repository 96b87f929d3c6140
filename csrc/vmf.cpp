// Schemas, argument checks and glue of the sphere family's operators (kernel interface: vmf.h;
// kernels: cpu/vmf_cpu.cpp, cuda/vmf_cuda.cu). Backward passes and fake kernels are registered
// from Python (penact/ops/vmf.py); vmf_log_normalizer is with the special functions (special.cpp).
#include "vmf.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <vector>

#include "glue.h"

namespace penact {
namespace {

// x: [N, D] as the kernels read it: any row stride, unit column stride (a copy otherwise).
at::Tensor with_unit_column_stride(const at::Tensor& x) { return x.size(1) <= 1 || x.stride(1) == 1 ? x : x.contiguous(); }

// The label-range check of the row operators, raised after the kernel from what it reported.
template <Device D>
void raise_for_labels(const Launch<D>& launch, int64_t num_classes) {
  raise_if_bad(launch.read_status(), num_classes, {});
}

VmfRowParams row_params(const at::Tensor& x, const at::Tensor& weight, double radius) {
  VmfRowParams params{};
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

// ---------------------------------------------------------------------------------------------
// vmf_sample

void check_sample_args(const at::Tensor& mean_direction, const at::Tensor& kappa, double radius, int64_t offset,
                       std::optional<at::ScalarType> dtype) {
  check_weight(mean_direction, "mean_direction", 2);
  check_vector(kappa, "kappa", mean_direction.size(0), "C", mean_direction, "mean_direction");
  check_radius(radius);
  check_offset(offset);
  if (dtype.has_value()) {
    const bool reduced = (*dtype == at::kHalf || *dtype == at::kBFloat16) && mean_direction.scalar_type() == at::kFloat;
    PENACT_CHECK(*dtype == mean_direction.scalar_type() || reduced, "dtype must be the dtype of mean_direction (",
                 mean_direction.scalar_type(), "), or float16/bfloat16 with float32 mean_direction; got ", *dtype);
  }
}

template <Device D>
at::Tensor vmf_sample(const at::Tensor& mean_direction, const at::Tensor& kappa, const at::Tensor& labels,
                      double radius, int64_t seed, int64_t offset, std::optional<at::ScalarType> dtype) {
  check_sample_args(mean_direction, kappa, radius, offset, dtype);
  const at::Tensor lab = labels_as_int64(labels, -1, mean_direction, "mean_direction");
  Launch<D> launch(mean_direction);
  const at::Tensor mu = mean_direction.contiguous();
  const at::Tensor kap = kappa.to(at::kDouble).contiguous();
  at::Tensor out = at::empty({lab.size(0), mu.size(1)}, mu.options().dtype(dtype.value_or(mu.scalar_type())));
  if (out.size(0) == 0) return out;
  VmfSampleParams params{};
  params.mean_direction = mu.const_data_ptr();
  params.kappa = kap.const_data_ptr<double>();
  params.labels = lab.const_data_ptr<int64_t>();
  params.out = out.mutable_data_ptr();
  params.num_rows = out.size(0);
  params.num_classes = mu.size(0);
  params.dim = mu.size(1);
  params.radius = radius;
  params.unit_tolerance = unit_norm_tolerance(mu.scalar_type());
  params.seed = static_cast<uint64_t>(seed);
  params.offset = static_cast<uint64_t>(offset);
  params.compute = dtype_of(mu);
  params.out_dtype = dtype_of(out);
  params.status = launch.status();
  launch.run(&cpu::vmf_sample, PENACT_CUDA_LAUNCHER(vmf_sample), params);
  raise_if_bad(launch.read_status(), mu.size(0),
               {{"mean_direction", c10::str("hold unit vectors (| ||mu_c|| - 1 | <= ", params.unit_tolerance, " in its dtype)"),
                 "sampled rows' mean directions", "class"}});
  return out;
}

// The draw is exactly vmf_sample's in the dtype of mean_direction (same streams, same values);
// only autograd differs (penact/ops/vmf.py registers its backward).
at::Tensor vmf_rsample(const at::Tensor& mean_direction, const at::Tensor& kappa, const at::Tensor& labels,
                       double radius, int64_t seed, int64_t offset) {
  static const auto sample =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("penact::vmf_sample", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, int64_t, int64_t,
                            std::optional<at::ScalarType>)>();
  return sample.call(mean_direction, kappa, labels, radius, seed, offset, std::nullopt);
}

// ---------------------------------------------------------------------------------------------
// vmf_log_prob, its backward, vmf_log_prob_all

void check_log_prob_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* log_normalizer,
                         double radius) {
  check_weight(weight, "weight", 1);
  check_rows(x, "x", weight, "weight");
  if (log_normalizer != nullptr) {
    check_vector(*log_normalizer, "log_normalizer", weight.size(0), "C", weight, "weight");
  }
  check_radius(radius);
}

template <Device D>
at::Tensor vmf_log_prob(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& log_normalizer,
                        const at::Tensor& labels, double radius) {
  check_log_prob_args(x, weight, &log_normalizer, radius);
  const at::Tensor lab = labels_as_int64(labels, x.size(0), x, "x");
  Launch<D> launch(x);
  const at::Tensor xs = with_unit_column_stride(x), w = weight.contiguous(), lognorm = log_normalizer.contiguous();
  at::Tensor out = at::empty({xs.size(0)}, w.options());
  if (xs.size(0) == 0) return out;
  VmfRowParams params = row_params(xs, w, radius);
  params.log_normalizer = lognorm.const_data_ptr();
  params.labels = lab.const_data_ptr<int64_t>();
  params.out = out.mutable_data_ptr();
  params.status = launch.status();
  launch.run(&cpu::vmf_log_prob, PENACT_CUDA_LAUNCHER(vmf_log_prob), params);
  raise_for_labels(launch, w.size(0));
  return out;
}

template <Device D>
std::tuple<at::Tensor, at::Tensor> vmf_log_prob_backward(const at::Tensor& grad, const at::Tensor& x,
                                                         const at::Tensor& weight, const at::Tensor& labels,
                                                         double radius, bool need_x_grad, bool need_weight_grad) {
  check_log_prob_args(x, weight, nullptr, radius);
  check_floating(grad, "grad");
  PENACT_CHECK(grad.dim() == 1 && grad.size(0) == x.size(0), "grad must have shape [N] = [", x.size(0), "], got ",
               grad.sizes());
  check_same_device(grad, "grad", x, "x");
  const at::Tensor lab = labels_as_int64(labels, x.size(0), x, "x");
  Launch<D> launch(x);
  const at::Tensor xs = with_unit_column_stride(x), w = weight.contiguous();
  const at::Tensor g = grad.to(w.scalar_type()).contiguous();
  at::Tensor grad_x = need_x_grad ? at::empty(xs.sizes(), xs.options()) : at::empty({0}, xs.options());
  at::Tensor grad_w = need_weight_grad ? at::zeros_like(w) : at::empty({0}, w.options());
  if (xs.size(0) == 0 || !(need_x_grad || need_weight_grad)) return {grad_x, grad_w};
  if (D == Device::kCUDA && need_weight_grad) {
    at::globalContext().alertNotDeterministic("penact::vmf_log_prob_backward (weight) on CUDA");
  }
  VmfRowParams params = row_params(xs, w, radius);
  params.labels = lab.const_data_ptr<int64_t>();
  params.grad = g.const_data_ptr();
  params.grad_x = need_x_grad ? grad_x.mutable_data_ptr() : nullptr;
  params.grad_weight = need_weight_grad ? grad_w.mutable_data_ptr() : nullptr;
  params.status = launch.status();
  launch.run(&cpu::vmf_log_prob_backward, PENACT_CUDA_LAUNCHER(vmf_log_prob_backward), params);
  raise_for_labels(launch, w.size(0));
  return {grad_x, grad_w};
}

// [N, C] = (radius x_i / ||x_i||) . w_c + log C_D(kappa_c). The CPU multiplies blocks of rows that
// stay in cache and scales the product in an epilogue; CUDA scales the rows of x first (one pass
// over N x D) and lets one cuBLAS addmm add the log-normalizers: scaling the N x C product
// afterwards would move N x C elements twice, which for C > D is more than the pass over x.
template <Device D>
at::Tensor vmf_log_prob_all(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& log_normalizer,
                            double radius) {
  check_log_prob_args(x, weight, &log_normalizer, radius);
  Launch<D> launch(x);
  const at::Tensor w = weight.contiguous(), lognorm = log_normalizer.contiguous();
  if constexpr (D == Device::kCPU) {
    const at::Tensor xw = x.to(w.scalar_type()).contiguous();
    at::Tensor out = at::empty({xw.size(0), w.size(0)}, w.options());
    if (xw.size(0) == 0 || w.size(0) == 0) return out;
    VmfRowParams params = row_params(xw, w, radius);
    params.log_normalizer = lognorm.const_data_ptr();
    params.out = out.mutable_data_ptr();
    launch.run(&cpu::vmf_log_prob_all, nullptr, params);
    return out;
  } else {
    const at::Tensor xs = with_unit_column_stride(x);
    at::Tensor scaled = at::empty(xs.sizes(), w.options());
    if (xs.size(0) > 0) {
      VmfRowParams params = row_params(xs, w, radius);
      params.out = scaled.mutable_data_ptr();
      launch.run(nullptr, PENACT_CUDA_LAUNCHER(vmf_scale_rows_to_radius), params);
    }
    return at::addmm(lognorm, scaled, w.t());
  }
}

// ---------------------------------------------------------------------------------------------
// Differentiable sampling: dt/dkappa of a draw's cosine, and the fused backward of vmf_rsample

template <Device D>
at::Tensor vmf_cosine_kappa_grad(const at::Tensor& t, const at::Tensor& sine, const at::Tensor& kappa, int64_t dim) {
  check_floating(t, "t");
  check_floating(sine, "sine");
  check_floating(kappa, "kappa");
  PENACT_CHECK(sine.sizes() == t.sizes() && kappa.sizes() == t.sizes(),
               "t, sine and kappa must have the same shape (broadcast them first), got ", t.sizes(), ", ",
               sine.sizes(), " and ", kappa.sizes());
  check_same_device(sine, "sine", t, "t");
  check_same_device(kappa, "kappa", t, "t");
  PENACT_CHECK(dim >= 2, "dim must be at least 2, got ", dim);
  Launch<D> launch(t);
  const at::Tensor td = t.to(at::kDouble).contiguous();
  const at::Tensor sd = sine.to(at::kDouble).contiguous();
  const at::Tensor kd = kappa.to(at::kDouble).contiguous();
  at::Tensor out = at::empty(td.sizes(), td.options());
  if (out.numel() > 0) {
    const CosineKappaGradParams params{td.const_data_ptr<double>(), sd.const_data_ptr<double>(),
                                       kd.const_data_ptr<double>(), out.mutable_data_ptr<double>(),
                                       static_cast<double>(dim), out.numel()};
    launch.run(&cpu::vmf_cosine_kappa_grad, PENACT_CUDA_LAUNCHER(vmf_cosine_kappa_grad), params);
  }
  return out.to(t.scalar_type());
}

void check_rsample_backward_args(const at::Tensor& grad, const at::Tensor& sample, const at::Tensor& mean_direction,
                                 const at::Tensor& kappa, const at::Tensor& labels, double radius) {
  check_weight(mean_direction, "mean_direction", 2);
  check_vector(kappa, "kappa", mean_direction.size(0), "C", mean_direction, "mean_direction");
  PENACT_CHECK(labels.dim() == 1, "labels must have shape [N], got ", labels.sizes());
  const std::vector<int64_t> rows{labels.size(0), mean_direction.size(1)};
  PENACT_CHECK(sample.sizes() == at::IntArrayRef(rows) && grad.sizes() == at::IntArrayRef(rows),
               "sample and grad must have shape [N, D] = ", rows, ", got ", sample.sizes(), " and ", grad.sizes());
  PENACT_CHECK(sample.scalar_type() == mean_direction.scalar_type() && grad.scalar_type() == mean_direction.scalar_type(),
               "sample and grad must have the dtype of mean_direction (", mean_direction.scalar_type(), "), got ",
               sample.scalar_type(), " and ", grad.scalar_type());
  check_same_device(sample, "sample", mean_direction, "mean_direction");
  check_same_device(grad, "grad", mean_direction, "mean_direction");
  check_radius(radius);
}

template <Device D>
std::tuple<at::Tensor, at::Tensor> vmf_rsample_backward(const at::Tensor& grad, const at::Tensor& sample,
                                                        const at::Tensor& mean_direction, const at::Tensor& kappa,
                                                        const at::Tensor& labels, double radius,
                                                        bool need_mean_direction_grad, bool need_kappa_grad) {
  check_rsample_backward_args(grad, sample, mean_direction, kappa, labels, radius);
  const at::Tensor lab = labels_as_int64(labels, sample.size(0), mean_direction, "mean_direction");
  Launch<D> launch(mean_direction);
  const at::Tensor mu = mean_direction.contiguous(), x = sample.contiguous(), kap = kappa.contiguous();
  // A gradient that repeats one row (the backward of x @ b, say) is read in place.
  const bool rows_in_place = grad.size(0) > 0 && grad.stride(1) == 1 && (grad.stride(0) == 0 || grad.is_contiguous());
  const at::Tensor g = rows_in_place ? grad : grad.contiguous();
  const int64_t n = x.size(0), num_classes = mu.size(0);
  // The CPU kernel writes each class's first row instead of adding to zeros (when every row has
  // its own class, a zero-filling pass over [C, D] would cost as much as the kernel); CUDA adds.
  at::Tensor grad_mu = !need_mean_direction_grad ? at::empty({0}, mu.options())
                       : D == Device::kCUDA || n == 0 ? at::zeros_like(mu)
                                                      : at::empty_like(mu);
  at::Tensor grad_kappa_sum = at::zeros({need_kappa_grad ? num_classes : 0}, kap.options().dtype(at::kDouble));
  if (n > 0 && (need_mean_direction_grad || need_kappa_grad)) {
    at::Tensor row_scalars = at::empty({5, n}, kap.options().dtype(at::kDouble));
    RsampleBackwardParams params{};
    params.grad = g.const_data_ptr();
    params.grad_row_stride = g.stride(0);
    params.sample = x.const_data_ptr();
    params.mean_direction = mu.const_data_ptr();
    params.kappa = kap.const_data_ptr();
    params.labels = lab.const_data_ptr<int64_t>();
    params.grad_mean_direction = need_mean_direction_grad ? grad_mu.mutable_data_ptr() : nullptr;
    params.grad_kappa = need_kappa_grad ? grad_kappa_sum.mutable_data_ptr<double>() : nullptr;
    params.row_scalars = row_scalars.mutable_data_ptr<double>();
    params.num_rows = n;
    params.num_classes = num_classes;
    params.dim = mu.size(1);
    params.radius = radius;
    params.dtype = dtype_of(mu);
    params.status = launch.status();
    launch.run(&cpu::vmf_rsample_backward, PENACT_CUDA_LAUNCHER(vmf_rsample_backward), params);
    raise_for_labels(launch, num_classes);
  }
  at::Tensor grad_kappa = need_kappa_grad ? grad_kappa_sum.to(kap.scalar_type()) : at::empty({0}, kap.options());
  return {grad_mu, grad_kappa};
}

template <Device D>
void register_kernels(torch::Library& m) {
  m.impl("vmf_sample", &vmf_sample<D>);
  m.impl("vmf_log_prob", &vmf_log_prob<D>);
  m.impl("vmf_log_prob_backward", &vmf_log_prob_backward<D>);
  m.impl("vmf_log_prob_all", &vmf_log_prob_all<D>);
  m.impl("vmf_cosine_kappa_grad", &vmf_cosine_kappa_grad<D>);
  m.impl("vmf_rsample_backward", &vmf_rsample_backward<D>);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(penact, m) {
  m.def(
      "vmf_sample(Tensor mean_direction, Tensor kappa, Tensor labels, float radius, int seed, int offset, "
      "ScalarType? dtype=None) -> Tensor");
  m.def("vmf_log_prob(Tensor x, Tensor weight, Tensor log_normalizer, Tensor labels, float radius) -> Tensor");
  m.def(
      "vmf_log_prob_backward(Tensor grad, Tensor x, Tensor weight, Tensor labels, float radius, "
      "bool need_x_grad, bool need_weight_grad) -> (Tensor, Tensor)");
  m.def("vmf_log_prob_all(Tensor x, Tensor weight, Tensor log_normalizer, float radius) -> Tensor");
  m.def("vmf_cosine_kappa_grad(Tensor t, Tensor sine, Tensor kappa, int dim) -> Tensor");
  m.def("vmf_rsample(Tensor mean_direction, Tensor kappa, Tensor labels, float radius, int seed, int offset) -> Tensor");
  m.def(
      "vmf_rsample_backward(Tensor grad, Tensor sample, Tensor mean_direction, Tensor kappa, Tensor labels, "
      "float radius, bool need_mean_direction_grad, bool need_kappa_grad) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(penact, CompositeExplicitAutograd, m) { m.impl("vmf_rsample", &vmf_rsample); }
TORCH_LIBRARY_IMPL(penact, CPU, m) { register_kernels<Device::kCPU>(m); }
#if defined(PENACT_WITH_CUDA)
TORCH_LIBRARY_IMPL(penact, CUDA, m) { register_kernels<Device::kCUDA>(m); }
#endif

}  // namespace penact
