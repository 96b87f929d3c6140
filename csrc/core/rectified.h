// The rectified family of penultimate activations (docs/model.md, section 3), one coordinate at a time.
//
// With a scale s > 0, a zero mass m >= 0 and a class weight w, a coordinate has the base measure
// nu(da) = m delta_0(da) + 1[a > 0] exp(-a^2 / (2 s^2)) da and the density exp(w a) / z w.r.t. nu:
//     z(w; s, m) = m + s sqrt(2 pi) exp(t^2 / 2) Phi(t) = m + s R(alpha),   t = s w,  alpha = -t,
// where R(alpha) = Phibar(alpha) / phi(alpha) is the Mills ratio of the standard normal. A draw is
// 0 with probability m / z and otherwise s e, where e = Z - alpha is the excess of Z ~ N(0, 1)
// conditioned on Z > alpha (so s e ~ Normal(s^2 w, s^2) truncated to (0, inf)).
//
// One uniform u per coordinate decides and draws (the inverse of the mixture's CDF): a = 0 when
// V = u / P(a > 0) >= 1; otherwise V is uniform on (0, 1), independent of the decision, and
// Z = Phibar^{-1}(V Phibar(alpha)). Where V would be too coarse (P(a > 0) below 2^-7 in float, 2^-10
// in double: V's resolution would exceed 2^-24 / 2^-43) or alpha is far out (alpha > kInverseLimit),
// the value comes from the coordinate's own stream instead: a 53-bit inverse, or Robert's sampler.
//
// Stream layout of rectified_sample (docs/randomness.md: row i of a call draws only from the Philox
// counters whose row half is offset + i, keyed by the seed). Coordinates come in spans that read
// kSpanBlocks = 32 consecutive blocks (SIMD lanes on the CPU):
//   float   span of 128: coordinate j reads word floor((j mod 128) / 32) of block
//           32 floor(j / 128) + (j mod 32); u = (floor(word / 2) + 1/2) 2^-31 (finer near 0).
//   double  span of 64: coordinate j reads words 2h, 2h + 1, h = floor((j mod 64) / 32), of block
//           32 floor(j / 64) + (j mod 32), as a 53-bit uniform (uniform_open_double).
//   own stream: the RowStream of blocks (j + 1) 2^32, (j + 1) 2^32 + 1, ... (never below 2^32, so
//           it overlaps neither the spans nor another coordinate's stream).
// So a coordinate's draw depends only on (seed, offset + i, j) and its parameters: not on D, the
// batch, the thread layout or the device (up to the rounding of log, sqrt and erfc).
#pragma once


#include "normals.h"
#include "philox.h"

