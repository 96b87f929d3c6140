"""Class-conditional VAEs and GANs whose condition is the teacher's penultimate activation, and
their one-hot baselines, in one training loop.

A model is named ``<kind>-<mode>``: kind ``vae`` or ``gan``; mode

- ``onehot``: the baseline, conditioned on one-hot labels of the training images;
- ``labelled``: penact, conditioned on activations drawn from the teacher's distribution of the
  image's label (VAE: that class is the prior, KL in closed form);
- ``free``: penact without labels; the teacher's reading of an image takes the label's place.
  The VAE's prior is the teacher's class mixture, with the class as a second latent whose
  posterior is the teacher's (closed-form KL; or the one-draw Monte Carlo KL to the mixture with
  ``rsample`` and ``log_marginal``, ``free_kl="mixture"``); the GAN conditions each real image on
  an activation drawn for a class drawn from the teacher's posterior of it.

Training runs on any device: the networks, the images, the teacher's latent space and every draw
of a step live there, and a step never makes the host wait for the GPU (``penact.training``):
torch's random ops draw from a generator on the device, the families take their seeds from a CPU
generator (a seed is a host integer), the operators skip their host-side value checks
(``penact.ops.skip_device_checks``), and the losses are read once per ``log_every`` steps.

Every penact model generates class ``y`` by decoding ``a ~ p(a | y)``, the teacher's distribution
(the networks read ``a`` as :meth:`ConditionalGenerator.network_condition` gives it). Every VAE
also has a Gaussian style code (``N(0, I)`` prior), so that the penact VAEs differ from the one-hot
baseline only in their condition: a posterior in the teacher's space, not a label. The penact GAN
adds a consistency term, ``-log p(y | teacher(G(a)))``: by the GD pair ``log p(a | y) + log p(y) -
log p(a)``, the log-density of the generated image's own teacher activation under the class it was
generated for, relative to the class mixture (read at its point on the support or at the
activation itself: :data:`CONSISTENCY_READINGS`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..ops import skip_device_checks
from ..training import IntervalMeans, synchronize
from .families import LatentSpace, frozen
from .networks import Decoder, Discriminator, FeatureEncoder, GaussianEncoder

KINDS = ("vae", "gan")
MODES = ("onehot", "labelled", "free")
MODELS = tuple(f"{kind}-{mode}" for kind in KINDS for mode in MODES)
# How the consistency term reads a generated image's teacher activation a: "support", the family's
# reading at its point on the support, log_softmax(W embed(a) + b) (the GD pair; the sphere family
# reads the direction at its radius r); "activation", the teacher's own, log_softmax(W a + b). They
# differ for the sphere family alone: its reading ignores ||a||, so a faint image whose activation
# points the right way is read as confidently as a clear digit (docs/generate.md).
CONSISTENCY_READINGS = ("support", "activation")
# What a penact VAE's networks read of an activation a (ConditionalGenerator.network_condition):
# "direction", its direction (after the class reading, with a class scale); "reading", the class
# reading alone, so that the style code carries the style (docs/generate.md).
VAE_CONDITIONS = ("direction", "reading")


@dataclass
class TrainConfig:
    vae_steps: int = 3000
    gan_steps: int = 3000
    batch_size: int = 64
    vae_lr: float = 1e-3
    gan_lr: float = 2e-4       # the generator's; the discriminator's is 4x slower (single runs favoured it
    discriminator_lr: float = 5e-5  # with rectified conditions; over 3 seeds 2e-4 does as well: docs/design.md)
    gan_beta1: float = 0.5     # both GAN optimizers' Adam beta1 (DCGAN's 0.5; 0 as in SNGAN)
    latent_size: int = 16      # every VAE's Gaussian style code, beside its condition
    noise_size: int = 16       # the GAN generator's noise
    consistency: float = 5.0   # weight of the penact GAN's consistency term
    kl_warmup: float = 0.5     # the VAE's KL weight rises linearly from 0 to 1 over this share of its steps
    free_kl: str = "joint"     # the label-free VAE's KL: "joint" or "mixture" (LatentSpace's Posterior.kl)
    architecture: str = "mlp"  # the decoders' and discriminators': "mlp" or "conv" (penact.generate.networks)
    width: int = 32            # the conv networks' channels (the decoder's last hidden layer, the discriminator's first)
    discriminator: str = "projection"  # the penact GANs' heads: "projection", "auxiliary" (AC-GAN) or "both"
    onehot_discriminator: str = "projection"  # the one-hot GAN's heads (the same choices)
    style_weight: float = 1.0  # the weight of the VAE style code's KL (beta > 1: the class goes to the condition)
    vae_class_scale: float | None = None  # the class in the VAEs' condition (ConditionalGenerator.network_condition)
    gan_class_scale: float | None = None  # the same for the GANs' generators and discriminators
    consistency_reading: str = "support"  # how the consistency term reads: "support" or "activation"
    prior_condition_share: float = 0.0  # labelled VAE: share of each batch decoded from a ~ p(a | y), not the posterior
    vae_condition: str = "direction"  # what the penact VAEs' networks read of a: VAE_CONDITIONS


def parse_model(name: str) -> tuple[str, str]:
    kind, _, mode = name.partition("-")
    if kind not in KINDS or mode not in MODES:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    return kind, mode


def condition_size(space: LatentSpace | None, num_classes: int, class_scale: float | None,
                   reads: str = "direction") -> int:
    """``K``, the width of the networks' condition (:meth:`ConditionalGenerator.network_condition`)."""
    if space is None or reads == "reading":
        return num_classes
    return space.dim + (num_classes if class_scale is not None else 0)


