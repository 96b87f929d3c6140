// The kappa-derivative of a vMF draw's cosine t = mu . u by implicit reparameterization
// (Figurnov, Mohamed and Mnih 2018; docs/model.md, section 4), in double, host and device.
//
// t has density p(t) proportional to exp(kappa t) (1 - t^2)^alpha on [-1, 1], alpha = (D - 3) / 2,
// and CDF F(t; kappa). Holding F fixed while kappa moves gives
//   dt/dkappa = -(dF/dkappa)(t) / p(t),   dF/dkappa(t) = int_{-1}^{t} (s - A) p(s) ds,  A = E[t] = A_D(kappa),
// and, because int_{-1}^{1} (s - A) p(s) ds = 0, the same value as a right tail:
//   dt/dkappa = int_t^1 (s - A) p(s)/p(t) ds = int_{-1}^t (A - s) p(s)/p(t) ds  (>= 0).
// We integrate the tail on which s - A keeps one sign (right when t >= A, left otherwise), so the
// integrand never changes sign and nothing cancels. With h the distance from t into that tail,
// H the distance from t to the near end of [-1, 1] and H' to the far end,
//   p(s)/p(t) = exp(phi(h)),   phi(h) = sigma kappa h + alpha [log(1 - h/H) + log(1 + h/H')],
//   J = int_0^H (c + h) exp(phi(h)) dh,   c = |t - A|,   sigma = +1 (right) or -1 (left).
// The normalizer of p cancels and the integrand is bounded (for alpha >= 0 the density is
// log-concave and p(s)/p(t) <= e on the chosen tail), so nothing overflows or underflows for any
// kappa in [0, 1e7] and D in [2, 65536].
//
// Every quantity is carried as a distance to an end of [-1, 1]: 1 - t, 1 + t, 1 - A and 1 - s are
// never formed by subtracting numbers close to 1 (at kappa = 1e7, 1 - t ~ 1e-7 and would keep 9
// digits out of 16).
//
// Quadrature: the substitution h = H delta (2 - delta), i.e. 1 - h/H = (1 - delta)^2, turns the
// endpoint factor (1 - h/H)^alpha dh into (1 - delta)^(2 alpha + 1) d delta = (1 - delta)^(D - 2),
// a polynomial, so the integrand is smooth (D = 2's integrable singularity at t = +-1 disappears).
// The range is cut where phi has fallen kDrop below its maximum (found from the mode, tangent
// bounds and Newton steps on the concave phi; the cut is never short of the true point), and the
// rest is global adaptive Gauss-Kronrod (10-21) on delta, starting from two halves and bisecting
// the panel with the largest error until the summed |K21 - G10| is below kRelTol of the integral.
// For draws from D = 2 to 65536 and kappa = 1e-7 to 1e7 that takes 2 to 3.9 panel evaluations on
// average (42 to 82 integrand values, one log and one exp each), and the result is within 8e-14 of
// 40-digit quadrature.
#pragma once

#include "special.h"

