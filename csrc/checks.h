// The argument checks every operator shares, run once at the operator boundary (the glue in
// special.cpp, vmf.cpp, rectified.cpp), and the raising of what the kernels report (launch.h).
//
// Every mistake in an argument raises c10::ValueError (Python's ValueError) naming the argument and
// what was expected, whatever the entry point and the device: the Python layer raises ValueError
// for the arguments it checks itself too.
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <string>

#include "launch.h"

#define PENACT_CHECK(cond, ...) TORCH_CHECK_VALUE(cond, "penact: ", __VA_ARGS__)

namespace penact {

void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name);
void check_radius(double radius);
void check_offset(int64_t offset);

// t: float32 or float64.
void check_compute_dtype(const at::Tensor& t, const char* name);

// t: a floating point tensor (any of float16, bfloat16, float32, float64).
void check_floating(const at::Tensor& t, const char* name);

// weight: [C, D] float32 or float64 with D >= min_dim.
void check_weight(const at::Tensor& weight, const char* name, int64_t min_dim);

// rows: [N, D] with weight's D, in weight's dtype or float16/bfloat16 with float32 weight, on
// weight's device.
void check_rows(const at::Tensor& rows, const char* name, const at::Tensor& weight, const char* weight_name);

// v: [size] in like's dtype, on like's device (size_text names the size: "C", "D" or "N").
void check_vector(const at::Tensor& v, const char* name, int64_t size, const char* size_text, const at::Tensor& like,
                  const char* like_name);

// labels: [N] (N = rows, or any when rows < 0), int64 or int32, on like's device; returned as
// contiguous int64. Their range is checked by the kernels that read them (a CheckStatus).
at::Tensor labels_as_int64(const at::Tensor& labels, int64_t rows, const at::Tensor& like, const char* like_name);

// Device checks: on CUDA a value check costs one synchronization (the status is copied back after
// the kernel), which graph capture forbids and training loops may not want; process-wide switch
// (penact.ops.skip_device_checks). The CPU always checks: its status needs no synchronization.
bool device_checks_enabled();
void set_device_checks(bool enabled);
// Whether a status filled on t's device may be read back now.
bool can_read_status(const at::Tensor& t);

// Names a value check for the error raised when it fails: "<argument> must <expectation>, but
// <count> of the <counted> do not (the first: <index_name> <index>)".
struct ValueCheck {
  const char* argument;
  std::string expectation;
  const char* counted;     // what the count counts: "entries", "sampled rows' mean directions", ...
  const char* index_name;  // what the index points to: "class", "coordinate", "entry", ...
};

// Raises for the first problem in status: the labels (range [0, num_classes)), then checks[k] for
// slot k. Does nothing when all is well.
void raise_if_bad(const CheckStatus& status, int64_t num_classes, std::initializer_list<ValueCheck> checks);

// The unit-norm tolerance of mean directions in a dtype: sqrt(eps), 3.5e-4 in float32 and 1.5e-8
// in float64 (the drop-in VonMisesFisher's constraint): far above the rounding of any normalized
// vector (~sqrt(D) eps), far below a forgotten normalization.
double unit_norm_tolerance(at::ScalarType dtype);

}  // namespace penact
