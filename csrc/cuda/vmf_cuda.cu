// CUDA kernels of the sphere family and their launchers (interface: vmf.h). The formulas come
// from csrc/core (vmf_rows.h, wood.h, normals.h, vmf_grad.h), the code the CPU back-end runs, so
// that the same (seed, offset) gives the same samples on both devices (up to FMA contraction and
// the last bits of libm functions).
//
// Layout of the work (benchmarks/NOTES.md says what limits each kernel):
//   sample     a team of threads per row: TEAM lanes of one warp for D <= 1024 (float), the whole
//              block beyond. A warp first runs Wood's rejection loop (double precision) for a tile
//              of up to 32 rows, one row per lane, so that the scalar step is 32 rows wide instead
//              of idling 31 lanes; then the team of each row draws the row's normals (one Philox
//              block per 4 float / 2 double normals, the block -> element map of core/normals.h),
//              reduces (mu . g, mu . mu) and (mu . g1, g1 . g1) by shuffles (core/vmf_rows.h: two
//              projections and the unit check of mu), and writes the row with 16-byte stores. The
//              normals stay in registers; beyond 8192 (float) elements a row's normals are
//              regenerated in each pass instead (Philox is a pure function of its counter).
//   log_prob   a team per row reads x_i once (dot with w_y and the norm), 16-byte loads.
//   backward   the same read, then grad_x_i and atomic adds into grad_weight[y_i].
//   log_prob_all   the rows of x scaled to radius / ||x_i|| (here), then cuBLAS addmm (in the glue).
//   rsample backward   a team per row: its dot products, then atomic adds into grad_mu[y_i]; then
//              one thread per row for dt/dkappa (an adaptive quadrature) and grad_kappa[y_i].
// Every label is checked where it is read: out of range, it is reported (launch.h) and its row is
// NaN or skipped, never used as an index.
#include "../core/normals.h"
#include "../core/vmf_grad.h"
#include "../core/vmf_rows.h"
#include "../core/wood.h"
#include "../vmf.h"
#include "common.cuh"