namespace penact {

// 1 - A(v, x) without cancellation where A is close to 1 (x >> v).
//   series region: A <= I_1(16)/I_0(16) < 0.97 there, so 1 - A loses under 2 bits;
//   Olver (DLMF 10.41): with A = z (1/(1 + sq) + p W/U) and sq - z = 1/(sq + z),
//     1 - A = (1 + 1/(sq + z)) / (1 + sq) - z p W / U,  both terms >= 0 (W < 0);
//   recurrence: from 1/r_{nu-1} = 2 nu/x + r_nu, q = 1 - r obeys q_{nu-1} = (2 nu/x - q_nu) / (2 nu/x + 1 - q_nu).
PENACT_HD double olver_ratio_complement(double nu, double x) {
  const double z = x / nu;
  const double sq = hypot(1.0, z);
  const double p = 1.0 / sq;
  double U, W;
  olver_sums(p, 1.0 / nu, &U, &W);
  return (1.0 + 1.0 / (sq + z)) / (1.0 + sq) - z * p * W / U;
}

PENACT_HD double bessel_ratio_complement(double v, double x) {
  if (isnan(x) || isnan(v)) return NAN;
  if (x == 0.0) return 1.0;
  if (isinf(x)) return 0.0;
  if (in_series_region(v, 0.25 * x * x)) return 1.0 - bessel_series(v, x).ratio;
  if (v >= kOlverMinOrder) return olver_ratio_complement(v, x);
  const double nu_top = v + ceil(kOlverMinOrder - v);
  double q = olver_ratio_complement(nu_top, x);
  for (double nu = nu_top; nu > v + 0.5; nu -= 1.0) {
    const double step = 2.0 * nu / x;
    q = (step - q) / (step + 1.0 - q);
  }
  return q;
}

// 1 - A_D(kappa) = E[1 - t].
PENACT_HD double vmf_mean_resultant_complement(double dim, double kappa) {
  return bessel_ratio_complement(0.5 * dim - 1.0, kappa);
}

// e^-40 ~ 4e-18: beyond this drop from its peak the integrand adds nothing a double can hold.
constexpr double kDrop = 40.0;
// Tolerance on the summed |K21 - G10|, which measures the Gauss rule's error: the Kronrod values
// are far better: this tolerance gave 5e-14 worst relative error against 40-digit references.
constexpr double kRelTol = 1e-8;
constexpr int kMaxPanels = 48;

// One tail of the implicit-gradient integral (see the top of this file).
struct CosineTail {
  double sigma_kappa;  // +kappa on the right tail, -kappa on the left
  double alpha;        // (D - 3) / 2
  double near, far;    // H and H'
  double offset;       // c = |t - A|
  double log_scale;    // subtracted from every exponent: the maximum of phi over [0, H]

  PENACT_HD double phi(double h) const {
    const double ends = alpha == 0.0 ? 0.0 : alpha * (log1p(-h / near) + log1p(h / far));
    return sigma_kappa * h + ends;
  }
  PENACT_HD double phi_slope(double h) const {
    return sigma_kappa - alpha / (near - h) + alpha / (far + h);
  }
  PENACT_HD double phi_curvature(double h) const {
    const double a = near - h, b = far + h;
    return -alpha / (a * a) - alpha / (b * b);
  }

