"""The distillation trainer: a student learns a teacher's classes from unlabelled transfer data
and/or from inputs synthesized out of the teacher's distribution of penultimate activations.

Methods (combinable with ``+``, e.g. ``"synth+weighted"``):

- ``kd``: Hinton et al.'s soft-label distillation at temperature ``T`` on the transfer data,
  ``T^2 KL(softmax(t / T) || softmax(s / T))`` per sample (the base of every method);
- ``synth``: a pool of inputs synthesized from labelled activations drawn from the teacher's
  distribution (``synthesis.synthesize_inputs``), built before the first step and optionally
  refreshed (first in, first out) every ``refresh_every`` steps; each step distils on a batch of
  the pool alongside the transfer batch (the pool's share of the batch is ``synth_fraction``; all of
  it when there are no transfer data);
- ``weighted``: each transfer sample's loss weighted by the teacher model's marginal density of its
  teacher activation, ``w_i = n softmax_i(log p(a_i) / tau)`` over the rank's transfer batch (mean
  1), with ``tau`` the standard deviation of ``log p(a)`` under the model's own samples, so
  off-domain samples (low density) count less.

Distributed: under ``torch.distributed`` (``torchrun``; tested with gloo on CPU) the student is
wrapped in ``DistributedDataParallel``, the transfer data are sharded by a ``DistributedSampler``,
``batch_size`` is the global batch (each rank takes ``batch_size / world_size``), each rank
synthesizes its share of the pool (then all ranks gather the whole pool), and rank ``r`` draws
activations from the Philox offsets ``r * 2**40 + counter`` (SPEC section 4), so no two ranks
and no two draws share a stream.

Checkpoints hold the student, the teacher, the optimizer and schedule, the step, the sampler
counter, the transfer sampler's position and the synthesis pool; every other random choice is a
pure function of ``(seed, step, rank)``, so a resumed run continues exactly where it stopped.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from .._random import stream_seed
from ..families import ClassConditionalDistribution
from .synthesis import resolve_match, synthesize_inputs

METHOD_PARTS = ("kd", "synth", "weighted")
RANK_OFFSET_STRIDE = 2**40  # Philox counters per rank: disjoint ranges r * 2^40 + [0, 2^40)
CHECKPOINT_VERSION = 1


def parse_method(method: str) -> frozenset[str]:
    """``"synth+weighted"`` -> ``{"synth", "weighted"}``; ``"kd"`` (plain KD) -> ``{}``.

    Raises:
        ValueError: an unknown part.
    """
    parts = frozenset(part.strip() for part in method.split("+"))
    unknown = parts - set(METHOD_PARTS)
    if unknown or not method:
        raise ValueError(f"method must be parts of {METHOD_PARTS} joined by '+', got {method!r}")
    return parts - {"kd"}


@dataclass
class DistillConfig:
    """Hyper-parameters of one distillation run (defaults: the committed digits benchmark)."""

    method: str = "kd"
    steps: int = 1500
    batch_size: int = 128             # global batch per step
    synth_fraction: float = 0.5       # share of the batch taken from the pool when transfer data exist
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
    weight_reference_size: int = 4096
    seed: int = 0
    checkpoint_every: int = 0         # 0: no periodic checkpoints

    def __post_init__(self):
        parse_method(self.method)
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {self.steps}, {self.batch_size}")
        if not 0 < self.synth_fraction < 1:
            raise ValueError(f"synth_fraction must lie in (0, 1), got {self.synth_fraction}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


@dataclass
class Timings:
    """Seconds spent, accumulated over the run (and across resumes)."""

    total: float = 0.0        # training loop, pool synthesis included
    synthesis: float = 0.0    # building and refreshing the pool (teacher forward/backward on inputs)
    sampler: float = 0.0      # distribution.sample
    log_density: float = 0.0  # distribution.log_marginal


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
    ``student`` (any classifier ``x -> [N, C]``) using ``transfer: [M, *image_shape]`` (``M`` may
    be 0) and, for ``synth``/``weighted``, the teacher's ``distribution``.

    The teacher is put in eval mode with ``requires_grad=False`` (in place): it is never trained.

    Args:
        image_shape: the shape of one input (needed to synthesize when ``transfer`` is empty).
        checkpoint_path: where ``save_checkpoint`` writes (every ``checkpoint_every`` steps and at
            the end of ``train``); resume with ``load_checkpoint``.

    Raises:
        ValueError: a method with no data source (no transfer data and no ``synth``), a global batch
            not divisible by the world size, or a distribution whose classes or width disagree
            with the teacher's final layer.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, distribution: ClassConditionalDistribution,
                 transfer: Tensor, config: DistillConfig, *, image_shape: tuple[int, ...] = (1, 8, 8),
                 checkpoint_path: str | Path | None = None, device: torch.device | str | None = None):
        self.config = config
        self.parts = parse_method(config.method)
        self.rank, self.world_size = distributed_context()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if config.batch_size % self.world_size:
            raise ValueError(f"batch_size ({config.batch_size}) must be divisible by the world size ({self.world_size})")
        if distribution.weight.shape != teacher.fc.weight.shape:
            raise ValueError(f"distribution must describe the teacher's final layer {tuple(teacher.fc.weight.shape)}, "
                             f"got weight {tuple(distribution.weight.shape)}")
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.student = student.to(self.device)
        self.model = DistributedDataParallel(self.student) if self.world_size > 1 else self.student
        self.distribution = distribution
        self.match = resolve_match(config.match, distribution)
        self.image_shape = tuple(image_shape)
        self.transfer = transfer.to(self.device)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None

        local_batch = config.batch_size // self.world_size
        has_transfer = self.transfer.shape[0] > 0
        if not has_transfer and "synth" not in self.parts:
            raise ValueError(f"method {config.method!r} needs transfer data: the transfer set is empty (use synth)")
        if "synth" in self.parts and has_transfer:
            self.synth_batch = max(1, round(local_batch * config.synth_fraction))
        else:
            self.synth_batch = local_batch if "synth" in self.parts else 0
        self.transfer_batch = local_batch - self.synth_batch
        if has_transfer:
            self.sampler = DistributedSampler(range(self.transfer.shape[0]), num_replicas=self.world_size,
                                              rank=self.rank, shuffle=True, seed=config.seed, drop_last=True)
            if self.transfer_batch > len(self.sampler):
                raise ValueError(f"the transfer set ({self.transfer.shape[0]} images) is smaller than a "
                                 f"{self.world_size}-rank batch of {self.transfer_batch * self.world_size}")

        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(config.steps, 1))
        self.step = 0
        self.sample_counter = 0          # Philox counters used by this rank (same on every rank)
        self.epoch, self.cursor = 0, 0   # transfer sampler position
        self.pool_images: Tensor | None = None
        self.pool_logits: Tensor | None = None
        self.pool_labels: Tensor | None = None
        self.pool_refreshes = 0
        self.weight_temperature: float | None = None
        self.timings = Timings()
        self._order: list[int] | None = None

    # -- randomness ----------------------------------------------------------------------------

    def _reserve_offset(self, count: int) -> int:
        """The Philox offset of this rank's next ``count`` draws (SPEC section 4: disjoint per rank)."""
        if self.sample_counter + count > RANK_OFFSET_STRIDE:
            raise RuntimeError("this rank used up its 2**40 sampler counters")
        offset = self.rank * RANK_OFFSET_STRIDE + self.sample_counter
        self.sample_counter += count
        return offset

    def _sample(self, labels: Tensor) -> Tensor:
        started = time.perf_counter()
        activations = self.distribution.sample(labels, seed=self.config.seed, offset=self._reserve_offset(len(labels)))
        self.timings.sampler += time.perf_counter() - started
        return activations

    def _log_marginal(self, activations: Tensor) -> Tensor:
        started = time.perf_counter()
        log_density = self.distribution.log_marginal(activations)
        self.timings.log_density += time.perf_counter() - started
        return log_density

    def _generator(self, *purpose) -> torch.Generator:
        return torch.Generator().manual_seed(stream_seed(self.config.seed, self.rank, *purpose))

    # -- the synthesis pool --------------------------------------------------------------------

    def _gather(self, local: Tensor) -> Tensor:
        if self.world_size == 1:
            return local
        pieces = [torch.empty_like(local) for _ in range(self.world_size)]
        torch_dist.all_gather(pieces, local.contiguous())
        return torch.cat(pieces)

    def _synthesize(self, count: int) -> tuple[Tensor, Tensor, Tensor]:
        """``count`` new pool entries (images, labels, teacher logits), split across ranks; labels
        cycle through the classes so that every refresh is balanced."""
        started = time.perf_counter()
        local = math.ceil(count / self.world_size)
        num_classes = self.distribution.num_classes
        first = self.pool_refreshes * count + self.rank * local
        labels = (first + torch.arange(local, device=self.device)) % num_classes
        targets = self._sample(labels)
        images = synthesize_inputs(self.teacher, self.distribution, targets, labels, self.image_shape,
                                   self._generator("synthesis", self.pool_refreshes), steps=self.config.synth_steps,
                                   lr=self.config.synth_lr, match=self.match, tv_weight=self.config.tv_weight,
                                   l2_weight=self.config.l2_weight)
        with torch.no_grad():
            logits = self.teacher(images)
        self.pool_refreshes += 1
        gathered = tuple(self._gather(t)[:count] for t in (images, labels, logits))
        self.timings.synthesis += time.perf_counter() - started
        return gathered

    def _update_pool(self) -> None:
        if self.pool_images is None:
            self.pool_images, self.pool_labels, self.pool_logits = self._synthesize(self.config.pool_size)
            return
        images, labels, logits = self._synthesize(self.config.refresh_size)
        keep = slice(images.shape[0], None)  # first in, first out
        self.pool_images = torch.cat([self.pool_images[keep], images])
        self.pool_labels = torch.cat([self.pool_labels[keep], labels])
        self.pool_logits = torch.cat([self.pool_logits[keep], logits])

    # -- the transfer data ---------------------------------------------------------------------

    def _next_transfer_indices(self) -> Tensor:
        if self._order is None or self.cursor + self.transfer_batch > len(self._order):
            if self._order is not None:
                self.epoch, self.cursor = self.epoch + 1, 0
            self.sampler.set_epoch(self.epoch)
            self._order = list(self.sampler)
        indices = self._order[self.cursor:self.cursor + self.transfer_batch]
        self.cursor += self.transfer_batch
        return torch.tensor(indices, device=self.device)

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

    def _training_step(self) -> float:
        inputs, teacher_logits, weights = [], [], []
        if self.transfer_batch:
            images = self.transfer[self._next_transfer_indices()]
            with torch.no_grad():
                activations = self.teacher.features(images)
                inputs.append(images)
                teacher_logits.append(self.teacher.fc(activations))
                if "weighted" in self.parts:
                    log_density = self._log_marginal(activations)
                    weights.append(self.transfer_batch * torch.softmax(log_density / self.weight_temperature, dim=0))
                else:
                    weights.append(images.new_ones(self.transfer_batch))
        if self.synth_batch:
            chosen = torch.randint(self.pool_images.shape[0], (self.synth_batch,), generator=self._generator("pool", self.step))
            chosen = chosen.to(self.device)
            inputs.append(self.pool_images[chosen])
            teacher_logits.append(self.pool_logits[chosen])
            weights.append(self.pool_images.new_ones(self.synth_batch))
        losses = kd_loss(self.model(torch.cat(inputs)), torch.cat(teacher_logits), self.config.temperature)
        loss = (torch.cat(weights) * losses).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return float(loss.detach())

    def train(self, until_step: int | None = None, progress: bool = False) -> "Distiller":
        """Trains up to ``until_step`` (default: ``config.steps``); call again to continue.
        Saves a checkpoint every ``checkpoint_every`` steps and at the end when a path is set."""
        end = self.config.steps if until_step is None else min(until_step, self.config.steps)
        started = time.perf_counter()
        self.student.train()
        if "weighted" in self.parts and self.transfer_batch and self.weight_temperature is None:
            self.weight_temperature = self._fit_weight_temperature()
        if "synth" in self.parts and self.pool_images is None:
            self._update_pool()
        bar = tqdm(total=end, initial=self.step, desc=self.config.method, unit="step",
                   disable=not progress or self.rank != 0, leave=False)
        while self.step < end:
            if "synth" in self.parts and self.config.refresh_every and self.step % self.config.refresh_every == 0 \
                    and self.step > 0:
                self._update_pool()
            loss = self._training_step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if self.checkpoint_path is not None and self.config.checkpoint_every \
                    and self.step % self.config.checkpoint_every == 0:
                self.timings.total += time.perf_counter() - started
                started = time.perf_counter()
                self.save_checkpoint()
        bar.close()
        self.student.eval()
        self.timings.total += time.perf_counter() - started
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
            "transfer_position": (self.epoch, self.cursor),
            "pool": None if self.pool_images is None else
            {"images": self.pool_images.cpu(), "labels": self.pool_labels.cpu(), "logits": self.pool_logits.cpu()},
            "pool_refreshes": self.pool_refreshes,
            "weight_temperature": self.weight_temperature,
            "timings": asdict(self.timings),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores a ``state_dict``. Raises ``ValueError`` when it comes from another config or
        world size (the transfer shards and sampler offsets would not line up)."""
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}")
        differing = {key: value for key, value in state["config"].items()
                     if key != "checkpoint_every" and asdict(self.config).get(key) != value}
        if differing:
            raise ValueError(f"checkpoint was written with another config: {differing}")
        if state["world_size"] != self.world_size:
            raise ValueError(f"checkpoint was written by {state['world_size']} ranks, this run has {self.world_size}")
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.sample_counter = state["sample_counter"]
        self.epoch, self.cursor = state["transfer_position"]
        self._order = None
        if self.transfer_batch and self.cursor:
            self.sampler.set_epoch(self.epoch)
            self._order = list(self.sampler)
        pool = state["pool"]
        if pool is not None:
            self.pool_images, self.pool_labels, self.pool_logits = (
                pool[key].to(self.device) for key in ("images", "labels", "logits"))
        self.pool_refreshes = state["pool_refreshes"]
        self.weight_temperature = state["weight_temperature"]
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
        """Resumes from ``path`` (default: ``checkpoint_path``) if it exists; returns whether it did."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None or not path.exists():
            return False
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))
        return True
