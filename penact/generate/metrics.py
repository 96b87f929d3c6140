"""How generated images are judged.

- **Fidelity**: the share of images generated for class ``y`` that a classifier assigns to ``y``,
  by the teacher and by the *judge*, an independently trained classifier of another architecture
  (a pixel MLP; the teacher is a CNN). A generator trained through the teacher could fool the
  teacher alone.
- **Frechet distance** between Gaussians fitted to the judge's features (its 64-wide hidden
  layer) of the generated images and of the real test split: ``||m1 - m2||^2 + tr(S1 + S2 -
  2 (S1^1/2 S2 S1^1/2)^1/2)``, in float64.
- **Diversity**: per class, the mean pairwise distance between the judge's features of the
  generated images, divided by the same for the real test images of that class, averaged over
  classes (1 = as varied as real digits, 0 = one image per class).
- **Where the variety comes from** (:meth:`Judges.variety_sources`): the same ratio over the style
  code (or noise) at a fixed condition, over the condition at a fixed style code, and over both.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


def _symmetric_sqrt(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """The Frechet distance between Gaussians fitted to ``features_a: [N, K]`` and ``features_b:
    [M, K]`` (means and unbiased covariances), in float64: the sum of :func:`frechet_terms`."""
    return sum(frechet_terms(features_a, features_b))


def frechet_terms(features_a: Tensor, features_b: Tensor) -> tuple[float, float]:
    """The Frechet distance's two terms, ``(||m1 - m2||^2, tr(S1 + S2 - 2 (S1 S2)^1/2))``: where the
    means differ and where the spreads do. ``tr((S1 S2)^1/2)`` is computed as
    ``tr((S1^1/2 S2 S1^1/2)^1/2)``, the square root of a symmetric positive semi-definite matrix."""
    if features_a.dim() != 2 or features_b.dim() != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"features must be [N, K] and [M, K], got {tuple(features_a.shape)} and {tuple(features_b.shape)}")
    if min(features_a.shape[0], features_b.shape[0]) < 2:
        raise ValueError("each feature set needs at least two rows for a covariance")
    a, b = features_a.double(), features_b.double()
    mean_a, mean_b = a.mean(dim=0), b.mean(dim=0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _symmetric_sqrt(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mean_a - mean_b).square().sum()), float(cov_a.trace() + cov_b.trace() - 2 * cross)


def mean_pairwise_distance(features: Tensor) -> float:
    """The mean Euclidean distance over distinct pairs of rows of ``features: [N, K]`` (N >= 2)."""
    if features.shape[0] < 2:
        raise ValueError("mean_pairwise_distance needs at least two rows")
    distances = torch.cdist(features.double(), features.double())
    n = features.shape[0]
    return float(distances.sum() / (n * (n - 1)))


@dataclass
class Scores:
    teacher_fidelity: float
    judge_fidelity: float
    frechet: float
    diversity: float


class Judges:
    """The teacher and the judge, with the real test split's judge features precomputed."""

    def __init__(self, teacher: nn.Module, judge: nn.Module, test_images: Tensor, test_labels: Tensor):
        self.teacher, self.judge = teacher.eval(), judge.eval()
        self.num_classes = int(test_labels.max()) + 1
        with torch.no_grad():
            self.real_features = judge.features(test_images)
        self.real_labels = test_labels
        self.real_spread = torch.tensor([mean_pairwise_distance(self.real_features[test_labels == c])
                                         for c in range(self.num_classes)])

    @torch.no_grad()
    def score(self, images: Tensor, labels: Tensor) -> Scores:
        """``images [N, 1, H, W]`` in ``[0, 1]`` generated for ``labels [N]`` (every class at least twice)."""
        features = self.judge.features(images)
        teacher_hits = (self.teacher(images).argmax(dim=1) == labels).double().mean()
        judge_hits = (self.judge.fc(features).argmax(dim=1) == labels).double().mean()
        spread = torch.tensor([mean_pairwise_distance(features[labels == c]) for c in range(self.num_classes)])
        return Scores(float(teacher_hits), float(judge_hits), frechet_distance(features, self.real_features),
                      float((spread / self.real_spread).mean()))

    @torch.no_grad()
    def variety_sources(self, generator, generator_seed: torch.Generator, conditions: int = 10,
                        styles: int = 10) -> dict[str, float]:
        """Where a ``ConditionalGenerator``'s variety within a class comes from. Per class it decodes
        ``conditions`` conditions (penact: draws ``a ~ p(a | y)``; one-hot: the label, the same each
        time) times ``styles`` style codes; each entry is the mean over classes of a spread of the
        judge's features divided by the real images' (as ``diversity``): ``style`` over the style
        codes at a fixed condition, ``condition`` over the conditions at a fixed style code, ``both``
        over pairs that differ in both (:func:`cross_spread`)."""
        device = next(generator.decoder.parameters()).device
        spreads: dict[str, list[float]] = {"style": [], "condition": [], "both": []}
        for label in range(self.num_classes):
            condition = generator.condition(torch.full((conditions,), label, device=device), generator_seed)
            latent = torch.randn(styles, generator.latent_size, generator=generator_seed).to(device)
            images = generator.decode(latent.repeat(conditions, 1), condition.repeat_interleave(styles, dim=0))
            features = self.judge.features(images).reshape(conditions, styles, -1)
            real = float(self.real_spread[label])
            spreads["style"].append(sum(mean_pairwise_distance(row) for row in features) / conditions / real)
            spreads["condition"].append(sum(mean_pairwise_distance(features[:, k]) for k in range(styles)) / styles / real)
            spreads["both"].append(cross_spread(features) / real)
        return {name: sum(values) / len(values) for name, values in spreads.items()}


def cross_spread(features: Tensor) -> float:
    """The mean distance between ``features[m, k]`` and ``features[m', k']`` over ``m != m'`` and
    ``k != k'`` (pairs that differ in both indices); ``features: [M, K, F]``, ``M, K >= 2``."""
    m, k, _ = features.shape
    if m < 2 or k < 2:
        raise ValueError(f"cross_spread needs M, K >= 2, got {m}, {k}")
    flat = features.reshape(m * k, -1).double()
    distances = torch.cdist(flat, flat).reshape(m, k, m, k)
    mask = (~torch.eye(m, dtype=torch.bool, device=flat.device))[:, None, :, None] \
        & (~torch.eye(k, dtype=torch.bool, device=flat.device))[None, :, None, :]
    return float(distances[mask].mean())
