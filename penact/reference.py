"""Pure-torch twins of penact's operators, both families: the composite implementation a user
would write with ``torch.distributions``, ``torch.special`` and tensor ops. They are the benchmark
baseline ("composite") and a test oracle that shares no code with the kernels.

Each twin takes the operator's arguments, with one difference: the samplers draw from a
``torch.Generator`` (torch's own streams) instead of penact's ``(seed, offset)`` Philox streams, so
they agree with the kernels in distribution, not draw by draw. There is no twin of the special
functions (``torch.special`` has ``I_0`` and ``I_1`` only).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


# ---------------------------------------------------------------------------------------------
# The sphere family.


def vmf_sample(mean_direction: Tensor, kappa: Tensor, labels: Tensor, radius: float,
               generator: torch.Generator | None = None) -> Tensor:
    """Wood (1994) with ``torch.distributions.Beta`` proposals, vectorized rejection over the
    rows still pending, then the direction by projecting a Gaussian off ``mu``. ``[N, D]``."""
    mu = mean_direction[labels]
    k = kappa[labels].to(torch.float64)
    n, dim = mu.shape
    m = dim - 1.0
    b = m / (2 * k + torch.sqrt(4 * k * k + m * m))
    x0 = (1 - b) / (1 + b)
    c = k * x0 + m * torch.log1p(-x0 * x0)
    t = torch.empty(n, dtype=torch.float64, device=mu.device)
    pending = torch.arange(n, device=mu.device)
    beta = torch.distributions.Beta(torch.tensor(m / 2, dtype=torch.float64, device=mu.device),
                                    torch.tensor(m / 2, dtype=torch.float64, device=mu.device))
    while pending.numel():
        z = beta.sample((pending.numel(),))
        bp, kp, x0p, cp = b[pending], k[pending], x0[pending], c[pending]
        w = (1 - (1 + bp) * z) / (1 - (1 - bp) * z)
        u = torch.rand(pending.numel(), dtype=torch.float64, device=mu.device, generator=generator)
        accept = kp * w + m * torch.log1p(-x0p * w) - cp >= torch.log(u)
        t[pending[accept]] = w[accept]
        pending = pending[~accept]
    g = torch.randn(n, dim, dtype=mu.dtype, device=mu.device, generator=generator)
    v = g - (g * mu).sum(dim=1, keepdim=True) * mu
    v = v / v.norm(dim=1, keepdim=True)
    t = t.to(mu.dtype)[:, None]
    return radius * (t * mu + torch.sqrt((1 - t * t).clamp_min(0)) * v)


def vmf_log_prob(x: Tensor, weight: Tensor, log_normalizer: Tensor, labels: Tensor, radius: float) -> Tensor:
    """Gather the labelled rows, normalize, multiply, sum. ``[N]``."""
    u = x.to(weight.dtype)
    u = u / u.norm(dim=1, keepdim=True)
    return log_normalizer[labels] + radius * (weight[labels] * u).sum(dim=1)


def vmf_log_prob_all(x: Tensor, weight: Tensor, log_normalizer: Tensor, radius: float) -> Tensor:
    """Normalize, one matrix product, add the normalizers. ``[N, C]``."""
    u = x.to(weight.dtype)
    u = u / u.norm(dim=1, keepdim=True)
    return torch.addmm(log_normalizer, u, weight.t(), alpha=radius)


# ---------------------------------------------------------------------------------------------
# The rectified family.


def rectified_log_z(weight: Tensor, scale: Tensor, zero_mass: Tensor) -> Tensor:
    """``log z(w_yj; s_j, m_j)``, ``[C, D]``, through ``torch.special.log_ndtr``."""
    t = scale * weight
    log_slab = torch.log(scale) + 0.5 * math.log(2 * math.pi) + 0.5 * t * t + torch.special.log_ndtr(t)
    return torch.logaddexp(torch.log(zero_mass).expand_as(log_slab), log_slab)


def rectified_log_partition(weight: Tensor, scale: Tensor, zero_mass: Tensor) -> Tensor:
    """``log Z_y``, ``[C]``."""
    return rectified_log_z(weight, scale, zero_mass).sum(dim=1)


def rectified_sample(weight: Tensor, scale: Tensor, zero_mass: Tensor, labels: Tensor,
                     generator: torch.Generator | None = None) -> Tensor:
    """Gather each row's parameters, draw the zero/non-zero choice and the truncated normal by the
    plain inverse CDF ``ndtri(Phi(alpha) + U Phibar(alpha))`` (not tail-stable: for ``s w`` below
    about -8 the inverse saturates). ``[N, D]``."""
    w = weight[labels]
    t = scale * w
    log_z = rectified_log_z(weight, scale, zero_mass)[labels]
    log_slab = torch.log(scale) + 0.5 * math.log(2 * math.pi) + 0.5 * t * t + torch.special.log_ndtr(t)
    nonzero = torch.rand(w.shape, dtype=w.dtype, device=w.device, generator=generator) < torch.exp(log_slab - log_z)
    u = torch.rand(w.shape, dtype=w.dtype, device=w.device, generator=generator)
    lower = torch.special.ndtr(-t)
    z = torch.special.ndtri(lower + u * (1 - lower))
    return torch.where(nonzero, (scale * (t + z)).clamp_min(torch.finfo(w.dtype).tiny), torch.zeros_like(w))


def rectified_base_measure(a: Tensor, scale: Tensor, zero_mass: Tensor) -> Tensor:
    """``sum_j [a_j > 0] (-a_j^2 / (2 s_j^2)) + [a_j = 0] log m_j``, ``[N]``."""
    return torch.where(a > 0, -a * a / (2 * scale * scale), torch.log(zero_mass).expand_as(a)).sum(dim=1)


def rectified_log_prob(a: Tensor, weight: Tensor, scale: Tensor, zero_mass: Tensor, log_partition: Tensor,
                       labels: Tensor) -> Tensor:
    """Gather the labelled rows, multiply, sum, add the base measure. ``[N]``."""
    a = a.to(weight.dtype)
    return (weight[labels] * a).sum(dim=1) + rectified_base_measure(a, scale, zero_mass) - log_partition[labels]


def rectified_log_prob_all(a: Tensor, weight: Tensor, scale: Tensor, zero_mass: Tensor,
                           log_partition: Tensor) -> Tensor:
    """One matrix product, the base measure per row, the normalizers per class. ``[N, C]``."""
    a = a.to(weight.dtype)
    return a @ weight.t() + rectified_base_measure(a, scale, zero_mass)[:, None] - log_partition


def _log_mills_ratio(x: Tensor) -> Tensor:
    """``log R(x) = log(Phibar(x) / phi(x))``: through erfcx for ``x >= 0`` (``R ~ 1 / x``, no
    underflow), through log_ndtr for ``x < 0`` (``R ~ sqrt(2 pi) exp(x^2 / 2)``, no overflow)."""
    right = x.clamp_min(0)
    left = x.clamp_max(0)
    log_right = torch.log(torch.special.erfcx(right / math.sqrt(2))) + 0.5 * math.log(math.pi / 2)
    log_left = torch.special.log_ndtr(-left) + 0.5 * left * left + 0.5 * math.log(2 * math.pi)
    return torch.where(x >= 0, log_right, log_left)


def rectified_rsample_backward(grad: Tensor, sample: Tensor, weight: Tensor, scale: Tensor, zero_mass: Tensor,
                                labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of ``rectified_rsample`` in ``weight``, ``scale``, ``zero_mass`` from its draws
    ``sample: [N, D]`` and the incoming ``grad: [N, D]``: the formulas of :mod:`penact.ops.rectified`,
    per entry, in float64 torch operators (the fused kernel's test oracle)."""
    labels = labels.long()
    w64, s, m = weight.double(), scale.double(), zero_mass.double()
    log_z = rectified_log_z(w64, s, m).index_select(0, labels)
    a = sample.double()
    t = s * w64.index_select(0, labels)
    log_mills = _log_mills_ratio(a / s - t)
    q = torch.exp(log_mills - log_z)
    one_minus_sq = -torch.expm1(torch.log(s) + log_mills - log_z)
    g = torch.where(a > 0, grad.double(), torch.zeros_like(a))  # the atom does not move
    grad_weight = torch.zeros_like(w64).index_add_(0, labels, g * s * s * (one_minus_sq + t * m * q))
    grad_scale = (g * (a / s + t * one_minus_sq + (t * t + 1) * m * q)).sum(dim=0)
    grad_zero_mass = -(g * q).sum(dim=0) * s
    return grad_weight.to(weight.dtype), grad_scale.to(scale.dtype), grad_zero_mass.to(zero_mass.dtype)