namespace penact {

constexpr double kSqrtHalfPi = 1.25331413731550025120788264240552263;     // sqrt(pi / 2) = R(0)
constexpr double kInvSqrt2 = 0.707106781186547524400844362104849039;

// ---------------------------------------------------------------------------------------------
// The Mills ratio and the moments of the excess.

// From kTailFractionFrom on, Laplace's continued fraction R(alpha) = 1 / (alpha + T_1) with
// T_n = n / (alpha + T_{n+1}) gives R, and the moments of the excess are products of its tails,
// E[e^k] = T_1 T_2 ... T_k (the recurrence E[e^{k+1}] = k E[e^{k-1}] - alpha E[e^k], which
// integrating the normal density's derivative gives, solved from its minimal end): positive terms,
// no cancellation however far out alpha lies. Depth 16 + 640 / alpha^2 gives T_1 .. T_4 to 3e-16
// relative from alpha = 3 on (measured against 40-digit references; 87 terms at alpha = 3).
constexpr double kTailFractionFrom = 3.0;

struct ExcessMoments {
  double log_mills;  // log R(alpha)
  double m1, m2, m4;  // E[e], E[e^2], E[e^4] given Z > alpha
};

// T_1 .. T_4 of the continued fraction, for alpha >= kTailFractionFrom.
struct FractionTails {
  double t1, t2, t3, t4;
};

PENACT_HD FractionTails fraction_tails(double alpha) {
  const int depth = 16 + static_cast<int>(640.0 / (alpha * alpha));
  double tail = 0.0;
  for (int n = depth; n > 4; --n) tail = n / (alpha + tail);
  const double t4 = 4.0 / (alpha + tail);
  const double t3 = 3.0 / (alpha + t4);
  const double t2 = 2.0 / (alpha + t3);
  return {1.0 / (alpha + t2), t2, t3, t4};
}

// alpha < kTailFractionFrom: log R = alpha^2 / 2 + log(sqrt(pi/2) erfc(alpha / sqrt 2)), with erfc
// in (0.0027, 2] and alpha^2 / 2 formed exactly enough (huge only for very negative alpha, where R
// is huge too).
PENACT_HD double log_mills_by_erfc(double alpha) {
  return 0.5 * alpha * alpha + log(kSqrtHalfPi * erfc(kInvSqrt2 * alpha));
}

// log R(x) for any x.
PENACT_HD double log_mills_ratio(double x) {
  return x >= kTailFractionFrom ? -log(x + fraction_tails(x).t1) : log_mills_by_erfc(x);
}

PENACT_HD ExcessMoments excess_moments(double alpha) {
  if (alpha >= kTailFractionFrom) {
    const FractionTails t = fraction_tails(alpha);
    return {-log(alpha + t.t1), t.t1, t.t1 * t.t2, t.t1 * t.t2 * t.t3 * t.t4};
  }
  // The forward recurrence from R loses at most a factor ~20 here (at alpha = 3, E[e] = 1/R - alpha = 0.28).
  const double log_mills = log_mills_by_erfc(alpha);
  const double m1 = exp(-log_mills) - alpha;
  const double m2 = 1.0 - alpha * m1;
  const double m3 = 2.0 * m1 - alpha * m2;
  return {log_mills, m1, m2, 3.0 * m2 - alpha * m3};
}

// log(exp(a) + exp(b)), exact at -inf (a zero mass of 0) and +inf.
PENACT_HD double log_add_exp(double a, double b) {
  const double high = fmax(a, b), low = fmin(a, b);
  if (isinf(high)) return high;
  return high + log1p(exp(low - high));
}

// What one coordinate of one class contributes: log z, the log probabilities of a = 0 and a > 0,
// and the raw moments of a. Derivatives of log z follow: d/dw = E[a], d/ds = E[a^2] / s^3,
// d/dm = 1 / z (E[a^2] = E[a^2 1(a > 0)]: the atom at 0 adds nothing).
struct RectifiedCoordinate {
  double log_z, log_zero, log_nonzero;
  double mean, second_moment, fourth_moment;
};

PENACT_HD RectifiedCoordinate rectified_coordinate(double w, double s, double m) {
  const ExcessMoments excess = excess_moments(-s * w);
  const double log_slab = log(s) + excess.log_mills;  // log of the continuous part's mass, s R
  RectifiedCoordinate out;
  out.log_z = log_add_exp(log(m), log_slab);
  out.log_zero = log(m) - out.log_z;
  out.log_nonzero = log_slab - out.log_z;
  const double nonzero = exp(out.log_nonzero);
  out.mean = nonzero * s * excess.m1;
  out.second_moment = nonzero * s * s * excess.m2;
  out.fourth_moment = nonzero * (s * s) * (s * s) * excess.m4;
  return out;
}

PENACT_HD double rectified_log_z(double w, double s, double m) {
  return log_add_exp(log(m), log(s) + excess_moments(-s * w).log_mills);
}

// The derivatives of a non-zero draw a of class weight w (scale s, zero mass m, log z = log z(w;
// s, m)) by implicit reparameterization of its coordinate's mixed CDF G = P0 + (1 - P0) F held
// fixed (penact/ops/rectified.py has the derivation): with t = s w, x = a / s - t and
// q = R(x) / z (<= 1 / s, so exp(log R - log z) never overflows),
//     da/dw = s^2 (1 - s q + t m q),   da/ds = a / s + t (1 - s q) + (t^2 + 1) m q,   da/dm = -s q,
// 1 - s q through expm1 (its digits where s q -> 1: m = 0 and t very negative). A draw at the atom
// does not move (the caller skips it).
struct DrawDerivatives {
  double weight, scale, zero_mass;
};

PENACT_HD DrawDerivatives rectified_draw_derivatives(double a, double w, double s, double m, double log_z) {
  const double t = s * w;
  const double log_mills = log_mills_ratio(a / s - t);
  const double q = exp(log_mills - log_z);
  const double one_minus_sq = -expm1(log(s) + log_mills - log_z);
  return {s * s * (one_minus_sq + t * m * q), a / s + t * one_minus_sq + (t * t + 1.0) * m * q, -s * q};
}

// The parameters' valid ranges (negated tests: NaN fails).
PENACT_HD bool valid_scale(double s) { return isfinite(s) && s > 0.0; }
PENACT_HD bool valid_zero_mass(double m) { return isfinite(m) && m >= 0.0; }

// ---------------------------------------------------------------------------------------------
// The densities: log p(a | y) = w_y . a + sum_j B_j(a_j) - log Z_y, per coordinate the base term
// B(a) = -a^2 / (2 s^2) for a > 0 and log m at a = 0 (half_precision = 1 / (2 s^2)). Both branches
// are formed before the select: a load inside one branch would stop vectorization.
template <typename W>
PENACT_HD W rectified_base_term(W a, W half_precision, W log_zero_mass) {
  const W slab = -a * a * half_precision;
  return a > W(0) ? slab : log_zero_mass;
}

// An activation outside the support: negative or NaN (a negated test).
template <typename W>
PENACT_HD bool outside_support(W a) {
  return !(a >= W(0));
}

// ---------------------------------------------------------------------------------------------
// The draw.

// Truncation points alpha up to here are drawn by the inverse CDF, beyond by Robert's sampler.
// The inverse forms the excess as Z - alpha, whose relative error grows like alpha^2 times that
// of the quantile: at most ~4x here (float: a few ulp), while the rejection sampler forms e directly.
constexpr double kInverseLimit = 2.0;

PENACT_HD float positive_log(float x) { return log_positive(x); }  // polynomial: vectorizes
PENACT_HD double positive_log(double x) { return log(x); }

// Wichura (1988), Algorithm AS 241: Phi^{-1}(p) = x A(x^2) / B(x^2) near the centre (x = p - 1/2,
// |x| <= 0.425), C(r) / D(r) and E(r) / F(r) in the tails (r = sqrt(-log min(p, 1 - p)), split at 5).
// Each returns numerator and denominator so that one division serves whichever region applies.
template <typename T>
struct Ratio {
  T num, den;
};

struct Ppnd7 {  // float: about 1e-7 relative
  PENACT_HD static Ratio<float> central(float x, float r2) {
    return {x * (((5.9109374720e+01f * r2 + 1.5929113202e+02f) * r2 + 5.0434271938e+01f) * r2 + 3.3871327179e+00f),
            ((6.7187563600e+01f * r2 + 7.8757757664e+01f) * r2 + 1.7895169469e+01f) * r2 + 1.0f};
  }
  PENACT_HD static Ratio<float> near_tail(float r) {
    return {((1.7023821103e-01f * r + 1.3067284816e+00f) * r + 2.7568153900e+00f) * r + 1.4234372777e+00f,
            (1.2021132975e-01f * r + 7.3700164250e-01f) * r + 1.0f};
  }
  PENACT_HD static Ratio<float> far_tail(float r) {
    return {((1.7337203997e-02f * r + 4.2868294337e-01f) * r + 3.0812263860e+00f) * r + 6.6579051150e+00f,
            (1.2258202635e-02f * r + 2.4197894225e-01f) * r + 1.0f};
  }
};

struct Ppnd16 {  // double: about 1e-16 relative
  PENACT_HD static Ratio<double> central(double x, double r2) {
    return {x * (((((((2.5090809287301226727e+3 * r2 + 3.3430575583588128105e+4) * r2 + 6.7265770927008700853e+4) * r2 +
                     4.5921953931549871457e+4) * r2 + 1.3731693765509461125e+4) * r2 + 1.9715909503065514427e+3) * r2 +
                  1.3314166789178437745e+2) * r2 + 3.3871328727963666080e+0),
            ((((((5.2264952788528545610e+3 * r2 + 2.8729085735721942674e+4) * r2 + 3.9307895800092710610e+4) * r2 +
                2.1213794301586595867e+4) * r2 + 5.3941960214247511077e+3) * r2 + 6.8718700749205790830e+2) * r2 +
             4.2313330701600911252e+1) * r2 + 1.0};
  }
  PENACT_HD static Ratio<double> near_tail(double r) {
    return {((((((7.74545014278341407640e-4 * r + 2.27238449892691845833e-2) * r + 2.41780725177450611770e-1) * r +
                1.27045825245236838258e+0) * r + 3.64784832476320460504e+0) * r + 5.76949722146069140550e+0) * r +
             4.63033784615654529590e+0) * r + 1.42343711074968357734e+0,
            ((((((1.05075007164441684324e-9 * r + 5.47593808499534494600e-4) * r + 1.51986665636164571966e-2) * r +
                1.48103976427480074590e-1) * r + 6.89767334985100004550e-1) * r + 1.67638483018380384940e+0) * r +
             2.05319162663775882187e+0) * r + 1.0};
  }
  PENACT_HD static Ratio<double> far_tail(double r) {
    return {((((((2.01033439929228813265e-7 * r + 2.71155556874348757815e-5) * r + 1.24266094738807843860e-3) * r +
                2.65321895265761230930e-2) * r + 2.96560571828504891230e-1) * r + 1.78482653991729133580e+0) * r +
             5.46378491116411436990e+0) * r + 6.65790464350110377720e+0,
            ((((((2.04426310338993978564e-15 * r + 1.42151175831644588870e-7) * r + 1.84631831751005468180e-5) * r +
                7.86869131145613259100e-4) * r + 1.48753612908506148525e-2) * r + 1.36929880922735805310e-1) * r +
             5.99832206555887937690e-1) * r + 1.0};
  }
};

template <typename T>
struct QuantileCoefficients;
template <>
struct QuantileCoefficients<float> {
  using type = Ppnd7;
};
template <>
struct QuantileCoefficients<double> {
  using type = Ppnd16;
};

// Z with P(N(0, 1) > Z) = q, given q and qc = 1 - q both to full relative precision (whichever is
// small decides the tail, so neither loses digits). Branch-free. q, qc must be normal positive.
template <typename T>
PENACT_HD T normal_upper_quantile(T q, T qc) {
  using Coefficients = typename QuantileCoefficients<T>::type;
  const T x = T(0.5) * (qc - q);  // Phi^{-1}(qc) centred: qc - 1/2
  const T tail_mass = q < qc ? q : qc;
  const T r = square_root(-positive_log(tail_mass));
  const Ratio<T> central = Coefficients::central(x, T(0.180625) - x * x);
  const Ratio<T> near = Coefficients::near_tail(r - T(1.6));
  const Ratio<T> far = Coefficients::far_tail(r - T(5));
  const bool in_centre = (x < T(0) ? -x : x) <= T(0.425);
  const bool in_near_tail = r <= T(5);
  const T tail_num = in_near_tail ? near.num : far.num;
  const T tail_den = in_near_tail ? near.den : far.den;
  const T num = in_centre ? central.num : (q < qc ? tail_num : -tail_num);
  const T den = in_centre ? central.den : tail_den;
  return num / den;
}

// Per class and coordinate, what the one-uniform draw needs: inv_nonzero = 1 / P(a > 0) (inf when
// it is 0), shift = t = s w, upper = Phibar(alpha), lower = Phi(alpha) (both: 1 - either loses the
// other's digits). Coordinates drawn from their own stream (own_stream) get neutral values past the
// decision, for which the draw stays positive when it decides a > 0 (the mark that their value is due).
template <typename T>
struct RectifiedDrawParams {
  T inv_nonzero, shift, upper, lower;
  bool own_stream;
  double alpha;
};

template <typename T>
struct RectifiedStream;

constexpr int kSpanBlocks = 32;

template <>
struct RectifiedStream<float> {
  static constexpr int kSpan = 4 * kSpanBlocks;
  static constexpr double kMinInverseNonzero = 0x1p-7;
  // (floor(word / 2) + 1/2) 2^-31, exact below 2^-7, in (0, 1): the top values, which float would
  // round up to 1, are held just below it (a 3e-8 share of the mass moved by at most 2^-25).
  PENACT_HD static float uniform(uint32_t word) {
    const float u = (static_cast<float>(static_cast<int32_t>(word >> 1)) + 0.5f) * 4.656612873077392578125e-10f;
    return u < 1.0f ? u : 0.999999940395355224609375f;
  }
  PENACT_HD static float uniform(const Philox4& bits, int slot) { return uniform(bits.v[slot]); }
  // The uniforms of a whole span from words[k][l] = word k of its block l.
  PENACT_HD static void span_uniforms(const uint32_t words[4][kSpanBlocks], float* u) {
    for (int k = 0; k < 4; ++k) {
      for (int l = 0; l < kSpanBlocks; ++l) u[k * kSpanBlocks + l] = uniform(words[k][l]);
    }
  }
};

template <>
struct RectifiedStream<double> {
  static constexpr int kSpan = 2 * kSpanBlocks;
  static constexpr double kMinInverseNonzero = 0x1p-10;
  PENACT_HD static double uniform(const Philox4& bits, int slot) {
    return uniform_open_double(bits.v[2 * slot], bits.v[2 * slot + 1]);
  }
  PENACT_HD static void span_uniforms(const uint32_t words[4][kSpanBlocks], double* u) {
    for (int k = 0; k < 2; ++k) {
      for (int l = 0; l < kSpanBlocks; ++l) {
        u[k * kSpanBlocks + l] = uniform_open_double(words[2 * k][l], words[2 * k + 1][l]);
      }
    }
  }
};

// The block and the slot (word, or word pair) of coordinate j.
template <typename T>
PENACT_HD uint64_t rectified_block(int64_t j) {
  constexpr int64_t span = RectifiedStream<T>::kSpan;
  return static_cast<uint64_t>(kSpanBlocks * (j / span) + j % kSpanBlocks);
}

template <typename T>
PENACT_HD int rectified_slot(int64_t j) {
  return static_cast<int>((j % RectifiedStream<T>::kSpan) / kSpanBlocks);
}

template <typename T>
PENACT_HD RectifiedDrawParams<T> rectified_draw_params(double w, double s, double m) {
  const double alpha = -s * w;
  const double nonzero = exp(rectified_coordinate(w, s, m).log_nonzero);
  RectifiedDrawParams<T> p;
  p.inv_nonzero = static_cast<T>(1.0 / nonzero);
  p.alpha = alpha;
  p.own_stream = alpha > kInverseLimit || nonzero < RectifiedStream<T>::kMinInverseNonzero;
  p.shift = p.own_stream ? T(0) : static_cast<T>(-alpha);
  p.upper = p.own_stream ? T(0.5) : static_cast<T>(0.5 * erfc(kInvSqrt2 * alpha));
  p.lower = p.own_stream ? T(0.5) : static_cast<T>(0.5 * erfc(-kInvSqrt2 * alpha));
  return p;
}

// One coordinate from its uniform u: with V = u / P(a > 0), 0 if V >= 1, else s (t + Z) with
// Z = Phibar^{-1}(V Phibar(alpha)), i.e. Z ~ N(0, 1) given Z > alpha. 1 - V is exact (Sterbenz)
// wherever it is small. Rounding can put the result at or below 0 when Z lands within an ulp of
// alpha; it is kept at the smallest positive normal value, so that a drawn non-zero never reads as
// the atom at 0. Lanes that decide 0 may compute garbage (V > 1): the select discards it.
// Branch-free.
template <typename T>
PENACT_HD T rectified_draw(T u, T inv_nonzero, T shift, T upper, T lower, T scale) {
  const T v = u * inv_nonzero;
  const T q = v * upper;
  const T qc = (T(1) - v) + v * lower;
  const T a = scale * (shift + normal_upper_quantile(q, qc));
  const T floor = smallest_normal<T>();
  const T positive = a > floor ? a : floor;
  return v < T(1) ? positive : T(0);
}

// Robert (1995): e = Z - alpha for Z ~ N(0, 1) given Z > alpha, by rejection from
// Exp(lambda) with the optimal rate lambda = (alpha + sqrt(alpha^2 + 4)) / 2; a proposal is kept
// with probability exp(-(e - (lambda - alpha))^2 / 2). Acceptance is 0.93 at alpha = 2 and tends
// to 1. The excess is drawn directly, so s e keeps its relative precision however far out alpha is.
PENACT_HD double robert_excess(RowStream& stream, double alpha) {
  const double root = sqrt(alpha * alpha + 4.0);
  const double rate = 0.5 * (alpha + root);
  const double mode = 2.0 / (alpha + root);  // lambda - alpha, without cancellation
  for (;;) {
    const double e = -log(stream.uniform()) / rate;
    const double d = e - mode;
    if (log(stream.uniform()) <= -0.5 * d * d) return e;
  }
}

// The own stream of coordinate j (see the layout above).
PENACT_HD RowStream coordinate_stream(uint64_t seed, uint64_t row, int64_t coordinate) {
  RowStream stream(seed, row);
  stream.block = (static_cast<uint64_t>(coordinate) + 1) << 32;
  return stream;
}

// The excess e of a coordinate drawn from its own stream: Robert's sampler past kInverseLimit,
// else the inverse CDF in double from a 53-bit uniform (1 - v is exact).
PENACT_HD double own_stream_excess(RowStream& stream, double alpha) {
  if (alpha > kInverseLimit) return robert_excess(stream, alpha);
  const double v = stream.uniform();
  const double upper = 0.5 * erfc(kInvSqrt2 * alpha), lower = 0.5 * erfc(-kInvSqrt2 * alpha);
  return normal_upper_quantile(v * upper, (1.0 - v) + v * lower) - alpha;
}

}  // namespace penact
