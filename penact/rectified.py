"""The rectified family of a classifier's penultimate activations (SPEC section 2b): raw ReLU
outputs, non-negative with exact zeros, modeled where they live.

For a final layer ``z = W a + b`` and per-coordinate ``scale s_j > 0`` and ``zero_mass m_j >= 0``
shared by all classes, class ``y`` has, w.r.t. the base measure
``nu_j(da) = m_j delta_0(da) + 1[a > 0] exp(-a^2 / (2 s_j^2)) da`` on each coordinate,

    p(a | y) = exp(w_y . a - log Z_y),   log Z_y = sum_j log(m_j + s_j sqrt(2 pi) exp(t^2 / 2) Phi(t)),
    t = s_j w_yj,

and with ``log p(y) = b_y + log Z_y - logsumexp_k (b_k + log Z_k)`` the generative classifier is
exactly ``softmax(W a + b)`` for every ``a >= 0``. Coordinates are independent given ``y``: 0 with
probability ``m_j / z``, else ``Normal(s_j^2 w_yj, s_j^2)`` truncated to ``(0, inf)``.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from . import _rectified_ops as ops
from ._random import resolve_seed
from .base import ClassConditionalDistribution
from .distribution import _check_finite


def _coordinate_parameter(name: str, value, weight: Tensor, allow_zero: bool) -> Tensor:
    """A number or a ``[D]`` tensor, as a ``[D]`` tensor of weight's dtype and device."""
    dim = weight.shape[1]
    if isinstance(value, Tensor):
        if value.shape not in ((dim,), ()):
            raise ValueError(f"{name} must be a number or have shape [D] = [{dim}], got {tuple(value.shape)}")
        value = value.to(device=weight.device, dtype=weight.dtype).expand(dim)
    else:
        value = torch.full((dim,), float(value), dtype=weight.dtype, device=weight.device)
    detached = value.detach()
    _check_finite(name, detached)
    if torch.compiler.is_compiling():  # a data-dependent branch: skipped like _check_finite's
        return value
    if not bool((detached >= 0).all() if allow_zero else (detached > 0).all()):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, "
                         f"got a minimum of {float(detached.min()):.6g}")
    return value


