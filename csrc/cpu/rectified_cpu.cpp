// CPU implementations of the rectified operators (SPEC section 2b). The math is core/rectified.h,
// the code the CUDA kernels run; this file is layout: per-class tables computed once per call,
// blocks of rows in parallel (parallel_rows), and inner loops that the compiler vectorizes,
// compiled per instruction set (PENACT_CPU_DISPATCH, philox_lanes.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "../core/rectified.h"
#include "../ops.h"
#include "../rectified_ops.h"
#include "dispatch.h"
#include "philox_lanes.h"

namespace penact {
namespace {

// Runs rows(begin, end) over [0, n) in blocks of about row_grain(row_length) rows that the threads
// take in turn from a shared counter, and returns the sum of what rows returns. Unlike the static
// split of at::parallel_for, a thread that the OS preempts (a shared machine) delays the call by
// one block, not by half of it; rows are independent, so results do not depend on who takes what.
template <typename Rows>
int64_t parallel_rows(int64_t n, int64_t row_length, const Rows& rows) {
  const int64_t block = row_grain(row_length);
  const int64_t blocks = (n + block - 1) / block;
  std::atomic<int64_t> next{0}, total{0};
  at::parallel_for(0, std::min<int64_t>(blocks, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    int64_t sum = 0;
    for (int64_t b = next++; b < blocks; b = next++) sum += rows(b * block, std::min(n, (b + 1) * block));
    total += sum;
  });
  return total.load();
}

// Classes (rows of length row_length) per task when each (class, coordinate) cell costs a few
// special functions (~100 ns): about 4096 cells, so that small tables are not split at all.
inline int64_t cell_grain(int64_t row_length) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(row_length, 1)); }

// ---------------------------------------------------------------------------------------------
// Sampling.

// A coordinate whose value comes from its own stream (past kInverseLimit, or rarely non-zero).
struct OwnStreamCoordinate {
  int64_t coordinate;
  double alpha;
};

// What a row of class y needs per coordinate, computed once per call (in double, by the core) for
// the classes that are drawn: the draw parameters in the output dtype, [C, stride] with the stride
// D rounded up to whole spans (the padding never non-zero), and each class's own-stream coordinates.
template <typename T>
struct DrawTables {
  int64_t dim, stride;
  std::vector<T> inv_nonzero, shift, upper, lower, scale;
  std::vector<std::vector<OwnStreamCoordinate>> own_stream;
};

// Parameters converted to double element by element where they are read: a whole-tensor conversion
// of a [C, D] weight would open a parallel region of its own (slow on a loaded machine).
template <typename T>
DrawTables<T> draw_tables(const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& zero_mass,
                          const at::Tensor& labels) {
  const at::Tensor w = weight.contiguous();
  const at::Tensor s = scale.to(at::kDouble).contiguous();
  const at::Tensor m = zero_mass.to(at::kDouble).contiguous();
  const int64_t num_classes = w.size(0), dim = w.size(1);
  constexpr int64_t span = RectifiedStream<T>::kSpan;
  std::vector<uint8_t> drawn(static_cast<size_t>(num_classes), 0);
  const int64_t* label_data = labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < labels.numel(); ++i) drawn[label_data[i]] = 1;
  DrawTables<T> t;
  t.dim = dim;
  t.stride = (dim + span - 1) / span * span;
  const size_t cells = static_cast<size_t>(num_classes * t.stride);
  t.inv_nonzero.assign(cells, std::numeric_limits<T>::infinity());  // padding: never drawn non-zero
  t.shift.assign(cells, T(0));
  t.upper.assign(cells, T(0.5));
  t.lower.assign(cells, T(0.5));
  t.scale.assign(static_cast<size_t>(t.stride), T(1));
  t.own_stream.resize(static_cast<size_t>(num_classes));
  const T* w_data = w.data_ptr<T>();
  const double* s_data = s.data_ptr<double>();
  const double* m_data = m.data_ptr<double>();
  for (int64_t j = 0; j < dim; ++j) t.scale[j] = static_cast<T>(s_data[j]);
  std::atomic<bool> finite{true};  // checked here, in the one pass over the drawn classes' weights
  at::parallel_for(0, num_classes, cell_grain(dim), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      if (!drawn[c]) continue;
      for (int64_t j = 0; j < dim; ++j) {
        const double w_cj = static_cast<double>(w_data[c * dim + j]);
        if (!std::isfinite(w_cj)) finite = false;
        const RectifiedDrawParams<T> p = rectified_draw_params<T>(w_cj, s_data[j], m_data[j]);
        const int64_t cell = c * t.stride + j;
        t.inv_nonzero[cell] = p.inv_nonzero;
        t.shift[cell] = p.shift;
        t.upper[cell] = p.upper;
        t.lower[cell] = p.lower;
        if (p.own_stream) t.own_stream[c].push_back({j, p.alpha});
      }
    }
  });
  TORCH_CHECK(finite.load(), "penact: weight must be finite (rows of the classes drawn hold inf or NaN)");
  return t;
}

