"""What the commands share around the library (``penact demo | distill | generate | bench``): the
data sets with their teacher and student architectures, seeded teachers and their fitted families,
the device option, and the machine and source metadata their reports carry. Library code
(``penact.families``, ``penact.ops``, the trainers) never imports this module.
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as torch_dist

from ._random import stream_seed
from .data import load_digits_split, load_mnist
from .distill.trainer import distributed_context
from .families import ClassConditionalDistribution, get_family
from .models import lenet5, lenet5_half, student_cnn, teacher_cnn, train_classifier


@dataclass(frozen=True)
class Dataset:
    """A data set of the benchmarks with the architectures trained on it: ``load()`` gives its fixed
    train/test split (``train_images: [N, *image_shape]``, ``train_labels``, ``test_images``,
    ``test_labels``, ``num_classes``), ``teacher(num_classes)`` and ``student(num_classes)`` make
    the classifiers (a ``backbone`` ending in the penultimate ReLU, then ``fc``), and the teacher is
    trained for ``teacher_epochs`` with ``train_classifier``'s ``teacher_options``."""

    name: str
    load: Callable
    teacher: Callable
    student: Callable
    image_shape: tuple[int, ...]
    teacher_epochs: int
    teacher_options: dict = field(default_factory=dict)


DATASETS = {
    # scikit-learn's 1,797 8x8 digits, the project's built-in data (docs/data.md).
    "digits": Dataset("digits", load_digits_split, teacher_cnn, student_cnn, (1, 8, 8), 20),
    # MNIST with DAFL's pair (Chen et al. 2019): LeNet-5 and LeNet-5-half, the teacher by DAFL's
    # recipe (Adam 1e-3, batch 256; 9 epochs give 98.8-99.1% over three seeds, docs/data.md).
    "mnist": Dataset("mnist", load_mnist, lenet5, lenet5_half, (1, 28, 28), 9, {"lr": 1e-3, "batch_size": 256,
                                                                                 "weight_decay": 0.0}),
}


def _holding_out(load: Callable, size: int) -> Callable:
    """``load`` with its last ``size`` training images as the test split and the rest as the
    training split: a validation split, so that settings are chosen without the test split."""

    def load_validation():
        data = load()
        return replace(data, train_images=data.train_images[:-size], train_labels=data.train_labels[:-size],
                       test_images=data.train_images[-size:], test_labels=data.train_labels[-size:])

    return load_validation


# "<name>-validation": the same data set, teacher and recipe, evaluated on a part of the training
# split held out from everything (MNIST: the last 10,000, the deeplearning.net validation split;
# digits: the last 20% of the training split, 270 images).
for _name, _held_out in (("digits", 270), ("mnist", 10_000)):
    DATASETS[f"{_name}-validation"] = replace(DATASETS[_name], name=f"{_name}-validation",
                                              load=_holding_out(DATASETS[_name].load, _held_out))


def get_dataset(name: str) -> Dataset:
    """The data set ``name``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {tuple(DATASETS)}, got {name!r}")
    return DATASETS[name]


def fit_distribution(family: str, teacher: torch.nn.Module, images: torch.Tensor,
                     labels: torch.Tensor) -> ClassConditionalDistribution:
    """The registered ``family``'s ``fit(teacher.fc, activations, labels)`` on the teacher's
    activations of ``images`` (the sphere family fits its radius by maximum likelihood), on the
    teacher's device (``images`` and ``labels`` are moved there)."""
    family_class = get_family(family)
    device = teacher.fc.weight.device
    with torch.no_grad():
        activations = teacher.features(images.to(device))
    return family_class.fit(teacher.fc, activations, labels.to(device))


def resolve_device(name: str) -> torch.device:
    """The device a command runs on: ``"cpu"``, ``"cuda"`` or ``"cuda:i"``.

    Raises:
        argparse.ArgumentTypeError: another device type, or CUDA asked for where torch has none
            (no GPU, no driver, or a CPU-only build of torch), or an index past the last GPU.
    """
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise argparse.ArgumentTypeError(f"device must be cpu, cuda or cuda:<index>, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (f"torch {torch.__version__} is a CPU-only build" if torch.version.cuda is None else
                   f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no GPU or driver")
            raise argparse.ArgumentTypeError(f"{name!r} was asked for, but {why}: use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{name!r} was asked for, but torch sees {torch.cuda.device_count()} "
                                             "CUDA device(s)")
    return device


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device`` (default ``cpu``), parsed and checked by :func:`resolve_device`."""
    parser.add_argument("--device", type=resolve_device, default=torch.device("cpu"),
                        help="cpu, cuda or cuda:<index> (default: cpu)")


def _broadcast_module(module: torch.nn.Module) -> None:
    for tensor in module.state_dict().values():
        torch_dist.broadcast(tensor, src=0)


def prepare_teacher(seed: int, epochs: int | None = None, cache_dir: Path | None = None,
                    device: torch.device | str = "cpu", dataset: str = "digits") -> torch.nn.Module:
    """The seed's teacher of ``dataset`` on ``device`` (``epochs``: the data set's by default): loaded
    from ``cache_dir`` if saved there, else trained there (identically on every rank, then broadcast
    from rank 0 so that all ranks hold the same bits) and saved. The initialization is drawn on the
    CPU, so it is the same on every device."""
    rank, world_size = distributed_context()
    spec = get_dataset(dataset)
    epochs = spec.teacher_epochs if epochs is None else epochs
    data = spec.load()
    torch.manual_seed(stream_seed(seed, "teacher"))
    teacher = spec.teacher(num_classes=data.num_classes).to(device)
    stem = "teacher" if dataset == "digits" else f"teacher-{dataset}"
    path = cache_dir / f"{stem}-seed{seed}-epochs{epochs}.pt" if cache_dir is not None else None
    if path is not None and path.exists():
        teacher.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        return teacher.eval()
    train_classifier(teacher, data.train_images.to(device), data.train_labels.to(device), epochs, seed=seed,
                     progress=False, **spec.teacher_options)
    if world_size > 1:
        _broadcast_module(teacher)
    if path is not None and rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(teacher.state_dict(), path)
    return teacher.eval()


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """``device`` with its model for a report: ``cuda:0 (NVIDIA H200)``, ``cpu (<processor>)``."""
    model = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return f"{device} ({model})"


def git(*args: str) -> str | None:
    """``git <args>`` in the source checkout penact runs from (its output), or None outside one."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    return None


def source_state(short: bool = False) -> tuple[str | None, list[str] | None]:
    """``(commit, uncommitted)``: the checkout's HEAD (abbreviated with ``short``) and the tracked
    files that differ from it, so that a report says when its figures came from code no commit
    holds; ``(None, None)`` outside a checkout."""
    commit = git("rev-parse", *(["--short"] if short else []), "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None else [line.split(None, 1)[-1] for line in status.splitlines()])
