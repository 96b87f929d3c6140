"""The networks of the generators, sized for 8x8 digits (64 pixels in ``[0, 1]``).

Every generative network takes a *condition* ``c: [N, K]``: for the penact models the (normalized)
teacher activation ``a`` (K = D), for the baselines a one-hot label (K = C). Images are
``[N, 1, 8, 8]``; decoders and generators return logits of the pixel intensities.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

HIDDEN = 256


def _mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU, wrap=lambda layer: layer) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(wrap(nn.Linear(fan_in, fan_out)))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """``[latent, condition] -> 64`` pixel logits (the VAE decoder and the GAN generator). ``latent``
    is the VAE's Gaussian code (baselines) or the GAN's noise; either may be absent (size 0)."""

    def __init__(self, latent_size: int, condition_size: int, image_shape: tuple[int, ...] = (1, 8, 8)):
        super().__init__()
        self.image_shape = image_shape
        self.latent_size, self.condition_size = latent_size, condition_size
        self.net = _mlp([latent_size + condition_size, HIDDEN, HIDDEN, int(torch.tensor(image_shape).prod())])

    def forward(self, latent: Tensor | None, condition: Tensor | None) -> Tensor:
        inputs = torch.cat([t for t in (latent, condition) if t is not None and t.shape[1] > 0], dim=1)
        return self.net(inputs).view(-1, *self.image_shape)


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
    :meth:`LatentSpace.posterior` adds to the teacher's own reading of the image. The head's last
    layer starts at zero: the posterior starts centred on the teacher's activation."""

    def __init__(self, teacher_backbone: nn.Module, dim: int, output_size: int, pixels: int = 64):
        super().__init__()
        self.backbone = teacher_backbone
        self.head = _mlp([dim + pixels, HIDDEN, output_size])
        with torch.no_grad():
            self.head[-1].weight.zero_()
            self.head[-1].bias.zero_()

    def forward(self, images: Tensor, normalize) -> tuple[Tensor, Tensor]:
        """``(features [N, D], correction [N, output_size])``."""
        with torch.no_grad():
            features = self.backbone(images)
        return features, self.head(torch.cat([normalize(features), images.flatten(1)], dim=1))


class ProjectionDiscriminator(nn.Module):
    """``D(x, c) = psi(phi(x)) + <V c, phi(x)>`` (Miyato and Koyama 2018), spectrally normalized;
    ``c`` is a one-hot label (baseline) or a teacher activation (penact)."""

    def __init__(self, condition_size: int, pixels: int = 64):
        super().__init__()
        self.features = nn.Sequential(_mlp([pixels, HIDDEN, HIDDEN], nn.LeakyReLU, spectral_norm), nn.LeakyReLU())
        for module in self.features.modules():
            if isinstance(module, nn.LeakyReLU):
                module.negative_slope = 0.2
        self.unconditional = spectral_norm(nn.Linear(HIDDEN, 1))
        self.projection = spectral_norm(nn.Linear(condition_size, HIDDEN, bias=False))

    def forward(self, images: Tensor, condition: Tensor) -> Tensor:
        phi = self.features(images.flatten(1))
        return self.unconditional(phi).squeeze(1) + (self.projection(condition) * phi).sum(dim=1)


class JudgeMLP(nn.Module):
    """The independent judge: a pixel MLP (no convolutions, unlike the teacher), 64 -> 256 -> 64 ->
    C. ``features`` (the 64-wide hidden layer) is the space of the Frechet distance."""

    FEATURES = 64

    def __init__(self, num_classes: int, pixels: int = 64):
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(pixels, HIDDEN), nn.ReLU(), nn.Dropout(0.2),
                                      nn.Linear(HIDDEN, self.FEATURES), nn.ReLU())
        self.fc = nn.Linear(self.FEATURES, num_classes)

    def features(self, images: Tensor) -> Tensor:
        return self.backbone(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.fc(self.backbone(images))
