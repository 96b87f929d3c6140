"""The distillation trainer: a student learns a teacher's classes from unlabelled transfer data
and/or from inputs synthesized out of the teacher's distribution of penultimate activations.

Methods (combinable with ``+``, e.g. ``"synth+weighted"``):

- ``kd``: Hinton et al.'s soft-label distillation at temperature ``T`` on the transfer data,
  ``T^2 KL(softmax(t / T) || softmax(s / T))`` per sample (the base of every method);
- ``synth``: a pool of inputs synthesized from labelled activations drawn from the teacher's
  distribution (``synthesis.synthesize_inputs``), built before the first step (or given: one pool
  can serve many runs, see :meth:`Distiller.synthesize_pool`) and optionally refreshed (first in,
  first out) every ``refresh_every`` steps; each step distils on a batch of the pool beside the
  full transfer batch (``synth_ratio`` pool images per transfer image; a whole batch of pool images
  when there are no transfer data), so that the pool never displaces real images. With
  ``augment_shift = k > 0`` each pool image of a batch is translated by up to ``k`` pixels per axis
  and the teacher's logits are computed afresh on what the student sees. With
  ``balance_rounds > 0`` the pool is balanced as the teacher reads it (``_balanced``);
- ``weighted``: each transfer sample's loss weighted by the teacher model's marginal density of its
  teacher activation, ``w_i = n softmax_i(log p(a_i) / tau)`` over the rank's transfer batch (mean
  1), with ``tau`` the standard deviation of ``log p(a)`` under the model's own samples, so that
  samples of low density count less: off-domain ones where the family's density ranks them low (the
  sphere family; not the rectified family, whose reference measure favours the weak activations of
  off-domain inputs: docs/distill.md).

Transfer data are a tensor of images, any re-iterable of image batches (a ``DataLoader``), or
None (``batches`` says what resuming means for each).

Devices: the teacher, the student, the distribution, the transfer tensor, the pool and every
random choice of a step live on ``device``; a step never makes the host wait for the GPU (module
``device``): its random choices come from generators on the device, and the loss and the seconds
of the sampler and the log-density (timed by CUDA events) are read once per ``log_every`` steps.

Distributed: under ``torch.distributed`` (``torchrun``; NCCL with each rank on ``cuda:LOCAL_RANK``,
gloo on CPU) the student is wrapped in ``DistributedDataParallel``, a transfer tensor is sharded by
a ``DistributedSampler`` (a loader shards itself), ``batch_size`` is the global batch (each rank
takes ``batch_size / world_size``), each rank synthesizes its share of the pool (then all ranks
gather the whole pool), and rank ``r`` draws activations from the Philox offsets
``r * 2**40 + counter`` (docs/randomness.md), so no two ranks and no two draws share a stream.

Checkpoints hold the student, the teacher, the optimizer and schedule, the step, the sampler
counter, the transfer data's position and the synthesis pool; every other random choice is a
pure function of ``(seed, step, rank)``, so a resumed run continues exactly where it stopped (with
a loader: when the loader's order is, see ``batches``).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .._random import stream_seed
from ..families import ClassConditionalDistribution, get_family
from ..ops import skip_device_checks
from .batches import LoaderBatches, TensorBatches
from ..training import IntervalMeans, PartTimer
from .synthesis import balanced_rows, class_quota, random_translate, resolve_match, synthesize_inputs

METHOD_PARTS = ("kd", "synth", "weighted")
RANK_OFFSET_STRIDE = 2**40  # Philox counters per rank: disjoint ranges r * 2^40 + [0, 2^40)
CHECKPOINT_VERSION = 3      # 3: a given pool is referred to, not stored; 2: the transfer source's kind; the loss log


def parse_method(method: str) -> frozenset[str]:
    """``"synth+weighted"`` -> ``{"synth", "weighted"}``; ``"kd"`` (plain KD) -> ``{}``.

    Raises:
        ValueError: an unknown part (the empty method included: its one part is ``""``).
    """
    parts = frozenset(part.strip() for part in method.split("+"))
    unknown = parts - set(METHOD_PARTS)
    if unknown:
        raise ValueError(f"method must be parts of {METHOD_PARTS} joined by '+', got {method!r}")
    return parts - {"kd"}


@dataclass
class DistillConfig:
    """Hyper-parameters of one distillation run (defaults: the committed digits benchmark)."""

    method: str = "kd"
    steps: int = 1500
    data_free_steps: int | None = None  # steps of a run without transfer data (None: ``steps``)
    batch_size: int = 128             # global transfer batch per step (with a loader: sizes only the pool's batch)
    synth_ratio: float = 1.0          # pool images per transfer image in a step (beside the transfer batch)
    lr: float = 2e-3                  # Adam, cosine-annealed to 0 over ``steps``
    temperature: float = 4.0
    pool_size: int = 512
    refresh_every: int = 0            # 0: the pool is built once
    refresh_size: int = 128
    synth_steps: int = 100
    synth_lr: float = 0.1
    match: str = "auto"
    tv_weight: float = 0.05
    l2_weight: float = 0.0
    synth_jitter: int = 0             # synthesis: the teacher sees each image translated by up to this many pixels
    augment_shift: int = 0            # pool images translated by up to this many pixels per axis each step
    balance_rounds: int = 0           # extra synthesis rounds for classes the teacher reads too rarely in the pool
    weight_reference_size: int = 4096
    seed: int = 0
    checkpoint_every: int = 0         # 0: no periodic checkpoints

    def __post_init__(self):
        parse_method(self.method)
        if self.steps < 0 or self.batch_size < 1 or (self.data_free_steps or 0) < 0:
            raise ValueError(f"steps and data_free_steps must be >= 0 and batch_size >= 1, got {self.steps}, "
                             f"{self.data_free_steps}, {self.batch_size}")
        if not 0 < self.synth_ratio < math.inf:
            raise ValueError(f"synth_ratio must be positive and finite, got {self.synth_ratio}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.balance_rounds < 0:
            raise ValueError(f"balance_rounds must be >= 0, got {self.balance_rounds}")
        if self.augment_shift < 0 or self.synth_jitter < 0:
            raise ValueError(f"augment_shift and synth_jitter must be >= 0, got {self.augment_shift}, {self.synth_jitter}")


@dataclass
class Timings:
    """Seconds spent, accumulated over the run (and across resumes). ``total`` is wall-clock time up
    to a synchronization with the device; the parts are device time (CUDA events on CUDA, the wall
    clock on CPU). Brought up to date every ``log_every`` steps, at checkpoints and at the end of
    :meth:`Distiller.train`."""

    total: float = 0.0        # training loop, pool synthesis included
    synthesis: float = 0.0    # building and refreshing the pool (teacher forward/backward on inputs)
    sampler: float = 0.0      # distribution.sample
    log_density: float = 0.0  # distribution.log_marginal
    steps: int = 0            # the training steps ``total`` covers


@dataclass
class Pool:
    """Synthesized inputs ``images: [P, *image_shape]`` with the labels they were drawn for,
    ``labels: [P]``, the teacher's logits on them, ``logits: [P, C]``, and ``draws``, the sampler
    counters (per rank) used to make them: a run given the pool draws after them, so that no two
    draws share a Philox stream."""

    images: Tensor
    labels: Tensor
    logits: Tensor
    draws: int

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> "Pool":
        return Pool(self.images.to(device), self.labels.to(device), self.logits.to(device), self.draws)

    def replace_oldest(self, new: "Pool") -> "Pool":
        """The pool with its ``len(new)`` oldest entries replaced by ``new`` (first in, first out)."""
        keep = slice(len(new), None)
        return Pool(torch.cat([self.images[keep], new.images]), torch.cat([self.labels[keep], new.labels]),
                    torch.cat([self.logits[keep], new.logits]), new.draws)


def distributed_context() -> tuple[int, int]:
    """``(rank, world_size)``: ``(0, 1)`` without an initialized process group."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank(), torch_dist.get_world_size()
    return 0, 1


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Per-sample ``T^2 KL(softmax(t / T) || softmax(s / T))``, ``[N]``; logits ``[N, C]``."""
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=1)
    student_log_probs = F.log_softmax(student_logits / temperature, dim=1)
    return temperature ** 2 * (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(dim=1)


class Distiller:
    """Distils ``teacher`` (a module with ``features(x) -> [N, D]`` and ``fc: nn.Linear``) into
    ``student`` (any classifier ``x -> [N, C]``) on ``device``, from ``transfer`` data and, for
    ``synth``/``weighted``, the teacher's distribution of penultimate activations.

    The teacher is put in eval mode with ``requires_grad=False`` and, like the student, moved to
    ``device`` (in place): it is never trained.

    Args:
        distribution: a fitted family (moved to ``device``), or a registered family's name
            (``penact.family_names()``), fitted here to the teacher's activations of one pass over
            the transfer data, labelled by the teacher's own predictions (fit it on the teacher's
            training data instead, and pass it, when those are at hand).
        transfer: unlabelled images ``[M, *image_shape]`` (``M`` may be 0), any re-iterable of
            image batches such as a ``DataLoader`` (a batch may be ``(images, labels)``: the
            labels are never read), or None. A loader sets the transfer part of each step's batch
            (``config.batch_size`` then sizes only the pool's part) and, under ``torchrun``, its
            own sharding (a ``DistributedSampler``).
        config: the hyper-parameters (default: ``DistillConfig()``).
        image_shape: the shape of one input; needed to synthesize (``synth``) when ``transfer`` is
            not a tensor.
        checkpoint_path: where ``save_checkpoint`` writes (every ``checkpoint_every`` steps and at
            the end of ``train``); resume with ``load_checkpoint``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:i"`` (default: the teacher's).
        pool: the pool a ``synth`` run starts from instead of synthesizing its own (e.g. another
            run's :meth:`synthesize_pool`, for the same teacher and distribution); moved to
            ``device``. Checkpoints refer to it instead of storing it while it is unrefreshed, so
            resuming such a run needs the same pool again.

    Raises:
        ValueError: a method with no data source (no transfer data and no ``synth``), a global batch
            not divisible by the world size, a distribution whose classes or width disagree with
            the teacher's final layer, a family name with no transfer data to fit on (or with a
            loader under ``torchrun``: each rank would fit its own shard), or ``synth`` without
            an ``image_shape``, or a pool without ``synth``.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, distribution: ClassConditionalDistribution | str,
                 transfer: Tensor | Iterable | None, config: DistillConfig | None = None, *,
                 image_shape: tuple[int, ...] | None = None, checkpoint_path: str | Path | None = None,
                 device: torch.device | str | None = None, pool: Pool | None = None):
        self.config = config = config if config is not None else DistillConfig()
        self.parts = parse_method(config.method)
        self.rank, self.world_size = distributed_context()
        self.device = torch.device(device) if device is not None else teacher.fc.weight.device
        if config.batch_size % self.world_size:
            raise ValueError(f"batch_size ({config.batch_size}) must be divisible by the world size ({self.world_size})")
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.student = student.to(self.device)
        self.model = DistributedDataParallel(self.student) if self.world_size > 1 else self.student
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None

        is_tensor = isinstance(transfer, Tensor)
        has_transfer = transfer.shape[0] > 0 if is_tensor else transfer is not None
        if not has_transfer and "synth" not in self.parts:
            raise ValueError(f"method {config.method!r} needs transfer data: the transfer set is empty (use synth)")
        self.image_shape = tuple(image_shape) if image_shape is not None else (
            tuple(transfer.shape[1:]) if is_tensor else None)
        if "synth" in self.parts and self.image_shape is None:
            raise ValueError("synth needs image_shape when the transfer data are not a tensor")
        local_batch = config.batch_size // self.world_size
        if "synth" not in self.parts:
            self.synth_batch = 0
        else:
            self.synth_batch = max(1, round(local_batch * config.synth_ratio)) if has_transfer else local_batch
        # A pool-only step trains on fewer images and costs less; more of them keep teaching (docs/distill.md).
        self.total_steps = config.steps if has_transfer or config.data_free_steps is None else config.data_free_steps
        self.transfer: TensorBatches | LoaderBatches | None = None
        if is_tensor and has_transfer:
            self.transfer = TensorBatches(transfer, local_batch, rank=self.rank,
                                          world_size=self.world_size, seed=config.seed, device=self.device,
                                          features=self.teacher.features)
        elif not is_tensor and has_transfer:
            self.transfer = LoaderBatches(transfer, self.device, features=self.teacher.features)

        if isinstance(distribution, str):
            distribution = self._fit(distribution)
        if distribution.weight.shape != self.teacher.fc.weight.shape:
            raise ValueError(f"distribution must describe the teacher's final layer {tuple(teacher.fc.weight.shape)}, "
                             f"got weight {tuple(distribution.weight.shape)}")
        self.distribution = distribution.detach().to(self.device)
        self.match = resolve_match(config.match, self.distribution)
        if pool is not None and "synth" not in self.parts:
            raise ValueError(f"method {config.method!r} has no synth part to use the given pool")

        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(self.total_steps, 1))
        self.step = 0
        self.sample_counter = pool.draws if pool is not None else 0  # Philox counters used by this rank (all alike)
        self.given_pool = pool.to(self.device) if pool is not None else None
        self.pool = self.given_pool
        self.pool_refreshes = int(pool is not None)
        self.weight_temperature: float | None = None
        self.losses: list[tuple[int, float]] = []  # (step, mean loss over the logging interval ending there)
        self.timings = Timings()
        self._timer = PartTimer(self.device)

    def _fit(self, family: str) -> ClassConditionalDistribution:
        """The registered ``family`` fitted to the teacher's activations of one pass over the transfer data."""
        if self.transfer is None:
            raise ValueError(f"fitting the family {family!r} needs transfer data: pass a fitted distribution")
        if isinstance(self.transfer, LoaderBatches) and self.world_size > 1:
            raise ValueError("under torchrun each rank's loader holds its own shard: fit the family once and pass "
                             "the fitted distribution")
        return get_family(family).fit(self.teacher.fc, self.transfer.all_activations())

    # -- randomness ----------------------------------------------------------------------------

    def _reserve_offset(self, count: int) -> int:
        """The Philox offset of this rank's next ``count`` draws (docs/randomness.md: disjoint per rank)."""
        if self.sample_counter + count > RANK_OFFSET_STRIDE:
            raise RuntimeError("this rank used up its 2**40 sampler counters")
        offset = self.rank * RANK_OFFSET_STRIDE + self.sample_counter
        self.sample_counter += count
        return offset

    def _sample(self, labels: Tensor) -> Tensor:
        with self._timer.part("sampler"):
            return self.distribution.sample(labels, seed=self.config.seed, offset=self._reserve_offset(len(labels)))

    def _log_marginal(self, activations: Tensor) -> Tensor:
        with self._timer.part("log_density"):
            return self.distribution.log_marginal(activations)

    def _generator(self, *purpose, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator on ``device`` seeded by ``(seed, rank, *purpose)``: stateless, so resumable.
        One on the step's device draws there, with nothing copied from the host."""
        return torch.Generator(device=device).manual_seed(stream_seed(self.config.seed, self.rank, *purpose))

    # -- the synthesis pool --------------------------------------------------------------------

    def _gather(self, local: Tensor) -> Tensor:
        if self.world_size == 1:
            return local
        pieces = [torch.empty_like(local) for _ in range(self.world_size)]
        torch_dist.all_gather(pieces, local.contiguous())
        return torch.cat(pieces)

    def _synthesize_for(self, labels: Tensor, *purpose) -> tuple[Tensor, Tensor]:
        """Images synthesized for ``labels`` (this rank's) and the teacher's logits on them; the
        synthesis draws from the stream of ``("synthesis", pool_refreshes, *purpose)``."""
        targets = self._sample(labels)
        images = synthesize_inputs(self.teacher, self.distribution, targets, labels, self.image_shape,
                                   self._generator("synthesis", self.pool_refreshes, *purpose, device=self.device),
                                   steps=self.config.synth_steps, lr=self.config.synth_lr, match=self.match,
                                   tv_weight=self.config.tv_weight, l2_weight=self.config.l2_weight,
                                   jitter=self.config.synth_jitter)
        with torch.no_grad():
            return images, self.teacher(images)

    def _balanced(self, images: Tensor, labels: Tensor, logits: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
        """``size`` entries in which the teacher reads every class as equally often as it can.

        The teacher reads some classes' syntheses as another class far more often than others' (on
        MNIST it read 28-70% of the images made for "1" as a 1, depending on the seed, and a student
        then misses that class). Each of ``balance_rounds`` rounds synthesizes more for the classes
        read fewer than ``size / C`` times, as many as that class's hit rate so far predicts are
        needed, all rounds together at most ``size`` more (synthesis at most doubles); then
        :func:`balanced_rows` picks the entries."""
        num_classes = self.distribution.num_classes
        quota = class_quota(size, num_classes, self.device)
        budget = size
        for round_ in range(1, self.config.balance_rounds + 1):
            reads = logits.argmax(dim=1)
            short = (quota - torch.bincount(reads, minlength=num_classes)).clamp(min=0)
            drawn = torch.bincount(labels, minlength=num_classes).clamp(min=1)
            hits = torch.bincount(labels[reads == labels], minlength=num_classes)
            needed = (short * drawn / hits.clamp(min=1)).ceil()
            needed = (needed * min(1.0, budget / max(float(needed.sum()), 1.0))).floor().long()
            budget -= int(needed.sum())
            if not needed.any():
                break
            new_labels = torch.repeat_interleave(torch.arange(num_classes, device=self.device), needed)
            new_images, new_logits = self._synthesize_for(new_labels, "balance", round_)
            images, labels = torch.cat([images, new_images]), torch.cat([labels, new_labels])
            logits = torch.cat([logits, new_logits])
        rows = balanced_rows(logits.argmax(dim=1), quota)
        return images[rows], labels[rows], logits[rows]

    def _synthesize(self, count: int) -> Pool:
        """``count`` new pool entries (images, labels, teacher logits), split across ranks; labels
        cycle through the classes so that every refresh is balanced (``balance_rounds``: balanced as
        the teacher reads them)."""
        with self._timer.part("synthesis"):
            local = math.ceil(count / self.world_size)
            num_classes = self.distribution.num_classes
            first = self.pool_refreshes * count + self.rank * local
            labels = (first + torch.arange(local, device=self.device)) % num_classes
            images, logits = self._synthesize_for(labels)
            if self.config.balance_rounds:
                images, labels, logits = self._balanced(images, labels, logits, local)
                if self.world_size > 1:  # ranks balanced apart drew apart: continue after the furthest
                    counter = torch.tensor(self.sample_counter, device=self.device)
                    torch_dist.all_reduce(counter, op=torch_dist.ReduceOp.MAX)
                    self.sample_counter = int(counter)
            self.pool_refreshes += 1
            return Pool(*(self._gather(t)[:count] for t in (images, labels, logits)), draws=self.sample_counter)

    def _update_pool(self) -> None:
        if self.pool is None:
            self.pool = self._synthesize(self.config.pool_size)
        else:
            self.pool = self.pool.replace_oldest(self._synthesize(self.config.refresh_size))

    def synthesize_pool(self) -> Pool:
        """The pool this run starts from (synthesized now, on every rank, if it has none yet): pass
        it as ``pool`` to other runs of the same teacher and distribution to synthesize once. Its
        draws are those the run itself would make (the sampler's first ``pool_size`` counters)."""
        if "synth" not in self.parts:
            raise ValueError(f"method {self.config.method!r} has no synth part: it has no pool")
        if self.pool is None:
            self._timer.start()
            self._update_pool()
            self._collect_timings()
        return self.pool

    def _fit_weight_temperature(self) -> float:
        """``tau``: the std of ``log p(a)`` over ``weight_reference_size`` draws ``(a, y)`` from the
        model, pooled over ranks (each rank draws its share from its own offsets)."""
        local = math.ceil(self.config.weight_reference_size / self.world_size)
        prior = self.distribution.log_prior.detach().double().exp().cpu()
        labels = torch.multinomial(prior, local, replacement=True, generator=self._generator("reference"))
        with torch.no_grad():
            log_density = self._log_marginal(self._sample(labels.to(self.device))).double()
        moments = torch.stack([log_density.new_tensor(float(local)), log_density.sum(), log_density.square().sum()])
        if self.world_size > 1:
            torch_dist.all_reduce(moments)
        count, total, squares = moments.tolist()
        return math.sqrt(max(squares / count - (total / count) ** 2, 0.0) * count / (count - 1))

    # -- training ------------------------------------------------------------------------------

    def _training_step(self) -> Tensor:
        """One optimizer step; returns the (weighted) batch loss, a scalar on the device."""
        inputs, teacher_logits, weights = [], [], []
        if self.transfer is not None:
            images, activations = self.transfer.next()
            with torch.no_grad():
                inputs.append(images)
                teacher_logits.append(self.teacher.fc(activations))
                if "weighted" in self.parts:
                    log_density = self._log_marginal(activations)
                    weights.append(images.shape[0] * torch.softmax(log_density / self.weight_temperature, dim=0))
                else:
                    weights.append(images.new_ones(images.shape[0]))
        if self.synth_batch:
            generator = self._generator("pool", self.step, device=self.device)
            chosen = torch.randint(len(self.pool), (self.synth_batch,), device=self.device, generator=generator)
            images = self.pool.images[chosen]
            if self.config.augment_shift:
                images = random_translate(images, self.config.augment_shift, generator)
                with torch.no_grad():
                    teacher_logits.append(self.teacher(images))
            else:
                teacher_logits.append(self.pool.logits[chosen])
            inputs.append(images)
            weights.append(images.new_ones(self.synth_batch))
        losses = kd_loss(self.model(torch.cat(inputs)), torch.cat(teacher_logits), self.config.temperature)
        loss = (torch.cat(weights) * losses).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss.detach()

    def _collect_timings(self) -> None:
        """Adds the seconds timed since the last collect to ``timings`` (one wait for the device)."""
        for name, seconds in self._timer.collect().items():
            setattr(self.timings, name, getattr(self.timings, name) + seconds)
        self.timings.steps = self.step

    def train(self, until_step: int | None = None, progress: bool = False, log_every: int = 50) -> "Distiller":
        """Trains up to ``until_step`` (default: all of its steps, ``config.steps``, or
        ``config.data_free_steps`` without transfer data); call again to continue.

        Every ``log_every`` steps (and at the end) the mean loss since the last reading is brought
        to the host, appended to ``losses`` and shown on the progress bar, and ``timings`` are
        brought up to date: the only waits for the device between checkpoints. Saves a checkpoint
        every ``checkpoint_every`` steps and at the end when a path is set.
        """
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        end = self.total_steps if until_step is None else min(until_step, self.total_steps)
        self._timer.start()
        self.student.train()
        if "weighted" in self.parts and self.transfer is not None and self.weight_temperature is None:
            self.weight_temperature = self._fit_weight_temperature()
        if "synth" in self.parts and self.pool is None:
            self._update_pool()
        bar = tqdm(total=end, initial=self.step, desc=self.config.method, unit="step",
                   disable=not progress or self.rank != 0, leave=False)
        interval = IntervalMeans()
        with skip_device_checks():  # the loop's labels and ReLU activations are valid: no check stalls a step
            while self.step < end:
                if "synth" in self.parts and self.config.refresh_every and self.step % self.config.refresh_every == 0 \
                        and self.step > 0:
                    self._update_pool()
                interval.add({"loss": self._training_step()})
                if self.step % log_every == 0 or self.step == end:
                    self.losses.append((self.step, interval.read()["loss"]))
                    self._collect_timings()
                    bar.update(self.step - bar.n)
                    bar.set_postfix(loss=f"{self.losses[-1][1]:.4f}", refresh=False)
                if self.checkpoint_path is not None and self.config.checkpoint_every \
                        and self.step % self.config.checkpoint_every == 0:
                    self._collect_timings()
                    self.save_checkpoint()
        bar.close()
        self.student.eval()
        self._collect_timings()
        if self.checkpoint_path is not None:
            self.save_checkpoint()
        return self

    @torch.no_grad()
    def evaluate(self, images: Tensor, labels: Tensor) -> float:
        """The student's accuracy on ``images: [N, ...]`` with ``labels: [N]``."""
        was_training = self.student.training
        self.student.eval()
        correct = (self.student(images.to(self.device)).argmax(dim=1) == labels.to(self.device)).float().mean()
        self.student.train(was_training)
        return float(correct)

    # -- checkpoints ---------------------------------------------------------------------------

    def _transfer_kind(self) -> str | None:
        return None if self.transfer is None else type(self.transfer).__name__

    def state_dict(self) -> dict:
        return {
            "version": CHECKPOINT_VERSION,
            "config": asdict(self.config),
            "world_size": self.world_size,
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "sample_counter": self.sample_counter,
            "transfer": None if self.transfer is None else
            {"kind": self._transfer_kind(), "epoch": self.transfer.epoch, "cursor": self.transfer.cursor},
            "pool_given": self.pool is not None and self.pool is self.given_pool,
            "pool": None if self.pool is None or self.pool is self.given_pool else
            {"images": self.pool.images.cpu(), "labels": self.pool.labels.cpu(), "logits": self.pool.logits.cpu(),
             "draws": self.pool.draws},
            "pool_refreshes": self.pool_refreshes,
            "weight_temperature": self.weight_temperature,
            "losses": self.losses,
            "timings": asdict(self.timings),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores a ``state_dict``. Raises ``ValueError`` when it comes from another config, world
        size or kind of transfer data (the transfer shards and sampler offsets would not line up),
        or refers to a given pool that this run was not given (or one of another size)."""
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}")
        differing = {key: value for key, value in state["config"].items()
                     if key != "checkpoint_every" and asdict(self.config).get(key) != value}
        if differing:
            raise ValueError(f"checkpoint was written with another config: {differing}")
        if state["world_size"] != self.world_size:
            raise ValueError(f"checkpoint was written by {state['world_size']} ranks, this run has {self.world_size}")
        if state["pool_given"] and (self.given_pool is None or len(self.given_pool) != self.config.pool_size):
            raise ValueError("checkpoint was written by a run started from a given pool: pass the same pool")
        transfer = state["transfer"]
        kind = None if transfer is None else transfer["kind"]
        if kind != self._transfer_kind():
            raise ValueError(f"checkpoint was written with transfer data from {kind}, this run has "
                             f"{self._transfer_kind()}")
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        if isinstance(self.transfer, TensorBatches):  # read by the teacher it had before the checkpoint's
            self.transfer.activations = self.transfer.read()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.sample_counter = state["sample_counter"]
        if transfer is not None:
            self.transfer.seek(transfer["epoch"], transfer["cursor"])
        if state["pool"] is not None:
            self.pool = Pool(**state["pool"]).to(self.device)
        elif not state["pool_given"]:
            self.pool = None
        self.pool_refreshes = state["pool_refreshes"]
        self.weight_temperature = state["weight_temperature"]
        self.losses = [tuple(entry) for entry in state["losses"]]
        self.timings = Timings(**state["timings"])

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Writes the state (rank 0, atomically: a killed write leaves the previous file intact)."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: pass one here or as checkpoint_path")
        state = self.state_dict()
        if self.rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            torch.save(state, partial)
            os.replace(partial, path)
        if self.world_size > 1:
            torch_dist.barrier()
        return path

    def load_checkpoint(self, path: str | Path | None = None) -> bool:
        """Resumes from ``path`` (default: ``checkpoint_path``) if it exists; returns whether it did.

        The file is read onto the CPU and ``load_state_dict`` moves each tensor where it belongs:
        the optimizer keeps Adam's step counts on the CPU, as it made them (on the GPU they would
        be read by the host at every step)."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None or not path.exists():
            return False
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))
        return True