namespace penact {
namespace cuda {
namespace {

constexpr int kMaxTileRows = kWarp;  // rows whose Wood step one warp draws at once, one per lane

// ------------------------------------------------------------------------------------------------
// vmf_sample

template <typename T, typename Out>
struct SampleArgs {
  const T* __restrict__ mean_direction;
  const double* __restrict__ kappa;
  const int64_t* __restrict__ labels;
  Out* __restrict__ out;
  CheckStatus* status;
  int64_t num_rows, num_classes, dim;
  double radius, unit_tolerance;
  uint64_t seed, offset;
  bool vector_mean, vector_out;
};

// The mu-component of a row's draw, t, and sqrt(1 - t^2); label < 0 marks a row that comes out NaN
// (a label out of range, reported here, or an invalid concentration).
struct RowCosine {
  double t, sine;
  int64_t label;
};

template <typename T, typename Out>
__device__ RowCosine draw_row_cosine(const SampleArgs<T, Out>& a, int64_t row) {
  const int64_t label = a.labels[row];
  if (!label_in_range(a.status, label, a.num_classes)) return {NAN, NAN, -1};
  const double kappa = a.kappa[label];
  if (!valid_concentration(kappa)) return {NAN, NAN, -1};
  RowStream stream(a.seed, a.offset + static_cast<uint64_t>(row));
  const Cosine cosine = vmf_cosine_draw(stream, static_cast<double>(a.dim), kappa);
  return {cosine.t, cosine.sine, label};
}

// Chunk `block` of a row: its K normals (Philox block `block` of the row's stream) and the K
// matching elements of mu; zero past the end of the row, and everywhere when !drawn.
template <typename T, typename Out>
__device__ __forceinline__ void row_chunk(const SampleArgs<T, Out>& a, const T* mean, uint64_t counter,
                                          int64_t block, bool drawn, T (&mean_chunk)[NormalsPerBlock<T>::value],
                                          T (&gauss)[NormalsPerBlock<T>::value]) {
  constexpr int K = NormalsPerBlock<T>::value;
  const int valid = drawn ? chunk_valid(block, K, a.dim) : 0;
  load_chunk<K>(mean + block * K, valid, a.vector_mean, mean_chunk);
  if (valid > 0) normals_from_block(philox4x32_10(a.seed, counter, static_cast<uint64_t>(block)), gauss);
#pragma unroll
  for (int e = 0; e < K; ++e) {
    if (e >= valid) gauss[e] = T(0);
  }
}

// The row's output scales (core/vmf_rows.h) from the team's sums; NaN for a row without a draw.
// Member 0 reports a mean direction that is not a unit vector (once per row).
template <typename T, typename Out>
__device__ RowScales<T> row_scales(const SampleArgs<T, Out>& a, const RowCosine& c, T mean_sumsq, T residual_along,
                                   T residual_sumsq, int member) {
  if (c.label < 0) return {T(NAN), T(NAN)};
  if (member == 0 && !is_unit_vector(static_cast<double>(mean_sumsq), a.unit_tolerance)) {
    report_bad_value(a.status, 0, c.label);
  }
  return sample_row_scales<T>(a.radius, c.t, c.sine, static_cast<double>(residual_along),
                              static_cast<double>(residual_sumsq));
}

template <typename T, typename Out>
__device__ __forceinline__ void store_row_chunk(const SampleArgs<T, Out>& a, Out* out, int64_t block,
                                                const RowScales<T>& scales, const T (&mean_chunk)[NormalsPerBlock<T>::value],
                                                const T (&residual)[NormalsPerBlock<T>::value]) {
  constexpr int K = NormalsPerBlock<T>::value;
  T values[K];
#pragma unroll
  for (int e = 0; e < K; ++e) values[e] = scales.along_mean * mean_chunk[e] + scales.along_residual * residual[e];
  store_chunk<K>(out + block * K, chunk_valid(block, K, a.dim), a.vector_out, values);
}

// A row whose normals fit in registers: member m of the team holds blocks m, m + TEAM, ... (BPT
// of them). Every member calls this, also for `active == false` (no row: the team's sums are
// collective), which then writes nothing.
template <int BPT, typename T, typename Out, typename Team>
__device__ void sample_row_in_registers(const SampleArgs<T, Out>& a, const Team& team, int member, int64_t row,
                                        const RowCosine& c, bool active) {
  constexpr int K = NormalsPerBlock<T>::value;
  const bool drawn = active && c.label >= 0;
  const T* mean = a.mean_direction + (drawn ? c.label : 0) * a.dim;
  const uint64_t counter = a.offset + static_cast<uint64_t>(row);
  T mean_chunk[BPT][K], gauss[BPT][K];
  T first[2] = {T(0), T(0)};  // mu . g, mu . mu
#pragma unroll
  for (int s = 0; s < BPT; ++s) {
    row_chunk(a, mean, counter, member + static_cast<int64_t>(s) * Team::size, drawn, mean_chunk[s], gauss[s]);
#pragma unroll
    for (int e = 0; e < K; ++e) {
      first[0] += mean_chunk[s][e] * gauss[s][e];
      first[1] += mean_chunk[s][e] * mean_chunk[s][e];
    }
  }
  team.sum(first);
  T residual[2] = {T(0), T(0)};  // mu . g1, g1 . g1
#pragma unroll
  for (int s = 0; s < BPT; ++s) {
#pragma unroll
    for (int e = 0; e < K; ++e) {
      gauss[s][e] -= first[0] * mean_chunk[s][e];
      residual[0] += mean_chunk[s][e] * gauss[s][e];
      residual[1] += gauss[s][e] * gauss[s][e];
    }
  }
  team.sum(residual);
  if (!active) return;
  const RowScales<T> scales = row_scales(a, c, first[1], residual[0], residual[1], member);
  Out* out = a.out + row * a.dim;
#pragma unroll
  for (int s = 0; s < BPT; ++s) store_row_chunk(a, out, member + static_cast<int64_t>(s) * Team::size, scales, mean_chunk[s], gauss[s]);
}

// A row too long for registers (more than 8 blocks per thread of a block team): three passes over
// the row, each regenerating the normals, which costs Philox work but no memory traffic.
template <typename T, typename Out>
__device__ void sample_row_streaming(const SampleArgs<T, Out>& a, const BlockTeam& team, int member, int64_t row,
                                     const RowCosine& c) {
  constexpr int K = NormalsPerBlock<T>::value;
  const bool drawn = c.label >= 0;
  const T* mean = a.mean_direction + (drawn ? c.label : 0) * a.dim;
  const uint64_t counter = a.offset + static_cast<uint64_t>(row);
  const int64_t num_blocks = drawn ? ceil_div(a.dim, K) : 0;
  T mean_chunk[K], gauss[K];
  T first[2] = {T(0), T(0)};  // mu . g, mu . mu
  for (int64_t block = member; block < num_blocks; block += BlockTeam::size) {
    row_chunk(a, mean, counter, block, drawn, mean_chunk, gauss);
#pragma unroll
    for (int e = 0; e < K; ++e) {
      first[0] += mean_chunk[e] * gauss[e];
      first[1] += mean_chunk[e] * mean_chunk[e];
    }
  }
  team.sum(first);
  T residual[2] = {T(0), T(0)};  // mu . g1, g1 . g1
  for (int64_t block = member; block < num_blocks; block += BlockTeam::size) {
    row_chunk(a, mean, counter, block, drawn, mean_chunk, gauss);
#pragma unroll
    for (int e = 0; e < K; ++e) {
      const T g1 = gauss[e] - first[0] * mean_chunk[e];
      residual[0] += mean_chunk[e] * g1;
      residual[1] += g1 * g1;
    }
  }
  team.sum(residual);
  const RowScales<T> scales = row_scales(a, c, first[1], residual[0], residual[1], member);
  Out* out = a.out + row * a.dim;
  for (int64_t block = member; block < ceil_div(a.dim, K); block += BlockTeam::size) {
    row_chunk(a, mean, counter, block, drawn, mean_chunk, gauss);
#pragma unroll
    for (int e = 0; e < K; ++e) gauss[e] -= first[0] * mean_chunk[e];
    store_row_chunk(a, out, block, scales, mean_chunk, gauss);
  }
}

// Rows of up to 32 * BPT blocks: each warp takes tiles of tile_rows rows; lane l draws the cosine
// of the tile's row l; then teams of TEAM lanes write the tile's rows, 32 / TEAM rows at a time.
template <typename T, typename Out, int TEAM, int BPT>
__global__ void __launch_bounds__(kThreads) sample_lane_team_kernel(const SampleArgs<T, Out> a, int tile_rows,
                                                                    int64_t num_tiles) {
  constexpr int kRowsAtOnce = kWarp / TEAM;
  const int lane = threadIdx.x % kWarp;
  const LaneTeam<TEAM> team;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t tile = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp; tile < num_tiles;
       tile += warps) {
    const int64_t first_row = tile * tile_rows;
    const int rows = static_cast<int>(min(static_cast<int64_t>(tile_rows), a.num_rows - first_row));
    RowCosine mine = {NAN, NAN, -1};
    if (lane < rows) mine = draw_row_cosine(a, first_row + lane);
    for (int first = 0; first < rows; first += kRowsAtOnce) {
      const int local = first + lane / TEAM;
      const int source = min(local, kWarp - 1);
      const RowCosine c = {__shfl_sync(kAllLanes, mine.t, source), __shfl_sync(kAllLanes, mine.sine, source),
                           __shfl_sync(kAllLanes, mine.label, source)};
      sample_row_in_registers<BPT>(a, team, lane % TEAM, first_row + local, c, local < rows);
    }
  }
}

// Rows of more than 32 * 8 blocks: a block per row, tiles of tile_rows rows per block; the first
// warp draws the tile's cosines. BPT == 0: the streaming path.
template <typename T, typename Out, int BPT>
__global__ void __launch_bounds__(kThreads) sample_block_team_kernel(const SampleArgs<T, Out> a, int tile_rows,
                                                                     int64_t num_tiles) {
  __shared__ double scratch[kMaxBlockSums * kWarpsPerBlock];
  __shared__ RowCosine cosines[kMaxTileRows];
  const BlockTeam team{scratch};
  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    const int64_t first_row = tile * tile_rows;
    const int rows = static_cast<int>(min(static_cast<int64_t>(tile_rows), a.num_rows - first_row));
    if (static_cast<int>(threadIdx.x) < rows) cosines[threadIdx.x] = draw_row_cosine(a, first_row + threadIdx.x);
    __syncthreads();
    for (int local = 0; local < rows; ++local) {
      const RowCosine c = cosines[local];
      if constexpr (BPT == 0) {
        sample_row_streaming(a, team, threadIdx.x, first_row + local, c);
      } else {
        sample_row_in_registers<BPT>(a, team, threadIdx.x, first_row + local, c, true);
      }
    }
    __syncthreads();  // the next tile overwrites `cosines`
  }
}

// Rows per tile: up to 32 (one per lane of the drawing warp), fewer when N is too small to give
// every team of the device a tile.
int rows_per_tile(int64_t num_rows, int64_t concurrent_tiles) {
  const int64_t rows = ceil_div(num_rows, concurrent_tiles);
  return static_cast<int>(rows < 1 ? 1 : rows > kMaxTileRows ? kMaxTileRows : rows);
}

template <typename T, typename Out, int TEAM, int BPT>
cudaError_t launch_lane_team(const SampleArgs<T, Out>& a, int multiprocessors, cudaStream_t stream) {
  const int tile_rows = rows_per_tile(a.num_rows, static_cast<int64_t>(multiprocessors) * kBlocksPerSm * kWarpsPerBlock);
  const int64_t num_tiles = ceil_div(a.num_rows, tile_rows);
  const int grid = grid_for(ceil_div(num_tiles, kWarpsPerBlock), multiprocessors);
  sample_lane_team_kernel<T, Out, TEAM, BPT><<<grid, kThreads, 0, stream>>>(a, tile_rows, num_tiles);
  return cudaGetLastError();
}

template <typename T, typename Out, int BPT>
cudaError_t launch_block_team(const SampleArgs<T, Out>& a, int multiprocessors, cudaStream_t stream) {
  const int tile_rows = rows_per_tile(a.num_rows, static_cast<int64_t>(multiprocessors) * kBlocksPerSm);
  const int64_t num_tiles = ceil_div(a.num_rows, tile_rows);
  const int grid = grid_for(num_tiles, multiprocessors);
  sample_block_team_kernel<T, Out, BPT><<<grid, kThreads, 0, stream>>>(a, tile_rows, num_tiles);
  return cudaGetLastError();
}

template <typename T, typename Out>
cudaError_t sample_typed(const VmfSampleParams& p, cudaStream_t stream) {
  constexpr int K = NormalsPerBlock<T>::value;
  const SampleArgs<T, Out> a = {static_cast<const T*>(p.mean_direction),
                                p.kappa,
                                p.labels,
                                static_cast<Out*>(p.out),
                                p.status,
                                p.num_rows,
                                p.num_classes,
                                p.dim,
                                p.radius,
                                p.unit_tolerance,
                                p.seed,
                                p.offset,
                                rows_vectorizable(p.mean_direction, p.dim, sizeof(T), vector_width<T, K>()),
                                rows_vectorizable(p.out, p.dim, sizeof(Out), vector_width<Out, K>())};
  cudaError_t error = cudaSuccess;
  const int multiprocessors = multiprocessor_count(&error);
  if (error != cudaSuccess) return error;
  // Teams sized to the row: no lane without a block of normals (up to a factor 2), registers for
  // up to 8 blocks per thread, the streaming path beyond.
  const int64_t blocks = ceil_div(p.dim, K);
  if (blocks <= 4) return launch_lane_team<T, Out, 4, 1>(a, multiprocessors, stream);
  if (blocks <= 16) return launch_lane_team<T, Out, 16, 1>(a, multiprocessors, stream);
  if (blocks <= 32) return launch_lane_team<T, Out, 32, 1>(a, multiprocessors, stream);
  if (blocks <= 64) return launch_lane_team<T, Out, 32, 2>(a, multiprocessors, stream);
  if (blocks <= 128) return launch_lane_team<T, Out, 32, 4>(a, multiprocessors, stream);
  if (blocks <= 256) return launch_lane_team<T, Out, 32, 8>(a, multiprocessors, stream);
  if (blocks <= 2 * kThreads) return launch_block_team<T, Out, 2>(a, multiprocessors, stream);
  if (blocks <= 4 * kThreads) return launch_block_team<T, Out, 4>(a, multiprocessors, stream);
  if (blocks <= 8 * kThreads) return launch_block_team<T, Out, 8>(a, multiprocessors, stream);
  return launch_block_team<T, Out, 0>(a, multiprocessors, stream);
}

// ------------------------------------------------------------------------------------------------
// vmf_log_prob, its backward, and the row scaling of log_prob_all: a team of lanes per row.

enum class RowOp { kLogProb, kBackward, kScaleToRadius };

template <typename X, typename W>
struct RowArgs {
  const X* __restrict__ x;
  int64_t x_row_stride;
  const W* __restrict__ weight;
  const W* __restrict__ log_normalizer;
  const int64_t* __restrict__ labels;
  const W* __restrict__ grad;
  W* __restrict__ out;
  X* __restrict__ grad_x;
  W* __restrict__ grad_weight;
  CheckStatus* status;
  int64_t num_rows, num_classes, dim;
  double radius;
  bool vector_x, vector_weight, vector_out;  // vector_out: `out` (scale) or `grad_x` (backward)
};

// Chunks of 16 bytes of x: 8 float16/bfloat16, 4 float or 2 double elements.
template <typename X>
__host__ __device__ constexpr int row_chunk_elements() { return static_cast<int>(16 / sizeof(X)); }

template <RowOp OP, typename X, typename W, typename Team>
__global__ void __launch_bounds__(kThreads) row_kernel(const RowArgs<X, W> a) {
  constexpr int K = row_chunk_elements<X>();
  constexpr int kRowsAtOnce = kWarp / Team::size;
  const Team team;
  const int lane = threadIdx.x % kWarp, member = lane % Team::size;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  const int64_t num_chunks = ceil_div(a.dim, K);
  // The loop runs over whole warps so that all teams of a warp take part in every shuffle.
  for (int64_t first = (static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp) * kRowsAtOnce;
       first < a.num_rows; first += warps * kRowsAtOnce) {
    const int64_t row = first + lane / Team::size;
    const bool active = row < a.num_rows;
    bool live = active;
    int64_t label = 0;
    if constexpr (OP != RowOp::kScaleToRadius) {
      label = active ? a.labels[row] : 0;
      live = active && label >= 0 && label < a.num_classes;
      if (active && !live && member == 0) report_bad_label(a.status, label);
    }
    const X* x = a.x + (active ? row : 0) * a.x_row_stride;
    const W* w = a.weight + (live ? label : 0) * a.dim;
    W sums[2] = {W(0), W(0)};  // w_y . x, x . x
    const int64_t chunks = live ? num_chunks : 0;
#pragma unroll 4
    for (int64_t chunk = member; chunk < chunks; chunk += Team::size) {
      const int valid = chunk_valid(chunk, K, a.dim);
      W xs[K];
      load_chunk<K>(x + chunk * K, valid, a.vector_x, xs);
      if constexpr (OP != RowOp::kScaleToRadius) {
        W ws[K];
        load_chunk<K>(w + chunk * K, valid, a.vector_weight, ws);
#pragma unroll
        for (int e = 0; e < K; ++e) sums[0] += ws[e] * xs[e];
      }
#pragma unroll
      for (int e = 0; e < K; ++e) sums[1] += xs[e] * xs[e];
    }
    team.sum(sums);
    if (!active) continue;
    const W r = static_cast<W>(a.radius);
    if constexpr (OP == RowOp::kLogProb) {
      if (member == 0) a.out[row] = live ? row_log_density(a.log_normalizer[label], r, sums[0], sums[1]) : W(NAN);
    } else if constexpr (OP == RowOp::kScaleToRadius) {
      const W scale = row_scale_to_radius(r, sums[1]);
      W* out = a.out + row * a.dim;
      for (int64_t chunk = member; chunk < num_chunks; chunk += Team::size) {
        const int valid = chunk_valid(chunk, K, a.dim);
        W xs[K];
        load_chunk<K>(x + chunk * K, valid, a.vector_x, xs);
#pragma unroll
        for (int e = 0; e < K; ++e) xs[e] *= scale;
        store_chunk<K>(out + chunk * K, valid, a.vector_out, xs);
      }
    } else {
      const RowLogDensityGrad<W> g =
          live ? row_log_density_grad(a.grad[row], r, sums[0], sums[1]) : RowLogDensityGrad<W>{W(NAN), W(NAN)};
      X* grad_x = a.grad_x != nullptr ? a.grad_x + row * a.dim : nullptr;
      W* grad_w = live && a.grad_weight != nullptr ? a.grad_weight + label * a.dim : nullptr;
      for (int64_t chunk = member; chunk < num_chunks; chunk += Team::size) {
        const int valid = chunk_valid(chunk, K, a.dim);
        W xs[K], ws[K];
        load_chunk<K>(x + chunk * K, live ? valid : 0, a.vector_x, xs);
        if (grad_x != nullptr) {
          load_chunk<K>(w + chunk * K, live ? valid : 0, a.vector_weight, ws);
#pragma unroll
          for (int e = 0; e < K; ++e) ws[e] = g.along * ws[e] - g.radial * xs[e];
          store_chunk<K>(grad_x + chunk * K, valid, a.vector_out, ws);
        }
        if (grad_w != nullptr) {
#pragma unroll
          for (int e = 0; e < K; ++e) {
            if (e < valid) atomicAdd(grad_w + chunk * K + e, g.along * xs[e]);
          }
        }
      }
    }
  }
}

// Teams of about num_chunks / 4 lanes: every lane keeps 4 chunks (64 bytes) of x in flight, and
// small rows share a warp (8 rows of D = 64 float at once), so that the latency chain of a row
// (label -> weight row -> reduction) is paid for many bytes at a time.
template <typename Launch>
cudaError_t launch_with_team(int64_t num_chunks, Launch&& launch) {
  if (num_chunks <= 16) return launch(std::integral_constant<int, 4>());
  if (num_chunks <= 32) return launch(std::integral_constant<int, 8>());
  if (num_chunks <= 64) return launch(std::integral_constant<int, 16>());
  return launch(std::integral_constant<int, 32>());
}

template <RowOp OP, typename X, typename W>
cudaError_t launch_rows_typed(const VmfRowParams& p, cudaStream_t stream) {
  constexpr int K = row_chunk_elements<X>();
  void* vector_target = OP == RowOp::kBackward ? p.grad_x : p.out;
  const int vector_target_bytes = OP == RowOp::kBackward ? static_cast<int>(sizeof(X)) : static_cast<int>(sizeof(W));
  const RowArgs<X, W> a = {
      static_cast<const X*>(p.x),
      p.x_row_stride,
      static_cast<const W*>(p.weight),
      static_cast<const W*>(p.log_normalizer),
      p.labels,
      static_cast<const W*>(p.grad),
      static_cast<W*>(p.out),
      static_cast<X*>(p.grad_x),
      static_cast<W*>(p.grad_weight),
      p.status,
      p.num_rows,
      p.num_classes,
      p.dim,
      p.radius,
      rows_vectorizable(p.x, p.x_row_stride, sizeof(X), vector_width<X, K>()),
      rows_vectorizable(p.weight, p.dim, sizeof(W), vector_width<W, K>()),
      vector_target != nullptr && rows_vectorizable(vector_target, p.dim, vector_target_bytes,
                                                     vector_target_bytes * K <= 16 ? K : 16 / vector_target_bytes)};
  cudaError_t error = cudaSuccess;
  const int multiprocessors = multiprocessor_count(&error);
  if (error != cudaSuccess) return error;
  return launch_with_team(ceil_div(p.dim, K), [&](auto team_size) {
    constexpr int TEAM = decltype(team_size)::value;
    const int64_t warps_wanted = ceil_div(p.num_rows, kWarp / TEAM);
    const int grid = grid_for(ceil_div(warps_wanted, kWarpsPerBlock), multiprocessors);
    row_kernel<OP, X, W, LaneTeam<TEAM>><<<grid, kThreads, 0, stream>>>(a);
    return cudaGetLastError();
  });
}

template <RowOp OP>
cudaError_t launch_rows(const VmfRowParams& p, cudaStream_t stream) {
  return dispatch_x_weight(p.x_dtype, p.weight_dtype, [&](auto x_tag, auto w_tag) {
    return launch_rows_typed<OP, decltype(x_tag), decltype(w_tag)>(p, stream);
  });
}

// ------------------------------------------------------------------------------------------------
// vmf_cosine_kappa_grad: one thread per element, grid-stride. Each element runs an adaptive
// quadrature (1 to 4 panels of 21 points on average), so threads of a warp diverge a little.

constexpr int kQuadratureThreads = 128;  // the panel stack lives in local memory: fewer threads per block

__global__ void __launch_bounds__(kQuadratureThreads) cosine_kappa_grad_kernel(const CosineKappaGradParams p) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kQuadratureThreads;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kQuadratureThreads + threadIdx.x; k < p.numel; k += stride) {
    p.out[k] = penact::vmf_cosine_kappa_grad(p.dim, p.kappa[k], p.t[k], p.sine[k]);
  }
}

