"""The rectified family's operators (docs/model.md, "The rectified family"): typed wrappers over
``torch.ops.penact.rectified_*`` (schemas and argument checks in ``csrc/rectified.cpp``), their fake
kernels for ``torch.compile``, and their backward passes.

Per coordinate ``j``, with ``scale s_j > 0`` and ``zero_mass m_j >= 0``, and ``t = s_j w_yj``:

    log z(w; s, m) = log(m + s sqrt(2 pi) exp(t^2 / 2) Phi(t)),   log Z_y = sum_j log z(w_yj; s_j, m_j)
    log p(a | y)   = w_y . a - sum_{a_j > 0} a_j^2 / (2 s_j^2) + sum_{a_j = 0} log m_j - log Z_y

(Lebesgue measure on the non-zero coordinates, counting measure at zero).

Differentiable sampling (``rectified_rsample``): the forward is ``rectified_sample``, unchanged. The
backward differentiates each non-zero coordinate by implicit reparameterization of its mixed CDF
``G(a) = P0 + (1 - P0) F(a)`` (``P0 = m / z``, ``F`` the truncated normal's CDF): ``a`` moves with
``G(a)`` held fixed, ``da/dtheta = -(dG/dtheta)(a) / g(a)``; a coordinate at the atom does not move.
With ``x = a / s - t``, the Mills ratio ``R`` and ``q = R(x) / z`` (``<= 1 / s``),

    da/dw = s^2 (1 - s q + t m q),   da/dm = -s q,   da/ds = a / s + t (1 - s q) + (t^2 + 1) m q,

(the last is ``a / s + (w / s) da/dw - (m / s) da/dm``: ``a / s`` depends on ``(t, m / s)`` only).
For every ``f`` continuous at 0 this is unbiased, ``E[f'(a) da/dtheta] = d/dtheta E[f(a)]``: the
inverse of ``G`` jumps from the atom to ``0+``, so the boundary term ``(f(0) - f(0+)) dP0/dtheta``
vanishes. It is *not* unbiased for ``f`` discontinuous at 0, e.g. ``1[a = 0]``, whose expectation
``P0`` moves while every draw's gradient is 0 (use ``zero_probability`` for that).
"""
from __future__ import annotations


import torch
from torch import Tensor

from ._library import as_int64, library

__all__ = [
    "rectified_log_partition",
    "rectified_coordinate_stats",
    "rectified_sample",
    "rectified_log_prob",
    "rectified_log_prob_all",
    "rectified_rsample",
    "rectified_mean",
]


def rectified_log_partition(weight: Tensor, scale: Tensor, zero_mass: Tensor) -> Tensor:
    r"""``log Z_y = sum_j log z(w_yj; s_j, m_j)``, ``[C]``, each term stable for ``s w`` in
    [-1e4, 1e4] (computed in float64 whatever the dtype).

    ``weight: [C, D]``, ``scale: [D]`` (finite, > 0), ``zero_mass: [D]`` (finite, >= 0).
    Differentiable in all three: ``d/dw_yj = E[a_j | y]``, ``d/ds_j = sum_y E[a_j^2 | y] / s_j^3``,
    ``d/dm_j = sum_y 1 / z(w_yj; s_j, m_j)``.
    """
    return library.rectified_log_partition.default(weight, scale, zero_mass)


def rectified_coordinate_stats(weight: Tensor, scale: Tensor, zero_mass: Tensor) -> Tensor:
    r"""Per class and coordinate, ``[5, C, D]``: ``log z``, ``P(a_j = 0 | y)``, ``E[a_j | y]``,
    ``E[a_j^2 | y]``, ``E[a_j^4 | y]`` (float64 inside; the moments of the truncated normal come
    from products of continued-fraction tails, free of cancellation in the far tail). Not
    differentiable (the inputs are detached).
    """
    return library.rectified_coordinate_stats.default(weight.detach(), scale.detach(), zero_mass.detach())


