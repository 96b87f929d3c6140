"""Differentiable sampling of the sphere family (SPEC section 3, "Gradients of samples"): typed
wrappers over ``torch.ops.penact.vmf_cosine_kappa_grad``, ``torch.ops.penact.vmf_rsample`` and
``torch.ops.penact.vmf_rsample_backward`` (schemas in ``csrc/rsample_ops.cpp``), their fake kernels
and the backward of ``vmf_rsample``.

The method. A draw is ``u = t mu + sqrt(1 - t^2) v``, with the cosine ``t`` from Wood's step and
``v`` a unit vector orthogonal to ``mu``. The forward is the fused sampler, unchanged. The
backward recovers ``t = u . mu``, ``s v = u - t mu`` (``s = sqrt(1 - t^2)``) from the draw and
differentiates

- in ``kappa`` by implicit reparameterization (Figurnov, Mohamed and Mnih 2018): ``t`` moves with
  its CDF value held fixed, ``dt/dkappa = -(dF/dkappa)(t) / p(t)`` (``vmf_cosine_kappa_grad``), so
  ``du/dkappa = (dt/dkappa) (mu - t v / s)``. Differentiating through the accepted proposal of the
  rejection sampler instead is biased (SPEC: 0.128 instead of 0.147 for ``d/dkappa E[t]`` at
  ``D = 5``, ``kappa = 2``);
- in ``mu`` through the projection that makes ``v``: ``v = normalize(g - (g . mu) mu)``, with ``g``
  replaced by its part ``v`` orthogonal to ``mu``, which the draw determines:
  ``du[delta] = t delta - s (v . delta) mu``, i.e. ``grad_mu = t G - (G . mu) s v``. The sampler's
  own Gaussian also has a component ``a = g . mu`` along ``mu``; it is independent of ``(t, v)``
  with mean zero and enters the pathwise derivative linearly, so dropping it gives the
  conditional expectation of that derivative given the draw: unbiased, with less variance, and
  without regenerating the Gaussian.

Both gradients are exact in expectation: ``d/dtheta E[f(u)] = E[grad]`` (tested by Monte Carlo
against closed forms and finite differences of expectations). For ``D = 3`` the sampler is the
exact inverse CDF, so there the kappa-gradient of a fixed-seed draw is also its pathwise derivative.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _C  # noqa: F401  (loading the library registers torch.ops.penact)
from ._ops import _as_int64

_ops = torch.ops.penact

__all__ = ["vmf_cosine_kappa_grad", "vmf_rsample", "vmf_rsample_backward"]


def vmf_cosine_kappa_grad(dim: int, kappa: Tensor, t: Tensor, sine: Tensor) -> Tensor:
    r"""``dt/dkappa`` of a draw's cosine ``t = mu . u`` under vMF(mu, kappa) on ``S^{D-1}``, holding
    its CDF value fixed (implicit reparameterization), elementwise:

        dt/dkappa = int_t^1 (s - A) p(s) ds / p(t) = int_{-1}^t (A - s) p(s) ds / p(t) >= 0,

    ``p(s) ~ exp(kappa s) (1 - s^2)^((D-3)/2)``, ``A = A_D(kappa)``; the tail on which ``s - A`` keeps
    its sign is integrated (adaptive Gauss-Kronrod, relative error ~1e-13 from ``kappa = 0`` to
    ``1e7`` and ``D = 2`` to ``65536``). ``kappa = 0`` gives ``(1 - t^2) / (D - 1)``.

    ``t``, ``sine = sqrt(1 - t^2)`` (both from the draw: ``1 -+ t`` near ``+-1`` is recovered as
    ``sine^2 / (1 +- t)``, which keeps its digits) and ``kappa >= 0`` broadcast together. Computed in
    float64, returned in ``t``'s dtype; NaN where ``kappa`` is negative, infinite or NaN.
    Not differentiable.
    """
    t, sine, kappa = torch.broadcast_tensors(t, sine, torch.as_tensor(kappa, dtype=t.dtype, device=t.device))
    return _ops.vmf_cosine_kappa_grad.default(t, sine, kappa, int(dim))


def vmf_rsample(mean_direction: Tensor, kappa: Tensor, labels: Tensor, radius: float, seed: int,
                offset: int) -> Tensor:
    r"""``x_i = r u_i``, ``u_i ~ vMF(mean_direction[labels[i]], kappa[labels[i]])``, differentiable in
    ``mean_direction: [C, D]`` (unit rows) and ``kappa: [C]`` (see the module's docstring for the
    method). The values are exactly :func:`penact.ops.vmf_sample`'s for the same arguments (row
    ``i`` draws from the Philox stream ``(seed, offset + i)``). Returns ``[N, D]``.
    """
    return _ops.vmf_rsample.default(mean_direction, kappa, labels, float(radius), _as_int64(seed), int(offset))


@torch.library.register_fake("penact::vmf_cosine_kappa_grad")
def _(t, sine, kappa, dim):
    return torch.empty_like(t)


@torch.library.register_fake("penact::vmf_rsample")
def _(mean_direction, kappa, labels, radius, seed, offset):
    return mean_direction.new_empty(labels.shape[0], mean_direction.shape[1])


def _refuse_second_derivative(ctx, grad):
    raise NotImplementedError("penact: second derivatives of rsample through the concentration (the derivative "
                              "of vmf_cosine_kappa_grad) are not implemented")


def _setup_rsample(ctx, inputs, output):
    mean_direction, kappa, labels, radius, seed, offset = inputs
    ctx.radius = radius
    ctx.save_for_backward(mean_direction, kappa, labels, output)


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """``[N]`` dot products of the rows of ``a, b: [N, D]``, without an ``[N, D]`` temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def vmf_rsample_backward(grad: Tensor, sample: Tensor, mean_direction: Tensor, kappa: Tensor, labels: Tensor,
                         radius: float, need_mean_direction_grad: bool = True,
                         need_kappa_grad: bool = True) -> tuple[Tensor | None, Tensor | None]:
    r"""The gradients of :func:`vmf_rsample` for ``mean_direction: [C, D]`` and ``kappa: [C]``, given
    the draw ``sample: [N, D]``, its ``labels: [N]`` and the incoming ``grad: [N, D]``. With
    ``x = r u = r t mu + r s v`` (so ``t = x . mu / r`` and ``o = x - r t mu = r s v``), summed over
    the rows of each class:

        grad_mu    = r t grad - (grad . mu) o,
        grad_kappa = (dt/dkappa) (r grad . mu - t (grad . o) / s^2),

    ``dt/dkappa`` from :func:`vmf_cosine_kappa_grad`. On the CPU one fused pass over the rows
    (``torch.ops.penact.vmf_rsample_backward``, not differentiable); elsewhere
    :func:`_rsample_backward_composite`, its torch-operator twin. An unrequested gradient is
    returned as ``None``.
    """
    if sample.device.type == "cpu":
        grad_mu, grad_kappa = _ops.vmf_rsample_backward.default(grad, sample, mean_direction, kappa, labels,
                                                                float(radius), need_mean_direction_grad,
                                                                need_kappa_grad)
        return (grad_mu if need_mean_direction_grad else None, grad_kappa if need_kappa_grad else None)
    return _rsample_backward_composite(grad, sample, mean_direction, kappa, labels, radius,
                                       need_mean_direction_grad, need_kappa_grad)


