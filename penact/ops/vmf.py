"""The sphere (von Mises-Fisher) family's operators: the fused sampler and labelled log-density
(with backward), the all-classes log-density, and differentiable sampling; typed wrappers over
``torch.ops.penact.vmf_*`` (schemas and argument checks in ``csrc/vmf.cpp``), their fake kernels
for ``torch.compile`` and their backward passes. The log-normalizer is with the special functions
(:mod:`penact.ops.special`).

Differentiable sampling (``vmf_rsample``; docs/model.md, "Gradients of samples"). A draw is
``u = t mu + sqrt(1 - t^2) v``, with the cosine ``t`` from Wood's step and ``v`` a unit vector
orthogonal to ``mu``. The forward is the fused sampler, unchanged. The backward recovers
``t = u . mu``, ``s v = u - t mu`` (``s = sqrt(1 - t^2)``) from the draw and differentiates

- in ``kappa`` by implicit reparameterization (Figurnov, Mohamed and Mnih 2018): ``t`` moves with
  its CDF value held fixed, ``dt/dkappa = -(dF/dkappa)(t) / p(t)`` (``vmf_cosine_kappa_grad``), so
  ``du/dkappa = (dt/dkappa) (mu - t v / s)``. Differentiating through the accepted proposal of the
  rejection sampler instead is biased (0.128 instead of 0.147 for ``d/dkappa E[t]`` at
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

from ._library import as_int64, library

__all__ = ["vmf_sample", "vmf_log_prob", "vmf_log_prob_all",
           "vmf_cosine_kappa_grad", "vmf_rsample", "vmf_rsample_backward"]


def vmf_sample(mean_direction: Tensor, kappa: Tensor, labels: Tensor, radius: float, seed: int, offset: int,
               dtype: torch.dtype | None = None) -> Tensor:
    r"""Draws ``x_i = r u_i`` with ``u_i ~ vMF(mean_direction[labels[i]], kappa[labels[i]])``.

    ``mean_direction: [C, D]`` unit rows, ``kappa: [C]`` finite and ``>= 0`` (a row with an invalid
    concentration comes out NaN), ``labels: [N]`` in ``[0, C)``. Row ``i`` draws only from the
    Philox stream ``(seed, offset + i)``. Returns ``[N, D]`` in ``dtype``: by default the dtype of
    ``mean_direction``; float16 or bfloat16 with a float32 ``mean_direction`` (computed in float32,
    rounded once on output). Not differentiable (the inputs are detached).
    """
    return library.vmf_sample.default(mean_direction.detach(), kappa.detach(), labels, float(radius),
                                   as_int64(seed), int(offset), dtype=dtype)


def vmf_log_prob(x: Tensor, weight: Tensor, log_normalizer: Tensor, labels: Tensor, radius: float) -> Tensor:
    r"""``log p(x_i | y_i) = log_normalizer[y_i] + r w_{y_i} . x_i / ||x_i||``, ``[N]``.

    ``x: [N, D]`` (evaluated at its direction; a zero row gives NaN), ``weight: [C, D]``,
    ``log_normalizer: [C]``, ``labels: [N]``. Differentiable in ``x``, ``weight``, ``log_normalizer``.
    """
    return library.vmf_log_prob.default(x, weight, log_normalizer, labels, float(radius))


def vmf_log_prob_all(x: Tensor, weight: Tensor, log_normalizer: Tensor, radius: float) -> Tensor:
    r"""``[N, C]`` log-densities of every row under every class, through one matrix product."""
    return library.vmf_log_prob_all.default(x, weight, log_normalizer, float(radius))



# ---------------------------------------------------------------------------------------------
# Fake kernels: shapes and dtypes only, for torch.compile and meta tensors.


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


def _setup_log_prob(ctx, inputs, output):
    x, weight, log_normalizer, labels, radius = inputs
    ctx.radius = radius
    ctx.num_classes = weight.shape[0]
    ctx.save_for_backward(x, weight, labels)


def _log_prob_backward(ctx, grad):
    x, weight, labels = ctx.saved_tensors
    need_x, need_weight, need_lognorm = ctx.needs_input_grad[:3]
    grad_x, grad_weight = library.vmf_log_prob_backward.default(grad.contiguous(), x, weight, labels, ctx.radius,
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


torch.library.register_autograd("penact::vmf_log_prob", _log_prob_backward, setup_context=_setup_log_prob)
torch.library.register_autograd("penact::vmf_log_prob_all", _log_prob_all_backward, setup_context=_setup_log_prob_all)


# ---------------------------------------------------------------------------------------------
# Differentiable sampling.


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
    return library.vmf_cosine_kappa_grad.default(t, sine, kappa, int(dim))


def vmf_rsample(mean_direction: Tensor, kappa: Tensor, labels: Tensor, radius: float, seed: int,
                offset: int) -> Tensor:
    r"""``x_i = r u_i``, ``u_i ~ vMF(mean_direction[labels[i]], kappa[labels[i]])``, differentiable in
    ``mean_direction: [C, D]`` (unit rows) and ``kappa: [C]`` (see the module's docstring for the
    method). The values are exactly :func:`penact.ops.vmf_sample`'s for the same arguments (row
    ``i`` draws from the Philox stream ``(seed, offset + i)``). Returns ``[N, D]``.
    """
    return library.vmf_rsample.default(mean_direction, kappa, labels, float(radius), as_int64(seed), int(offset))


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

    ``dt/dkappa`` from :func:`vmf_cosine_kappa_grad`: one fused kernel on every device
    (``torch.ops.penact.vmf_rsample_backward``, not differentiable; its torch-operator twin
    :func:`_rsample_backward_composite` is the test oracle and carries second derivatives). An
    unrequested gradient is returned as ``None``.
    """
    grad_mu, grad_kappa = library.vmf_rsample_backward.default(grad, sample, mean_direction, kappa, labels,
                                                            float(radius), need_mean_direction_grad, need_kappa_grad)
    return (grad_mu if need_mean_direction_grad else None, grad_kappa if need_kappa_grad else None)


def _rsample_backward_composite(grad: Tensor, sample: Tensor, mean_direction: Tensor, kappa: Tensor,
                                labels: Tensor, radius: float, need_mean_direction_grad: bool,
                                need_kappa_grad: bool) -> tuple[Tensor | None, Tensor | None]:
    """:func:`vmf_rsample_backward` in torch operators: the fused kernel's test oracle, and the
    backward under ``create_graph=True`` (its graph has second derivatives in mean_direction).
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