class ConditionalGenerator(nn.Module):
    """A trained model's sampler: ``generate(labels) -> images [N, *image_shape]`` in ``[0, 1]``, on
    the decoder's device. ``class_scale``, ``reads``: see :meth:`network_condition`."""

    def __init__(self, decoder: Decoder, space: LatentSpace | None, num_classes: int, latent_size: int,
                 class_scale: float | None = None, reads: str = "direction"):
        super().__init__()
        if reads not in VAE_CONDITIONS:
            raise ValueError(f"reads must be one of {VAE_CONDITIONS}, got {reads!r}")
        if reads == "reading" and class_scale is None:
            raise ValueError("reads='reading' needs a class_scale (the reading's scale), got None")
        self.decoder, self.space = decoder, space
        self.num_classes, self.latent_size, self.class_scale, self.reads = num_classes, latent_size, class_scale, reads

    def condition(self, labels: Tensor, seeds: torch.Generator) -> Tensor:
        """The decoder's condition for ``labels: [N]``, ``[N, K]``: the one-hot label times ``class_scale``
        (1 if None), or :meth:`network_condition` of a draw ``a ~ p(a | y)``; ``seeds``: the CPU
        generator the family's draws take their seed from."""
        if self.space is None:
            scale = 1.0 if self.class_scale is None else self.class_scale
            return F.one_hot(labels, self.num_classes).float() * scale
        return self.network_condition(self.space.prior_sample(labels, seeds))

    def network_condition(self, a: Tensor) -> Tensor:
        """What the penact networks read of activations ``a: [N, D]``, ``[N, K]``: the direction
        ``normalize(a)`` (norm ``sqrt(D)``), and with a ``class_scale`` s, before it, the teacher's
        reading ``s p(. | a) = s softmax(W a + b)`` (at ``a``'s point on the support: the GD pair),
        the continuous twin of the one-hot label, which the one-hot models get times s. With
        ``reads="reading"``, that reading alone: by the GD pair it is all of ``a`` the class depends
        on, and the rest of ``a``, where the family's draws and real activations differ most, is left
        to the style code.

        Why the reading: the family's draws lie far from the real activations the VAE decoders are
        trained on (on the sphere, cosine 0.15 to their class's mean real direction against 0.95 for
        real ones), while their reading is as class-clear as the real one (the calibrated fit); given
        apart, the class reaches the networks in the form they see in training. Its scale matters as
        the one-hot label's does (docs/generate.md)."""
        if self.class_scale is None:
            return self.space.normalize(a)
        reading = self.class_scale * self.space.class_log_posterior(a).exp()
        if self.reads == "reading":
            return reading
        return torch.cat([reading, self.space.normalize(a)], dim=1)

    @torch.no_grad()
    def generate(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """Images for ``labels: [N]``, every draw from ``generator`` (a CPU generator)."""
        device = next(self.decoder.parameters()).device
        latent = torch.randn(labels.shape[0], self.latent_size, generator=generator).to(device)
        return self.decode(latent, self.condition(labels.to(device), generator))

    def decode(self, latent: Tensor, condition: Tensor) -> Tensor:
        """Images in ``[0, 1]`` of style codes ``latent: [N, latent_size]`` under conditions
        ``condition: [N, K]`` (:meth:`condition`)."""
        return torch.sigmoid(self.decoder(latent, condition))


@dataclass
class TrainResult:
    generator: ConditionalGenerator
    seconds: float       # wall time of the training loop
    cpu_seconds: float   # the process's CPU time in it (all threads): the loop's cost on a machine shared with other work
    final_losses: dict


def _generators(seed: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """``(draws, seeds)``: ``draws`` on ``device`` for torch's random ops in a step (nothing is copied
    from the host), ``seeds`` on the CPU for the families' draws (they take a seed from a CPU
    generator). On the CPU both are one generator, so a CPU run draws the numbers it drew before
    the trainers ran on other devices."""
    draws = torch.Generator(device=device).manual_seed(seed)
    return draws, draws if draws.device.type == "cpu" else torch.Generator().manual_seed(seed)


def train_model(name: str, teacher: nn.Module, space: LatentSpace | None, images: Tensor, labels: Tensor | None,
                config: TrainConfig, seed: int, progress: bool = True, *, device: torch.device | str | None = None,
                log_every: int = 100) -> TrainResult:
    """Trains model ``name`` on ``images [N, 1, H, W]`` in ``[0, 1]`` on ``device`` (default: the
    teacher's; the teacher, ``images``, ``labels`` and ``space`` are moved there).

    ``labels`` are required for the ``onehot`` and ``labelled`` modes and refused for ``free``
    (so the label-free models provably never see them). ``space`` (the teacher's latent space) is
    required for the penact modes. Randomness (initialization, batches, draws) follows ``seed``;
    the initialization is drawn on the CPU, the same on every device. The progress bar shows the
    mean losses over each ``log_every`` steps; ``final_losses`` are the last step's. The networks
    follow ``config.architecture`` at the images' size (``penact.generate.networks``).
    """
    kind, mode = parse_model(name)
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    if (mode == "free") != (labels is None):
        raise ValueError(f"{name}: labels must be {'None' if mode == 'free' else 'given'} in mode {mode!r}")
    if (mode == "onehot") != (space is None):
        raise ValueError(f"{name}: space must be {'None' if mode == 'onehot' else 'given'} in mode {mode!r}")
    if labels is not None and labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape [N] = [{images.shape[0]}], got {tuple(labels.shape)}")
    device = torch.device(device) if device is not None else teacher.fc.weight.device
    torch.manual_seed(seed)
    draws, seeds = _generators(seed, device)
    teacher = frozen(teacher.to(device))
    images = images.to(device)
    labels = labels.to(device) if labels is not None else None
    space = space.to(device) if space is not None else None
    num_classes = teacher.fc.out_features
    trainer = (_VAETrainer if kind == "vae" else _GANTrainer)(teacher, space, num_classes, config, draws, seeds,
                                                              tuple(images.shape[1:]))
    steps = config.vae_steps if kind == "vae" else config.gan_steps
    started, cpu_started = time.perf_counter(), time.process_time()
    bar = tqdm(range(steps), desc=name + (f" ({space.family})" if space else ""), unit="step", disable=not progress,
               leave=False)
    interval = IntervalMeans()
    losses: dict[str, Tensor] = {}
    # The step's labels are the data's or drawn in range: the operators' host-side value checks
    # (one GPU synchronization per call) are skipped.
    with skip_device_checks():
        for step in bar:
            index = torch.randint(0, images.shape[0], (config.batch_size,), generator=draws, device=device)
            losses = trainer.step(images[index], labels[index] if labels is not None else None)
            if progress:
                interval.add(losses)
                if (step + 1) % log_every == 0:
                    bar.set_postfix({k: f"{v:.3g}" for k, v in interval.read().items()})
    bar.close()
    synchronize(device)  # the clock stops when the GPU has run the last step, not when it was queued
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return TrainResult(trainer.sampler(), seconds, cpu_seconds, {part: float(loss) for part, loss in losses.items()})


def _decoder(config: TrainConfig, latent_size: int, condition_size: int, image_shape: tuple[int, ...]) -> Decoder:
    return Decoder(latent_size, condition_size, image_shape, config.architecture, config.width)


class _VAETrainer:
    def __init__(self, teacher, space, num_classes, config, generator, seeds, image_shape):
        self.space, self.generator, self.seeds = space, generator, seeds
        device = teacher.fc.weight.device
        pixels = math.prod(image_shape)
        if space is None:
            self.encoder = GaussianEncoder(config.latent_size, num_classes, pixels).to(device)
            self.decoder = _decoder(config, config.latent_size, num_classes, image_shape).to(device)
        else:
            self.encoder = FeatureEncoder(teacher.backbone, space.dim,
                                          space.posterior_size + 2 * config.latent_size, pixels).to(device)
            self.decoder = _decoder(config, config.latent_size,
                                    condition_size(space, num_classes, config.vae_class_scale, config.vae_condition),
                                    image_shape).to(device)
        self.latent_size = config.latent_size
        self.model = ConditionalGenerator(self.decoder, space, num_classes, config.latent_size, config.vae_class_scale,
                                          config.vae_condition if space is not None else "direction")
        parameters = [p for m in (self.encoder, self.decoder) for p in m.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(parameters, lr=config.vae_lr)
        self.warmup_steps, self.steps_done = config.kl_warmup * config.vae_steps, 0
        self.free_kl, self.style_weight = config.free_kl, config.style_weight
        if not 0 <= config.prior_condition_share <= 1:
            raise ValueError(f"prior_condition_share must lie in [0, 1], got {config.prior_condition_share}")
        self.prior_condition_share = config.prior_condition_share

    def _gaussian(self, mean: Tensor, log_var: Tensor) -> tuple[Tensor, Tensor]:
        """A draw of the style code and its KL to N(0, I), ``[N]``."""
        log_var = log_var.clamp(-12.0, 8.0)
        latent = mean + torch.randn(mean.shape, generator=self.generator, device=mean.device) * (0.5 * log_var).exp()
        return latent, 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum(dim=1)

    def step(self, images: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        """One optimizer step; returns its losses, detached scalars on the device."""
        if self.space is None:
            condition = self.model.condition(labels, self.seeds)
            latent, style_kl = self._gaussian(*self.encoder(images, condition))
            logits = self.decoder(latent, condition)
            condition_kl = torch.zeros_like(style_kl)
        else:
            features, outputs = self.encoder(images, self.space.normalize)
            correction, mean, log_var = outputs.split([self.space.posterior_size, self.latent_size,
                                                       self.latent_size], dim=1)
            posterior = self.space.posterior(features, correction)
            a = posterior.rsample(self.seeds)
            latent, style_kl = self._gaussian(mean, log_var)
            decoded = a
            if self.prior_condition_share and labels is not None:
                # On these rows the condition is the class's, not the image's: the style code must carry the style.
                prior = torch.rand(images.shape[0], generator=self.generator, device=images.device) \
                    < self.prior_condition_share
                decoded = torch.where(prior[:, None], self.space.prior_sample(labels, self.seeds), a)
            logits = self.decoder(latent, self.model.network_condition(decoded))
            class_posterior = None
            if labels is None and self.free_kl == "joint":
                with torch.no_grad():
                    class_posterior = self.space.class_log_posterior(features).exp()
            condition_kl = posterior.kl(a, labels, class_posterior, free_kl=self.free_kl)
        reconstruction = F.binary_cross_entropy_with_logits(logits, images, reduction="none").flatten(1).sum(dim=1)
        kl_weight = min(1.0, self.steps_done / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        self.steps_done += 1
        loss = (reconstruction + kl_weight * (self.style_weight * style_kl + condition_kl)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"recon": reconstruction.detach().mean(), "style_kl": style_kl.detach().mean(),
                "condition_kl": condition_kl.detach().mean()}

    def sampler(self) -> ConditionalGenerator:
        return self.model.eval()


class _GANTrainer:
    def __init__(self, teacher, space, num_classes, config, generator, seeds, image_shape):
        self.teacher, self.space, self.generator, self.seeds = teacher, space, generator, seeds
        if config.consistency_reading not in CONSISTENCY_READINGS:
            raise ValueError(f"consistency_reading must be one of {CONSISTENCY_READINGS}, "
                             f"got {config.consistency_reading!r}")
        self.consistency, self.consistency_reading = config.consistency, config.consistency_reading
        size = condition_size(space, num_classes, config.gan_class_scale)
        self.noise_size = config.noise_size
        device = teacher.fc.weight.device
        self.decoder = _decoder(config, config.noise_size, size, image_shape).to(device)
        self.model = ConditionalGenerator(self.decoder, space, num_classes, config.noise_size, config.gan_class_scale)
        heads = config.onehot_discriminator if space is None else config.discriminator
        self.discriminator = Discriminator(size, num_classes, heads, image_shape, config.architecture,
                                           config.width).to(device)
        self.g_optimizer = torch.optim.Adam(self.decoder.parameters(), lr=config.gan_lr, betas=(config.gan_beta1, 0.999))
        self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=config.discriminator_lr,
                                            betas=(config.gan_beta1, 0.999))

    def _discriminate(self, images: Tensor, condition: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The discriminator's scores ``[N]`` of ``images`` and its class loss: the cross-entropy of an
        auxiliary class head against ``labels`` (for real images the discriminator learns it, for
        generated ones the generator), zero without one."""
        scores, logits = self.discriminator(images, condition)
        return scores, F.cross_entropy(logits, labels) if logits is not None else images.new_zeros(())

    def step(self, images: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        """One discriminator and one generator step; returns their losses, detached scalars on the device."""
        count = images.shape[0]
        device = images.device
        if labels is None:
            # Label-free: an image's class is the teacher's reading of it, drawn from its posterior:
            # argmax_c p_c / q_c with q_c ~ Exp(1), the draw torch.multinomial makes for one sample,
            # without the check of the probabilities it reads back to the host.
            with torch.no_grad():
                reading = self.space.class_log_posterior(self.teacher.features(images)).exp()
            labels = (reading / torch.empty_like(reading).exponential_(generator=self.generator)).argmax(dim=1)
        real_condition = self.model.condition(labels, self.seeds)
        # Generated images get the batch's classes in another order: the same class frequencies.
        fake_labels = labels[torch.randperm(count, generator=self.generator, device=device)]
        fake_condition = self.model.condition(fake_labels, self.seeds)
        noise = torch.randn(count, self.noise_size, generator=self.generator, device=device)
        fake = torch.sigmoid(self.decoder(noise, fake_condition))

        real_score, real_class = self._discriminate(images, real_condition, labels)
        fake_score, _ = self._discriminate(fake.detach(), fake_condition, fake_labels)
        d_loss = F.relu(1 - real_score).mean() + F.relu(1 + fake_score).mean() + real_class
        self.d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_optimizer.step()

        fake_score, fake_class = self._discriminate(fake, fake_condition, fake_labels)
        g_loss = -fake_score.mean() + fake_class
        losses = {"d": d_loss.detach(), "g": g_loss.detach()}
        if self.space is not None and self.consistency > 0:
            consistency = F.nll_loss(self.log_reading(fake), fake_labels)
            g_loss = g_loss + self.consistency * consistency
            losses["consistency"] = consistency.detach()
        self.g_optimizer.zero_grad(set_to_none=True)
        g_loss.backward()
        self.g_optimizer.step()
        return losses

    def log_reading(self, images: Tensor) -> Tensor:
        """The consistency term's class reading of ``images``, ``log p(y | x)``, ``[N, C]``, by
        ``consistency_reading`` (:data:`CONSISTENCY_READINGS`)."""
        if self.consistency_reading == "support":
            return self.space.class_log_posterior(self.teacher.features(images))
        return torch.log_softmax(self.teacher(images), dim=1)

    def sampler(self) -> ConditionalGenerator:
        return self.model.eval()
