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
from penact import ops
from penact import reference
from conftest import DTYPES

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
    n, h = 40, 1e-4
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
            draws = {}
            for step in (h, -h, 2 * h, -2 * h):
                moved = [p.clone() for p in params]
                moved[k][..., j] += step
                draws[step] = ops.rectified_sample(*moved, labels, seed, 0)[:, j]
            stable = torch.stack(list(draws.values())).gt(0).all(dim=0)  # no decision flipped by the steps
            assert stable.float().mean() > 0.3
            # The sampler inverts the CDF to ~1e-12 relative, an error a central difference multiplies by
            # 1 / h (at h = 1e-6 it reached the tolerance on 2 seeds in 13): a wider step, with Richardson's
            # extrapolation (error O(h^4)) to keep its truncation error below the tolerance too.
            fd = (4 * (draws[h] - draws[-h]) / (2 * h) - (draws[2 * h] - draws[-2 * h]) / (4 * h)) / 3
            torch.testing.assert_close(got[k][stable, j], fd[stable], rtol=1e-6, atol=1e-7)


def moment_derivatives(weight, scale, zero_mass):
    """d E[a^k] / d(w, s, m) for k = 1, 2, [2, 3, D] float64: w and s by central differences of the
    closed-form moments; m exactly, -E[a^k] / z (E[a^k] = int a^k exp(w a) nu(da) / z, and only z
    holds m)."""
    weight, scale, zero_mass = weight.double(), scale.double(), zero_mass.double()

    def moments(w, s):
        return ops.rectified_coordinate_stats(w, s, zero_mass)[2:4, 0]

    h_w, h_s = 1e-5 / scale, 1e-5 * scale
    d_w = (moments(weight + h_w, scale) - moments(weight - h_w, scale)) / (2 * h_w)
    d_s = (moments(weight, scale + h_s) - moments(weight, scale - h_s)) / (2 * h_s)
    log_z, _, mean, second, _ = ops.rectified_coordinate_stats(weight, scale, zero_mass)[:, 0]
    d_m = -torch.stack([mean, second]) * torch.exp(-log_z)
    return torch.stack([d_w, d_s, d_m], dim=1), second - mean * mean


@pytest.mark.parametrize("dtype", DTYPES)
def test_monte_carlo_gradients_of_moments(dtype, rng):
    """d/dtheta E[a_j] and d/dtheta E[a_j^2], theta = w, s, m, in every regime: the mean of the
    rsample gradients over 1e5 draws (40 calls of 2500 draws) is within 5 standard errors of the
    closed form (and d/dw E[a] is Var[a], as for any exponential family)."""
    weight, scale, zero_mass = regime_params(rng, dtype)
    truth, variance = moment_derivatives(weight, scale, zero_mass)
    torch.testing.assert_close(truth[0, 0], variance, rtol=1e-7, atol=1e-12)
    batches, rows, seed = 40, 2500, new_seed(rng)
    labels = torch.zeros(rows, dtype=torch.long)
    estimates = []
    for b in range(batches):
        leaves = [p.clone().requires_grad_() for p in (weight, scale, zero_mass)]
        x = ops.rectified_rsample(*leaves, labels, seed, b * rows)
        per_power = [torch.autograd.grad(f.sum() / rows, leaves, retain_graph=True) for f in (x, x * x)]
        estimates.append(torch.stack([torch.stack([g.reshape(-1).double() for g in grads]) for grads in per_power]))
    estimates = torch.stack(estimates)  # [batch, power, parameter, D]
    mean, standard_error = estimates.mean(dim=0), estimates.std(dim=0) / math.sqrt(batches)
    # where a draw's gradient hardly varies (t = 30: da/dw = s^2), the rounding of the gradients
    # to dtype and of the finite differences (~1e-9) bound the agreement instead
    slack = 5 * standard_error + (1e-6 if dtype == torch.float32 else 1e-8) * truth.abs() + 1e-12
    bad = (mean - truth).abs() > slack
    assert not bad.any(), [(p, k, REGIMES[j]) for p, k, j in bad.nonzero().tolist()]


# ---------------------------------------------------------------------------------------------
# The differentiable mean, the entropy and the KL.


def random_pair(rng, c=3, d=6):
    """Two weights [C, D] and a shared scale [D], zero_mass [D] (one coordinate without an atom)."""
    weight = torch.randn(c, d, generator=rng, dtype=torch.float64) * 1.5
    other = weight + torch.randn(c, d, generator=rng, dtype=torch.float64)
    scale = 0.4 + 2 * torch.rand(d, generator=rng, dtype=torch.float64)
    zero_mass = 0.1 + 2 * torch.rand(d, generator=rng, dtype=torch.float64)
    zero_mass[0] = 0.0
    return weight, other, scale, zero_mass


