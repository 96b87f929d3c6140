"""The rectified family (docs/model.md, section 3): normalizer against numerical integration, the GD pair,
sampling (zero fractions, KS tests against scipy's truncated normal, the exact inverse CDF of the
documented Philox stream), the randomness contract, the MLE fit, gradients, opcheck, bad inputs."""
import math
import os
import subprocess
import sys
import warnings

import mpmath
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
import torch

import penact
from penact import RectifiedDistribution
from penact import ops
from penact import reference
from conftest import DTYPES, EPS, linear_layer


def random_params(rng, c, d, dtype=torch.float64, spread=1.0):
    """weight [C, D], bias [C], scale [D] in (0.3, 3), zero_mass [D] in (0, 2) with one exact 0."""
    weight = torch.randn(c, d, generator=rng, dtype=torch.float64) * spread
    bias = torch.randn(c, generator=rng, dtype=torch.float64)
    scale = 0.3 + 2.7 * torch.rand(d, generator=rng, dtype=torch.float64)
    zero_mass = 2 * torch.rand(d, generator=rng, dtype=torch.float64)
    zero_mass[int(torch.randint(0, d, (), generator=rng))] = 0.0
    return weight.to(dtype), bias.to(dtype), scale.to(dtype), zero_mass.to(dtype)


def random_activations(rng, n, d, dtype=torch.float64, zero_fraction=0.4):
    """ReLU-like rows: exact zeros (about zero_fraction of them) and positive values."""
    a = torch.rand(n, d, generator=rng, dtype=torch.float64) * 3
    a[torch.rand(n, d, generator=rng) < zero_fraction] = 0.0
    return a.to(dtype)


# ---------------------------------------------------------------------------------------------
# The normalizer and the moments against numerical integration.


def slab_integral(w, s, power):
    """(L, I) with exp(L) I = int_0^inf a^power exp(w a - a^2 / (2 s^2)) da, independent of the
    kernels. L is the log of the power-0 integrand's maximum, so that integrals of different
    powers share it and their ratios carry no cancellation. Piecewise scipy quad around the peak;
    mpmath's tanh-sinh where quad's error estimate is not small enough."""
    log_scale = 0.5 * (s * w) ** 2 if w > 0 else 0.0
    # the peak of a^power exp(w a - a^2 / (2 s^2)): the positive root of a^2 - s^2 w a - power s^2
    root = math.sqrt((s * s * w) ** 2 + 4 * power * s * s)
    if power == 0:
        a_peak = max(s * s * w, 0.0)
    else:
        a_peak = (s * s * w + root) / 2 if w >= 0 else 2 * power * s * s / (root - s * s * w)

    def integrand(a):
        return a**power * math.exp(w * a - a * a / (2 * s * s) - log_scale)

    width = min(s, 1.0 / abs(w)) if w != 0 else s
    points = sorted({0.0, a_peak} | {max(a_peak + k * width, 0.0) for k in (-30, -8, -2, -0.5, 0.5, 2, 8, 30)})
    total, error = 0.0, 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.integrate.IntegrationWarning)
        for lo, hi in zip(points, points[1:] + [np.inf]):
            value, err = scipy.integrate.quad(integrand, lo, hi, epsabs=0, epsrel=2e-14, limit=200)
            total, error = total + value, error + err
    if error > 1e-14 * total:
        mpmath.mp.dps = 30
        total = float(mpmath.quad(lambda a: a**power * mpmath.exp(w * a - a * a / (2 * s * s) - log_scale),
                                  points + [mpmath.inf]))
    return log_scale, total


def log_z_by_quadrature(w, s, m):
    log_scale, integral = slab_integral(w, s, 0)
    log_slab = log_scale + math.log(integral)
    if m == 0:
        return log_slab
    return max(log_slab, math.log(m)) + math.log1p(math.exp(-abs(log_slab - math.log(m))))


# (s w) from -1e4 to 1e4, three scales and zero masses (0 included).
GRID_T = [-1e4, -1e3, -100.0, -30.0, -8.0, -3.0001, -2.9999, -2.0, -1.0, -1e-3, 0.0, 1e-3, 0.7, 3.0, 8.0, 30.0,
          100.0, 1e3, 1e4]
GRID_SM = [(0.05, 0.0), (1.0, 0.3), (17.0, 5.0)]


