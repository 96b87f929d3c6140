// CPU kernels of the rectified family (interface: rectified.h). The math is core/rectified.h,
// the code the CUDA kernels run; this file is layout: per-class tables computed once per call,
// blocks of rows in parallel (parallel_rows), and inner loops that the compiler vectorizes,
// compiled per instruction set (PENACT_CPU_DISPATCH, philox_lanes.h).
#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "../core/rectified.h"
#include "../rectified.h"
#include "dispatch.h"
#include "philox_lanes.h"

namespace penact {
namespace cpu {
namespace {

// Classes (rows of length row_length) per task when each (class, coordinate) cell costs a few
// special functions (~100 ns): about 4096 cells, so that small tables are not split at all.
inline int64_t cell_grain(int64_t row_length) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(row_length, 1)); }

// scale and zero_mass as float64, their values checked (status slots 1 and 2).
struct Coordinates {
  std::vector<double> scale, zero_mass;
};

template <typename T>
Coordinates checked_coordinates(const void* scale, const void* zero_mass, int64_t dim, CheckStatus* status) {
  Coordinates c{std::vector<double>(static_cast<size_t>(dim)), std::vector<double>(static_cast<size_t>(dim))};
  for (int64_t j = 0; j < dim; ++j) {
    c.scale[j] = static_cast<double>(static_cast<const T*>(scale)[j]);
    c.zero_mass[j] = static_cast<double>(static_cast<const T*>(zero_mass)[j]);
    if (!valid_scale(c.scale[j])) record_bad_value(*status, kScale, j);
    if (!valid_zero_mass(c.zero_mass[j])) record_bad_value(*status, kZeroMass, j);
  }
  return c;
}

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

// Every weight entry is checked to be finite (status slot 0, indexed by class); tables are made
// for the classes drawn only.
template <typename T>
DrawTables<T> draw_tables(const RectifiedSampleParams& p, const Coordinates& c) {
  const int64_t num_classes = p.num_classes, dim = p.dim;
  constexpr int64_t span = RectifiedStream<T>::kSpan;
  std::vector<uint8_t> drawn(static_cast<size_t>(num_classes), 0);
  for (int64_t i = 0; i < p.num_rows; ++i) {
    if (p.labels[i] >= 0 && p.labels[i] < num_classes) drawn[p.labels[i]] = 1;
  }
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
  const T* weight = static_cast<const T*>(p.weight);
  for (int64_t j = 0; j < dim; ++j) t.scale[j] = static_cast<T>(c.scale[j]);
  std::vector<int64_t> non_finite(static_cast<size_t>(num_classes), 0);
  at::parallel_for(0, num_classes, cell_grain(dim), [&](int64_t begin, int64_t end) {
    for (int64_t y = begin; y < end; ++y) {
      for (int64_t j = 0; j < dim; ++j) {
        const double w = static_cast<double>(weight[y * dim + j]);
        if (!std::isfinite(w)) ++non_finite[y];
        if (!drawn[y]) continue;
        const RectifiedDrawParams<T> d = rectified_draw_params<T>(w, c.scale[j], c.zero_mass[j]);
        const int64_t cell = y * t.stride + j;
        t.inv_nonzero[cell] = d.inv_nonzero;
        t.shift[cell] = d.shift;
        t.upper[cell] = d.upper;
        t.lower[cell] = d.lower;
        if (d.own_stream) t.own_stream[y].push_back({j, d.alpha});
      }
    }
  });
  for (int64_t y = 0; y < num_classes; ++y) {
    if (non_finite[y] > 0) record_bad_value(*p.status, kActivationsOrWeight, y, static_cast<uint64_t>(non_finite[y]));
  }
  return t;
}

// Rows [begin, end): span by span, the uniforms from kSpanBlocks Philox blocks (SIMD lanes) and the
// draws across the span; the last span through a scratch row; then the own-stream coordinates that
// were drawn non-zero.
template <typename T>
PENACT_CPU_DISPATCH void sample_rows(const RectifiedSampleParams& p, const DrawTables<T>& t, int64_t begin, int64_t end,
                                     CheckStatus& found) {
  static_assert(kSpanBlocks == kPhiloxBlocksPerCall, "a span is one call's worth of blocks");
  constexpr int kSpan = RectifiedStream<T>::kSpan;
  const int64_t dim = t.dim;
  const T* scale = t.scale.data();
  const T smallest = smallest_normal<T>();
  alignas(64) uint32_t words[4][kPhiloxBlocksPerCall];
  alignas(64) T u[kSpan], scratch[kSpan];
  for (int64_t i = begin; i < end; ++i) {
    const int64_t y = p.labels[i];
    T* out = static_cast<T*>(p.out) + i * dim;
    if (!(y >= 0 && y < p.num_classes)) {
      record_bad_label(found, y);
      for (int64_t j = 0; j < dim; ++j) out[j] = T(NAN);
      continue;
    }
    const uint64_t row = static_cast<uint64_t>(p.offset + i);
    const T* inv_nonzero = t.inv_nonzero.data() + y * t.stride;
    const T* shift = t.shift.data() + y * t.stride;
    const T* upper = t.upper.data() + y * t.stride;
    const T* lower = t.lower.data() + y * t.stride;
    for (int64_t j0 = 0; j0 < dim; j0 += kSpan) {
      philox_blocks(p.seed, row, rectified_block<T>(j0), words);
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
      RowStream stream = coordinate_stream(p.seed, row, f.coordinate);
      const T a = static_cast<T>(static_cast<double>(scale[f.coordinate]) * own_stream_excess(stream, f.alpha));
      out[f.coordinate] = a > smallest ? a : smallest;
    }
  }
}

template <typename T>
void sample_typed(const RectifiedSampleParams& p) {
  const Coordinates c = checked_coordinates<T>(p.scale, p.zero_mass, p.dim, p.status);
  const DrawTables<T> tables = draw_tables<T>(p, c);
  parallel_rows(p.num_rows, p.dim, p.status,
                [&](int64_t begin, int64_t end, CheckStatus& found) { sample_rows<T>(p, tables, begin, end, found); });
}

// ---------------------------------------------------------------------------------------------
// Log-densities.

// One row: sum_j w_j a_j (when w is given) + sum_j B_j(a_j), and how many a_j lie outside the
// support (the value check, fused into the one read of the row). `omp simd` lets the compiler
// keep the sums in vector accumulators.
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
    const W base = rectified_base_term(av, half_precision[j], log_zero_mass[j]);
    if constexpr (kWithDot) {
      value += w[j] * av + base;
    } else {
      value += base;
    }
    bad += static_cast<W>(outside_support(av));  // a select here stops GCC 12's vectorizer; NaN counts too
  }
  return {value, bad};
}

