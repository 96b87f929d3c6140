"""penact.distributions against the torch.distributions conventions (shapes, expand, broadcasting,
validate_args, kl_divergence dispatch), the core kernels, scipy.stats.vonmises_fisher and
closed forms, with gradients by gradcheck (float64) and Monte Carlo."""
import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch.distributions import Categorical, MixtureSameFamily, kl_divergence

from penact import HypersphericalUniform, PenultimateDistribution, VonMisesFisher, ops


def assert_same_draws(a, b):
    """The same draws: equal up to a few rounding units. (The CPU sampler's vectorized reductions
    can round differently from one call to the next, by one unit in the last place, when the heap
    hands its per-task buffer out at another alignment; reported to the kernel's owner.)"""
    torch.testing.assert_close(a, b, rtol=0, atol=4 * torch.finfo(a.dtype).eps)


EDGES = [(2, 0.0), (2, 1e6), (3, 1e-6), (3, 2.0), (4096, 0.0), (4096, 1e6), (5, 1e6)]


def unit(rng, *shape, dtype=torch.float64):
    g = torch.randn(*shape, generator=rng, dtype=torch.float64)
    return (g / g.norm(dim=-1, keepdim=True)).to(dtype)


def fresh_seed(rng):
    return int(torch.randint(0, 2**62, (), generator=rng))


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)])
@pytest.mark.parametrize("sample_shape", [(), (4,), (2, 5)])
def test_sample_shapes(batch_shape, sample_shape, rng):
    dim = 5
    dist = VonMisesFisher(unit(rng, *batch_shape, dim), torch.rand(batch_shape, generator=rng, dtype=torch.float64) * 9)
    assert dist.batch_shape == batch_shape and dist.event_shape == (dim,)
    for method in (dist.sample, dist.rsample):
        x = method(torch.Size(sample_shape))
        assert x.shape == sample_shape + batch_shape + (dim,)
        torch.testing.assert_close(x.norm(dim=-1), torch.ones(sample_shape + batch_shape, dtype=torch.float64))
    assert dist.log_prob(dist.sample(sample_shape)).shape == sample_shape + batch_shape
    assert dist.entropy().shape == batch_shape
    assert dist.mean.shape == dist.mode.shape == dist.variance.shape == batch_shape + (dim,)


def test_concentration_broadcasts_and_expand(rng):
    loc = unit(rng, 1, 3, 4)
    dist = VonMisesFisher(loc, torch.tensor([[1.0], [2.0]], dtype=torch.float64))
    assert dist.batch_shape == (2, 3) and dist.loc.shape == (2, 3, 4) and dist.concentration.shape == (2, 3)
    assert VonMisesFisher(loc[0, 0], 3.0).batch_shape == ()
    wide = dist.expand((5, 2, 3))
    assert wide.batch_shape == (5, 2, 3) and wide.sample((7,)).shape == (7, 5, 2, 3, 4)
    x = dist.sample((6,), seed=3)
    torch.testing.assert_close(wide.log_prob(x[:, None]), dist.log_prob(x)[:, None].expand(6, 5, 2, 3))
    with pytest.raises(RuntimeError):  # as torch.distributions.Normal.expand does
        dist.expand((4, 3))


def test_log_prob_broadcasting(rng):
    dim = 6
    dist = VonMisesFisher(unit(rng, 3, 1, dim), torch.tensor([[0.5], [4.0], [40.0]], dtype=torch.float64))
    value = unit(rng, 2, 1, 5, dim)  # broadcasts to (2, 3, 5), batch not the trailing shape
    got = dist.log_prob(value)
    assert got.shape == (2, 3, 5)
    expected = ops.vmf_log_normalizer(dim, dist.concentration) + dist.concentration * (value * dist.loc).sum(-1)
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)
    single = dist.log_prob(value[0, 0, 0])  # one value against the whole batch
    torch.testing.assert_close(single, got[0, :, 0:1])


