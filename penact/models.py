"""Small CNN classifiers for 8x8 digits, shaped the way penact reads a classifier: a ``backbone``
whose output is the penultimate activation ``a = relu(...)`` (``[N, D]``), then ``fc: nn.Linear``
with ``z = W a + b``. The teacher and the (smaller) student have different penultimate widths, so
distillation cannot copy activations coordinate by coordinate.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

TEACHER_WIDTH = 128
STUDENT_WIDTH = 64


class Classifier(nn.Module):
    """``forward(x) = fc(backbone(x))``; ``features(x) = backbone(x)``, the penultimate activation."""

    def __init__(self, backbone: nn.Module, width: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(width, num_classes)

    @property
    def width(self) -> int:
        """D, the penultimate width."""
        return self.fc.in_features

    def features(self, images: Tensor) -> Tensor:
        """Penultimate activations ``[N, D]`` (non-negative: the backbone ends in a ReLU) of
        ``images: [N, 1, 8, 8]``."""
        return self.backbone(images)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[N, C]``."""
        return self.fc(self.backbone(images))


def teacher_cnn(width: int = TEACHER_WIDTH, num_classes: int = 10) -> Classifier:
    """Three 3x3 convolutions (32, 64, 64 channels, two 2x2 max-pools: 8x8 -> 2x2), a linear layer to
    ``width`` and a ReLU: about 90k parameters."""
    backbone = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 2 * 2, width), nn.ReLU(),
    )
    return Classifier(backbone, width, num_classes)


def student_cnn(width: int = STUDENT_WIDTH, num_classes: int = 10) -> Classifier:
    """Two 3x3 convolutions (16, 32 channels, two 2x2 max-pools), a linear layer to ``width`` and a
    ReLU: about 14k parameters."""
    backbone = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, width), nn.ReLU(),
    )
    return Classifier(backbone, width, num_classes)


def train_classifier(model: nn.Module, images: Tensor, labels: Tensor, epochs: int, *, batch_size: int = 64,
                     lr: float = 2e-3, weight_decay: float = 1e-4, seed: int = 0, progress: bool = True,
                     desc: str = "train") -> list[float]:
    """Trains ``model`` with cross-entropy and Adam on ``images: [N, ...]``, ``labels: [N]``.

    The shuffling comes from a generator seeded with ``seed`` (initialize the model under
    ``torch.manual_seed`` for a fully reproducible run). Returns the mean loss of each epoch.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be non-negative, got {epochs}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    shuffle = torch.Generator().manual_seed(seed)
    model.train()
    epoch_losses = []
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        order = torch.randperm(len(labels), generator=shuffle)
        total = 0.0
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        epoch_losses.append(total / len(order))
        bar.set_postfix(loss=f"{epoch_losses[-1]:.4f}")
    model.eval()
    return epoch_losses


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Fraction of ``images`` whose predicted class equals ``labels``."""
    was_training = model.training
    model.eval()
    correct = (model(images).argmax(dim=1) == labels).float().mean()
    model.train(was_training)
    return float(correct)
