"""The distillation trainer on tiny runs, on every available device: methods, transfer sets
(tensors and loaders), disjoint sampler offsets, checkpoint/resume (including a killed process),
real 2-process runs (gloo on CPU, NCCL with two GPUs; spawned, and the command under torchrun),
the README's example, and the grid's report."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from penact import PenultimateDistribution, cli
from penact.data import MnistSplit, load_digits_28, load_digits_split
from penact.distill import (TRANSFER_SETS, DistillConfig, Distiller, corrupt, kd_loss, parse_method,
                            random_translate, synthesize_inputs, transfer_images, transfer_set)
from penact.distill import cli as distill_cli
from penact.distill.grid import auroc, get_benchmark, make_pool, run_grid, split_dataset, summarize, write_report
from penact.distill.synthesis import balanced_rows, class_quota
from penact.distill.trainer import RANK_OFFSET_STRIDE
from penact.experiments import DATASETS, fit_distribution, get_dataset, prepare_teacher
from penact.models import student_cnn, teacher_cnn, train_classifier

pytestmark = pytest.mark.usefixtures("one_thread")  # small ops: threads only add noise and time

TINY = DistillConfig(steps=80, batch_size=64, lr=1e-2, pool_size=40, refresh_every=30, refresh_size=20, synth_steps=5,
                     weight_reference_size=256)


class RecordingDistribution(PenultimateDistribution):
    """The sphere family, logging the ``(offset, count)`` of every draw."""

    draws: list

    def sample(self, labels, seed=None, offset=None, generator=None):
        self.draws.append((offset, len(labels)))
        return super().sample(labels, seed=seed, offset=offset, generator=generator)


def _recording(distribution):
    recording = RecordingDistribution(distribution.weight, distribution.bias, distribution.radius)
    recording.draws = []
    return recording


@pytest.fixture(scope="module")
def teacher_state(tmp_path_factory):
    """A teacher trained for 3 epochs (about 95% on digits), saved so that other processes load it."""
    torch.set_num_threads(1)
    data = load_digits_split()
    torch.manual_seed(0)
    teacher = teacher_cnn()
    train_classifier(teacher, data.train_images, data.train_labels, 3, progress=False)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(teacher.state_dict(), path)
    return path


def _teacher_and_distribution(path, device="cpu"):
    """The saved teacher on ``device`` and the sphere family fitted there."""
    data = load_digits_split()
    teacher = teacher_cnn()
    teacher.load_state_dict(torch.load(path, weights_only=True))
    teacher.to(device).eval()
    with torch.no_grad():
        activations = teacher.features(data.train_images.to(device))
    return teacher, PenultimateDistribution.fit(teacher.fc, activations, data.train_labels.to(device))


def _distiller(teacher_path, method, transfer, config=TINY, checkpoint_path=None, seed=0, device="cpu", pool=None):
    """A Distiller of the saved teacher on ``device``; ``transfer``: a transfer set's name, or data."""
    teacher, distribution = _teacher_and_distribution(teacher_path, device)
    torch.manual_seed(seed)
    if isinstance(transfer, str):
        transfer = transfer_images(transfer, load_digits_split(), seed=seed)
    return Distiller(teacher, student_cnn(), _recording(distribution), transfer, replace(config, method=method, seed=seed),
                     image_shape=(1, 8, 8), checkpoint_path=checkpoint_path, device=device, pool=pool)


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- pieces ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method, parts", [("kd", set()), ("synth", {"synth"}), ("weighted", {"weighted"}),
                                           ("synth+weighted", {"synth", "weighted"}), ("kd+synth", {"synth"})])
def test_parse_method(method, parts):
    assert parse_method(method) == parts


@pytest.mark.parametrize("method", ["", "kd+mixup", "synth,weighted"])
def test_parse_method_rejects_unknown_parts(method):
    with pytest.raises(ValueError, match="method"):
        parse_method(method)


def _mnist_like_split():
    """A tiny stand-in for MNIST (28x28 in [0, 1], ten classes): scikit-learn's digits framed like
    MNIST, 1,500 for training and 297 for testing (tests never load the real data)."""
    images, labels = load_digits_28()
    return MnistSplit(images[:1500], labels[:1500], images[1500:], labels[1500:])


def test_transfer_sets():
    data = load_digits_split()
    sets = {name: transfer_set(name, data) for name in TRANSFER_SETS if name != "shifted"}
    sizes = {name: found.images.shape[0] for name, found in sets.items()}
    assert sizes["in-domain"] == sizes["corrupted"] == sizes["noise"] == data.train_images.shape[0]
    assert sizes["partial"] == int((data.train_labels < 5).sum()) and sizes["none"] == 0
    assert set(sets["partial"].labels.tolist()) == {0, 1, 2, 3, 4} and sets["noise"].labels is None
    corrupted = transfer_images("corrupted", data, severity=2.0, seed=3)
    assert torch.equal(corrupted, transfer_images("corrupted", data, severity=2.0, seed=3))
    assert not torch.equal(corrupted, transfer_images("corrupted", data, severity=2.0, seed=4))
    assert corrupted.min() >= 0 and corrupted.max() <= 1
    with pytest.raises(ValueError, match="transfer set"):
        transfer_images("rotated", data)
    with pytest.raises(ValueError, match="shifted domain is made for"):
        transfer_images("shifted", data)


