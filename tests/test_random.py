"""The randomness contract (docs/randomness.md): row i depends only on (seed, offset + i, its label,
the parameters), not on the batch, the split across threads, or other rows."""
import pytest
import torch

import penact
from penact import PenultimateDistribution, ops


@pytest.fixture
def dist(rng):
    return PenultimateDistribution(torch.randn(6, 40, generator=rng) * 3, radius=2.0)


def test_same_seed_same_samples_and_different_seeds_differ(dist, rng):
    labels = torch.randint(0, 6, (500,), generator=rng)
    a = dist.sample(labels, seed=123, offset=7)
    assert torch.equal(a, dist.sample(labels, seed=123, offset=7))
    assert not torch.isclose(a, dist.sample(labels, seed=124, offset=7)).all(dim=1).any()
    assert not torch.isclose(a, dist.sample(labels, seed=123, offset=8)).all(dim=1).any()


def test_rows_are_independent_of_the_batch(dist, rng):
    labels = torch.randint(0, 6, (1000,), generator=rng)
    full = dist.sample(labels, seed=99, offset=1000)
    for begin, end in [(0, 1), (10, 11), (37, 512), (999, 1000)]:
        part = dist.sample(labels[begin:end], seed=99, offset=1000 + begin)
        assert torch.equal(part, full[begin:end])
    # a row's sample depends on its own label only
    other = labels.clone()
    other[::2] = (other[::2] + 1) % 6
    changed = dist.sample(other, seed=99, offset=1000)
    assert torch.equal(changed[1::2], full[1::2])


def test_independent_of_thread_count(dist, rng):
    labels = torch.randint(0, 6, (3000,), generator=rng)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = dist.sample(labels, seed=5)
        torch.set_num_threads(max(2, threads))
        many = dist.sample(labels, seed=5)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_seed_none_follows_manual_seed_and_never_repeats(dist):
    labels = torch.zeros(64, dtype=torch.long)
    torch.manual_seed(2024)
    first, second = dist.sample(labels), dist.sample(labels)
    assert not torch.isclose(first, second).all(dim=1).any()
    torch.manual_seed(2024)
    assert torch.equal(dist.sample(labels), first)
    g = torch.Generator().manual_seed(7)
    from_generator = dist.sample(labels, generator=g)
    assert torch.equal(dist.sample(labels, generator=torch.Generator().manual_seed(7)), from_generator)


def test_full_64_bit_seed_and_offset():
    mu = torch.nn.functional.normalize(torch.randn(1, 5), dim=1)
    kappa = torch.tensor([3.0])
    labels = torch.zeros(4, dtype=torch.long)
    high = ops.vmf_sample(mu, kappa, labels, 1.0, 2**64 - 1, 2**40)
    low = ops.vmf_sample(mu, kappa, labels, 1.0, 2**63 - 1, 2**40)
    assert torch.isfinite(high).all() and not torch.equal(high, low)
    assert torch.equal(ops.vmf_sample(mu, kappa, labels[1:], 1.0, 2**64 - 1, 2**40 + 1), high[1:])


def test_sample_n_is_reproducible_and_follows_the_prior(rng):
    weight = torch.randn(4, 8, generator=rng, dtype=torch.float64)
    bias = torch.tensor([2.0, 0.0, -1.0, 0.5], dtype=torch.float64)
    dist = PenultimateDistribution(weight, bias, radius=1.5)
    x, y = dist.sample_n(40000, seed=3)
    x2, y2 = dist.sample_n(40000, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    freq = torch.bincount(y, minlength=4).double() / 40000
    torch.testing.assert_close(freq, dist.log_prior.exp(), rtol=0, atol=0.01)
    assert penact.PenultimateDistribution.sample_n is penact.ClassConditionalDistribution.sample_n