def rectified_sample(weight: Tensor, scale: Tensor, zero_mass: Tensor, labels: Tensor, seed: int,
                     offset: int) -> Tensor:
    r"""Draws ``a_i ~ p(a | labels[i])``, ``[N, D]`` in weight's dtype: coordinate ``j`` is 0 with
    probability ``m_j / z(w_yj)``, else ``Normal(s_j^2 w_yj, s_j^2)`` truncated to ``(0, inf)``
    (inverse CDF, or Robert's exponential rejection sampler when ``s_j w_yj < -2``, exact however
    far out). ``labels: [N]`` in ``[0, C)``. Row ``i`` draws only from the Philox streams with
    counter ``offset + i`` (stream layout in ``csrc/core/rectified.h``). Not differentiable.
    """
    return library.rectified_sample.default(weight.detach(), scale.detach(), zero_mass.detach(), labels,
                                         as_int64(seed), int(offset))


def rectified_log_prob(a: Tensor, weight: Tensor, scale: Tensor, zero_mass: Tensor, log_partition: Tensor,
                       labels: Tensor) -> Tensor:
    r"""``log p(a_i | y_i)``, ``[N]``, in one fused pass over ``a: [N, D]`` (non-negative; float16 or
    bfloat16 allowed with float32 weight). ``log_partition: [C]`` (``rectified_log_partition``),
    ``labels: [N]``. Differentiable in ``a``, ``weight``, ``scale``, ``zero_mass`` and
    ``log_partition``; at ``a_j = 0`` the derivative in ``a_j`` is the one-sided ``w_yj``.
    """
    return library.rectified_log_prob.default(a, weight, scale, zero_mass, log_partition, labels)


def rectified_log_prob_all(a: Tensor, weight: Tensor, scale: Tensor, zero_mass: Tensor,
                           log_partition: Tensor) -> Tensor:
    r"""``[N, C]`` log-densities of every row under every class: one matrix product ``a W^T``, then
    the row's base-measure term and ``-log Z_c``. Differentiable like ``rectified_log_prob``."""
    return library.rectified_log_prob_all.default(a, weight, scale, zero_mass, log_partition)


def rectified_rsample(weight: Tensor, scale: Tensor, zero_mass: Tensor, labels: Tensor, seed: int,
                      offset: int) -> Tensor:
    r""":func:`rectified_sample` (the same values for the same arguments, ``[N, D]``), differentiable
    in ``weight: [C, D]``, ``scale: [D]`` and ``zero_mass: [D]`` by implicit reparameterization (see
    the module's docstring: unbiased for functions continuous at 0). ``labels: [N]``. The gradients
    are computed in float64 and summed over the rows of each class (weight) or over all rows (scale,
    zero_mass). Second derivatives raise ``NotImplementedError``.
    """
    return library.rectified_rsample.default(weight, scale, zero_mass, labels, as_int64(seed), int(offset))


def rectified_mean(weight: Tensor, scale: Tensor, zero_mass: Tensor) -> Tensor:
    r"""``E[a_j | y] = d log z(w_yj) / dw_yj``, ``[C, D]`` (``rectified_coordinate_stats[2]``),
    differentiable: ``d/dw = Var[a_j | y]``, ``d/ds_j = Cov(a_j, a_j^2 | y) / s_j^3``,
    ``d/dm_j = -E[a_j | y] / z``. Second derivatives raise ``NotImplementedError``.

    Computed from the float64 moments: ``Var = E[a^2] - E[a]^2`` and ``E[a^3] = s^2 (w E[a^2] +
    2 E[a])`` (integration by parts) lose about ``t^2`` ulps where ``|t| = |s w|`` is large
    (relative error ~1e-13 at ``|t| = 30``).
    """
    return library.rectified_mean.default(weight, scale, zero_mass)


# ---------------------------------------------------------------------------------------------
# Fake kernels: shapes and dtypes only, for torch.compile and meta tensors.


@torch.library.register_fake("penact::rectified_log_partition")
def _(weight, scale, zero_mass):
    return weight.new_empty(weight.shape[0])


@torch.library.register_fake("penact::rectified_coordinate_stats")
def _(weight, scale, zero_mass):
    return weight.new_empty(5, weight.shape[0], weight.shape[1])


@torch.library.register_fake("penact::rectified_sample")
def _(weight, scale, zero_mass, labels, seed, offset):
    return weight.new_empty(labels.shape[0], weight.shape[1])


@torch.library.register_fake("penact::rectified_log_prob")
def _(a, weight, scale, zero_mass, log_partition, labels):
    return weight.new_empty(a.shape[0])