def test_noise_and_shifted_transfer_sets():
    """Noise: i.i.d. Gaussian pixels with the training images' mean and std (MNIST's: N(0, 1) after
    LeNet-5's normalization), fixed by the seed; shifted: all 1,797 framed digits with their labels."""
    data = _mnist_like_split()
    noise = transfer_images("noise", data, seed=1)
    assert noise.shape == data.train_images.shape and torch.equal(noise, transfer_images("noise", data, seed=1))
    assert not torch.equal(noise, transfer_images("noise", data, seed=2))
    assert abs(float(noise.mean() - data.train_images.mean())) < 0.01
    assert abs(float(noise.std() / data.train_images.std()) - 1) < 0.01
    shifted = transfer_set("shifted", data)
    assert shifted.images.shape == (1797, 1, 28, 28) and shifted.labels.shape == (1797,)


@pytest.mark.parametrize("max_shift", [0, 1, 3])
def test_random_translate_moves_each_image_by_its_own_offset(max_shift):
    images = torch.rand(400, 2, 7, 9, generator=torch.Generator().manual_seed(0))
    moved = random_translate(images, max_shift, torch.Generator().manual_seed(1))
    offsets = torch.randint(0, 2 * max_shift + 1, (2, 400), generator=torch.Generator().manual_seed(1)) - max_shift
    seen = set()
    for image, result, dy, dx in zip(images, moved, *(-offsets).tolist()):
        expected = torch.zeros_like(image)  # out[i, j] = image[i - dy, j - dx], zero outside
        rows, cols = slice(max(dy, 0), 7 + min(dy, 0)), slice(max(dx, 0), 9 + min(dx, 0))
        source_rows, source_cols = slice(max(-dy, 0), 7 + min(-dy, 0)), slice(max(-dx, 0), 9 + min(-dx, 0))
        expected[:, rows, cols] = image[:, source_rows, source_cols]
        assert torch.equal(result, expected)
        seen.add((dy, dx))
    assert len(seen) == (2 * max_shift + 1) ** 2  # every offset occurs in 400 draws


def test_corrupt_severity_zero_is_identity_and_severity_grows_the_shift():
    images = load_digits_split().train_images[:200]
    assert torch.allclose(corrupt(images, 0.0, torch.Generator().manual_seed(0)), images, atol=1e-6)
    distances = [float((corrupt(images, s, torch.Generator().manual_seed(0)) - images).abs().mean()) for s in (0.5, 1, 2)]
    assert distances[0] < distances[1] < distances[2]
    with pytest.raises(ValueError, match="severity"):
        corrupt(images, -1.0, torch.Generator())


def test_kd_loss_is_zero_at_the_teacher_and_positive_elsewhere():
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(kd_loss(logits, logits, 4.0), torch.zeros(8), atol=1e-6)
    assert (kd_loss(torch.zeros(8, 10), logits, 4.0) > 0).all()


