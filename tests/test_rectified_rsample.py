"""Differentiable sampling and closed forms of the rectified family: rectified_rsample's values are
rectified_sample's; its per-draw derivatives against 40-digit derivatives of the mixed CDF and
against finite differences of the fixed-seed sampler; Monte Carlo gradients of E[a] and E[a^2]
against the closed-form moments (|t| = |s w| up to 30, no zeros to mostly zeros); the
differentiable mean, entropy and KL (gradcheck, Monte Carlo); opcheck, compile, bad input."""
import math

import mpmath
import pytest
import scipy.special
import torch

from penact import RectifiedDistribution
from penact import _rectified_ops as ops
from penact import _rectified_reference as reference

DTYPES = [torch.float32, torch.float64]

# (t = s w, m / s): no atom, a light and a heavy one (mostly zeros), from far left to far right.
REGIMES = [(-30.0, 0.0), (-30.0, 0.02), (-3.0, 0.0), (-3.0, 5.0), (0.0, 0.0), (0.0, 0.7), (0.0, 40.0), (2.0, 0.3),
           (2.0, 0.0), (30.0, 0.0), (30.0, 1e3)]


def regime_params(rng, dtype=torch.float64):
    """One class, one coordinate per regime: weight [1, D], scale [D] in (0.4, 2.4), zero_mass [D]."""
    t, mass = (torch.tensor(col, dtype=torch.float64) for col in zip(*REGIMES))
    scale = 0.4 + 2 * torch.rand(len(REGIMES), generator=rng, dtype=torch.float64)
    return (t / scale)[None].to(dtype), scale.to(dtype), (mass * scale).to(dtype)


def new_seed(rng):
    return int(torch.randint(0, 2**62, (), generator=rng))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rsample_is_sample(dtype, rng):
    """Bit for bit the sampler's draws, through the op and through RectifiedDistribution."""
    weight = torch.randn(4, 37, generator=rng, dtype=torch.float64).to(dtype) * 2
    scale = (0.3 + torch.rand(37, generator=rng, dtype=torch.float64)).to(dtype)
    zero_mass = torch.rand(37, generator=rng, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, 4, (300,), generator=rng)
    seed, offset = new_seed(rng), int(torch.randint(0, 2**40, (), generator=rng))
    w = weight.clone().requires_grad_()
    x = ops.rectified_rsample(w, scale, zero_mass, labels, seed, offset)
    assert x.requires_grad and x.dtype == dtype
    assert torch.equal(x, ops.rectified_sample(weight, scale, zero_mass, labels, seed, offset))
    dist = RectifiedDistribution(w, None, scale, zero_mass)
    assert torch.equal(dist.rsample(labels, seed=seed, offset=offset), dist.sample(labels, seed=seed, offset=offset))
    gen = torch.Generator().manual_seed(seed)
    drawn = dist.rsample(labels, generator=gen)
    assert torch.equal(drawn, dist.sample(labels, generator=torch.Generator().manual_seed(seed)))


def per_draw_gradients(a, weight, scale, zero_mass):
    """(da/dw, da/ds, da/dm), each [N, D], at the values a: [N, D] of one class's coordinates
    (the backward operator with a one-hot output gradient per row)."""
    rows = [torch.ops.penact.rectified_rsample_backward(torch.ones_like(a[i:i + 1]), a[i:i + 1], weight, scale,
                                                        zero_mass, torch.zeros(1, dtype=torch.long))
            for i in range(a.shape[0])]
    return tuple(torch.stack([r[k].reshape(-1) for r in rows]) for k in range(3))


