"""``penact demo``: train a small CNN on digits, fit the distribution its final layer defines, and
check it against the real penultimate activations.

What is checked (docs/model.md, sections 1-2):

- the GD pair: on the sphere ``||x|| = r`` the generative classifier's posterior equals
  ``softmax(W x + b)``, at sampled and at real (normalized) activations, to rounding error;
- the fitted radius (``"mle"``, and ``"norm"`` beside it);
- per class, the mean cosine ``mu_y . a / ||a||`` of real activations against that of sampled ones
  and against the model's own ``A_D(kappa_y) = E[mu_y . u]``;
- the teacher's accuracy on its own sampled activations (how often ``fc`` gives back the class
  the activation was drawn for).

Writes ``report.md``, ``pca.png`` (a 2-D PCA projection of real vs sampled directions) and
``cosines.png`` (per-class cosine histograms) to the output folder. Runs on ``--device`` (the model,
the data, the fits and the samples live there; the plots are drawn from CPU copies).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .data import load_digits_split
from .training import synchronize
from .experiments import add_device_argument, device_name
from .families import ClassConditionalDistribution, SphereDistribution, family_names, get_family
from .models import accuracy, teacher_cnn, train_classifier

RADIUS_METHODS = ("mle", "norm")


@dataclass
class RadiusCheck:
    """What one radius choice gives: ``gd_error_*`` are max |posterior - softmax(W x + b)|."""

    method: str
    radius: float
    gd_error_sampled_float64: float
    gd_error_real_float64: float
    gd_error_sampled_float32: float
    gd_error_real_float32: float
    sample_accuracy: float
    mean_resultant: list[float]
    sampled_cosine: list[float]


@dataclass
class FamilyCheck:
    """Real vs sampled activations under one family: GD error (float64), fraction of exact zeros,
    mean norm, and the teacher's accuracy on the family's samples."""

    family: str
    gd_error_sampled: float
    gd_error_real: float
    zero_fraction_real: float
    zero_fraction_sampled: float
    mean_norm_real: float
    mean_norm_sampled: float
    sample_accuracy: float


@dataclass
class DemoResult:
    device: str
    teacher_test_accuracy: float
    teacher_width: int
    train_seconds: float
    real_cosine: list[float]
    mean_real_norm: float
    checks: dict[str, RadiusCheck] = field(default_factory=dict)
    families: list[FamilyCheck] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _gd_error(dist: ClassConditionalDistribution, x: Tensor) -> float:
    """max |p(y | x) - softmax(W x + b)| over rows and classes."""
    logits = x @ dist.weight.T + dist.bias
    return float((dist.posterior(x) - torch.softmax(logits, dim=1)).abs().max())


def _class_cosines(directions: Tensor, units: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``[C]``: the mean over rows of class y of ``mu_y . u``; ``directions: [C, D]``, ``units: [N, D]``."""
    cosine = (units * directions[labels]).sum(dim=1)
    return torch.zeros(num_classes, dtype=cosine.dtype, device=cosine.device).index_add_(0, labels, cosine) / (
        torch.bincount(labels, minlength=num_classes).to(cosine.dtype))


