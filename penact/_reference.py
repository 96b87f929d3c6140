"""Pure-torch twins of penact's operators: the composite implementation a user would write with
``torch.distributions`` and tensor ops. They are the benchmark baseline ("composite") and a test
oracle that shares no code with the kernels. Same signatures as ``penact.ops``.
"""
from __future__ import annotations

import torch
from torch import Tensor


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
