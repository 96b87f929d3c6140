"""Typed wrappers over the compiled operators ``torch.ops.penact.*``, their fake (meta) kernels for
``torch.compile``, and their backward passes (``torch.library.register_autograd``).

Every function here takes tensors of any float dtype and device that the back-ends support and
raises ``RuntimeError`` naming the argument for bad shapes, dtypes or devices (the checks live
once, at the C++ operator boundary, ``csrc/ops.cpp``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _C  # noqa: F401  (loading the library registers torch.ops.penact)

_ops = torch.ops.penact

__all__ = [
    "log_bessel_iv",
    "bessel_iv_ratio",
    "vmf_log_normalizer",
    "vmf_mean_resultant",
    "vmf_sample",
    "vmf_log_prob",
    "vmf_log_prob_all",
]


def _as_order(order, x: Tensor) -> tuple[Tensor, Tensor]:
    order = torch.as_tensor(order, dtype=x.dtype if x.is_floating_point() else None, device=x.device)
    return torch.broadcast_tensors(order, x)


def log_bessel_iv(order, x: Tensor) -> Tensor:
    r"""``log I_v(x)``, the log of the modified Bessel function of the first kind, elementwise.

    ``order`` (``v >= 0``) broadcasts against ``x >= 0``. Computed in float64 whatever the dtype
    (relative error ~1e-14 for ``v`` in [0, 1e5], ``x`` in [0, 1e7]; finite where ``I_v`` is).
    Differentiable in ``x``: ``d/dx log I_v(x) = A(v, x) + v / x``.
    """
    return _ops.log_bessel_iv.default(*_as_order(order, x))


def bessel_iv_ratio(order, x: Tensor) -> Tensor:
    r"""``A(v, x) = I_{v+1}(x) / I_v(x)`` elementwise, without forming either Bessel value.

    Differentiable in ``x``: ``dA/dx = 1 - A^2 - (2v + 1) A / x``.
    """
    return _ops.bessel_iv_ratio.default(*_as_order(order, x))


def vmf_log_normalizer(dim: int, kappa: Tensor) -> Tensor:
    r"""``log C_D(kappa)`` for the von Mises-Fisher density on the unit sphere ``S^{D-1}`` w.r.t.
    its uniform surface measure: ``(D/2-1) log k - (D/2) log(2 pi) - log I_{D/2-1}(k)``,
    and ``log Gamma(D/2) - log 2 - (D/2) log pi`` at ``k = 0``. ``kappa: [...]``, ``dim >= 2``.
    Differentiable in ``kappa``: ``d/dk log C_D(k) = -A_D(k)``.
    """
    return _ops.vmf_log_normalizer.default(kappa, int(dim))


def vmf_mean_resultant(dim: int, kappa: Tensor) -> Tensor:
    r"""``A_D(kappa) = I_{D/2}(kappa) / I_{D/2-1}(kappa)``, the mean cosine ``E[mu . u]``."""
    return bessel_iv_ratio(0.5 * dim - 1.0, kappa)


def vmf_sample(mean_direction: Tensor, kappa: Tensor, labels: Tensor, radius: float, seed: int, offset: int,
               dtype: torch.dtype | None = None) -> Tensor:
    r"""Draws ``x_i = r u_i`` with ``u_i ~ vMF(mean_direction[labels[i]], kappa[labels[i]])``.

    ``mean_direction: [C, D]`` unit rows, ``kappa: [C]`` finite and ``>= 0`` (a row with an invalid
    concentration comes out NaN), ``labels: [N]`` in ``[0, C)``. Row ``i`` draws only from the
    Philox stream ``(seed, offset + i)``. Returns ``[N, D]`` in ``dtype``: by default the dtype of
    ``mean_direction``; float16 or bfloat16 with a float32 ``mean_direction`` (computed in float32,
    rounded once on output). Not differentiable (the inputs are detached).
    """
    return _ops.vmf_sample.default(mean_direction.detach(), kappa.detach(), labels, float(radius),
                                   _as_int64(seed), int(offset), dtype=dtype)


def vmf_log_prob(x: Tensor, weight: Tensor, log_normalizer: Tensor, labels: Tensor, radius: float) -> Tensor:
    r"""``log p(x_i | y_i) = log_normalizer[y_i] + r w_{y_i} . x_i / ||x_i||``, ``[N]``.

    ``x: [N, D]`` (evaluated at its direction; a zero row gives NaN), ``weight: [C, D]``,
    ``log_normalizer: [C]``, ``labels: [N]``. Differentiable in ``x``, ``weight``, ``log_normalizer``.
    """
    return _ops.vmf_log_prob.default(x, weight, log_normalizer, labels, float(radius))


def vmf_log_prob_all(x: Tensor, weight: Tensor, log_normalizer: Tensor, radius: float) -> Tensor:
    r"""``[N, C]`` log-densities of every row under every class, through one matrix product."""
    return _ops.vmf_log_prob_all.default(x, weight, log_normalizer, float(radius))


def _as_int64(seed: int) -> int:
    """A seed in [0, 2^64) as the int64 with the same bits (the operator schema's ``int``)."""
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must lie in [0, 2**64), got {seed}")
    return seed - 2**64 if seed >= 2**63 else seed


# ---------------------------------------------------------------------------------------------
# Fake kernels: shapes and dtypes only, for torch.compile and meta tensors.


@torch.library.register_fake("penact::log_bessel_iv")
def _(order, x):
    return torch.empty_like(x)


@torch.library.register_fake("penact::bessel_iv_ratio")
def _(order, x):
    return torch.empty_like(x)


@torch.library.register_fake("penact::vmf_log_normalizer")
def _(kappa, dim):
    return torch.empty_like(kappa)


@torch.library.register_fake("penact::vmf_sample")
def _(mean_direction, kappa, labels, radius, seed, offset, dtype=None):
    return mean_direction.new_empty(labels.shape[0], mean_direction.shape[1], dtype=dtype)


@torch.library.register_fake("penact::vmf_log_prob")
def _(x, weight, log_normalizer, labels, radius):
    return weight.new_empty(x.shape[0])


@torch.library.register_fake("penact::vmf_log_prob_backward")
def _(grad, x, weight, labels, radius, need_x_grad, need_weight_grad):
    grad_x = torch.empty_like(x) if need_x_grad else x.new_empty(0)
    grad_weight = torch.empty_like(weight) if need_weight_grad else weight.new_empty(0)
    return grad_x, grad_weight


@torch.library.register_fake("penact::vmf_log_prob_all")
def _(x, weight, log_normalizer, radius):
    return weight.new_empty(x.shape[0], weight.shape[0])


# ---------------------------------------------------------------------------------------------
# Backward passes.


def _refuse_order_grad(ctx):
    if ctx.needs_input_grad[0]:
        raise NotImplementedError("penact: the derivative with respect to the Bessel order is not implemented")


def _setup_elementwise(ctx, inputs, output):
    order, x = inputs
    ctx.save_for_backward(order, x)


def _log_bessel_iv_backward(ctx, grad):
    _refuse_order_grad(ctx)
    order, x = ctx.saved_tensors
    ratio = bessel_iv_ratio(order, x)
    at_zero = torch.where(order == 0, torch.zeros_like(x), torch.full_like(x, float("inf")))
    derivative = torch.where(x > 0, ratio + order / x, at_zero)
    return None, grad * derivative


def _bessel_iv_ratio_backward(ctx, grad):
    _refuse_order_grad(ctx)
    order, x = ctx.saved_tensors
    ratio = bessel_iv_ratio(order, x)
    derivative = torch.where(x > 0, 1 - ratio * ratio - (2 * order + 1) * ratio / x, 0.5 / (order + 1))
    return None, grad * derivative


def _setup_log_normalizer(ctx, inputs, output):
    kappa, dim = inputs
    ctx.dim = dim
    ctx.save_for_backward(kappa)


def _log_normalizer_backward(ctx, grad):
    (kappa,) = ctx.saved_tensors
    return -grad * vmf_mean_resultant(ctx.dim, kappa), None


def _setup_log_prob(ctx, inputs, output):
    x, weight, log_normalizer, labels, radius = inputs
    ctx.radius = radius
    ctx.num_classes = weight.shape[0]
    ctx.save_for_backward(x, weight, labels)


def _log_prob_backward(ctx, grad):
    x, weight, labels = ctx.saved_tensors
    need_x, need_weight, need_lognorm = ctx.needs_input_grad[:3]
    grad_x, grad_weight = _ops.vmf_log_prob_backward.default(grad.contiguous(), x, weight, labels, ctx.radius,
                                                             need_x, need_weight)
    grad_lognorm = None
    if need_lognorm:
        grad_lognorm = grad.new_zeros(ctx.num_classes).index_add_(0, labels.long(), grad)
    return (grad_x if need_x else None, grad_weight if need_weight else None, grad_lognorm, None, None)


def _setup_log_prob_all(ctx, inputs, output):
    x, weight, log_normalizer, radius = inputs
    ctx.radius = radius
    ctx.save_for_backward(x, weight, log_normalizer, output)


def _log_prob_all_backward(ctx, grad):
    # out_ij = L_j + s_i x_i . w_j with s_i = r / ||x_i||; with G = grad:
    #   dL/dw = G^T (s x),  dL/dL_j = sum_i G_ij,
    #   dL/dx_i = s_i (G W)_i - (sum_j G_ij (out_ij - L_j)) x_i / ||x_i||^2.
    x, weight, log_normalizer, output = ctx.saved_tensors
    xw = x.to(weight.dtype)
    sumsq = xw.square().sum(dim=1, keepdim=True)
    scale = ctx.radius / sumsq.sqrt()
    grad_x = grad_weight = grad_lognorm = None
    if ctx.needs_input_grad[0]:
        radial = (grad * (output - log_normalizer)).sum(dim=1, keepdim=True)
        grad_x = (scale * (grad @ weight) - radial * xw / sumsq).to(x.dtype)
    if ctx.needs_input_grad[1]:
        grad_weight = grad.t() @ (scale * xw)
    if ctx.needs_input_grad[2]:
        grad_lognorm = grad.sum(dim=0)
    return grad_x, grad_weight, grad_lognorm, None


torch.library.register_autograd("penact::log_bessel_iv", _log_bessel_iv_backward, setup_context=_setup_elementwise)
torch.library.register_autograd("penact::bessel_iv_ratio", _bessel_iv_ratio_backward, setup_context=_setup_elementwise)
torch.library.register_autograd("penact::vmf_log_normalizer", _log_normalizer_backward,
                                setup_context=_setup_log_normalizer)
torch.library.register_autograd("penact::vmf_log_prob", _log_prob_backward, setup_context=_setup_log_prob)
torch.library.register_autograd("penact::vmf_log_prob_all", _log_prob_all_backward, setup_context=_setup_log_prob_all)


# Differentiable sampling (csrc/rsample_ops.cpp): wrappers, fake kernels and backward live in
# _rsample_ops, beside this module's; re-exported so that penact.ops holds every operator.
from ._rsample_ops import vmf_cosine_kappa_grad, vmf_rsample, vmf_rsample_backward  # noqa: E402

__all__ += ["vmf_cosine_kappa_grad", "vmf_rsample", "vmf_rsample_backward"]