def test_validate_args_errors(rng):
    loc = unit(rng, 3, 4)
    kappa = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="parameter loc"):
        VonMisesFisher(2 * loc, kappa, validate_args=True)
    with pytest.raises(ValueError, match="parameter concentration"):
        VonMisesFisher(loc, -kappa, validate_args=True)
    with pytest.raises(ValueError, match="parameter concentration"):
        VonMisesFisher(loc, torch.tensor([1.0, math.inf, 2.0], dtype=torch.float64), validate_args=True)
    dist = VonMisesFisher(loc, kappa, validate_args=True)
    with pytest.raises(ValueError, match="value argument"):
        dist.log_prob(3 * loc)
    with pytest.raises(ValueError, match="event_shape"):
        dist.log_prob(unit(rng, 3, 5))
    VonMisesFisher(2 * loc, -kappa, validate_args=False)  # no check when asked for none
    assert torch.isfinite(VonMisesFisher(loc, kappa, validate_args=False).log_prob(3 * loc)).all()
    with pytest.raises(ValueError, match="float32 or float64"):
        VonMisesFisher(loc.half(), kappa)
    with pytest.raises(ValueError, match="at least 2"):
        VonMisesFisher(torch.ones(3, 1, dtype=torch.float64), kappa)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., D\]"):
        VonMisesFisher(torch.tensor(1.0), 1.0)
    uniform = HypersphericalUniform(4, (3,), dtype=torch.float64, validate_args=True)
    with pytest.raises(ValueError, match="value argument"):
        uniform.log_prob(2 * loc)
    with pytest.raises(ValueError, match="at least 2"):
        HypersphericalUniform(1)


