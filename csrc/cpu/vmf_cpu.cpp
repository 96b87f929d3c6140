// CPU implementations of the vMF operators: rows in parallel (at::parallel_for), the per-row
// inner loops written over small fixed-width lane arrays so that the compiler vectorizes them.
// All math comes from csrc/core, the same code the CUDA kernels run.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../core/normals.h"
#include "../core/special.h"
#include "../core/wood.h"
#include "../ops.h"
#include "dispatch.h"

namespace penact {
namespace {

template <typename T>
struct Dot {
  T dot, sumsq;  // a . b and ||b||^2
};

// a . b and b . b in one read of b (a is a cached weight row, b a row of x). `omp simd` lets the
// compiler reassociate the sums into vector accumulators.
template <typename W, typename X, typename Acc>
Dot<Acc> dot_and_sumsq(const W* a, const X* b, int64_t n) {
  Acc dot = Acc(0), sumsq = Acc(0);
#pragma omp simd reduction(+ : dot, sumsq)
  for (int64_t k = 0; k < n; ++k) {
    const Acc bv = static_cast<Acc>(b[k]);
    dot += static_cast<Acc>(a[k]) * bv;
    sumsq += bv * bv;
  }
  return {dot, sumsq};
}


// Rows with distinct mean directions (one per draw, as VonMisesFisher.rsample makes them) stream
// N x D values from memory, which the hardware prefetcher does not fetch across 4 KiB pages: the
// row loop asks for the direction of the row kPrefetchBytes ahead. Measured on 2 shared cores,
// one thread, caches flushed before each call, N = 1e4, D = 512: the row kernel took 1.13-1.24x the
// labelled kernel's time (100 classes) without prefetching, 1.1-1.25x one row ahead, 1.04-1.10x
// 16 KiB ahead; at N = 1e5 about 1.1x with or without (the noise of those runs is +-0.05).
constexpr int64_t kPrefetchBytes = 16384;

template <typename T>
inline void prefetch_row(const T* row, int64_t dim) {
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t k = 0; k < dim; k += kLine) __builtin_prefetch(row + k, 0, 3);
}

// Philox blocks generated per batch: lane loops of this width vectorize across blocks.
constexpr int kBlocksPerBatch = 16;

// The Gaussian vector of one row: normals 0 .. D-1 of the row's stream (see core/normals.h).
template <typename T>
void row_normals(uint64_t seed, uint64_t row, T* gauss, int64_t dim) {
  constexpr int per_block = NormalsPerBlock<T>::value;
  const int64_t blocks = (dim + per_block - 1) / per_block;
  for (int64_t first = 0; first < blocks; first += kBlocksPerBatch) {
    T batch[kBlocksPerBatch * per_block];
    for (int l = 0; l < kBlocksPerBatch; ++l) {
      normals_from_block(philox4x32_10(seed, row, static_cast<uint64_t>(first + l)), batch + l * per_block);
    }
    const int64_t count = std::min<int64_t>(kBlocksPerBatch * per_block, dim - first * per_block);
    for (int64_t k = 0; k < count; ++k) gauss[first * per_block + k] = batch[k];
  }
}

// u = t mu + sqrt(1 - t^2) v, with v the normalized part of a Gaussian vector orthogonal to mu
// (no rotation matrix, no Householder vector, which is singular when mu lies on an axis).
// Computed in T, stored as Out (float16/bfloat16 outputs of a float32 computation).
template <typename T, typename Out>
void sample_row(uint64_t seed, uint64_t row, const T* mu, double kappa, double radius, int64_t dim, T* gauss,
                Out* out) {
  if (!(kappa >= 0.0) || isinf(kappa)) {  // invalid concentration: a NaN row, never an endless loop
    for (int64_t k = 0; k < dim; ++k) out[k] = static_cast<Out>(NAN);
    return;
  }
  RowStream stream(seed, row);
  const Cosine cosine = vmf_cosine_draw(stream, static_cast<double>(dim), kappa);
  row_normals<T>(seed, row, gauss, dim);
  const T along = dot_and_sumsq<T, T, T>(mu, gauss, dim).dot;
#pragma omp simd
  for (int64_t k = 0; k < dim; ++k) gauss[k] -= along * mu[k];
  // Project twice ("twice is enough"): when g is nearly parallel to mu (likely only for small D)
  // one projection leaves a component along mu of relative size eps ||g|| / ||v||; the second
  // removes it, folded into the output pass. ||v - c mu||^2 = ||v||^2 - c^2 since mu . mu = 1.
  const Dot<T> residual = dot_and_sumsq<T, T, T>(mu, gauss, dim);
  const double orth_norm2 = static_cast<double>(residual.sumsq) - static_cast<double>(residual.dot) * residual.dot;
  // A zero orthogonal part has probability zero; guard the division all the same.
  const double orth_scale = orth_norm2 > 0.0 ? radius * cosine.sine / std::sqrt(orth_norm2) : 0.0;
  const T scale_orth = static_cast<T>(orth_scale);
  const T scale_mu = static_cast<T>(radius * cosine.t - orth_scale * static_cast<double>(residual.dot));
  for (int64_t k = 0; k < dim; ++k) out[k] = static_cast<Out>(scale_mu * mu[k] + scale_orth * gauss[k]);
}

template <typename T, typename Out>
struct SampleArgs {
  const T* mean_direction;  // [C, D]
  const double* kappa;      // [C]
  const int64_t* labels;    // [N]
  Out* out;                 // [N, D]
  int64_t dim;
  double radius;
  uint64_t seed, offset;
};

template <typename T, typename Out>
PENACT_CPU_DISPATCH void sample_rows(const SampleArgs<T, Out>& args, int64_t begin, int64_t end) {
  std::vector<T> gauss(static_cast<size_t>(args.dim));
  const int64_t ahead = std::max<int64_t>(1, kPrefetchBytes / (args.dim * static_cast<int64_t>(sizeof(T))));
  for (int64_t i = begin; i < std::min(end, begin + ahead); ++i) {
    prefetch_row(args.mean_direction + args.labels[i] * args.dim, args.dim);
  }
  for (int64_t i = begin; i < end; ++i) {
    const int64_t y = args.labels[i];
    if (i + ahead < end) prefetch_row(args.mean_direction + args.labels[i + ahead] * args.dim, args.dim);
    sample_row<T, Out>(args.seed, args.offset + static_cast<uint64_t>(i), args.mean_direction + y * args.dim,
                       args.kappa[y], args.radius, args.dim, gauss.data(), args.out + i * args.dim);
  }
}


at::Tensor vmf_sample_cpu(const at::Tensor& mean_direction, const at::Tensor& kappa, const at::Tensor& labels,
                          double radius, int64_t seed, int64_t offset, std::optional<at::ScalarType> dtype) {
  check_sample_args(mean_direction, kappa, labels, radius, offset, dtype);
  const at::Tensor mu = mean_direction.contiguous();
  const at::Tensor kap = kappa.to(at::kDouble).contiguous();
  const at::Tensor lab = checked_labels(labels, mu.size(0));
  const int64_t n = lab.size(0), dim = mu.size(1);
  at::Tensor out = at::empty({n, dim}, mu.options().dtype(dtype.value_or(mu.scalar_type())));
  if (n == 0) return out;
  // The (output, computation) dtype pairs are those of (x, weight) in log_prob.
  dispatch_x_weight(out, mu, [&](auto out_tag, auto compute_tag) {
    using Out = decltype(out_tag);
    using T = decltype(compute_tag);
    const SampleArgs<T, Out> args{mu.data_ptr<T>(), kap.data_ptr<double>(), lab.data_ptr<int64_t>(),
                                  out.data_ptr<Out>(), dim, radius, static_cast<uint64_t>(seed),
                                  static_cast<uint64_t>(offset)};
    at::parallel_for(0, n, row_grain(dim), [&](int64_t begin, int64_t end) { sample_rows(args, begin, end); });
  });
  return out;
}

// log p(x_i | y_i) = log C_D(kappa_y) + r w_y . x_i / ||x_i||: norm and dot in one read of x_i.
template <typename X, typename W>
PENACT_CPU_DISPATCH void log_prob_row_range(const X* x, const W* weight, const W* log_normalizer, const int64_t* labels,
                                            W radius, int64_t dim, W* out, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const int64_t y = labels[i];
    const Dot<W> d = dot_and_sumsq<W, X, W>(weight + y * dim, x + i * dim, dim);
    out[i] = log_normalizer[y] + radius * d.dot / std::sqrt(d.sumsq);
  }
}

