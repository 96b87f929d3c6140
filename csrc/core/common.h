// Shared by every kernel of penact: host/device qualifiers and the few constants the math needs.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define PENACT_HD __host__ __device__ inline
#else
#define PENACT_HD inline
#endif

namespace penact {

using std::isfinite;
using std::isinf;
using std::isnan;

constexpr double kPi = 3.14159265358979323846264338327950288;
constexpr double kLogPi = 1.14472988584940017414342735135305871;
constexpr double kLog2 = 0.693147180559945309417232121458176568;
constexpr double kLog2Pi = 1.83787706640934548356065947281123527;

}  // namespace penact
