// CPU kernels of the special functions (interface: special.h), elementwise over at::parallel_for.
#include <ATen/Parallel.h>

#include "../core/special.h"
#include "../special.h"

namespace penact {
namespace cpu {

void special_function(const SpecialParams& p) {
  at::parallel_for(0, p.numel, 256, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const double order = p.order != nullptr ? p.order[k] : p.order_scalar;
      switch (p.function) {
        case SpecialFunction::kLogBesselIv: p.out[k] = log_bessel_iv(order, p.x[k]); break;
        case SpecialFunction::kBesselIvRatio: p.out[k] = bessel_iv_ratio(order, p.x[k]); break;
        case SpecialFunction::kVmfLogNormalizer: p.out[k] = vmf_log_normalizer(order, p.x[k]); break;
      }
    }
  });
}

}  // namespace cpu
}  // namespace penact
