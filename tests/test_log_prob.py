"""Log-densities: against scipy and mpmath, the GD-pair identity, normalization, gradients,
opcheck and torch.compile."""
import math

import mpmath
import numpy as np
import pytest
import scipy.stats
import torch

import mp_reference as ref
from penact import PenultimateDistribution, ops
from penact import reference


def random_dist(rng, c=6, dim=9, radius=1.7, dtype=torch.float64, device="cpu", scale=2.0):
    weight = torch.randn(c, dim, generator=rng, dtype=dtype) * scale
    bias = torch.randn(c, generator=rng, dtype=dtype)
    return PenultimateDistribution(weight.to(device), bias.to(device), radius=radius)


@pytest.mark.parametrize("dim,scale", [(3, 1.0), (10, 5.0), (64, 3.0)])
def test_matches_scipy_where_finite(dim, scale, rng):
    dist = random_dist(rng, c=4, dim=dim, radius=1.0, scale=scale)
    x = torch.randn(50, dim, generator=rng, dtype=torch.float64)
    labels = torch.randint(0, 4, (50,), generator=rng)
    got = dist.log_prob(x, labels)
    u = (x / x.norm(dim=1, keepdim=True)).numpy()
    for y in range(4):
        rows = (labels == y).numpy()
        if not rows.any():
            continue
        frozen = scipy.stats.vonmises_fisher(dist.mean_direction[y].detach().numpy(), float(dist.kappa[y]))
        expected = frozen.logpdf(u[rows])
        finite = np.isfinite(expected)
        np.testing.assert_allclose(got.detach().numpy()[rows][finite], expected[finite], rtol=1e-12, atol=1e-12)


def test_matches_mpmath_where_scipy_fails():
    """D = 4096, kappa = 1e5: scipy's normalizer overflows; the 50-digit reference does not."""
    dim, kappa = 4096, 1e5
    weight = torch.zeros(1, dim, dtype=torch.float64)
    weight[0, 0] = kappa
    dist = PenultimateDistribution(weight, radius=1.0)
    x = torch.zeros(1, dim, dtype=torch.float64)
    x[0, 0], x[0, 1] = 0.6, 0.8
    expected = ref.vmf_log_normalizer(dim, kappa) + kappa * mpmath.mpf("0.6")
    assert float(dist.log_prob(x, torch.tensor([0]))) == pytest.approx(float(expected), rel=1e-13)


def test_gd_pair_is_exact(rng, device):
    """posterior(x) = softmax(W x + b) on the sphere, to rounding, also for activations given off
    the sphere (evaluated at their direction)."""
    for radius in (0.3, 1.0, 12.0):
        dist = random_dist(rng, c=10, dim=32, radius=radius, device=device)
        x, _ = dist.sample_n(300, seed=int(torch.randint(0, 2**40, (), generator=rng)))
        logits = x @ dist.weight.t() + dist.bias
        torch.testing.assert_close(dist.posterior(x), torch.softmax(logits, dim=1), rtol=0, atol=1e-13)
        a = torch.randn(100, 32, generator=rng, dtype=torch.float64).to(device) * 5
        on_sphere = radius * a / a.norm(dim=1, keepdim=True)
        torch.testing.assert_close(dist.posterior(a), torch.softmax(on_sphere @ dist.weight.t() + dist.bias, dim=1),
                                   rtol=0, atol=1e-13)
        # log p(x) = logsumexp(W x + b) - log Z
        log_z = torch.logsumexp(dist.bias - dist.log_normalizer, dim=0)
        torch.testing.assert_close(dist.log_marginal(x), torch.logsumexp(logits, dim=1) - log_z)


