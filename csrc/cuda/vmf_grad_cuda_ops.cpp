// CUDA glue of vmf_cosine_kappa_grad: checks (ops.h), float64 buffers, launch on the current
// stream. The kernel is in vmf_grad_cuda.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../ops.h"
#include "vmf_grad_cuda.h"

namespace penact {
namespace {

at::Tensor vmf_cosine_kappa_grad_cuda(const at::Tensor& t, const at::Tensor& sine, const at::Tensor& kappa,
                                      int64_t dim) {
  check_cosine_kappa_grad_args(t, sine, kappa, dim);
  const c10::cuda::CUDAGuard device_guard(t.device());
  const at::Tensor td = t.to(at::kDouble).contiguous();
  const at::Tensor sd = sine.to(at::kDouble).contiguous();
  const at::Tensor kd = kappa.to(at::kDouble).contiguous();
  at::Tensor out = at::empty(td.sizes(), td.options());
  cuda::CosineKappaGradParams params{};
  params.t = td.const_data_ptr<double>();
  params.sine = sd.const_data_ptr<double>();
  params.kappa = kd.const_data_ptr<double>();
  params.out = out.mutable_data_ptr<double>();
  params.dim = static_cast<double>(dim);
  params.numel = td.numel();
  C10_CUDA_CHECK(cuda::launch_vmf_cosine_kappa_grad(params, c10::cuda::getCurrentCUDAStream().stream()));
  return out.to(t.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(penact, CUDA, m) { m.impl("vmf_cosine_kappa_grad", &vmf_cosine_kappa_grad_cuda); }

}  // namespace penact
