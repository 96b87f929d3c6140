// What the CUDA kernels of every family share: launch geometry, element types, vector loads and
// stores of row chunks, thread teams with their reductions, dtype dispatch and the check status's
// atomics. No torch header (the glue in csrc/*.cpp fills the parameter structs).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "../launch.h"

namespace penact {
namespace cuda {

constexpr int kWarp = 32;
constexpr unsigned kAllLanes = 0xffffffffu;
constexpr int kThreads = 256;  // the block size of every kernel
constexpr int kWarpsPerBlock = kThreads / kWarp;
constexpr int kBlocksPerSm = 8;  // 2048 resident threads per SM on sm_80 / sm_90

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Launch geometry: enough blocks to fill the device (grid-stride loops do the rest).
inline int multiprocessor_count(cudaError_t* error) {
  int device = 0, count = 0;
  *error = cudaGetDevice(&device);
  if (*error == cudaSuccess) *error = cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
  return count > 0 ? count : 1;
}

inline int grid_for(int64_t blocks_wanted, int multiprocessors) {
  const int64_t cap = static_cast<int64_t>(multiprocessors) * kBlocksPerSm * 4;
  return static_cast<int>(blocks_wanted < 1 ? 1 : blocks_wanted < cap ? blocks_wanted : cap);
}

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

// Calls f(X{}, W{}) with the element types of the activations and of the weight: x in the weight's
// dtype, or float16/bfloat16 activations with float32 weights (the pairs the argument checks allow).
template <typename F>
cudaError_t dispatch_x_weight(Dtype x, Dtype weight, F&& f) {
  if (weight == Dtype::kFloat64 && x == Dtype::kFloat64) return f(double{}, double{});
  if (weight == Dtype::kFloat32) {
    switch (x) {
      case Dtype::kFloat32: return f(float{}, float{});
      case Dtype::kFloat16: return f(__half{}, float{});
      case Dtype::kBFloat16: return f(__nv_bfloat16{}, float{});
      case Dtype::kFloat64: break;
    }
  }
  return cudaErrorInvalidValue;
}

// Calls f(T{}) with float or double.
template <typename F>
cudaError_t dispatch_compute(Dtype dtype, F&& f) {
  if (dtype == Dtype::kFloat32) return f(float{});
  if (dtype == Dtype::kFloat64) return f(double{});
  return cudaErrorInvalidValue;
}

// ------------------------------------------------------------------------------------------------
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
inline bool rows_vectorizable(const void* base, int64_t row_stride, int bytes, int V) {
  const int64_t vector_bytes = static_cast<int64_t>(bytes) * V;
  return reinterpret_cast<uintptr_t>(base) % vector_bytes == 0 && (row_stride * bytes) % vector_bytes == 0;
}

// ------------------------------------------------------------------------------------------------
// Teams: the threads that share one row. Every member gets the same sums: the xor butterfly adds
// the same pairs on both partners of each exchange, so the totals are bitwise equal. sum() reduces
// N values at once (one butterfly, N shuffles per step).

template <int TEAM>
struct LaneTeam {  // TEAM consecutive lanes of a warp; every lane of the warp must call sum()
  static_assert(TEAM <= kWarp && (TEAM & (TEAM - 1)) == 0, "a lane team is a power of two <= 32");
  static constexpr int size = TEAM;
  template <int N, typename A>
  __device__ void sum(A (&values)[N]) const {
#pragma unroll
    for (int mask = TEAM / 2; mask > 0; mask /= 2) {
#pragma unroll
      for (int k = 0; k < N; ++k) values[k] += __shfl_xor_sync(kAllLanes, values[k], mask);
    }
  }
};

constexpr int kMaxBlockSums = 4;  // values one BlockTeam::sum reduces at once

struct BlockTeam {  // all kThreads threads of the block; every thread must call sum()
  static constexpr int size = kThreads;
  double* scratch;  // [kMaxBlockSums][kWarpsPerBlock] in shared memory
  template <int N, typename A>
  __device__ void sum(A (&values)[N]) const {
    static_assert(N <= kMaxBlockSums, "scratch holds kMaxBlockSums sums");
    LaneTeam<kWarp>().sum(values);
    if (threadIdx.x % kWarp == 0) {
#pragma unroll
      for (int k = 0; k < N; ++k) scratch[k * kWarpsPerBlock + threadIdx.x / kWarp] = static_cast<double>(values[k]);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < N; ++k) {
      A total = A(0);
#pragma unroll
      for (int w = 0; w < kWarpsPerBlock; ++w) total += static_cast<A>(scratch[k * kWarpsPerBlock + w]);
      values[k] = total;
    }
    __syncthreads();  // scratch is free again for the next sum
  }
};

// ------------------------------------------------------------------------------------------------
// The check status (launch.h), filled with atomics: counts add, extremes are maxima of order keys.

__device__ __forceinline__ void report_bad_label(CheckStatus* status, int64_t label) {
  atomicAdd(reinterpret_cast<unsigned long long*>(&status->bad_labels), 1ull);
  const unsigned long long key = order_key(label);
  atomicMax(reinterpret_cast<unsigned long long*>(&status->lowest_label), ~key);
  atomicMax(reinterpret_cast<unsigned long long*>(&status->highest_label), key);
}

__device__ __forceinline__ void report_bad_value(CheckStatus* status, int check, int64_t index,
                                                 unsigned long long count = 1) {
  atomicAdd(reinterpret_cast<unsigned long long*>(&status->bad_values[check]), count);
  atomicMax(reinterpret_cast<unsigned long long*>(&status->first_bad[check]),
            static_cast<unsigned long long>(~order_key(index)));
}

// Whether 0 <= label < num_classes; reports it otherwise (the kernel then skips the row or writes NaN:
// an out-of-range label must never index a table).
__device__ __forceinline__ bool label_in_range(CheckStatus* status, int64_t label, int64_t num_classes) {
  if (label >= 0 && label < num_classes) return true;
  report_bad_label(status, label);
  return false;
}

}  // namespace cuda
}  // namespace penact