@torch.library.register_fake("penact::rectified_log_prob_backward")
def _(grad, a, weight, scale, zero_mass, labels, need_a_grad, need_weight_grad, need_scale_grad,
      need_zero_mass_grad):
    return (torch.empty_like(a) if need_a_grad else a.new_empty(0),
            torch.empty_like(weight) if need_weight_grad else weight.new_empty(0),
            torch.empty_like(scale) if need_scale_grad else scale.new_empty(0),
            torch.empty_like(zero_mass) if need_zero_mass_grad else zero_mass.new_empty(0))


@torch.library.register_fake("penact::rectified_log_prob_all")
def _(a, weight, scale, zero_mass, log_partition):
    return weight.new_empty(a.shape[0], weight.shape[0])


# ---------------------------------------------------------------------------------------------
# Backward passes.


def _setup_log_partition(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


class _RefuseSecondDerivative(torch.autograd.Function):
    """``value``, attached to ``inputs`` by a node whose backward raises."""

    @staticmethod
    def forward(ctx, value, *inputs):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("penact: second derivatives of rectified_log_partition in scale or zero_mass "
                                  "are not implemented (in weight they are: Var[a])")


def _log_partition_backward(ctx, grad):
    # The gradients of log z are the model's own moments: E[a], E[a^2] / s^3 and 1 / z.
    weight, scale, zero_mass = ctx.saved_tensors
    g = grad[:, None]
    log_z, _, mean, second_moment, _ = rectified_coordinate_stats(weight, scale, zero_mass)
    if torch.is_grad_enabled():  # create_graph=True: E[a] has a differentiable form (rectified_mean), the
        mean = rectified_mean(weight, scale, zero_mass)  # other moments are constants: refuse through them
        second_moment, log_z = (_RefuseSecondDerivative.apply(t, weight, scale, zero_mass) for t in (second_moment, log_z))
    grad_weight = grad_scale = grad_zero_mass = None
    if ctx.needs_input_grad[0]:
        grad_weight = g * mean
    if ctx.needs_input_grad[1]:
        grad_scale = (g * second_moment).sum(dim=0) / scale**3
    if ctx.needs_input_grad[2]:
        grad_zero_mass = (g * torch.exp(-log_z)).sum(dim=0)
    return grad_weight, grad_scale, grad_zero_mass


def _setup_log_prob(ctx, inputs, output):
    a, weight, scale, zero_mass, log_partition, labels = inputs
    ctx.num_classes = weight.shape[0]
    ctx.save_for_backward(a, weight, scale, zero_mass, labels)


def _log_prob_backward(ctx, grad):
    a, weight, scale, zero_mass, labels = ctx.saved_tensors
    need = ctx.needs_input_grad
    grad_a, grad_weight, grad_scale, grad_zero_mass = library.rectified_log_prob_backward.default(
        grad.contiguous(), a, weight, scale, zero_mass, labels, need[0], need[1], need[2], need[3])
    grad_log_partition = None
    if need[4]:
        grad_log_partition = -grad.new_zeros(ctx.num_classes).index_add_(0, labels.long(), grad)
    return (grad_a if need[0] else None, grad_weight if need[1] else None, grad_scale if need[2] else None,
            grad_zero_mass if need[3] else None, grad_log_partition, None)


def _setup_log_prob_all(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])


def _log_prob_all_backward(ctx, grad):
    # out_ic = a_i . w_c + B(a_i) - L_c with B(a) = sum_j [a_j > 0] (-a_j^2 / (2 s_j^2)) + [a_j = 0] log m_j.
    # With G = grad and r_i = sum_c G_ic: dL/da = G W - r a / s^2, dL/dW = G^T a, dL/dL = -sum_i G_i,
    # dL/ds = sum_i r_i a_i^2 / s^3, dL/dm = sum_i r_i [a_i = 0] / m (0 where no row has a zero).
    a, weight, scale, zero_mass = ctx.saved_tensors
    aw = a.to(weight.dtype)
    row_total = grad.sum(dim=1, keepdim=True)
    grad_a = grad_weight = grad_scale = grad_zero_mass = grad_log_partition = None
    if ctx.needs_input_grad[0]:
        grad_a = (grad @ weight - row_total * aw / scale**2).to(a.dtype)
    if ctx.needs_input_grad[1]:
        grad_weight = grad.t() @ aw
    if ctx.needs_input_grad[2]:
        grad_scale = (row_total * aw * aw).sum(dim=0) / scale**3
    if ctx.needs_input_grad[3]:
        at_zero = (row_total * (aw == 0)).sum(dim=0)
        grad_zero_mass = torch.where(at_zero == 0, torch.zeros_like(at_zero), at_zero / zero_mass)
    if ctx.needs_input_grad[4]:
        grad_log_partition = -grad.sum(dim=0)
    return grad_a, grad_weight, grad_scale, grad_zero_mass, grad_log_partition


