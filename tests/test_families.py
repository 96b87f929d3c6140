"""What every family must do, checked for each registered family on every device and dtype (the
family x device x dtype matrix of conftest.py), through the public protocol only: the GD pair, the
support of samples, the randomness contract, the densities against each other, rsample, the
closed forms against Monte Carlo, bad labels, and the README's way of building a family, a live
trainable ``nn.Linear`` at realistic sizes with and without grad."""
import pytest
import torch

import penact
from conftest import EPS, class_activations, fitted_family


def on_support(dist, x):
    """Whether every row of x lies in the family's support (up to rounding)."""
    return torch.allclose(dist.support(x), x, rtol=64 * EPS[x.dtype], atol=64 * EPS[x.dtype])


def test_registry_knows_the_families():
    assert penact.family_names()[:2] == ("sphere", "rectified")
    assert penact.get_family("sphere") is penact.SphereDistribution is penact.PenultimateDistribution
    with pytest.raises(ValueError, match="family must be one of"):
        penact.get_family("gaussian")


def test_gd_pair_is_exact(family, device, dtype, rng):
    dist = fitted_family(family, rng, dtype=dtype, device=device)
    labels = torch.randint(0, dist.num_classes, (500,), generator=rng).to(device)
    x = dist.sample(labels, seed=3)
    activations = class_activations(rng, dist.weight.detach(), labels, spread=3.0)
    real = dist.support(activations[activations.norm(dim=1) > 0])  # a zero activation has no direction
    for points in (x, real):
        softmax = torch.softmax(points @ dist.weight.T + dist.bias, dim=1)
        # the posterior forms logits of magnitude ~|w . x| + |log Z|: rounding of a few ulps of those
        scale = float((points.abs() @ dist.weight.abs().T).max() + dist.log_partition.abs().max())
        torch.testing.assert_close(dist.posterior(points), softmax, rtol=0, atol=64 * EPS[dtype] * scale)


def test_samples_lie_in_the_support_and_follow_the_contract(family, device, dtype, rng):
    dist = fitted_family(family, rng, dtype=dtype, device=device)
    labels = torch.randint(0, dist.num_classes, (700,), generator=rng).to(device)
    x = dist.sample(labels, seed=2**64 - 5, offset=11)
    assert x.shape == (700, dist.dim) and x.dtype == dtype and x.device.type == device
    assert torch.isfinite(x).all() and on_support(dist, x)
    assert torch.equal(dist.sample(labels, seed=2**64 - 5, offset=11), x)  # same seed, same draw
    assert not torch.equal(dist.sample(labels, seed=7, offset=11), x)
    for begin, end in [(0, 1), (31, 33), (100, 700)]:  # row i depends only on (seed, offset + i)
        assert torch.equal(dist.sample(labels[begin:end], seed=2**64 - 5, offset=11 + begin), x[begin:end])
    assert dist.sample(labels[:0], seed=1).shape == (0, dist.dim)


def test_densities_agree(family, device, dtype, rng):
    dist = fitted_family(family, rng, dtype=dtype, device=device)
    labels = torch.randint(0, dist.num_classes, (300,), generator=rng).to(device)
    x = dist.sample(labels, seed=5)
    every = dist.log_prob_all(x)
    assert every.shape == (300, dist.num_classes) and every.dtype == dtype
    labelled = dist.log_prob(x, labels)
    tolerance = 64 * EPS[dtype] * float(every.abs().max().clamp_min(1))
    torch.testing.assert_close(labelled, every.gather(1, labels[:, None]).squeeze(1), rtol=0, atol=tolerance)
    torch.testing.assert_close(dist.log_marginal(x), torch.logsumexp(every + dist.log_prior, dim=1), rtol=0,
                               atol=tolerance)
    torch.testing.assert_close(dist.log_prior.exp().sum(), torch.ones((), dtype=dtype, device=device))


