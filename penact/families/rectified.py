"""The rectified family of a classifier's penultimate activations (docs/model.md): raw ReLU
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

import torch
from torch import Tensor, nn

from .. import ops
from .._random import resolve_seed
from .base import ClassConditionalDistribution, check_finite, checked_layer
from .registry import register_family


def _coordinate_parameter(name: str, value, weight: Tensor, allow_zero: bool, validate_args: bool) -> Tensor:
    """A number or a ``[D]`` tensor, as a ``[D]`` tensor of weight's dtype and device (its values
    checked with ``validate_args``)."""
    dim = weight.shape[1]
    if isinstance(value, Tensor):
        if value.shape not in ((dim,), ()):
            raise ValueError(f"{name} must be a number or have shape [D] = [{dim}], got {tuple(value.shape)}")
        value = value.to(device=weight.device, dtype=weight.dtype).expand(dim)
    else:
        value = torch.full((dim,), float(value), dtype=weight.dtype, device=weight.device)
    if not validate_args or torch.compiler.is_compiling():  # a data-dependent branch, like check_finite's
        return value
    detached = value.detach()
    check_finite(name, detached)
    if not bool((detached >= 0).all() if allow_zero else (detached > 0).all()):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, "
                         f"got a minimum of {float(detached.min()):.6g}")
    return value


@register_family
class RectifiedDistribution(ClassConditionalDistribution):
    """The rectified GD pair of a final linear layer.

    Args:
        weight: ``[C, D]`` (``nn.Linear.weight``), float32 or float64, finite.
        bias: ``[C]`` or None (zeros).
        scale: ``s``, a positive number or ``[D]`` tensor: the width of the non-zero part.
        zero_mass: ``m``, a non-negative number or ``[D]`` tensor: the weight of the atom at zero
            (``m_j = 0``: coordinate ``j`` is never zero).
        validate_args: check the values of every parameter (a check that synchronizes with a GPU).

    Raises:
        ValueError: bad shapes or dtypes, non-finite parameters, ``scale <= 0`` or ``zero_mass < 0``.
    """

    name = "rectified"
    default_match = "mse"  # samples live where raw activations live: match them coordinate by coordinate

    def __init__(self, weight: Tensor, bias: Tensor | None = None, scale: float | Tensor = 1.0,
                 zero_mass: float | Tensor = 1.0, validate_args: bool = True):
        self.weight, self.bias = checked_layer(weight, bias, min_dim=1, validate_args=validate_args)
        self.scale = _coordinate_parameter("scale", scale, weight, allow_zero=False, validate_args=validate_args)
        self.zero_mass = _coordinate_parameter("zero_mass", zero_mass, weight, allow_zero=True,
                                               validate_args=validate_args)

    # -- constructors --------------------------------------------------------------------------

    @classmethod
    def from_linear(cls, linear: nn.Linear, scale: float | Tensor = 1.0,
                    zero_mass: float | Tensor = 1.0) -> "RectifiedDistribution":
        """The distribution of ``linear`` (its parameters are used as they are, with autograd)."""
        return cls(linear.weight, linear.bias, scale, zero_mass)

    @classmethod
    def fit(cls, linear: nn.Linear, activations: Tensor, labels: Tensor | None = None,
            max_iter: int = 100) -> "RectifiedDistribution":
        """Fits ``scale`` and ``zero_mass`` to real activations ``[N, D]`` (the layer's input, ``>= 0``)
        by maximum likelihood, all coordinates at once.

        Given ``W`` the likelihood separates per coordinate, and in the natural parameters
        ``(log m_j, -1 / (2 s_j^2))`` each part is a concave exponential-family likelihood with the
        sufficient statistics ``(#{a_ij = 0}, sum_i a_ij^2)``; its maximum is where the model's
        expected number of zeros and sum of squares match the data's. For each scale the best zero
        mass solves the first equation exactly (a monotone sum of logistic functions of ``log m``);
        the second, along that curve, is monotone in the scale: safeguarded Newton steps inside a
        shrinking bracket, every coordinate at once (``_fit_coordinates``). A coordinate never zero
        in the data gets ``zero_mass = 0``; one always zero (a dead unit) gets ``zero_mass = 1`` and
        a scale ``1e-6`` times the median of the others, so it is zero in all but a vanishing
        fraction of draws. ``labels: [N]`` default to the classifier's predictions.

        Raises:
            ValueError: bad shapes, negative or non-finite activations, labels out of range.
        """
        weight = linear.weight.detach()
        if activations.dim() != 2 or activations.shape[1] != weight.shape[1]:
            raise ValueError(f"activations must have shape [N, D] with D = {weight.shape[1]}, "
                             f"got {tuple(activations.shape)}")
        if activations.shape[0] == 0:
            raise ValueError("activations must hold at least one row to fit scale and zero_mass")
        if not activations.is_floating_point():
            raise ValueError(f"activations must be a floating point tensor, got {activations.dtype}")
        a = activations.detach().to(weight.device)
        lowest, highest = torch.aminmax(a)  # one pass; NaN fails both comparisons
        if not (bool(lowest >= 0) and bool(highest < math.inf)):
            raise ValueError("activations must be finite and non-negative (ReLU outputs), got values from "
                             f"{float(lowest):.6g} to {float(highest):.6g}")
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

    def support(self, activations: Tensor) -> Tensor:
        """``a`` itself: the rectified family lives where ReLU activations live."""
        return activations

    # -- sampling and densities ----------------------------------------------------------------

    def rsample(self, labels: Tensor, seed: int | None = None, offset: int | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """Draws ``a_i ~ p(a | labels[i])``, ``[N, D]``, non-negative with exact zeros (:meth:`sample`'s
        values), differentiable in ``weight``, ``scale`` and ``zero_mass`` by implicit
        reparameterization of each coordinate's mixed CDF (:mod:`penact.ops.rectified`): unbiased for
        ``d/dtheta E[f(a)]`` when ``f`` is continuous at 0, not for ``f`` that sees the atom itself
        (such as ``1[a = 0]``).
        """
        seed, offset = resolve_seed(seed, offset, generator)
        return ops.rectified_rsample(self.weight, self.scale, self.zero_mass, labels, seed, offset)

    def log_prob(self, x: Tensor, labels: Tensor) -> Tensor:
        """``log p(x_i | labels[i])`` for ``x: [N, D] >= 0``, ``[N]`` (Lebesgue measure on the
        non-zero coordinates, counting measure at zero)."""
        return ops.rectified_log_prob(x, self.weight, self.scale, self.zero_mass, self.log_partition, labels)

    def _log_prob_all(self, x: Tensor, log_partition: Tensor) -> Tensor:
        """``log p(x_i | c)`` for every class, ``[N, C]`` (one matrix product)."""
        return ops.rectified_log_prob_all(x, self.weight, self.scale, self.zero_mass, log_partition)

    # -- closed forms --------------------------------------------------------------------------

    def mean(self) -> Tensor:
        """``E[a | y]``, ``[C, D]`` (differentiable in weight, scale and zero_mass)."""
        return ops.rectified_mean(self.weight, self.scale, self.zero_mass)

    def zero_probability(self) -> Tensor:
        """``P(a_j = 0 | y)``, ``[C, D]``."""
        return ops.rectified_coordinate_stats(self.weight, self.scale, self.zero_mass)[1]

    def entropy(self) -> Tensor:
        """Entropy of ``p(. | y)`` per class w.r.t. the base measure ``nu`` (docs/model.md, section 3: ``m_j``
        times counting measure at 0 plus the Gaussian-weighted Lebesgue measure on ``(0, inf)``, not
        plain Lebesgue measure): ``-E[w_y . a - log Z_y] = log Z_y - w_y . E[a | y]``, ``[C]``."""
        return self.log_partition - (self.weight * self.mean()).sum(dim=1)

    def kl(self, other: "RectifiedDistribution") -> Tensor:
        """``KL(p(. | y) || other(. | y))`` per class, ``[C]``, for distributions that share ``scale`` and
        ``zero_mass`` (the same base measure, so the KL is that of two exponential families):
        ``sum_j (w_yj - w'_yj) E[a_j | y] - log Z_y + log Z'_y``. Differentiable in both weights (``d/dw =
        Var[a | y] (w - w')``, ``d/dw' = E'[a | y] - E[a | y]``) and in the shared scale and zero mass.

        Raises:
            ValueError: ``other``'s weight shape, dtype or device, or its scale or zero_mass, differ.
        """
        if (other.weight.shape, other.weight.dtype, other.weight.device) != (
                self.weight.shape, self.weight.dtype, self.weight.device):
            raise ValueError(f"other must have weight of shape {tuple(self.weight.shape)}, dtype {self.weight.dtype} "
                             f"and device {self.weight.device}, got {tuple(other.weight.shape)}, "
                             f"{other.weight.dtype}, {other.weight.device}")
        for name in ("scale", "zero_mass"):
            if torch.compiler.is_compiling():  # a data-dependent branch: skipped like check_finite's
                break
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is not theirs and not torch.equal(mine.detach(), theirs.detach()):
                raise ValueError(f"other must have the same {name} (the KL in closed form needs a shared base "
                                 "measure)")
        return (((self.weight - other.weight) * self.mean()).sum(dim=1) - self.log_partition
                + other.log_partition)

    # -- generator transfer --------------------------------------------------------------------

    @property
    def centred_weight_size(self) -> int:
        return self.dim  # natural parameters

    def centred_weight(self, activations: Tensor, correction: Tensor) -> Tensor:
        """The natural parameter whose truncated normals are centred at the activation, ``a / s^2``,
        plus ``correction``; ``t = s w = a / s`` is capped at 30 (a unit the fit found dead has a
        tiny scale: an activation there would overflow)."""
        return (activations / self.scale).clamp(max=30.0) / self.scale + correction

    def latent_prior(self) -> "RectifiedDistribution":
        """:meth:`detach` with ``P(a_j = 0)`` floored at about 1e-6 (``m_j >= 1e-6 s_j``): a unit never
        zero in the fit data has zero mass 0, and a generated activation's zero there would have
        log-density -inf."""
        prior = self.detach()
        prior.zero_mass = torch.maximum(prior.zero_mass, 1e-6 * prior.scale)
        return prior

    def __repr__(self) -> str:
        return (f"RectifiedDistribution(num_classes={self.num_classes}, dim={self.dim}, "
                f"dtype={self.weight.dtype}, device={self.weight.device})")


def _sufficient_statistics(a: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per coordinate, ``#{a_ij = 0}`` and ``sum_i a_ij^2`` (float64, ``[D]`` each): the gradient of
    ``sum_i log p(a_i | y_i)`` in ``(m, s)`` at ``m = s = 1`` with log Z held fixed, i.e. one fused
    pass of ``rectified_log_prob`` and of its backward, which sums columns in blocks of rows (torch's
    column reductions of an ``[N, D]`` tensor are several times slower)."""
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    a = a if a.dtype in (dtype, torch.float16, torch.bfloat16) else a.to(dtype)
    dim = a.shape[1]
    ones = [torch.ones(dim, dtype=dtype, device=a.device, requires_grad=True) for _ in range(2)]
    with torch.enable_grad():
        log_prob = ops.rectified_log_prob(a, torch.zeros(num_classes, dim, dtype=dtype, device=a.device), *ones,
                                          torch.zeros(num_classes, dtype=dtype, device=a.device), labels)
        sum_sq, zeros = torch.autograd.grad(log_prob.sum(), ones)
    return zeros.double(), sum_sq.double()


def _fit_coordinates(weight: Tensor, a: Tensor, labels: Tensor, max_iter: int) -> tuple[Tensor, Tensor]:
    """Maximum-likelihood ``(scale, zero_mass)``, ``[D]`` each, float64, for fixed ``weight [C, D]``
    (float64) and activations ``a: [N, D]`` (any float dtype; sums accumulate in float64).

    Per coordinate, with class shares ``n_c``, share of zeros ``n0`` and mean square ``S2`` of the
    data, and the continuous part's mass ``g_c = s R(-s w_c)`` (log z at m = 0), the likelihood
    equations in ``u = log m`` and ``v = -1 / (2 s^2)`` are

        sum_c n_c sigmoid(u - log g_c) = n0,        sum_c n_c (1 - P_c(a = 0)) E_c[a^2 | a > 0] = S2.

    The first fixes ``u*(v)`` (its left side rises from 0 to 1 in u; root bracketed by
    ``min / max_c log g_c + logit(n0)``). The second, along ``u*(v)``, is the derivative of the
    concave profile likelihood, so it rises in v from -S2 to +inf: its root is bracketed in
    ``log s`` and found by Newton steps that fall back to regula falsi, with the derivative
    ``h_vv - h_uv^2 / h_uu`` (the covariance of ``([a = 0], a^2)`` under the model, from
    ``rectified_coordinate_stats`` at ``m = 0``, which gives log g and the conditional moments).
    """
    num, dim = a.shape
    counts = torch.bincount(labels, minlength=weight.shape[0]).double()[:, None] / num
    zeros, sum_sq = _sufficient_statistics(a, labels, weight.shape[0])
    zero_share, sum_sq = zeros / num, sum_sq / num
    live = zero_share < 1
    has_atom = live & (zero_share > 0)
    logit_zero = torch.log(zero_share) - torch.log1p(-zero_share)

    def best_log_mass(log_slab: Tensor, start: Tensor) -> Tensor:
        """u*(v) per coordinate (-inf without zeros): Newton steps from `start` (the previous root,
        or the class-weighted mean of log g + logit(n0)), kept inside a shrinking bracket."""
        low = log_slab.min(dim=0).values + logit_zero
        high = log_slab.max(dim=0).values + logit_zero
        mean = (counts * log_slab).sum(dim=0) + logit_zero
        u = torch.where(torch.isfinite(start) & (start > low) & (start < high), start, mean)
        u = torch.where(has_atom, u, torch.zeros_like(u))
        for _ in range(100):
            p_zero = torch.sigmoid(u - log_slab)
            excess = (counts * p_zero).sum(dim=0) - zero_share
            slope = (counts * p_zero * (1 - p_zero)).sum(dim=0)
            low = torch.where(excess < 0, u, low)
            high = torch.where(excess > 0, u, high)
            newton = u - excess / slope
            u_next = torch.where((newton >= low) & (newton <= high), newton, 0.5 * (low + high))
            u_next = torch.where(excess == 0, u, u_next)  # a root (it may sit on the bracket's end)
            done = ((u_next - u).abs() <= 1e-13 * (1 + u.abs())) | ~has_atom
            u = torch.where(has_atom, u_next, u)
            if bool(done.all()):
                break
        return torch.where(has_atom, u, torch.full_like(u, -math.inf))

    def profile(log_scale: Tensor, start: Tensor):
        """u*, the profile score g(v) = sum_c n_c E_c[a^2] - S2 and its derivative in log s."""
        scale = torch.exp(log_scale)
        log_slab, _, _, m2, m4 = ops.rectified_coordinate_stats(weight, scale, torch.zeros_like(scale))
        u = best_log_mass(log_slab, start)
        p_zero = torch.sigmoid(u - log_slab)
        p_one = 1 - p_zero
        score = (counts * p_one * m2).sum(dim=0) - sum_sq
        h_uu = (counts * p_zero * p_one).sum(dim=0)
        h_uv = -(counts * p_zero * p_one * m2).sum(dim=0)
        h_vv = (counts * (p_one * m4 - (p_one * m2) ** 2)).sum(dim=0)
        slope_v = h_vv - torch.where(has_atom, h_uv * h_uv / h_uu.clamp_min(1e-300), torch.zeros_like(h_uv))
        return u, score, slope_v / scale**2  # dv / dlog s = 1 / s^2

    # Bracket log s around the half-normal estimate, widening until the score changes sign.
    guess = 0.5 * torch.log(torch.where(live, sum_sq / (1 - zero_share).clamp_min(1e-300), torch.ones_like(sum_sq)))
    low, high = guess - 1.0, guess + 1.0
    no_root = torch.full_like(guess, math.nan)
    for _ in range(60):
        u_low, score_low, _ = profile(low, no_root)
        _, score_high, _ = profile(high, u_low)
        widen_low, widen_high = live & (score_low > 0), live & (score_high < 0)
        if not bool((widen_low | widen_high).any()):
            break
        low, high = torch.where(widen_low, low - 3.0, low), torch.where(widen_high, high + 3.0, high)
    # Newton steps in log s; where one leaves the bracket, regula falsi between its ends (Illinois:
    # an end kept twice in a row has its score halved, so the bracket keeps shrinking from both sides).
    log_scale, u = 0.5 * (low + high), u_low
    kept = torch.zeros_like(guess)  # +1: the low end was kept last time, -1: the high end
    for _ in range(max_iter):
        u, score, slope = profile(log_scale, u)
        is_low, is_high = score < 0, score > 0
        score_high = torch.where(is_low & (kept > 0), 0.5 * score_high, score_high)
        score_low = torch.where(is_high & (kept < 0), 0.5 * score_low, score_low)
        low, score_low = torch.where(is_low, log_scale, low), torch.where(is_low, score, score_low)
        high, score_high = torch.where(is_high, log_scale, high), torch.where(is_high, score, score_high)
        kept = torch.where(is_low, torch.ones_like(kept), torch.where(is_high, -torch.ones_like(kept), kept))
        newton = log_scale - score / slope
        secant = low - score_low * (high - low) / (score_high - score_low)
        step = torch.where((newton >= low) & (newton <= high), newton, secant)
        step = torch.where(score == 0, log_scale, step)
        settled = ((step - log_scale).abs() <= 1e-12 * (1 + log_scale.abs())) | ~live
        log_scale = torch.where(live, step, log_scale)
        if bool(settled.all()):
            break
    u, _, _ = profile(log_scale, u)
    scale = torch.exp(log_scale)
    zero_mass = torch.where(has_atom, torch.exp(u), torch.zeros_like(u))
    dead_scale = 1e-6 * scale[live].median() if bool(live.any()) else scale.new_tensor(1e-6)
    scale = torch.where(live, scale, dead_scale)
    zero_mass = torch.where(live, zero_mass, torch.ones_like(zero_mass))
    return scale, zero_mass
