"""The networks of the generators, in two architectures: pixel MLPs (``"mlp"``, for 8x8 digits) and
DCGAN-style convolutional networks (``"conv"``, for 28x28 MNIST).

Every generative network takes a *condition* ``c: [N, K]``: for the penact models the (normalized)
teacher activation ``a`` (K = D), for the baselines a one-hot label (K = C). Images are
``[N, 1, H, W]``; decoders and generators return logits of the pixel intensities.

- ``"mlp"``: decoder ``[latent, c] -> 256 -> 256 -> H W``; discriminator features
  ``H W -> 256 -> 256`` (LeakyReLU 0.2, spectral norm).
- ``"conv"`` (``width`` w): decoder ``[latent, c] -> [2w, H/4, W/4]`` (linear), then two 4x4
  transposed convolutions of stride 2 (``-> [w, H/2, W/2] -> [1, H, W]``), batch norm and ReLU
  after every layer but the last; discriminator features: two 4x4 convolutions of stride 2
  (``1 -> w -> 2w`` channels, ``H/4 x W/4`` left), LeakyReLU 0.2, then a linear layer to 256, every
  layer spectrally normalized.

The VAE encoders are pixel MLPs in both (an encoder is trained against one decoder, not judged; the
penact encoder reads the teacher's convolutional features besides).
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

HIDDEN = 256
ARCHITECTURES = ("mlp", "conv")


def _mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU, wrap=lambda layer: layer) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(wrap(nn.Linear(fan_in, fan_out)))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def _check_architecture(architecture: str, image_shape: tuple[int, ...]) -> None:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if architecture == "conv" and (len(image_shape) != 3 or image_shape[1] % 4 or image_shape[2] % 4):
        raise ValueError(f"the conv architecture needs images [C, H, W] with H and W divisible by 4, got {image_shape}")


class Decoder(nn.Module):
    """``[latent, condition] -> [N, *image_shape]`` pixel logits (the VAE decoder and the GAN
    generator). ``latent`` is the VAE's Gaussian code or the GAN's noise; either may be absent
    (size 0). ``architecture`` and ``width``: see the module's docstring (``width`` is the conv
    decoder's last hidden channel count; the MLP's width is ``HIDDEN``).

    Raises:
        ValueError: an unknown architecture, or a conv decoder for a side not divisible by 4.
    """

    def __init__(self, latent_size: int, condition_size: int, image_shape: tuple[int, ...] = (1, 8, 8),
                 architecture: str = "mlp", width: int = 32):
        super().__init__()
        _check_architecture(architecture, image_shape)
        self.image_shape = tuple(image_shape)
        self.latent_size, self.condition_size = latent_size, condition_size
        inputs = latent_size + condition_size
        if architecture == "mlp":
            self.net = _mlp([inputs, HIDDEN, HIDDEN, math.prod(image_shape)])
            return
        channels, height, side = image_shape[0], image_shape[1] // 4, image_shape[2] // 4
        self.net = nn.ModuleList([
            nn.Linear(inputs, 2 * width * height * side), nn.Unflatten(1, (2 * width, height, side)),
            ConditionalBatchNorm(2 * width, condition_size), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), ConditionalBatchNorm(width, condition_size),
            nn.ReLU(), nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1)])

    def forward(self, latent: Tensor | None, condition: Tensor | None) -> Tensor:
        x = torch.cat([t for t in (latent, condition) if t is not None and t.shape[1] > 0], dim=1)
        if isinstance(self.net, nn.Sequential):
            return self.net(x).view(-1, *self.image_shape)
        for layer in self.net:
            x = layer(x, condition) if isinstance(layer, ConditionalBatchNorm) else layer(x)
        return x


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose scale and shift are functions of the condition ``c: [N, K]`` (de Vries et al.
    2017; the generators of Miyato and Koyama 2018): ``(1 + G c) * BN(x) + B c`` per channel, ``G``
    and ``B`` starting at zero (plain batch norm at initialization). The condition reaches every
    layer, not the first alone: with a Gaussian code beside it, a decoder fed the condition only at
    its input can learn to read the class from the code and ignore the condition."""

    def __init__(self, channels: int, condition_size: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.modulation = nn.Linear(condition_size, 2 * channels)
        with torch.no_grad():
            self.modulation.weight.zero_()
            self.modulation.bias.zero_()

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        gain, shift = self.modulation(condition)[:, :, None, None].chunk(2, dim=1)
        return (1 + gain) * self.norm(x) + shift


class GaussianEncoder(nn.Module):
    """``[image, one-hot] -> (mean, log variance)`` of a diagonal Gaussian (the baseline VAE)."""

    def __init__(self, latent_size: int, condition_size: int, pixels: int = 64):
        super().__init__()
        self.net = _mlp([pixels + condition_size, HIDDEN, HIDDEN, 2 * latent_size])

    def forward(self, images: Tensor, condition: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(torch.cat([images.flatten(1), condition], dim=1)).chunk(2, dim=1)


class FeatureEncoder(nn.Module):
    """The penact VAE's encoder: the frozen teacher backbone, then a trainable head from its
    (normalized) activation and the image to a correction of the posterior's parameters, which
    :meth:`LatentSpace.posterior` adds to the teacher's own reading of the image (and, for the VAE,
    its style code's parameters). The head is as deep as the baseline's :class:`GaussianEncoder`.
    Its last layer starts at zero: the posterior starts centred on the teacher's activation."""

    def __init__(self, teacher_backbone: nn.Module, dim: int, output_size: int, pixels: int = 64):
        super().__init__()
        self.backbone = teacher_backbone
        self.head = _mlp([dim + pixels, HIDDEN, HIDDEN, output_size])
        with torch.no_grad():
            self.head[-1].weight.zero_()
            self.head[-1].bias.zero_()

    def forward(self, images: Tensor, normalize) -> tuple[Tensor, Tensor]:
        """``(features [N, D], correction [N, output_size])``."""
        with torch.no_grad():
            features = self.backbone(images)
        return features, self.head(torch.cat([normalize(features), images.flatten(1)], dim=1))


def _leaky(negative_slope: float = 0.2) -> nn.LeakyReLU:
    return nn.LeakyReLU(negative_slope)


def discriminator_features(image_shape: tuple[int, ...], architecture: str = "mlp", width: int = 32) -> nn.Module:
    """The discriminators' spectrally normalized trunk ``phi``: ``[N, *image_shape] -> [N, HIDDEN]``
    (the module's docstring gives the layers of each architecture)."""
    _check_architecture(architecture, image_shape)
    if architecture == "mlp":
        return nn.Sequential(nn.Flatten(), _mlp([math.prod(image_shape), HIDDEN, HIDDEN], _leaky, spectral_norm),
                             _leaky())
    channels, height, side = image_shape[0], image_shape[1] // 4, image_shape[2] // 4
    return nn.Sequential(
        spectral_norm(nn.Conv2d(channels, width, 4, stride=2, padding=1)), _leaky(),
        spectral_norm(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)), _leaky(), nn.Flatten(),
        spectral_norm(nn.Linear(2 * width * height * side, HIDDEN)), _leaky())


DISCRIMINATORS = ("projection", "auxiliary", "both")


class Discriminator(nn.Module):
    """A conditional discriminator on the trunk ``phi`` (:func:`discriminator_features`), by ``heads``:

    - ``"projection"``: ``D(x, c) = psi(phi(x)) + <V c, phi(x)>`` (Miyato and Koyama 2018), every
      layer spectrally normalized; ``c: [N, K]`` is a one-hot label (baseline) or a teacher
      activation (penact);
    - ``"auxiliary"``: the AC-GAN's (Odena et al. 2017) unconditional score ``psi(phi(x))`` and class
      logits ``U phi(x)``, the class head not spectrally normalized (a norm-1 head could not reach
      confident logits);
    - ``"both"``: the projection score and the class logits.

    ``forward(images, condition)`` returns ``(scores [N], logits [N, C] or None)``.

    Raises:
        ValueError: unknown heads (or architecture, or a conv trunk for a side not divisible by 4).
    """

    def __init__(self, condition_size: int, num_classes: int, heads: str = "projection",
                 image_shape: tuple[int, ...] = (1, 8, 8), architecture: str = "mlp", width: int = 32):
        super().__init__()
        if heads not in DISCRIMINATORS:
            raise ValueError(f"heads must be one of {DISCRIMINATORS}, got {heads!r}")
        self.features = discriminator_features(image_shape, architecture, width)
        self.unconditional = spectral_norm(nn.Linear(HIDDEN, 1))
        self.projection = (spectral_norm(nn.Linear(condition_size, HIDDEN, bias=False)) if heads != "auxiliary"
                           else None)
        self.classifier = nn.Linear(HIDDEN, num_classes) if heads != "projection" else None

    def forward(self, images: Tensor, condition: Tensor) -> tuple[Tensor, Tensor | None]:
        phi = self.features(images)
        scores = self.unconditional(phi).squeeze(1)
        if self.projection is not None:
            scores = scores + (self.projection(condition) * phi).sum(dim=1)
        return scores, self.classifier(phi) if self.classifier is not None else None


class JudgeMLP(nn.Module):
    """The independent judge: a pixel MLP (no convolutions, unlike the teachers), ``pixels -> hidden ->
    features -> C`` with ReLU and dropout 0.2 after the first layer. ``features`` (the last hidden
    layer) is the space of the Frechet distance."""

    def __init__(self, num_classes: int, pixels: int = 64, hidden: int = HIDDEN, features: int = 64):
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU(), nn.Dropout(0.2),
                                      nn.Linear(hidden, features), nn.ReLU())
        self.fc = nn.Linear(features, num_classes)

    def features(self, images: Tensor) -> Tensor:
        return self.backbone(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.fc(self.backbone(images))
