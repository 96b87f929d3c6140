// CPU kernels of the sphere family (interface: vmf.h): rows in parallel, the per-row inner loops
// written over small fixed-width lane arrays or `omp simd` reductions so that the compiler
// vectorizes them, compiled per instruction set (PENACT_CPU_DISPATCH). The formulas come from
// csrc/core (vmf_rows.h, wood.h, normals.h, vmf_grad.h), the code the CUDA kernels run.
#include <ATen/ATen.h>

#include <cmath>
#include <mutex>
#include <vector>

#include "../core/normals.h"
#include "../core/vmf_grad.h"
#include "../core/vmf_rows.h"
#include "../core/wood.h"
#include "../vmf.h"
#include "dispatch.h"

namespace penact {
namespace cpu {
namespace {

template <typename T>
struct Dot {
  T dot, sumsq;  // a . b and ||b||^2
};

// a . b and b . b in one read of b. `omp simd` lets the compiler reassociate the sums into vector
// accumulators.
template <typename A, typename B, typename Acc>
Dot<Acc> dot_and_sumsq(const A* a, const B* b, int64_t n) {
  Acc dot = Acc(0), sumsq = Acc(0);
#pragma omp simd reduction(+ : dot, sumsq)
  for (int64_t k = 0; k < n; ++k) {
    const Acc bv = static_cast<Acc>(b[k]);
    dot += static_cast<Acc>(a[k]) * bv;
    sumsq += bv * bv;
  }
  return {dot, sumsq};
}

template <typename Out>
void fill_nan(Out* row, int64_t dim) {
  for (int64_t k = 0; k < dim; ++k) row[k] = static_cast<Out>(NAN);
}

// ---------------------------------------------------------------------------------------------
// vmf_sample

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

// One row (core/vmf_rows.h): the cosine, the Gaussian vector, two projections off mu, the output.
// The first pass over mu also gives ||mu||^2, the unit check of the class's direction. Returns
// whether the direction passed. Computed in T, stored as Out.
template <typename T, typename Out>
bool sample_row(uint64_t seed, uint64_t row, const T* mu, double kappa, double radius, double unit_tolerance,
                int64_t dim, T* gauss, Out* out) {
  if (!valid_concentration(kappa)) {
    fill_nan(out, dim);
    return true;
  }
  RowStream stream(seed, row);
  const Cosine cosine = vmf_cosine_draw(stream, static_cast<double>(dim), kappa);
  row_normals<T>(seed, row, gauss, dim);
  const Dot<T> first = dot_and_sumsq<T, T, T>(gauss, mu, dim);  // mu . g and mu . mu
#pragma omp simd
  for (int64_t k = 0; k < dim; ++k) gauss[k] -= first.dot * mu[k];
  const Dot<T> residual = dot_and_sumsq<T, T, T>(mu, gauss, dim);
  const RowScales<T> scales = sample_row_scales<T>(radius, cosine.t, cosine.sine, residual.dot, residual.sumsq);
  for (int64_t k = 0; k < dim; ++k) out[k] = static_cast<Out>(scales.along_mean * mu[k] + scales.along_residual * gauss[k]);
  return is_unit_vector(first.sumsq, unit_tolerance);
}

template <typename T, typename Out>
PENACT_CPU_DISPATCH void sample_rows(const VmfSampleParams& p, int64_t begin, int64_t end, CheckStatus& found) {
  const T* mean_direction = static_cast<const T*>(p.mean_direction);
  Out* out = static_cast<Out*>(p.out);
  const int64_t dim = p.dim;
  std::vector<T> gauss(static_cast<size_t>(dim));
  const auto in_range = [&](int64_t y) { return y >= 0 && y < p.num_classes; };
  const int64_t ahead = std::max<int64_t>(1, kPrefetchBytes / (dim * static_cast<int64_t>(sizeof(T))));
  for (int64_t i = begin; i < std::min(end, begin + ahead); ++i) {
    if (in_range(p.labels[i])) prefetch_row(mean_direction + p.labels[i] * dim, dim);
  }
  for (int64_t i = begin; i < end; ++i) {
    const int64_t y = p.labels[i];
    if (i + ahead < end && in_range(p.labels[i + ahead])) prefetch_row(mean_direction + p.labels[i + ahead] * dim, dim);
    if (!in_range(y)) {
      record_bad_label(found, y);
      fill_nan(out + i * dim, dim);
      continue;
    }
    const bool unit = sample_row<T, Out>(p.seed, p.offset + static_cast<uint64_t>(i), mean_direction + y * dim,
                                         p.kappa[y], p.radius, p.unit_tolerance, dim, gauss.data(), out + i * dim);
    if (!unit) record_bad_value(found, 0, y);
  }
}

// ---------------------------------------------------------------------------------------------
// vmf_log_prob and its backward

template <typename X, typename W>
PENACT_CPU_DISPATCH void log_prob_rows(const VmfRowParams& p, int64_t begin, int64_t end, CheckStatus& found) {
  const X* x = static_cast<const X*>(p.x);
  const W* weight = static_cast<const W*>(p.weight);
  const W* log_normalizer = static_cast<const W*>(p.log_normalizer);
  W* out = static_cast<W*>(p.out);
  const W radius = static_cast<W>(p.radius);
  for (int64_t i = begin; i < end; ++i) {
    const int64_t y = p.labels[i];
    if (!(y >= 0 && y < p.num_classes)) {
      record_bad_label(found, y);
      out[i] = W(NAN);
      continue;
    }
    const Dot<W> d = dot_and_sumsq<W, X, W>(weight + y * p.dim, x + i * p.x_row_stride, p.dim);
    out[i] = row_log_density(log_normalizer[y], radius, d.dot, d.sumsq);
  }
}

// The weight gradient is gathered per class by tasks that own disjoint ranges of classes, so no
// two threads write one row and no [N, D] intermediate is formed; the rows' coefficients
// (core/vmf_rows.h) come from a first pass shared with grad_x.
template <typename X, typename W>
PENACT_CPU_DISPATCH void log_prob_backward_rows(const VmfRowParams& p, W* coefficients, int64_t begin, int64_t end,
                                                CheckStatus& found) {
  const X* x = static_cast<const X*>(p.x);
  const W* weight = static_cast<const W*>(p.weight);
  const W* grad = static_cast<const W*>(p.grad);
  X* grad_x = static_cast<X*>(p.grad_x);
  const W radius = static_cast<W>(p.radius);
  for (int64_t i = begin; i < end; ++i) {
    const int64_t y = p.labels[i];
    X* gx = grad_x != nullptr ? grad_x + i * p.dim : nullptr;
    if (!(y >= 0 && y < p.num_classes)) {
      record_bad_label(found, y);
      if (gx != nullptr) fill_nan(gx, p.dim);
      continue;
    }
    const X* xi = x + i * p.x_row_stride;
    const W* wy = weight + y * p.dim;
    const Dot<W> d = dot_and_sumsq<W, X, W>(wy, xi, p.dim);
    const RowLogDensityGrad<W> g = row_log_density_grad(grad[i], radius, d.dot, d.sumsq);
    coefficients[i] = g.along;
    if (gx == nullptr) continue;
    for (int64_t k = 0; k < p.dim; ++k) gx[k] = static_cast<X>(g.along * wy[k] - g.radial * static_cast<W>(xi[k]));
  }
}

template <typename X, typename W>
PENACT_CPU_DISPATCH void log_prob_backward_classes(const VmfRowParams& p, const W* coefficients, int64_t class_begin,
                                                   int64_t class_end) {
  const X* x = static_cast<const X*>(p.x);
  W* grad_weight = static_cast<W*>(p.grad_weight);
  for (int64_t i = 0; i < p.num_rows; ++i) {
    const int64_t y = p.labels[i];
    if (y < class_begin || y >= class_end) continue;
    const X* xi = x + i * p.x_row_stride;
    W* gw = grad_weight + y * p.dim;
    const W along = coefficients[i];
    for (int64_t k = 0; k < p.dim; ++k) gw[k] += along * static_cast<W>(xi[k]);
  }
}

// ---------------------------------------------------------------------------------------------
// vmf_log_prob_all: x W^T by BLAS, then an epilogue that scales row i by r / ||x_i|| and adds
// log C_D(kappa_c). Tasks take blocks of rows small enough to stay in cache (kRowsPerBlock x D),
// so the norm pass, the product and the epilogue read x from memory once.
constexpr int64_t kRowsPerBlock = 256;

template <typename T>
PENACT_CPU_DISPATCH void scale_rows_add(T* out, const T* x, const T* log_normalizer, T radius, int64_t rows,
                                        int64_t dim, int64_t num_classes) {
  for (int64_t i = 0; i < rows; ++i) {
    T sumsq = T(0);
    const T* xi = x + i * dim;
#pragma omp simd reduction(+ : sumsq)
    for (int64_t k = 0; k < dim; ++k) sumsq += xi[k] * xi[k];
    const T scale = row_scale_to_radius(radius, sumsq);
    T* row = out + i * num_classes;
#pragma omp simd
    for (int64_t c = 0; c < num_classes; ++c) row[c] = row[c] * scale + log_normalizer[c];
  }
}

template <typename T>
void log_prob_all_typed(const VmfRowParams& p) {
  const at::ScalarType dtype = c10::CppTypeToScalarType<T>::value;
  const at::TensorOptions options = at::TensorOptions().dtype(dtype);
  // Views of the caller's buffers (no autograd: the kernel runs below it, and from_blob tensors do
  // not require grad, also on the worker threads, which do not inherit the caller's dispatch state).
  const at::Tensor x = at::from_blob(const_cast<void*>(p.x), {p.num_rows, p.dim}, options);
  const at::Tensor weight_t = at::from_blob(const_cast<void*>(p.weight), {p.num_classes, p.dim}, options).t();
  const at::Tensor out = at::from_blob(p.out, {p.num_rows, p.num_classes}, options);
  const int64_t blocks = (p.num_rows + kRowsPerBlock - 1) / kRowsPerBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t begin = block * kRowsPerBlock, rows = std::min(kRowsPerBlock, p.num_rows - begin);
      at::Tensor out_block = out.narrow(0, begin, rows);
      at::mm_out(out_block, x.narrow(0, begin, rows), weight_t);  // single-threaded inside a task
      scale_rows_add<T>(out_block.data_ptr<T>(), static_cast<const T*>(p.x) + begin * p.dim,
                        static_cast<const T*>(p.log_normalizer), static_cast<T>(p.radius), rows, p.dim,
                        p.num_classes);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// The backward of vmf_rsample (core/vmf_rows.h). Rows are taken in blocks small enough to stay in
// cache: one pass forms the dot products (x, mu and g read once from memory), dt/dkappa follows
// per row, and the accumulation per class re-reads the block from cache. With several threads the
// rows' scalars are formed in parallel and the accumulation runs over disjoint ranges of classes,
// rows in ascending order within each class: the result does not depend on the number of threads,
// and no two threads write one class.
template <typename T>
struct RsampleRows {
  const T* grad;
  const T* sample;
  const T* mean_direction;
  const T* kappa;
  double *cosine, *along, *sine2, *across, *kappa_term;  // the rows of params.row_scalars
  uint8_t* class_reached;  // [C]: whether a row of the class was written
  const RsampleBackwardParams* p;

  bool in_range(int64_t y) const { return y >= 0 && y < p->num_classes; }
};

template <typename T>
PENACT_CPU_DISPATCH void rsample_backward_dots(const RsampleRows<T>& a, int64_t begin, int64_t end,
                                               CheckStatus& found) {
  const RsampleBackwardParams& p = *a.p;
  const T radius = static_cast<T>(p.radius);
  for (int64_t i = begin; i < end; ++i) {
    const int64_t y = p.labels[i];
    if (!a.in_range(y)) {
      record_bad_label(found, y);
      continue;
    }
    const T* x = a.sample + i * p.dim;
    const T* mu = a.mean_direction + y * p.dim;
    const T* g = a.grad + i * p.grad_row_stride;
    T x_mu = T(0), g_mu = T(0);
#pragma omp simd reduction(+ : x_mu, g_mu)
    for (int64_t k = 0; k < p.dim; ++k) {
      x_mu += x[k] * mu[k];
      g_mu += g[k] * mu[k];
    }
    const T t = x_mu / radius;
    a.cosine[i] = t;
    a.along[i] = g_mu;
    if (p.grad_kappa == nullptr) continue;
    const T rt = radius * t;
    T o_o = T(0), g_o = T(0);
#pragma omp simd reduction(+ : o_o, g_o)
    for (int64_t k = 0; k < p.dim; ++k) {
      const T o = x[k] - rt * mu[k];
      o_o += o * o;
      g_o += g[k] * o;
    }
    a.sine2[i] = o_o / (radius * radius);
    a.across[i] = g_o;
  }
}

// dt/dkappa per row in double (not target-cloned: the same code as vmf_cosine_kappa_grad's).
template <typename T>
void rsample_backward_kappa_rows(const RsampleRows<T>& a, int64_t begin, int64_t end) {
  const RsampleBackwardParams& p = *a.p;
  const double dim = static_cast<double>(p.dim);
  for (int64_t i = begin; i < end; ++i) {
    const int64_t y = p.labels[i];
    if (!a.in_range(y)) continue;
    const double dt_dkappa = penact::vmf_cosine_kappa_grad(dim, static_cast<double>(a.kappa[y]), a.cosine[i],
                                                   std::sqrt(a.sine2[i]));
    a.kappa_term[i] = rsample_kappa_row(dt_dkappa, p.radius, a.cosine[i], a.sine2[i], a.along[i], a.across[i]);
  }
}

// Adds rows [row_begin, row_end) whose class lies in [class_begin, class_end). A class's first row
// is written rather than added, which spares a zero-filling pass over grad_mean_direction ([N, D]
// when every row has its own class, as in VonMisesFisher.rsample).
template <typename T>
PENACT_CPU_DISPATCH void rsample_backward_accumulate(const RsampleRows<T>& a, int64_t class_begin, int64_t class_end,
                                                     int64_t row_begin, int64_t row_end) {
  const RsampleBackwardParams& p = *a.p;
  T* grad_mu = static_cast<T*>(p.grad_mean_direction);
  const T radius = static_cast<T>(p.radius);
  for (int64_t i = row_begin; i < row_end; ++i) {
    const int64_t y = p.labels[i];
    if (y < class_begin || y >= class_end) continue;
    if (p.grad_kappa != nullptr) p.grad_kappa[y] += a.kappa_term[i];
    if (grad_mu == nullptr) continue;
    const T* x = a.sample + i * p.dim;
    const T* mu = a.mean_direction + y * p.dim;
    const T* g = a.grad + i * p.grad_row_stride;
    T* out = grad_mu + y * p.dim;
    const T rt = radius * static_cast<T>(a.cosine[i]), along = static_cast<T>(a.along[i]);
    if (a.class_reached[y]) {
#pragma omp simd
      for (int64_t k = 0; k < p.dim; ++k) out[k] += rt * g[k] - along * (x[k] - rt * mu[k]);
    } else {
#pragma omp simd
      for (int64_t k = 0; k < p.dim; ++k) out[k] = rt * g[k] - along * (x[k] - rt * mu[k]);
      a.class_reached[y] = 1;
    }
  }
}

// Zeroes the gradient rows of the classes in [class_begin, class_end) that no row reached.
template <typename T>
void zero_unreached_classes(const RsampleRows<T>& a, int64_t class_begin, int64_t class_end) {
  T* grad_mu = static_cast<T*>(a.p->grad_mean_direction);
  if (grad_mu == nullptr) return;
  for (int64_t y = class_begin; y < class_end; ++y) {
    if (!a.class_reached[y]) std::fill_n(grad_mu + y * a.p->dim, a.p->dim, T(0));
  }
}

template <typename T>
void rsample_backward_typed(const RsampleBackwardParams& p) {
  const int64_t n = p.num_rows, num_classes = p.num_classes;
  std::vector<uint8_t> class_reached(static_cast<size_t>(num_classes), 0);
  const RsampleRows<T> a{static_cast<const T*>(p.grad), static_cast<const T*>(p.sample),
                         static_cast<const T*>(p.mean_direction), static_cast<const T*>(p.kappa),
                         p.row_scalars, p.row_scalars + n, p.row_scalars + 2 * n, p.row_scalars + 3 * n,
                         p.row_scalars + 4 * n, class_reached.data(), &p};
  const int64_t block = row_grain(p.dim);
  // One task (one thread, a small N, or a call from inside a parallel region) accumulates each
  // block while it is in cache; the order of the additions is the same either way.
  const bool one_task = n <= block || at::get_num_threads() == 1 || at::in_parallel_region();
  std::mutex merge;
  at::parallel_for(0, n, block, [&](int64_t begin, int64_t end) {
    CheckStatus found{};
    for (int64_t first = begin; first < end; first += block) {
      const int64_t last = std::min(end, first + block);
      rsample_backward_dots(a, first, last, found);
      if (p.grad_kappa != nullptr) rsample_backward_kappa_rows(a, first, last);
      if (one_task) rsample_backward_accumulate(a, 0, num_classes, first, last);
    }
    const std::lock_guard<std::mutex> lock(merge);
    merge_status(*p.status, found);
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

}  // namespace

void vmf_sample(const VmfSampleParams& p) {
  // The (output, computation) dtype pairs are those of (x, weight) in log_prob.
  dispatch_x_weight(p.out_dtype, p.compute, [&](auto out_tag, auto compute_tag) {
    using Out = decltype(out_tag);
    using T = decltype(compute_tag);
    parallel_rows(p.num_rows, p.dim, p.status,
                  [&](int64_t begin, int64_t end, CheckStatus& found) { sample_rows<T, Out>(p, begin, end, found); });
  });
}

void vmf_log_prob(const VmfRowParams& p) {
  dispatch_x_weight(p.x_dtype, p.weight_dtype, [&](auto x_tag, auto w_tag) {
    using X = decltype(x_tag);
    using W = decltype(w_tag);
    parallel_rows(p.num_rows, p.dim, p.status,
                  [&](int64_t begin, int64_t end, CheckStatus& found) { log_prob_rows<X, W>(p, begin, end, found); });
  });
}

void vmf_log_prob_backward(const VmfRowParams& p) {
  dispatch_x_weight(p.x_dtype, p.weight_dtype, [&](auto x_tag, auto w_tag) {
    using X = decltype(x_tag);
    using W = decltype(w_tag);
    std::vector<W> coefficients(static_cast<size_t>(p.num_rows));
    parallel_rows(p.num_rows, p.dim, p.status, [&](int64_t begin, int64_t end, CheckStatus& found) {
      log_prob_backward_rows<X, W>(p, coefficients.data(), begin, end, found);
    });
    if (p.grad_weight == nullptr) return;
    at::parallel_for(0, p.num_classes, 1, [&](int64_t begin, int64_t end) {
      log_prob_backward_classes<X, W>(p, coefficients.data(), begin, end);
    });
  });
}

void vmf_log_prob_all(const VmfRowParams& p) {
  dispatch_compute(p.weight_dtype, [&](auto tag) { log_prob_all_typed<decltype(tag)>(p); });
}

void vmf_cosine_kappa_grad(const CosineKappaGradParams& p) {
  // Each element costs a few microseconds (an adaptive quadrature), so small grains still pay.
  constexpr int64_t kGrain = 16;
  at::parallel_for(0, p.numel, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) p.out[i] = penact::vmf_cosine_kappa_grad(p.dim, p.kappa[i], p.t[i], p.sine[i]);
  });
}

void vmf_rsample_backward(const RsampleBackwardParams& p) {
  dispatch_compute(p.dtype, [&](auto tag) { rsample_backward_typed<decltype(tag)>(p); });
}

}  // namespace cpu
}  // namespace penact
