// Philox4x32-10 (Salmon et al. 2011, as in cuRAND and PyTorch) and the draws built on it.
//
// Stream layout (docs/randomness.md): the key is the 64-bit seed; the counter's high half is the
// global row index (offset + i) and its low half the index of the draw within the row. A row's
// draws therefore depend only on (seed, offset + i), whatever thread, block or rank computes it.
// Within a row, blocks 0 .. 2^32 - 1 feed the direction's normals and blocks from 2^32 on feed the
// scalar draws (Wood's step), so the two never overlap.
#pragma once

#include "common.h"

namespace penact {

struct Philox4 {
  uint32_t v[4];
};

PENACT_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t product = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(product >> 32);
  *lo = static_cast<uint32_t>(product);
}

PENACT_HD Philox4 philox4x32_10(uint64_t seed, uint64_t row, uint64_t block) {
  uint32_t c0 = static_cast<uint32_t>(block), c1 = static_cast<uint32_t>(block >> 32);
  uint32_t c2 = static_cast<uint32_t>(row), c3 = static_cast<uint32_t>(row >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, c0, &hi0, &lo0);
    mulhilo32(0xCD9E8D57u, c2, &hi1, &lo1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// Uniform on (0, 1), never 0 or 1, so log(u) and log(1 - u) are finite.
PENACT_HD float uniform_open_float(uint32_t bits) {
  return static_cast<float>((bits >> 9) * 2u + 1u) * 5.9604644775390625e-08f;  // (2k+1) / 2^24
}

PENACT_HD double uniform_open_double(uint32_t hi, uint32_t lo) {
  const uint64_t k = (static_cast<uint64_t>(hi) << 20) ^ (lo >> 12);  // 52 random bits
  return (static_cast<double>(k) * 2.0 + 1.0) * 1.1102230246251565e-16;  // (2k+1) / 2^53
}

// The scalar draws of one row: uniforms and normals in double, consumed one Philox block at a time.
struct RowStream {
  uint64_t seed, row, block;
  Philox4 bits;
  int used;

  PENACT_HD RowStream(uint64_t seed_, uint64_t row_)
      : seed(seed_), row(row_), block(uint64_t(1) << 32), bits(), used(4) {}

  PENACT_HD uint32_t next_bits() {
    if (used == 4) {
      bits = philox4x32_10(seed, row, block++);
      used = 0;
    }
    return bits.v[used++];
  }
  PENACT_HD double uniform() {
    const uint32_t hi = next_bits();
    return uniform_open_double(hi, next_bits());
  }
  // Box-Muller, one of the pair: the scalar path draws few normals, simplicity wins over reuse.
  PENACT_HD double normal() {
    const double radius = sqrt(-2.0 * log(uniform()));
    return radius * cos(2.0 * kPi * uniform());
  }
};

// Gamma(shape, 1) for shape >= 1/2 (Marsaglia and Tsang 2000); shape < 1 by the boost
// Gamma(shape) = Gamma(shape + 1) U^(1/shape). Returned in log form would be needed only for
// shapes far below 1/2, which Wood's step never asks for.
PENACT_HD double gamma_draw(RowStream& stream, double shape) {
  const double boosted = shape < 1.0 ? shape + 1.0 : shape;
  const double d = boosted - 1.0 / 3.0;
  const double c = 1.0 / sqrt(9.0 * d);
  double value;
  for (;;) {
    const double x = stream.normal();
    const double cube_root = 1.0 + c * x;
    if (cube_root <= 0.0) continue;
    const double v = cube_root * cube_root * cube_root;
    if (log(stream.uniform()) < 0.5 * x * x + d - d * v + d * log(v)) {
      value = d * v;
      break;
    }
  }
  if (shape < 1.0) value *= exp(log(stream.uniform()) / shape);
  return value;
}

// z ~ Beta(a, a) as X / (X + Y) with its complement Y / (X + Y), both without cancellation.
struct BetaPair {
  double z, one_minus_z;
};

PENACT_HD BetaPair symmetric_beta_draw(RowStream& stream, double a) {
  const double x = gamma_draw(stream, a);
  const double y = gamma_draw(stream, a);
  const double total = x + y;
  return {x / total, y / total};
}

}  // namespace penact
