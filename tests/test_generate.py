"""Generator transfer (penact.generate): the metrics against independent references, the latent
spaces' KL terms against Monte Carlo, the trainers' contracts (label-free models refuse labels,
seeded runs repeat, on every available device) and the command on a tiny run."""
import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from penact import PenultimateDistribution, RectifiedDistribution, cli
from penact.generate import LatentSpace, TrainConfig, frechet_distance, train_model
from penact.generate.metrics import Judges, mean_pairwise_distance
from penact.generate.networks import FeatureEncoder, JudgeMLP
from penact.generate.trainers import MODELS, parse_model
from penact.models import teacher_cnn

pytestmark = pytest.mark.usefixtures("one_thread")  # small ops: threads only add noise and time

TINY = TrainConfig(vae_steps=3, gan_steps=3, batch_size=16)


@pytest.fixture
def np_rng(rng):
    """A numpy generator drawn from the run's seeded torch generator (see conftest)."""
    return np.random.default_rng(int(torch.randint(2**62, (1,), generator=rng)))


def _frechet_scipy(a: np.ndarray, b: np.ndarray) -> float:
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a + cov_b - 2 * cross))


def test_frechet_distance_matches_scipy_and_closed_form(np_rng):
    a = np_rng.standard_normal((400, 6)) @ np_rng.standard_normal((6, 6))
    b = np_rng.standard_normal((300, 6)) * 2 + 1
    ours = frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
    assert ours == pytest.approx(_frechet_scipy(a, b), rel=1e-9)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(0.0, abs=1e-9)
    # Two isotropic Gaussians' sample statistics: |m1 - m2|^2 + K (s1 - s2)^2 exactly for these samples' moments.
    x = torch.from_numpy(np_rng.standard_normal((500, 4)))
    x = (x - x.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(x.T))).T  # mean 0, covariance I
    shifted = 3 * x + torch.tensor([1.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    assert frechet_distance(x, shifted) == pytest.approx(5.0 + 4 * (3 - 1) ** 2, rel=1e-9)
    with pytest.raises(ValueError, match="two rows"):
        frechet_distance(x[:1], x)


def test_mean_pairwise_distance_is_the_mean_over_distinct_pairs(np_rng):
    x = torch.from_numpy(np_rng.standard_normal((7, 3)))
    pairs = [float((x[i] - x[j]).norm()) for i in range(7) for j in range(7) if i != j]
    assert mean_pairwise_distance(x) == pytest.approx(sum(pairs) / len(pairs), rel=1e-12)


def test_judges_score_counts_hits_and_real_images_are_as_diverse_as_themselves(np_rng):
    torch.manual_seed(int(np_rng.integers(2**31)))
    images = torch.rand(40, 1, 8, 8)
    labels = torch.arange(4).repeat(10)

    class Fixed(nn.Module):  # predicts class = first pixel's quartile, from its "features" (the pixels)
        def features(self, x):
            return x.flatten(1)

        def fc(self, features):
            return nn.functional.one_hot((features[:, 0] * 4).long().clamp(0, 3), 4).float()

        def forward(self, x):
            return self.fc(self.features(x))

    judge = Fixed()
    judges = Judges(Fixed(), judge, images, labels)
    scores = judges.score(images, labels)
    expected = float(((images[:, 0, 0, 0] * 4).long().clamp(0, 3) == labels).double().mean())
    assert scores.teacher_fidelity == pytest.approx(expected) and scores.judge_fidelity == pytest.approx(expected)
    assert scores.diversity == pytest.approx(1.0) and scores.frechet == pytest.approx(0.0, abs=1e-6)  # eigen rounding


def _spaces(np_rng, dim=6, classes=3):
    weight = torch.from_numpy(np_rng.standard_normal((classes, dim)))
    bias = torch.from_numpy(np_rng.standard_normal(classes))
    sphere = PenultimateDistribution(weight, bias, radius=2.0)
    rectified = RectifiedDistribution(weight, bias, scale=torch.from_numpy(np_rng.uniform(0.5, 2, dim)),
                                      zero_mass=torch.from_numpy(np_rng.uniform(0, 1, dim)))
    return [LatentSpace(sphere), LatentSpace(rectified)]


@pytest.mark.parametrize("family", [0, 1], ids=["sphere", "rectified"])
def test_kl_terms_agree_with_monte_carlo(np_rng, family):
    """kl_to_classes is kl_to_class per class; the joint KL bounds the Monte Carlo KL to the class
    mixture from above; the labelled KL matches Monte Carlo of log q - log p(. | y)."""
    space = _spaces(np_rng)[family]
    rows, draws = 4, 40000
    features = torch.from_numpy(np_rng.uniform(0, 2, (rows, space.dim)))
    correction = 0.3 * torch.from_numpy(np_rng.standard_normal((rows, space.posterior_size)))
    posterior = space.posterior(features, correction)
    all_classes = posterior.kl_to_classes()
    for c in range(space.num_classes):
        torch.testing.assert_close(all_classes[:, c], posterior.kl_to_class(torch.full((rows,), c)))
    class_posterior = torch.softmax(torch.from_numpy(np_rng.standard_normal((rows, space.num_classes))), dim=1)
    joint = posterior.kl(None, None, class_posterior)

    many = posterior.repeat(draws)
    generator = torch.Generator().manual_seed(int(np_rng.integers(2**62)))
    a = many.rsample(generator)
    mixture = (many.kl(a, None, free_kl="mixture")).view(draws, rows)
    labels = torch.arange(rows) % space.num_classes
    labelled = (many.log_prob(a) - space.log_prior_density(a, labels.repeat(draws))).view(draws, rows)
    exact = posterior.kl_to_class(labels)
    se = labelled.std(dim=0) / math.sqrt(draws)
    assert ((labelled.mean(dim=0) - exact).abs() <= 5 * se + 1e-9).all(), (labelled.mean(0), exact, se)
    se = mixture.std(dim=0) / math.sqrt(draws)
    assert (mixture.mean(dim=0) <= joint + 5 * se).all()
    with pytest.raises(ValueError, match="free_kl"):
        posterior.kl(None, None, class_posterior, free_kl="other")


def test_posterior_rejects_a_correction_of_the_wrong_shape(np_rng):
    for space in _spaces(np_rng):
        with pytest.raises(ValueError, match="correction must have shape"):
            space.posterior(torch.ones(2, space.dim), torch.zeros(2, space.posterior_size + 1))


def test_feature_encoder_starts_at_the_teachers_reading(np_rng):
    """A zero correction at initialization: the posterior is centred on the teacher's activation."""
    torch.manual_seed(int(np_rng.integers(2**31)))
    teacher = teacher_cnn(width=16)
    encoder = FeatureEncoder(teacher.backbone, 16, 17)
    features, correction = encoder(torch.rand(5, 1, 8, 8), lambda a: a)
    assert features.shape == (5, 16) and torch.equal(correction, torch.zeros(5, 17))


@pytest.fixture(scope="module")
def small_setup():
    torch.manual_seed(0)
    teacher = teacher_cnn(width=16)
    images = torch.rand(48, 1, 8, 8)
    labels = torch.arange(10).repeat(5)[:48]
    with torch.no_grad():
        features = teacher.features(images) + 0.1  # no dead units: the rectified fit needs some non-zeros
    sphere = PenultimateDistribution.fit(teacher.fc, features, labels, radius="norm")
    rectified = RectifiedDistribution.fit(teacher.fc, features, labels)
    return teacher, images, labels, {"sphere": LatentSpace(sphere), "rectified": LatentSpace(rectified)}


@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_and_generates_repeatably(small_setup, name, device):
    teacher, images, labels, spaces = small_setup
    mode = parse_model(name)[1]
    for family in ([None] if mode == "onehot" else ["sphere", "rectified"]):
        space = spaces.get(family)
        runs = []
        for _ in range(2):
            result = train_model(name, teacher, space, images, None if mode == "free" else labels, TINY, seed=3,
                                 progress=False, device=device)
            generated = result.generator.generate(torch.arange(10), torch.Generator().manual_seed(1))
            runs.append(generated)
        assert generated.shape == (10, 1, 8, 8) and generated.device.type == device
        assert bool(((generated >= 0) & (generated <= 1)).all())
        assert torch.equal(runs[0], runs[1]), f"{name} ({family}) is not repeatable under a seed"
        assert all(math.isfinite(v) for v in result.final_losses.values())


def test_label_free_models_refuse_labels_and_others_require_them(small_setup):
    teacher, images, labels, spaces = small_setup
    with pytest.raises(ValueError, match="labels must be None"):
        train_model("vae-free", teacher, spaces["sphere"], images, labels, TINY, seed=0, progress=False)
    with pytest.raises(ValueError, match="labels must be given"):
        train_model("gan-labelled", teacher, spaces["sphere"], images, None, TINY, seed=0, progress=False)
    with pytest.raises(ValueError, match="space must be None"):
        train_model("gan-onehot", teacher, spaces["sphere"], images, labels, TINY, seed=0, progress=False)
    with pytest.raises(ValueError, match="model must be one of"):
        train_model("vae-other", teacher, None, images, labels, TINY, seed=0, progress=False)


def test_generate_command_writes_its_report(tmp_path, device):
    code = cli.main(["generate", "--seeds", "1", "--teacher-epochs", "1", "--judge-epochs", "1", "--vae-steps", "2",
                     "--gan-steps", "2", "--per-class", "3", "--models", "vae-onehot,vae-free,gan-labelled",
                     "--families", "rectified", "--out", str(tmp_path), "--name", "tiny", "--no-progress",
                     "--device", device])
    assert code == 0
    report = json.loads((tmp_path / "tiny.json").read_text())
    assert report["device"].startswith(device)
    assert set(report["table"]) == {"vae-onehot", "vae-free (rectified)", "gan-labelled (rectified)"}
    reading = report["references"][0]["sample_reading"]
    assert set(reading) == {"rectified"} and 0 <= reading["rectified"] <= 1
    assert [v["target"] for v in report["targets"]] == ["vae-free (rectified): judge fidelity >= 85%"]
    assert "| vae-free (rectified) |" in (tmp_path / "tiny.md").read_text()
    grids = sorted(p.name for p in (tmp_path / "tiny").iterdir())
    assert grids == ["gan-labelled-rectified.png", "real-test.png", "vae-free-rectified.png", "vae-onehot.png"]


def test_judge_is_another_architecture():
    assert not any(isinstance(m, nn.Conv2d) for m in JudgeMLP(10).modules())