template <typename X, typename W>
void log_prob_rows(const X* x, const W* weight, const W* log_normalizer, const int64_t* labels, W radius, int64_t dim,
                   W* out, int64_t n) {
  at::parallel_for(0, n, row_grain(dim), [&](int64_t begin, int64_t end) {
    log_prob_row_range<X, W>(x, weight, log_normalizer, labels, radius, dim, out, begin, end);
  });
}

at::Tensor vmf_log_prob_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& log_normalizer,
                            const at::Tensor& labels, double radius) {
  check_log_prob_args(x, weight, &log_normalizer, &labels, radius);
  const at::Tensor xc = x.contiguous(), w = weight.contiguous(), lognorm = log_normalizer.contiguous();
  const at::Tensor lab = checked_labels(labels, w.size(0));
  const int64_t n = xc.size(0), dim = xc.size(1);
  at::Tensor out = at::empty({n}, w.options());
  dispatch_x_weight(xc, w, [&](auto x_tag, auto w_tag) {
    using X = decltype(x_tag);
    using W = decltype(w_tag);
    log_prob_rows<X, W>(xc.data_ptr<X>(), w.data_ptr<W>(), lognorm.data_ptr<W>(), lab.data_ptr<int64_t>(),
                        static_cast<W>(radius), dim, out.data_ptr<W>(), n);
  });
  return out;
}

