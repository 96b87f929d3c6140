"""Sampling: exactness (KS test of t = mu . u against its exact CDF, E[u] = A_D(kappa) mu), the
sphere, label routing, edge cases and dtypes."""
import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch

from penact import PenultimateDistribution, ops
from penact import reference


def cosine_cdf_at(w_sorted, dim, kappa):
    """Exact CDF of w = 1 - t at sorted points: density prop. to exp(-kappa w) (w (2 - w))^((D-3)/2)
    on [0, 2], integrated piecewise between consecutive points (quad with algebraic weights at
    the singular ends), so no grid or interpolation error enters the KS statistic."""
    alpha = (dim - 3) / 2
    if alpha > 0:  # integrand scaled by its peak, so that s^alpha e^(-kappa s) does not underflow
        s_peak = 2 * alpha / (kappa + alpha + math.sqrt(kappa * kappa + alpha * alpha))
        log_peak = -kappa * s_peak + alpha * math.log(s_peak * (2 - s_peak))
    else:
        log_peak = 0.0

    def density(s):
        return math.exp(-kappa * s + alpha * math.log(s * (2 - s)) - log_peak) if 0 < s < 2 else 0.0

    def piece(a, b):
        if b <= a:
            return 0.0
        if alpha < 0 and a == 0.0:  # D = 2: the (s - 0)^alpha singularity as an algebraic weight
            return scipy.integrate.quad(lambda s: math.exp(-kappa * s) * (2 - s) ** alpha, a, b, weight="alg",
                                        wvar=(alpha, 0))[0]
        if alpha < 0 and b == 2.0:
            return scipy.integrate.quad(lambda s: math.exp(-kappa * s) * s**alpha, a, b, weight="alg",
                                        wvar=(0, alpha))[0]
        return scipy.integrate.quad(density, a, b, epsabs=0, epsrel=1e-10)[0]

    points = np.concatenate([[0.0], np.clip(w_sorted, 0, 2), [2.0]])
    pieces = np.array([piece(a, b) for a, b in zip(points[:-1], points[1:])])
    cumulative = np.cumsum(pieces)
    return cumulative[:-1] / cumulative[-1]


def ks_pvalue(w, dim, kappa):
    w_sorted = np.sort(w)
    cdf = cosine_cdf_at(w_sorted, dim, kappa)
    lookup = dict(zip(w_sorted.tolist(), cdf.tolist()))
    return scipy.stats.kstest(w_sorted, lambda v: np.array([lookup[float(t)] for t in np.atleast_1d(v)])).pvalue


def one_class(dim, kappa, rng, dtype=torch.float64, device="cpu"):
    mu = torch.randn(1, dim, generator=rng, dtype=torch.float64)
    mu = mu / mu.norm()
    return mu.to(dtype).to(device), torch.tensor([kappa], dtype=dtype, device=device)


@pytest.mark.parametrize(
    "dim,kappa",
    [(2, 0.0), (2, 1.0), (2, 1e6), (3, 0.0), (3, 1e-3), (3, 2.0), (3, 300.0), (5, 2.0), (16, 1e7),
     (512, 0.0), (512, 1e-3), (512, 1.0), (512, 512.0), (512, 51200.0), (512, 1e6), (4096, 0.0), (4096, 40.0),
     (4096, 4096.0), (4096, 1e6)],
)
def test_cosine_marginal_is_exact(dim, kappa, rng, device):
    mu, k = one_class(dim, kappa, rng, device=device)
    n = 3000
    seed = int(torch.randint(0, 2**62, (), generator=rng))
    x = ops.vmf_sample(mu, k, torch.zeros(n, dtype=torch.long, device=device), 1.0, seed, 0)
    mu, k, x = mu.cpu(), k.cpu(), x.cpu()
    t = (x @ mu[0]).numpy()
    # w = 1 - t from the sample loses digits when t ~ 1; at large kappa use the exact identity
    # 1 - t = ||x - mu||^2 / 2 on the unit sphere, which keeps them.
    w = 0.5 * ((x - mu) ** 2).sum(dim=1).numpy()
    assert np.allclose(w, 1 - t, atol=1e-12)
    assert ks_pvalue(w, dim, kappa) > 1e-5
    mean_t = float(ops.vmf_mean_resultant(dim, k))
    var_bound = 1.0 / n
    assert abs(t.mean() - mean_t) < 6 * math.sqrt(max(t.var(), 1e-30) * var_bound) + 1e-12


