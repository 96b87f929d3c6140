"""The special functions of the sphere family's normalizer, elementwise: ``log I_v(x)``, the ratio
``A(v, x) = I_{v+1}(x) / I_v(x)`` and the vMF log-normalizer ``log C_D(kappa)``
(``csrc/core/special.h``: positive series, Olver's uniform expansion, a stable ratio recurrence;
schemas in ``csrc/special.cpp``), with fake kernels and derivatives in ``x`` and ``kappa``."""
from __future__ import annotations

import torch
from torch import Tensor

from ._library import library

__all__ = ["log_bessel_iv", "bessel_iv_ratio", "vmf_log_normalizer", "vmf_mean_resultant"]


def _as_order(order, x: Tensor) -> tuple[Tensor, Tensor]:
    order = torch.as_tensor(order, dtype=x.dtype if x.is_floating_point() else None, device=x.device)
    return torch.broadcast_tensors(order, x)


def log_bessel_iv(order, x: Tensor) -> Tensor:
    r"""``log I_v(x)``, the log of the modified Bessel function of the first kind, elementwise.

    ``order`` (``v >= 0``) broadcasts against ``x >= 0``. Computed in float64 whatever the dtype
    (relative error ~1e-14 for ``v`` in [0, 1e5], ``x`` in [0, 1e7]; finite where ``I_v`` is).
    Differentiable in ``x``: ``d/dx log I_v(x) = A(v, x) + v / x``.
    """
    return library.log_bessel_iv.default(*_as_order(order, x))


def bessel_iv_ratio(order, x: Tensor) -> Tensor:
    r"""``A(v, x) = I_{v+1}(x) / I_v(x)`` elementwise, without forming either Bessel value.

    Differentiable in ``x``: ``dA/dx = 1 - A^2 - (2v + 1) A / x``.
    """
    return library.bessel_iv_ratio.default(*_as_order(order, x))


def vmf_log_normalizer(dim: int, kappa: Tensor) -> Tensor:
    r"""``log C_D(kappa)`` for the von Mises-Fisher density on the unit sphere ``S^{D-1}`` w.r.t.
    its uniform surface measure: ``(D/2-1) log k - (D/2) log(2 pi) - log I_{D/2-1}(k)``,
    and ``log Gamma(D/2) - log 2 - (D/2) log pi`` at ``k = 0``. ``kappa: [...]``, ``dim >= 2``.
    Differentiable in ``kappa``: ``d/dk log C_D(k) = -A_D(k)``.
    """
    return library.vmf_log_normalizer.default(kappa, int(dim))


def vmf_mean_resultant(dim: int, kappa: Tensor) -> Tensor:
    r"""``A_D(kappa) = I_{D/2}(kappa) / I_{D/2-1}(kappa)``, the mean cosine ``E[mu . u]``."""
    return bessel_iv_ratio(0.5 * dim - 1.0, kappa)


@torch.library.register_fake("penact::log_bessel_iv")
def _(order, x):
    return torch.empty_like(x)


@torch.library.register_fake("penact::bessel_iv_ratio")
def _(order, x):
    return torch.empty_like(x)


@torch.library.register_fake("penact::vmf_log_normalizer")
def _(kappa, dim):
    return torch.empty_like(kappa)


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


torch.library.register_autograd("penact::log_bessel_iv", _log_bessel_iv_backward, setup_context=_setup_elementwise)
torch.library.register_autograd("penact::bessel_iv_ratio", _bessel_iv_ratio_backward, setup_context=_setup_elementwise)
torch.library.register_autograd("penact::vmf_log_normalizer", _log_normalizer_backward,
                                setup_context=_setup_log_normalizer)