template <typename T>
struct SampleArgs {
  const DrawTables<T>* tables;
  const int64_t* labels;
  uint64_t seed;
  int64_t offset;
  T* out;
};

// Rows [begin, end): span by span, the uniforms from kSpanBlocks Philox blocks (SIMD lanes) and the
// draws across the span; the last span through a scratch row; then the own-stream coordinates that
// were drawn non-zero.
template <typename T>
PENACT_CPU_DISPATCH void sample_rows(const SampleArgs<T>& args, int64_t begin, int64_t end) {
  static_assert(kSpanBlocks == kPhiloxBlocksPerCall, "a span is one call's worth of blocks");
  const DrawTables<T>& t = *args.tables;
  constexpr int kSpan = RectifiedStream<T>::kSpan;
  const int64_t dim = t.dim;
  const T* scale = t.scale.data();
  const T smallest = std::numeric_limits<T>::min();
  alignas(64) uint32_t words[4][kPhiloxBlocksPerCall];
  alignas(64) T u[kSpan], scratch[kSpan];
  for (int64_t i = begin; i < end; ++i) {
    const int64_t y = args.labels[i];
    const uint64_t row = static_cast<uint64_t>(args.offset + i);
    const T* inv_nonzero = t.inv_nonzero.data() + y * t.stride;
    const T* shift = t.shift.data() + y * t.stride;
    const T* upper = t.upper.data() + y * t.stride;
    const T* lower = t.lower.data() + y * t.stride;
    T* out = args.out + i * dim;
    for (int64_t j0 = 0; j0 < dim; j0 += kSpan) {
      philox_blocks(args.seed, row, rectified_block<T>(j0), words);
      RectifiedStream<T>::span_uniforms(words, u);
      T* target = j0 + kSpan <= dim ? out + j0 : scratch;
      for (int c = 0; c < kSpan; ++c) {
        const int64_t j = j0 + c;
        target[c] = rectified_draw<T>(u[c], inv_nonzero[j], shift[j], upper[j], lower[j], scale[j]);
      }
      if (target == scratch) {
        for (int64_t j = j0; j < dim; ++j) out[j] = scratch[j - j0];
      }
    }
    for (const OwnStreamCoordinate& f : t.own_stream[y]) {
      if (out[f.coordinate] == T(0)) continue;  // the decision drew the atom at 0
      RowStream stream = coordinate_stream(args.seed, row, f.coordinate);
      const T a = static_cast<T>(static_cast<double>(scale[f.coordinate]) * own_stream_excess(stream, f.alpha));
      out[f.coordinate] = a > smallest ? a : smallest;
    }
  }
}