def run_demo(out: Path | str, epochs: int = 20, seed: int = 0, samples_per_class: int = 300,
             progress: bool = True, command: str | None = None, device: torch.device | str = "cpu") -> DemoResult:
    """Runs the demo on ``device`` and writes its report to ``out`` (created if missing). Returns the
    numbers. The model's initialization is drawn on the CPU, the same on every device."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    data = load_digits_split()
    num_classes = data.num_classes

    torch.manual_seed(seed)
    model = teacher_cnn(num_classes=num_classes).to(device)
    images, labels = data.train_images.to(device), data.train_labels.to(device)
    started = time.perf_counter()
    train_classifier(model, images, labels, epochs, seed=seed, progress=progress, desc="teacher")
    synchronize(device)  # the clock stops when the GPU has run the last step, not when it was queued
    train_seconds = time.perf_counter() - started
    test_accuracy = accuracy(model, data.test_images.to(device), data.test_labels.to(device))

    with torch.no_grad():
        activations = model.features(images)
    real_units = activations.double() / activations.double().norm(dim=1, keepdim=True)
    sample_labels = torch.arange(num_classes, device=device).repeat_interleave(samples_per_class)

    result = DemoResult(device=device_name(device), teacher_test_accuracy=test_accuracy, teacher_width=model.width,
                        train_seconds=train_seconds, real_cosine=[],
                        mean_real_norm=float(activations.norm(dim=1).mean()))
    samples = {}
    for method in RADIUS_METHODS:
        fitted = SphereDistribution.fit(model.fc, activations, labels, radius=method)
        radius = fitted.radius
        # The GD pair in both precisions: float64 shows the identity, float32 the model's own dtype.
        exact = SphereDistribution(fitted.weight.detach().double(), fitted.bias.detach().double(), radius)
        single = SphereDistribution(fitted.weight.detach(), fitted.bias.detach(), radius)
        with torch.no_grad():
            sampled = exact.sample(sample_labels, seed=seed, offset=0)
            sampled_single = single.sample(sample_labels, seed=seed, offset=0)
            directions = exact.mean_direction
            if not result.real_cosine:
                result.real_cosine = _class_cosines(directions, real_units, labels, num_classes).tolist()
            predicted = model.fc(sampled_single).argmax(dim=1)
            result.checks[method] = RadiusCheck(
                method=method,
                radius=radius,
                gd_error_sampled_float64=_gd_error(exact, sampled),
                gd_error_real_float64=_gd_error(exact, radius * real_units),
                gd_error_sampled_float32=_gd_error(single, sampled_single),
                gd_error_real_float32=_gd_error(single, (radius * real_units).float()),
                sample_accuracy=float((predicted == sample_labels).float().mean()),
                mean_resultant=exact.mean_resultant.tolist(),
                sampled_cosine=_class_cosines(directions, sampled / radius, sample_labels, num_classes).tolist(),
            )
            samples[method] = (sampled / radius, directions)

    result.files = _plot(out, real_units.cpu(), labels.cpu(), samples["mle"][0].cpu(), sample_labels.cpu(),
                         samples["mle"][1].cpu(), result.checks["mle"].mean_resultant)
    result.families, pairs = _compare_families(model, activations, labels, sample_labels, seed)
    result.files.append(_plot_coordinates(out, pairs))
    report = out / "report.md"
    report.write_text(_report(result, epochs, seed, samples_per_class, command))
    result.files.insert(0, report)
    return result


def _plot(out: Path, real_units: Tensor, labels: Tensor, sampled_units: Tensor, sample_labels: Tensor,
          directions: Tensor, mean_resultant: list[float]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    num_classes = directions.shape[0]
    colors = plt.get_cmap("tab10")

    pca = PCA(n_components=2).fit(real_units.numpy())
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharex=True, sharey=True)
    for axis, units, point_labels, title in ((axes[0], real_units, labels, "real activations (normalized)"),
                                            (axes[1], sampled_units, sample_labels, "sampled from the FC layer")):
        projected = pca.transform(units.numpy())
        for c in range(num_classes):
            chosen = (point_labels == c).numpy()
            axis.scatter(projected[chosen, 0], projected[chosen, 1], s=4, alpha=0.5, color=colors(c), label=str(c))
        axis.set_title(title)
        axis.set_xlabel("PC 1 (of real)")
    axes[0].set_ylabel("PC 2 (of real)")
    axes[1].legend(markerscale=3, fontsize=7, loc="best", title="class")
    figure.tight_layout()
    pca_path = out / "pca.png"
    figure.savefig(pca_path, dpi=110)
    plt.close(figure)

    real_cos = (real_units * directions[labels]).sum(dim=1).numpy()
    sampled_cos = (sampled_units * directions[sample_labels]).sum(dim=1).numpy()
    figure, axes = plt.subplots(2, (num_classes + 1) // 2, figsize=(14, 5.5), sharex=True)
    for c, axis in enumerate(axes.flat[:num_classes]):
        bins = 25
        axis.hist(real_cos[(labels == c).numpy()], bins=bins, density=True, alpha=0.55, label="real")
        axis.hist(sampled_cos[(sample_labels == c).numpy()], bins=bins, density=True, alpha=0.55, label="sampled")
        axis.axvline(mean_resultant[c], color="k", linestyle="--", linewidth=1, label="A_D(kappa)")
        axis.set_title(f"class {c}")
    for axis in axes.flat[num_classes:]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.supxlabel("cosine to the class direction  mu_y . a / ||a||  (radius: mle)")
    figure.tight_layout()
    cosine_path = out / "cosines.png"
    figure.savefig(cosine_path, dpi=110)
    plt.close(figure)
    return [pca_path, cosine_path]


def _compare_families(model, activations: Tensor, labels: Tensor, sample_labels: Tensor,
                      seed: int) -> tuple[list[FamilyCheck], dict[str, tuple[Tensor, Tensor]]]:
    """Every registered family fitted to the same real activations, side by side (float64).
    Returns the checks and, per family, (real activations on its support, its samples)."""
    real = activations.double()
    weight, bias = model.fc.weight.detach().double(), model.fc.bias.detach().double()
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0]).to(weight)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    checks, pairs = [], {}
    with torch.no_grad():
        for name in family_names():
            dist = get_family(name).fit(linear, real, labels)
            sampled = dist.sample(sample_labels, seed=seed, offset=0)
            on_support = dist.support(real)
            predicted = linear(sampled).argmax(dim=1)
            checks.append(FamilyCheck(
                family=name, gd_error_sampled=_gd_error(dist, sampled), gd_error_real=_gd_error(dist, on_support),
                zero_fraction_real=float((real == 0).double().mean()),
                zero_fraction_sampled=float((sampled == 0).double().mean()),
                mean_norm_real=float(on_support.norm(dim=1).mean()), mean_norm_sampled=float(sampled.norm(dim=1).mean()),
                sample_accuracy=float((predicted == sample_labels).double().mean())))
            pairs[name] = (on_support.cpu(), sampled.cpu())
    return checks, pairs


def _plot_coordinates(out: Path, pairs: dict[str, tuple[Tensor, Tensor]]) -> Path:
    """Per family and coordinate: mean and fraction of exact zeros, real (on the family's support)
    vs sampled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(pairs), 2, figsize=(9, 4 * len(pairs)), squeeze=False)
    for row, (name, (real, sampled)) in zip(axes, pairs.items()):
        for axis, (title, real_stat, sampled_stat) in zip(row, [
                ("mean per coordinate", real.mean(dim=0), sampled.mean(dim=0)),
                ("fraction of exact zeros per coordinate", (real == 0).double().mean(dim=0),
                 (sampled == 0).double().mean(dim=0))]):
            axis.scatter(real_stat.numpy(), sampled_stat.numpy(), s=8)
            low = float(min(real_stat.min(), sampled_stat.min(), 0))
            top = float(max(real_stat.max(), sampled_stat.max()))
            axis.plot([low, top], [low, top], color="gray", linewidth=1)
            axis.set(title=f"{name}: {title}", xlabel="real (on the support)", ylabel="sampled")
    figure.tight_layout()
    path = out / "coordinates.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _report(result: DemoResult, epochs: int, seed: int, samples_per_class: int, command: str | None) -> str:
    mle = result.checks["mle"]
    lines = [
        "# penact demo: the distribution of a digits classifier's penultimate activations",
        "",
        f"Command: `{command}`" if command else "",
        "",
        f"Teacher CNN (penultimate width {result.teacher_width}), trained {epochs} epochs "
        f"(seed {seed}, {result.train_seconds:.1f} s on {result.device}): "
        f"**test accuracy {100 * result.teacher_test_accuracy:.2f}%**.",
        f"Mean norm of the real penultimate activations (training split): {result.mean_real_norm:.4g}.",
        "",
        "## Radius and the GD pair",
        "",
        "max |posterior(x) - softmax(W x + b)| on the sphere of the fitted radius; `sampled`: "
        f"{samples_per_class} draws per class; `real`: the training activations scaled to the sphere.",
        "",
        "| radius | r | GD error sampled (f64) | GD error real (f64) | sampled (f32) | real (f32) "
        "| teacher accuracy on its own samples |",
        "|---|---|---|---|---|---|---|",
    ]
    for check in result.checks.values():
        lines.append(f"| {check.method} | {check.radius:.6g} | {check.gd_error_sampled_float64:.2e} "
                     f"| {check.gd_error_real_float64:.2e} | {check.gd_error_sampled_float32:.2e} "
                     f"| {check.gd_error_real_float32:.2e} | {100 * check.sample_accuracy:.2f}% |")
    lines += [
        "",
        "## Per class: mean cosine to the class direction (radius: mle)",
        "",
        "| class | real (normalized) | sampled | model A_D(kappa) | sampled - A_D (sampler check) |",
        "|---|---|---|---|---|",
    ]
    for c, (real, sampled, expected) in enumerate(zip(result.real_cosine, mle.sampled_cosine, mle.mean_resultant)):
        lines.append(f"| {c} | {real:.4f} | {sampled:.4f} | {expected:.4f} | {sampled - expected:+.4f} |")
    lines += [
        "",
        "The MLE radius matches the model's mean cosine to the real one pooled over classes; per class "
        "they can differ (the vMF has a single concentration per class, r ||w_y||, and the real "
        "activations are non-negative ReLU outputs, which a sphere family does not model).",
        "",
        "![PCA projection of real vs sampled activations](pca.png)",
        "",
        "![Per-class cosine histograms](cosines.png)",
        "",
        "## Every family side by side (float64)",
        "",
        "The sphere family models directions at the radius r; the rectified family models the raw ReLU "
        "activations (exact zeros included) and needs no normalization. Both are exact GD pairs.",
        "",
        "Real activations are taken to each family's support (the sphere family: `r a / ||a||`).",
        "",
        "| family | GD error sampled | GD error real | zeros real | zeros sampled | mean norm real "
        "| mean norm sampled | teacher accuracy on samples |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fam in result.families:
        lines.append(f"| {fam.family} | {fam.gd_error_sampled:.2e} | {fam.gd_error_real:.2e} "
                     f"| {fam.zero_fraction_real:.3f} | {fam.zero_fraction_sampled:.3f} | {fam.mean_norm_real:.4g} "
                     f"| {fam.mean_norm_sampled:.4g} | {100 * fam.sample_accuracy:.2f}% |")
    lines += ["", "![Per-coordinate mean and sparsity, real vs sampled, per family](coordinates.png)", ""]
    return "\n".join(lines)


def _print_summary(result: DemoResult) -> None:
    print(f"teacher test accuracy: {100 * result.teacher_test_accuracy:.2f}%  "
          f"(trained in {result.train_seconds:.1f} s on {result.device})")
    for check in result.checks.values():
        print(f"radius={check.method:<4} r = {check.radius:.6g}  GD-pair max|posterior - softmax|: "
              f"sampled {check.gd_error_sampled_float64:.2e} / real {check.gd_error_real_float64:.2e} (float64), "
              f"sampled {check.gd_error_sampled_float32:.2e} / real {check.gd_error_real_float32:.2e} (float32); "
              f"teacher accuracy on its own samples {100 * check.sample_accuracy:.2f}%")
    mle = result.checks["mle"]
    print("class  cosine real  cosine sampled  A_D(kappa)   (radius: mle)")
    for c, (real, sampled, expected) in enumerate(zip(result.real_cosine, mle.sampled_cosine, mle.mean_resultant)):
        print(f"{c:>5}  {real:>11.4f}  {sampled:>14.4f}  {expected:>10.4f}")
    for fam in result.families:
        print(f"{fam.family}: GD error sampled {fam.gd_error_sampled:.2e} / real {fam.gd_error_real:.2e}; zeros real "
              f"{fam.zero_fraction_real:.3f} vs sampled {fam.zero_fraction_sampled:.3f}; mean norm real "
              f"{fam.mean_norm_real:.4g} vs sampled {fam.mean_norm_sampled:.4g}; teacher accuracy on samples "
              f"{100 * fam.sample_accuracy:.2f}%")
    print("wrote " + ", ".join(str(path) for path in result.files))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo-report"), help="folder for report.md and the PNGs")
    parser.add_argument("--epochs", type=int, default=20, help="teacher training epochs (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the model, the shuffling and the samples")
    parser.add_argument("--samples-per-class", type=int, default=300, help="sampled activations per class")
    add_device_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(args: argparse.Namespace) -> int:
    command = "penact " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = run_demo(args.out, epochs=args.epochs, seed=args.seed, samples_per_class=args.samples_per_class,
                      progress=not args.no_progress, command=command, device=args.device)
    _print_summary(result)
    return 0