// Records row i's entries outside the support (a second, scalar look at a row that has some).
template <typename W, typename X>
void record_bad_row(CheckStatus& found, const X* a, int64_t i, int64_t dim, W bad) {
  int64_t first = 0;
  while (first < dim && !outside_support(static_cast<W>(a[first]))) ++first;
  record_bad_value(found, kActivationsOrWeight, i * dim + first, static_cast<uint64_t>(bad));
}

// Rows [begin, end) of rectified_log_prob.
template <typename W, typename X>
PENACT_CPU_DISPATCH void log_prob_rows(const RectifiedDensityParams& p, int64_t begin, int64_t end, CheckStatus& found) {
  const X* a = static_cast<const X*>(p.a);
  const W* weight = static_cast<const W*>(p.weight);
  const W* base = static_cast<const W*>(p.base);
  const W* log_partition = static_cast<const W*>(p.log_partition);
  W* out = static_cast<W*>(p.out);
  for (int64_t i = begin; i < end; ++i) {
    const int64_t y = p.labels[i];
    if (!(y >= 0 && y < p.num_classes)) {
      record_bad_label(found, y);
      out[i] = W(NAN);
      continue;
    }
    const RowDensity<W> d = row_log_density<true>(weight + y * p.dim, a + i * p.dim, base, base + p.dim, p.dim);
    out[i] = d.value - log_partition[y];
    if (d.bad > W(0)) record_bad_row<W>(found, a + i * p.dim, i, p.dim, d.bad);
  }
}

