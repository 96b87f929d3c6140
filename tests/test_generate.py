"""Generator transfer (penact.generate): the metrics against independent references, the latent
spaces' KL terms against Monte Carlo, the trainers' contracts (label-free models refuse labels,
seeded runs repeat, on every available device) and the command on a tiny run."""
import argparse
import dataclasses
import json
import math

import matplotlib.image
import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from penact import PenultimateDistribution, RectifiedDistribution, cli, experiments
from penact.data import MnistSplit
from penact.generate import LatentSpace, TrainConfig, frechet_distance, train_model
from penact.generate import cli as generate_cli
from penact.generate import trainers
from penact.generate.families import (
    SPREAD,
    calibrated,
    shuffle_within_class,
    with_spread,
)
from penact.generate.metrics import Judges, cross_spread, frechet_terms, mean_pairwise_distance
from penact.generate.networks import (
    DISCRIMINATORS,
    Decoder,
    Discriminator,
    FeatureEncoder,
    JudgeMLP,
)
from penact.generate.trainers import (
    CONSISTENCY_READINGS,
    MODELS,
    ConditionalGenerator,
    condition_size,
    parse_model,
)
from penact.models import lenet5, teacher_cnn

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
    # Against itself: eigvalsh returns a tiny eigenvalue's square to within eps * lambda_max^2, so its
    # square root keeps only half the digits (sqrt(eps) * lambda_max); a random covariance can be that
    # ill-conditioned (seen: 6e-9 for a trace of ~40).
    tolerance = 1e-7 * float(np.trace(np.cov(a, rowvar=False)))
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(0.0, abs=tolerance)
    # Two isotropic Gaussians' sample statistics: |m1 - m2|^2 + K (s1 - s2)^2 exactly for these samples' moments.
    x = torch.from_numpy(np_rng.standard_normal((500, 4)))
    x = (x - x.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(x.T))).T  # mean 0, covariance I
    shifted = 3 * x + torch.tensor([1.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    assert frechet_distance(x, shifted) == pytest.approx(5.0 + 4 * (3 - 1) ** 2, rel=1e-9)
    mean_term, covariance_term = frechet_terms(x, shifted)
    assert mean_term == pytest.approx(5.0, rel=1e-12) and covariance_term == pytest.approx(4 * (3 - 1) ** 2, rel=1e-9)
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


def test_cross_spread_is_the_mean_over_pairs_that_differ_in_both_indices(np_rng):
    x = torch.from_numpy(np_rng.standard_normal((4, 3, 5)))
    pairs = [float((x[m, k] - x[n, j]).norm()) for m in range(4) for k in range(3) for n in range(4) for j in range(3)
             if m != n and k != j]
    assert cross_spread(x) == pytest.approx(sum(pairs) / len(pairs), rel=1e-12)
    with pytest.raises(ValueError, match="M, K >= 2"):
        cross_spread(x[:1])


@pytest.mark.parametrize("reads", ["style", "condition", "both"])
def test_variety_sources_tell_the_style_code_from_the_condition(np_rng, reads):
    """A decoder that reads only its style code has no variety over conditions, and the reverse; a
    one-hot generator's condition is the label, so it has none over conditions either way."""
    torch.manual_seed(int(np_rng.integers(2**31)))

    class Decoder(nn.Module):
        def __init__(self, condition_size):
            super().__init__()
            self.mix = nn.Linear(4 + condition_size, 16)

        def forward(self, latent, condition):
            latent = latent if reads != "condition" else torch.zeros_like(latent)
            condition = condition if reads != "style" else torch.zeros_like(condition)
            return self.mix(torch.cat([latent, condition], dim=1)).view(-1, 1, 4, 4)

    class Pixels(nn.Module):
        def features(self, x):
            return x.flatten(1)

    judges = Judges(Pixels(), Pixels(), torch.rand(40, 1, 4, 4), torch.arange(4).repeat(10))
    weight, bias = torch.randn(4, 3), torch.randn(4)
    generators = {"onehot": ConditionalGenerator(Decoder(4), None, 4, 4),
                  "penact": ConditionalGenerator(Decoder(3), LatentSpace(PenultimateDistribution(weight, bias, radius=2.0)),
                                                 4, 4)}
    for mode, generator in generators.items():
        sources = judges.variety_sources(generator, torch.Generator().manual_seed(0), conditions=3, styles=5)
        varied = {name: value > 1e-6 for name, value in sources.items()}  # equal rows: cdist rounds to ~1e-9
        assert varied["style"] == (reads != "condition")
        assert varied["condition"] == (reads != "style" and mode == "penact")
        assert varied["both"] == (reads != "condition" or mode == "penact")


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


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_a_prior_condition_share_decodes_that_share_of_rows_from_the_class_prior(small_setup, monkeypatch, share):
    """With ``prior_condition_share = s`` each labelled-VAE step draws ``a ~ p(a | y)`` for its batch's
    labels and decodes about ``s`` of its rows from those draws; with 0 it never draws from the prior."""
    teacher, images, labels, spaces = small_setup
    drawn, decoded = [], []
    prior_sample, network_condition = LatentSpace.prior_sample, ConditionalGenerator.network_condition

    def recording_prior_sample(self, y, generator):
        drawn.append(prior_sample(self, y, generator))
        return drawn[-1]

    def recording_network_condition(self, a):
        decoded.append(a.clone())
        return network_condition(self, a)

    monkeypatch.setattr(LatentSpace, "prior_sample", recording_prior_sample)
    monkeypatch.setattr(ConditionalGenerator, "network_condition", recording_network_condition)
    config = dataclasses.replace(TINY, vae_steps=20, prior_condition_share=share)
    train_model("vae-labelled", teacher, spaces["sphere"], images, labels, config, seed=0, progress=False)
    assert len(drawn) == (20 if share else 0) and len(decoded) == 20
    if share:
        assert all(prior.shape == (TINY.batch_size, spaces["sphere"].dim) for prior in drawn)
        from_prior = torch.stack([(a == prior).all(dim=1).double().mean() for a, prior in zip(decoded, drawn)])
        assert float(from_prior.mean()) == pytest.approx(share, abs=0.1)
    with pytest.raises(ValueError, match=r"prior_condition_share must lie in \[0, 1\]"):
        train_model("vae-labelled", teacher, spaces["sphere"], images, labels,
                    dataclasses.replace(TINY, prior_condition_share=1.5), seed=0, progress=False)


@pytest.mark.parametrize("mode", ["labelled", "free"])
def test_a_vae_reading_only_the_class_decodes_the_reading_of_its_condition(small_setup, mode):
    """``vae_condition = "reading"``: the penact VAE's decoder takes ``s p(. | a)`` (width C) beside its
    style code, and a trained model generates from the same reading of prior draws."""
    teacher, images, labels, spaces = small_setup
    config = dataclasses.replace(TINY, vae_steps=5, vae_class_scale=3.0, vae_condition="reading")
    model = train_model(f"vae-{mode}", teacher, spaces["rectified"], images, labels if mode == "labelled" else None,
                        config, seed=0, progress=False).generator
    seen = []
    model.decoder.register_forward_hook(lambda module, args, output: seen.append(args[1]))
    generated = model.generate(labels[:8], torch.Generator().manual_seed(0))
    assert generated.shape == (8, *images.shape[1:]) and seen[0].shape == (8, 10)
    torch.testing.assert_close(seen[0].sum(dim=1), torch.full((8,), 3.0))  # a scaled distribution over classes


def test_training_steps_skip_the_operators_device_checks(small_setup, monkeypatch):
    from penact import _C

    teacher, images, labels, spaces = small_setup
    checking = []
    step = trainers._GANTrainer.step

    def recorded(self, *arguments):
        previous = _C._set_device_checks(True)  # reads the switch, then puts it back
        _C._set_device_checks(previous)
        checking.append(previous)
        return step(self, *arguments)

    monkeypatch.setattr(trainers._GANTrainer, "step", recorded)
    train_model("gan-labelled", teacher, spaces["sphere"], images, labels, TINY, seed=0, progress=False)
    previous = _C._set_device_checks(True)
    _C._set_device_checks(previous)
    assert checking == [False] * TINY.gan_steps and previous  # off in every step, restored after


def test_generate_command_writes_its_report(tmp_path, device):
    code = cli.main(["generate", "--seeds", "1", "--teacher-epochs", "1", "--judge-epochs", "1", "--vae-steps", "2",
                     "--gan-steps", "2", "--per-class", "3", "--models", "vae-onehot,vae-free,gan-labelled",
                     "--families", "rectified", "--out", str(tmp_path), "--name", "tiny", "--no-progress",
                     "--device", device])
    assert code == 0
    report = json.loads((tmp_path / "tiny.json").read_text())
    assert report["device"].startswith(device) and report["dataset"] == "digits"
    assert set(report["table"]) == {"vae-onehot", "vae-free (rectified)", "gan-labelled (rectified)"}
    clarity = report["references"][0]["condition_clarity"]["rectified"]
    assert all(0 <= clarity[key] <= 1 for key in ("samples", "real", "shuffled"))
    assert [v["target"] for v in report["targets"]] == ["vae-free (rectified): judge fidelity >= 85%"]
    markdown = (tmp_path / "tiny.md").read_text()
    assert "| vae-free (rectified) |" in markdown
    # The code the figures came from: HEAD, and the tracked files that differ from it, as git reports them.
    commit, uncommitted = experiments.source_state(short=True)
    assert report["commit"] == (commit or "unknown") and report["uncommitted"] == uncommitted
    assert (" with uncommitted changes to " in markdown) == bool(uncommitted)
    grids = sorted(p.name for p in (tmp_path / "tiny").iterdir())
    assert grids == ["gan-labelled-rectified.png", "real-test.png", "vae-free-rectified.png", "vae-onehot.png"]


def test_worker_processes_give_the_results_of_one_process(tmp_path):
    """--jobs 2: the same scores, seed by seed, as --jobs 1 (every task draws from its own streams)."""
    reports = []
    for jobs in (1, 2):
        assert cli.main(["generate", "--seeds", "2", "--teacher-epochs", "1", "--judge-epochs", "1", "--vae-steps", "2",
                         "--gan-steps", "2", "--per-class", "3", "--models", "vae-free,gan-onehot",
                         "--families", "sphere", "--jobs", str(jobs), "--out", str(tmp_path), "--name", f"jobs{jobs}",
                         "--no-progress"]) == 0
        report = json.loads((tmp_path / f"jobs{jobs}.json").read_text())
        timeless = lambda entry: {k: v for k, v in entry.items() if not k.endswith("_seconds")}
        reports.append(([timeless(r) for r in report["records"]], [timeless(r) for r in report["references"]]))
    assert reports[0] == reports[1]


@pytest.fixture
def fake_mnist(monkeypatch):
    """MNIST's shapes (28x28, 10 classes) at 120 + 40 random images: ``penact generate --dataset
    mnist`` never touches the real data in the tests."""
    generator = torch.Generator().manual_seed(0)
    split = MnistSplit(torch.rand(120, 1, 28, 28, generator=generator), torch.arange(10).repeat(12),
                       torch.rand(40, 1, 28, 28, generator=generator), torch.arange(10).repeat(4))
    monkeypatch.setitem(experiments.DATASETS, "mnist",
                        dataclasses.replace(experiments.DATASETS["mnist"], load=lambda: split))
    return split


def test_mnist_command_uses_conv_networks_and_its_validation_split(tmp_path, fake_mnist, monkeypatch):
    monkeypatch.setitem(generate_cli.RECIPES, "mnist",
                        dataclasses.replace(generate_cli.RECIPES["mnist"], validation_size=60))
    code = cli.main(["generate", "--dataset", "mnist", "--validation", "--seeds", "2", "--teacher-epochs", "1",
                     "--judge-epochs", "1", "--vae-steps", "2", "--gan-steps", "2", "--per-class", "2", "--width", "4",
                     "--models", "vae-labelled,gan-onehot,gan-labelled", "--families", "sphere",
                     "--discriminator", "both", "--onehot-discriminator", "auxiliary", "--fit", "calibrated", "--out", str(tmp_path), "--name", "tiny", "--no-progress"])
    assert code == 0
    report = json.loads((tmp_path / "tiny.json").read_text())
    assert report["dataset"] == "mnist" and report["validation"]
    assert report["settings"]["architecture"] == "conv" and report["settings"]["discriminator"] == "both"
    assert report["settings"]["onehot_discriminator"] == "auxiliary"
    assert all(0.25 <= r["spread_factor"]["sphere"] <= 4 for r in report["references"])
    assert [v["target"] for v in report["targets"]] == [  # no vae-onehot: no twin for vae-labelled
        "gan-labelled (sphere) judge fidelity at least gan-onehot's (paired, within 2 se)",
        "gan-labelled (sphere) Frechet distance at most gan-onehot's (paired, within 2 se)"]
    assert {r["seed"] for r in report["records"]} == {0, 1}
    grid = matplotlib.image.imread(tmp_path / "tiny" / "gan-onehot.png")
    assert grid.shape[:2] == (10 * 29 + 1, 2 * 29 + 1)  # 28x28 images at scale 1, 1-pixel gaps


def test_quick_and_explicit_options_resolve_over_the_recipe(fake_mnist):
    parser = argparse.ArgumentParser()
    generate_cli.add_arguments(parser)
    config, settings = generate_cli.resolve(parser.parse_args(["--dataset", "mnist", "--quick", "--gan-steps", "7"]))
    quick = generate_cli.RECIPES["mnist"].quick
    assert config.vae_steps == quick["vae_steps"] and config.gan_steps == 7 and config.architecture == "conv"
    assert settings["seeds"] == 1 and settings["teacher_epochs"] == quick["teacher_epochs"]
    assert config.vae_class_scale == generate_cli.RECIPES["mnist"].config.vae_class_scale is not None
    config, _ = generate_cli.resolve(parser.parse_args(["--dataset", "mnist", "--vae-class-scale", "none",
                                                        "--gan-class-scale", "2"]))
    assert config.vae_class_scale is None and config.gan_class_scale == 2.0
    with pytest.raises(SystemExit):
        parser.parse_args(["--gan-class-scale", "0"])
    config, settings = generate_cli.resolve(parser.parse_args([]))
    assert config == TrainConfig() and settings["seeds"] == 3 and settings["teacher_epochs"] == 20


def test_paired_targets_allow_two_standard_errors():
    records = [{"model": model, "family": family, "seed": seed, "judge_fidelity": fidelity, "frechet": frechet,
                **dict.fromkeys(("teacher_fidelity", "diversity", "train_cpu_seconds"), 0.0)}
               for seed, (ours, theirs) in enumerate([((0.90, 5.0), (0.95, 4.0)), ((0.96, 5.2), (0.95, 4.0)),
                                                      ((0.93, 5.8), (0.95, 5.0))])
               for (model, family), (fidelity, frechet) in ((("vae-labelled", "sphere"), ours),
                                                            (("vae-onehot", None), theirs))]
    mean, se = generate_cli.paired_difference(records, "vae-labelled (sphere)", "vae-onehot", "judge_fidelity")
    differences = [-0.05, 0.01, -0.02]
    assert mean == pytest.approx(sum(differences) / 3) and se == pytest.approx(np.std(differences, ddof=1) / math.sqrt(3))
    verdicts = generate_cli.targets(records, generate_cli.summarize(records), ["sphere"], {"sphere": 0.9})
    met = {v["target"].split(" ")[2]: v["met"] for v in verdicts}
    # fidelity: -0.020 >= -2 * 0.018 (met); Frechet: +1.0 > 2 * 0.115 (missed)
    assert met == {"judge": True, "Frechet": False}


def test_projected_wall_time_schedules_preparations_then_gans_first():
    """Two workers: preparations 10, 20, 30 s end at 40 s (10 + 30 on one, 20 on the other); then the
    GANs (8, 6 s), then the VAE (5 s), each to the first free worker: 40 + 8 = 48 and 40 + 6 + 5 = 51."""
    references = [{"prepare_cpu_seconds": t} for t in (10.0, 20.0, 30.0)]
    records = [{"model": "vae-onehot", "task_cpu_seconds": 5.0}, {"model": "gan-onehot", "task_cpu_seconds": 8.0},
               {"model": "gan-free", "task_cpu_seconds": 6.0}]
    assert generate_cli.projected_wall_seconds(records, references, 2) == 51.0
    assert generate_cli.projected_wall_seconds(records, references, 1) == 79.0


@pytest.mark.parametrize("architecture,shape", [("mlp", (1, 8, 8)), ("conv", (1, 8, 8)), ("conv", (1, 28, 28))])
def test_networks_map_images_and_conditions_to_their_shapes(architecture, shape):
    torch.manual_seed(0)
    decoder = Decoder(3, 5, shape, architecture, width=4)
    images = torch.sigmoid(decoder(torch.randn(6, 3), torch.randn(6, 5)))
    assert images.shape == (6, *shape)
    condition = torch.randn(6, 5)
    for heads in DISCRIMINATORS:
        scores, logits = Discriminator(5, 10, heads, shape, architecture, width=4)(images, condition)
        assert scores.shape == (6,) and (logits is None) == (heads == "projection")
        assert logits is None or logits.shape == (6, 10)
    # The auxiliary-only discriminator does not read the condition (eval: spectral norm's power
    # iteration would move between the two calls).
    auxiliary = Discriminator(5, 10, "auxiliary", shape, architecture, width=4).eval()
    torch.testing.assert_close(auxiliary(images, condition)[0], auxiliary(images, torch.zeros(6, 5))[0])
    assert any(isinstance(m, nn.ConvTranspose2d) for m in decoder.modules()) == (architecture == "conv")


def test_conv_networks_refuse_sides_not_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        Decoder(3, 5, (1, 30, 30), "conv")
    with pytest.raises(ValueError, match="architecture must be one of"):
        Discriminator(5, 10, "projection", (1, 8, 8), "resnet")
    with pytest.raises(ValueError, match="heads must be one of"):
        Discriminator(5, 10, "projected")


@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_at_28x28_with_conv_networks(name, device):
    """The LeNet-5 teacher on 28x28 images, conv decoders and every discriminator's heads."""
    torch.manual_seed(0)
    teacher = lenet5()
    images, labels = torch.rand(30, 1, 28, 28), torch.arange(10).repeat(3)
    with torch.no_grad():
        features = teacher.features(images) + 0.1  # no dead units: the rectified fit needs some non-zeros
    spaces = {"sphere": LatentSpace(PenultimateDistribution.fit(teacher.fc, features, labels, radius="norm")),
              "rectified": LatentSpace(RectifiedDistribution.fit(teacher.fc, features, labels))}
    mode = parse_model(name)[1]
    heads = list(DISCRIMINATORS) if parse_model(name)[0] == "gan" else ["projection"]
    for family, head in [(f, h) for f in ([None] if mode == "onehot" else list(spaces)) for h in heads]:
        config = dataclasses.replace(generate_cli.RECIPES["mnist"].config, vae_steps=3, gan_steps=3, batch_size=16,
                                     width=4, discriminator=head, onehot_discriminator=head)
        runs = [train_model(name, teacher, spaces.get(family), images, None if mode == "free" else labels, config,
                            seed=5, progress=False, device=device).generator.generate(
                    torch.arange(10), torch.Generator().manual_seed(2)) for _ in range(2)]
        assert runs[0].shape == (10, 1, 28, 28) and runs[0].device.type == device
        assert torch.equal(runs[0], runs[1]), f"{name} ({family}, {head}) is not repeatable under a seed"


def test_network_condition_puts_the_class_reading_before_the_direction(small_setup):
    """With a class scale s the penact networks read ``[s softmax(W a + b), sqrt(D) a / ||a||]`` and the
    one-hot ones ``s e_y``; without one, the direction alone and ``e_y``."""
    teacher, images, labels, spaces = small_setup
    seeds = torch.Generator().manual_seed(0)
    for space in spaces.values():
        a = space.prior_sample(labels[:6], seeds)
        logits = space.embed(a) @ space.distribution.weight.T + space.distribution.bias
        condition = ConditionalGenerator(nn.Identity(), space, 10, 0, class_scale=2.5).network_condition(a)
        assert condition.shape == (6, condition_size(space, 10, 2.5)) == (6, 10 + space.dim)
        torch.testing.assert_close(condition[:, :10], 2.5 * torch.softmax(logits, dim=1))
        torch.testing.assert_close(condition[:, 10:].norm(dim=1), torch.full((6,), math.sqrt(space.dim)))
        torch.testing.assert_close(condition[:, 10:], ConditionalGenerator(nn.Identity(), space, 10, 0)
                                   .network_condition(a))
        assert condition_size(space, 10, None) == space.dim
        reading = ConditionalGenerator(nn.Identity(), space, 10, 0, class_scale=2.5, reads="reading")
        assert condition_size(space, 10, 2.5, "reading") == 10
        torch.testing.assert_close(reading.network_condition(a), condition[:, :10])
    with pytest.raises(ValueError, match="reads='reading' needs a class_scale"):
        ConditionalGenerator(nn.Identity(), space, 10, 0, reads="reading")
    with pytest.raises(ValueError, match="reads must be one of"):
        ConditionalGenerator(nn.Identity(), space, 10, 0, reads="label")
    onehot = ConditionalGenerator(nn.Identity(), None, 10, 0, class_scale=2.5).condition(labels[:6], seeds)
    torch.testing.assert_close(onehot, 2.5 * nn.functional.one_hot(labels[:6], 10).float())


def test_consistency_readings_differ_for_the_sphere_alone(small_setup):
    """The GAN's consistency term: "activation" is the teacher's own log-softmax; "support" agrees with it
    for the rectified family (its support is the activation) and not for the sphere's (it reads the
    direction at the fitted radius)."""
    teacher, images, labels, spaces = small_setup
    draws = torch.Generator().manual_seed(0)
    readings = {(family, reading): trainers._GANTrainer(teacher, spaces[family], 10,
                                                        dataclasses.replace(TINY, consistency_reading=reading),
                                                        draws, draws, (1, 8, 8)).log_reading(images)
                for family in spaces for reading in CONSISTENCY_READINGS}
    torch.testing.assert_close(readings["sphere", "activation"], torch.log_softmax(teacher(images), dim=1))
    torch.testing.assert_close(readings["rectified", "support"], readings["rectified", "activation"])
    assert not torch.allclose(readings["sphere", "support"], readings["sphere", "activation"], atol=1e-3)
    with pytest.raises(ValueError, match="consistency_reading must be one of"):
        train_model("gan-free", teacher, spaces["sphere"], images, None,
                    dataclasses.replace(TINY, consistency_reading="image"), seed=0, progress=False)


def test_shuffle_within_class_keeps_each_class_column_and_breaks_the_rows(rng):
    a = torch.randn(60, 5, generator=rng)
    labels = torch.arange(3).repeat(20)
    shuffled = shuffle_within_class(a, labels, rng)
    for c in range(3):
        torch.testing.assert_close(shuffled[labels == c].sort(dim=0).values, a[labels == c].sort(dim=0).values,
                                   rtol=0, atol=0)
    assert not torch.equal(shuffled, a)


def test_reading_counts_the_teachers_hits_and_margins(np_rng):
    space = _spaces(np_rng, dim=4, classes=3)[1]  # rectified: embed is the identity
    a = torch.from_numpy(np_rng.uniform(0, 2, (50, 4)))
    labels = torch.from_numpy(np_rng.integers(0, 3, 50))
    logits = a @ space.distribution.weight.T + space.distribution.bias
    own = logits.gather(1, labels[:, None]).squeeze(1)
    other = torch.stack([logits[i, [k for k in range(3) if k != labels[i]]].max() for i in range(50)])
    share, margin, spread = space.reading(a, labels)
    assert share == pytest.approx(float((logits.argmax(1) == labels).double().mean()))
    assert margin == pytest.approx(float((own - other).mean()), rel=1e-9)
    assert spread == pytest.approx(float(np.std((own - other).numpy(), ddof=1)), rel=1e-9)


def test_judge_is_another_architecture():
    assert not any(isinstance(m, nn.Conv2d) for m in JudgeMLP(10).modules())


@pytest.mark.parametrize("family", [0, 1], ids=["sphere", "rectified"])
def test_calibrated_fit_matches_the_real_margin_and_keeps_the_classifier(np_rng, family):
    """Real activations drawn from the family at twice its spread: the calibration finds a factor
    whose draws have their margin, and the weights (the GD pair's classifier) are untouched."""
    space = _spaces(np_rng, dim=6, classes=3)[family]
    distribution = space.distribution
    labels = torch.arange(3).repeat_interleave(2000)
    generator = torch.Generator().manual_seed(int(np_rng.integers(2**62)))
    real = with_spread(distribution, 2.0).sample(labels, generator=generator)
    fitted, factor = calibrated(distribution, real, labels, seed=3, per_class=2000)
    target = LatentSpace(distribution).reading(distribution.support(real), labels)[1]
    draws = LatentSpace(fitted).prior_sample(labels, torch.Generator().manual_seed(3))
    assert LatentSpace(fitted).reading(draws, labels)[1] == pytest.approx(target, abs=1e-3)
    assert factor > 1  # the real draws lie further out than those of the spread they are measured against
    assert torch.equal(fitted.weight, distribution.weight) and torch.equal(fitted.bias, distribution.bias)
    assert getattr(distribution, SPREAD[distribution.name]) is not getattr(fitted, SPREAD[distribution.name])


@pytest.mark.parametrize("family", [0, 1], ids=["sphere", "rectified"])
def test_calibrated_fit_can_match_the_share_read_as_the_class(np_rng, family):
    """``target="share"``: the smallest factor (within bisection's resolution) whose draws the teacher
    reads as their class at least as often as the real activations."""
    space = _spaces(np_rng, dim=6, classes=3)[family]
    distribution = space.distribution
    labels = torch.arange(3).repeat_interleave(2000)
    generator = torch.Generator().manual_seed(int(np_rng.integers(2**62)))
    real = with_spread(distribution, 2.0).sample(labels, generator=generator)
    fitted, factor = calibrated(distribution, real, labels, seed=3, per_class=2000, target="share")
    goal = LatentSpace(distribution).reading(distribution.support(real), labels)[0]

    def share(at: float) -> float:
        candidate = LatentSpace(with_spread(distribution, at))
        return candidate.reading(candidate.prior_sample(labels, torch.Generator().manual_seed(3)), labels)[0]

    assert share(factor) >= goal > share(factor * 0.98)
    assert torch.equal(fitted.weight, distribution.weight)
    with pytest.raises(ValueError, match="target must be one of"):
        calibrated(distribution, real, labels, seed=3, target="mean")


def test_with_spread_refuses_a_family_it_does_not_know(np_rng):
    class Other(PenultimateDistribution):
        name = "other"

    distribution = _spaces(np_rng)[0].distribution
    other = Other(distribution.weight, distribution.bias, radius=1.0)
    with pytest.raises(ValueError, match="no spread parameter"):
        with_spread(other, 2.0)
