// Element types of the CPU kernels that read activations: x in the weight's dtype, or float16 /
// bfloat16 activations with float32 weights (accumulated in float32).
#pragma once

#include <ATen/ATen.h>

namespace penact {

// Calls f(X{}, W{}) with the element types of x and weight (the pairs the argument checks allow).
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
