// CPU implementations of the gradient kernels of differentiable sampling: vmf_cosine_kappa_grad
// (elementwise in double over at::parallel_for) and the fused backward of vmf_rsample. The math of
// dt/dkappa is core/vmf_grad.h, shared with any other back-end.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "../core/vmf_grad.h"
#include "../ops.h"
#include "dispatch.h"

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

// Backward of vmf_rsample (the method: penact/_rsample_ops.py, whose torch-operator version is the
// oracle of this kernel and the CUDA path). Row i, of class y, holds x = r u = r t mu + r s v, so
//   t = x . mu / r,   o = x - r t mu = r s v,   s^2 = o . o / r^2,
// and with g the incoming gradient of x
//   grad_mu[y]    += r t g - (g . mu) o,
//   grad_kappa[y] += (dt/dkappa) (r g . mu - t (g . o) / s^2).
// Rows are taken in blocks small enough to stay in cache: one pass forms the dot products (x, mu
// and g read once from memory), dt/dkappa follows per row, and the accumulation per class re-reads
// the block from cache. With several threads the rows' scalars are formed in parallel and the
// accumulation runs over disjoint ranges of classes, rows in ascending order within each class:
// the result does not depend on the number of threads, and no two threads write one class.
template <typename T>
struct RsampleBackwardArgs {
  const T* grad;              // [N, D], row stride grad_row_stride (0: one row for all)
  const T* sample;            // [N, D]
  const T* mean_direction;    // [C, D]
  const T* kappa;             // [C]
  const int64_t* labels;      // [N]
  T* cosine;                  // [N]: t
  T* along;                   // [N]: g . mu
  T* sine2;                   // [N]: s^2
  T* across;                  // [N]: g . o
  double* kappa_rows;         // [N]: each row's term of grad_kappa, or null
  T* grad_mean_direction;     // [C, D] uninitialized (written at a class's first row), or null
  uint8_t* class_reached;     // [C] zero-filled: whether a row of the class was added
  double* grad_kappa;         // [C] zero-filled, or null
  T radius;
  int64_t grad_row_stride, dim;
};

template <typename T>
PENACT_CPU_DISPATCH void rsample_backward_dots(const RsampleBackwardArgs<T>& a, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const T* x = a.sample + i * a.dim;
    const T* mu = a.mean_direction + a.labels[i] * a.dim;
    const T* g = a.grad + i * a.grad_row_stride;
    T x_mu = T(0), g_mu = T(0);
#pragma omp simd reduction(+ : x_mu, g_mu)
    for (int64_t k = 0; k < a.dim; ++k) {
      x_mu += x[k] * mu[k];
      g_mu += g[k] * mu[k];
    }
    const T t = x_mu / a.radius;
    a.cosine[i] = t;
    a.along[i] = g_mu;
    if (a.kappa_rows == nullptr) continue;
    // o explicitly (not ||x||^2 - r^2 t^2, which cancels where t is close to 1).
    const T rt = a.radius * t;
    T o_o = T(0), g_o = T(0);
#pragma omp simd reduction(+ : o_o, g_o)
    for (int64_t k = 0; k < a.dim; ++k) {
      const T o = x[k] - rt * mu[k];
      o_o += o * o;
      g_o += g[k] * o;
    }
    a.sine2[i] = o_o / (a.radius * a.radius);
    a.across[i] = g_o;
  }
}

// dt/dkappa per row in double (not target-cloned: the same code as vmf_cosine_kappa_grad's).
template <typename T>
void rsample_backward_kappa_rows(const RsampleBackwardArgs<T>& a, int64_t begin, int64_t end) {
  const double dim = static_cast<double>(a.dim);
  for (int64_t i = begin; i < end; ++i) {
    const double t = a.cosine[i], sine2 = a.sine2[i];
    const double dt_dkappa = vmf_cosine_kappa_grad(dim, a.kappa[a.labels[i]], t, std::sqrt(sine2));
    // s = 0 only at t = +-1 (probability zero), where dt/dkappa = 0 as well.
    const double safe_sine2 = std::max<double>(sine2, std::numeric_limits<T>::min());
    a.kappa_rows[i] = dt_dkappa * (static_cast<double>(a.radius) * a.along[i] - t * a.across[i] / safe_sine2);
  }
}

// Adds rows [row_begin, row_end) whose class lies in [class_begin, class_end). A class's first row
// is written rather than added, which spares a zero-filling pass over grad_mean_direction ([N, D]
// when every row has its own class, as in VonMisesFisher.rsample).
template <typename T>
PENACT_CPU_DISPATCH void rsample_backward_accumulate(const RsampleBackwardArgs<T>& a, int64_t class_begin,
                                                     int64_t class_end, int64_t row_begin, int64_t row_end) {
  for (int64_t i = row_begin; i < row_end; ++i) {
    const int64_t y = a.labels[i];
    if (y < class_begin || y >= class_end) continue;
    if (a.grad_kappa != nullptr) a.grad_kappa[y] += a.kappa_rows[i];
    if (a.grad_mean_direction == nullptr) continue;
    const T* x = a.sample + i * a.dim;
    const T* mu = a.mean_direction + y * a.dim;
    const T* g = a.grad + i * a.grad_row_stride;
    T* out = a.grad_mean_direction + y * a.dim;
    const T rt = a.radius * a.cosine[i], along = a.along[i];
    if (a.class_reached[y]) {
#pragma omp simd
      for (int64_t k = 0; k < a.dim; ++k) out[k] += rt * g[k] - along * (x[k] - rt * mu[k]);
    } else {
#pragma omp simd
      for (int64_t k = 0; k < a.dim; ++k) out[k] = rt * g[k] - along * (x[k] - rt * mu[k]);
      a.class_reached[y] = 1;
    }
  }
}

