"""Pure-torch twins of the rectified operators: what a user would write with ``torch.special`` and
tensor ops. The benchmark baseline ("composite") and a test oracle that shares no code with the
kernels. Same signatures as ``penact._rectified_ops`` (the sampler takes a ``torch.Generator``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


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
