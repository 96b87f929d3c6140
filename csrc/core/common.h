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
constexpr double kLog2 = 0.693147180559945309417232121458176568;
constexpr double kLog2Pi = 1.83787706640934548356065947281123527;

// sqrt in the argument's own precision on every device (an unqualified sqrt(float) in host code
// may resolve to the double function).
PENACT_HD float square_root(float x) { return sqrtf(x); }
PENACT_HD double square_root(double x) { return sqrt(x); }

// The smallest positive normal number of T (std::numeric_limits is not usable in device code
// without relaxed constexpr).
template <typename T>
PENACT_HD T smallest_normal();
template <>
PENACT_HD float smallest_normal<float>() { return 1.17549435082228750797e-38f; }
template <>
PENACT_HD double smallest_normal<double>() { return 2.22507385850720138309e-308; }

}  // namespace penact