@pytest.mark.parametrize("dim,kappa", [(3, 2.0), (64, 10.0), (512, 20.0), (512, 700.0)])
def test_mean_vector(dim, kappa, rng, device):
    """E[u] = A_D(kappa) mu, component by component (docs/model.md's oracle: a Taylor shortcut for b
    in one library gives E[t] = -0.73 at D = 512, kappa = 20 instead of 0.039)."""
    mu, k = one_class(dim, kappa, rng)
    n = 20000
    labels = torch.zeros(n, dtype=torch.long, device=device)
    x = ops.vmf_sample(mu.to(device), k.to(device), labels, 1.0, int(torch.randint(0, 2**62, (), generator=rng)), 0).cpu()
    mean = x.mean(dim=0)
    expected = ops.vmf_mean_resultant(dim, k) * mu[0]
    # Cov[u] = (A/kappa) I + (1 - A^2 - D A/kappa) mu mu^T bounds each coordinate's variance.
    a = float(ops.vmf_mean_resultant(dim, k))
    var = a / kappa + abs(1 - a * a - dim * a / kappa)
    assert (mean - expected).abs().max() < 6 * math.sqrt(var / n)


def test_on_sphere_labels_route_and_dtypes(rng, device):
    c, dim, n = 7, 33, 4000
    weight = torch.randn(c, dim, generator=rng, dtype=torch.float64) * 4
    dist = PenultimateDistribution(weight.to(device), radius=2.5)
    labels = torch.randint(0, c, (n,), generator=rng).to(device)
    x = dist.sample(labels, seed=11)
    assert x.shape == (n, dim) and x.dtype == torch.float64
    torch.testing.assert_close(x.norm(dim=1), torch.full((n,), 2.5, dtype=torch.float64, device=device))
    # every class's rows have the mean cosine of that class, not of another
    cos = (x / 2.5 * dist.mean_direction[labels]).sum(dim=1)
    for y in range(c):
        rows = labels == y
        assert abs(float(cos[rows].mean() - dist.mean_resultant[y])) < 6 / math.sqrt(int(rows.sum()))
    x32 = PenultimateDistribution(weight.float().to(device), radius=2.5).sample(labels, seed=11)
    assert x32.dtype == torch.float32
    torch.testing.assert_close(x32.norm(dim=1), torch.full((n,), 2.5, device=device))


def test_float32_matches_float64_draws():
    """float32 and float64 use different normal generators but the same Wood's step: t agrees."""
    mu = torch.nn.functional.normalize(torch.randn(1, 16, dtype=torch.float64), dim=1)
    k = torch.tensor([50.0], dtype=torch.float64)
    labels = torch.zeros(500, dtype=torch.long)
    t64 = ops.vmf_sample(mu, k, labels, 1.0, 3, 0) @ mu[0]
    t32 = ops.vmf_sample(mu.float(), k.float(), labels, 1.0, 3, 0) @ mu[0].float()
    torch.testing.assert_close(t32.double(), t64, rtol=0, atol=1e-5)


def test_huge_kappa_and_float32_keeps_the_tail(device):
    """At kappa = 1e7 the spread sqrt(1 - t^2) ~ 1e-3.5 must survive float32 (the textbook 1 - t has
    53% error in float32 at D = 16, kappa = 1e7)."""
    dim, kappa = 16, 1e7
    mu = torch.zeros(1, dim)
    mu[0, 3] = 1
    x = ops.vmf_sample(mu.to(device), torch.tensor([kappa], device=device),
                       torch.zeros(20000, dtype=torch.long, device=device), 1.0, 5, 0).cpu()
    w = 0.5 * ((x.double() - mu.double()) ** 2).sum(dim=1)  # 1 - t
    # E[1 - t] = 1 - A_D(kappa) ~ (D - 1) / (2 kappa)
    expected = 1 - float(ops.vmf_mean_resultant(dim, torch.tensor([kappa], dtype=torch.float64)))
    assert float(w.mean()) == pytest.approx(expected, rel=0.05)