torch.library.register_autograd("penact::rectified_log_partition", _log_partition_backward,
                                setup_context=_setup_log_partition)
torch.library.register_autograd("penact::rectified_log_prob", _log_prob_backward, setup_context=_setup_log_prob)
torch.library.register_autograd("penact::rectified_log_prob_all", _log_prob_all_backward,
                                setup_context=_setup_log_prob_all)


# ---------------------------------------------------------------------------------------------
# Differentiable sampling and the differentiable mean (composites in csrc/rectified.cpp over the
# kernels above). Their backward passes are operators of their own (rsample's a fused kernel on
# every device, the mean's a float64 composite of torch operators); their autograd refuses, so
# that a second derivative raises instead of silently treating the float64 moments as constants.


@torch.library.register_fake("penact::rectified_rsample")
def _(weight, scale, zero_mass, labels, seed, offset):
    return weight.new_empty(labels.shape[0], weight.shape[1])


@torch.library.register_fake("penact::rectified_rsample_backward")
def _(grad, sample, weight, scale, zero_mass, labels):
    return torch.empty_like(weight), torch.empty_like(scale), torch.empty_like(zero_mass)


@torch.library.register_fake("penact::rectified_mean")
def _(weight, scale, zero_mass):
    return torch.empty_like(weight)


@torch.library.impl("penact::rectified_mean_backward", "CompositeExplicitAutograd")
def _rectified_mean_backward(grad: Tensor, weight: Tensor, scale: Tensor,
                             zero_mass: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    # E[a] = d log z / dw, so its derivatives are second derivatives of log z: Var[a] in w,
    # Cov(a, a^2) / s^3 in s (E[a^2] = s^3 d log z / ds), d(1 / z)/dw = -E[a] / z in m.
    w64, s, m = weight.double(), scale.double(), zero_mass.double()
    log_z, _, mean, second, _ = rectified_coordinate_stats(w64, s, m)
    g = grad.double()
    third = s * s * (w64 * second + 2 * mean)
    grad_weight = g * (second - mean * mean)
    grad_scale = (g * (third - mean * second)).sum(dim=0) / s**3
    grad_zero_mass = -(g * mean * torch.exp(-log_z)).sum(dim=0)
    return grad_weight.to(weight.dtype), grad_scale.to(scale.dtype), grad_zero_mass.to(zero_mass.dtype)


@torch.library.register_fake("penact::rectified_mean_backward")
def _(grad, weight, scale, zero_mass):
    return torch.empty_like(weight), torch.empty_like(scale), torch.empty_like(zero_mass)


def _setup_rsample(ctx, inputs, output):
    weight, scale, zero_mass, labels, seed, offset = inputs
    ctx.save_for_backward(weight, scale, zero_mass, labels, output)


def _rsample_backward(ctx, grad):
    weight, scale, zero_mass, labels, sample = ctx.saved_tensors
    need = ctx.needs_input_grad
    grads = library.rectified_rsample_backward.default(grad, sample, weight, scale, zero_mass, labels)
    return tuple(g if needed else None for g, needed in zip(grads, need[:3])) + (None, None, None)


def _setup_mean(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _mean_backward(ctx, grad):
    grads = library.rectified_mean_backward.default(grad, *ctx.saved_tensors)
    return tuple(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad))


def _refuse_second_derivative(ctx, *grads):
    raise NotImplementedError("penact: second derivatives of rectified_rsample and rectified_mean (derivatives "
                              "of their float64 backward passes) are not implemented")


torch.library.register_autograd("penact::rectified_rsample", _rsample_backward, setup_context=_setup_rsample)
torch.library.register_autograd("penact::rectified_mean", _mean_backward, setup_context=_setup_mean)
for _backward_op in ("penact::rectified_rsample_backward", "penact::rectified_mean_backward"):
    torch.library.register_autograd(_backward_op, _refuse_second_derivative)