// Backward of vmf_log_prob for x and weight (the log_normalizer's gradient is an index_add in
// Python). With n = ||x_i|| and g_i the incoming gradient:
//   dL/dx_i = g_i r (w_y / n - (w_y . x_i) x_i / n^3),     dL/dw_y = sum_{i: y_i = y} g_i r x_i / n.
// The weight gradient is gathered per class by tasks that own disjoint ranges of classes, so no
// two threads write one row and no [N, D] intermediate is formed.
template <typename X, typename W>
struct LogProbBackwardArgs {
  const X* x;              // [N, D]
  const W* weight;         // [C, D]
  const W* grad;           // [N]
  const int64_t* labels;   // [N]
  W* coefficients;         // [N, 2]: r g_i / n and r g_i (w . x) / n^3, shared by both gradients
  X* grad_x;               // [N, D] or null
  W* grad_weight;          // [C, D] zero-filled, or null
  W radius;
  int64_t n, dim;
};

template <typename X, typename W>
PENACT_CPU_DISPATCH void log_prob_backward_rows(const LogProbBackwardArgs<X, W>& a, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const X* xi = a.x + i * a.dim;
    const W* wy = a.weight + a.labels[i] * a.dim;
    const Dot<W> d = dot_and_sumsq<W, X, W>(wy, xi, a.dim);
    const W inv_norm = W(1) / std::sqrt(d.sumsq);
    const W along = a.radius * a.grad[i] * inv_norm;
    const W radial = along * d.dot * inv_norm * inv_norm;
    a.coefficients[2 * i] = along;
    a.coefficients[2 * i + 1] = radial;
    if (a.grad_x == nullptr) continue;
    X* gx = a.grad_x + i * a.dim;
    for (int64_t k = 0; k < a.dim; ++k) gx[k] = static_cast<X>(along * wy[k] - radial * static_cast<W>(xi[k]));
  }
}

template <typename X, typename W>
PENACT_CPU_DISPATCH void log_prob_backward_classes(const LogProbBackwardArgs<X, W>& a, int64_t class_begin,
                                                   int64_t class_end) {
  for (int64_t i = 0; i < a.n; ++i) {
    const int64_t y = a.labels[i];
    if (y < class_begin || y >= class_end) continue;
    const X* xi = a.x + i * a.dim;
    W* gw = a.grad_weight + y * a.dim;
    const W along = a.coefficients[2 * i];
    for (int64_t k = 0; k < a.dim; ++k) gw[k] += along * static_cast<W>(xi[k]);
  }
}

std::tuple<at::Tensor, at::Tensor> vmf_log_prob_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                             const at::Tensor& weight, const at::Tensor& labels,
                                                             double radius, bool need_x_grad,
                                                             bool need_weight_grad) {
  check_log_prob_backward_args(grad, x, weight, labels, radius);
  const at::Tensor xc = x.contiguous(), w = weight.contiguous();
  const at::Tensor g = grad.to(w.scalar_type()).contiguous();
  const at::Tensor lab = checked_labels(labels, w.size(0));
  const int64_t n = xc.size(0), dim = xc.size(1), num_classes = w.size(0);
  at::Tensor grad_x = need_x_grad ? at::empty_like(xc) : at::empty({0}, xc.options());
  at::Tensor grad_w = need_weight_grad ? at::zeros_like(w) : at::empty({0}, w.options());
  if (n == 0) return {grad_x, grad_w};
  at::Tensor coefficients = at::empty({n, 2}, w.options());
  dispatch_x_weight(xc, w, [&](auto x_tag, auto w_tag) {
    using X = decltype(x_tag);
    using W = decltype(w_tag);
    const LogProbBackwardArgs<X, W> args{xc.data_ptr<X>(), w.data_ptr<W>(), g.data_ptr<W>(), lab.data_ptr<int64_t>(),
                                         coefficients.data_ptr<W>(), need_x_grad ? grad_x.data_ptr<X>() : nullptr,
                                         need_weight_grad ? grad_w.data_ptr<W>() : nullptr, static_cast<W>(radius),
                                         n, dim};
    at::parallel_for(0, n, row_grain(dim), [&](int64_t begin, int64_t end) { log_prob_backward_rows(args, begin, end); });
    if (need_weight_grad) {
      at::parallel_for(0, num_classes, 1, [&](int64_t begin, int64_t end) { log_prob_backward_classes(args, begin, end); });
    }
  });
  return {grad_x, grad_w};
}