def _rsample_backward_composite(grad: Tensor, sample: Tensor, mean_direction: Tensor, kappa: Tensor,
                                labels: Tensor, radius: float, need_mean_direction_grad: bool,
                                need_kappa_grad: bool) -> tuple[Tensor | None, Tensor | None]:
    """:func:`vmf_rsample_backward` in torch operators: the CUDA path and the CPU kernel's test oracle.
    Memory-bound: a handful of passes over ``[N, D]``."""
    labels = labels.long()
    mu = mean_direction.index_select(0, labels)
    t = _row_dot(sample, mu) / radius
    orthogonal = torch.addcmul(sample, mu, (-radius * t).unsqueeze(1))  # o = r s v
    along = _row_dot(grad, mu)  # grad . mu
    grad_mu = grad_kappa = None
    if need_kappa_grad:
        sine2 = _row_dot(orthogonal, orthogonal) / radius**2
        across = _row_dot(grad, orthogonal)  # grad . o
        dt_dkappa = vmf_cosine_kappa_grad(mean_direction.shape[1], kappa.index_select(0, labels), t, sine2.sqrt())
        # s = 0 only at t = +-1 (probability zero), where dt/dkappa = 0 as well.
        rows = dt_dkappa * (radius * along - t * across / sine2.clamp_min(torch.finfo(sine2.dtype).tiny))
        grad_kappa = torch.zeros_like(kappa).index_add_(0, labels, rows)
    if need_mean_direction_grad:
        rows = orthogonal.mul_(-along.unsqueeze(1)).addcmul_(grad, (radius * t).unsqueeze(1))
        grad_mu = torch.zeros_like(mean_direction).index_add_(0, labels, rows)
    return grad_mu, grad_kappa


@torch.library.register_fake("penact::vmf_rsample_backward")
def _(grad, sample, mean_direction, kappa, labels, radius, need_mean_direction_grad, need_kappa_grad):
    grad_mu = mean_direction.new_empty(mean_direction.shape) if need_mean_direction_grad else mean_direction.new_empty(0)
    grad_kappa = kappa.new_empty(kappa.shape) if need_kappa_grad else kappa.new_empty(0)
    return grad_mu, grad_kappa


def _rsample_backward(ctx, grad):
    # x = r u, u = t mu + s v: the gradients of vmf_rsample_backward (module docstring for the method).
    # Grad mode is on here only for create_graph=True: then the torch operators, whose graph carries
    # second derivatives in mean_direction (the fused kernel has none).
    mean_direction, kappa, labels, sample = ctx.saved_tensors
    need_mu, need_kappa = ctx.needs_input_grad[:2]
    backward = _rsample_backward_composite if torch.is_grad_enabled() else vmf_rsample_backward
    grad_mu, grad_kappa = backward(grad, sample, mean_direction, kappa, labels, ctx.radius, need_mu, need_kappa)
    return grad_mu, grad_kappa, None, None, None, None


torch.library.register_autograd("penact::vmf_cosine_kappa_grad", _refuse_second_derivative)
torch.library.register_autograd("penact::vmf_rsample", _rsample_backward, setup_context=_setup_rsample)