// Rows [begin, end) of rectified_log_prob_all's epilogue: out holds a W^T on entry.
template <typename W, typename X>
PENACT_CPU_DISPATCH void log_prob_all_rows(const RectifiedDensityParams& p, int64_t begin, int64_t end,
                                           CheckStatus& found) {
  const X* a = static_cast<const X*>(p.a);
  const W* base = static_cast<const W*>(p.base);
  const W* log_partition = static_cast<const W*>(p.log_partition);
  for (int64_t i = begin; i < end; ++i) {
    const RowDensity<W> d = row_log_density<false, W, X>(nullptr, a + i * p.dim, base, base + p.dim, p.dim);
    W* row = static_cast<W*>(p.out) + i * p.num_classes;
    for (int64_t c = 0; c < p.num_classes; ++c) row[c] += d.value - log_partition[c];
    if (d.bad > W(0)) record_bad_row<W>(found, a + i * p.dim, i, p.dim, d.bad);
  }
}

// The backward. Column sums run over fixed blocks of rows, whatever the thread count, so the
// result does not depend on it; the weight gradient is gathered by tasks that own disjoint ranges
// of classes.
constexpr int64_t kRowsPerPartial = 256;

template <typename W, typename X>
void log_prob_backward_typed(const RectifiedDensityParams& p) {
  const int64_t n = p.num_rows, dim = p.dim, num_classes = p.num_classes;
  const bool need_columns = p.grad_scale != nullptr || p.grad_zero_mass != nullptr;
  const int64_t blocks = (n + kRowsPerPartial - 1) / kRowsPerPartial;
  const W* half_precision = static_cast<const W*>(p.base);
  const X* a = static_cast<const X*>(p.a);
  const W* weight = static_cast<const W*>(p.weight);
  const W* grad = static_cast<const W*>(p.grad);
  X* grad_a = static_cast<X*>(p.grad_a);
  // Partial sums per block of rows: [blocks, 2, D] = (sum g a^2, sum g [a = 0]).
  std::vector<W> column_partials(static_cast<size_t>(need_columns ? blocks * 2 * dim : 0), W(0));
  std::mutex merge;
  at::parallel_for(0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    CheckStatus found{};
    for (int64_t block = block_begin; block < block_end; ++block) {
      W* sum_sq = need_columns ? column_partials.data() + block * 2 * dim : nullptr;
      W* sum_zero = need_columns ? sum_sq + dim : nullptr;
      for (int64_t i = block * kRowsPerPartial; i < std::min(n, (block + 1) * kRowsPerPartial); ++i) {
        const int64_t y = p.labels[i];
        if (!(y >= 0 && y < num_classes)) {
          record_bad_label(found, y);
          if (grad_a != nullptr) {
            for (int64_t j = 0; j < dim; ++j) grad_a[i * dim + j] = static_cast<X>(NAN);
          }
          continue;
        }
        const X* ai = a + i * dim;
        const W gi = grad[i];
        if (grad_a != nullptr) {
          const W* wy = weight + y * dim;
          X* ga = grad_a + i * dim;
          for (int64_t j = 0; j < dim; ++j) ga[j] = static_cast<X>(gi * (wy[j] - W(2) * half_precision[j] * static_cast<W>(ai[j])));
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
    const std::lock_guard<std::mutex> lock(merge);
    merge_status(*p.status, found);
  });
  if (need_columns) {
    const W* scale = static_cast<const W*>(p.scale);
    const W* zero_mass = static_cast<const W*>(p.zero_mass);
    for (int64_t j = 0; j < dim; ++j) {
      double sum_sq = 0.0, sum_zero = 0.0;
      for (int64_t block = 0; block < blocks; ++block) {
        sum_sq += static_cast<double>(column_partials[block * 2 * dim + j]);
        sum_zero += static_cast<double>(column_partials[block * 2 * dim + dim + j]);
      }
      const double s = static_cast<double>(scale[j]), m = static_cast<double>(zero_mass[j]);
      if (p.grad_scale != nullptr) static_cast<W*>(p.grad_scale)[j] = static_cast<W>(sum_sq / (s * s * s));
      if (p.grad_zero_mass != nullptr) {
        static_cast<W*>(p.grad_zero_mass)[j] = static_cast<W>(sum_zero == 0.0 ? 0.0 : sum_zero / m);
      }
    }
  }
  if (p.grad_weight == nullptr) return;
  W* grad_weight = static_cast<W*>(p.grad_weight);
  at::parallel_for(0, num_classes, 1, [&](int64_t class_begin, int64_t class_end) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t y = p.labels[i];
      if (y < class_begin || y >= class_end) continue;
      const X* ai = a + i * dim;
      W* gw = grad_weight + y * dim;
      const W gi = grad[i];
      for (int64_t j = 0; j < dim; ++j) gw[j] += gi * static_cast<W>(ai[j]);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// The backward of rectified_rsample. Classes are split into at most kClassChunks fixed chunks; a
// task takes a chunk, scans the rows in order and adds those of its classes (no two tasks write one
// class), with the columns' sums per chunk, added in chunk order at the end: the result does not
// depend on the number of threads.
constexpr int64_t kClassChunks = 64;

template <typename T>
void rsample_backward_typed(const RectifiedRsampleBackwardParams& p) {
  const int64_t n = p.num_rows, dim = p.dim, num_classes = p.num_classes;
  const T* grad = static_cast<const T*>(p.grad);
  const T* sample = static_cast<const T*>(p.sample);
  const T* weight = static_cast<const T*>(p.weight);
  std::vector<double> scale(static_cast<size_t>(dim)), zero_mass(static_cast<size_t>(dim));
  for (int64_t j = 0; j < dim; ++j) {
    scale[j] = static_cast<double>(static_cast<const T*>(p.scale)[j]);
    zero_mass[j] = static_cast<double>(static_cast<const T*>(p.zero_mass)[j]);
  }
  std::vector<uint8_t> drawn(static_cast<size_t>(num_classes), 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t y = p.labels[i];
    if (y >= 0 && y < num_classes) {
      drawn[y] = 1;
    } else {
      record_bad_label(*p.status, y);
    }
  }
  at::parallel_for(0, num_classes, cell_grain(dim), [&](int64_t begin, int64_t end) {
    for (int64_t y = begin; y < end; ++y) {
      if (!drawn[y]) continue;
      for (int64_t j = 0; j < dim; ++j) {
        p.log_z[y * dim + j] = rectified_log_z(static_cast<double>(weight[y * dim + j]), scale[j], zero_mass[j]);
      }
    }
  });
  const int64_t chunk = (num_classes + kClassChunks - 1) / kClassChunks;
  const int64_t chunks = (num_classes + chunk - 1) / chunk;
  std::vector<double> columns(static_cast<size_t>(chunks * 2 * dim), 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t c = chunk_begin; c < chunk_end; ++c) {
      const int64_t class_begin = c * chunk, class_end = std::min(num_classes, class_begin + chunk);
      double* sum_scale = columns.data() + c * 2 * dim;
      double* sum_zero_mass = sum_scale + dim;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t y = p.labels[i];
        if (y < class_begin || y >= class_end) continue;
        for (int64_t j = 0; j < dim; ++j) {
          const double a = static_cast<double>(sample[i * dim + j]);
          if (!(a > 0.0)) continue;  // the atom does not move
          const double g = static_cast<double>(grad[i * dim + j]);
          const DrawDerivatives d = rectified_draw_derivatives(a, static_cast<double>(weight[y * dim + j]), scale[j],
                                                               zero_mass[j], p.log_z[y * dim + j]);
          p.grad_weight[y * dim + j] += g * d.weight;
          sum_scale[j] += g * d.scale;
          sum_zero_mass[j] += g * d.zero_mass;
        }
      }
    }
  });
  for (int64_t c = 0; c < chunks; ++c) {
    for (int64_t k = 0; k < 2 * dim; ++k) p.column_sums[k] += columns[c * 2 * dim + k];
  }
}

// ---------------------------------------------------------------------------------------------
// Normalizers and moments: C x D evaluations of the core in double, rounded once.

template <typename T>
void log_partition_typed(const RectifiedTableParams& p) {
  const Coordinates c = checked_coordinates<T>(p.scale, p.zero_mass, p.dim, p.status);
  const T* weight = static_cast<const T*>(p.weight);
  T* out = static_cast<T*>(p.out);
  at::parallel_for(0, p.num_classes, cell_grain(p.dim), [&](int64_t begin, int64_t end) {
    for (int64_t y = begin; y < end; ++y) {
      double total = 0.0;
      for (int64_t j = 0; j < p.dim; ++j) {
        total += rectified_log_z(static_cast<double>(weight[y * p.dim + j]), c.scale[j], c.zero_mass[j]);
      }
      out[y] = static_cast<T>(total);
    }
  });
}

template <typename T>
void coordinate_stats_typed(const RectifiedTableParams& p) {
  const Coordinates c = checked_coordinates<T>(p.scale, p.zero_mass, p.dim, p.status);
  const T* weight = static_cast<const T*>(p.weight);
  T* out = static_cast<T*>(p.out);
  const int64_t cells = p.num_classes * p.dim;
  at::parallel_for(0, cells, cell_grain(1), [&](int64_t begin, int64_t end) {
    for (int64_t cell = begin; cell < end; ++cell) {
      const int64_t j = cell % p.dim;
      const RectifiedCoordinate r = rectified_coordinate(static_cast<double>(weight[cell]), c.scale[j], c.zero_mass[j]);
      out[cell] = static_cast<T>(r.log_z);
      out[cells + cell] = static_cast<T>(std::exp(r.log_zero));
      out[2 * cells + cell] = static_cast<T>(r.mean);
      out[3 * cells + cell] = static_cast<T>(r.second_moment);
      out[4 * cells + cell] = static_cast<T>(r.fourth_moment);
    }
  });
}

template <typename T>
void base_typed(const RectifiedBaseParams& p) {
  const Coordinates c = checked_coordinates<T>(p.scale, p.zero_mass, p.dim, p.status);
  T* base = static_cast<T*>(p.base);
  for (int64_t j = 0; j < p.dim; ++j) {
    base[j] = static_cast<T>(0.5 / (c.scale[j] * c.scale[j]));
    base[p.dim + j] = static_cast<T>(std::log(c.zero_mass[j]));
  }
}

}  // namespace