@pytest.mark.parametrize("s,m", GRID_SM)
def test_log_z_matches_quadrature(s, m):
    weight = torch.tensor([[t / s for t in GRID_T]], dtype=torch.float64)
    scale = torch.full((len(GRID_T),), s, dtype=torch.float64)
    zero_mass = torch.full((len(GRID_T),), m, dtype=torch.float64)
    got = ops.rectified_coordinate_stats(weight, scale, zero_mass)[0, 0]
    expected = torch.tensor([log_z_by_quadrature(t / s, s, m) for t in GRID_T], dtype=torch.float64)
    # log z reaches 5e7 at s w = 1e4: relative error there, absolute near 0
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)
    assert torch.isfinite(got).all()
    total = ops.rectified_log_partition(weight, scale, zero_mass)
    torch.testing.assert_close(total, expected.sum().reshape(1), rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("s,m", GRID_SM)
def test_moments_match_quadrature(s, m):
    ts = [t for t in GRID_T if abs(t) <= 1e3]
    weight = torch.tensor([[t / s for t in ts]], dtype=torch.float64)
    stats = ops.rectified_coordinate_stats(weight, torch.full((len(ts),), s, dtype=torch.float64),
                                           torch.full((len(ts),), m, dtype=torch.float64))[:, 0]
    for k, t in enumerate(ts):
        w = t / s
        log_scale, slab = slab_integral(w, s, 0)
        log_z = log_z_by_quadrature(w, s, m)
        nonzero = math.exp(log_scale + math.log(slab) - log_z)
        assert stats[1, k].item() == pytest.approx(m * math.exp(-log_z), rel=1e-13, abs=1e-300)
        for row, power in ((2, 1), (3, 2), (4, 4)):
            expected = nonzero * slab_integral(w, s, power)[1] / slab
            assert stats[row, k].item() == pytest.approx(expected, rel=1e-12), (t, power)


def test_log_partition_matches_torch_twin(rng):
    for dtype in DTYPES:
        weight, _, scale, zero_mass = random_params(rng, 7, 33, dtype, spread=2.0)
        got = ops.rectified_log_partition(weight, scale, zero_mass)
        terms = reference.rectified_log_z(weight.double(), scale.double(), zero_mass.double())
        expected = terms.sum(dim=1)
        # rounding relative to the 33 terms summed, each to a few ulp (torch's log_ndtr included)
        tol = 64 * EPS[dtype] * terms.abs().sum(dim=1)
        assert ((got.double() - expected).abs() <= tol).all()


# ---------------------------------------------------------------------------------------------
# Densities and the GD pair.


@pytest.mark.parametrize("dtype", DTYPES)
def test_posterior_is_the_softmax(dtype, rng):
    weight, bias, scale, zero_mass = random_params(rng, 9, 40, dtype)
    zero_mass = zero_mass.clamp_min(0.1)  # a = 0 needs m > 0 to have positive density
    dist = RectifiedDistribution(weight, bias, scale, zero_mass)
    a = random_activations(rng, 300, 40, dtype)
    a[:5] = 0.0  # whole rows of zeros
    a[5:10] *= 20.0  # far from the bulk
    logits = a.double() @ weight.double().t() + bias.double()
    posterior = dist.posterior(a)
    log_joint = dist.log_joint_all(a).double()
    # the identity is exact; what remains is rounding, relative to the largest terms summed
    tol = 64 * EPS[dtype] * float(log_joint.abs().max() + logits.abs().max())
    torch.testing.assert_close(posterior.double(), torch.softmax(logits, dim=1), rtol=0, atol=tol)
    torch.testing.assert_close(log_joint - torch.logsumexp(log_joint, 1, keepdim=True),
                               torch.log_softmax(logits, dim=1), rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_prob_matches_twin(dtype, rng):
    weight, _, scale, zero_mass = random_params(rng, 6, 37, dtype)
    log_partition = ops.rectified_log_partition(weight, scale, zero_mass)
    a = random_activations(rng, 200, 37, dtype)
    labels = torch.randint(0, 6, (200,), generator=rng)
    args = (weight.double(), scale.double(), zero_mass.double(), log_partition.double())
    expected = reference.rectified_log_prob(a.double(), *args, labels)
    expected_all = reference.rectified_log_prob_all(a.double(), *args)
    # rounding relative to the terms summed (they cancel): |w| . a, the base measure's terms, log Z
    base_terms = torch.where(a > 0, a.double() ** 2 / (2 * scale.double() ** 2), zero_mass.double().log().abs())
    magnitude = (a.double() @ weight.double().abs().t()).max() + base_terms.sum(dim=1).max() + log_partition.abs().max()
    tol = 64 * EPS[dtype] * float(magnitude)
    got = ops.rectified_log_prob(a, weight, scale, zero_mass, log_partition, labels)
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isfinite(got), finite) and bool((got[~finite] == -math.inf).all())
    torch.testing.assert_close(got.double()[finite], expected[finite], rtol=0, atol=tol)
    got_all = ops.rectified_log_prob_all(a, weight, scale, zero_mass, log_partition)
    finite_all = torch.isfinite(expected_all)
    assert torch.equal(torch.isfinite(got_all), finite_all)
    torch.testing.assert_close(got_all.double()[finite_all], expected_all[finite_all], rtol=0, atol=tol)
    if dtype == torch.float32:  # float16 / bfloat16 activations with float32 weights
        for reduced in (torch.float16, torch.bfloat16):
            ar = a.to(reduced)
            exp_r = reference.rectified_log_prob(ar.double(), *args, labels)
            got_r = ops.rectified_log_prob(ar, weight, scale, zero_mass, log_partition, labels)
            torch.testing.assert_close(got_r.double()[finite], exp_r[finite], rtol=0, atol=tol)


def test_atom_without_zero_mass_has_no_density(rng):
    weight, _, scale, _ = random_params(rng, 3, 5)
    zero_mass = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    dist = RectifiedDistribution(weight, None, scale, zero_mass)
    a = torch.tensor([[0.0, 1.0, 0.0, 2.0, 0.5], [0.1, 0.0, 0.0, 2.0, 0.5]], dtype=torch.float64)
    lp = dist.log_prob(a, torch.tensor([0, 1]))
    assert lp[0].item() == -math.inf and math.isfinite(lp[1].item())


def test_empty_and_noncontiguous(rng):
    weight, _, scale, zero_mass = random_params(rng, 4, 6)
    dist = RectifiedDistribution(weight, None, scale, zero_mass)
    a = random_activations(rng, 30, 6).t().contiguous().t()[::2]  # strided rows
    labels = torch.randint(0, 4, (30,), generator=rng)[::2]
    assert torch.equal(dist.log_prob(a, labels), dist.log_prob(a.contiguous(), labels.contiguous()))
    empty = torch.empty(0, 6, dtype=torch.float64)
    assert dist.log_prob(empty, torch.empty(0, dtype=torch.long)).shape == (0,)
    assert dist.log_prob_all(empty).shape == (0, 4)
    assert dist.sample(torch.empty(0, dtype=torch.long), seed=1).shape == (0, 6)


# ---------------------------------------------------------------------------------------------
# Sampling.

# s w per coordinate: the inverse CDF up to s w = -2, Robert's sampler beyond (to -1e4).
SAMPLE_T = [6.0, 1.3, 0.0, -0.5, -1.0, -1.99, -2.01, -3.5, -8.0, -40.0, -1e3, -1e4]


@pytest.mark.parametrize("dtype", DTYPES)
def test_samples_follow_the_truncated_normal(dtype, rng):
    """Per coordinate: the fraction of exact zeros (binomial, 5 sigma) and a KS test of the
    non-zero values against scipy's truncated normal Normal(s^2 w, s^2) on (0, inf)."""
    d = len(SAMPLE_T)
    scale = (0.2 + 3 * torch.rand(d, generator=rng, dtype=torch.float64))
    zero_mass = 0.5 * torch.rand(d, generator=rng, dtype=torch.float64)
    zero_mass[::3] = 0.0
    weight = (torch.tensor(SAMPLE_T, dtype=torch.float64) / scale)[None]
    n = 20000
    seed = int(torch.randint(0, 2**62, (), generator=rng))
    x = ops.rectified_sample(weight.to(dtype), scale.to(dtype), zero_mass.to(dtype), torch.zeros(n, dtype=torch.long),
                             seed, 0).double()
    assert (x >= 0).all() and torch.isfinite(x).all()
    # the parameters the kernel used, as rounded to dtype
    weight, scale, zero_mass = weight.to(dtype).double(), scale.to(dtype).double(), zero_mass.to(dtype).double()
    p_zero = ops.rectified_coordinate_stats(weight, scale, zero_mass)[1, 0]
    for j, t in enumerate(SAMPLE_T):
        zeros = int((x[:, j] == 0).sum())
        p = float(p_zero[j])
        assert abs(zeros - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1, (t, zeros, n * p)
        values = x[:, j][x[:, j] > 0].numpy()
        s, mean = float(scale[j]), float(scale[j] ** 2 * weight[0, j])
        law = scipy.stats.truncnorm(-mean / s, np.inf, loc=mean, scale=s)
        assert scipy.stats.kstest(values, law.cdf).pvalue > 1e-5, t
        if t <= -1e3:  # the excess keeps its relative precision: nearly exponential, mean s / |s w|
            assert abs(values.mean() - s / abs(t)) <= 5 * s / abs(t) / math.sqrt(len(values)), t


def philox4x32_10(seed, row, block):
    """Philox4x32-10 in numpy (uint64 lanes holding 32-bit words), independent of the kernels."""
    mask = np.uint64(0xFFFFFFFF)
    block, row = np.asarray(block, dtype=np.uint64), np.asarray(row, dtype=np.uint64)
    c0, c1, c2, c3 = block & mask, block >> np.uint64(32), row & mask, row >> np.uint64(32)
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    for _ in range(10):
        p0, p1 = np.uint64(0xD2511F53) * c0, np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & mask
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
    return c0, c1, c2, c3


def stream_uniforms(seed, rows, dim, dtype):
    """The uniform of every coordinate, by the layout of csrc/core/rectified.h: spans of 32 blocks,
    128 float coordinates (one word each) or 64 double coordinates (a word pair each)."""
    j = np.arange(dim, dtype=np.uint64)[None, :]
    rows = np.asarray(rows, dtype=np.uint64)[:, None]
    span = np.uint64(128 if dtype == torch.float32 else 64)
    words = philox4x32_10(seed, rows, np.uint64(32) * (j // span) + j % np.uint64(32))
    slot = ((j % span) // np.uint64(32)).astype(np.int64)
    if dtype == torch.float64:
        hi = np.where(slot == 0, words[0], words[2])
        lo = np.where(slot == 0, words[1], words[3])
        return (((hi << np.uint64(20)) ^ (lo >> np.uint64(12))).astype(np.float64) * 2 + 1) * 2.0**-53
    word = np.choose(np.broadcast_to(slot, words[0].shape), words)
    u = ((word >> np.uint64(1)).astype(np.float32) + np.float32(0.5)) * np.float32(2.0**-31)
    return np.minimum(u, np.float32(1 - 2.0**-24)).astype(np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_samples_are_the_inverse_cdf_of_their_stream(dtype, rng):
    """Rebuild each coordinate from its uniform (numpy Philox, scipy's ndtri): the documented stream
    layout and the exact inverse of the mixture's CDF (zero pattern also for the own-stream ones)."""
    dim, n, offset = 300, 40, 1000  # 300: whole spans and a partial one for both dtypes
    seed = int(torch.randint(0, 2**62, (), generator=rng)) * 2 + 1
    weight, _, scale, zero_mass = random_params(rng, 3, dim, dtype, spread=1.5)
    labels = torch.randint(0, 3, (n,), generator=rng)
    x = ops.rectified_sample(weight, scale, zero_mass, labels, seed, offset).double().numpy()
    u = stream_uniforms(seed, np.arange(offset, offset + n), dim, dtype)
    w = weight.double()[labels].numpy()
    s, m = scale.double().numpy(), zero_mass.double().numpy()
    t = s * w
    log_mills = scipy.special.log_ndtr(t) + 0.5 * t * t + 0.5 * math.log(2 * math.pi)
    nonzero = 1.0 / (1.0 + m * np.exp(-np.log(s) - log_mills))
    # the kernel's arithmetic in its dtype: V = u / P(a > 0), q = V Phibar(alpha), 1 - q = (1 - V) + V Phi(alpha)
    real = np.float32 if dtype == torch.float32 else np.float64
    v = u.astype(real) * (1.0 / nonzero).astype(real)
    q = v * scipy.special.ndtr(t).astype(real)
    qc = (real(1) - v) + v * scipy.special.ndtr(-t).astype(real)
    clear = np.abs(v - 1) > 1e-5  # decisions not decided by the last bits of rounding
    assert clear.mean() > 0.99
    assert np.array_equal((x > 0)[clear], (v < 1)[clear])
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(q < 0.5, -scipy.special.ndtri(q.astype(np.float64)), scipy.special.ndtri(qc.astype(np.float64)))
    expected = s * (t + z)
    min_nonzero = 2.0**-7 if dtype == torch.float32 else 2.0**-10
    inverse = clear & (v < 1) & (t >= -2.0) & (nonzero >= min_nonzero)
    assert inverse.sum() > 0.3 * inverse.size
    # float: AS241's 7-digit rational (PPND7) and float rounding of s (t + z); double: a few ulp;
    # plus P(a > 0), which the kernel and this test compute in double to ~1e-16 apart: its error
    # moves V and q relatively, and Z by q / phi(Z) times that (large as V -> 1, Z -> -inf)
    density = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    with np.errstate(invalid="ignore"):  # nan where z is infinite: rows outside `inverse`, not checked
        tol = s * ((4e-7 if dtype == torch.float32 else 1e-14) * (np.abs(t) + np.abs(z) + 1) + 1e-14 * q / density)
    assert (np.abs(x - expected) <= tol)[inverse].all()


def test_labels_route_rows(rng):
    weight, _, scale, zero_mass = random_params(rng, 5, 24)
    labels = torch.randint(0, 5, (400,), generator=rng)
    x = ops.rectified_sample(weight, scale, zero_mass, labels, 77, 3)
    for c in range(5):
        alone = ops.rectified_sample(weight, scale, zero_mass, torch.full((400,), c), 77, 3)
        assert torch.equal(x[labels == c], alone[labels == c])
    # classes far apart: each row looks like its own class
    w = torch.zeros(2, 24, dtype=torch.float64)
    w[0, :12], w[1, 12:] = 5.0, 5.0
    y = torch.randint(0, 2, (300,), generator=rng)
    x = ops.rectified_sample(w, torch.ones(24, dtype=torch.float64), torch.ones(24, dtype=torch.float64), y, 5, 0)
    assert torch.equal((x[:, :12].mean(dim=1) > x[:, 12:].mean(dim=1)).long(), 1 - y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_randomness_contract(dtype, rng):
    weight, _, scale, zero_mass = random_params(rng, 4, 70, dtype, spread=3.0)
    labels = torch.randint(0, 4, (600,), generator=rng)
    full = ops.rectified_sample(weight, scale, zero_mass, labels, 123, 1000)
    assert torch.equal(full, ops.rectified_sample(weight, scale, zero_mass, labels, 123, 1000))
    for other in (ops.rectified_sample(weight, scale, zero_mass, labels, 124, 1000),
                  ops.rectified_sample(weight, scale, zero_mass, labels, 123, 1001)):
        assert not (other == full).all(dim=1).any()
    for begin, end in [(0, 1), (17, 18), (37, 512), (599, 600)]:
        part = ops.rectified_sample(weight, scale, zero_mass, labels[begin:end], 123, 1000 + begin)
        assert torch.equal(part, full[begin:end])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.rectified_sample(weight, scale, zero_mass, labels, 123, 1000)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, full)
    # a coordinate's draw does not depend on D (whole chunks vs the partial one)
    for dim in (1, 16, 63, 64, 65, 129):
        if dim <= 70:
            prefix = ops.rectified_sample(weight[:, :dim], scale[:dim], zero_mass[:dim], labels, 123, 1000)
            assert torch.equal(prefix, full[:, :dim])
    wide = torch.cat([weight, weight], dim=1)[:, :129]
    wide_full = ops.rectified_sample(wide, torch.cat([scale, scale])[:129], torch.cat([zero_mass, zero_mass])[:129],
                                     labels, 123, 1000)
    assert torch.equal(wide_full[:, :70], full)


def test_full_64_bit_seed_and_offset(rng):
    weight, _, scale, zero_mass = random_params(rng, 2, 9)
    labels = torch.zeros(4, dtype=torch.long)
    high = ops.rectified_sample(weight, scale, zero_mass, labels, 2**64 - 1, 2**40)
    low = ops.rectified_sample(weight, scale, zero_mass, labels, 2**63 - 1, 2**40)
    assert torch.isfinite(high).all() and not torch.equal(high, low)
    assert torch.equal(ops.rectified_sample(weight, scale, zero_mass, labels[1:], 2**64 - 1, 2**40 + 1), high[1:])


def test_portable_and_avx2_philox_agree():
    """The same samples whichever Philox implementation the CPU runs (PENACT_CPU_CAPABILITY=default
    forces the portable one)."""
    script = ("import torch, penact\n"
              "from penact import ops\n"
              "g = torch.Generator().manual_seed(3)\n"
              "out = []\n"
              "for dtype in (torch.float32, torch.float64):\n"
              "    w = (torch.randn(3, 150, generator=g) * 2).to(dtype)\n"
              "    s, m = (torch.rand(150, generator=g) + 0.3).to(dtype), torch.rand(150, generator=g).to(dtype)\n"
              "    out.append(ops.rectified_sample(w, s, m, torch.randint(0, 3, (40,), generator=g), 9, 5))\n"
              "torch.save(out, __import__('sys').argv[1])\n")
    results = []
    for capability in ("default", "auto"):
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"penact-rect-{os.getpid()}-{capability}.pt")
        env = dict(os.environ, PENACT_CPU_CAPABILITY=capability, PYTHONPATH=os.getcwd())
        subprocess.run([sys.executable, "-c", script, path], check=True, env=env, cwd=os.getcwd())
        results.append(torch.load(path))
        os.remove(path)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_sample_n_follows_the_prior(rng):
    weight, bias, scale, zero_mass = random_params(rng, 4, 8)
    dist = RectifiedDistribution(weight, bias * 2, scale, zero_mass)
    x, y = dist.sample_n(40000, seed=3)
    x2, y2 = dist.sample_n(40000, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    freq = torch.bincount(y, minlength=4).double() / 40000
    torch.testing.assert_close(freq, dist.log_prior.exp().detach(), rtol=0, atol=0.01)
    # the closed-form mean and zero probability against the draws of the most frequent class
    c = int(torch.argmax(freq))
    rows = x[y == c]
    n = rows.shape[0]
    assert ((rows.mean(dim=0) - dist.mean()[c]).abs() <= 5 * rows.std(dim=0) / math.sqrt(n)).all()
    p_zero = dist.zero_probability()[c]
    assert (((rows == 0).double().mean(dim=0) - p_zero).abs() <= 5 * torch.sqrt(p_zero * (1 - p_zero) / n) + 1 / n).all()


# ---------------------------------------------------------------------------------------------
# Fitting.


def test_fit_recovers_scale_and_zero_mass(rng):
    weight, bias, scale, zero_mass = random_params(rng, 4, 10, spread=1.5)
    zero_mass[zero_mass > 0] += 0.2
    truth = RectifiedDistribution(weight, bias, scale, zero_mass)
    x, y = truth.sample_n(60000, seed=int(torch.randint(0, 2**62, (), generator=rng)))
    fitted = RectifiedDistribution.fit(linear_layer(weight, bias), x, y)
    counts = torch.bincount(y, minlength=4).double()[:, None]
    zeros = (x == 0).double().sum(dim=0)
    # at the maximum the model matches the data's zero count and sum of squares per coordinate
    stats = ops.rectified_coordinate_stats(weight, fitted.scale, fitted.zero_mass)
    torch.testing.assert_close((counts * stats[1]).sum(dim=0), zeros, rtol=0, atol=1e-3)
    torch.testing.assert_close((counts * stats[3]).sum(dim=0), (x * x).sum(dim=0), rtol=1e-7, atol=0)
    assert torch.equal(fitted.zero_mass == 0, zeros == 0)  # never zero in the data: the MLE is m = 0
    # recovery within 5 standard errors, from the Fisher information at the truth in the natural
    # parameters (u, v) = (log m, -1 / (2 s^2)): the class-weighted covariance of ([a = 0], a^2)
    _, p0, _, m2, m4 = ops.rectified_coordinate_stats(weight, scale, zero_mass)
    h_uu, h_uv = (counts * p0 * (1 - p0)).sum(dim=0), -(counts * p0 * m2).sum(dim=0)
    h_vv = (counts * (m4 - m2 * m2)).sum(dim=0)
    det = h_uu * h_vv - h_uv * h_uv
    atom = zeros > 0
    se_u = torch.sqrt(h_vv / det)
    se_v = torch.where(zero_mass > 0, torch.sqrt(h_uu / det), 1 / torch.sqrt(h_vv))
    z_v = (0.5 / scale**2 - 0.5 / fitted.scale**2) / se_v
    z_u = (fitted.zero_mass[atom].log() - zero_mass[atom].log()) / se_u[atom]
    assert z_v.abs().max() < 5 and z_u.abs().max() < 5, (z_u, z_v)
    # and it is the maximum: nudging either parameter lowers the likelihood
    best = fitted.log_prob(x, y).sum()
    for factor in (0.999, 1.001):
        assert RectifiedDistribution(weight, bias, fitted.scale * factor, fitted.zero_mass).log_prob(x, y).sum() < best
        assert RectifiedDistribution(weight, bias, fitted.scale, fitted.zero_mass * factor).log_prob(x, y).sum() < best


def test_fit_dead_units_and_default_labels(rng):
    weight, bias, scale, zero_mass = random_params(rng, 3, 6)
    truth = RectifiedDistribution(weight, bias, scale, zero_mass.clamp_min(0.3))
    x, _ = truth.sample_n(5000, seed=4)
    x[:, 2] = 0.0  # a dead unit
    layer = linear_layer(weight, bias)
    fitted = RectifiedDistribution.fit(layer, x)
    predicted = RectifiedDistribution.fit(layer, x, layer(x).argmax(dim=1))
    assert torch.equal(fitted.scale, predicted.scale) and torch.equal(fitted.zero_mass, predicted.zero_mass)
    assert fitted.zero_mass[2] == 1.0 and fitted.scale[2] < 1e-5 * fitted.scale.median()
    draws = fitted.sample(torch.zeros(20000, dtype=torch.long), seed=1)
    assert (draws[:, 2] == 0).all()
    assert torch.isfinite(fitted.log_prob(x, layer(x).argmax(dim=1))).all()


# ---------------------------------------------------------------------------------------------
# Gradients, opcheck, compile.


def test_gradcheck(rng):
    weight, _, scale, zero_mass = random_params(rng, 3, 5, spread=2.0)
    zero_mass = zero_mass + 0.2
    w, s, m = (t.clone().requires_grad_() for t in (weight, scale, zero_mass))
    assert torch.autograd.gradcheck(ops.rectified_log_partition, (w, s, m))
    labels = torch.tensor([0, 1, 2, 2, 0, 1])
    positive = (0.1 + torch.rand(6, 5, generator=rng, dtype=torch.float64) * 2).requires_grad_()
    log_partition = torch.randn(3, generator=rng, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, w, s, lz: ops.rectified_log_prob(a, w, s, m.detach(), lz, labels),
                                    (positive, w, s, log_partition))
    assert torch.autograd.gradcheck(lambda a, w, s, lz: ops.rectified_log_prob_all(a, w, s, m.detach(), lz),
                                    (positive, w, s, log_partition))
    # with exact zeros (not perturbed: a is not differentiated there) the zero mass has a gradient
    with_zeros = random_activations(rng, 6, 5, zero_fraction=0.5)
    assert torch.autograd.gradcheck(lambda w, s, m: ops.rectified_log_prob(with_zeros, w, s, m, log_partition, labels),
                                    (w, s, m))
    assert torch.autograd.gradcheck(lambda w, s, m: ops.rectified_log_prob_all(with_zeros, w, s, m, log_partition),
                                    (w, s, m))
    # the whole API composes: through log Z and the prior to weight, bias, scale, zero_mass
    b = torch.randn(3, generator=rng, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda w, b, s, m: RectifiedDistribution(w, b, s, m).log_marginal(with_zeros), (w, b, s, m))


def test_opcheck(rng):
    weight, _, scale, zero_mass = random_params(rng, 3, 5)
    zero_mass = zero_mass + 0.1
    labels = torch.tensor([0, 1, 2, 2, 0, 1])
    a = random_activations(rng, 6, 5)
    lz = ops.rectified_log_partition(weight, scale, zero_mass)
    grad_args = [t.clone().requires_grad_() for t in (a, weight, scale, zero_mass, lz)]
    penact_ops = torch.ops.penact
    torch.library.opcheck(penact_ops.rectified_log_partition.default, tuple(grad_args[1:4]))
    torch.library.opcheck(penact_ops.rectified_coordinate_stats.default, (weight, scale, zero_mass))
    torch.library.opcheck(penact_ops.rectified_sample.default, (weight, scale, zero_mass, labels, 3, 0))
    torch.library.opcheck(penact_ops.rectified_log_prob.default, (*grad_args, labels))
    torch.library.opcheck(penact_ops.rectified_log_prob_all.default, tuple(grad_args))
    torch.library.opcheck(penact_ops.rectified_log_prob_backward.default,
                          (torch.randn(6, dtype=torch.float64), a, weight, scale, zero_mass, labels, True, True, True,
                           True))


def test_torch_compile_fullgraph(rng):
    weight, bias, scale, zero_mass = random_params(rng, 4, 16, torch.float32)
    labels = torch.randint(0, 4, (32,), generator=rng)
    a = random_activations(rng, 32, 16, torch.float32)

    def loss(weight, bias, scale, zero_mass, a):
        d = RectifiedDistribution(weight, bias, scale, zero_mass)
        return (d.log_prob(a, labels).sum() + d.log_marginal(a).sum()
                + ops.rectified_sample(weight, scale, zero_mass, labels, 7, 0).sum())

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(weight, bias, scale, zero_mass, a), loss(weight, bias, scale, zero_mass, a))


# ---------------------------------------------------------------------------------------------
# Bad input.


def test_bad_input_raises(rng):
    weight, _, scale, zero_mass = random_params(rng, 3, 5)
    labels = torch.tensor([0, 2])
    a = random_activations(rng, 2, 5)
    lz = ops.rectified_log_partition(weight, scale, zero_mass)
    negative = a.clone()
    negative[1, 3] = -0.5
    nan = a.clone()
    nan[0, 0] = math.nan
    for bad in (negative, nan):
        with pytest.raises(ValueError, match="a must be non-negative"):
            ops.rectified_log_prob(bad, weight, scale, zero_mass, lz, labels)
        with pytest.raises(ValueError, match="a must be non-negative"):
            ops.rectified_log_prob_all(bad, weight, scale, zero_mass, lz)
    for bad_scale in (torch.zeros(5, dtype=torch.float64), -scale, scale.clone().fill_(math.nan),
                      scale.clone().fill_(math.inf)):
        for call in (lambda: ops.rectified_log_partition(weight, bad_scale, zero_mass),
                     lambda: ops.rectified_sample(weight, bad_scale, zero_mass, labels, 1, 0),
                     lambda: ops.rectified_log_prob(a, weight, bad_scale, zero_mass, lz, labels)):
            with pytest.raises(ValueError, match="scale must be finite and positive"):
                call()
    for bad_mass in (zero_mass - 3.0, zero_mass.clone().fill_(math.inf)):
        with pytest.raises(ValueError, match="zero_mass must be finite and non-negative"):
            ops.rectified_sample(weight, scale, bad_mass, labels, 1, 0)
    with pytest.raises(ValueError, match=r"scale must have shape \[D\] = \[5\]"):
        ops.rectified_log_partition(weight, scale[:4], zero_mass)
    with pytest.raises(ValueError, match=r"zero_mass must have shape \[D\] = \[5\]"):
        ops.rectified_log_partition(weight, scale, zero_mass[None])
    with pytest.raises(ValueError, match="scale must have the dtype of weight"):
        ops.rectified_log_partition(weight, scale.float(), zero_mass)
    with pytest.raises(ValueError, match=r"weight must have shape \[C, D\]"):
        ops.rectified_log_partition(weight[0], scale, zero_mass)
    with pytest.raises(ValueError, match="weight must be float32 or float64"):
        ops.rectified_log_partition(weight.half(), scale.half(), zero_mass.half())
    with pytest.raises(ValueError, match=r"a must have shape \[N, D\] with D = 5"):
        ops.rectified_log_prob(a[:, :4], weight, scale, zero_mass, lz, labels)
    with pytest.raises(ValueError, match="a must have the dtype of weight"):
        ops.rectified_log_prob(a.float(), weight, scale, zero_mass, lz, labels)
    with pytest.raises(ValueError, match=r"log_partition must have shape \[C\] = \[3\]"):
        ops.rectified_log_prob(a, weight, scale, zero_mass, lz[:2], labels)
    with pytest.raises(ValueError, match=r"labels must have shape \[N\] = \[2\]"):
        ops.rectified_log_prob(a, weight, scale, zero_mass, lz, labels[:1])
    for bad_labels in (torch.tensor([0, 3]), torch.tensor([-1, 0])):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
            ops.rectified_log_prob(a, weight, scale, zero_mass, lz, bad_labels)
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
            ops.rectified_sample(weight, scale, zero_mass, bad_labels, 1, 0)
    with pytest.raises(ValueError, match="weight must be finite"):
        ops.rectified_sample(weight.clone().fill_(math.nan), scale, zero_mass, labels, 1, 0)
    with pytest.raises(ValueError, match="offset must be non-negative"):
        ops.rectified_sample(weight, scale, zero_mass, labels, 1, -1)
    with pytest.raises(ValueError, match="seed must lie in"):
        ops.rectified_sample(weight, scale, zero_mass, labels, 2**64, 0)
    with pytest.raises(ValueError, match=r"grad must have shape \[N\] = \[2\]"):
        torch.ops.penact.rectified_log_prob_backward(torch.ones(3, dtype=torch.float64), a, weight, scale, zero_mass,
                                                     labels, True, True, True, True)


def test_bad_distribution_arguments(rng):
    weight, bias, scale, zero_mass = random_params(rng, 3, 5)
    with pytest.raises(ValueError, match="scale must be positive"):
        RectifiedDistribution(weight, bias, 0.0)
    with pytest.raises(ValueError, match="scale must be finite"):
        RectifiedDistribution(weight, bias, scale.clone().fill_(math.nan))
    with pytest.raises(ValueError, match="zero_mass must be non-negative"):
        RectifiedDistribution(weight, bias, scale, -zero_mass - 1)
    with pytest.raises(ValueError, match=r"scale must be a number or have shape \[D\] = \[5\]"):
        RectifiedDistribution(weight, bias, scale[:3])
    with pytest.raises(ValueError, match="weight must be finite"):
        RectifiedDistribution(weight.clone().fill_(math.inf), bias)
    with pytest.raises(ValueError, match=r"bias must have shape \[C\] = \[3\]"):
        RectifiedDistribution(weight, bias[:2])
    layer = linear_layer(weight, bias)
    a = random_activations(rng, 10, 5)
    with pytest.raises(ValueError, match="activations must be finite and non-negative"):
        RectifiedDistribution.fit(layer, a - 1)
    with pytest.raises(ValueError, match=r"activations must have shape \[N, D\] with D = 5"):
        RectifiedDistribution.fit(layer, a[:, :4])
    with pytest.raises(ValueError, match="at least one row"):
        RectifiedDistribution.fit(layer, a[:0])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        RectifiedDistribution.fit(layer, a, torch.full((10,), 3))
    with pytest.raises(ValueError, match=r"labels must have shape \[N\] = \[10\]"):
        RectifiedDistribution.fit(layer, a, torch.zeros(9, dtype=torch.long))
    assert penact.RectifiedDistribution is RectifiedDistribution
