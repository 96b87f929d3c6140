"""Where a :class:`~penact.distill.Distiller`'s transfer batches come from, and what resuming means
for each source. Both give each batch with the teacher's penultimate activations of it
(``features``) and keep a position ``(epoch, cursor)`` that a checkpoint stores.

- :class:`TensorBatches`: rows of an image tensor held on the device, in the order of a
  ``DistributedSampler`` (each rank its own shard, shuffled per epoch from the run's seed, the last
  partial batch dropped). The order of epoch ``e`` is a pure function of ``(seed, e, rank)``, so a
  resumed run continues exactly. ``cursor`` counts rows. The teacher reads the tensor once, at
  construction: its activations are kept beside the images (``D`` numbers per image, fewer than
  its pixels) and every batch indexes both, so no step runs the teacher on transfer images.
- :class:`LoaderBatches`: the batches of any re-iterable of image batches (a
  ``torch.utils.data.DataLoader``, a list of tensors), each batch a tensor or a tuple or list whose
  first element is the images (so ``(images, labels)`` datasets work; the labels are never read).
  The loader sets the batch size and, under ``torchrun``, the sharding (give it a
  ``DistributedSampler``). Before every epoch the sampler's ``set_epoch(epoch)`` is called when it
  has one. ``cursor`` counts batches; resuming re-iterates epoch ``epoch`` and discards its first
  ``cursor`` batches (they are loaded, not used). That is exact when the loader's order within an
  epoch depends only on the epoch: no shuffling, or a sampler with ``set_epoch`` such as
  ``DistributedSampler``, and no random augmentation. A loader that shuffles from a generator that
  advances across epochs (``DataLoader(shuffle=True)``) resumes at the right epoch and batch count
  but in another order: the same amount of training, not the same run.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torch.utils.data.distributed import DistributedSampler

from ..training import host_to_device


def _images(batch) -> Tensor:
    """A batch's images: the batch itself, or the first element of a tuple or list."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


# Images per teacher call when a transfer tensor is read once.
FEATURE_CHUNK = 1024


class TensorBatches:
    """``batch_size`` rows per call of ``images: [M, *image_shape]`` (moved to ``device``) and of
    their activations ``features(images): [M, D]``.

    Raises:
        ValueError: a shard of fewer than ``batch_size`` rows.
    """

    def __init__(self, images: Tensor, batch_size: int, *, rank: int, world_size: int, seed: int,
                 device: torch.device, features: Callable[[Tensor], Tensor]):
        self.images = images.to(device)
        self.features = features
        self.activations = self.read()
        self.batch_size = batch_size
        self.device = device
        self.sampler = DistributedSampler(range(images.shape[0]), num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        if batch_size > len(self.sampler):
            raise ValueError(f"the transfer set ({images.shape[0]} images) is smaller than a "
                             f"{world_size}-rank batch of {batch_size * world_size}")
        self.epoch, self.cursor = 0, 0
        self._order: Tensor | None = None   # this rank's order of epoch `_order_epoch`, on the device
        self._order_epoch: int | None = None

    def read(self) -> Tensor:
        """``features`` of every image, ``[M, D]``, computed now (again after the teacher changed)."""
        with torch.no_grad():
            return torch.cat([self.features(chunk) for chunk in self.images.split(FEATURE_CHUNK)])

    def next_rows(self) -> Tensor:
        """The rows of the next batch, ``[batch_size]`` on the device. The epoch's order is copied to
        the device once per epoch; a batch is a slice of it (no copy from the host per step)."""
        if self.cursor + self.batch_size > len(self.sampler):
            self.epoch, self.cursor = self.epoch + 1, 0
        if self._order_epoch != self.epoch:
            self.sampler.set_epoch(self.epoch)
            self._order = host_to_device(torch.tensor(list(self.sampler)), self.device)
            self._order_epoch = self.epoch
        rows = self._order[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return rows

    def next(self) -> tuple[Tensor, Tensor]:
        """The next batch, ``[batch_size, *image_shape]`` on the device, and its activations."""
        rows = self.next_rows()
        return self.images[rows], self.activations[rows]

    def seek(self, epoch: int, cursor: int) -> None:
        self.epoch, self.cursor = epoch, cursor

    def all_activations(self) -> Tensor:
        """The activations of every image, ``[M, D]``."""
        return self.activations


class LoaderBatches:
    """The batches of ``loader`` (see the module docstring), each moved to ``device`` without waiting
    for the GPU (pinned first unless the loader pins them: ``DataLoader(pin_memory=True)``), with
    ``features`` of each batch.

    Raises (from :meth:`next`):
        ValueError: an epoch that yields no batch (an empty loader, or a one-shot iterator that
            cannot be iterated again: pass a DataLoader, a list or a tensor).
    """

    def __init__(self, loader: Iterable, device: torch.device, features: Callable[[Tensor], Tensor]):
        self.loader = loader
        self.device = device
        self.features = features
        self.epoch, self.cursor = 0, 0
        self._iterator = None

    def _start_epoch(self) -> None:
        set_epoch = getattr(getattr(self.loader, "sampler", None), "set_epoch", None)
        if set_epoch is not None:
            set_epoch(self.epoch)
        self._iterator = iter(self.loader)
        skipped = sum(1 for _ in itertools.islice(self._iterator, self.cursor))
        if skipped < self.cursor:
            raise ValueError(f"the transfer loader has {skipped} batches in epoch {self.epoch}, "
                             f"fewer than the checkpoint's position {self.cursor}")

    def next(self) -> tuple[Tensor, Tensor]:
        """The next batch of images, ``[B, *image_shape]`` on the device, and its activations."""
        if self._iterator is None:
            self._start_epoch()
        batch = next(self._iterator, None)
        if batch is None:
            if self.cursor == 0:
                raise ValueError(f"the transfer loader yielded no batch in epoch {self.epoch} (a one-shot "
                                 "iterator cannot be iterated again: pass a DataLoader, a list or a tensor)")
            self.epoch, self.cursor = self.epoch + 1, 0
            self._start_epoch()
            return self.next()
        self.cursor += 1
        images = host_to_device(_images(batch), self.device)
        with torch.no_grad():
            return images, self.features(images)

    def seek(self, epoch: int, cursor: int) -> None:
        self.epoch, self.cursor = epoch, cursor
        self._iterator = None

    def all_activations(self) -> Tensor:
        """The activations of one pass over the loader, ``[M, D]`` (the position is left as it is)."""
        with torch.no_grad():
            return torch.cat([self.features(host_to_device(_images(batch), self.device)) for batch in self.loader])