class RectifiedDistribution(ClassConditionalDistribution):
    """The rectified GD pair of a final linear layer.

    Args:
        weight: ``[C, D]`` (``nn.Linear.weight``), float32 or float64, finite.
        bias: ``[C]`` or None (zeros).
        scale: ``s``, a positive number or ``[D]`` tensor: the width of the non-zero part.
        zero_mass: ``m``, a non-negative number or ``[D]`` tensor: the weight of the atom at zero
            (``m_j = 0``: coordinate ``j`` is never zero).

    Raises:
        ValueError: bad shapes or dtypes, non-finite parameters, ``scale <= 0`` or ``zero_mass < 0``.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None, scale: float | Tensor = 1.0,
                 zero_mass: float | Tensor = 1.0):
        if not isinstance(weight, Tensor) or weight.dim() != 2:
            raise ValueError(f"weight must be a tensor of shape [C, D], got {getattr(weight, 'shape', type(weight))}")
        if weight.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"weight must be float32 or float64, got {weight.dtype}")
        if weight.shape[0] < 1 or weight.shape[1] < 1:
            raise ValueError(f"weight must have at least one class and one coordinate, got {tuple(weight.shape)}")
        _check_finite("weight", weight.detach())
        if bias is None:
            bias = weight.new_zeros(weight.shape[0])
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape [C] = [{weight.shape[0]}], got {tuple(bias.shape)}")
        if bias.dtype != weight.dtype or bias.device != weight.device:
            raise ValueError(f"bias must match weight's dtype and device ({weight.dtype}, {weight.device}), "
                             f"got {bias.dtype}, {bias.device}")
        _check_finite("bias", bias.detach())
        self.weight = weight
        self.bias = bias
        self.scale = _coordinate_parameter("scale", scale, weight, allow_zero=False)
        self.zero_mass = _coordinate_parameter("zero_mass", zero_mass, weight, allow_zero=True)

    # -- constructors --------------------------------------------------------------------------

    @classmethod
    def from_linear(cls, linear: nn.Linear, scale: float | Tensor = 1.0,
                    zero_mass: float | Tensor = 1.0) -> "RectifiedDistribution":
        """The distribution of ``linear`` (its parameters are used as they are, with autograd)."""
        return cls(linear.weight, linear.bias, scale, zero_mass)

    @classmethod
    def fit(cls, linear: nn.Linear, activations: Tensor, labels: Tensor | None = None,
            max_iter: int = 1000) -> "RectifiedDistribution":
        """Fits ``scale`` and ``zero_mass`` to real activations ``[N, D]`` (the layer's input, ``>= 0``)
        by maximum likelihood, all coordinates at once.

        Given ``W`` the likelihood separates per coordinate, and in the natural parameters
        ``(log m_j, -1 / (2 s_j^2))`` each part is a concave exponential-family likelihood with the
        sufficient statistics ``(#{a_ij = 0}, sum_i a_ij^2)``: damped Newton steps (gradient and
        Hessian from the model's moments, ``rectified_coordinate_stats``) converge to its maximum,
        where the model's expected number of zeros and sum of squares match the data's. A coordinate
        never zero in the data gets ``zero_mass = 0``; one always zero (a dead unit) gets
        ``zero_mass = 1`` and a scale ``1e-6`` times the median of the others, so it is zero in all
        but a vanishing fraction of draws. ``labels: [N]`` default to the classifier's predictions.

        Raises:
            ValueError: bad shapes, negative or non-finite activations, labels out of range.
        """
        weight, bias = linear.weight.detach(), (linear.bias.detach() if linear.bias is not None else None)
        if activations.dim() != 2 or activations.shape[1] != weight.shape[1]:
            raise ValueError(f"activations must have shape [N, D] with D = {weight.shape[1]}, "
                             f"got {tuple(activations.shape)}")
        if activations.shape[0] == 0:
            raise ValueError("activations must hold at least one row to fit scale and zero_mass")
        a = activations.detach().to(device=weight.device, dtype=torch.float64)
        _check_finite("activations", a)
        if not bool((a >= 0).all()):
            raise ValueError("activations must be non-negative (ReLU outputs), got a minimum of "
                             f"{float(a.min()):.6g}")
        if labels is None:
            with torch.no_grad():
                labels = linear(a.to(weight.dtype)).argmax(dim=1)
        if labels.shape != (a.shape[0],):
            raise ValueError(f"labels must have shape [N] = [{a.shape[0]}], got {tuple(labels.shape)}")
        labels = labels.to(weight.device).long()
        if bool((labels < 0).any()) or bool((labels >= weight.shape[0]).any()):
            raise ValueError(f"labels must lie in [0, {weight.shape[0]})")
        scale, zero_mass = _fit_coordinates(weight.double(), a, labels, max_iter)
        return cls(linear.weight, linear.bias, scale.to(weight.dtype), zero_mass.to(weight.dtype))

    # -- parameters ----------------------------------------------------------------------------

    @property
    def log_partition(self) -> Tensor:
        """``log Z_y``, ``[C]`` (differentiable in weight, scale and zero_mass)."""
        return ops.rectified_log_partition(self.weight, self.scale, self.zero_mass)

    @property
    def log_prior(self) -> Tensor:
        """``log p(y) = b_y + log Z_y - logsumexp_k (b_k + log Z_k)``, ``[C]``."""
        return torch.log_softmax(self.bias + self.log_partition, dim=0)

    # -- sampling and densities ----------------------------------------------------------------

    def sample(self, labels: Tensor, seed: int | None = None, offset: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Draws ``a_i ~ p(a | labels[i])``, ``[N, D]``, non-negative with exact zeros.

        Row ``i`` depends only on ``(seed, offset + i, labels[i])`` and the parameters (SPEC
        section 4). With ``seed=None`` a fresh seed comes from ``generator`` (``torch.manual_seed``).
        """
        seed, offset = resolve_seed(seed, offset, generator)
        with torch.no_grad():
            return ops.rectified_sample(self.weight, self.scale, self.zero_mass, labels, seed, offset)

    def log_prob(self, x: Tensor, labels: Tensor) -> Tensor:
        """``log p(x_i | labels[i])`` for ``x: [N, D] >= 0``, ``[N]`` (Lebesgue measure on the
        non-zero coordinates, counting measure at zero)."""
        return ops.rectified_log_prob(x, self.weight, self.scale, self.zero_mass, self.log_partition, labels)

    def log_prob_all(self, x: Tensor) -> Tensor:
        """``log p(x_i | c)`` for every class, ``[N, C]`` (one matrix product)."""
        return ops.rectified_log_prob_all(x, self.weight, self.scale, self.zero_mass, self.log_partition)

    # -- closed forms --------------------------------------------------------------------------

    def mean(self) -> Tensor:
        """``E[a | y]``, ``[C, D]``."""
        return ops.rectified_coordinate_stats(self.weight, self.scale, self.zero_mass)[2]

    def zero_probability(self) -> Tensor:
        """``P(a_j = 0 | y)``, ``[C, D]``."""
        return ops.rectified_coordinate_stats(self.weight, self.scale, self.zero_mass)[1]

    def __repr__(self) -> str:
        return (f"RectifiedDistribution(num_classes={self.num_classes}, dim={self.dim}, "
                f"dtype={self.weight.dtype}, device={self.weight.device})")


def _fit_coordinates(weight: Tensor, a: Tensor, labels: Tensor, max_iter: int) -> tuple[Tensor, Tensor]:
    """Maximum-likelihood ``(scale, zero_mass)``, ``[D]`` each, float64, for fixed ``weight [C, D]``.

    Per coordinate, with ``u = log m``, ``v = -1 / (2 s^2)``, class counts ``n_c``, ``n0`` zeros and
    ``S2 = sum_i a_i^2``, the mean negative log-likelihood (up to a constant) is
    ``f = (sum_c n_c log z_c(u, v) - n0 u - S2 v) / N``, convex, with gradient
    ``(sum_c n_c P_c(a = 0) - n0, sum_c n_c E_c[a^2] - S2) / N`` and Hessian the class-weighted
    covariance of ``([a = 0], a^2)``. Newton steps with backtracking, every coordinate at once.
    """
    num, dim = a.shape
    counts = torch.bincount(labels, minlength=weight.shape[0]).double()[:, None] / num
    zero_count = (a == 0).double().sum(dim=0) / num
    sum_sq = (a * a).sum(dim=0) / num
    nonzero_count = 1.0 - zero_count
    live = nonzero_count > 0
    has_atom = zero_count > 0
    # Start from the moments of a centred half-normal: E[a^2 | a > 0] = s^2, P(0) / P(> 0) = m / (s R(0)).
    scale0 = torch.where(live, torch.sqrt(sum_sq / nonzero_count.clamp_min(1e-300)), torch.ones_like(sum_sq))
    u = torch.where(has_atom & live, torch.log(zero_count / nonzero_count.clamp_min(1e-300) * scale0
                                               * math.sqrt(math.pi / 2)), torch.zeros_like(sum_sq))
    v = -0.5 / scale0**2

    def parameters(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        scale = torch.sqrt(-0.5 / v)
        zero_mass = torch.where(has_atom, torch.exp(u), torch.zeros_like(u))
        return scale, zero_mass

    def objective(stats: Tensor, u: Tensor, v: Tensor) -> Tensor:
        return (counts * stats[0]).sum(dim=0) - zero_count * torch.where(has_atom, u, torch.zeros_like(u)) - sum_sq * v

    stats = ops.rectified_coordinate_stats(weight, *parameters(u, v))
    value = objective(stats, u, v)
    done = ~live
    for _ in range(max_iter):
        _, p0, _, m2, m4 = stats
        grad_u = (counts * p0).sum(dim=0) - zero_count
        grad_v = (counts * m2).sum(dim=0) - sum_sq
        h_uu = (counts * p0 * (1 - p0)).sum(dim=0)
        h_uv = -(counts * p0 * m2).sum(dim=0)
        h_vv = (counts * (m4 - m2 * m2)).sum(dim=0)
        det = h_uu * h_vv - h_uv * h_uv
        # The 2 x 2 Newton step; a coordinate without zeros keeps m = 0 and moves in v alone.
        step_u = torch.where(has_atom, -(h_vv * grad_u - h_uv * grad_v) / det, torch.zeros_like(u))
        step_v = torch.where(has_atom, -(h_uu * grad_v - h_uv * grad_u) / det, -grad_v / h_vv)
        decrement = -(grad_u * step_u + grad_v * step_v)  # the squared Newton decrement, >= 0
        done |= ~(decrement > 1e-20)  # converged to ~1e-10 in the parameters (also catches NaN)
        if bool(done.all()):
            break
        # Far from the optimum a full step can be huge: at most 2 in log m and half of |v| (so v
        # stays negative), then backtracking (Armijo, with slack for rounding in f), per coordinate.
        step = torch.minimum(2.0 / step_u.abs().clamp_min(1e-300), 0.5 * v.abs() / step_v.abs().clamp_min(1e-300))
        step = torch.where(done, torch.zeros_like(u), step.clamp(max=1.0))
        slack = 1e-13 * value.abs()
        for _ in range(50):
            u_new, v_new = u + step * step_u, v + step * step_v
            stats_new = ops.rectified_coordinate_stats(weight, *parameters(u_new, v_new))
            armijo = objective(stats_new, u_new, v_new) <= value - 1e-4 * step * decrement + slack
            # Near the optimum the decrease drops below the rounding of f and Armijo cannot see it;
            # a step that shrinks the Newton decrement (measured in the old metric) still counts.
            grad_u_new = (counts * stats_new[1]).sum(dim=0) - zero_count
            grad_v_new = (counts * stats_new[3]).sum(dim=0) - sum_sq
            new_step_u = torch.where(has_atom, -(h_vv * grad_u_new - h_uv * grad_v_new) / det, torch.zeros_like(u))
            new_step_v = torch.where(has_atom, -(h_uu * grad_v_new - h_uv * grad_u_new) / det, -grad_v_new / h_vv)
            accepted = armijo | (-(grad_u_new * new_step_u + grad_v_new * new_step_v) < 0.25 * decrement)
            if bool((accepted | (step == 0)).all()):
                break
            step = torch.where(accepted | (step < 1e-9), step * accepted, 0.5 * step)
        done |= step == 0  # no decrease left to find: at the optimum up to rounding
        u, v = u + step * step_u, v + step * step_v
        stats = ops.rectified_coordinate_stats(weight, *parameters(u, v))
        value = objective(stats, u, v)
    if not bool(done.all()):
        warnings.warn(f"RectifiedDistribution.fit: {int((~done).sum())} coordinates did not converge in {max_iter} "
                      "Newton steps; raise max_iter", RuntimeWarning, stacklevel=3)
    scale, zero_mass = parameters(u, v)
    if bool(live.any()):
        dead_scale = 1e-6 * scale[live].median()
    else:
        dead_scale = torch.tensor(1e-6, dtype=scale.dtype, device=scale.device)
    scale = torch.where(live, scale, dead_scale)
    zero_mass = torch.where(live, zero_mass, torch.ones_like(zero_mass))
    return scale, zero_mass
