// CUDA kernels of the rectified family and their launchers (interface: rectified.h). The math is
// core/rectified.h, the code the CPU back-end runs; the same (seed, offset) gives the same samples
// on both devices up to the rounding of log, sqrt and erfc.
//
// Layout of the work:
//   base, tables   one thread per coordinate (base) or per (class, coordinate) cell (draw tables,
//                  coordinate_stats), one warp per class (log_partition, summed in float64);
//   sample         one thread per (row, Philox block of a span): the block's 4 (float) or 2
//                  (double) words draw the coordinates j0 + l + 32 s of the span, consecutive
//                  threads writing consecutive coordinates; a coordinate marked for its own stream
//                  and drawn non-zero takes its value from that stream (rare, divergent);
//   log_prob, log_prob_all epilogue   a team of lanes per row (as the sphere family's row kernel);
//   backward       a thread per column over chunks of rows: grad_a and grad_weight per entry
//                  (grad_weight by atomics), the column sums in registers, one atomic per chunk;
//   rsample backward   the same layout over the draws, after a table of log z per cell.
// Parameter values are checked where they are read (the cells of class 0, or the base kernel);
// labels where they are read, out of range: reported, the row NaN, never used as an index.
#include "../core/rectified.h"
#include "../rectified.h"
#include "common.cuh"