def test_synthesized_inputs_carry_their_class(teacher_state, device):
    teacher, distribution = _teacher_and_distribution(teacher_state, device)
    labels = torch.arange(100, device=device) % 10
    targets = distribution.sample(labels, seed=0, offset=0)
    start = synthesize_inputs(teacher, distribution, targets, labels, (1, 8, 8), torch.Generator().manual_seed(0), steps=0)
    images = synthesize_inputs(teacher, distribution, targets, labels, (1, 8, 8),
                               torch.Generator(device=device).manual_seed(0), steps=40)
    assert images.shape == (100, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    cosine = torch.nn.functional.cosine_similarity
    with torch.no_grad():
        assert cosine(teacher.features(images), targets).mean() > cosine(teacher.features(start), targets).mean() + 0.05
        assert (teacher(images).argmax(dim=1) == labels).float().mean() > 0.5  # chance: 0.1
    assert all(p.requires_grad for p in teacher.parameters())  # restored after synthesis


def test_balanced_rows_keep_a_quota_per_class_read_then_fill_in_order():
    assert class_quota(8, 3).tolist() == [3, 3, 2] and class_quota(2, 3).tolist() == [1, 1, 0]
    reads = torch.tensor([3, 3, 3, 1, 0, 3, 1, 2, 2, 0, 0, 0])
    rows = balanced_rows(reads, class_quota(8, 4))
    assert rows.tolist() == [0, 1, 3, 4, 6, 7, 8, 9]  # two of each class, the first ones read so
    # Class 1 has one row where three are due: the first rows left over fill its places, in order.
    rows = balanced_rows(torch.tensor([0, 0, 0, 0, 1, 2, 2, 2]), torch.tensor([3, 3, 2]))
    assert rows.tolist() == [0, 1, 2, 4, 5, 6, 3, 7]
    assert balanced_rows(torch.tensor([2, 0]), class_quota(6, 3)).tolist() == [0, 1]  # fewer rows than places


def test_balance_rounds_synthesize_more_for_the_classes_the_teacher_reads_rarely(teacher_state, device):
    """The pool stays ``pool_size`` long, the rounds draw after the first pass's counters (at most
    ``pool_size`` more), and more of the places due to each class (6 of 60) are filled by images the
    teacher reads as it."""
    config = replace(TINY, pool_size=60, synth_steps=3, refresh_every=0)
    plain = _distiller(teacher_state, "synth", None, config=config, device=device).synthesize_pool()
    balanced = _distiller(teacher_state, "synth", None, config=replace(config, balance_rounds=2),
                          device=device).synthesize_pool()
    assert len(balanced) == len(plain) == 60
    counts = {name: torch.bincount(pool.logits.argmax(dim=1), minlength=10)
              for name, pool in (("plain", plain), ("balanced", balanced))}
    assert plain.draws == 60 < balanced.draws <= 2 * 60  # the rounds at most double the synthesis
    assert counts["plain"].max() > 6  # 3 synthesis steps: unbalanced readings to start from
    covered = {name: int(count.clamp(max=6).sum()) for name, count in counts.items()}
    assert covered["balanced"] > covered["plain"] and counts["balanced"].max() < counts["plain"].max()
    with pytest.raises(ValueError, match="balance_rounds"):
        DistillConfig(balance_rounds=-1)


def test_auroc_is_the_share_of_pairs_ordered_right():
    generator = torch.Generator().manual_seed(0)
    positive, negative = torch.randn(300, generator=generator) + 1, torch.randn(200, generator=generator)
    negative[:20] = positive[:20]  # ties count half
    pairs = (positive[:, None] > negative[None, :]).double() + 0.5 * (positive[:, None] == negative[None, :]).double()
    assert auroc(positive, negative) == pytest.approx(float(pairs.mean()), abs=1e-12)
    assert auroc(torch.ones(3), torch.zeros(2)) == 1.0 and auroc(torch.zeros(3), torch.ones(2)) == 0.0


# -- the trainer -----------------------------------------------------------------------------


@pytest.mark.parametrize("method, transfer", [("kd", "in-domain"), ("weighted", "in-domain"), ("synth", "partial"),
                                              ("synth+weighted", "none")])
def test_methods_train_and_use_disjoint_offsets(teacher_state, method, transfer, device):
    distiller = _distiller(teacher_state, method, transfer, device=device)
    distiller.train(log_every=30)
    data = load_digits_split()
    assert distiller.step == TINY.steps
    if transfer != "none":  # 80 steps from a 40-image pool of 5-step syntheses: too little to learn from
        assert distiller.evaluate(data.test_images, data.test_labels) > 0.2
    draws = distiller.distribution.draws
    assert bool(draws) == (method != "kd")
    # Consecutive draws tile [0, counter) without overlap (rank 0 of 1).
    position = 0
    for offset, count in draws:
        assert offset == position
        position += count
    assert position == distiller.sample_counter
    if "synth" in method:
        assert distiller.pool.images.shape == (TINY.pool_size, 1, 8, 8)
        assert distiller.pool_refreshes == 1 + (TINY.steps - 1) // TINY.refresh_every
        assert distiller.timings.synthesis > 0
    if "weighted" in method and transfer != "none":
        assert distiller.weight_temperature > 0 and distiller.timings.log_density > 0
    else:  # nothing to weight: no reference draws
        assert distiller.weight_temperature is None and distiller.timings.log_density == 0
    # The loss is read every 30 steps and at the end; the timings cover every step.
    assert [step for step, _ in distiller.losses] == [30, 60, 80]
    assert all(loss >= 0 for _, loss in distiller.losses)
    assert distiller.timings.steps == TINY.steps and distiller.timings.total > 0
    assert (distiller.timings.sampler > 0) == (method != "kd")


@pytest.mark.parametrize("ratio", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("kind", ["tensor", "loader"])
def test_a_pool_batch_goes_beside_a_full_transfer_batch(teacher_state, kind, ratio):
    """The pool adds ``synth_ratio * batch_size`` images to each step and never displaces
    transfer images: the student sees every transfer image a plain KD run would."""
    images = transfer_images("in-domain", load_digits_split(), seed=0)
    transfer = images if kind == "tensor" else DataLoader(images, batch_size=TINY.batch_size)
    config = replace(TINY, steps=3, synth_ratio=ratio)
    synth = _distiller(teacher_state, "synth", transfer, config=config)
    kd = _distiller(teacher_state, "kd", transfer, config=config)
    seen = {}
    for name, distiller in (("synth", synth), ("kd", kd)):
        sizes = seen[name] = []
        distiller.student.register_forward_hook(lambda module, args, output, sizes=sizes: sizes.append(len(args[0])))
        distiller.train()
    pool_batch = round(TINY.batch_size * ratio)
    assert seen["kd"] == [TINY.batch_size] * 3
    assert seen["synth"] == [TINY.batch_size + pool_batch] * 3
    assert synth.transfer.epoch == kd.transfer.epoch and synth.transfer.cursor == kd.transfer.cursor


@pytest.mark.parametrize("ratio", [0.0, -1.0, math.inf, math.nan])
def test_synth_ratio_must_be_positive_and_finite(ratio):
    with pytest.raises(ValueError, match="synth_ratio must be positive and finite"):
        replace(TINY, synth_ratio=ratio)


def test_data_free_steps_set_the_length_of_runs_without_transfer_data_alone(teacher_state):
    """``data_free_steps``: a pool-only run trains that many steps, its learning rate annealed to 0 over
    them; a run with transfer data keeps ``steps``."""
    config = replace(TINY, steps=6, data_free_steps=10, refresh_every=0)
    data_free = _distiller(teacher_state, "synth", None, config=config).train()
    with_transfer = _distiller(teacher_state, "synth", "partial", config=config).train()
    assert (data_free.step, with_transfer.step) == (10, 6)
    assert data_free.scheduler.get_last_lr()[0] == pytest.approx(0, abs=1e-12)
    assert with_transfer.scheduler.get_last_lr()[0] == pytest.approx(0, abs=1e-12)
    assert _distiller(teacher_state, "synth", None, config=replace(config, data_free_steps=None)).train().step == 6
    with pytest.raises(ValueError, match="data_free_steps must be >= 0"):
        replace(TINY, data_free_steps=-1)


def test_kd_without_transfer_data_is_refused(teacher_state):
    with pytest.raises(ValueError, match="needs transfer data"):
        _distiller(teacher_state, "kd", "none")
    with pytest.raises(ValueError, match="needs transfer data"):
        _distiller(teacher_state, "weighted", None)


def test_stop_and_resume_reproduces_the_uninterrupted_run(teacher_state, tmp_path, device):
    whole = _distiller(teacher_state, "synth+weighted", "partial", device=device).train()
    path = tmp_path / "run.pt"
    first = _distiller(teacher_state, "synth+weighted", "partial", checkpoint_path=path, device=device)
    first.train(until_step=13)
    assert first.step == 13
    resumed = _distiller(teacher_state, "synth+weighted", "partial", checkpoint_path=path, seed=0, device=device)
    assert resumed.load_checkpoint() and resumed.step == 13
    resumed.train()
    assert _state_equal(resumed.student.state_dict(), whole.student.state_dict())
    assert torch.equal(resumed.pool.images, whole.pool.images)
    assert resumed.sample_counter == whole.sample_counter
    # Adam's step counts stay on the CPU (on the GPU the host would read them at every step).
    assert all(state["step"].device.type == "cpu" for state in resumed.optimizer.state.values())


def test_a_run_given_a_pool_is_the_run_that_synthesized_it(teacher_state, tmp_path, device):
    """``synthesize_pool`` makes the pool a ``synth`` run makes for itself (the same draws), so a run
    given it is that run, bit for bit, pool augmentation and synthesis jitter included. A run given
    a pool draws after the pool's counters, and its checkpoints refer to the pool instead of storing
    it: resuming needs the pool again."""
    config = replace(TINY, steps=30, refresh_every=0, augment_shift=1, synth_jitter=1)
    own = _distiller(teacher_state, "synth", "partial", config=config, device=device).train()
    pool = _distiller(teacher_state, "synth", None, config=config, device=device).synthesize_pool()
    assert len(pool) == pool.draws == config.pool_size and torch.equal(pool.images, own.pool.images)
    given = _distiller(teacher_state, "synth", "partial", config=config, device=device, pool=pool).train()
    assert _state_equal(given.student.state_dict(), own.student.state_dict())
    assert given.distribution.draws == []  # nothing left to draw

    path = tmp_path / "given.pt"
    whole = _distiller(teacher_state, "synth+weighted", "partial", config=config, device=device, pool=pool).train()
    assert whole.distribution.draws[0] == (pool.draws, config.weight_reference_size)
    _distiller(teacher_state, "synth+weighted", "partial", config=config, checkpoint_path=path, device=device,
               pool=pool).train(until_step=10)
    state = torch.load(path, weights_only=False)
    assert state["pool_given"] and state["pool"] is None
    with pytest.raises(ValueError, match="given pool"):
        _distiller(teacher_state, "synth+weighted", "partial", config=config, checkpoint_path=path).load_checkpoint()
    resumed = _distiller(teacher_state, "synth+weighted", "partial", config=config, checkpoint_path=path,
                         device=device, pool=pool)
    assert resumed.load_checkpoint() and resumed.step == 10
    resumed.train()
    assert _state_equal(resumed.student.state_dict(), whole.student.state_dict())
    with pytest.raises(ValueError, match="no synth part"):
        _distiller(teacher_state, "kd", "partial", config=config, pool=pool)


def test_checkpoint_from_another_config_or_transfer_kind_is_refused(teacher_state, tmp_path):
    path = tmp_path / "run.pt"
    _distiller(teacher_state, "kd", "in-domain", checkpoint_path=path).train(until_step=2)
    other = _distiller(teacher_state, "kd", "in-domain", config=replace(TINY, lr=3e-3), checkpoint_path=path)
    with pytest.raises(ValueError, match="another config"):
        other.load_checkpoint()
    loader = DataLoader(load_digits_split().train_images, batch_size=32)
    with pytest.raises(ValueError, match="transfer data from TensorBatches, this run has LoaderBatches"):
        _distiller(teacher_state, "kd", loader, checkpoint_path=path).load_checkpoint()


def test_a_loader_resumes_exactly_when_its_order_is_fixed(teacher_state, tmp_path, device):
    """(images, labels) batches from a DataLoader without shuffling (labels unread); a family given
    by name is fitted to the teacher's activations of one pass; resuming re-iterates the epoch and
    skips its used batches, so the run is the uninterrupted one."""
    data = load_digits_split()
    loader = DataLoader(TensorDataset(data.train_images, data.train_labels), batch_size=40)  # 34 batches an epoch
    config = replace(TINY, steps=50, method="weighted", seed=0)

    def distiller(checkpoint_path=None):
        teacher, _ = _teacher_and_distribution(teacher_state)
        torch.manual_seed(0)
        return Distiller(teacher, student_cnn(), "rectified", loader, config, checkpoint_path=checkpoint_path,
                         device=device)

    whole = distiller().train()
    assert whole.distribution.name == "rectified" and whole.distribution.weight.device.type == device
    assert (whole.transfer.epoch, whole.transfer.cursor) == (1, 50 - 34)
    path = tmp_path / "loader.pt"
    distiller(path).train(until_step=40)  # stops in the second epoch
    resumed = distiller(path)
    assert resumed.load_checkpoint() and (resumed.transfer.epoch, resumed.transfer.cursor) == (1, 40 - 34)
    resumed.train()
    assert _state_equal(resumed.student.state_dict(), whole.student.state_dict())


def test_transfer_data_that_cannot_be_iterated_again_are_refused(teacher_state):
    images = load_digits_split().train_images
    one_shot = iter(images.split(64))
    distiller = _distiller(teacher_state, "kd", one_shot, config=replace(TINY, steps=30))
    with pytest.raises(ValueError, match="yielded no batch in epoch 1"):
        distiller.train()  # 22 batches, then nothing
    teacher, distribution = _teacher_and_distribution(teacher_state, "cpu")
    with pytest.raises(ValueError, match="needs image_shape"):
        Distiller(teacher, student_cnn(), distribution, [images[:64]], replace(TINY, method="synth"))
    with pytest.raises(ValueError, match="needs transfer data: pass a fitted distribution"):
        Distiller(teacher_cnn(), student_cnn(), "sphere", None, replace(TINY, method="synth"), image_shape=(1, 8, 8))


KILLED_RUN = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_distill import TINY, _distiller
    from dataclasses import replace
    torch.set_num_threads(1)
    config = replace(TINY, steps=200, refresh_every=50, checkpoint_every=10)
    _distiller({teacher!r}, "synth", "corrupted", config=config, checkpoint_path={checkpoint!r},
               device={device!r}).train()
""")


def test_killed_process_resumes_without_losing_progress(teacher_state, tmp_path, device):
    config = replace(TINY, steps=200, refresh_every=50, checkpoint_every=10)
    checkpoint = tmp_path / "killed.pt"
    script = KILLED_RUN.format(tests=os.path.dirname(__file__), teacher=str(teacher_state), checkpoint=str(checkpoint),
                               device=device)
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    killed_at = torch.load(checkpoint, weights_only=False)["step"]
    assert 0 < killed_at < config.steps

    resumed = _distiller(teacher_state, "synth", "corrupted", config=config, checkpoint_path=checkpoint, device=device)
    assert resumed.load_checkpoint() and resumed.step == killed_at
    resumed.train()
    whole = _distiller(teacher_state, "synth", "corrupted", config=config, device=device).train()
    assert _state_equal(resumed.student.state_dict(), whole.student.state_dict())


# -- two processes (gloo on CPU, NCCL on two GPUs) -------------------------------------------


def _two_ranks(device):
    """``(backend, per-rank device format)`` for a 2-rank run on ``device``; skips without 2 GPUs."""
    if device == "cuda" and torch.cuda.device_count() < 2:
        pytest.skip("NCCL with 2 ranks needs 2 GPUs")
    return ("nccl", "cuda:{}") if device == "cuda" else ("gloo", "cpu")


class _IndexRecording:
    """A loader of ``(images, index)`` batches that records the index of every image it yields."""

    def __init__(self, loader):
        self.loader, self.sampler, self.indices = loader, loader.sampler, []

    def __iter__(self):
        for images, index in self.loader:
            self.indices += index.tolist()
            yield images, index


def _distributed_worker(rank, world_size, backend, device_format, rendezvous, teacher_path, out_dir):
    torch.set_num_threads(1)
    device = device_format.format(rank)
    if backend == "nccl":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend, init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        distiller = _distiller(teacher_path, "synth+weighted", "in-domain", device=device,
                               checkpoint_path=os.path.join(out_dir, "ddp.pt"))
        used = []
        next_rows = distiller.transfer.next_rows

        def recording_next_rows():
            rows = next_rows()
            used.append(rows.tolist())
            return rows

        distiller.transfer.next_rows = recording_next_rows
        distiller.train()
        # Stopped at step 13 and resumed by another Distiller: the same run, on every rank.
        resumed_path = os.path.join(out_dir, "resumed.pt")
        _distiller(teacher_path, "synth+weighted", "in-domain", device=device, checkpoint_path=resumed_path).train(
            until_step=13)
        resumed = _distiller(teacher_path, "synth+weighted", "in-domain", device=device, checkpoint_path=resumed_path)
        assert resumed.load_checkpoint()
        resumed.train()
        # A DataLoader sharded by a DistributedSampler (the loader's batch: the transfer part).
        images = load_digits_split().train_images
        dataset = TensorDataset(images, torch.arange(images.shape[0]))
        loader = _IndexRecording(DataLoader(dataset, batch_size=16, sampler=DistributedSampler(dataset, seed=0)))
        loader_run = _distiller(teacher_path, "kd", loader, config=replace(TINY, steps=5), device=device).train()
        # Each rank balances its share of the pool: they draw apart, then go on after the furthest.
        balancing = _distiller(teacher_path, "synth", None, config=replace(TINY, synth_steps=3, balance_rounds=2),
                               device=device)
        balanced = balancing.synthesize_pool()

        data = load_digits_split()

        def flat(module):
            return torch.cat([p.detach().flatten() for p in module.parameters()]).tolist()

        result = {"draws": distiller.distribution.draws, "params": flat(distiller.student),
                  "resumed_params": flat(resumed.student), "loader_params": flat(loader_run.student),
                  "pool": distiller.pool.images.flatten().tolist(), "transfer_batches": used,
                  "loader_indices": loader.indices,
                  "accuracy": distiller.evaluate(data.test_images, data.test_labels),
                  "transfer_batch": distiller.transfer.batch_size, "synth_batch": distiller.synth_batch,
                  "balanced_pool": balanced.images.flatten().tolist(), "balanced_draws": balanced.draws,
                  "balancing_draws": balancing.distribution.draws}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump(result, handle)
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_run(teacher_state, tmp_path, device):
    backend, device_format = _two_ranks(device)
    mp.spawn(_distributed_worker,
             args=(2, backend, device_format, str(tmp_path / "rendezvous"), str(teacher_state), str(tmp_path)),
             nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # DDP keeps the replicas identical; the pool is gathered to every rank.
    assert ranks[0]["params"] == ranks[1]["params"]
    assert ranks[0]["pool"] == ranks[1]["pool"]
    assert ranks[0]["balanced_pool"] == ranks[1]["balanced_pool"]
    own_draws = [sum(count for _, count in result["balancing_draws"]) for result in ranks]
    assert ranks[0]["balanced_draws"] == ranks[1]["balanced_draws"] == max(own_draws) > TINY.pool_size // 2
    # Resuming from a checkpoint continues the 2-rank run exactly.
    assert ranks[0]["resumed_params"] == ranks[0]["params"] and ranks[1]["resumed_params"] == ranks[1]["params"]
    # Each rank takes half of the global batch, and as many pool images beside it.
    assert ranks[0]["transfer_batch"] == ranks[0]["synth_batch"] == TINY.batch_size // 2
    # Rank r draws from its own offset range [r 2^40, (r + 1) 2^40), and the ranges never meet.
    for rank, result in enumerate(ranks):
        for offset, count in result["draws"]:
            assert rank * RANK_OFFSET_STRIDE <= offset and offset + count <= (rank + 1) * RANK_OFFSET_STRIDE
    # The DistributedSampler shards every epoch: no transfer image is seen by both ranks in one epoch.
    batches_per_epoch = (load_digits_split().train_images.shape[0] // 2) // ranks[0]["transfer_batch"]
    first_epoch = [set(sum(result["transfer_batches"][:batches_per_epoch], [])) for result in ranks]
    assert first_epoch[0] and not first_epoch[0] & first_epoch[1]
    # A loader with a DistributedSampler gives each rank its own images; DDP still agrees.
    loader_indices = [set(result["loader_indices"]) for result in ranks]
    assert len(loader_indices[0]) == 5 * 16 and not loader_indices[0] & loader_indices[1]
    assert ranks[0]["loader_params"] == ranks[1]["loader_params"]
    # It learns as one process does (chance: 0.1; the same run in one process reaches about 0.7).
    single = _distiller(teacher_state, "synth+weighted", "in-domain", device=device).train()
    data = load_digits_split()
    assert ranks[0]["accuracy"] == ranks[1]["accuracy"]
    assert ranks[0]["accuracy"] > 0.4 and single.evaluate(data.test_images, data.test_labels) > 0.4
    state = torch.load(tmp_path / "ddp.pt", weights_only=False)
    assert state["world_size"] == 2 and state["step"] == TINY.steps


def test_distill_command_under_torchrun(tmp_path, device):
    """``torchrun --nproc_per_node=2 -m penact.cli distill``: gloo with --device cpu, NCCL with
    --device cuda (each rank on cuda:LOCAL_RANK); rank 0 writes the report."""
    _two_ranks(device)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "penact.cli", "distill", "--methods", "kd,synth", "--transfers", "partial", "--seeds", "1",
               "--teacher-epochs", "1", "--steps", "4", "--batch-size", "16", "--pool-size", "16",
               "--synth-steps", "2", "--threads", "1", "--device", device, "--out", str(tmp_path),
               "--name", "ddp", "--no-progress"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((tmp_path / "ddp.json").read_text())
    assert report["settings"]["world_size"] == 2 and report["settings"]["device"].startswith(device)
    assert set(report["table"]) == {"partial/kd", "partial/synth"}
    assert report["timing_shares"]["synth"]["seconds_per_step"] > 0


# -- the grid and its report -----------------------------------------------------------------


def test_grid_writes_table_json_and_png(tmp_path, device):
    config = replace(TINY, steps=4, pool_size=20, refresh_every=0, synth_steps=2)
    methods, transfers = ["kd", "synth"], ["partial", "none"]
    results, pools = run_grid(methods, transfers, [0, 1], config, teacher_epochs=1, checkpoint_dir=tmp_path / "ck",
                              progress=False, device=device)
    assert len(results) == 2 * 3 and not pools  # kd on "none" has no data: n/a; digits makes a pool per run
    assert len(list((tmp_path / "ck" / "cells").iterdir())) == 6
    rerun, _ = run_grid(methods, transfers, [0, 1], config, teacher_epochs=1, checkpoint_dir=tmp_path / "ck",
                        progress=False)
    assert [r.student_accuracy for r in rerun] == [r.student_accuracy for r in results]
    summary = summarize(results, methods, transfers, get_benchmark("digits"))
    assert "none/kd" not in summary["table"] and len(summary["table"]["partial/synth"]["seeds"]) == 2
    assert all(shares["seconds_per_step"] > 0 for shares in summary["timing_shares"].values())
    paths = write_report(summary, methods, transfers, tmp_path, "distill-test", "penact distill ...",
                         {"steps": 4, "device": device}, get_benchmark("digits"))
    assert all(path.stat().st_size > 0 for path in paths)
    markdown = paths[0].read_text()
    assert "| none | " in markdown and "n/a" in markdown and "penact distill ..." in markdown
    assert f"On {device}. Seconds per step" in markdown and "| seconds per step |" in markdown
    assert json.loads(paths[1].read_text())["table"]["partial/kd"]["mean"] >= 0


def test_mnist_grid_shares_one_pool_per_seed(tmp_path, monkeypatch):
    """The MNIST benchmark on a tiny MNIST-like split: one pool per seed serves every synth run
    (the pool's synthesis outside the runs), synth+weighted without transfer data is synth's run
    reported twice, and the report sets the published numbers and the MNIST targets beside ours."""
    monkeypatch.setitem(DATASETS, "mnist", replace(DATASETS["mnist"], load=_mnist_like_split))
    benchmark = get_benchmark("mnist")
    config = replace(benchmark.config, steps=3, batch_size=32, pool_size=20, synth_steps=2, weight_reference_size=64)
    methods, transfers, checkpoint_dir = ["kd", "synth", "synth+weighted"], ["shifted", "noise", "none"], tmp_path / "ck"
    results, pools = run_grid(methods, transfers, [0], config, teacher_epochs=1, checkpoint_dir=checkpoint_dir,
                              progress=False, dataset="mnist")
    assert len(results) == 3 + 3 + 2 and list(pools) == [0] and pools[0]["timings"]["synthesis"] > 0
    assert len(list((checkpoint_dir / "cells").iterdir())) == 7  # none/synth+weighted is not run again
    without_data = {r.method: r for r in results if r.transfer == "none"}
    assert without_data["synth+weighted"].same_run_as == "synth"
    assert without_data["synth+weighted"].student_accuracy == without_data["synth"].student_accuracy
    assert all(r.timings["synthesis"] == 0 for r in results if "synth" in r.method)
    shifted = {r.method: r for r in results if r.transfer == "shifted"}
    assert shifted["kd"].teacher_transfer_accuracy is not None
    assert all(r.teacher_transfer_accuracy is None for r in results if r.transfer == "noise")

    teacher = prepare_teacher(0, 1, checkpoint_dir, dataset="mnist")
    data = _mnist_like_split()
    distribution = fit_distribution(benchmark.family, teacher, data.train_images, data.train_labels)
    pool, record = make_pool(0, config, teacher, distribution, "mnist", checkpoint_dir)  # the saved one
    assert len(pool) == 20 and record == pools[0]
    with pytest.raises(ValueError, match="was made with"):
        make_pool(0, replace(config, synth_steps=3), teacher, distribution, "mnist", checkpoint_dir)

    summary = summarize(results, methods, transfers, benchmark, pools)
    targets = [verdict["target"] for verdict in summary["targets"]]
    assert "none: best penact method >= 98.2% (DAFL's 98.20%)" in targets
    assert "shifted: best penact method >= kd + 2 points" in targets
    published = {row["what"]: row for row in summary["published"]}
    assert published["KD on random noise"]["ours"] == "noise/kd" and published["KD on random noise"]["mean"] >= 0
    assert published["DAFL, data-free (Chen et al. 2019)"]["ours"] in ("none/synth", "none/synth+weighted")
    assert published["meta-data KD (Lopes et al. 2017)"]["mean"] is None
    paths = write_report(summary, methods, transfers, tmp_path, "mnist-test", "penact distill --dataset mnist ...",
                         {"split": "test", "device": "cpu"}, benchmark, quick=True)
    markdown = paths[0].read_text()
    assert "# Distillation on mnist" in markdown and "**QUICK RUN**" in markdown and "| 88.01 |" in markdown
    assert "The shared pool" in markdown and json.loads(paths[1].read_text())["quick"] is True


def test_validation_split_holds_out_the_end_of_the_training_split():
    full, validation = load_digits_split(), get_dataset("digits-validation").load()
    assert torch.equal(validation.train_images, full.train_images[:-270])
    assert torch.equal(validation.test_images, full.train_images[-270:])
    assert torch.equal(validation.test_labels, full.train_labels[-270:])
    assert get_dataset("mnist-validation").teacher_epochs == get_dataset("mnist").teacher_epochs
    with pytest.raises(ValueError, match="split must be one of"):
        split_dataset("mnist", "train")


def test_cli_resolves_the_benchmark_quick_and_given_settings():
    parse = cli.build_parser().parse_args
    config, grid = distill_cli.resolve(parse(["distill"]))
    assert config == DistillConfig() and grid["transfers"] == ["in-domain", "corrupted", "partial", "none"]
    assert grid["teacher_epochs"] == 20 and grid["seeds"] == [0, 1, 2, 3, 4] and grid["family"] == "sphere"
    config, grid = distill_cli.resolve(parse(["distill", "--dataset", "mnist"]))
    assert config == get_benchmark("mnist").config and "shifted" in grid["transfers"] and grid["teacher_epochs"] == 9
    config, grid = distill_cli.resolve(parse(["distill", "--dataset", "mnist", "--quick", "--steps", "7",
                                              "--checkpoint-dir", "ck"]))
    quick = get_benchmark("mnist").quick
    assert config.steps == 7 and config.pool_size == quick["pool_size"] and config.checkpoint_every == 250
    assert grid["seeds"] == [0] and grid["transfers"] == list(quick["transfers"])
    assert distill_cli.resolve(parse(["distill", "--seed-list", "3,4"]))[1]["seeds"] == [3, 4]
    with pytest.raises(SystemExit):
        parse(["distill", "--seed-list", "3,3"])
    assert distill_cli.report_name("mnist", "validation", True).endswith("-validation-quick")
    assert distill_cli.report_name("digits", "test", False).count("-") == 3  # distill-YYYY-MM-DD, as before


def test_cli_parses_distill():
    args = cli.build_parser().parse_args(["distill", "--methods", "kd,synth+weighted", "--transfers", "partial,none",
                                          "--seeds", "2", "--steps", "10"])
    assert args.methods == ["kd", "synth+weighted"] and args.transfers == ["partial", "none"]
    assert args.seeds == 2 and args.steps == 10 and callable(args.handler)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["distill", "--methods", "mixup"])
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["distill", "--transfers", "rotated"])


@pytest.mark.parametrize("argv, message", [(["--device", "tpu"], "device must be cpu, cuda or cuda:<index>"),
                                           (["--device", "cuda:99"], "'cuda:99' was asked for, but")])
def test_commands_refuse_a_device_torch_does_not_have(argv, message, capsys):
    for command in ("demo", "distill", "generate"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args([command, *argv])
        assert message in capsys.readouterr().err


# -- the README's example ----------------------------------------------------------------------

def readme_example() -> str:
    """The README's distillation example, the python block that builds a ``Distiller``: run as written."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (example,) = [block for block in blocks if "Distiller(" in block]
    return example



def test_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's Distiller example, verbatim (README.md carries the same text), run twice: the
    second run resumes from the first one's checkpoint at its last step."""
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        namespace = {}
        exec(compile(readme_example(), "README example", "exec"), namespace)
        assert namespace["distiller"].step == 300
    first, second = capsys.readouterr().out.splitlines()
    assert first.split(",")[0] == second.split(",")[0]  # the same student
    assert float(first.split()[1].rstrip("%,")) > 80  # chance: 10%; about 92% (the teacher's accuracy)
    assert (tmp_path / "distill.pt").exists()


# -- no host synchronization inside a step (CUDA) -----------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("transfer", ["tensor", "loader"])
def test_a_kd_step_never_makes_the_host_wait_for_the_gpu(teacher_state, transfer):
    """``torch.cuda.set_sync_debug_mode("error")`` raises at any synchronizing call (``.item()``,
    ``.tolist()``, a blocking copy, ...). ``kd`` steps call no penact operator (on CUDA an operator
    reads its value checks back, one synchronization per call, unless inside
    ``penact.ops.skip_device_checks()``)."""
    images = load_digits_split().train_images
    data = images if transfer == "tensor" else DataLoader(images, batch_size=32, pin_memory=True)
    distiller = _distiller(teacher_state, "kd", data, device="cuda")
    distiller.train(until_step=2)  # the first steps allocate and tune (cuDNN): outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(60):  # across an epoch's end (the order is copied once per epoch)
            distiller._training_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
