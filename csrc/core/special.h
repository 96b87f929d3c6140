// Modified Bessel functions of the first kind for the von Mises-Fisher family, in double:
//   log I_v(x),  the ratio A(v, x) = I_{v+1}(x) / I_v(x),  log C_D(kappa).
// Accurate to ~1e-14 relative for v in [0, 1e5], x in [0, 1e7] (docs/model.md, section 6) and finite there.
//
// Three regions, chosen so that no method is used where it loses accuracy:
//   series     y = x^2/4 <= max(v + 1, 64): I_v(x) = (x/2)^v / Gamma(v+1) * 0F1(; v+1; y), a sum of
//              positive terms (at most ~45 of them), evaluated as log1p(sum - 1) for small x.
//   Olver      v >= kOlverMinOrder: Olver's uniform asymptotic expansion (DLMF 10.41.3-4), uniform
//              in x, so it covers x << v where scaled Bessel routines underflow.
//   recurrence v < kOlverMinOrder, beyond the series: Olver at order v + n >= kOlverMinOrder, then
//              the ratios I_{nu}/I_{nu-1} downwards by 1/r_{nu-1} = 2 nu / x + r_nu, which is stable
//              because I_v is the minimal solution of the three-term recurrence.
#pragma once

#include "common.h"
#include "olver_coefficients.h"

namespace penact {

// With 13 correction terms the first omitted term of Olver's series is below 1e-17 relative here.
constexpr double kOlverMinOrder = 25.0;

struct BesselValues {
  double log_iv;  // log I_v(x)
  double ratio;   // A(v, x) = I_{v+1}(x) / I_v(x)
};

// 0F1(; b; y) - 1 = sum_{k>=1} y^k / (k! (b)_k): positive terms, so no cancellation.
PENACT_HD double hyp0f1_minus_one(double b, double y) {
  double term = 1.0, tail = 0.0;
  for (int k = 1; k < 500; ++k) {
    term *= y / (k * (b + k - 1));
    tail += term;
    if (term <= tail * 1e-17) break;
  }
  return tail;
}

PENACT_HD bool in_series_region(double v, double y) { return y <= fmax(v + 1.0, 64.0); }

PENACT_HD BesselValues bessel_series(double v, double x) {
  const double y = 0.25 * x * x;
  const double tail_v = hyp0f1_minus_one(v + 1.0, y);
  const double tail_v1 = hyp0f1_minus_one(v + 2.0, y);
  BesselValues out;
  out.log_iv = (v == 0.0 ? 0.0 : v * log(0.5 * x)) - lgamma(v + 1.0) + log1p(tail_v);
  out.ratio = 0.5 * x / (v + 1.0) * ((1.0 + tail_v1) / (1.0 + tail_v));
  return out;
}

// Olver's expansion at order nu >= kOlverMinOrder - 1, with z = x / nu, sq = sqrt(1 + z^2), p = 1/sq:
//   log I_nu(nu z) = nu eta - log(2 pi nu sq) / 2 + log U,   eta = sq + log(z / (1 + sq))
//   A(nu, x) = z (1 / (1 + sq) + p W / U)   (the form of I'_nu/I_nu - nu/x without cancellation)
// Returns log U - log(2 pi nu sq)/2 in `log_iv_minus_nu_eta` so that callers can combine nu*eta
// with other large terms analytically (log C_D does).
struct OlverParts {
  double nu_eta;
  double log_iv_minus_nu_eta;
  double ratio;
  double sq;
};

PENACT_HD OlverParts olver_parts(double nu, double x) {
  const double z = x / nu;
  const double sq = hypot(1.0, z);
  const double p = 1.0 / sq;
  double U, W;
  olver_sums(p, 1.0 / nu, &U, &W);
  OlverParts out;
  out.sq = sq;
  out.nu_eta = nu * (sq + log(z / (1.0 + sq)));
  out.log_iv_minus_nu_eta = log(U) - 0.5 * (kLog2Pi + log(nu * sq));
  out.ratio = z * (1.0 / (1.0 + sq) + p * W / U);
  return out;
}

PENACT_HD BesselValues bessel_by_recurrence(double v, double x) {
  const double steps = ceil(kOlverMinOrder - v);
  const double nu_top = v + steps;
  const OlverParts top = olver_parts(nu_top, x);
  // r holds I_{nu+1}/I_nu; product accumulates I_{v+steps}/I_v. Every ratio exceeds
  // x / (x + 2 nu) > 1/4 here (x > 16, nu < 26), so the product of <= 26 of them cannot underflow.
  double r = top.ratio;
  double product = 1.0;
  for (double nu = nu_top; nu > v + 0.5; nu -= 1.0) {
    r = 1.0 / (2.0 * nu / x + r);
    product *= r;
  }
  BesselValues out;
  out.log_iv = top.nu_eta + top.log_iv_minus_nu_eta - log(product);
  out.ratio = r;
  return out;
}

// log I_v(x) and A(v, x) for v >= 0, x >= 0. A negative (or NaN) order gives NaN: the recurrence
// below would take about |v| steps, an endless loop for large |v| (and a hung GPU kernel).
PENACT_HD BesselValues bessel_iv(double v, double x) {
  if (x == 0.0) return {v == 0.0 ? 0.0 : -INFINITY, 0.0};
  if (isinf(x)) return {INFINITY, 1.0};
  if (isnan(x) || !(v >= 0.0)) return {NAN, NAN};
  if (in_series_region(v, 0.25 * x * x)) return bessel_series(v, x);
  if (v >= kOlverMinOrder) {
    const OlverParts parts = olver_parts(v, x);
    return {parts.nu_eta + parts.log_iv_minus_nu_eta, parts.ratio};
  }
  return bessel_by_recurrence(v, x);
}

PENACT_HD double log_bessel_iv(double v, double x) { return bessel_iv(v, x).log_iv; }
PENACT_HD double bessel_iv_ratio(double v, double x) { return bessel_iv(v, x).ratio; }

// log C_D(kappa) = (D/2 - 1) log kappa - (D/2) log(2 pi) - log I_{D/2-1}(kappa), the log of the
// vMF normalizer w.r.t. the uniform surface measure of the unit sphere (docs/model.md, section 2). The
// large terms v log kappa and log I_v cancel analytically in each region instead of numerically.
PENACT_HD double vmf_log_normalizer(double dim, double kappa) {
  const double v = 0.5 * dim - 1.0;
  const double log_two_pi_pow = (v + 1.0) * kLog2Pi;
  if (isnan(kappa)) return NAN;
  if (isinf(kappa)) return INFINITY;
  if (dim == 3.0 && kappa > 0.0) {
    return log(kappa) - kLog2Pi - kappa - log(-expm1(-2.0 * kappa));
  }
  const double y = 0.25 * kappa * kappa;
  if (in_series_region(v, y)) {
    // v log kappa - log I_v(kappa) = v log 2 + lgamma(v + 1) - log 0F1(; v+1; y); exact at kappa = 0.
    return v * kLog2 + lgamma(v + 1.0) - log1p(hyp0f1_minus_one(v + 1.0, y)) - log_two_pi_pow;
  }
  if (v >= kOlverMinOrder) {
    // v log kappa - nu eta = v (log v + log(1 + sq) - sq), with z = kappa / v.
    const OlverParts parts = olver_parts(v, kappa);
    return v * (log(v) + log1p(parts.sq) - parts.sq) - parts.log_iv_minus_nu_eta - log_two_pi_pow;
  }
  return v * log(kappa) - bessel_by_recurrence(v, kappa).log_iv - log_two_pi_pow;
}

}  // namespace penact