def mp_gradients(a, w, s, m):
    """-(dG/dtheta) / (dG/da) for theta = w, s, m, with the upper tail 1 - G(a) =
    s sqrt(2 pi) exp(t^2 / 2) Phibar(a / s - t) / z, t = s w, in 40-digit arithmetic."""
    with mpmath.workdps(40):
        def tail(a, w, s, m):
            t = s * w
            slab = s * mpmath.sqrt(2 * mpmath.pi) * mpmath.exp(t * t / 2)
            return slab * mpmath.ncdf(t - a / s) / (m + slab * mpmath.ncdf(t))

        a, w, s, m = (mpmath.mpf(v) for v in (a, w, s, m))
        density = mpmath.diff(lambda v: tail(v, w, s, m), a)
        return tuple(float(-mpmath.diff(f, v) / density) for f, v in (
            (lambda v: tail(a, v, s, m), w), (lambda v: tail(a, w, v, m), s), (lambda v: tail(a, w, s, v), m)))


def test_per_draw_derivatives_match_the_cdf(rng):
    """In every regime, at values from the bulk to far in both tails of the non-zero part, the
    per-draw derivatives equal the implicit derivatives of the mixed CDF computed by mpmath
    (error <= 1e-11 relative to the derivative's natural size; measured: about 1e-15)."""
    weight, scale, zero_mass = regime_params(rng)
    t = scale * weight[0]
    # values whose share V of the non-zero part lies above them, one V fresh in each run:
    # Phibar(z) = V Phibar(-t) = V Phi(t)
    share = torch.tensor([1e-12, 1e-3, 0.3, 0.5, 0.9, 1 - 1e-6, float(torch.rand((), generator=rng))],
                         dtype=torch.float64)[:, None]
    z = -torch.from_numpy(scipy.special.ndtri_exp((share.log() + torch.special.log_ndtr(t)).numpy()))
    a = (scale * (t + z)).clamp_min(1e-300)
    got = per_draw_gradients(a, weight, scale, zero_mass)
    worst = 0.0
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            s, value = float(scale[j]), float(a[i, j])
            expected = mp_gradients(value, float(weight[0, j]), s, float(zero_mass[j]))
            # natural sizes: da/dw ~ s^2, da/ds ~ a / s + |t|, da/dm ~ 1 (a derivative may pass through 0)
            sizes = (s * s, value / s + abs(float(t[j])) + 1, 1.0)
            for k in range(3):
                error = abs(float(got[k][i, j]) - expected[k]) / max(abs(expected[k]), sizes[k])
                worst = max(worst, error)
                assert error <= 1e-11, (REGIMES[j], float(share[i]), k, float(got[k][i, j]), expected[k])
    print(f"worst relative error against mpmath: {worst:.2e}")


def test_per_draw_derivatives_are_the_sampler_s_pathwise_derivative(rng):
    """Where rectified_sample is the exact inverse of the mixed CDF (float64, t >= -2, P(a > 0) >=
    2^-10), a fixed-seed draw is a smooth function of (w, s, m) between decisions: its central
    difference equals the per-draw gradient."""
    n, h = 40, 1e-6
    t = torch.tensor([-1.5, -0.5, 0.0, 0.8, 2.0, 4.0], dtype=torch.float64)
    scale = 0.5 + torch.rand(len(t), generator=rng, dtype=torch.float64)
    zero_mass = torch.tensor([0.0, 0.3, 1.0, 0.0, 2.0, 0.5], dtype=torch.float64) * scale
    params = [(t / scale)[None], scale, zero_mass]
    labels = torch.zeros(n, dtype=torch.long)
    seed = new_seed(rng)
    x = ops.rectified_sample(*params, labels, seed, 0)
    got = per_draw_gradients(x, *params)
    for k in range(3):
        for j in range(len(t)):
            if k == 2 and zero_mass[j] == 0:
                continue  # m = 0 is the edge of the parameter space
            moved = [[p.clone() for p in params] for _ in range(2)]
            moved[0][k][..., j] += h
            moved[1][k][..., j] -= h
            plus, minus = (ops.rectified_sample(*p, labels, seed, 0)[:, j] for p in moved)
            stable = (plus > 0) & (minus > 0)  # no decision flipped by the step
            assert stable.float().mean() > 0.3
            fd = (plus - minus) / (2 * h)
            torch.testing.assert_close(got[k][stable, j], fd[stable], rtol=1e-6, atol=1e-7)
