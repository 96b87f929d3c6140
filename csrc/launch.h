// What the kernel interfaces of every family (special.h, vmf.h, rectified.h) share, torch-free so
// that the CUDA kernels compile with nvcc alone: the element types, and the check status.
//
// CheckStatus: what a kernel finds wrong while it reads the values an argument check needs (labels,
// mean directions, activations, base-measure parameters). The kernels read those values anyway, so a
// check costs no pass of its own; the glue raises from the status after the kernel (checks.h), on
// CUDA after one copy of this struct to the host.
//
// Every field starts at zero and only ever grows (a sum or a maximum), so one zero-filled buffer
// serves every thread, and the CPU tasks' partial statuses merge in any order. Extremes are kept
// as order-preserving unsigned keys: key(v) = v with its sign bit flipped orders like v, and
// ~key(v) orders like -v, so "the lowest bad label" is the maximum of ~key.
#pragma once

#include <cstdint>

#include "core/common.h"

namespace penact {

// Element types of the tensors a kernel reads and writes.
enum class Dtype { kFloat16, kBFloat16, kFloat32, kFloat64 };

// Value checks an operator may run besides the label range; what each slot means is the
// operator's (its glue names them when it raises).
constexpr int kValueChecks = 3;

struct CheckStatus {
  uint64_t bad_labels;       // labels outside [0, C)
  uint64_t lowest_label;     // max over them of ~key(label)
  uint64_t highest_label;    // max over them of key(label)
  uint64_t bad_values[kValueChecks];   // entries that failed check k
  uint64_t first_bad[kValueChecks];    // max over them of ~key(index): the lowest failing index
};

PENACT_HD uint64_t order_key(int64_t value) { return static_cast<uint64_t>(value) ^ (uint64_t(1) << 63); }
PENACT_HD int64_t from_order_key(uint64_t key) { return static_cast<int64_t>(key ^ (uint64_t(1) << 63)); }

// Host side: a partial status (one CPU task's) recorded without atomics, then merged.
inline void record_bad_label(CheckStatus& status, int64_t label) {
  status.bad_labels += 1;
  const uint64_t key = order_key(label);
  if (~key > status.lowest_label) status.lowest_label = ~key;
  if (key > status.highest_label) status.highest_label = key;
}

inline void record_bad_value(CheckStatus& status, int check, int64_t index, uint64_t count = 1) {
  status.bad_values[check] += count;
  const uint64_t key = ~order_key(index);
  if (key > status.first_bad[check]) status.first_bad[check] = key;
}

inline void merge_status(CheckStatus& into, const CheckStatus& part) {
  into.bad_labels += part.bad_labels;
  if (part.lowest_label > into.lowest_label) into.lowest_label = part.lowest_label;
  if (part.highest_label > into.highest_label) into.highest_label = part.highest_label;
  for (int k = 0; k < kValueChecks; ++k) {
    into.bad_values[k] += part.bad_values[k];
    if (part.first_bad[k] > into.first_bad[k]) into.first_bad[k] = part.first_bad[k];
  }
}

}  // namespace penact
