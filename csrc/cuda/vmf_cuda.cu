// CUDA kernels of the vMF operators and their launchers (interface: vmf_cuda.h). No torch header:
// the glue in vmf_cuda_ops.cpp checks, allocates and fills the parameter structs. All math comes
// from csrc/core, the code the CPU back-end runs, so that the same (seed, offset) gives the same
// samples on both devices (up to FMA contraction and the last bits of libm functions).
//
// Layout of the work (benchmarks/NOTES.md says what limits each kernel):
//   sample     a team of threads per row: TEAM lanes of one warp for D <= 1024 (float), the whole
//              block beyond. A warp first runs Wood's rejection loop (double precision) for a tile
//              of up to 32 rows, one row per lane, so that the scalar step is 32 rows wide instead
//              of idling 31 lanes; then the team of each row draws the row's normals (one Philox
//              block per 4 float / 2 double normals, the block -> element map of core/normals.h),
//              reduces mu . g and ||g - (mu . g) mu||^2 by shuffles, and writes the row with 16-byte
//              stores. The normals stay in registers; beyond 8192 (float) elements a row's normals
//              are regenerated in each pass instead (Philox is a pure function of its counter).
//   log_prob   a team per row reads x_i once (dot with w_y and the norm), 16-byte loads.
//   backward   the same read, then grad_x_i and atomic adds into grad_weight[y_i].
//   log_prob_all   the rows of x scaled to radius / ||x_i|| (here), then cuBLAS addmm (in the glue).
#include "vmf_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "../core/normals.h"
#include "../core/special.h"
#include "../core/wood.h"