  // The integrand in delta at delta and its complement 1 - delta (both given exactly):
  //   2 H (c + h) (1 - delta) exp(sigma kappa h - log_scale) Y^alpha,  Y = (1 + h/H') (1 - delta)^2,
  // Y^alpha = (1 + h/H')^alpha (1 - h/H)^alpha. One logarithm per node: near Y = 1 it is
  // log1p(Y - 1) with Y - 1 = h ((1 - delta)^2 / H' - 1/H) (since (1 - delta)^2 = 1 - h/H), which
  // keeps alpha log Y accurate for alpha up to 3e4; away from 1, log(Y) of the exact product.
  PENACT_HD double integrand(double delta, double one_minus_delta) const {
    const double h = near * delta * (1.0 + one_minus_delta);
    const double end2 = one_minus_delta * one_minus_delta;
    double log_y = 0.0;
    if (alpha != 0.0) {
      const double y_minus_one = h * (end2 / far - 1.0 / near);
      log_y = fabs(y_minus_one) < 0.5 ? log1p(y_minus_one) : log((1.0 + h / far) * end2);
    }
    return 2.0 * near * (offset + h) * one_minus_delta * exp(sigma_kappa * h + alpha * log_y - log_scale);
  }
};

// The h where phi has fallen kDrop below its maximum, or H; never short of the true point.
// For alpha > 0, phi is concave, so past the mode a tangent stays above phi: where a tangent
// reaches the target is an upper bound, and Newton steps from there (from the right) stay upper
// bounds while they approach the point. The start is the better of the tangent at the peak
// (exponential tails) and the point where the quadratic model at the peak reaches the target.
PENACT_HD double cosine_tail_range(CosineTail& tail) {
  const double H = tail.near, kappa = fabs(tail.sigma_kappa);
  if (tail.alpha <= 0.0) {
    // alpha = 0 (D = 3): phi is linear. alpha = -1/2 (D = 2): phi = sigma kappa h plus an
    // integrable end singularity that the substitution absorbs; its log1p(h/H') part only helps.
    tail.log_scale = tail.sigma_kappa > 0.0 ? tail.sigma_kappa * H : 0.0;
    return (tail.sigma_kappa < 0.0 && kDrop < kappa * H) ? kDrop / kappa : H;
  }
  // Mode of p: 1 - s* = (alpha + alpha^2/(q + kappa)) / (alpha + q), 1 + s* = (alpha + q + kappa)/(alpha + q),
  // q = sqrt(alpha^2 + kappa^2); the peak on the tail is h* = H - (mode to the tail's end), if positive.
  const double q = hypot(tail.alpha, kappa);
  const double mode_to_end = tail.sigma_kappa >= 0.0 ? (tail.alpha + tail.alpha * tail.alpha / (q + kappa)) / (tail.alpha + q)
                                                     : (tail.alpha + q + kappa) / (tail.alpha + q);
  const double peak = tail.phi_slope(0.0) > 0.0 ? fmin(fmax(H - mode_to_end, 0.0), H) : 0.0;
  tail.log_scale = tail.phi(peak);
  const double target = tail.log_scale - kDrop;
  double bound = H;
  const double peak_slope = tail.phi_slope(peak);
  if (peak_slope < 0.0) bound = fmin(bound, peak + kDrop / -peak_slope);
  const double quadratic = peak + sqrt(2.0 * kDrop / -tail.phi_curvature(peak));
  if (quadratic < bound) {
    const double value = tail.phi(quadratic), slope = tail.phi_slope(quadratic);
    bound = value <= target ? quadratic : fmin(bound, quadratic + (value - target) / -slope);
  }
  for (int step = 0; step < 2 && bound < H; ++step) {
    const double value = tail.phi(bound), slope = tail.phi_slope(bound);
    if (!(value < target && slope < 0.0)) break;
    bound -= (target - value) / -slope;
  }
  return fmin(bound, H);
}

// Gauss-Kronrod 10-21 on [-1, 1] (QUADPACK's qk21): abscissae x_k >= 0 (the last is 0), their
// Kronrod weights, and the 10-point Gauss weights of x_1, x_3, ..., x_9.
PENACT_HD double gk21_node(int k) {
  const double nodes[11] = {0.995657163025808080735527280689003, 0.973906528517171720077964012084452,
                            0.930157491355708226001207180059508, 0.865063366688984510732096688423493,
                            0.780817726586416897063717578345042, 0.679409568299024406234327365114874,
                            0.562757134668604683339000099272694, 0.433395394129247190799265943165784,
                            0.294392862701460198131126603103866, 0.148874338981631210884826001129720,
                            0.0};
  return nodes[k];
}
PENACT_HD double gk21_kronrod_weight(int k) {
  const double weights[11] = {0.011694638867371874278064396062192, 0.032558162307964727478818972459390,
                              0.054755896574351996031381300244580, 0.075039674810919952767043140916190,
                              0.093125454583697605535065465083366, 0.109387158802297641899210590325805,
                              0.123491976262065851077958109831074, 0.134709217311473325928054001771707,
                              0.142775938577060080797094273138717, 0.147739104901338491374841515972068,
                              0.149445554002916905664936468389821};
  return weights[k];
}
PENACT_HD double gk21_gauss_weight(int k) {  // for k = 1, 3, 5, 7, 9
  const double weights[5] = {0.066671344308688137593568809893332, 0.149451349150580593145776339657697,
                             0.219086362515982043995534934228163, 0.269266719309996355091226921569469,
                             0.295524224714752870173892994651338};
  return weights[k / 2];
}

// One panel [a, b] of delta, carried with 1 - b so that 1 - delta keeps its digits near 1.
struct Panel {
  double a, b, one_minus_b, value, error;
};

PENACT_HD void integrate_panel(const CosineTail& tail, Panel& panel) {
  const double half = 0.5 * (panel.b - panel.a);
  double kronrod = 0.0, gauss = 0.0;
  for (int k = 0; k < 11; ++k) {
    const double x = gk21_node(k);
    double f = tail.integrand(panel.a + half * (1.0 - x), panel.one_minus_b + half * (1.0 + x));
    if (k < 10) f += tail.integrand(panel.a + half * (1.0 + x), panel.one_minus_b + half * (1.0 - x));
    kronrod += gk21_kronrod_weight(k) * f;
    if (k % 2 == 1) gauss += gk21_gauss_weight(k) * f;
  }
  panel.value = half * kronrod;
  panel.error = fabs(half * (kronrod - gauss));
}

PENACT_HD double integrate_cosine_tail(CosineTail& tail) {
  const double H = tail.near;
  const double h_end = cosine_tail_range(tail);
  // delta_end = 1 - sqrt(1 - h_end/H), with both it and its complement free of cancellation.
  const double one_minus_end = sqrt(fmax(H - h_end, 0.0) / H);
  const double ratio = h_end / H;
  const double delta_end = ratio / (1.0 + one_minus_end);
  // Start from two halves: a single panel over the whole range nearly always fails the test and
  // is bisected, so its 21 integrand values were mostly thrown away (draws at D = 64, kappa = 50
  // to 500: 4.8 panel evaluations per call from one panel, 3.8 from two halves).
  const double middle = 0.5 * delta_end;
  Panel panels[kMaxPanels];
  panels[0] = {0.0, middle, one_minus_end + middle, 0.0, 0.0};
  panels[1] = {middle, delta_end, one_minus_end, 0.0, 0.0};
  integrate_panel(tail, panels[0]);
  integrate_panel(tail, panels[1]);
  int count = 2;
  for (;;) {
    double value = 0.0, error = 0.0;
    int worst = 0;
    for (int i = 0; i < count; ++i) {
      value += panels[i].value;
      error += panels[i].error;
      if (panels[i].error > panels[worst].error) worst = i;
    }
    if (error <= kRelTol * value || count + 1 > kMaxPanels) return value * exp(tail.log_scale);
    const Panel whole = panels[worst];
    const double middle = 0.5 * (whole.a + whole.b);
    const double one_minus_middle = whole.one_minus_b + 0.5 * (whole.b - whole.a);
    panels[worst] = {whole.a, middle, one_minus_middle, 0.0, 0.0};
    panels[count] = {middle, whole.b, whole.one_minus_b, 0.0, 0.0};
    integrate_panel(tail, panels[worst]);
    integrate_panel(tail, panels[count]);
    ++count;
  }
}

// dt/dkappa for a draw with cosine t and sine sqrt(1 - t^2) (both from the sample: the smaller of
// 1 - t and 1 + t is recovered as sine^2 / (1 + |t|), which keeps its digits where t is near +-1).
// NaN for kappa < 0, kappa = inf or NaN inputs; 0 at t = +-1.
PENACT_HD double vmf_cosine_kappa_grad(double dim, double kappa, double t, double sine) {
  if (!(kappa >= 0.0) || isinf(kappa) || isnan(t) || isnan(sine)) return NAN;
  t = fmin(fmax(t, -1.0), 1.0);
  const double sine2 = sine * sine;
  double one_minus_t, one_plus_t;
  if (t >= 0.0) {
    one_plus_t = 1.0 + t;
    one_minus_t = fmin(sine2 / one_plus_t, 1.0);
  } else {
    one_minus_t = 1.0 - t;
    one_plus_t = fmin(sine2 / one_minus_t, 1.0);
  }
  const double one_minus_mean = vmf_mean_resultant_complement(dim, kappa);  // 1 - A
  CosineTail tail;
  tail.alpha = 0.5 * (dim - 3.0);
  if (one_minus_t <= one_minus_mean) {  // t >= A: the right tail [t, 1]
    tail.sigma_kappa = kappa;
    tail.near = one_minus_t;
    tail.far = one_plus_t;
    tail.offset = one_minus_mean - one_minus_t;  // t - A
  } else {  // the left tail [-1, t]
    tail.sigma_kappa = -kappa;
    tail.near = one_plus_t;
    tail.far = one_minus_t;
    tail.offset = one_minus_t - one_minus_mean;  // A - t
  }
  tail.log_scale = 0.0;
  if (!(tail.near > 0.0)) return 0.0;
  return integrate_cosine_tail(tail);
}

}  // namespace penact