void rectified_base(const RectifiedBaseParams& p) {
  dispatch_compute(p.dtype, [&](auto tag) { base_typed<decltype(tag)>(p); });
}

void rectified_log_partition(const RectifiedTableParams& p) {
  dispatch_compute(p.dtype, [&](auto tag) { log_partition_typed<decltype(tag)>(p); });
}

void rectified_coordinate_stats(const RectifiedTableParams& p) {
  dispatch_compute(p.dtype, [&](auto tag) { coordinate_stats_typed<decltype(tag)>(p); });
}

void rectified_sample(const RectifiedSampleParams& p) {
  dispatch_compute(p.dtype, [&](auto tag) { sample_typed<decltype(tag)>(p); });
}

void rectified_log_prob(const RectifiedDensityParams& p) {
  dispatch_x_weight(p.a_dtype, p.weight_dtype, [&](auto x_tag, auto w_tag) {
    using X = decltype(x_tag);
    using W = decltype(w_tag);
    parallel_rows(p.num_rows, p.dim, p.status,
                  [&](int64_t begin, int64_t end, CheckStatus& found) { log_prob_rows<W, X>(p, begin, end, found); });
  });
}

void rectified_log_prob_all_epilogue(const RectifiedDensityParams& p) {
  dispatch_x_weight(p.a_dtype, p.weight_dtype, [&](auto x_tag, auto w_tag) {
    using X = decltype(x_tag);
    using W = decltype(w_tag);
    parallel_rows(p.num_rows, p.dim + p.num_classes, p.status, [&](int64_t begin, int64_t end, CheckStatus& found) {
      log_prob_all_rows<W, X>(p, begin, end, found);
    });
  });
}

void rectified_rsample_backward(const RectifiedRsampleBackwardParams& p) {
  dispatch_compute(p.dtype, [&](auto tag) { rsample_backward_typed<decltype(tag)>(p); });
}

void rectified_log_prob_backward(const RectifiedDensityParams& p) {
  dispatch_x_weight(p.a_dtype, p.weight_dtype, [&](auto x_tag, auto w_tag) {
    log_prob_backward_typed<decltype(w_tag), decltype(x_tag)>(p);
  });
}

}  // namespace cpu
}  // namespace penact
