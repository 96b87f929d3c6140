// What the CPU kernels share about dispatch: per instruction set (PENACT_CPU_DISPATCH) and per
// element type of the activations (dispatch_x_weight).
#pragma once

#include <ATen/ATen.h>

// One build runs fast on every x86-64 CPU: the compiler emits AVX-512, AVX2 and baseline copies of
// a hot row loop and the loader picks one for the CPU at hand; flatten inlines the callees into each
// copy so that they are compiled for its instruction set.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define PENACT_CPU_DISPATCH __attribute__((target_clones("avx512f", "avx2", "default"), flatten))
#else
#define PENACT_CPU_DISPATCH
#endif

namespace penact {

// Calls f(X{}, W{}) with the element types of x and weight (the pairs the argument checks allow):
// x in the weight's dtype, or float16 / bfloat16 activations with float32 weights.
template <typename F>
void dispatch_x_weight(const at::Tensor& x, const at::Tensor& weight, F&& f) {
  if (weight.scalar_type() == at::kDouble) return f(double{}, double{});
  switch (x.scalar_type()) {
    case at::kFloat: return f(float{}, float{});
    case at::kHalf: return f(at::Half{}, float{});
    case at::kBFloat16: return f(at::BFloat16{}, float{});
    default: TORCH_CHECK(false, "penact: unsupported dtype of the activations: ", x.scalar_type());
  }
}

}  // namespace penact