int quadrature_grid(int64_t numel, int multiprocessors) {
  const int64_t blocks = ceil_div(numel, kQuadratureThreads);
  const int64_t cap = static_cast<int64_t>(multiprocessors) * 16;
  return static_cast<int>(blocks < 1 ? 1 : blocks < cap ? blocks : cap);
}

// ------------------------------------------------------------------------------------------------
// The backward of vmf_rsample (core/vmf_rows.h).

template <typename T>
struct RsampleArgs {
  const T* __restrict__ grad;
  int64_t grad_row_stride;
  const T* __restrict__ sample;
  const T* __restrict__ mean_direction;
  const T* __restrict__ kappa;
  const int64_t* __restrict__ labels;
  T* grad_mean_direction;
  double* grad_kappa;
  double* row_scalars;  // [5, N]: t, g . mu, s^2, g . o, kappa term
  CheckStatus* status;
  int64_t num_rows, num_classes, dim;
  double radius;
  bool vector_grad, vector_sample, vector_mean;
};

// Chunk `chunk` of a row's draw x, incoming gradient g and mean direction mu.
template <int K, typename T>
__device__ __forceinline__ void load_row_chunks(const RsampleArgs<T>& a, const T* x, const T* g, const T* mu,
                                                int64_t chunk, int valid, T (&xs)[K], T (&gs)[K], T (&ms)[K]) {
  load_chunk<K>(x + chunk * K, valid, a.vector_sample, xs);
  load_chunk<K>(g + chunk * K, valid, a.vector_grad, gs);
  load_chunk<K>(mu + chunk * K, valid, a.vector_mean, ms);
}