def test_labelled_equals_all_classes_and_twin(rng, device):
    dist = random_dist(rng, c=5, dim=20, device=device)
    x = torch.randn(64, 20, generator=rng, dtype=torch.float64).to(device)
    labels = torch.randint(0, 5, (64,), generator=rng).to(device)
    all_classes = dist.log_prob_all(x)
    torch.testing.assert_close(dist.log_prob(x, labels), all_classes.gather(1, labels[:, None])[:, 0])
    lognorm = dist.log_normalizer
    torch.testing.assert_close(dist.log_prob(x, labels), reference.vmf_log_prob(x, dist.weight, lognorm, labels, dist.radius))
    torch.testing.assert_close(all_classes, reference.vmf_log_prob_all(x, dist.weight, lognorm, dist.radius))


def test_density_integrates_to_one(rng):
    """E_uniform[p(u)] |S^{D-1}| = 1, by Monte Carlo on D = 3 and D = 5."""
    for dim in (3, 5):
        dist = random_dist(rng, c=3, dim=dim, radius=1.0, scale=1.5)
        u = torch.randn(200000, dim, generator=rng, dtype=torch.float64)
        area = 2 * math.pi ** (dim / 2) / math.gamma(dim / 2)
        density = dist.log_prob_all(u).exp()
        estimate = density.mean(dim=0) * area
        stderr = density.std(dim=0) * area / math.sqrt(u.shape[0])
        assert ((estimate - 1).abs() < 6 * stderr).all(), (estimate, stderr)
        marginal = dist.log_marginal(u).exp()
        assert abs(float(marginal.mean() * area) - 1) < 6 * float(marginal.std() * area) / math.sqrt(u.shape[0])


@pytest.mark.parametrize("xdtype", [torch.float16, torch.bfloat16, torch.float32])
def test_reduced_precision_x(xdtype, rng):
    dist = random_dist(rng, c=4, dim=48, dtype=torch.float32)
    x = torch.randn(40, 48, generator=rng).to(xdtype)
    labels = torch.randint(0, 4, (40,), generator=rng)
    got = dist.log_prob(x, labels)
    assert got.dtype == torch.float32
    expected = reference.vmf_log_prob(x.double(), dist.weight.double(), dist.log_normalizer.double(), labels, dist.radius)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dist.log_prob_all(x).double(),
                               reference.vmf_log_prob_all(x.double(), dist.weight.double(), dist.log_normalizer.double(),
                                                          dist.radius), rtol=1e-5, atol=1e-5)


def test_noncontiguous_and_empty(rng):
    dist = random_dist(rng, c=4, dim=6)
    x = torch.randn(6, 30, generator=rng, dtype=torch.float64).t()[::2]  # [15, 6], strided
    labels = torch.randint(0, 4, (30,), generator=rng)[::2]
    torch.testing.assert_close(dist.log_prob(x, labels), dist.log_prob(x.contiguous(), labels.contiguous()), rtol=0, atol=0)
    torch.testing.assert_close(dist.log_prob_all(x), dist.log_prob_all(x.contiguous()))  # BLAS may round differently
    empty = torch.empty(0, 6, dtype=torch.float64)
    assert dist.log_prob(empty, torch.empty(0, dtype=torch.long)).shape == (0,)
    assert dist.log_prob_all(empty).shape == (0, 4)
    assert dist.log_marginal(empty).shape == (0,)


def test_gradcheck(rng):
    weight = (torch.randn(4, 5, generator=rng, dtype=torch.float64) * 2).requires_grad_()
    bias = torch.randn(4, generator=rng, dtype=torch.float64).requires_grad_()
    x = torch.randn(7, 5, generator=rng, dtype=torch.float64).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3, 0, 0, 2])
    lognorm = torch.randn(4, generator=rng, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, w, l: ops.vmf_log_prob(a, w, l, labels, 1.3), (x, weight, lognorm))
    assert torch.autograd.gradcheck(lambda a, w, l: ops.vmf_log_prob_all(a, w, l, 1.3), (x, weight, lognorm))
    # the whole API composes: gradients reach x, weight and bias through kappa and the prior
    assert torch.autograd.gradcheck(
        lambda a, w, b: PenultimateDistribution(w, b, radius=0.9).log_prob(a, labels), (x, weight, bias))
    assert torch.autograd.gradcheck(
        lambda a, w, b: PenultimateDistribution(w, b, radius=0.9).log_marginal(a), (x, weight, bias))