def test_mean_gradcheck(rng):
    weight, _, scale, zero_mass = random_pair(rng)
    weight[0, :3] = torch.tensor([-30.0, 12.0, 0.0]) / scale[:3]  # far tails and t = 0
    zero_mass[0] = 0.3  # gradcheck perturbs m both ways
    leaves = [p.clone().requires_grad_() for p in (weight, scale, zero_mass)]
    assert torch.autograd.gradcheck(ops.rectified_mean, leaves)
    dist = RectifiedDistribution(*leaves[:1], None, *leaves[1:])
    torch.testing.assert_close(dist.mean(), ops.rectified_coordinate_stats(weight, scale, zero_mass)[2], rtol=0, atol=0)


def test_kl_closed_form(rng):
    """KL >= 0, = 0 at equal weights, its gradients (Var[a] (w - w') and E'[a] - E[a]), and
    gradcheck in both weights and the shared scale and zero mass."""
    weight, other, scale, zero_mass = random_pair(rng)
    w, v = weight.clone().requires_grad_(), other.clone().requires_grad_()
    q, p = RectifiedDistribution(w, None, scale, zero_mass), RectifiedDistribution(v, None, scale, zero_mass)
    kl = q.kl(p)
    assert kl.shape == (3,) and (kl > 0).all()
    assert torch.equal(q.kl(RectifiedDistribution(weight, None, scale, zero_mass)), torch.zeros(3, dtype=torch.float64))
    grad_w, grad_v = torch.autograd.grad(kl.sum(), (w, v))
    stats_q = ops.rectified_coordinate_stats(weight, scale, zero_mass)
    stats_p = ops.rectified_coordinate_stats(other, scale, zero_mass)
    variance = stats_q[3] - stats_q[2] ** 2
    torch.testing.assert_close(grad_w, variance * (weight - other), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_v, stats_p[2] - stats_q[2], rtol=1e-10, atol=1e-12)
    zero_mass = zero_mass + 0.05  # gradcheck perturbs m both ways
    s, m = scale.clone().requires_grad_(), zero_mass.clone().requires_grad_()

    def kl_of(w, v, s, m):
        return RectifiedDistribution(w, None, s, m).kl(RectifiedDistribution(v, None, s, m))

    assert torch.autograd.gradcheck(kl_of, (w, v, s, m))


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_and_entropy_match_monte_carlo(dtype, rng):
    """KL(q || p) = E_q[log q(a) - log p(a)] (rectified_log_prob: the base measures cancel) and the
    entropy w.r.t. nu = -E_q[w . a - log Z] (log_prob minus the base measure's log-density), within
    5 standard errors over 1e5 draws."""
    weight, other, scale, zero_mass = (t.to(dtype) for t in random_pair(rng))
    q, p = RectifiedDistribution(weight, None, scale, zero_mass), RectifiedDistribution(other, None, scale, zero_mass)
    n = 100000
    labels = torch.arange(n) % 3
    a = q.sample(labels, seed=new_seed(rng))
    log_ratio = (q.log_prob(a, labels) - p.log_prob(a, labels)).double()
    log_nu = (q.log_prob(a, labels) - reference.rectified_base_measure(a, scale, zero_mass)).double()
    for y in range(3):
        for closed, draws in ((q.kl(p)[y], log_ratio[labels == y]), (q.entropy()[y], -log_nu[labels == y])):
            se = float(draws.std()) / math.sqrt(len(draws))
            assert abs(float(closed) - float(draws.mean())) <= 5 * se + 1e-5 * abs(float(closed)), (y, float(closed))


# ---------------------------------------------------------------------------------------------
# Operator hygiene, second derivatives, bad input.


def test_opcheck_and_compile(rng):
    weight, other, scale, zero_mass = random_pair(rng)
    zero_mass = zero_mass + 0.1
    labels = torch.tensor([0, 2, 1, 2, 0])
    leaves = [t.clone().requires_grad_() for t in (weight, scale, zero_mass)]
    penact_ops = torch.ops.penact
    torch.library.opcheck(penact_ops.rectified_rsample.default, (*leaves, labels, 4, 2))
    torch.library.opcheck(penact_ops.rectified_mean.default, tuple(leaves))
    sample = ops.rectified_sample(weight, scale, zero_mass, labels, 4, 2)
    torch.library.opcheck(penact_ops.rectified_rsample_backward.default,
                          (torch.randn(5, 6, dtype=torch.float64), sample, weight, scale, zero_mass, labels))
    torch.library.opcheck(penact_ops.rectified_mean_backward.default,
                          (torch.randn(3, 6, dtype=torch.float64), weight, scale, zero_mass))

    def loss(w, s, m):
        q = RectifiedDistribution(w, None, s, m)
        x = q.rsample(labels, seed=4, offset=2)
        return (x ** 3).sum() + q.kl(RectifiedDistribution(other, None, s, m)).sum() + q.entropy().sum()

    eager = torch.autograd.grad(loss(*leaves), leaves)
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True, backend="aot_eager")(*leaves), leaves)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b)


