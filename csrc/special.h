// The kernel interface of the special functions (special.cpp: schemas and glue): elementwise
// log I_v(x), A(v, x) = I_{v+1}(x) / I_v(x) and the vMF log-normalizer log C_D(kappa), in float64
// (the glue converts from and to the caller's dtype). The math is core/special.h.
#pragma once

#include <cstdint>

#include "launch.h"

namespace penact {

enum class SpecialFunction { kLogBesselIv, kBesselIvRatio, kVmfLogNormalizer };

// out[k] = f(order[k], x[k]); order == nullptr means order_scalar for every k (the dimension D of
// the log-normalizer, whose x is kappa).
struct SpecialParams {
  SpecialFunction function;
  const double* order;
  double order_scalar;
  const double* x;
  double* out;
  int64_t numel;
};

namespace cpu {
void special_function(const SpecialParams& params);
}  // namespace cpu

}  // namespace penact

#if defined(PENACT_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>

namespace penact {
namespace cuda {
cudaError_t special_function(const SpecialParams& params, cudaStream_t stream);
}  // namespace cuda
}  // namespace penact
#endif
