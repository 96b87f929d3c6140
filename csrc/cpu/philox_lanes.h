// Philox4x32-10 blocks of one row, 32 consecutive blocks at a time, for the CPU kernels. Two
// versions that produce exactly the bits of philox4x32_10 (core/philox.h): a portable loop, and an
// AVX2 one with intrinsics (GCC 12 keeps the 32x32 -> 64-bit products of the portable loop scalar
// even in an AVX2 or AVX-512 build: 2x slower here). The AVX2 version runs four independent groups
// of eight blocks side by side, which hides the latency of the ten dependent rounds; an AVX-512
// version measured no faster on this Xeon. philox_blocks picks one at run time, so it may be
// called from any copy of a PENACT_CPU_DISPATCH function.
#pragma once

#include <cstdlib>
#include <cstring>

#include "../core/philox.h"
#include "dispatch.h"

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define PENACT_X86_DISPATCH 1
#include <immintrin.h>
#define PENACT_TARGET_AVX2 __attribute__((target("avx2")))
#endif

namespace penact {

constexpr int kPhiloxBlocksPerCall = 32;

// words[k][l] = word k of block first_block + l, l < kPhiloxBlocksPerCall.
struct PhiloxPortable {
  static inline void blocks(uint64_t seed, uint64_t row, uint64_t first_block,
                            uint32_t words[4][kPhiloxBlocksPerCall]) {
    for (int l = 0; l < kPhiloxBlocksPerCall; ++l) {
      const Philox4 b = philox4x32_10(seed, row, first_block + static_cast<uint64_t>(l));
      for (int k = 0; k < 4; ++k) words[k][l] = b.v[k];
    }
  }
};

#if defined(PENACT_X86_DISPATCH)
struct PhiloxAvx2 {
  static constexpr int kGroups = kPhiloxBlocksPerCall / 8;

  // High and low halves of the eight 32-bit lane products multiplier * c.
  PENACT_TARGET_AVX2 static inline void mulhilo(__m256i multiplier, __m256i c, __m256i* hi, __m256i* lo) {
    const __m256i even = _mm256_mul_epu32(c, multiplier);                        // lanes 0, 2, 4, 6
    const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(c, 32), multiplier);  // lanes 1, 3, 5, 7
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  }

  PENACT_TARGET_AVX2 static inline void blocks(uint64_t seed, uint64_t row, uint64_t first_block,
                                               uint32_t words[4][kPhiloxBlocksPerCall]) {
    alignas(32) uint32_t block_lo[kPhiloxBlocksPerCall], block_hi[kPhiloxBlocksPerCall];
    for (int l = 0; l < kPhiloxBlocksPerCall; ++l) {
      const uint64_t block = first_block + static_cast<uint64_t>(l);
      block_lo[l] = static_cast<uint32_t>(block);
      block_hi[l] = static_cast<uint32_t>(block >> 32);
    }
    __m256i c0[kGroups], c1[kGroups], c2[kGroups], c3[kGroups];
    for (int g = 0; g < kGroups; ++g) {
      c0[g] = _mm256_load_si256(reinterpret_cast<const __m256i*>(block_lo + 8 * g));
      c1[g] = _mm256_load_si256(reinterpret_cast<const __m256i*>(block_hi + 8 * g));
      c2[g] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(row)));
      c3[g] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(row >> 32)));
    }
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    const __m256i m0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
    const __m256i m1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
    for (int round = 0; round < 10; ++round) {
      const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0));
      const __m256i key1 = _mm256_set1_epi32(static_cast<int>(k1));
      for (int g = 0; g < kGroups; ++g) {
        __m256i hi0, lo0, hi1, lo1;
        mulhilo(m0, c0[g], &hi0, &lo0);
        mulhilo(m1, c2[g], &hi1, &lo1);
        c0[g] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[g]), key0);
        c1[g] = lo1;
        c2[g] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[g]), key1);
        c3[g] = lo0;
      }
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    for (int g = 0; g < kGroups; ++g) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(words[0] + 8 * g), c0[g]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(words[1] + 8 * g), c1[g]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(words[2] + 8 * g), c2[g]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(words[3] + 8 * g), c3[g]);
    }
  }
};

// AVX2 present, and not turned off with PENACT_CPU_CAPABILITY=default (which lets the tests
// compare the two versions on one machine).
inline bool use_avx2_philox() {
  static const bool enabled = [] {
    const char* forced = std::getenv("PENACT_CPU_CAPABILITY");
    if (forced != nullptr && std::strcmp(forced, "default") == 0) return false;
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return enabled;
}
#endif

// words[k][l] = word k of block first_block + l, l < kPhiloxBlocksPerCall.
inline void philox_blocks(uint64_t seed, uint64_t row, uint64_t first_block,
                          uint32_t words[4][kPhiloxBlocksPerCall]) {
#if defined(PENACT_X86_DISPATCH)
  if (use_avx2_philox()) return PhiloxAvx2::blocks(seed, row, first_block, words);
#endif
  PhiloxPortable::blocks(seed, row, first_block, words);
}

}  // namespace penact