def test_rsample_is_sample_and_carries_gradients(family, device, dtype, rng):
    dist = fitted_family(family, rng, dtype=dtype, device=device)
    weight = dist.weight.detach().clone().requires_grad_()
    live = dist.with_weight(weight, dist.bias.detach())
    labels = torch.randint(0, dist.num_classes, (400,), generator=rng).to(device)
    x = live.rsample(labels, seed=9)
    assert torch.equal(x.detach(), live.sample(labels, seed=9))
    (grad,) = torch.autograd.grad(x.square().sum(), weight)
    assert grad.shape == weight.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_mean_matches_samples(family, device, rng):
    dist = fitted_family(family, rng, device=device)
    n = 20000
    labels = torch.arange(dist.num_classes, device=device).repeat_interleave(n // dist.num_classes)
    x = dist.sample(labels, seed=13).view(dist.num_classes, -1, dist.dim)
    # ||mean error||^2 has expectation trace(Cov) / m; 4 times that is a tail of ~1e-5 at D = 12
    error = (x.mean(dim=1) - dist.mean()).square().sum(dim=1)
    assert (error <= 4 * x.var(dim=1).sum(dim=1) / x.shape[1]).all()


def test_kl_and_entropy(family, device, rng):
    dist = fitted_family(family, rng, device=device)
    assert torch.allclose(dist.kl(dist), torch.zeros(dist.num_classes, dtype=torch.float64, device=device), atol=1e-10)
    other = dist.with_weight(dist.weight.detach() * 1.3 + 0.1)
    assert (dist.kl(other) > 0).all() and torch.isfinite(dist.entropy()).all()


def test_bad_labels_raise(family, device, rng):
    dist = fitted_family(family, rng, device=device)
    x = dist.sample(torch.zeros(4, dtype=torch.long, device=device), seed=1)
    c = dist.num_classes
    for labels in ([0, c], [-1, 0, 1, 2]):
        bad = torch.tensor(labels, device=device)
        pattern = rf"labels must lie in \[0, {c}\), got 1 outside it"
        with pytest.raises(ValueError, match=pattern):
            dist.sample(bad, seed=1)
        with pytest.raises(ValueError, match=pattern):
            dist.log_prob(x[:len(labels)], bad)


# ------------------------------------------------------------------------------------------------
# The README's way: a live, trainable nn.Linear, N >= 10,000, with and without grad.

README_RADIUS = 8.0


def readme_family(family, layer, activations, labels):
    """The README builds the sphere family with from_linear(fc, radius=8.0) and fits the others to
    real activations; either way the family holds the layer's live parameters."""
    if family == "sphere":
        return penact.SphereDistribution.from_linear(layer, radius=README_RADIUS)
    return penact.get_family(family).fit(layer, activations, labels)


@pytest.mark.parametrize("grad_mode", ["grad", "no_grad"])
def test_every_method_with_a_trainable_linear(family, device, grad_mode, rng):
    n, dim, classes = 10_000, 64, 10
    torch.manual_seed(int(torch.randint(0, 2**31, (), generator=rng)))
    layer = torch.nn.Linear(dim, classes).to(device)
    assert layer.weight.requires_grad
    labels = torch.randint(0, classes, (n,), generator=rng).to(device)
    activations = class_activations(rng, layer.weight.detach(), labels)
    dist = readme_family(family, layer, activations, labels)
    with torch.enable_grad() if grad_mode == "grad" else torch.no_grad():
        x, y = dist.sample_n(n, seed=4)
        assert x.shape == (n, dim) and y.shape == (n,)
        x_r = dist.rsample(y, seed=4)
        outputs = {
            "log_prob": dist.log_prob(x, y), "log_prob_all": dist.log_prob_all(x), "log_marginal": dist.log_marginal(x),
            "posterior": dist.posterior(x), "log_joint_all": dist.log_joint_all(x), "log_prior": dist.log_prior,
            "mean": dist.mean(), "entropy": dist.entropy(), "kl": dist.kl(dist.with_weight(layer.weight * 0.5)),
            "rsample": x_r, "log_prob_real": dist.log_prob(dist.support(activations), labels),
        }
        for name, value in outputs.items():
            assert torch.isfinite(value).all(), name
            assert value.requires_grad == (grad_mode == "grad"), name
        torch.testing.assert_close(outputs["posterior"], torch.softmax(layer(x), dim=1), rtol=0, atol=1e-4)
        if grad_mode == "grad":
            loss = sum(v.float().mean() for k, v in outputs.items() if k != "posterior")
            loss.backward()
            assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("grad_mode", ["grad", "no_grad"])
def test_drop_ins_with_a_trainable_linear(device, grad_mode, rng):
    n, dim = 10_000, 64
    layer = torch.nn.Linear(dim, 10).to(device)
    with torch.enable_grad() if grad_mode == "grad" else torch.no_grad():
        loc = torch.nn.functional.normalize(layer.weight[torch.arange(n, device=device) % 10], dim=1)
        vmf = penact.VonMisesFisher(loc, layer.weight.norm(dim=1)[torch.arange(n, device=device) % 10] * 8)
        u = vmf.rsample(seed=1)
        values = [u, vmf.log_prob(u), vmf.entropy(), vmf.mean,
                  torch.distributions.kl_divergence(vmf, penact.HypersphericalUniform(dim, device=device))]
        for value in values:
            assert torch.isfinite(value).all() and value.requires_grad == (grad_mode == "grad")
        if grad_mode == "grad":
            sum(v.mean() for v in values).backward()
            assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0


def test_protocol_copies(family, device, rng):
    """detach, to and with_weight: shallow copies of the same distribution, no value check again."""
    dist = fitted_family(family, rng, device=device)
    live = dist.with_weight(dist.weight.detach().clone().requires_grad_(), dist.bias.detach())
    assert live.weight.requires_grad and not live.detach().weight.requires_grad
    assert type(live.detach()) is type(dist)
    single = dist.to(dtype=torch.float32)
    assert all(t.dtype == torch.float32 for t in vars(single).values() if isinstance(t, torch.Tensor))
    labels = torch.arange(dist.num_classes, device=device)
    torch.testing.assert_close(single.log_prob(single.sample(labels, seed=1), labels),
                               dist.log_prob(single.sample(labels, seed=1).double(), labels).float(), rtol=1e-4,
                               atol=1e-3)
    rows = dist.with_weight(dist.weight[:2] * 2)
    assert rows.num_classes == 2 and torch.equal(rows.bias, torch.zeros_like(rows.bias))
    with pytest.raises(ValueError, match="weight must have shape"):
        dist.with_weight(dist.weight[:, :-1])
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        dist.to(dtype=torch.float16)
