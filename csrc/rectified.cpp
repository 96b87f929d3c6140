// Schemas, argument checks and glue of the rectified family's operators (kernel interface:
// rectified.h; kernels: cpu/rectified_cpu.cpp, cuda/rectified_cuda.cu), and the composites rsample
// and mean. Backward passes (the float64 composite rectified_mean_backward among them) and fake
// kernels are registered from Python (penact/ops/rectified.py).
#include "rectified.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "glue.h"

namespace penact {
namespace {

// weight: [C, D] float32/float64; scale, zero_mass: [D] of weight's dtype and device. Their values
// are checked by the kernels that read them (rectified.h: status slots 1 and 2).
void check_params(const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& zero_mass) {
  check_weight(weight, "weight", 1);
  check_vector(scale, "scale", weight.size(1), "D", weight, "weight");
  check_vector(zero_mass, "zero_mass", weight.size(1), "D", weight, "weight");
}

// Raises for the labels and the three value checks of rectified.h.
void raise_for(const CheckStatus& status, int64_t num_classes, bool sampler) {
  const ValueCheck slot0 = sampler ? ValueCheck{"weight", "be finite", "entries", "class"}
                                   : ValueCheck{"a", "be non-negative (ReLU activations, no NaN)", "entries", "entry"};
  raise_if_bad(status, num_classes,
               {slot0, {"scale", "be finite and positive", "coordinates", "coordinate"},
                {"zero_mass", "be finite and non-negative", "coordinates", "coordinate"}});
}

// The base measure's terms per coordinate, [2, D] in weight's dtype (rectified.h).
template <Device D>
at::Tensor base_measure(Launch<D>& launch, const at::Tensor& scale, const at::Tensor& zero_mass) {
  const at::Tensor s = scale.contiguous(), m = zero_mass.contiguous();
  at::Tensor base = at::empty({2, s.size(0)}, s.options());
  if (s.size(0) == 0) return base;
  const RectifiedBaseParams params{s.const_data_ptr(), m.const_data_ptr(), base.mutable_data_ptr(), s.size(0),
                                   dtype_of(s), launch.status()};
  launch.run(&cpu::rectified_base, PENACT_CUDA_LAUNCHER(rectified_base), params);
  return base;
}

// ---------------------------------------------------------------------------------------------
// Normalizers and moments

template <Device D>
at::Tensor rectified_log_partition(const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& zero_mass) {
  check_params(weight, scale, zero_mass);
  Launch<D> launch(weight);
  const at::Tensor w = weight.contiguous(), s = scale.contiguous(), m = zero_mass.contiguous();
  at::Tensor out = at::empty({w.size(0)}, w.options());
  if (w.numel() == 0) return out.zero_();
  const RectifiedTableParams params{w.const_data_ptr(), s.const_data_ptr(), m.const_data_ptr(), out.mutable_data_ptr(),
                                    w.size(0), w.size(1), dtype_of(w), launch.status()};
  launch.run(&cpu::rectified_log_partition, PENACT_CUDA_LAUNCHER(rectified_log_partition), params);
  raise_for(launch.read_status(), w.size(0), false);
  return out;
}

template <Device D>
at::Tensor rectified_coordinate_stats(const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& zero_mass) {
  check_params(weight, scale, zero_mass);
  Launch<D> launch(weight);
  const at::Tensor w = weight.contiguous(), s = scale.contiguous(), m = zero_mass.contiguous();
  at::Tensor out = at::empty({5, w.size(0), w.size(1)}, w.options());
  if (w.numel() == 0) return out;
  const RectifiedTableParams params{w.const_data_ptr(), s.const_data_ptr(), m.const_data_ptr(), out.mutable_data_ptr(),
                                    w.size(0), w.size(1), dtype_of(w), launch.status()};
  launch.run(&cpu::rectified_coordinate_stats, PENACT_CUDA_LAUNCHER(rectified_coordinate_stats), params);
  raise_for(launch.read_status(), w.size(0), false);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Sampling

template <Device D>
at::Tensor rectified_sample(const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& zero_mass,
                            const at::Tensor& labels, int64_t seed, int64_t offset) {
  check_params(weight, scale, zero_mass);
  check_offset(offset);
  const at::Tensor lab = labels_as_int64(labels, -1, weight, "weight");
  Launch<D> launch(weight);
  const at::Tensor w = weight.contiguous(), s = scale.contiguous(), m = zero_mass.contiguous();
  const int64_t n = lab.size(0), num_classes = w.size(0), dim = w.size(1);
  at::Tensor out = at::empty({n, dim}, w.options());
  if (n == 0 || dim == 0) return out;
  // The CUDA kernels draw from per-class tables made on the device (the CPU makes its own, for
  // the classes drawn only).
  at::Tensor tables, own_stream;
  if constexpr (D == Device::kCUDA) {
    tables = at::empty({4, num_classes, dim}, w.options());
    own_stream = at::empty({num_classes, dim}, w.options().dtype(at::kByte));
  }
  RectifiedSampleParams params{};
  params.weight = w.const_data_ptr();
  params.scale = s.const_data_ptr();
  params.zero_mass = m.const_data_ptr();
  params.labels = lab.const_data_ptr<int64_t>();
  params.out = out.mutable_data_ptr();
  params.tables = tables.defined() ? tables.mutable_data_ptr() : nullptr;
  params.own_stream = own_stream.defined() ? own_stream.mutable_data_ptr<uint8_t>() : nullptr;
  params.num_rows = n;
  params.num_classes = num_classes;
  params.dim = dim;
  params.seed = static_cast<uint64_t>(seed);
  params.offset = offset;
  params.dtype = dtype_of(w);
  params.status = launch.status();
  launch.run(&cpu::rectified_sample, PENACT_CUDA_LAUNCHER(rectified_sample), params);
  raise_for(launch.read_status(), num_classes, true);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Log-densities and their backward

void check_activations(const at::Tensor& a, const at::Tensor& weight, const at::Tensor* log_partition) {
  check_rows(a, "a", weight, "weight");
  if (log_partition != nullptr) check_vector(*log_partition, "log_partition", weight.size(0), "C", weight, "weight");
}

RectifiedDensityParams density_params(const at::Tensor& a, const at::Tensor& weight, const at::Tensor& base) {
  RectifiedDensityParams params{};
  params.a = a.const_data_ptr();
  params.weight = weight.const_data_ptr();
  params.base = base.const_data_ptr();
  params.num_rows = a.size(0);
  params.num_classes = weight.size(0);
  params.dim = weight.size(1);
  params.a_dtype = dtype_of(a);
  params.weight_dtype = dtype_of(weight);
  return params;
}

// log p(a_i | y_i) = w_y . a_i - sum_{a_ij > 0} a_ij^2 / (2 s_j^2) + sum_{a_ij = 0} log m_j - log Z_y.
template <Device D>
at::Tensor rectified_log_prob(const at::Tensor& a, const at::Tensor& weight, const at::Tensor& scale,
                              const at::Tensor& zero_mass, const at::Tensor& log_partition, const at::Tensor& labels) {
  check_params(weight, scale, zero_mass);
  check_activations(a, weight, &log_partition);
  const at::Tensor lab = labels_as_int64(labels, a.size(0), a, "a");
  Launch<D> launch(a);
  at::Tensor out = at::empty({a.size(0)}, weight.options());
  if (a.size(0) == 0) return out;  // an empty batch reads no values to check
  const at::Tensor ac = a.contiguous(), w = weight.contiguous(), logz = log_partition.contiguous();
  const at::Tensor base = base_measure(launch, scale, zero_mass);
  RectifiedDensityParams params = density_params(ac, w, base);
  params.log_partition = logz.const_data_ptr();
  params.labels = lab.const_data_ptr<int64_t>();
  params.out = out.mutable_data_ptr();
  params.status = launch.status();
  launch.run(&cpu::rectified_log_prob, PENACT_CUDA_LAUNCHER(rectified_log_prob), params);
  raise_for(launch.read_status(), w.size(0), false);
  return out;
}

// [N, C] log-densities for every class: one matrix product a W^T (BLAS or cuBLAS), then an
// epilogue that adds the row's base-measure term and subtracts log Z_c, in place.
template <Device D>
at::Tensor rectified_log_prob_all(const at::Tensor& a, const at::Tensor& weight, const at::Tensor& scale,
                                  const at::Tensor& zero_mass, const at::Tensor& log_partition) {
  check_params(weight, scale, zero_mass);
  check_activations(a, weight, &log_partition);
  Launch<D> launch(a);
  if (a.size(0) == 0) return at::empty({0, weight.size(0)}, weight.options());  // no values to check
  const at::Tensor ac = a.contiguous(), w = weight.contiguous(), logz = log_partition.contiguous();
  const at::Tensor base = base_measure(launch, scale, zero_mass);
  at::Tensor out = at::mm(ac.to(w.scalar_type()), w.t()).contiguous();
  RectifiedDensityParams params = density_params(ac, w, base);
  params.log_partition = logz.const_data_ptr();
  params.out = out.mutable_data_ptr();
  params.status = launch.status();
  launch.run(&cpu::rectified_log_prob_all_epilogue, PENACT_CUDA_LAUNCHER(rectified_log_prob_all_epilogue), params);
  raise_for(launch.read_status(), w.size(0), false);
  return out;
}

// With g_i the incoming gradient and y = y_i:
//   dL/da_ij = g_i (w_yj - a_ij / s_j^2),   dL/dw_y = sum_{i: y_i = y} g_i a_i,
//   dL/ds_j = sum_i g_i a_ij^2 / s_j^3,     dL/dm_j = sum_i g_i [a_ij = 0] / m_j (0 where no row has a zero).
// log_partition's gradient is an index_add in Python.
template <Device D>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rectified_log_prob_backward(
    const at::Tensor& grad, const at::Tensor& a, const at::Tensor& weight, const at::Tensor& scale,
    const at::Tensor& zero_mass, const at::Tensor& labels, bool need_a_grad, bool need_weight_grad,
    bool need_scale_grad, bool need_zero_mass_grad) {
  check_params(weight, scale, zero_mass);
  check_activations(a, weight, nullptr);
  check_floating(grad, "grad");
  PENACT_CHECK(grad.dim() == 1 && grad.size(0) == a.size(0), "grad must have shape [N] = [", a.size(0), "], got ",
               grad.sizes());
  check_same_device(grad, "grad", a, "a");
  const at::Tensor lab = labels_as_int64(labels, a.size(0), a, "a");
  Launch<D> launch(a);
  const at::Tensor ac = a.contiguous(), w = weight.contiguous(), s = scale.contiguous(), m = zero_mass.contiguous();
  const at::Tensor g = grad.to(w.scalar_type()).contiguous();
  const int64_t n = ac.size(0), dim = ac.size(1);
  at::Tensor grad_a = need_a_grad ? at::empty_like(ac) : at::empty({0}, ac.options());
  at::Tensor grad_w = need_weight_grad ? at::zeros_like(w) : at::empty({0}, w.options());
  at::Tensor grad_s = need_scale_grad ? at::zeros({dim}, w.options()) : at::empty({0}, w.options());
  at::Tensor grad_m = need_zero_mass_grad ? at::zeros({dim}, w.options()) : at::empty({0}, w.options());
  if (n == 0 || !(need_a_grad || need_weight_grad || need_scale_grad || need_zero_mass_grad)) {
    return {grad_a, grad_w, grad_s, grad_m};  // an empty batch reads no values to check
  }
  const at::Tensor base = base_measure(launch, s, m);
  if (D == Device::kCUDA && (need_weight_grad || need_scale_grad || need_zero_mass_grad)) {
    at::globalContext().alertNotDeterministic("penact::rectified_log_prob_backward (weight, scale, zero_mass) on CUDA");
  }
  at::Tensor column_sums;
  if constexpr (D == Device::kCUDA) {
    if (need_scale_grad || need_zero_mass_grad) column_sums = at::zeros({2, dim}, w.options().dtype(at::kDouble));
  }
  RectifiedDensityParams params = density_params(ac, w, base);
  params.labels = lab.const_data_ptr<int64_t>();
  params.grad = g.const_data_ptr();
  params.scale = s.const_data_ptr();
  params.zero_mass = m.const_data_ptr();
  params.grad_a = need_a_grad ? grad_a.mutable_data_ptr() : nullptr;
  params.grad_weight = need_weight_grad ? grad_w.mutable_data_ptr() : nullptr;
  params.grad_scale = need_scale_grad ? grad_s.mutable_data_ptr() : nullptr;
  params.grad_zero_mass = need_zero_mass_grad ? grad_m.mutable_data_ptr() : nullptr;
  params.column_sums = column_sums.defined() ? column_sums.mutable_data_ptr<double>() : nullptr;
  params.status = launch.status();
  launch.run(&cpu::rectified_log_prob_backward, PENACT_CUDA_LAUNCHER(rectified_log_prob_backward), params);
  raise_for(launch.read_status(), w.size(0), false);
  return {grad_a, grad_w, grad_s, grad_m};
}

// The gradients of rectified_rsample in weight [C, D], scale [D] and zero_mass [D] from its draws
// (core/rectified.h), computed and summed in float64, returned in their dtype.
template <Device D>
std::tuple<at::Tensor, at::Tensor, at::Tensor> rectified_rsample_backward(
    const at::Tensor& grad, const at::Tensor& sample, const at::Tensor& weight, const at::Tensor& scale,
    const at::Tensor& zero_mass, const at::Tensor& labels) {
  check_params(weight, scale, zero_mass);
  PENACT_CHECK(sample.dim() == 2 && sample.size(1) == weight.size(1) && grad.sizes() == sample.sizes(),
               "sample and grad must have shape [N, D] with D = ", weight.size(1), ", got ", sample.sizes(), " and ",
               grad.sizes());
  PENACT_CHECK(sample.scalar_type() == weight.scalar_type() && grad.scalar_type() == weight.scalar_type(),
               "sample and grad must have the dtype of weight (", weight.scalar_type(), "), got ", sample.scalar_type(),
               " and ", grad.scalar_type());
  check_same_device(sample, "sample", weight, "weight");
  check_same_device(grad, "grad", weight, "weight");
  const at::Tensor lab = labels_as_int64(labels, sample.size(0), weight, "weight");
  Launch<D> launch(weight);
  const at::Tensor w = weight.contiguous(), s = scale.contiguous(), m = zero_mass.contiguous();
  const at::Tensor x = sample.contiguous(), g = grad.contiguous();
  const at::TensorOptions float64 = w.options().dtype(at::kDouble);
  at::Tensor grad_w = at::zeros(w.sizes(), float64), columns = at::zeros({2, w.size(1)}, float64);
  if (x.size(0) > 0 && w.size(1) > 0) {
    at::Tensor log_z = at::empty(w.sizes(), float64);
    RectifiedRsampleBackwardParams params{};
    params.grad = g.const_data_ptr();
    params.sample = x.const_data_ptr();
    params.weight = w.const_data_ptr();
    params.scale = s.const_data_ptr();
    params.zero_mass = m.const_data_ptr();
    params.labels = lab.const_data_ptr<int64_t>();
    params.log_z = log_z.mutable_data_ptr<double>();
    params.grad_weight = grad_w.mutable_data_ptr<double>();
    params.column_sums = columns.mutable_data_ptr<double>();
    params.num_rows = x.size(0);
    params.num_classes = w.size(0);
    params.dim = w.size(1);
    params.dtype = dtype_of(w);
    params.status = launch.status();
    if (D == Device::kCUDA) at::globalContext().alertNotDeterministic("penact::rectified_rsample_backward on CUDA");
    launch.run(&cpu::rectified_rsample_backward, PENACT_CUDA_LAUNCHER(rectified_rsample_backward), params);
    raise_if_bad(launch.read_status(), w.size(0), {});
  }
  // Copies of the two rows of `columns` (views of one buffer would alias each other).
  const at::ScalarType dtype = w.scalar_type();
  return {grad_w.to(dtype), columns[0].to(dtype, false, true), columns[1].to(dtype, false, true)};
}

// The draw is exactly rectified_sample's (same streams, same values); only autograd differs.
at::Tensor rectified_rsample(const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& zero_mass,
                             const at::Tensor& labels, int64_t seed, int64_t offset) {
  static const auto sample = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("penact::rectified_sample", "")
                                 .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                   const at::Tensor&, int64_t, int64_t)>();
  return sample.call(weight, scale, zero_mass, labels, seed, offset);
}

// E[a | y] = d log z / dw (coordinate_stats' third table); differentiable through its own backward.
at::Tensor rectified_mean(const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& zero_mass) {
  static const auto stats = c10::Dispatcher::singleton()
                                .findSchemaOrThrow("penact::rectified_coordinate_stats", "")
                                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return stats.call(weight, scale, zero_mass).select(0, 2).clone();
}

template <Device D>
void register_kernels(torch::Library& m) {
  m.impl("rectified_log_partition", &rectified_log_partition<D>);
  m.impl("rectified_coordinate_stats", &rectified_coordinate_stats<D>);
  m.impl("rectified_sample", &rectified_sample<D>);
  m.impl("rectified_log_prob", &rectified_log_prob<D>);
  m.impl("rectified_log_prob_backward", &rectified_log_prob_backward<D>);
  m.impl("rectified_log_prob_all", &rectified_log_prob_all<D>);
  m.impl("rectified_rsample_backward", &rectified_rsample_backward<D>);
}

}  // namespace

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
  m.def("rectified_rsample(Tensor weight, Tensor scale, Tensor zero_mass, Tensor labels, int seed, int offset) -> Tensor");
  m.def(
      "rectified_rsample_backward(Tensor grad, Tensor sample, Tensor weight, Tensor scale, Tensor zero_mass, "
      "Tensor labels) -> (Tensor, Tensor, Tensor)");
  m.def("rectified_mean(Tensor weight, Tensor scale, Tensor zero_mass) -> Tensor");
  m.def(
      "rectified_mean_backward(Tensor grad, Tensor weight, Tensor scale, Tensor zero_mass) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(penact, CompositeExplicitAutograd, m) {
  m.impl("rectified_rsample", &rectified_rsample);
  m.impl("rectified_mean", &rectified_mean);
}

TORCH_LIBRARY_IMPL(penact, CPU, m) { register_kernels<Device::kCPU>(m); }
#if defined(PENACT_WITH_CUDA)
TORCH_LIBRARY_IMPL(penact, CUDA, m) { register_kernels<Device::kCUDA>(m); }
#endif

}  // namespace penact