at::Tensor rectified_sample_cpu(const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& zero_mass,
                                const at::Tensor& labels, int64_t seed, int64_t offset) {
  check_rectified_sample_args(weight, scale, zero_mass, labels, offset);
  const at::Tensor lab = checked_labels(labels, weight.size(0));
  const int64_t n = lab.size(0), dim = weight.size(1);
  at::Tensor out = at::empty({n, dim}, weight.options());
  if (n == 0 || dim == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "rectified_sample_cpu", [&] {
    const DrawTables<scalar_t> tables = draw_tables<scalar_t>(weight, scale, zero_mass, lab);
    const SampleArgs<scalar_t> args{&tables, lab.data_ptr<int64_t>(), static_cast<uint64_t>(seed), offset,
                                    out.data_ptr<scalar_t>()};
    parallel_rows(n, dim, [&](int64_t begin, int64_t end) {
      sample_rows(args, begin, end);
      return int64_t{0};
    });
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Log-densities.

// The base measure per coordinate in the accumulation type: 1 / (2 s^2) and log m.
template <typename W>
struct BaseMeasure {
  std::vector<W> half_precision, log_zero_mass;
};

template <typename W>
BaseMeasure<W> base_measure(const at::Tensor& scale, const at::Tensor& zero_mass) {
  const at::Tensor s = scale.to(at::kDouble).contiguous(), m = zero_mass.to(at::kDouble).contiguous();
  const double* s_data = s.data_ptr<double>();
  const double* m_data = m.data_ptr<double>();
  BaseMeasure<W> base;
  for (int64_t j = 0; j < s.numel(); ++j) {
    base.half_precision.push_back(static_cast<W>(0.5 / (s_data[j] * s_data[j])));
    base.log_zero_mass.push_back(static_cast<W>(std::log(m_data[j])));
  }
  return base;
}

// One row: sum_j w_j a_j (when w is given) + sum_j [a_j > 0 ? -a_j^2 / (2 s_j^2) : log m_j], and
// how many a_j were negative or NaN (the value check, fused into the one read of the row). `omp simd`
// lets the compiler keep the sums in vector accumulators.
template <typename W>
struct RowDensity {
  W value;
  W bad;
};

template <bool kWithDot, typename W, typename X>
RowDensity<W> row_log_density(const W* w, const X* a, const W* half_precision, const W* log_zero_mass, int64_t n) {
  W value = W(0), bad = W(0);
#pragma omp simd reduction(+ : value, bad)
  for (int64_t j = 0; j < n; ++j) {
    const W av = static_cast<W>(a[j]);
    // Both terms are formed before the select: a load inside one branch would stop vectorization.
    const W slab = -av * av * half_precision[j];
    const W atom = log_zero_mass[j];
    const W base = av > W(0) ? slab : atom;
    if constexpr (kWithDot) {
      value += w[j] * av + base;
    } else {
      value += base;
    }
    bad += static_cast<W>(!(av >= W(0)));  // a select here stops GCC 12's vectorizer; NaN counts too
  }
  return {value, bad};
}

template <typename W, typename X>
struct LabelledArgs {
  const X* a;               // [N, D]
  const W* weight;          // [C, D]
  const W* log_partition;   // [C]
  const int64_t* labels;    // [N]
  const BaseMeasure<W>* base;
  int64_t dim;
  W* out;                   // [N]
};

// Rows [begin, end) of rectified_log_prob; returns how many entries of a were negative or NaN.
template <typename W, typename X>
PENACT_CPU_DISPATCH int64_t log_prob_rows(const LabelledArgs<W, X>& args, int64_t begin, int64_t end) {
  W bad = W(0);
  for (int64_t i = begin; i < end; ++i) {
    const int64_t y = args.labels[i];
    const RowDensity<W> d =
        row_log_density<true>(args.weight + y * args.dim, args.a + i * args.dim, args.base->half_precision.data(),
                              args.base->log_zero_mass.data(), args.dim);
    args.out[i] = d.value - args.log_partition[y];
    bad += d.bad;
  }
  return static_cast<int64_t>(bad);
}

template <typename W, typename X>
struct AllClassArgs {
  const X* a;              // [N, D]
  const W* log_partition;  // [C]
  const BaseMeasure<W>* base;
  int64_t dim, num_classes;
  W* out;  // [N, C], holding a W^T on entry
};

// Rows [begin, end) of rectified_log_prob_all's epilogue; returns the bad-entry count.
template <typename W, typename X>
PENACT_CPU_DISPATCH int64_t log_prob_all_rows(const AllClassArgs<W, X>& args, int64_t begin, int64_t end) {
  W bad = W(0);
  for (int64_t i = begin; i < end; ++i) {
    const RowDensity<W> d = row_log_density<false, W, X>(nullptr, args.a + i * args.dim,
                                                          args.base->half_precision.data(),
                                                          args.base->log_zero_mass.data(), args.dim);
    W* row = args.out + i * args.num_classes;
    for (int64_t c = 0; c < args.num_classes; ++c) row[c] += d.value - args.log_partition[c];
    bad += d.bad;
  }
  return static_cast<int64_t>(bad);
}

// log p(a_i | y_i) = w_y . a_i - sum_{a_ij > 0} a_ij^2 / (2 s_j^2) + sum_{a_ij = 0} log m_j - log Z_y.
at::Tensor rectified_log_prob_cpu(const at::Tensor& a, const at::Tensor& weight, const at::Tensor& scale,
                                  const at::Tensor& zero_mass, const at::Tensor& log_partition,
                                  const at::Tensor& labels) {
  check_rectified_params(weight, scale, zero_mass);
  check_rectified_activations(a, weight, &log_partition, &labels);
  const at::Tensor ac = a.contiguous(), w = weight.contiguous(), logz = log_partition.contiguous();
  const at::Tensor lab = checked_labels(labels, w.size(0));
  const int64_t n = ac.size(0), dim = ac.size(1);
  at::Tensor out = at::empty({n}, w.options());
  dispatch_x_weight(ac, w, [&](auto x_tag, auto w_tag) {
    using X = decltype(x_tag);
    using W = decltype(w_tag);
    const BaseMeasure<W> base = base_measure<W>(scale, zero_mass);
    const LabelledArgs<W, X> args{ac.data_ptr<X>(), w.data_ptr<W>(), logz.data_ptr<W>(), lab.data_ptr<int64_t>(),
                                  &base,            dim,             out.data_ptr<W>()};
    check_nonnegative_activations(
        parallel_rows(n, dim, [&](int64_t begin, int64_t end) { return log_prob_rows(args, begin, end); }));
  });
  return out;
}

// [N, C] log-densities for every class: one matrix product a W^T (BLAS), then an epilogue that adds
// the row's base-measure term and subtracts log Z_c, in place.
at::Tensor rectified_log_prob_all_cpu(const at::Tensor& a, const at::Tensor& weight, const at::Tensor& scale,
                                      const at::Tensor& zero_mass, const at::Tensor& log_partition) {
  check_rectified_params(weight, scale, zero_mass);
  check_rectified_activations(a, weight, &log_partition, nullptr);
  const at::Tensor ac = a.contiguous(), w = weight.contiguous(), logz = log_partition.contiguous();
  at::Tensor out = at::mm(ac.to(w.scalar_type()), w.t()).contiguous();
  const int64_t n = ac.size(0), dim = ac.size(1), num_classes = w.size(0);
  dispatch_x_weight(ac, w, [&](auto x_tag, auto w_tag) {
    using X = decltype(x_tag);
    using W = decltype(w_tag);
    const BaseMeasure<W> base = base_measure<W>(scale, zero_mass);
    const AllClassArgs<W, X> args{ac.data_ptr<X>(), logz.data_ptr<W>(), &base, dim, num_classes, out.data_ptr<W>()};
    check_nonnegative_activations(parallel_rows(
        n, dim + num_classes, [&](int64_t begin, int64_t end) { return log_prob_all_rows(args, begin, end); }));
  });
  return out;
}

// Backward of rectified_log_prob (log_partition's gradient is an index_add in Python). With g_i the
// incoming gradient and y = y_i:
//   dL/da_ij = g_i (w_yj - a_ij / s_j^2),   dL/dw_y = sum_{i: y_i = y} g_i a_i,
//   dL/ds_j = sum_i g_i a_ij^2 / s_j^3,     dL/dm_j = sum_i g_i [a_ij = 0] / m_j.
// Column sums run over fixed blocks of rows, whatever the thread count, so the result does not
// depend on it; the weight gradient is gathered by tasks that own disjoint ranges of classes.
constexpr int64_t kRowsPerPartial = 256;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rectified_log_prob_backward_cpu(
    const at::Tensor& grad, const at::Tensor& a, const at::Tensor& weight, const at::Tensor& scale,
    const at::Tensor& zero_mass, const at::Tensor& labels, bool need_a_grad, bool need_weight_grad,
    bool need_scale_grad, bool need_zero_mass_grad) {
  check_rectified_params(weight, scale, zero_mass);
  check_rectified_activations(a, weight, nullptr, &labels);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == a.size(0), "penact: grad must have shape [N] = [", a.size(0),
              "], got ", grad.sizes());
  const at::Tensor ac = a.contiguous(), w = weight.contiguous();
  const at::Tensor g = grad.to(w.scalar_type()).contiguous();
  const at::Tensor lab = checked_labels(labels, w.size(0));
  const int64_t n = ac.size(0), dim = ac.size(1), num_classes = w.size(0);
  at::Tensor grad_a = need_a_grad ? at::empty_like(ac) : at::empty({0}, ac.options());
  at::Tensor grad_w = need_weight_grad ? at::zeros_like(w) : at::empty({0}, w.options());
  at::Tensor grad_s = need_scale_grad ? at::zeros({dim}, w.options()) : at::empty({0}, w.options());
  at::Tensor grad_m = need_zero_mass_grad ? at::zeros({dim}, w.options()) : at::empty({0}, w.options());
  if (n == 0) return {grad_a, grad_w, grad_s, grad_m};
  const bool need_columns = need_scale_grad || need_zero_mass_grad;
  const int64_t partials = need_columns ? (n + kRowsPerPartial - 1) / kRowsPerPartial : 0;
  dispatch_x_weight(ac, w, [&](auto x_tag, auto w_tag) {
    using X = decltype(x_tag);
    using W = decltype(w_tag);
    const BaseMeasure<W> base = base_measure<W>(scale, zero_mass);
    const W* hp = base.half_precision.data();
    const X* a_data = ac.data_ptr<X>();
    const W* w_data = w.data_ptr<W>();
    const W* g_data = g.data_ptr<W>();
    const int64_t* label_data = lab.data_ptr<int64_t>();
    // partial sums per block of rows: [partials, 2, D] = (sum g a^2, sum g [a = 0])
    std::vector<W> column_partials(static_cast<size_t>(partials * 2 * dim), W(0));
    at::parallel_for(0, (n + kRowsPerPartial - 1) / kRowsPerPartial, 1, [&](int64_t block_begin, int64_t block_end) {
      for (int64_t blk = block_begin; blk < block_end; ++blk) {
        W* sum_sq = need_columns ? column_partials.data() + blk * 2 * dim : nullptr;
        W* sum_zero = need_columns ? sum_sq + dim : nullptr;
        for (int64_t i = blk * kRowsPerPartial; i < std::min(n, (blk + 1) * kRowsPerPartial); ++i) {
          const X* ai = a_data + i * dim;
          const W gi = g_data[i];
          if (need_a_grad) {
            const W* wy = w_data + label_data[i] * dim;
            X* ga = grad_a.data_ptr<X>() + i * dim;
            for (int64_t j = 0; j < dim; ++j) {
              ga[j] = static_cast<X>(gi * (wy[j] - W(2) * hp[j] * static_cast<W>(ai[j])));
            }
          }
          if (need_columns) {
            for (int64_t j = 0; j < dim; ++j) {
              const W av = static_cast<W>(ai[j]);
              sum_sq[j] += gi * av * av;
              sum_zero[j] += gi * static_cast<W>(av == W(0));
            }
          }
        }
      }
    });
    if (need_columns) {
      const at::Tensor s = scale.to(at::kDouble).contiguous(), m = zero_mass.to(at::kDouble).contiguous();
      const double* s_data = s.data_ptr<double>();
      const double* m_data = m.data_ptr<double>();
      for (int64_t j = 0; j < dim; ++j) {
        double sum_sq = 0.0, sum_zero = 0.0;
        for (int64_t blk = 0; blk < partials; ++blk) {
          sum_sq += static_cast<double>(column_partials[blk * 2 * dim + j]);
          sum_zero += static_cast<double>(column_partials[blk * 2 * dim + dim + j]);
        }
        if (need_scale_grad) grad_s.data_ptr<W>()[j] = static_cast<W>(sum_sq / (s_data[j] * s_data[j] * s_data[j]));
        if (need_zero_mass_grad) grad_m.data_ptr<W>()[j] = static_cast<W>(sum_zero == 0.0 ? 0.0 : sum_zero / m_data[j]);
      }
    }
    if (!need_weight_grad) return;
    W* gw_data = grad_w.data_ptr<W>();
    at::parallel_for(0, num_classes, 1, [&](int64_t class_begin, int64_t class_end) {
      for (int64_t i = 0; i < n; ++i) {
        const int64_t y = label_data[i];
        if (y < class_begin || y >= class_end) continue;
        const X* ai = a_data + i * dim;
        W* gw = gw_data + y * dim;
        const W gi = g_data[i];
        for (int64_t j = 0; j < dim; ++j) gw[j] += gi * static_cast<W>(ai[j]);
      }
    });
  });
  return {grad_a, grad_w, grad_s, grad_m};
}

// ---------------------------------------------------------------------------------------------
// Normalizers and moments: C x D evaluations of the core in double, rounded once.

// [5, C, D]: log z, P(a = 0), E[a], E[a^2], E[a^4] per class and coordinate.
at::Tensor rectified_coordinate_stats_cpu(const at::Tensor& weight, const at::Tensor& scale,
                                          const at::Tensor& zero_mass) {
  check_rectified_params(weight, scale, zero_mass);
  const at::Tensor w = weight.contiguous();
  const at::Tensor s = scale.to(at::kDouble).contiguous(), m = zero_mass.to(at::kDouble).contiguous();
  const int64_t num_classes = w.size(0), dim = w.size(1), cells = num_classes * dim;
  at::Tensor out = at::empty({5, num_classes, dim}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "rectified_coordinate_stats_cpu", [&] {
    const scalar_t* w_data = w.data_ptr<scalar_t>();
    const double* s_data = s.data_ptr<double>();
    const double* m_data = m.data_ptr<double>();
    scalar_t* out_data = out.data_ptr<scalar_t>();
    at::parallel_for(0, cells, cell_grain(1), [&](int64_t begin, int64_t end) {
      for (int64_t cell = begin; cell < end; ++cell) {
        const int64_t j = cell % dim;
        const RectifiedCoordinate c = rectified_coordinate(static_cast<double>(w_data[cell]), s_data[j], m_data[j]);
        out_data[cell] = static_cast<scalar_t>(c.log_z);
        out_data[cells + cell] = static_cast<scalar_t>(std::exp(c.log_zero));
        out_data[2 * cells + cell] = static_cast<scalar_t>(c.mean);
        out_data[3 * cells + cell] = static_cast<scalar_t>(c.second_moment);
        out_data[4 * cells + cell] = static_cast<scalar_t>(c.fourth_moment);
      }
    });
  });
  return out;
}

// log Z_y = sum_j log z(w_yj; s_j, m_j), summed in double.
at::Tensor rectified_log_partition_cpu(const at::Tensor& weight, const at::Tensor& scale,
                                       const at::Tensor& zero_mass) {
  check_rectified_params(weight, scale, zero_mass);
  const at::Tensor w = weight.contiguous();
  const at::Tensor s = scale.to(at::kDouble).contiguous(), m = zero_mass.to(at::kDouble).contiguous();
  const int64_t num_classes = w.size(0), dim = w.size(1);
  at::Tensor out = at::empty({num_classes}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "rectified_log_partition_cpu", [&] {
    const scalar_t* w_data = w.data_ptr<scalar_t>();
    const double* s_data = s.data_ptr<double>();
    const double* m_data = m.data_ptr<double>();
    scalar_t* out_data = out.data_ptr<scalar_t>();
    at::parallel_for(0, num_classes, cell_grain(dim), [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        double total = 0.0;
        for (int64_t j = 0; j < dim; ++j) {
          total += rectified_log_z(static_cast<double>(w_data[c * dim + j]), s_data[j], m_data[j]);
        }
        out_data[c] = static_cast<scalar_t>(total);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(penact, CPU, m) {
  m.impl("rectified_log_partition", &rectified_log_partition_cpu);
  m.impl("rectified_coordinate_stats", &rectified_coordinate_stats_cpu);
  m.impl("rectified_sample", &rectified_sample_cpu);
  m.impl("rectified_log_prob", &rectified_log_prob_cpu);
  m.impl("rectified_log_prob_backward", &rectified_log_prob_backward_cpu);
  m.impl("rectified_log_prob_all", &rectified_log_prob_all_cpu);
}

}  // namespace penact