def test_opcheck(rng):
    weight = torch.randn(4, 5, generator=rng, dtype=torch.float64, requires_grad=True)
    x = torch.randn(7, 5, generator=rng, dtype=torch.float64, requires_grad=True)
    lognorm = torch.randn(4, generator=rng, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0, 0, 2])
    torch.library.opcheck(torch.ops.penact.vmf_log_prob.default, (x, weight, lognorm, labels, 1.3))
    torch.library.opcheck(torch.ops.penact.vmf_log_prob_all.default, (x, weight, lognorm, 1.3))
    grad = torch.randn(7, dtype=torch.float64)
    torch.library.opcheck(torch.ops.penact.vmf_log_prob_backward.default,
                          (grad, x.detach(), weight.detach(), labels, 1.3, True, True))
    mu = torch.nn.functional.normalize(weight.detach(), dim=1)
    torch.library.opcheck(torch.ops.penact.vmf_sample.default, (mu, weight.detach().norm(dim=1), labels, 1.0, 3, 0))


def test_torch_compile_fullgraph(rng):
    dist = random_dist(rng, c=5, dim=16, dtype=torch.float32)
    labels = torch.randint(0, 5, (32,), generator=rng)

    def loss(weight, bias, x):
        d = PenultimateDistribution(weight, bias, radius=2.0)
        return d.log_prob(x, labels).sum() + d.log_marginal(x).sum() + ops.vmf_sample(
            d.mean_direction, d.kappa, labels, 2.0, 7, 0).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    x = torch.randn(32, 16, generator=rng)
    torch.testing.assert_close(compiled(dist.weight, dist.bias, x), loss(dist.weight, dist.bias, x))


def test_closed_forms(rng):
    dist = random_dist(rng, c=3, dim=5, scale=3.0)
    x = dist.sample(torch.arange(3).repeat_interleave(40000), seed=5)
    # mean
    for y in range(3):
        empirical = x[y * 40000:(y + 1) * 40000].mean(dim=0)
        torch.testing.assert_close(empirical, dist.mean()[y], rtol=0, atol=0.03 * dist.radius)
    # entropy = -E[log p(x | y)]
    lp = dist.log_prob(x, torch.arange(3).repeat_interleave(40000)).detach().view(3, -1)
    torch.testing.assert_close(-lp.mean(dim=1), dist.entropy().detach(), rtol=0, atol=0.03)
    # KL(p || q) = E_p[log p - log q], and KL(p || p) = 0
    other = random_dist(rng, c=3, dim=5, scale=3.0)
    labels = torch.arange(3).repeat_interleave(40000)
    mc = (dist.log_prob(x, labels) - other.log_prob(x, labels)).detach().view(3, -1).mean(dim=1)
    torch.testing.assert_close(dist.kl(other).detach(), mc, rtol=0.05, atol=0.05)
    torch.testing.assert_close(dist.kl(dist).detach(), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)


def test_fit_radius(rng):
    """The MLE radius recovers the radius of the model that generated the data; 'norm' is the
    mean norm."""
    weight = torch.randn(5, 12, generator=rng, dtype=torch.float64) * 2
    linear = torch.nn.Linear(12, 5).double()
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.zero_()
    truth = PenultimateDistribution(weight, radius=3.0)
    labels = torch.randint(0, 5, (20000,), generator=rng)
    x = truth.sample(labels, seed=2)
    fitted = PenultimateDistribution.fit(linear, x * 7.0, labels, radius="mle")  # scale-free: directions only
    assert fitted.radius == pytest.approx(3.0, rel=0.03)
    assert PenultimateDistribution.fit(linear, x * 7.0, radius="norm").radius == pytest.approx(21.0, rel=1e-12)
    assert PenultimateDistribution.fit(linear, x, radius="mle").radius > 0  # labels from the classifier
