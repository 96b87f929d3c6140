// The component t = mu . u of a vMF draw on S^{D-1}, whose density is proportional to
// exp(kappa t) (1 - t^2)^((D-3)/2) on [-1, 1]: Wood (1994) in the cancellation-free form of
// docs/model.md (section 4), the exact inverse CDF for D = 3, and the uniform law for kappa = 0 (which
// Wood's step covers with b = 1 and certain acceptance).
#pragma once

#include "philox.h"

namespace penact {

// t together with sqrt(1 - t^2), computed from the proposal without forming 1 - t from t (in
// float32 that loses every digit at kappa = 1e7).
struct Cosine {
  double t, sine;
};

PENACT_HD Cosine wood_draw(RowStream& stream, double dim, double kappa) {
  const double m = dim - 1.0;
  // Wood's b = (-2 kappa + sqrt(4 kappa^2 + m^2)) / m, rationalized: no cancellation for large kappa.
  const double b = m / (2.0 * kappa + sqrt(4.0 * kappa * kappa + m * m));
  for (;;) {
    const BetaPair beta = symmetric_beta_draw(stream, 0.5 * m);
    const double z = beta.z, zc = beta.one_minus_z;
    const double d = zc + b * z;  // 1 - (1 - b) z, in [b, 1]
    // log((1 + b) / (2 d)) = log1p((1 - b)(z - zc) / (2 d)), since 1 + b - 2 d = (1 - b)(z - zc).
    const double log_accept = kappa * 2.0 * b * (zc - z) / ((1.0 + b) * d) +
                              m * log1p((1.0 - b) * (z - zc) / (2.0 * d));
    if (log_accept >= log(stream.uniform())) {
      return {(zc - b * z) / d, 2.0 * sqrt(b * z * zc) / d};
    }
  }
}

// D = 3: F^{-1}(U) gives 1 - t = -log1p((1 - U) expm1(-2 kappa)) / kappa, stable for all kappa > 0.
PENACT_HD Cosine sphere3_draw(RowStream& stream, double kappa) {
  const double u = stream.uniform();
  const double one_minus_t = -log1p((1.0 - u) * expm1(-2.0 * kappa)) / kappa;
  const double t = 1.0 - one_minus_t;
  return {t, sqrt(fmax(one_minus_t * (2.0 - one_minus_t), 0.0))};
}

PENACT_HD Cosine vmf_cosine_draw(RowStream& stream, double dim, double kappa) {
  if (dim == 3.0 && kappa > 0.0) return sphere3_draw(stream, kappa);
  return wood_draw(stream, dim, kappa);
}

}  // namespace penact