// A team per row: (x . mu, g . mu), then (o . o, g . o) when the kappa gradient is wanted; the row's
// scalars go to row_scalars, and its term of grad_mu is added with atomics.
template <typename T, typename Team>
__global__ void __launch_bounds__(kThreads) rsample_backward_rows_kernel(const RsampleArgs<T> a) {
  constexpr int K = row_chunk_elements<T>();
  constexpr int kRowsAtOnce = kWarp / Team::size;
  const Team team;
  const int lane = threadIdx.x % kWarp, member = lane % Team::size;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  const int64_t num_chunks = ceil_div(a.dim, K);
  const int64_t n = a.num_rows;
  for (int64_t first = (static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp) * kRowsAtOnce;
       first < n; first += warps * kRowsAtOnce) {
    const int64_t row = first + lane / Team::size;
    const bool active = row < n;
    const int64_t label = active ? a.labels[row] : 0;
    const bool live = active && label >= 0 && label < a.num_classes;
    if (active && !live && member == 0) report_bad_label(a.status, label);
    const T* x = a.sample + (live ? row : 0) * a.dim;
    const T* g = a.grad + (live ? row : 0) * a.grad_row_stride;
    const T* mu = a.mean_direction + (live ? label : 0) * a.dim;
    const int64_t chunks = live ? num_chunks : 0;
    T dots[2] = {T(0), T(0)};  // x . mu, g . mu
    for (int64_t chunk = member; chunk < chunks; chunk += Team::size) {
      const int valid = chunk_valid(chunk, K, a.dim);
      T xs[K], gs[K], ms[K];
      load_row_chunks(a, x, g, mu, chunk, valid, xs, gs, ms);
#pragma unroll
      for (int e = 0; e < K; ++e) {
        dots[0] += xs[e] * ms[e];
        dots[1] += gs[e] * ms[e];
      }
    }
    team.sum(dots);
    const T radius = static_cast<T>(a.radius);
    const T t = dots[0] / radius, rt = radius * t, along = dots[1];
    T across[2] = {T(0), T(0)};  // o . o, g . o
    if (a.grad_kappa != nullptr) {
      for (int64_t chunk = member; chunk < chunks; chunk += Team::size) {
        const int valid = chunk_valid(chunk, K, a.dim);
        T xs[K], gs[K], ms[K];
        load_row_chunks(a, x, g, mu, chunk, valid, xs, gs, ms);
#pragma unroll
        for (int e = 0; e < K; ++e) {
          const T o = xs[e] - rt * ms[e];
          across[0] += o * o;
          across[1] += gs[e] * o;
        }
      }
      team.sum(across);
    }
    if (!live) continue;
    if (member == 0) {
      a.row_scalars[row] = static_cast<double>(t);
      a.row_scalars[n + row] = static_cast<double>(along);
      a.row_scalars[2 * n + row] = static_cast<double>(across[0] / (radius * radius));
      a.row_scalars[3 * n + row] = static_cast<double>(across[1]);
    }
    if (a.grad_mean_direction == nullptr) continue;
    T* out = a.grad_mean_direction + label * a.dim;
    for (int64_t chunk = member; chunk < num_chunks; chunk += Team::size) {
      const int valid = chunk_valid(chunk, K, a.dim);
      T xs[K], gs[K], ms[K];
      load_row_chunks(a, x, g, mu, chunk, valid, xs, gs, ms);
#pragma unroll
      for (int e = 0; e < K; ++e) {
        if (e < valid) atomicAdd(out + chunk * K + e, rt * gs[e] - along * (xs[e] - rt * ms[e]));
      }
    }
  }
}