// Zeroes the gradient rows of the classes in [class_begin, class_end) that no row reached.
template <typename T>
void zero_unreached_classes(const RsampleBackwardArgs<T>& a, int64_t class_begin, int64_t class_end) {
  if (a.grad_mean_direction == nullptr) return;
  for (int64_t y = class_begin; y < class_end; ++y) {
    if (!a.class_reached[y]) std::fill_n(a.grad_mean_direction + y * a.dim, a.dim, T(0));
  }
}

template <typename T>
void rsample_backward(const RsampleBackwardArgs<T>& a, int64_t n, int64_t num_classes) {
  const int64_t block = row_grain(a.dim);
  // One task (one thread, a small N, or a call from inside a parallel region) accumulates each
  // block while it is in cache; the order of the additions is the same either way.
  const bool one_task = n <= block || at::get_num_threads() == 1 || at::in_parallel_region();
  at::parallel_for(0, n, block, [&](int64_t begin, int64_t end) {
    for (int64_t first = begin; first < end; first += block) {
      const int64_t last = std::min(end, first + block);
      rsample_backward_dots(a, first, last);
      if (a.kappa_rows != nullptr) rsample_backward_kappa_rows(a, first, last);
      if (one_task) rsample_backward_accumulate(a, 0, num_classes, first, last);
    }
  });
  if (one_task) {
    zero_unreached_classes(a, 0, num_classes);
  } else {
    at::parallel_for(0, num_classes, 1, [&](int64_t begin, int64_t end) {
      rsample_backward_accumulate(a, begin, end, 0, n);
      zero_unreached_classes(a, begin, end);
    });
  }
}

std::tuple<at::Tensor, at::Tensor> vmf_rsample_backward_cpu(const at::Tensor& grad, const at::Tensor& sample,
                                                            const at::Tensor& mean_direction, const at::Tensor& kappa,
                                                            const at::Tensor& labels, double radius,
                                                            bool need_mean_direction_grad, bool need_kappa_grad) {
  check_rsample_backward_args(grad, sample, mean_direction, kappa, labels, radius);
  const at::Tensor mu = mean_direction.contiguous(), x = sample.contiguous(), kap = kappa.contiguous();
  const at::Tensor lab = checked_labels(labels, mu.size(0));
  // A gradient that repeats one row (the backward of x @ b, say) is read in place.
  const bool rows_in_place = grad.size(0) > 0 && grad.stride(1) == 1 && (grad.stride(0) == 0 || grad.is_contiguous());
  const at::Tensor g = rows_in_place ? grad : grad.contiguous();
  const int64_t n = x.size(0), dim = x.size(1), num_classes = mu.size(0);
  at::Tensor grad_mu = need_mean_direction_grad ? at::empty({num_classes, dim}, mu.options())
                                                : at::empty({0}, mu.options());
  at::Tensor grad_kappa_sum = at::zeros({need_kappa_grad ? num_classes : 0}, kap.options().dtype(at::kDouble));
  if (n == 0) grad_mu.zero_();
  if (n > 0 && (need_mean_direction_grad || need_kappa_grad)) {
    at::Tensor per_row = at::empty({4, n}, mu.options());
    at::Tensor class_reached = at::zeros({num_classes}, mu.options().dtype(at::kByte));
    at::Tensor kappa_rows = at::empty({need_kappa_grad ? n : 0}, kap.options().dtype(at::kDouble));
    AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "vmf_rsample_backward_cpu", [&] {
      scalar_t* scalars = per_row.data_ptr<scalar_t>();
      const RsampleBackwardArgs<scalar_t> args{
          g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), mu.data_ptr<scalar_t>(), kap.data_ptr<scalar_t>(),
          lab.data_ptr<int64_t>(), scalars, scalars + n, scalars + 2 * n, scalars + 3 * n,
          need_kappa_grad ? kappa_rows.data_ptr<double>() : nullptr,
          need_mean_direction_grad ? grad_mu.data_ptr<scalar_t>() : nullptr, class_reached.data_ptr<uint8_t>(),
          need_kappa_grad ? grad_kappa_sum.data_ptr<double>() : nullptr, static_cast<scalar_t>(radius),
          g.stride(0), dim};
      rsample_backward(args, n, num_classes);
    });
  }
  at::Tensor grad_kappa = need_kappa_grad ? grad_kappa_sum.to(kap.scalar_type()) : at::empty({0}, kap.options());
  return {grad_mu, grad_kappa};
}

}  // namespace

TORCH_LIBRARY_IMPL(penact, CPU, m) {
  m.impl("vmf_cosine_kappa_grad", &vmf_cosine_kappa_grad_cpu);
  m.impl("vmf_rsample_backward", &vmf_rsample_backward_cpu);
}

}  // namespace penact