namespace penact {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr unsigned kAllLanes = 0xffffffffu;
constexpr int kThreads = 256;  // the block size of every kernel
constexpr int kWarpsPerBlock = kThreads / kWarp;
constexpr int kMaxTileRows = kWarp;  // rows whose Wood step one warp draws at once, one per lane
constexpr int kBlocksPerSm = 8;      // 2048 resident threads per SM on sm_80 / sm_90

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ------------------------------------------------------------------------------------------------
// Element types: storage S (float16, bfloat16, float, double) to and from the arithmetic type A.

template <typename S>
struct Element {
  template <typename A>
  __device__ static A load(S value) { return static_cast<A>(value); }
  template <typename A>
  __device__ static S store(A value) { return static_cast<S>(value); }
};

template <>
struct Element<__half> {
  template <typename A>
  __device__ static A load(__half value) { return static_cast<A>(__half2float(value)); }
  template <typename A>
  __device__ static __half store(A value) { return __float2half_rn(static_cast<float>(value)); }
};

template <>
struct Element<__nv_bfloat16> {
  template <typename A>
  __device__ static A load(__nv_bfloat16 value) { return static_cast<A>(__bfloat162float(value)); }
  template <typename A>
  __device__ static __nv_bfloat16 store(A value) { return __float2bfloat16_rn(static_cast<float>(value)); }
};

// K consecutive elements of a row ("a chunk"), moved by vector accesses of up to 16 bytes when
// `vector` is set (the launcher sets it when every row starts on a 16-byte boundary) and the chunk
// is whole; element by element otherwise, as for the last, partial chunk of a row. Elements at
// and past `valid` are neither read nor written; loads give zero there.
template <typename S, int K>
__host__ __device__ constexpr int vector_width() { return K * sizeof(S) <= 16 ? K : static_cast<int>(16 / sizeof(S)); }

template <typename S, int V>
struct alignas(sizeof(S) * V) Pack {
  S v[V];
};

template <int K, typename A, typename S>
__device__ __forceinline__ void load_chunk(const S* __restrict__ p, int valid, bool vector, A (&out)[K]) {
  constexpr int V = vector_width<S, K>();
  if (vector && valid == K) {
#pragma unroll
    for (int q = 0; q < K; q += V) {
      const Pack<S, V> pack = *reinterpret_cast<const Pack<S, V>*>(p + q);
#pragma unroll
      for (int e = 0; e < V; ++e) out[q + e] = Element<S>::template load<A>(pack.v[e]);
    }
  } else {
#pragma unroll
    for (int e = 0; e < K; ++e) out[e] = e < valid ? Element<S>::template load<A>(p[e]) : A(0);
  }
}

template <int K, typename S, typename A>
__device__ __forceinline__ void store_chunk(S* __restrict__ p, int valid, bool vector, const A (&in)[K]) {
  constexpr int V = vector_width<S, K>();
  if (vector && valid == K) {
#pragma unroll
    for (int q = 0; q < K; q += V) {
      Pack<S, V> pack;
#pragma unroll
      for (int e = 0; e < V; ++e) pack.v[e] = Element<S>::store(in[q + e]);
      *reinterpret_cast<Pack<S, V>*>(p + q) = pack;
    }
  } else {
#pragma unroll
    for (int e = 0; e < K; ++e) {
      if (e < valid) p[e] = Element<S>::store(in[e]);
    }
  }
}

// Elements of chunk `chunk` (K per chunk) that lie inside a row of `dim` elements.
__device__ __forceinline__ int chunk_valid(int64_t chunk, int K, int64_t dim) {
  const int64_t left = dim - chunk * K;
  return left <= 0 ? 0 : left >= K ? K : static_cast<int>(left);
}

// Whether rows starting at base + i * row_stride (elements of `bytes` bytes) may use V-wide
// vector accesses: every row start aligned to the vector size.
bool rows_vectorizable(const void* base, int64_t row_stride, int bytes, int V) {
  const int64_t vector_bytes = static_cast<int64_t>(bytes) * V;
  return reinterpret_cast<uintptr_t>(base) % vector_bytes == 0 && (row_stride * bytes) % vector_bytes == 0;
}

// ------------------------------------------------------------------------------------------------
// Teams: the threads that share one row. Every member gets the same sum: the xor butterfly adds
// the same pairs on both partners of each exchange, so the totals are bitwise equal.

template <int TEAM>
struct LaneTeam {  // TEAM consecutive lanes of a warp; every lane of the warp must call sum()
  static_assert(TEAM <= kWarp && (TEAM & (TEAM - 1)) == 0, "a lane team is a power of two <= 32");
  static constexpr int size = TEAM;
  template <typename A>
  __device__ A sum(A value) const {
#pragma unroll
    for (int mask = TEAM / 2; mask > 0; mask /= 2) value += __shfl_xor_sync(kAllLanes, value, mask);
    return value;
  }
};

struct BlockTeam {  // all kThreads threads of the block; every thread must call sum()
  static constexpr int size = kThreads;
  double* scratch;  // [kWarpsPerBlock] in shared memory
  template <typename A>
  __device__ A sum(A value) const {
    value = LaneTeam<kWarp>().sum(value);
    if (threadIdx.x % kWarp == 0) scratch[threadIdx.x / kWarp] = static_cast<double>(value);
    __syncthreads();
    A total = A(0);
#pragma unroll
    for (int w = 0; w < kWarpsPerBlock; ++w) total += static_cast<A>(scratch[w]);
    __syncthreads();  // scratch is free again for the next sum
    return total;
  }
};

// Launch geometry: enough blocks to fill the device (grid-stride loops do the rest).
int multiprocessor_count(cudaError_t* error) {
  int device = 0, count = 0;
  *error = cudaGetDevice(&device);
  if (*error == cudaSuccess) *error = cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
  return count > 0 ? count : 1;
}

int grid_for(int64_t blocks_wanted, int multiprocessors) {
  const int64_t cap = static_cast<int64_t>(multiprocessors) * kBlocksPerSm * 4;
  return static_cast<int>(blocks_wanted < 1 ? 1 : blocks_wanted < cap ? blocks_wanted : cap);
}

// ------------------------------------------------------------------------------------------------
// vmf_sample

template <typename T, typename Out>
struct SampleArgs {
  const T* __restrict__ mean_direction;
  const T* __restrict__ kappa;
  const int64_t* __restrict__ labels;
  Out* __restrict__ out;
  int64_t num_rows, num_classes, dim;
  double radius;
  uint64_t seed, offset;
  bool vector_mean, vector_out;
};

// The mu-component of a row's draw, t, and sqrt(1 - t^2); label < 0 marks a row that comes out NaN.
struct RowCosine {
  double t, sine;
  int64_t label;
};

template <typename T, typename Out>
__device__ RowCosine draw_row_cosine(const SampleArgs<T, Out>& a, int64_t row) {
  const int64_t label = a.labels[row];
  // Negated in-range tests, so that a label the glue could not check (graph capture) and a NaN or
  // infinite concentration take the NaN-row branch instead of an out-of-bounds read or an
  // endless rejection loop.
  if (!(label >= 0 && label < a.num_classes)) return {NAN, NAN, -1};
  const double kappa = static_cast<double>(a.kappa[label]);
  if (!(kappa >= 0.0) || isinf(kappa)) return {NAN, NAN, -1};
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

// u = t mu + sqrt(1 - t^2) v, v the normalized part of the Gaussian vector orthogonal to mu: the
// formula and the rounding steps of sample_row in cpu/vmf_cpu.cpp.
template <typename T>
struct RowScales {
  T along_mean, along_orth;
};

template <typename T>
__device__ RowScales<T> row_scales(double radius, const RowCosine& c, T orth_norm2) {
  if (c.label < 0) return {T(NAN), T(NAN)};
  // A zero orthogonal part has probability zero; guard the division all the same.
  const T orth = orth_norm2 > T(0) ? static_cast<T>(radius * c.sine / sqrt(static_cast<double>(orth_norm2))) : T(0);
  return {static_cast<T>(radius * c.t), orth};
}

template <typename T, typename Out>
__device__ __forceinline__ void store_row_chunk(const SampleArgs<T, Out>& a, Out* out, int64_t block,
                                                const RowScales<T>& scales, const T (&mean_chunk)[NormalsPerBlock<T>::value],
                                                const T (&orth)[NormalsPerBlock<T>::value]) {
  constexpr int K = NormalsPerBlock<T>::value;
  T values[K];
#pragma unroll
  for (int e = 0; e < K; ++e) values[e] = scales.along_mean * mean_chunk[e] + scales.along_orth * orth[e];
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
  T along_partial = T(0);
#pragma unroll
  for (int s = 0; s < BPT; ++s) {
    row_chunk(a, mean, counter, member + static_cast<int64_t>(s) * Team::size, drawn, mean_chunk[s], gauss[s]);
#pragma unroll
    for (int e = 0; e < K; ++e) along_partial += mean_chunk[s][e] * gauss[s][e];
  }
  const T along = team.sum(along_partial);
  T orth_partial = T(0);
#pragma unroll
  for (int s = 0; s < BPT; ++s) {
#pragma unroll
    for (int e = 0; e < K; ++e) {
      gauss[s][e] -= along * mean_chunk[s][e];
      orth_partial += gauss[s][e] * gauss[s][e];
    }
  }
  const T orth_norm2 = team.sum(orth_partial);
  if (!active) return;
  const RowScales<T> scales = row_scales(a.radius, c, orth_norm2);
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
  T along_partial = T(0);
  for (int64_t block = member; block < num_blocks; block += BlockTeam::size) {
    row_chunk(a, mean, counter, block, drawn, mean_chunk, gauss);
#pragma unroll
    for (int e = 0; e < K; ++e) along_partial += mean_chunk[e] * gauss[e];
  }
  const T along = team.sum(along_partial);
  T orth_partial = T(0);
  for (int64_t block = member; block < num_blocks; block += BlockTeam::size) {
    row_chunk(a, mean, counter, block, drawn, mean_chunk, gauss);
#pragma unroll
    for (int e = 0; e < K; ++e) {
      const T v = gauss[e] - along * mean_chunk[e];
      orth_partial += v * v;
    }
  }
  const RowScales<T> scales = row_scales(a.radius, c, team.sum(orth_partial));
  Out* out = a.out + row * a.dim;
  for (int64_t block = member; block < ceil_div(a.dim, K); block += BlockTeam::size) {
    row_chunk(a, mean, counter, block, drawn, mean_chunk, gauss);
#pragma unroll
    for (int e = 0; e < K; ++e) gauss[e] -= along * mean_chunk[e];
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
  __shared__ double scratch[kWarpsPerBlock];
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
cudaError_t sample_typed(const SampleParams& p, cudaStream_t stream) {
  constexpr int K = NormalsPerBlock<T>::value;
  const SampleArgs<T, Out> a = {static_cast<const T*>(p.mean_direction),
                                static_cast<const T*>(p.kappa),
                                p.labels,
                                static_cast<Out*>(p.out),
                                p.num_rows,
                                p.num_classes,
                                p.dim,
                                p.radius,
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
    int64_t label = 0;
    if constexpr (OP != RowOp::kScaleToRadius) label = active ? a.labels[row] : -1;
    // Negated in-range test: a label the glue could not check (graph capture) gives a NaN row.
    const bool live = active && (OP == RowOp::kScaleToRadius || (label >= 0 && label < a.num_classes));
    const X* x = a.x + (active ? row : 0) * a.x_row_stride;
    const W* w = a.weight + (live ? label : 0) * a.dim;
    W dot = W(0), sumsq = W(0);
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
        for (int e = 0; e < K; ++e) dot += ws[e] * xs[e];
      }
#pragma unroll
      for (int e = 0; e < K; ++e) sumsq += xs[e] * xs[e];
    }
    if constexpr (OP != RowOp::kScaleToRadius) dot = team.sum(dot);
    sumsq = team.sum(sumsq);
    if (!active) continue;
    const W r = static_cast<W>(a.radius);
    if constexpr (OP == RowOp::kLogProb) {
      if (member == 0) a.out[row] = live ? a.log_normalizer[label] + r * dot / sqrt(sumsq) : W(NAN);
    } else if constexpr (OP == RowOp::kScaleToRadius) {
      const W scale = r / sqrt(sumsq);
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
      // With n = ||x_i||: d/dx_i = along w_y - radial x_i, d/dw_y = along x_i, where
      // along = r g_i / n and radial = along (w_y . x_i) / n^2 (as in the CPU kernel).
      const W inv_norm = W(1) / sqrt(sumsq);
      const W along = live ? r * a.grad[row] * inv_norm : W(NAN);
      const W radial = along * dot * inv_norm * inv_norm;
      X* grad_x = a.grad_x != nullptr ? a.grad_x + row * a.dim : nullptr;
      W* grad_w = live && a.grad_weight != nullptr ? a.grad_weight + label * a.dim : nullptr;
      for (int64_t chunk = member; chunk < num_chunks; chunk += Team::size) {
        const int valid = chunk_valid(chunk, K, a.dim);
        W xs[K], ws[K];
        load_chunk<K>(x + chunk * K, live ? valid : 0, a.vector_x, xs);
        if (grad_x != nullptr) {
          load_chunk<K>(w + chunk * K, live ? valid : 0, a.vector_weight, ws);
#pragma unroll
          for (int e = 0; e < K; ++e) ws[e] = along * ws[e] - radial * xs[e];
          store_chunk<K>(grad_x + chunk * K, valid, a.vector_out, ws);
        }
        if (grad_w != nullptr) {
#pragma unroll
          for (int e = 0; e < K; ++e) {
            if (e < valid) atomicAdd(grad_w + chunk * K + e, along * xs[e]);
          }
        }
      }
    }
  }
}

template <RowOp OP, typename X, typename W>
cudaError_t launch_rows_typed(const RowParams& p, cudaStream_t stream) {
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
  const int64_t num_chunks = ceil_div(p.dim, K);
  // Teams of about num_chunks / 4 lanes: every lane keeps 4 chunks (64 bytes) of x in flight, and
  // small rows share a warp (8 rows of D = 64 float at once), so that the latency chain of a row
  // (label -> weight row -> reduction) is paid for many bytes at a time.
  const auto launch = [&](auto team_size) {
    constexpr int TEAM = decltype(team_size)::value;
    const int64_t warps_wanted = ceil_div(p.num_rows, kWarp / TEAM);
    const int grid = grid_for(ceil_div(warps_wanted, kWarpsPerBlock), multiprocessors);
    row_kernel<OP, X, W, LaneTeam<TEAM>><<<grid, kThreads, 0, stream>>>(a);
    return cudaGetLastError();
  };
  if (num_chunks <= 16) return launch(std::integral_constant<int, 4>());
  if (num_chunks <= 32) return launch(std::integral_constant<int, 8>());
  if (num_chunks <= 64) return launch(std::integral_constant<int, 16>());
  return launch(std::integral_constant<int, 32>());
}

template <RowOp OP>
cudaError_t launch_rows(const RowParams& p, cudaStream_t stream) {
  if (p.num_rows == 0) return cudaSuccess;
  if (p.weight_dtype == Dtype::kFloat64 && p.x_dtype == Dtype::kFloat64) return launch_rows_typed<OP, double, double>(p, stream);
  if (p.weight_dtype == Dtype::kFloat32) {
    switch (p.x_dtype) {
      case Dtype::kFloat32: return launch_rows_typed<OP, float, float>(p, stream);
      case Dtype::kFloat16: return launch_rows_typed<OP, __half, float>(p, stream);
      case Dtype::kBFloat16: return launch_rows_typed<OP, __nv_bfloat16, float>(p, stream);
      case Dtype::kFloat64: break;
    }
  }
  return cudaErrorInvalidValue;
}

// ------------------------------------------------------------------------------------------------
// Elementwise special functions, in double (the glue converts to and from the caller's dtype).

template <SpecialFunction F>
__global__ void __launch_bounds__(kThreads) special_kernel(const SpecialParams p) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < p.numel; k += stride) {
    const double order = p.order != nullptr ? p.order[k] : p.order_scalar;
    const double x = p.x[k];
    if constexpr (F == SpecialFunction::kLogBesselIv) p.out[k] = log_bessel_iv(order, x);
    if constexpr (F == SpecialFunction::kBesselIvRatio) p.out[k] = bessel_iv_ratio(order, x);
    if constexpr (F == SpecialFunction::kVmfLogNormalizer) p.out[k] = vmf_log_normalizer(order, x);
  }
}