namespace penact {
namespace cuda {
namespace {

// Checks coordinate j's parameters (once per coordinate: the caller lets one thread per j do it).
__device__ __forceinline__ void check_coordinate(CheckStatus* status, int64_t j, double s, double m) {
  if (!valid_scale(s)) report_bad_value(status, kScale, j);
  if (!valid_zero_mass(m)) report_bad_value(status, kZeroMass, j);
}

// ------------------------------------------------------------------------------------------------
// The base measure's terms, the normalizers and the moments.

template <typename T>
__global__ void __launch_bounds__(kThreads) base_kernel(const RectifiedBaseParams p) {
  const T* scale = static_cast<const T*>(p.scale);
  const T* zero_mass = static_cast<const T*>(p.zero_mass);
  T* base = static_cast<T*>(p.base);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < p.dim; j += stride) {
    const double s = static_cast<double>(scale[j]), m = static_cast<double>(zero_mass[j]);
    check_coordinate(p.status, j, s, m);
    base[j] = static_cast<T>(0.5 / (s * s));
    base[p.dim + j] = static_cast<T>(log(m));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) log_partition_kernel(const RectifiedTableParams p) {
  const T* weight = static_cast<const T*>(p.weight);
  const T* scale = static_cast<const T*>(p.scale);
  const T* zero_mass = static_cast<const T*>(p.zero_mass);
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp; c < p.num_classes;
       c += warps) {
    double total[1] = {0.0};
    for (int64_t j = lane; j < p.dim; j += kWarp) {
      const double s = static_cast<double>(scale[j]), m = static_cast<double>(zero_mass[j]);
      if (c == 0) check_coordinate(p.status, j, s, m);
      total[0] += rectified_log_z(static_cast<double>(weight[c * p.dim + j]), s, m);
    }
    LaneTeam<kWarp>().sum(total);
    if (lane == 0) static_cast<T*>(p.out)[c] = static_cast<T>(total[0]);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) coordinate_stats_kernel(const RectifiedTableParams p) {
  const T* weight = static_cast<const T*>(p.weight);
  const T* scale = static_cast<const T*>(p.scale);
  const T* zero_mass = static_cast<const T*>(p.zero_mass);
  T* out = static_cast<T*>(p.out);
  const int64_t cells = p.num_classes * p.dim;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t cell = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; cell < cells; cell += stride) {
    const int64_t j = cell % p.dim;
    const double s = static_cast<double>(scale[j]), m = static_cast<double>(zero_mass[j]);
    if (cell < p.dim) check_coordinate(p.status, j, s, m);
    const RectifiedCoordinate r = rectified_coordinate(static_cast<double>(weight[cell]), s, m);
    out[cell] = static_cast<T>(r.log_z);
    out[cells + cell] = static_cast<T>(exp(r.log_zero));
    out[2 * cells + cell] = static_cast<T>(r.mean);
    out[3 * cells + cell] = static_cast<T>(r.second_moment);
    out[4 * cells + cell] = static_cast<T>(r.fourth_moment);
  }
}

// ------------------------------------------------------------------------------------------------
// Sampling.

// The draw tables of every class (rectified.h), and the finiteness check of the weight.
template <typename T>
__global__ void __launch_bounds__(kThreads) draw_tables_kernel(const RectifiedSampleParams p) {
  const T* weight = static_cast<const T*>(p.weight);
  const T* scale = static_cast<const T*>(p.scale);
  const T* zero_mass = static_cast<const T*>(p.zero_mass);
  T* tables = static_cast<T*>(p.tables);
  const int64_t cells = p.num_classes * p.dim;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t cell = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; cell < cells; cell += stride) {
    const int64_t j = cell % p.dim;
    const double w = static_cast<double>(weight[cell]);
    const double s = static_cast<double>(scale[j]), m = static_cast<double>(zero_mass[j]);
    if (cell < p.dim) check_coordinate(p.status, j, s, m);
    if (!isfinite(w)) report_bad_value(p.status, kActivationsOrWeight, cell / p.dim);
    const RectifiedDrawParams<T> d = rectified_draw_params<T>(w, s, m);
    tables[cell] = d.inv_nonzero;
    tables[cells + cell] = d.shift;
    tables[2 * cells + cell] = d.upper;
    tables[3 * cells + cell] = d.lower;
    p.own_stream[cell] = d.own_stream ? 1 : 0;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sample_kernel(const RectifiedSampleParams p) {
  constexpr int64_t kSpan = RectifiedStream<T>::kSpan;
  constexpr int kSlots = static_cast<int>(kSpan / kSpanBlocks);  // coordinates per Philox block
  const T* weight = static_cast<const T*>(p.weight);
  const T* scale = static_cast<const T*>(p.scale);
  const T* tables = static_cast<const T*>(p.tables);
  T* out = static_cast<T*>(p.out);
  const int64_t dim = p.dim, cells = p.num_classes * dim;
  const int64_t spans = ceil_div(dim, kSpan);
  const int64_t items = p.num_rows * spans * kSpanBlocks;
  const T smallest = smallest_normal<T>();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; item < items; item += stride) {
    const int lane = static_cast<int>(item % kSpanBlocks);
    const int64_t span = (item / kSpanBlocks) % spans;
    const int64_t i = item / (kSpanBlocks * spans);
    const int64_t y = p.labels[i];
    const int64_t j0 = span * kSpan + lane;
    T* row = out + i * dim;
    if (!(y >= 0 && y < p.num_classes)) {
      if (span == 0 && lane == 0) report_bad_label(p.status, y);
#pragma unroll
      for (int s = 0; s < kSlots; ++s) {
        if (j0 + s * kSpanBlocks < dim) row[j0 + s * kSpanBlocks] = T(NAN);
      }
      continue;
    }
    const uint64_t counter = static_cast<uint64_t>(p.offset + i);
    const Philox4 bits = philox4x32_10(p.seed, counter, rectified_block<T>(j0));
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int64_t j = j0 + s * kSpanBlocks;
      if (j >= dim) break;
      const int64_t cell = y * dim + j;
      T value = rectified_draw<T>(RectifiedStream<T>::uniform(bits, s), tables[cell], tables[cells + cell],
                                  tables[2 * cells + cell], tables[3 * cells + cell], scale[j]);
      if (p.own_stream[cell] && value != T(0)) {
        RowStream stream = coordinate_stream(p.seed, counter, j);
        const double alpha = -static_cast<double>(scale[j]) * static_cast<double>(weight[cell]);
        const T a = static_cast<T>(static_cast<double>(scale[j]) * own_stream_excess(stream, alpha));
        value = a > smallest ? a : smallest;
      }
      row[j] = value;
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Log-densities: a team of lanes per row reads the row once.

template <typename X>
__host__ __device__ constexpr int row_chunk_elements() { return static_cast<int>(16 / sizeof(X)); }

// Member 0 reports a row's entries outside the support (a second, scalar look at a row that has some).
template <typename W, typename X>
__device__ void report_bad_row(CheckStatus* status, const X* row, int64_t i, int64_t dim, W bad) {
  int64_t first = 0;
  while (first < dim && !outside_support(Element<X>::template load<W>(row[first]))) ++first;
  report_bad_value(status, kActivationsOrWeight, i * dim + first, static_cast<unsigned long long>(bad));
}

// kLabelled: log_prob (out[i] = w_y . a_i + B(a_i) - log Z_y); else log_prob_all's epilogue
// (out[i, c] += B(a_i) - log Z_c).
template <bool kLabelled, typename X, typename W, int TEAM>
__global__ void __launch_bounds__(kThreads) density_kernel(const RectifiedDensityParams p, bool vector_a,
                                                           bool vector_weight, bool vector_base) {
  constexpr int K = row_chunk_elements<X>();
  constexpr int kRowsAtOnce = kWarp / TEAM;
  const LaneTeam<TEAM> team;
  const X* a = static_cast<const X*>(p.a);
  const W* weight = static_cast<const W*>(p.weight);
  const W* half_precision = static_cast<const W*>(p.base);
  const W* log_zero_mass = half_precision + p.dim;
  const W* log_partition = static_cast<const W*>(p.log_partition);
  W* out = static_cast<W*>(p.out);
  const int lane = threadIdx.x % kWarp, member = lane % TEAM;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  const int64_t num_chunks = ceil_div(p.dim, K);
  for (int64_t first = (static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp) * kRowsAtOnce;
       first < p.num_rows; first += warps * kRowsAtOnce) {
    const int64_t i = first + lane / TEAM;
    const bool active = i < p.num_rows;
    int64_t y = 0;
    bool live = active;
    if constexpr (kLabelled) {
      y = active ? p.labels[i] : 0;
      live = active && y >= 0 && y < p.num_classes;
      if (active && !live && member == 0) report_bad_label(p.status, y);
    }
    const X* row = a + (live ? i : 0) * p.dim;
    const W* w = weight + (live ? y : 0) * p.dim;
    W sums[2] = {W(0), W(0)};  // the row's value, its entries outside the support
    const int64_t chunks = live ? num_chunks : 0;
    for (int64_t chunk = member; chunk < chunks; chunk += TEAM) {
      const int valid = chunk_valid(chunk, K, p.dim);
      W as[K], hp[K], lm[K];
      load_chunk<K>(row + chunk * K, valid, vector_a, as);
      load_chunk<K>(half_precision + chunk * K, valid, vector_base, hp);
      load_chunk<K>(log_zero_mass + chunk * K, valid, vector_base, lm);
      if constexpr (kLabelled) {
        W ws[K];
        load_chunk<K>(w + chunk * K, valid, vector_weight, ws);
#pragma unroll
        for (int e = 0; e < K; ++e) sums[0] += ws[e] * as[e];
      }
#pragma unroll
      for (int e = 0; e < K; ++e) {
        if (e < valid) {
          sums[0] += rectified_base_term(as[e], hp[e], lm[e]);
          sums[1] += static_cast<W>(outside_support(as[e]));
        }
      }
    }
    team.sum(sums);
    if (!active) continue;
    if (member == 0 && live && sums[1] > W(0)) report_bad_row<W>(p.status, row, i, p.dim, sums[1]);
    if constexpr (kLabelled) {
      if (member == 0) out[i] = live ? sums[0] - log_partition[y] : W(NAN);
    } else {
      W* out_row = out + i * p.num_classes;
      for (int64_t c = member; c < p.num_classes; c += TEAM) out_row[c] += sums[0] - log_partition[c];
    }
  }
}

template <bool kLabelled>
cudaError_t launch_density(const RectifiedDensityParams& p, cudaStream_t stream) {
  return dispatch_x_weight(p.a_dtype, p.weight_dtype, [&](auto x_tag, auto w_tag) {
    using X = decltype(x_tag);
    using W = decltype(w_tag);
    constexpr int K = row_chunk_elements<X>();
    const bool vector_a = rows_vectorizable(p.a, p.dim, sizeof(X), vector_width<X, K>());
    const bool vector_weight = rows_vectorizable(p.weight, p.dim, sizeof(W), vector_width<W, K>());
    const bool vector_base = rows_vectorizable(p.base, p.dim, sizeof(W), vector_width<W, K>());
    cudaError_t error = cudaSuccess;
    const int multiprocessors = multiprocessor_count(&error);
    if (error != cudaSuccess) return error;
    // Teams of about num_chunks / 4 lanes, as in the sphere family's row kernel.
    const int64_t num_chunks = ceil_div(p.dim, K);
    const auto launch = [&](auto team_size) {
      constexpr int TEAM = decltype(team_size)::value;
      const int grid = grid_for(ceil_div(ceil_div(p.num_rows, kWarp / TEAM), kWarpsPerBlock), multiprocessors);
      density_kernel<kLabelled, X, W, TEAM><<<grid, kThreads, 0, stream>>>(p, vector_a, vector_weight, vector_base);
      return cudaGetLastError();
    };
    if (num_chunks <= 16) return launch(std::integral_constant<int, 4>());
    if (num_chunks <= 32) return launch(std::integral_constant<int, 8>());
    if (num_chunks <= 64) return launch(std::integral_constant<int, 16>());
    return launch(std::integral_constant<int, 32>());
  });
}

// ------------------------------------------------------------------------------------------------
// The backward: a thread per column j, over chunks of kRowsPerChunk rows (blockIdx.y).

constexpr int64_t kRowsPerChunk = 256;

// Calls column(j, row_begin, row_end) for this thread's columns j and the block's chunks of rows.
template <typename Column>
__device__ __forceinline__ void for_each_column_chunk(int64_t num_rows, int64_t dim, const Column& column) {
  const int64_t chunks = ceil_div(num_rows, kRowsPerChunk);
  const int64_t column_stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
    const int64_t row_end = min(num_rows, (chunk + 1) * kRowsPerChunk);
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < dim; j += column_stride) {
      column(j, chunk * kRowsPerChunk, row_end);
    }
  }
}

template <typename X, typename W>
__global__ void __launch_bounds__(kThreads) backward_kernel(const RectifiedDensityParams p) {
  const X* a = static_cast<const X*>(p.a);
  const W* weight = static_cast<const W*>(p.weight);
  const W* half_precision = static_cast<const W*>(p.base);
  const W* grad = static_cast<const W*>(p.grad);
  X* grad_a = static_cast<X*>(p.grad_a);
  W* grad_weight = static_cast<W*>(p.grad_weight);
  const int64_t dim = p.dim;
  for_each_column_chunk(p.num_rows, dim, [&](int64_t j, int64_t row_begin, int64_t row_end) {
    const W hp = half_precision[j];
    double sum_sq = 0.0, sum_zero = 0.0;
    for (int64_t i = row_begin; i < row_end; ++i) {
      const int64_t y = p.labels[i];
      if (!(y >= 0 && y < p.num_classes)) {
        if (j == 0) report_bad_label(p.status, y);
        if (grad_a != nullptr) grad_a[i * dim + j] = Element<X>::store(W(NAN));
        continue;
      }
      const W av = Element<X>::template load<W>(a[i * dim + j]);
      const W gi = grad[i];
      if (grad_a != nullptr) grad_a[i * dim + j] = Element<X>::store(gi * (weight[y * dim + j] - W(2) * hp * av));
      if (grad_weight != nullptr) atomicAdd(grad_weight + y * dim + j, gi * av);
      sum_sq += static_cast<double>(gi * av * av);
      sum_zero += av == W(0) ? static_cast<double>(gi) : 0.0;
    }
    if (p.column_sums != nullptr) {
      atomicAdd(p.column_sums + j, sum_sq);
      atomicAdd(p.column_sums + dim + j, sum_zero);
    }
  });
}

template <typename W>
__global__ void __launch_bounds__(kThreads) column_gradients_kernel(const RectifiedDensityParams p) {
  const W* scale = static_cast<const W*>(p.scale);
  const W* zero_mass = static_cast<const W*>(p.zero_mass);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < p.dim; j += stride) {
    const double sum_sq = p.column_sums[j], sum_zero = p.column_sums[p.dim + j];
    const double s = static_cast<double>(scale[j]), m = static_cast<double>(zero_mass[j]);
    if (p.grad_scale != nullptr) static_cast<W*>(p.grad_scale)[j] = static_cast<W>(sum_sq / (s * s * s));
    if (p.grad_zero_mass != nullptr) {
      static_cast<W*>(p.grad_zero_mass)[j] = static_cast<W>(sum_zero == 0.0 ? 0.0 : sum_zero / m);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// The backward of rectified_rsample: log z per cell, then a thread per column over chunks of rows
// (as the backward above), the derivatives of each non-zero draw by the core.

template <typename T>
__global__ void __launch_bounds__(kThreads) rsample_log_z_kernel(const RectifiedRsampleBackwardParams p) {
  const T* weight = static_cast<const T*>(p.weight);
  const T* scale = static_cast<const T*>(p.scale);
  const T* zero_mass = static_cast<const T*>(p.zero_mass);
  const int64_t cells = p.num_classes * p.dim;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t cell = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; cell < cells; cell += stride) {
    const int64_t j = cell % p.dim;
    p.log_z[cell] = rectified_log_z(static_cast<double>(weight[cell]), static_cast<double>(scale[j]),
                                    static_cast<double>(zero_mass[j]));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) rsample_backward_kernel(const RectifiedRsampleBackwardParams p) {
  const T* grad = static_cast<const T*>(p.grad);
  const T* sample = static_cast<const T*>(p.sample);
  const T* weight = static_cast<const T*>(p.weight);
  const int64_t dim = p.dim;
  for_each_column_chunk(p.num_rows, dim, [&](int64_t j, int64_t row_begin, int64_t row_end) {
    const double s = static_cast<double>(static_cast<const T*>(p.scale)[j]);
    const double m = static_cast<double>(static_cast<const T*>(p.zero_mass)[j]);
    double sum_scale = 0.0, sum_zero_mass = 0.0;
    for (int64_t i = row_begin; i < row_end; ++i) {
      const int64_t y = p.labels[i];
      if (!(y >= 0 && y < p.num_classes)) {
        if (j == 0) report_bad_label(p.status, y);
        continue;
      }
      const double a = static_cast<double>(sample[i * dim + j]);
      if (!(a > 0.0)) continue;  // the atom does not move
      const double g = static_cast<double>(grad[i * dim + j]);
      const DrawDerivatives d =
          rectified_draw_derivatives(a, static_cast<double>(weight[y * dim + j]), s, m, p.log_z[y * dim + j]);
      atomicAdd(p.grad_weight + y * dim + j, g * d.weight);
      sum_scale += g * d.scale;
      sum_zero_mass += g * d.zero_mass;
    }
    atomicAdd(p.column_sums + j, sum_scale);
    atomicAdd(p.column_sums + dim + j, sum_zero_mass);
  });
}

// The grid of the column kernels: every column block, enough row chunks to fill the device.
dim3 column_grid(int64_t num_rows, int64_t dim, int multiprocessors) {
  const int64_t column_blocks = ceil_div(dim, kThreads);
  const int64_t chunks = ceil_div(num_rows, kRowsPerChunk);
  const int64_t wanted = ceil_div(static_cast<int64_t>(multiprocessors) * kBlocksPerSm * 4, column_blocks);
  return dim3(static_cast<unsigned>(column_blocks),
              static_cast<unsigned>(chunks < wanted ? chunks : wanted < 1 ? 1 : wanted));
}

// One thread per element of a [count]-sized loop: the grid that covers it (grid-stride beyond).
template <typename Kernel, typename Params>
cudaError_t launch_elementwise(Kernel kernel, int64_t count, const Params& p, cudaStream_t stream) {
  cudaError_t error = cudaSuccess;
  const int multiprocessors = multiprocessor_count(&error);
  if (error != cudaSuccess) return error;
  kernel<<<grid_for(ceil_div(count, kThreads), multiprocessors), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t rectified_base(const RectifiedBaseParams& p, cudaStream_t stream) {
  if (p.dim == 0) return cudaSuccess;
  return dispatch_compute(p.dtype, [&](auto tag) {
    return launch_elementwise(base_kernel<decltype(tag)>, p.dim, p, stream);
  });
}

cudaError_t rectified_log_partition(const RectifiedTableParams& p, cudaStream_t stream) {
  if (p.num_classes == 0) return cudaSuccess;
  return dispatch_compute(p.dtype, [&](auto tag) {
    return launch_elementwise(log_partition_kernel<decltype(tag)>, p.num_classes * kWarp, p, stream);
  });
}

cudaError_t rectified_coordinate_stats(const RectifiedTableParams& p, cudaStream_t stream) {
  if (p.num_classes * p.dim == 0) return cudaSuccess;
  return dispatch_compute(p.dtype, [&](auto tag) {
    return launch_elementwise(coordinate_stats_kernel<decltype(tag)>, p.num_classes * p.dim, p, stream);
  });
}

cudaError_t rectified_sample(const RectifiedSampleParams& p, cudaStream_t stream) {
  if (p.num_rows == 0 || p.dim == 0) return cudaSuccess;
  return dispatch_compute(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    cudaError_t error = launch_elementwise(draw_tables_kernel<T>, p.num_classes * p.dim, p, stream);
    if (error != cudaSuccess) return error;
    const int64_t items = p.num_rows * ceil_div(p.dim, RectifiedStream<T>::kSpan) * kSpanBlocks;
    return launch_elementwise(sample_kernel<T>, items, p, stream);
  });
}

cudaError_t rectified_log_prob(const RectifiedDensityParams& p, cudaStream_t stream) {
  if (p.num_rows == 0) return cudaSuccess;
  return launch_density<true>(p, stream);
}

cudaError_t rectified_log_prob_all_epilogue(const RectifiedDensityParams& p, cudaStream_t stream) {
  if (p.num_rows == 0) return cudaSuccess;
  return launch_density<false>(p, stream);
}

cudaError_t rectified_log_prob_backward(const RectifiedDensityParams& p, cudaStream_t stream) {
  if (p.num_rows == 0 || p.dim == 0) return cudaSuccess;
  return dispatch_x_weight(p.a_dtype, p.weight_dtype, [&](auto x_tag, auto w_tag) {
    using X = decltype(x_tag);
    using W = decltype(w_tag);
    cudaError_t error = cudaSuccess;
    const int multiprocessors = multiprocessor_count(&error);
    if (error != cudaSuccess) return error;
    backward_kernel<X, W><<<column_grid(p.num_rows, p.dim, multiprocessors), kThreads, 0, stream>>>(p);
    error = cudaGetLastError();
    if (error != cudaSuccess || p.column_sums == nullptr) return error;
    return launch_elementwise(column_gradients_kernel<W>, p.dim, p, stream);
  });
}

cudaError_t rectified_rsample_backward(const RectifiedRsampleBackwardParams& p, cudaStream_t stream) {
  if (p.num_rows == 0 || p.dim == 0) return cudaSuccess;
  return dispatch_compute(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    cudaError_t error = launch_elementwise(rsample_log_z_kernel<T>, p.num_classes * p.dim, p, stream);
    if (error != cudaSuccess) return error;
    const int multiprocessors = multiprocessor_count(&error);
    if (error != cudaSuccess) return error;
    rsample_backward_kernel<T><<<column_grid(p.num_rows, p.dim, multiprocessors), kThreads, 0, stream>>>(p);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace penact