def test_agrees_with_the_core_kernels(rng):
    """One batch element per row of the labelled kernels: identical draws for the same seed, and
    the log-density and entropy of PenultimateDistribution.component(y) equal the family's."""
    n, dim = 50, 9
    loc, kappa = unit(rng, n, dim), torch.rand(n, generator=rng, dtype=torch.float64) * 30
    seed = fresh_seed(rng)
    dist = VonMisesFisher(loc, kappa)
    assert_same_draws(dist.sample(seed=seed, offset=7), ops.vmf_sample(loc, kappa, torch.arange(n), 1.0, seed, 7))
    x = dist.sample((3,), seed=seed)
    flat = ops.vmf_sample(loc, kappa, torch.arange(3 * n) % n, 1.0, seed, 0)
    assert_same_draws(x.reshape(-1, dim), flat)

    weight = torch.randn(4, dim, generator=rng, dtype=torch.float64) * 3
    family = PenultimateDistribution(weight, radius=2.0)
    labels = torch.randint(0, 4, (n,), generator=rng)
    component = family.component(labels)
    assert component.batch_shape == (n,)
    u = family.sample(labels, seed=seed) / 2.0
    torch.testing.assert_close(component.log_prob(u), family.log_prob(2.0 * u, labels), rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(family.component(2).entropy(), family.entropy()[2])
    assert_same_draws(component.sample(seed=seed), u)


@pytest.mark.parametrize("dim,kappa", [(3, 0.5), (3, 50.0), (10, 5.0), (64, 100.0)])
def test_matches_scipy(dim, kappa, rng):
    loc = unit(rng, dim)
    dist = VonMisesFisher(loc, kappa)
    frozen = scipy.stats.vonmises_fisher(loc.numpy(), kappa)
    x = dist.sample((200,))
    np.testing.assert_allclose(dist.log_prob(x).numpy(), frozen.logpdf(x.numpy()), rtol=1e-11, atol=1e-11)
    assert float(dist.entropy()) == pytest.approx(float(frozen.entropy()), rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("dim,kappa", EDGES)
def test_edge_cases_are_finite_and_right(dim, kappa, rng):
    loc = unit(rng, dim)
    k = torch.tensor(kappa, dtype=torch.float64, requires_grad=True)
    l_ = loc.clone().requires_grad_()
    dist = VonMisesFisher(l_, k)
    x = dist.rsample((2000,))
    assert torch.isfinite(x).all()
    log_prob, entropy = dist.log_prob(x), dist.entropy()
    assert torch.isfinite(log_prob).all() and torch.isfinite(entropy)
    grads = torch.autograd.grad(x.sum() + log_prob.sum() + entropy, (l_, k))
    assert all(torch.isfinite(g).all() for g in grads)
    # E[u] = A_D(kappa) mu and the diagonal of Cov[u] within Monte Carlo error
    mean, variance = dist.mean.detach(), dist.variance.detach()
    assert ((x.detach().mean(0) - mean).abs() <= 6 * (variance / 2000).sqrt() + 1e-12).all()
    if kappa == 0:
        torch.testing.assert_close(variance, torch.full((dim,), 1 / dim, dtype=torch.float64))
        torch.testing.assert_close(entropy.detach(), HypersphericalUniform(dim, dtype=torch.float64).entropy())


def test_variance_matches_samples(rng):
    dim, n = 4, 200000
    dist = VonMisesFisher(unit(rng, 2, dim), torch.tensor([0.7, 25.0], dtype=torch.float64))
    x = dist.sample((n,))
    assert ((x.var(0) - dist.variance).abs() <= 6 * math.sqrt(2 / n) * dist.variance + 1e-12).all()


def test_hyperspherical_uniform(rng):
    for dim in (2, 3, 10):
        uniform = HypersphericalUniform(dim, (2,), dtype=torch.float64)
        x = uniform.sample((3000,))
        assert x.shape == (3000, 2, dim)
        torch.testing.assert_close(x.norm(dim=-1), torch.ones(3000, 2, dtype=torch.float64))
        assert (x.mean(dim=0).abs() < 6 * math.sqrt(1 / (dim * 3000))).all()
        log_area = math.log(2) + dim / 2 * math.log(math.pi) - math.lgamma(dim / 2)
        torch.testing.assert_close(uniform.log_prob(x), torch.full((3000, 2), -log_area, dtype=torch.float64))
        torch.testing.assert_close(uniform.entropy(), torch.full((2,), log_area, dtype=torch.float64))
    assert float(HypersphericalUniform(3, dtype=torch.float64).entropy()) == pytest.approx(math.log(4 * math.pi))
    u = HypersphericalUniform(5, (3,))
    assert u.sample().dtype == torch.get_default_dtype() and u.expand((2, 3)).sample((4,)).shape == (4, 2, 3, 5)
    assert torch.isnan(u.mode).all() and (u.mean == 0).all()
    assert_same_draws(u.sample(seed=5), u.rsample(seed=5))


def test_kl_divergence_dispatch_and_closed_forms(rng):
    dim = 5
    p = VonMisesFisher(unit(rng, 3, dim), torch.tensor([0.5, 4.0, 60.0], dtype=torch.float64))
    q = VonMisesFisher(unit(rng, 3, dim), torch.tensor([2.0, 0.0, 30.0], dtype=torch.float64))
    uniform = HypersphericalUniform(dim, (3,), dtype=torch.float64)
    n = 100000
    for a, b in ((p, q), (p, uniform), (uniform, q)):
        kl = kl_divergence(a, b)
        assert kl.shape == (3,) and (kl >= 0).all()
        x = a.sample((n,))
        log_ratio = a.log_prob(x) - b.log_prob(x)
        assert ((log_ratio.mean(0) - kl).abs() <= 6 * log_ratio.std(0) / math.sqrt(n) + 1e-12).all()
    torch.testing.assert_close(kl_divergence(p, p), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(kl_divergence(uniform, uniform), torch.zeros(3, dtype=torch.float64))
    # broadcasting: a batch of 3 against a single distribution
    assert kl_divergence(p, HypersphericalUniform(dim, dtype=torch.float64)).shape == (3,)
    with pytest.raises(ValueError, match="one sphere"):
        kl_divergence(p, HypersphericalUniform(dim + 1, dtype=torch.float64))
    # kl of PenultimateDistribution per class equals that of its components
    weight = torch.randn(4, dim, generator=rng, dtype=torch.float64)
    other = torch.randn(4, dim, generator=rng, dtype=torch.float64)
    fam, fam2 = PenultimateDistribution(weight, radius=3.0), PenultimateDistribution(other, radius=3.0)
    torch.testing.assert_close(kl_divergence(fam.component(torch.arange(4)), fam2.component(torch.arange(4))),
                               fam.kl(fam2), rtol=1e-12, atol=1e-12)


def test_gradcheck_closed_forms():
    """entropy, log_prob, KL: float64 gradcheck in loc (through a normalization) and concentration."""
    raw = torch.tensor([[0.3, -1.2, 0.5], [1.0, 0.2, -0.4]], dtype=torch.float64, requires_grad=True)
    raw2 = torch.tensor([[0.9, 0.1, 0.5], [-0.3, 0.7, 0.2]], dtype=torch.float64, requires_grad=True)
    kappa = torch.tensor([0.8, 35.0], dtype=torch.float64, requires_grad=True)
    kappa2 = torch.tensor([3.0, 0.5], dtype=torch.float64, requires_grad=True)
    value = torch.nn.functional.normalize(torch.tensor([[0.1, 0.2, 0.9], [0.5, -0.5, 0.1]], dtype=torch.float64), dim=-1)

    def vmf(r, k):
        return VonMisesFisher(torch.nn.functional.normalize(r, dim=-1), k)

    assert torch.autograd.gradcheck(lambda r, k: vmf(r, k).entropy(), (raw, kappa))
    assert torch.autograd.gradcheck(lambda r, k: vmf(r, k).log_prob(value), (raw, kappa))
    assert torch.autograd.gradcheck(lambda r, k: vmf(r, k).variance, (raw, kappa))
    assert torch.autograd.gradcheck(lambda r, k, r2, k2: kl_divergence(vmf(r, k), vmf(r2, k2)), (raw, kappa, raw2, kappa2))
    uniform = HypersphericalUniform(3, (2,), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda r, k: kl_divergence(vmf(r, k), uniform), (raw, kappa))


def test_rsample_gradient_of_a_batch(rng):
    """Monte Carlo gradient of E[b . u] = A_D(kappa) b . mu over a batch with sample_shape: the
    per-element mean of the gradients matches autograd of the closed form."""
    dim, n = 4, 40000
    raw = torch.randn(2, dim, generator=rng, dtype=torch.float64)
    kappa = torch.tensor([1.5, 20.0], dtype=torch.float64)
    b = torch.randn(dim, generator=rng, dtype=torch.float64)

    def loc(r):
        return torch.nn.functional.normalize(r, dim=-1)

    r_, k_ = raw.clone().requires_grad_(), kappa.clone().requires_grad_()
    grad = torch.autograd.grad((VonMisesFisher(loc(r_), k_).rsample((n,)) @ b).mean(0).sum(), (r_, k_))
    r2, k2 = raw.clone().requires_grad_(), kappa.clone().requires_grad_()
    truth = torch.autograd.grad((VonMisesFisher(loc(r2), k2).mean @ b).sum(), (r2, k2))
    # standard errors from the per-draw spread of the same estimator, one batch element per row
    rows_r = raw.repeat(n, 1).requires_grad_()
    rows_k = kappa.repeat(n).requires_grad_()
    per_row = torch.autograd.grad((VonMisesFisher(loc(rows_r), rows_k).rsample() @ b).sum(), (rows_r, rows_k))
    se_r = per_row[0].reshape(n, 2, dim).std(0) / math.sqrt(n)
    se_k = per_row[1].reshape(n, 2).std(0) / math.sqrt(n)
    assert ((grad[0] - truth[0]).abs() <= 5 * se_r + 1e-12).all()
    assert ((grad[1] - truth[1]).abs() <= 5 * se_k + 1e-12).all()


def test_seeds_follow_torch_manual_seed(rng):
    dist = VonMisesFisher(unit(rng, 3, 4), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    torch.manual_seed(123)
    a = dist.sample((5,))
    torch.manual_seed(123)
    b = dist.sample((5,))
    assert_same_draws(a, b)
    assert not torch.equal(dist.sample((5,)), dist.sample((5,)))
    with pytest.raises(ValueError, match="offset needs an explicit seed"):
        dist.sample(offset=3)


def test_mixture_same_family(rng):
    """torch.distributions composes with it: a mixture of vMFs, sampled and scored."""
    mixture = MixtureSameFamily(Categorical(logits=torch.zeros(3, dtype=torch.float64)),
                                VonMisesFisher(unit(rng, 3, 4), torch.tensor([5.0, 10.0, 20.0], dtype=torch.float64)))
    x = mixture.sample((10,))
    assert x.shape == (10, 4) and torch.isfinite(mixture.log_prob(x)).all()


def test_empty_and_float32(rng):
    dist = VonMisesFisher(unit(rng, 0, 3), torch.empty(0, dtype=torch.float64))
    assert dist.sample((2,)).shape == (2, 0, 3) and dist.log_prob(torch.empty(2, 0, 3, dtype=torch.float64)).shape == (2, 0)
    single = VonMisesFisher(unit(rng, 6, dtype=torch.float32), 3.0)
    assert single.sample((0,)).shape == (0, 6)
    x = single.rsample((100,))
    assert x.dtype == torch.float32 and single.log_prob(x).dtype == torch.float32
