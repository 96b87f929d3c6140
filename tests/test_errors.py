"""Every bad input gets a clear error naming the argument (never a crash, a hang or a silent
wrong answer): ValueError, whatever the entry point."""
import pytest
import torch

from penact import PenultimateDistribution, ops


def test_distribution_construction_errors():
    w = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"weight must be a tensor of shape \[C, D\]"):
        PenultimateDistribution(torch.randn(6))
    with pytest.raises(ValueError, match="weight must be float32 or float64"):
        PenultimateDistribution(w.half())
    with pytest.raises(ValueError, match="D >= 2"):
        PenultimateDistribution(torch.randn(4, 1))
    with pytest.raises(ValueError, match="weight must be finite"):
        PenultimateDistribution(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="bias must be finite"):
        PenultimateDistribution(w, torch.tensor([0.0, 1.0, float("inf"), 0.0]))
    with pytest.raises(ValueError, match=r"bias must have shape \[C\] = \[4\]"):
        PenultimateDistribution(w, torch.zeros(3))
    with pytest.raises(ValueError, match="bias must match weight's dtype"):
        PenultimateDistribution(w, torch.zeros(4, dtype=torch.float64))
    for radius in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="radius must be a finite positive number"):
            PenultimateDistribution(w, radius=radius)


def test_sampling_errors():
    dist = PenultimateDistribution(torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got 1 outside it \(from 4 to 4\)"):
        dist.sample(torch.tensor([0, 4]), seed=1)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got 1 outside it \(from -1 to -1\)"):
        dist.sample(torch.tensor([-1, 2]), seed=1)
    with pytest.raises(ValueError, match=r"labels must have shape \[N\]"):
        dist.sample(torch.zeros(2, 2, dtype=torch.long), seed=1)
    with pytest.raises(ValueError, match="labels must be int64 or int32"):
        dist.sample(torch.zeros(2), seed=1)
    with pytest.raises(ValueError, match="offset needs an explicit seed"):
        dist.sample(torch.zeros(2, dtype=torch.long), offset=3)
    with pytest.raises(ValueError, match="seed must lie in"):
        dist.sample(torch.zeros(2, dtype=torch.long), seed=-1)
    with pytest.raises(ValueError, match="offset must be non-negative"):
        dist.sample(torch.zeros(2, dtype=torch.long), seed=1, offset=-2)
    with pytest.raises(ValueError, match="n must be non-negative"):
        dist.sample_n(-1)
    mu = torch.nn.functional.normalize(torch.randn(4, 6), dim=1)
    with pytest.raises(ValueError, match=r"kappa must have shape \[C\] = \[4\]"):
        ops.vmf_sample(mu, torch.ones(3), torch.zeros(2, dtype=torch.long), 1.0, 0, 0)
    with pytest.raises(ValueError, match="kappa must have the dtype of mean_direction"):
        ops.vmf_sample(mu, torch.ones(4, dtype=torch.float64), torch.zeros(2, dtype=torch.long), 1.0, 0, 0)
    with pytest.raises(ValueError, match=r"the dimension D \(mean_direction.size\(1\)\) must be at least 2"):
        ops.vmf_sample(torch.ones(4, 1), torch.ones(4), torch.zeros(2, dtype=torch.long), 1.0, 0, 0)
    with pytest.raises(ValueError, match="radius must be a finite positive number"):
        ops.vmf_sample(mu, torch.ones(4), torch.zeros(2, dtype=torch.long), -1.0, 0, 0)


def test_log_prob_errors():
    dist = PenultimateDistribution(torch.randn(4, 6))
    x = torch.randn(5, 6)
    with pytest.raises(ValueError, match=r"x must have shape \[N, D\] with D = 6"):
        dist.log_prob(torch.randn(5, 7), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must have shape \[N\] = \[5\]"):
        dist.log_prob(x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        dist.log_prob(x, torch.full((5,), 9))
    with pytest.raises(ValueError, match="x must have the dtype of weight"):
        dist.log_prob(x.double(), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x must have shape \[N, D\]"):
        dist.log_prob_all(torch.randn(6))
    with pytest.raises(ValueError, match=r"log_normalizer must have shape \[C\] = \[4\]"):
        ops.vmf_log_prob(x, dist.weight, torch.zeros(3), torch.zeros(5, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="x must be a floating point tensor"):
        dist.log_prob_all(torch.ones(5, 6, dtype=torch.long))


def test_special_function_errors():
    with pytest.raises(ValueError, match="order and x must have the same shape"):
        torch.ops.penact.log_bessel_iv(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="x must be a floating point tensor"):
        torch.ops.penact.bessel_iv_ratio(torch.ones(3), torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="dim must be at least 2"):
        ops.vmf_log_normalizer(1, torch.ones(3))


def test_fit_errors():
    linear = torch.nn.Linear(6, 4)
    with pytest.raises(ValueError, match=r"activations must have shape \[N, D\] with D = 6"):
        PenultimateDistribution.fit(linear, torch.randn(10, 5))
    with pytest.raises(ValueError, match="at least one row"):
        PenultimateDistribution.fit(linear, torch.randn(0, 6))
    with pytest.raises(ValueError, match="radius must be 'mle', 'norm' or a positive number"):
        PenultimateDistribution.fit(linear, torch.randn(10, 6), radius="median")
    a = -linear.weight.detach()[torch.tensor([0, 1, 2, 3])]  # every activation points away from its class
    with pytest.raises(ValueError, match="no positive root"):
        PenultimateDistribution.fit(linear, a, torch.tensor([0, 1, 2, 3]), radius="mle")


def test_kl_shape_mismatch():
    with pytest.raises(ValueError, match="other must be a SphereDistribution with weight of shape"):
        PenultimateDistribution(torch.randn(4, 6)).kl(PenultimateDistribution(torch.randn(3, 6)))
