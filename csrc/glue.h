// The glue of an operator call (special.cpp, vmf.cpp, rectified.cpp): each operator is one
// function template over the device; it checks its arguments, allocates, fills the kernel's plain
// parameter struct (the family's torch-free header) and runs the device's launcher through a
// Launch. The dispatcher picks the device: every operator registers its instantiation for the CPU
// and, when built with CUDA, for the CUDA key.
#pragma once

#include <ATen/ATen.h>

#include <cstring>
#include <type_traits>

#include "checks.h"
#include "launch.h"

#if defined(PENACT_WITH_CUDA)
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
// A CUDA launcher by name, or nothing in a CPU-only build (where Launch<kCUDA> is never made).
#define PENACT_CUDA_LAUNCHER(name) (&::penact::cuda::name)
#else
#define PENACT_CUDA_LAUNCHER(name) nullptr
#endif

namespace penact {

enum class Device { kCPU, kCUDA };

// A parameter type that template argument deduction skips (a launcher slot may be nullptr).
template <typename T>
struct NonDeduced {
  using type = T;
};

inline Dtype dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return Dtype::kFloat16;
    case at::kBFloat16: return Dtype::kBFloat16;
    case at::kFloat: return Dtype::kFloat32;
    case at::kDouble: return Dtype::kFloat64;
    default: PENACT_CHECK(false, "unsupported dtype ", t.scalar_type());
  }
}

template <Device D>
class Launch;

// The CPU: launchers are plain functions of the parameters; the status is a host struct.
template <>
class Launch<Device::kCPU> {
 public:
  explicit Launch(const at::Tensor&) : status_{} {}
  CheckStatus* status() { return &status_; }
  template <typename Params, typename CudaLauncher>
  void run(typename NonDeduced<void (*)(const Params&)>::type cpu, CudaLauncher, const Params& params) {
    cpu(params);
  }
  CheckStatus read_status() const { return status_; }

 private:
  CheckStatus status_;
};

#if defined(PENACT_WITH_CUDA)
// CUDA: the tensor's device is made current, launchers run on the current stream and every
// launch is checked; the status lives in a zero-filled device buffer, copied back only where
// can_read_status allows (one synchronization). Under graph capture the buffer is allocated from
// the graph's pool like any tensor, and never read.
template <>
class Launch<Device::kCUDA> {
 public:
  explicit Launch(const at::Tensor& on) : guard_(on.device()), options_(on.options().dtype(at::kLong)) {}
  CheckStatus* status() {
    if (!status_.defined()) status_ = at::zeros({sizeof(CheckStatus) / sizeof(int64_t)}, options_);
    return reinterpret_cast<CheckStatus*>(status_.mutable_data_ptr<int64_t>());
  }
  template <typename Params, typename CudaLauncher>
  void run(typename NonDeduced<void (*)(const Params&)>::type, CudaLauncher cuda, const Params& params) {
    C10_CUDA_CHECK(cuda(params, c10::cuda::getCurrentCUDAStream().stream()));
  }
  CheckStatus read_status() const {
    CheckStatus status{};
    if (status_.defined() && can_read_status(status_)) {
      const at::Tensor host = status_.cpu();
      std::memcpy(&status, host.const_data_ptr<int64_t>(), sizeof(status));
    }
    return status;
  }

 private:
  c10::cuda::CUDAGuard guard_;
  at::TensorOptions options_;
  at::Tensor status_;  // allocated by the first status(): operators without value checks need none
};
#endif

static_assert(sizeof(CheckStatus) % sizeof(int64_t) == 0, "the status is a whole number of int64 words");

}  // namespace penact
