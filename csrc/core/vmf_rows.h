// The per-row formulas of the sphere family's kernels, written once for every device: the CPU
// and CUDA kernels differ in how they lay rows out over threads and reduce the sums below, not in
// what they compute from them.
#pragma once

#include "common.h"

namespace penact {

// A concentration the sampler accepts: finite and >= 0 (a negated test, so that NaN fails too).
// Any other gives a NaN row, never an endless rejection loop.
PENACT_HD bool valid_concentration(double kappa) { return kappa >= 0.0 && !isinf(kappa); }

// Whether a mean direction with squared norm `sumsq` is a unit vector to `tolerance` in its norm:
// | ||mu|| - 1 | ~ |sumsq - 1| / 2 near 1. A negated test: NaN fails.
PENACT_HD bool is_unit_vector(double sumsq, double tolerance) { return fabs(sumsq - 1.0) <= 2.0 * tolerance; }

// ---------------------------------------------------------------------------------------------
// Sampling a row: u = t mu + sqrt(1 - t^2) v, with v the normalized part of a Gaussian vector g
// orthogonal to mu (no rotation matrix, no Householder vector, which is singular when mu lies on
// an axis). Two projections ("twice is enough"): the first removes along = mu . g and leaves
// g1 = g - along mu, which keeps a component c = mu . g1 of relative size eps ||g|| / ||g1|| (large
// when g is nearly parallel to mu, likely for small D: in float32 at D = 2 one projection left rows
// 2e-3 off the sphere); the second is folded into the output, with ||g1 - c mu||^2 = ||g1||^2 - c^2
// (mu . mu = 1):
//     out_k = radius (t mu_k + sine (g1_k - c mu_k) / ||g1 - c mu||) = along_mean mu_k + along_residual g1_k.
template <typename T>
struct RowScales {
  T along_mean, along_residual;
};

// residual_along = mu . g1 and residual_sumsq = g1 . g1, each summed in T.
template <typename T>
PENACT_HD RowScales<T> sample_row_scales(double radius, double t, double sine, double residual_along,
                                         double residual_sumsq) {
  const double orth_norm2 = residual_sumsq - residual_along * residual_along;
  // A zero orthogonal part has probability zero; guard the division all the same.
  const double orth = orth_norm2 > 0.0 ? radius * sine / sqrt(orth_norm2) : 0.0;
  return {static_cast<T>(radius * t - orth * residual_along), static_cast<T>(orth)};
}

// ---------------------------------------------------------------------------------------------
// The labelled log-density of a row from one pass over it (dot = w_y . x, sumsq = x . x):
//     log p(x | y) = log C_D(kappa_y) + r w_y . x / ||x||     (x evaluated at its direction).
template <typename W>
PENACT_HD W row_log_density(W log_normalizer, W radius, W dot, W sumsq) {
  return log_normalizer + radius * dot / square_root(sumsq);
}

// Its derivative, with n = ||x|| and g the incoming gradient of the row's value:
//     d/dx = along w_y - radial x,   d/dw_y = along x,   along = r g / n,   radial = along (w_y . x) / n^2.
template <typename W>
struct RowLogDensityGrad {
  W along, radial;
};

template <typename W>
PENACT_HD RowLogDensityGrad<W> row_log_density_grad(W grad, W radius, W dot, W sumsq) {
  const W inv_norm = W(1) / square_root(sumsq);
  const W along = radius * grad * inv_norm;
  return {along, along * dot * inv_norm * inv_norm};
}

// The row scale of the all-classes log-density: x_i -> r x_i / ||x_i|| before the product with W^T.
template <typename W>
PENACT_HD W row_scale_to_radius(W radius, W sumsq) {
  return radius / square_root(sumsq);
}

// ---------------------------------------------------------------------------------------------
// The backward of rsample (the method: penact/ops/vmf.py). A row of class y holds x = r u =
// r t mu + r s v, so with g the incoming gradient of x and o = x - r t mu = r s v:
//     t = x . mu / r,   s^2 = o . o / r^2,
//     grad_mu[y]    += r t g - (g . mu) o,
//     grad_kappa[y] += (dt/dkappa) (r g . mu - t (g . o) / s^2)   (dt/dkappa: core/vmf_grad.h).
// o is formed explicitly, not as ||x||^2 - r^2 t^2, which cancels where t is close to 1.
PENACT_HD double rsample_kappa_row(double dt_dkappa, double radius, double t, double sine2, double along,
                                   double across) {
  // s = 0 only at t = +-1 (probability zero), where dt/dkappa = 0 as well.
  const double safe_sine2 = sine2 > smallest_normal<double>() ? sine2 : smallest_normal<double>();
  return dt_dkappa * (radius * along - t * across / safe_sine2);
}

}  // namespace penact
