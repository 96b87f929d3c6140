// What the CPU kernels share about dispatch: per instruction set (PENACT_CPU_DISPATCH), per element
// type (dispatch_x_weight, dispatch_compute) and the size of a task (row_grain).
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>

#include "../launch.h"

// One build runs fast on every x86-64 CPU: the compiler emits AVX-512, AVX2 and baseline copies of
// a hot row loop and the loader picks one for the CPU at hand; flatten inlines the callees into each
// copy so that they are compiled for its instruction set.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define PENACT_CPU_DISPATCH __attribute__((target_clones("avx512f", "avx2", "default"), flatten))
#else
#define PENACT_CPU_DISPATCH
#endif

namespace penact {
namespace cpu {

// Calls f(X{}, W{}) with the element types of the activations and of the weight: x in the weight's
// dtype, or float16/bfloat16 activations with float32 weights (the pairs the argument checks allow).
template <typename F>
void dispatch_x_weight(Dtype x, Dtype weight, F&& f) {
  if (weight == Dtype::kFloat64 && x == Dtype::kFloat64) return f(double{}, double{});
  TORCH_INTERNAL_ASSERT(weight == Dtype::kFloat32, "penact: unsupported dtypes of the activations and the weight");
  switch (x) {
    case Dtype::kFloat32: return f(float{}, float{});
    case Dtype::kFloat16: return f(c10::Half{}, float{});
    case Dtype::kBFloat16: return f(c10::BFloat16{}, float{});
    case Dtype::kFloat64: break;
  }
  TORCH_INTERNAL_ASSERT(false, "penact: unsupported dtypes of the activations and the weight");
}

// Calls f(T{}) with float or double.
template <typename F>
void dispatch_compute(Dtype dtype, F&& f) {
  if (dtype == Dtype::kFloat64) return f(double{});
  TORCH_INTERNAL_ASSERT(dtype == Dtype::kFloat32, "penact: unsupported compute dtype");
  return f(float{});
}

// Rows processed per task so that each task touches about 32K elements.
inline int64_t row_grain(int64_t row_length) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(row_length, 1)); }

// Runs rows(begin, end, status) over [0, n) in blocks of row_grain(row_length) rows that the
// threads take in turn from a shared counter; each thread records what its rows find in a status
// of its own, merged into *status at the end. Unlike the static split of at::parallel_for, a
// thread that the OS preempts (a shared machine) delays the call by one block, not by half of it;
// rows are independent, so results do not depend on who takes what.
template <typename Rows>
void parallel_rows(int64_t n, int64_t row_length, CheckStatus* status, const Rows& rows) {
  const int64_t block = row_grain(row_length);
  const int64_t blocks = (n + block - 1) / block;
  std::atomic<int64_t> next{0};
  std::mutex merge;
  at::parallel_for(0, std::min<int64_t>(blocks, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    CheckStatus found{};
    for (int64_t b = next++; b < blocks; b = next++) rows(b * block, std::min(n, (b + 1) * block), found);
    if (status != nullptr) {
      const std::lock_guard<std::mutex> lock(merge);
      merge_status(*status, found);
    }
  });
}

}  // namespace cpu
}  // namespace penact