template <SpecialFunction F>
cudaError_t launch_special_typed(const SpecialParams& p, cudaStream_t stream) {
  cudaError_t error = cudaSuccess;
  const int multiprocessors = multiprocessor_count(&error);
  if (error != cudaSuccess) return error;
  special_kernel<F><<<grid_for(ceil_div(p.numel, kThreads), multiprocessors), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_vmf_sample(const SampleParams& params, cudaStream_t stream) {
  if (params.num_rows == 0) return cudaSuccess;
  if (params.compute == Dtype::kFloat64 && params.out_dtype == Dtype::kFloat64) {
    return sample_typed<double, double>(params, stream);
  }
  if (params.compute == Dtype::kFloat32) {
    switch (params.out_dtype) {
      case Dtype::kFloat32: return sample_typed<float, float>(params, stream);
      case Dtype::kFloat16: return sample_typed<float, __half>(params, stream);
      case Dtype::kBFloat16: return sample_typed<float, __nv_bfloat16>(params, stream);
      case Dtype::kFloat64: break;
    }
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_vmf_log_prob(const RowParams& params, cudaStream_t stream) {
  return launch_rows<RowOp::kLogProb>(params, stream);
}

cudaError_t launch_vmf_log_prob_backward(const RowParams& params, cudaStream_t stream) {
  return launch_rows<RowOp::kBackward>(params, stream);
}

cudaError_t launch_scale_rows_to_radius(const RowParams& params, cudaStream_t stream) {
  return launch_rows<RowOp::kScaleToRadius>(params, stream);
}

cudaError_t launch_special_function(const SpecialParams& params, cudaStream_t stream) {
  if (params.numel == 0) return cudaSuccess;
  switch (params.function) {
    case SpecialFunction::kLogBesselIv: return launch_special_typed<SpecialFunction::kLogBesselIv>(params, stream);
    case SpecialFunction::kBesselIvRatio: return launch_special_typed<SpecialFunction::kBesselIvRatio>(params, stream);
    case SpecialFunction::kVmfLogNormalizer:
      return launch_special_typed<SpecialFunction::kVmfLogNormalizer>(params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace penact