// [N, C] log-densities for every class: x W^T by BLAS, then an epilogue that scales row i by
// r / ||x_i|| and adds log C_D(kappa_c). Tasks take blocks of rows small enough to stay in cache
// (kRowsPerBlock x D), so the norm pass, the product and the epilogue read x from memory once.
constexpr int64_t kRowsPerBlock = 256;

template <typename T>
PENACT_CPU_DISPATCH void scale_rows_add(T* out, const T* x, const T* log_normalizer, T radius, int64_t rows,
                                        int64_t dim, int64_t num_classes) {
  for (int64_t i = 0; i < rows; ++i) {
    T sumsq = T(0);
    const T* xi = x + i * dim;
#pragma omp simd reduction(+ : sumsq)
    for (int64_t k = 0; k < dim; ++k) sumsq += xi[k] * xi[k];
    const T scale = radius / std::sqrt(sumsq);
    T* row = out + i * num_classes;
#pragma omp simd
    for (int64_t c = 0; c < num_classes; ++c) row[c] = row[c] * scale + log_normalizer[c];
  }
}

at::Tensor vmf_log_prob_all_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& log_normalizer,
                                double radius) {
  check_log_prob_args(x, weight, &log_normalizer, nullptr, radius);
  const at::Tensor w = weight.contiguous(), lognorm = log_normalizer.contiguous();
  const at::Tensor xw = x.to(w.scalar_type()).contiguous();
  const int64_t n = xw.size(0), dim = xw.size(1), num_classes = w.size(0);
  at::Tensor out = at::empty({n, num_classes}, w.options());
  const at::Tensor weight_t = w.t();
  const int64_t blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "vmf_log_prob_all_cpu", [&] {
    const scalar_t r = static_cast<scalar_t>(radius);
    at::parallel_for(0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
      for (int64_t block = block_begin; block < block_end; ++block) {
        const int64_t begin = block * kRowsPerBlock, rows = std::min(kRowsPerBlock, n - begin);
        at::Tensor out_block = out.narrow(0, begin, rows);
        at::mm_out(out_block, xw.narrow(0, begin, rows), weight_t);  // single-threaded inside a task
        scale_rows_add<scalar_t>(out_block.data_ptr<scalar_t>(), xw.data_ptr<scalar_t>() + begin * dim,
                                 lognorm.data_ptr<scalar_t>(), r, rows, dim, num_classes);
      }
    });
  });
  return out;
}

// Elementwise special functions: computed in double whatever the dtype, then rounded once.
template <typename Fn>
at::Tensor elementwise_cpu(const at::Tensor& order, const at::Tensor& x, Fn fn) {
  check_elementwise_args(order, x);
  const at::Tensor xd = x.to(at::kDouble).contiguous();
  const at::Tensor vd = order.to(at::kDouble).contiguous();
  at::Tensor out = at::empty(xd.sizes(), xd.options());
  const double* x_data = xd.data_ptr<double>();
  const double* v_data = vd.data_ptr<double>();
  double* out_data = out.data_ptr<double>();
  at::parallel_for(0, xd.numel(), 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out_data[i] = fn(v_data[i], x_data[i]);
  });
  return out.to(x.scalar_type());
}

at::Tensor log_bessel_iv_cpu(const at::Tensor& order, const at::Tensor& x) {
  return elementwise_cpu(order, x, [](double v, double z) { return log_bessel_iv(v, z); });
}

at::Tensor bessel_iv_ratio_cpu(const at::Tensor& order, const at::Tensor& x) {
  return elementwise_cpu(order, x, [](double v, double z) { return bessel_iv_ratio(v, z); });
}

at::Tensor vmf_log_normalizer_cpu(const at::Tensor& kappa, int64_t dim) {
  check_log_normalizer_args(kappa, dim);
  const double d = static_cast<double>(dim);
  return elementwise_cpu(kappa, kappa,
                         [d](double k, double) { return vmf_log_normalizer(d, k); });
}

}  // namespace

TORCH_LIBRARY_IMPL(penact, CPU, m) {
  m.impl("log_bessel_iv", &log_bessel_iv_cpu);
  m.impl("bessel_iv_ratio", &bessel_iv_ratio_cpu);
  m.impl("vmf_log_normalizer", &vmf_log_normalizer_cpu);
  m.impl("vmf_sample", &vmf_sample_cpu);
  m.impl("vmf_log_prob", &vmf_log_prob_cpu);
  m.impl("vmf_log_prob_backward", &vmf_log_prob_backward_cpu);
  m.impl("vmf_log_prob_all", &vmf_log_prob_all_cpu);
}

}  // namespace penact