def test_second_derivatives_are_refused(rng):
    weight, _, scale, zero_mass = random_pair(rng)
    w = weight.clone().requires_grad_()
    for value in (ops.rectified_rsample(w, scale, zero_mass, torch.tensor([0, 1, 2]), 3, 0).sum(),
                  ops.rectified_mean(w, scale, zero_mass).sum()):
        (grad,) = torch.autograd.grad(value, w, create_graph=True)
        with pytest.raises(NotImplementedError, match="second derivatives"):
            grad.sum().backward()


def test_log_partition_second_derivative_in_weight_is_the_variance(rng):
    """d^2 log z / dw^2 = Var[a] (through rectified_mean); in scale or zero_mass it raises, never a silent 0."""
    weight, _, scale, zero_mass = random_pair(rng)
    w = weight.clone().requires_grad_()
    (grad,) = torch.autograd.grad(ops.rectified_log_partition(w, scale, zero_mass).sum(), w, create_graph=True)
    (curvature,) = torch.autograd.grad(grad.sum(), w)
    _, _, mean, second_moment, _ = ops.rectified_coordinate_stats(weight, scale, zero_mass)
    torch.testing.assert_close(curvature, second_moment - mean**2, rtol=1e-10, atol=1e-12)
    s = scale.clone().requires_grad_()
    (grad,) = torch.autograd.grad(ops.rectified_log_partition(weight, s, zero_mass).sum(), s, create_graph=True)
    with pytest.raises(NotImplementedError, match="second derivatives of rectified_log_partition"):
        grad.sum().backward()


def test_bad_input_raises(rng):
    weight, other, scale, zero_mass = random_pair(rng)
    w = weight.clone().requires_grad_()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        ops.rectified_rsample(w, scale, zero_mass, torch.tensor([0, 3]), 1, 0)
    with pytest.raises(ValueError, match="scale must be finite and positive"):
        ops.rectified_rsample(w, -scale, zero_mass, torch.tensor([0]), 1, 0)
    with pytest.raises(ValueError, match="offset must be non-negative"):
        ops.rectified_rsample(w, scale, zero_mass, torch.tensor([0]), 1, -1)
    with pytest.raises(ValueError, match="seed must lie in"):
        ops.rectified_rsample(w, scale, zero_mass, torch.tensor([0]), 2**64, 0)
    q = RectifiedDistribution(weight, None, scale, zero_mass)
    with pytest.raises(ValueError, match="offset needs an explicit seed"):
        q.rsample(torch.tensor([0]), offset=3)
    with pytest.raises(ValueError, match="other must have the same scale"):
        q.kl(RectifiedDistribution(other, None, scale * 1.5, zero_mass))
    with pytest.raises(ValueError, match="other must have the same zero_mass"):
        q.kl(RectifiedDistribution(other, None, scale, zero_mass + 1))
    with pytest.raises(ValueError, match=r"other must have weight of shape \(3, 6\)"):
        q.kl(RectifiedDistribution(other[:2], None, scale, zero_mass))
    with pytest.raises(ValueError, match="dtype torch.float64"):
        q.kl(RectifiedDistribution(other.float(), None, scale, zero_mass))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", ["few", "one per row"])
def test_fused_backward_matches_its_torch_twin(dtype, classes, rng, device):
    """The fused kernel against the float64 torch twin (penact.reference), with draws from every
    regime (t = s w from -30 to 30, with and without atoms) and, as a VAE's posteriors have it, one
    class per row; float64 throughout both, so they agree to rounding of the sums."""
    weight, scale, zero_mass = regime_params(rng, dtype)
    n = 600
    if classes == "few":
        weight = torch.cat([weight, 0.5 * weight, -weight])
        labels = torch.randint(0, 3, (n,), generator=rng)
    else:
        weight = weight.repeat(n, 1) * (1 + 0.1 * torch.rand(n, 1, generator=rng, dtype=torch.float64)).to(dtype)
        labels = torch.arange(n)
    args = [t.to(device) for t in (weight, scale, zero_mass)]
    sample = ops.rectified_sample(*args, labels.to(device), 5, 0)
    grad = torch.randn(sample.shape, generator=rng, dtype=torch.float64).to(dtype).to(device)
    fused = torch.ops.penact.rectified_rsample_backward(grad, sample, *args, labels.to(device))
    twin = reference.rectified_rsample_backward(grad, sample, *args, labels.to(device))
    for name, mine, theirs in zip(("weight", "scale", "zero_mass"), fused, twin):
        assert mine.dtype == dtype and mine.shape == theirs.shape, name
        scale_of_sum = theirs.double().abs().max().clamp_min(1)
        torch.testing.assert_close(mine.double(), theirs.double(), rtol=1e-9 if dtype == torch.float64 else 1e-5,
                                   atol=1e-9 * float(scale_of_sum), msg=name)