// One thread per row: dt/dkappa, the row's kappa term, added into grad_kappa[y] in float64.
template <typename T>
__global__ void __launch_bounds__(kQuadratureThreads) rsample_backward_kappa_kernel(const RsampleArgs<T> a) {
  const int64_t n = a.num_rows;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kQuadratureThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kQuadratureThreads + threadIdx.x; i < n; i += stride) {
    const int64_t y = a.labels[i];
    if (!(y >= 0 && y < a.num_classes)) continue;  // reported by the rows kernel
    const double t = a.row_scalars[i], along = a.row_scalars[n + i], sine2 = a.row_scalars[2 * n + i];
    const double dt_dkappa = penact::vmf_cosine_kappa_grad(static_cast<double>(a.dim), static_cast<double>(a.kappa[y]), t,
                                                   sqrt(sine2));
    const double term = rsample_kappa_row(dt_dkappa, a.radius, t, sine2, along, a.row_scalars[3 * n + i]);
    a.row_scalars[4 * n + i] = term;
    atomicAdd(a.grad_kappa + y, term);
  }
}

template <typename T>
cudaError_t rsample_backward_typed(const RsampleBackwardParams& p, cudaStream_t stream) {
  constexpr int K = row_chunk_elements<T>();
  constexpr int V = vector_width<T, K>();
  const RsampleArgs<T> a = {static_cast<const T*>(p.grad),
                            p.grad_row_stride,
                            static_cast<const T*>(p.sample),
                            static_cast<const T*>(p.mean_direction),
                            static_cast<const T*>(p.kappa),
                            p.labels,
                            static_cast<T*>(p.grad_mean_direction),
                            p.grad_kappa,
                            p.row_scalars,
                            p.status,
                            p.num_rows,
                            p.num_classes,
                            p.dim,
                            p.radius,
                            rows_vectorizable(p.grad, p.grad_row_stride, sizeof(T), V),
                            rows_vectorizable(p.sample, p.dim, sizeof(T), V),
                            rows_vectorizable(p.mean_direction, p.dim, sizeof(T), V)};
  cudaError_t error = cudaSuccess;
  const int multiprocessors = multiprocessor_count(&error);
  if (error != cudaSuccess) return error;
  error = launch_with_team(ceil_div(p.dim, K), [&](auto team_size) {
    constexpr int TEAM = decltype(team_size)::value;
    const int64_t warps_wanted = ceil_div(p.num_rows, kWarp / TEAM);
    const int grid = grid_for(ceil_div(warps_wanted, kWarpsPerBlock), multiprocessors);
    rsample_backward_rows_kernel<T, LaneTeam<TEAM>><<<grid, kThreads, 0, stream>>>(a);
    return cudaGetLastError();
  });
  if (error != cudaSuccess || p.grad_kappa == nullptr) return error;
  rsample_backward_kappa_kernel<T><<<quadrature_grid(p.num_rows, multiprocessors), kQuadratureThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t vmf_sample(const VmfSampleParams& params, cudaStream_t stream) {
  if (params.num_rows == 0) return cudaSuccess;
  return dispatch_x_weight(params.out_dtype, params.compute, [&](auto out_tag, auto compute_tag) {
    return sample_typed<decltype(compute_tag), decltype(out_tag)>(params, stream);
  });
}

cudaError_t vmf_log_prob(const VmfRowParams& params, cudaStream_t stream) {
  if (params.num_rows == 0) return cudaSuccess;
  return launch_rows<RowOp::kLogProb>(params, stream);
}

cudaError_t vmf_log_prob_backward(const VmfRowParams& params, cudaStream_t stream) {
  if (params.num_rows == 0) return cudaSuccess;
  return launch_rows<RowOp::kBackward>(params, stream);
}

cudaError_t vmf_scale_rows_to_radius(const VmfRowParams& params, cudaStream_t stream) {
  if (params.num_rows == 0) return cudaSuccess;
  return launch_rows<RowOp::kScaleToRadius>(params, stream);
}

cudaError_t vmf_cosine_kappa_grad(const CosineKappaGradParams& params, cudaStream_t stream) {
  if (params.numel == 0) return cudaSuccess;
  cudaError_t error = cudaSuccess;
  const int multiprocessors = multiprocessor_count(&error);
  if (error != cudaSuccess) return error;
  cosine_kappa_grad_kernel<<<quadrature_grid(params.numel, multiprocessors), kQuadratureThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

cudaError_t vmf_rsample_backward(const RsampleBackwardParams& params, cudaStream_t stream) {
  if (params.num_rows == 0) return cudaSuccess;
  return dispatch_compute(params.dtype, [&](auto tag) { return rsample_backward_typed<decltype(tag)>(params, stream); });
}

}  // namespace cuda
}  // namespace penact