def test_large_dimension(device):
    dim = 65536
    mu = torch.nn.functional.normalize(torch.randn(2, dim), dim=1)
    kappa = torch.tensor([0.0, 3e4])
    x = ops.vmf_sample(mu.to(device), kappa.to(device), torch.tensor([0, 1, 1, 0], device=device), 1.0, 9, 0).cpu()
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x.norm(dim=1), torch.ones(4))
    t = (x * mu[[0, 1, 1, 0]]).sum(dim=1)
    a = float(ops.vmf_mean_resultant(dim, torch.tensor([3e4], dtype=torch.float64)))
    assert abs(float(t[1]) - a) < 0.01 and abs(float(t[2]) - a) < 0.01
    assert abs(float(t[0])) < 0.03


def test_axis_aligned_mean_direction():
    """No Householder vector: a mean direction on an axis (and its negative) works."""
    for sign in (1.0, -1.0):
        mu = torch.zeros(1, 8, dtype=torch.float64)
        mu[0, 0] = sign
        x = ops.vmf_sample(mu, torch.tensor([30.0], dtype=torch.float64), torch.zeros(5000, dtype=torch.long), 1.0, 1, 0)
        expected = float(ops.vmf_mean_resultant(8, torch.tensor([30.0], dtype=torch.float64)))
        assert float(x[:, 0].mean()) * sign == pytest.approx(expected, abs=0.01)


def test_empty_batch_and_noncontiguous():
    mu = torch.nn.functional.normalize(torch.randn(8, 3), dim=1)
    kappa = torch.rand(8) * 5
    assert ops.vmf_sample(mu, kappa, torch.empty(0, dtype=torch.long), 1.0, 0, 0).shape == (0, 3)
    wide = torch.randn(3, 8).t()  # non-contiguous [8, 3]
    mu_nc = wide / wide.norm(dim=1, keepdim=True)
    labels = torch.arange(8)[::2]
    torch.testing.assert_close(ops.vmf_sample(mu_nc, kappa, labels, 1.0, 4, 0),
                               ops.vmf_sample(mu_nc.contiguous(), kappa, labels.contiguous(), 1.0, 4, 0), rtol=0, atol=0)


def test_invalid_concentration_gives_nan_rows_not_a_hang(device):
    mu = torch.nn.functional.normalize(torch.randn(4, 4), dim=1)
    kappa = torch.tensor([1.0, -1.0, float("inf"), float("nan")])
    x = ops.vmf_sample(mu.to(device), kappa.to(device), torch.tensor([0, 1, 2, 3], device=device), 1.0, 0, 0).cpu()
    assert torch.isfinite(x[0]).all() and torch.isnan(x[1:]).all()


def test_agrees_with_the_composite_twin(rng):
    """The kernel and the pure-torch twin (no shared code) give the same distribution of t."""
    mu, k = one_class(24, 12.0, rng)
    labels = torch.zeros(4000, dtype=torch.long)
    t_kernel = (ops.vmf_sample(mu, k, labels, 1.0, 17, 0) @ mu[0]).numpy()
    t_twin = (reference.vmf_sample(mu, k, labels, 1.0, generator=rng) @ mu[0]).numpy()
    assert scipy.stats.ks_2samp(t_kernel, t_twin).pvalue > 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [2, 3])
def test_unit_norm_to_rounding_in_small_dimensions(dim, dtype, device):
    """D = 2 and 3 over kappa from 0 to 1e7: the Gaussian is often nearly parallel to mu, where a
    single projection leaves a component along mu (in float32 at D = 2 a one-projection sampler put
    rows 2e-3 off the sphere); with two, every draw stays on the sphere to a few ulps."""
    mu = torch.nn.functional.normalize(torch.randn(8, dim, dtype=torch.float64), dim=1).to(dtype).to(device)
    kappa = torch.tensor([0.0, 1e-3, 1.0, 3.0, 50.0, 1e3, 1e6, 1e7], dtype=dtype, device=device)
    x = ops.vmf_sample(mu, kappa, torch.arange(8, device=device).repeat(25000), 1.0, 3, 0)
    eps = torch.finfo(dtype).eps
    assert float((x.double().norm(dim=1) - 1).abs().max()) < 2 * eps * dim
