"""Small CNN classifiers for 8x8 digits and the LeNet-5 pair for MNIST, shaped the way penact reads
a classifier: a ``backbone`` whose output is the penultimate activation ``a = relu(...)``
(``[N, D]``), then ``fc: nn.Linear`` with ``z = W a + b``. The teacher and the (smaller) student
have different penultimate widths, so distillation cannot copy activations coordinate by
coordinate.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .training import host_to_device

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
        ``images: [N, *image_shape]``."""
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


# DAFL's MNIST input (Chen et al., ICCV 2019, teacher-train.py: transforms.Resize((32, 32)), then
# Normalize((0.1307,), (0.3081,)), MNIST's training mean and standard deviation on the /255 scale).
LENET_INPUT_SIZE = 32
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


class MnistPreprocess(nn.Module):
    """``[N, 1, H, W]`` in ``[0, 1]`` (the loaders' format; MNIST's 28x28 in practice) ->
    ``[N, 1, 32, 32]``, ``(resize(x) - 0.1307) / 0.3081``.

    Resizing, not padding by 2 (the other classic way to reach LeNet-5's 32x32), because DAFL's
    Table 1 numbers were measured with it. Bilinear with ``align_corners=False`` samples where
    PIL's bilinear upscale (torchvision's ``Resize`` on an image) samples; DAFL's PIL path then
    quantizes to uint8 in fixed point, which this does not (measured on 500 MNIST test images:
    less than one grey level, 1/255, apart everywhere). A 32x32 input passes unchanged, up to the
    normalization.
    """

    def forward(self, images: Tensor) -> Tensor:
        resized = nn.functional.interpolate(images, size=(LENET_INPUT_SIZE, LENET_INPUT_SIZE), mode="bilinear",
                                            align_corners=False)
        return (resized - MNIST_MEAN) / MNIST_STD


def _lenet5(channels: tuple[int, int, int], width: int, num_classes: int) -> Classifier:
    """LeNet-5 as in the DAFL authors' ``lenet.py``: 5x5 convolutions without padding (32 -> 28,
    pool -> 14, -> 10, pool -> 5, -> 1), ReLU after each, then a linear layer to ``width`` and a
    ReLU.

    Its weights are channels-last: oneDNN's CPU convolutions with 1 to 16 channels run faster in
    that layout (a distillation step of LeNet-5-half taught by LeNet-5 in about 0.8x the time, a
    synthesis step in 0.6-0.8x: benchmarks/NOTES.md); the values are the same up to rounding, and
    a loaded state dict keeps the layout."""
    conv1, conv2, conv3 = channels
    backbone = nn.Sequential(
        MnistPreprocess(),
        nn.Conv2d(1, conv1, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(conv1, conv2, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(conv2, conv3, 5), nn.ReLU(),
        nn.Flatten(), nn.Linear(conv3, width), nn.ReLU(),
    )
    return Classifier(backbone, width, num_classes).to(memory_format=torch.channels_last)


def lenet5(num_classes: int = 10) -> Classifier:
    """DAFL's MNIST teacher: convolutions with 6, 16, 120 channels, penultimate width 84;
    61,706 parameters (for 10 classes). Takes ``images: [N, 1, 28, 28]`` in ``[0, 1]`` and resizes
    and normalizes them itself (:class:`MnistPreprocess`)."""
    return _lenet5((6, 16, 120), 84, num_classes)


def lenet5_half(num_classes: int = 10) -> Classifier:
    """DAFL's MNIST student, LeNet-5 with every layer halved: 3, 8, 60 channels, penultimate width
    42; 15,738 parameters (for 10 classes). Input as :func:`lenet5`."""
    return _lenet5((3, 8, 60), 42, num_classes)


def train_classifier(model: nn.Module, images: Tensor, labels: Tensor, epochs: int, *, batch_size: int = 64,
                     lr: float = 2e-3, weight_decay: float = 1e-4, seed: int = 0, progress: bool = True,
                     desc: str = "train") -> list[float]:
    """Trains ``model`` with cross-entropy and Adam on ``images: [N, ...]``, ``labels: [N]`` (on the
    model's device; the host reads the loss once per epoch, never inside a step).

    The shuffling comes from a CPU generator seeded with ``seed`` (initialize the model under
    ``torch.manual_seed`` for a fully reproducible run, the same on every device). Returns the mean
    loss of each epoch.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be non-negative, got {epochs}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    shuffle = torch.Generator().manual_seed(seed)
    model.train()
    epoch_losses = []
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        order = host_to_device(torch.randperm(len(labels), generator=shuffle), images.device)
        total = torch.zeros((), device=images.device)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(index)
        epoch_losses.append(float(total) / len(order))
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
