// Standard normals for the direction of a vMF draw: Box-Muller on Philox blocks, one block per
// 4 float normals (2 double normals). Block j of row r gives normals 4j .. 4j+3 (2j .. 2j+1), so
// element k of a row's Gaussian vector is the same on every device and in every thread layout.
//
// The float path uses branch-free polynomial log and sincos (Cephes' minimax coefficients, about
// 1 ulp on the reduced ranges) instead of libm calls: the CPU compiler vectorizes them across
// blocks, and the GPU computes the same values, which keeps CPU and CUDA samples equal up to FMA
// contraction. The double path calls the C library.
#pragma once

#include <cstring>

#include "philox.h"

namespace penact {

PENACT_HD float bits_as_float(uint32_t bits) {
  float value;
  memcpy(&value, &bits, sizeof(value));
  return value;
}

PENACT_HD uint32_t float_as_bits(float value) {
  uint32_t bits;
  memcpy(&bits, &value, sizeof(bits));
  return bits;
}

// log(u) for normal positive float u (Cephes logf): u = 2^e m, m in [sqrt(1/2), sqrt(2)).
PENACT_HD float log_positive(float u) {
  const uint32_t bits = float_as_bits(u);
  // Exponent relative to a mantissa in [1/2, 1); shift into [sqrt(1/2), sqrt(2)) below.
  int exponent = static_cast<int>((bits >> 23) & 0xffu) - 126;
  float m = bits_as_float((bits & 0x007fffffu) | 0x3f000000u);
  const bool low = m < 0.707106781186547524f;
  exponent -= low ? 1 : 0;
  const float x = (low ? m + m : m) - 1.0f;
  const float e = static_cast<float>(exponent);
  const float z = x * x;
  float poly = 7.0376836292e-2f;
  poly = poly * x - 1.1514610310e-1f;
  poly = poly * x + 1.1676998740e-1f;
  poly = poly * x - 1.2420140846e-1f;
  poly = poly * x + 1.4249322787e-1f;
  poly = poly * x - 1.6668057665e-1f;
  poly = poly * x + 2.0000714765e-1f;
  poly = poly * x - 2.4999993993e-1f;
  poly = poly * x + 3.3333331174e-1f;
  float y = x * z * poly;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return x + y + 0.693359375f * e;
}

// sin and cos of 2 pi u for u in [0, 1): the turn is reduced exactly (u - j/4 is exact in float)
// to r in [-pi/4, pi/4], then rotated by the quadrant j.
PENACT_HD void sincos_turn(float u, float* sine, float* cosine) {
  const float quarter_turns = 4.0f * u;
  const int j = static_cast<int>(quarter_turns + 0.5f);  // rounds to nearest: quarter_turns >= 0
  const float r = (quarter_turns - static_cast<float>(j)) * 1.57079632679489662f;
  const float z = r * r;
  const float s = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * r + r;
  const float c = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
                  0.5f * z + 1.0f;
  const int quadrant = j & 3;
  const float sin_q = (quadrant == 0) ? s : (quadrant == 1) ? c : (quadrant == 2) ? -s : -c;
  const float cos_q = (quadrant == 0) ? c : (quadrant == 1) ? -s : (quadrant == 2) ? -c : s;
  *sine = sin_q;
  *cosine = cos_q;
}

PENACT_HD void box_muller(uint32_t bits_radius, uint32_t bits_angle, float* n0, float* n1) {
  const float radius = sqrtf(-2.0f * log_positive(uniform_open_float(bits_radius)));
  float sine, cosine;
  sincos_turn(uniform_open_float(bits_angle), &sine, &cosine);
  *n0 = radius * cosine;
  *n1 = radius * sine;
}

PENACT_HD void normals_from_block(const Philox4& block, float out[4]) {
  box_muller(block.v[0], block.v[1], &out[0], &out[1]);
  box_muller(block.v[2], block.v[3], &out[2], &out[3]);
}

PENACT_HD void normals_from_block(const Philox4& block, double out[2]) {
  const double radius = sqrt(-2.0 * log(uniform_open_double(block.v[0], block.v[1])));
  const double angle = 2.0 * kPi * uniform_open_double(block.v[2], block.v[3]);
  out[0] = radius * cos(angle);
  out[1] = radius * sin(angle);
}

template <typename T>
struct NormalsPerBlock;
template <>
struct NormalsPerBlock<float> {
  static constexpr int value = 4;
};
template <>
struct NormalsPerBlock<double> {
  static constexpr int value = 2;
};

}  // namespace penact
