"""``penact demo`` end to end on a short run on every available device, and the command line's parsing."""
import pytest
import torch
from conftest import DEVICE_PARAMS

from penact import cli
from penact.demo import RADIUS_METHODS, run_demo


@pytest.fixture(scope="module", params=DEVICE_PARAMS)
def demo_result(request, tmp_path_factory):
    """One demo run per device (conftest's device parameters), shared by the tests below."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("demo")
        yield out, run_demo(out, epochs=3, seed=0, samples_per_class=50, progress=False, device=request.param)
    finally:
        torch.set_num_threads(threads)


def test_demo_gd_pair_is_exact_to_rounding(demo_result):
    _, result = demo_result
    for method in RADIUS_METHODS:
        check = result.checks[method]
        assert check.radius > 0
        # float64: the identity holds to a few ulps of probabilities in [0, 1].
        assert check.gd_error_sampled_float64 < 1e-12
        assert check.gd_error_real_float64 < 1e-12
        assert check.gd_error_sampled_float32 < 1e-4
        assert check.gd_error_real_float32 < 1e-4


def test_demo_numbers_are_sane(demo_result):
    _, result = demo_result
    assert 0.5 < result.teacher_test_accuracy <= 1.0
    mle = result.checks["mle"]
    assert len(mle.sampled_cosine) == len(result.real_cosine) == 10
    # The sampler's per-class mean cosine estimates A_D(kappa) (50 draws: a few hundredths).
    for sampled, expected in zip(mle.sampled_cosine, mle.mean_resultant):
        assert abs(sampled - expected) < 0.05
    assert 0.1 < mle.sample_accuracy <= 1.0


def test_demo_compares_both_families(demo_result):
    """Both families are exact GD pairs; the rectified one reproduces the real fraction of exact
    zeros and the mean norm (its fit matches zero counts and second moments per coordinate)."""
    _, result = demo_result
    sphere, rectified = result.families
    for family in (sphere, rectified):
        assert family.gd_error_sampled < 1e-12 and family.gd_error_real < 1e-12
    assert sphere.zero_fraction_sampled == 0 and sphere.zero_fraction_real > 0.05
    assert abs(rectified.zero_fraction_sampled - rectified.zero_fraction_real) < 0.02
    assert rectified.mean_norm_sampled == pytest.approx(rectified.mean_norm_real, rel=0.05)


def test_demo_writes_report_and_plots(demo_result):
    out, result = demo_result
    for name in ("report.md", "pca.png", "cosines.png", "coordinates.png"):
        path = out / name
        assert path in result.files
        assert path.stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "GD pair" in report and "pca.png" in report and "cosines.png" in report and "coordinates.png" in report


def test_cli_parses_demo(tmp_path):
    args = cli.build_parser().parse_args(["demo", "--out", str(tmp_path), "--epochs", "3", "--seed", "7"])
    assert args.command == "demo"
    assert args.out == tmp_path and args.epochs == 3 and args.seed == 7 and args.device == torch.device("cpu")
    assert callable(args.handler)


def test_cli_requires_a_subcommand():
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([])
