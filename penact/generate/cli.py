"""Train class-conditional VAEs and GANs whose condition is the teacher's penultimate activation
(both families), and their one-hot baselines, on digits or MNIST; judge them and write the report.

Per seed: the data set's teacher (``prepare_teacher``: a CNN on digits, LeNet-5 on MNIST), the judge
(a pixel MLP trained on the same training images, another architecture), both families fitted to
the teacher's activations; then every model is trained and generates ``--per-class`` images per
class, scored by teacher and judge fidelity, the Frechet distance in the judge's features to the
real test split, and intra-class diversity. Writes <out>/<name>.md and .json (mean +- std over
seeds, the targets of the issue) and, for the first seed, a PNG grid per model
(<out>/<name>/<model>.png: one row per class).

``--validation`` holds out part of the training split (a fixed draw) and uses it in place of the
test split: the judge, the families and the generators see the rest (the teacher, trained by
``prepare_teacher``, has seen all of it). ``--quick`` is a smoke run of a few minutes.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import multiprocessing
import os
import resource
import shlex
import statistics
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._random import stream_seed
from ..experiments import (
    DATASETS,
    add_device_argument,
    device_name,
    fit_distribution,
    get_dataset,
    prepare_teacher,
    source_state,
)
from ..models import accuracy, train_classifier
from .families import FAMILIES, LatentSpace, calibrated, shuffle_within_class
from .metrics import Judges
from .networks import DISCRIMINATORS, JudgeMLP
from .trainers import CONSISTENCY_READINGS, MODELS, VAE_CONDITIONS, TrainConfig, parse_model, train_model


@dataclass(frozen=True)
class Recipe:
    """A data set's defaults for ``penact generate``: the generators' ``config``, the judge (a
    :class:`JudgeMLP` of widths ``judge_widths``, trained ``judge_epochs`` with ``judge_options``
    for ``train_classifier``), the size of the ``--validation`` split, the label-free fidelity
    target per family, and what ``--quick`` changes."""

    config: TrainConfig
    judge_epochs: int
    judge_widths: tuple[int, int]
    validation_size: int
    fidelity_targets: dict
    quick: dict
    judge_options: dict = field(default_factory=dict)
    fit: str = "mle"


RECIPES = {
    # The settings of the 8x8 digits report (benchmarks/results/generate-2026-11-25.md).
    "digits": Recipe(TrainConfig(), judge_epochs=60, judge_widths=(256, 64), validation_size=300,
                     fidelity_targets={"sphere": 0.85, "rectified": 0.85},
                     quick={"seeds": 1, "vae_steps": 300, "gan_steps": 300}),
    # MNIST: conv networks; the settings chosen by single runs on the validation split
    # (docs/generate.md, which also has the grid's measured cost). The VAEs' class scale is
    # sqrt(84), LeNet-5's sqrt(D): a clear reading p(y|a) as long as the direction beside it.
    "mnist": Recipe(TrainConfig(vae_steps=3000, gan_steps=1000, architecture="conv", width=32,
                                discriminator_lr=2e-4, discriminator="both", onehot_discriminator="auxiliary",
                                style_weight=4.0, vae_class_scale=9.17, gan_class_scale=1.0,
                                consistency_reading="activation", vae_condition="reading"),
                    judge_epochs=8, judge_widths=(512, 128), validation_size=10000,
                    fidelity_targets={"sphere": 0.95, "rectified": 0.90},
                    quick={"seeds": 1, "teacher_epochs": 2, "judge_epochs": 2, "vae_steps": 200, "gan_steps": 150,
                           "per_class": 50},
                    judge_options={"lr": 1e-3, "batch_size": 128}, fit="calibrated"),
}

# Options whose default comes from the data set's recipe (its TrainConfig, or the recipe itself).
CONFIG_OPTIONS = ("vae_steps", "gan_steps", "batch_size", "discriminator_lr", "consistency", "free_kl", "width",
                  "discriminator", "onehot_discriminator", "style_weight", "vae_class_scale", "gan_class_scale",
                  "consistency_reading", "prior_condition_share", "vae_condition")
RUN_OPTIONS = ("seeds", "teacher_epochs", "judge_epochs", "per_class", "fit")


def _choices(allowed: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        chosen = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in chosen if item not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"choose a comma-separated subset of {','.join(allowed)}, got {text!r}")
        return chosen
    return parse


def _class_scale(text: str) -> float | str:
    """A ``--*-class-scale``: a positive number, or ``"none"`` (resolved to ``None`` by :func:`resolve`:
    an option's own ``None`` means "not given")."""
    if text == "none":
        return text
    scale = float(text)
    if not scale > 0:
        raise argparse.ArgumentTypeError(f"a class scale must be positive or 'none', got {text!r}")
    return scale


def add_arguments(parser: argparse.ArgumentParser) -> None:
    recipe = "(default: the data set's recipe, docs/generate.md)"
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="digits", help="default: %(default)s")
    parser.add_argument("--models", type=_choices(MODELS), default=list(MODELS), help="default: all of %(default)s")
    parser.add_argument("--families", type=_choices(FAMILIES), default=list(FAMILIES), help="default: %(default)s")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0 .. N-1 (default: 3)")
    parser.add_argument("--teacher-epochs", type=int, default=None, help="(default: the data set's teacher recipe)")
    parser.add_argument("--judge-epochs", type=int, default=None, help=recipe)
    parser.add_argument("--vae-steps", type=int, default=None, help=recipe)
    parser.add_argument("--gan-steps", type=int, default=None, help=recipe)
    parser.add_argument("--batch-size", type=int, default=None, help=recipe)
    parser.add_argument("--width", type=int, default=None, help="the conv networks' channels " + recipe)
    parser.add_argument("--discriminator-lr", type=float, default=None,
                        help="the GAN discriminator's Adam learning rate (the generator's is 2e-4) " + recipe)
    parser.add_argument("--discriminator", choices=DISCRIMINATORS, default=None,
                        help="the penact GANs' discriminator heads " + recipe)
    parser.add_argument("--onehot-discriminator", choices=DISCRIMINATORS, default=None,
                        help="the one-hot GAN's discriminator heads " + recipe)
    parser.add_argument("--style-weight", type=float, default=None,
                        help="the weight of the VAE style code's KL " + recipe)
    parser.add_argument("--prior-condition-share", type=float, default=None,
                        help="the labelled VAEs: the share of each batch whose decoder reads a draw of the class prior "
                             "p(a|y) in place of the posterior draw (docs/generate.md) " + recipe)
    for kind in ("vae", "gan"):
        parser.add_argument(f"--{kind}-class-scale", type=_class_scale, default=None,
                            help=f"the class in the {kind.upper()}s' condition: the one-hot label times it, the "
                                 "teacher's reading p(y|a) times it beside the penact networks' direction; 'none': "
                                 "the label as it is and the direction alone " + recipe)
    parser.add_argument("--vae-condition", choices=VAE_CONDITIONS, default=None,
                        help="what the penact VAEs' networks read of an activation a: its direction (after the "
                             "scaled reading), or the scaled reading p(y|a) alone, the style left to the style code "
                             + recipe)
    parser.add_argument("--consistency-reading", choices=CONSISTENCY_READINGS, default=None,
                        help="how the penact GAN's consistency term reads a generated image's activation a: at its "
                             "point on the family's support, or a itself (the teacher's logits) " + recipe)
    parser.add_argument("--fit", choices=("mle", "calibrated", "calibrated-share"), default=None,
                        help="the families' fit: maximum likelihood, or its spread rescaled so that the draws are "
                             "as class-clear as the real activations: in mean margin, or (calibrated-share) in the "
                             "share the teacher reads as their class (penact.generate.families.calibrated) " + recipe)
    parser.add_argument("--consistency", type=float, default=None,
                        help="weight of the penact GAN's consistency term " + recipe)
    parser.add_argument("--free-kl", choices=("joint", "mixture"), default=None,
                        help="the label-free VAE's KL " + recipe)
    parser.add_argument("--per-class", type=int, default=None, help="generated images per class for the scores "
                                                                    "(default: 100)")
    parser.add_argument("--validation", action="store_true",
                        help="score against a split held out from the training images, not the test split")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one seed, few steps (a few minutes)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="load and save the teachers there")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default=None, help="file stem (default: generate[-<dataset>]-<date>)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (of each worker with --jobs > 1: default 1)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="worker processes for the seeds and models, CPU only (default: %(default)s; on a "
                             "2-core CPU --jobs 2 keeps both cores busy, which one process's small ops do not)")
    add_device_argument(parser)
    parser.add_argument("--log-every", type=int, default=100,
                        help="steps between readings of the losses (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true")


def resolve(args: argparse.Namespace) -> tuple[TrainConfig, dict]:
    """The run's ``TrainConfig`` and settings: an option given on the command line, else ``--quick``'s
    value, else the data set's recipe (``seeds`` 3, ``per_class`` 100, ``teacher_epochs`` the
    data set's)."""
    recipe = RECIPES[args.dataset]
    quick = recipe.quick if args.quick else {}
    base = {"seeds": 3, "teacher_epochs": get_dataset(args.dataset).teacher_epochs, "per_class": 100,
            "judge_epochs": recipe.judge_epochs, "fit": recipe.fit, **asdict(recipe.config)}
    chosen = {name: getattr(args, name) if getattr(args, name) is not None else quick.get(name, base[name])
              for name in CONFIG_OPTIONS + RUN_OPTIONS}
    chosen = {name: None if value == "none" else value for name, value in chosen.items()}
    config = dataclasses.replace(recipe.config, **{name: chosen[name] for name in CONFIG_OPTIONS})
    return config, chosen


def _runs(models: list[str], families: list[str]) -> list[tuple[str, str | None]]:
    """(model, family) pairs: the one-hot baselines have no family."""
    runs = []
    for model in models:
        if parse_model(model)[1] == "onehot":
            runs.append((model, None))
        else:
            runs.extend((model, family) for family in families)
    return runs


def _label(model: str, family: str | None) -> str:
    return model if family is None else f"{model} ({family})"


def _save_grid(images: torch.Tensor, labels: torch.Tensor, columns: int, path: Path) -> None:
    """One row per class, ``columns`` images each, dark ink on white; small images (8x8) are scaled
    up to at least 32 pixels a side."""
    import matplotlib.pyplot as plt

    classes = int(labels.max()) + 1
    pad, scale = 1, max(1, 32 // images.shape[-1])
    size = images.shape[-1] + pad
    canvas = torch.ones(classes * size + pad, columns * size + pad)
    for c in range(classes):
        for k, image in enumerate(images[labels == c][:columns]):
            canvas[pad + c * size:(c + 1) * size, pad + k * size:(k + 1) * size] = 1 - image[0]
    canvas = canvas.repeat_interleave(scale, dim=0).repeat_interleave(scale, dim=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, canvas.numpy(), cmap="gray", vmin=0, vmax=1)


def _balanced(labels: torch.Tensor, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``per_class`` rows of every class (fewer where a class has fewer), drawn from ``generator``."""
    picks = []
    for c in range(int(labels.max()) + 1):
        rows = (labels == c).nonzero().squeeze(1).cpu()
        picks.append(rows[torch.randperm(rows.shape[0], generator=generator)[:per_class]])
    return torch.cat(picks).to(labels.device)


def condition_clarity(space: LatentSpace, features: torch.Tensor, labels: torch.Tensor, seed: int,
                      per_class: int = 1000) -> dict:
    """How class-clear the teacher finds, per class: its own samples ``a ~ p(a | y)`` (``per_class``
    each: the condition a penact generator decodes, whose ambiguity a faithful generator inherits),
    its real activations ``features: [N, D]`` of the training images of class ``labels``, and those
    activations shuffled within their class coordinate by coordinate (:func:`shuffle_within_class`:
    the real per-class marginals with the family's independence). Share read as the class and mean
    margin of each (:meth:`LatentSpace.reading`)."""
    generator = torch.Generator().manual_seed(stream_seed(seed, space.family, "reading"))
    sample_labels = torch.arange(space.num_classes, device=labels.device).repeat_interleave(per_class)
    sets = {"samples": (space.prior_sample(sample_labels, generator), sample_labels),
            "real": (space.embed(features), labels),
            "shuffled": (space.embed(shuffle_within_class(features, labels, generator)), labels)}
    clarity = {}
    for name, (a, a_labels) in sets.items():
        clarity[name], clarity[f"{name}_margin"], clarity[f"{name}_margin_std"] = space.reading(
            a.to(space.distribution.weight.dtype), a_labels)
    return clarity


def _split(data, validation_size: int, validation: bool):
    """``(train_images, train_labels, reference_images, reference_labels)``: the training split and
    the test split, or (``validation``) the training split less ``validation_size`` images drawn by a
    fixed permutation, and those images."""
    if not validation:
        return data.train_images, data.train_labels, data.test_images, data.test_labels
    order = torch.randperm(data.train_labels.shape[0], generator=torch.Generator().manual_seed(stream_seed("validation")))
    held, kept = order[:validation_size], order[validation_size:]
    return data.train_images[kept], data.train_labels[kept], data.train_images[held], data.train_labels[held]


@dataclass
class Split:
    """The images of a run, on its device: training images and the reference (test or validation) split."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


@dataclass
class SeedSetup:
    """What every model of a seed shares: the teacher, the judges, the fitted latent spaces and the
    seed's reference scores (teacher and judge accuracy, real images, the conditions' clarity)."""

    seed: int
    teacher: torch.nn.Module
    judges: Judges
    spaces: dict
    reference: dict


def prepare_seed(args: argparse.Namespace, settings: dict, split: Split, seed: int) -> SeedSetup:
    """The seed's teacher (``prepare_teacher``), judge (trained here), families and references (with
    the preparation's CPU time, ``prepare_cpu_seconds``)."""
    recipe = RECIPES[args.dataset]
    cpu_started = time.process_time()
    teacher = prepare_teacher(seed, settings["teacher_epochs"], cache_dir=args.cache_dir, device=args.device,
                              dataset=args.dataset)
    torch.manual_seed(stream_seed(seed, "judge"))
    judge = JudgeMLP(split.num_classes, math.prod(split.train_images.shape[1:]), *recipe.judge_widths).to(args.device)
    train_classifier(judge, split.train_images, split.train_labels, settings["judge_epochs"],
                     seed=stream_seed(seed, "judge"), progress=False, **recipe.judge_options)
    judges = Judges(teacher, judge, split.test_images, split.test_labels)
    # Real training images scored like a generated set of the same size: the floor of each score.
    real = _balanced(split.train_labels, settings["per_class"], torch.Generator().manual_seed(stream_seed(seed, "real")))
    reference = {"seed": seed, "teacher_test_accuracy": accuracy(teacher, split.test_images, split.test_labels),
                 "judge_test_accuracy": accuracy(judge, split.test_images, split.test_labels),
                 "real_train_split": asdict(judges.score(split.train_images[real], split.train_labels[real]))}
    with torch.no_grad():
        features = teacher.features(split.train_images)
    families = dict.fromkeys(f for _, f in _runs(args.models, args.families) if f is not None)
    spaces = {}
    for family in families:
        distribution = fit_distribution(family, teacher, split.train_images, split.train_labels)
        if settings["fit"] != "mle":
            distribution, factor = calibrated(distribution, features, split.train_labels, stream_seed(seed, "fit"),
                                              target="share" if settings["fit"] == "calibrated-share" else "margin")
            reference.setdefault("spread_factor", {})[family] = factor
        spaces[family] = LatentSpace(distribution)
    reference["condition_clarity"] = {family: condition_clarity(space, features, split.train_labels, seed)
                                      for family, space in spaces.items()}
    reference["prepare_cpu_seconds"] = time.process_time() - cpu_started
    return SeedSetup(seed, teacher, judges, spaces, reference)


def train_and_score(args: argparse.Namespace, settings: dict, split: Split, config: TrainConfig, setup: SeedSetup,
                    model: str, family: str | None) -> tuple[dict, torch.Tensor]:
    """Trains ``model`` (of ``family``) for the seed of ``setup``; its record and its generated images
    (``per_class`` of every class, on the CPU). The record's ``task_cpu_seconds`` is the CPU time of
    all of it (training, generation, scores), ``train_cpu_seconds`` that of the training loop."""
    cpu_started = time.process_time()
    seed, mode = setup.seed, parse_model(model)[1]
    result = train_model(model, setup.teacher, setup.spaces.get(family), split.train_images,
                         None if mode == "free" else split.train_labels, config, seed=stream_seed(seed, model, family),
                         progress=not args.no_progress and args.jobs == 1, log_every=args.log_every)
    labels = torch.arange(split.num_classes, device=args.device).repeat_interleave(settings["per_class"])
    images = result.generator.generate(labels, torch.Generator().manual_seed(stream_seed(seed, model, family, "evaluate")))
    record = {"model": model, "family": family, "seed": seed, "train_seconds": result.seconds,
              "train_cpu_seconds": result.cpu_seconds, "final_losses": result.final_losses,
              **asdict(setup.judges.score(images, labels))}
    record["task_cpu_seconds"] = time.process_time() - cpu_started
    return record, images.cpu()


_WORKER: dict = {}


def _start_worker(threads: int, shared: tuple) -> None:
    """A worker process: one torch thread per worker (the workers share the cores), and the run's
    arguments and images, inherited from the parent at the fork rather than pickled."""
    torch.set_num_threads(threads)
    _WORKER["shared"] = shared


def _in_worker(task, *arguments):
    return task(*_WORKER["shared"], *arguments)


class _InProcess:
    """The executor of ``--jobs 1``: each task runs at once, in this process."""

    def __init__(self, shared: tuple):
        self.shared = shared

    def submit(self, task, *arguments) -> Future:
        future = Future()
        future.set_result(task(*self.shared, *arguments))
        return future

    def shutdown(self) -> None:
        pass


def run(args: argparse.Namespace, config: TrainConfig, settings: dict, name: str) -> dict:
    """Every seed and model on ``args.device``: teachers, judges, families, training, generation and
    scores there (the real images are moved there; the grids are drawn from CPU copies).

    With ``args.jobs > 1`` the seeds' preparations, then the models, run as tasks in that many worker
    processes (CPU only), each on ``args.threads`` threads (default 1). Every task draws from its own
    seeded streams, so the results are those of ``--jobs 1``; the longest tasks (the GANs) go first."""
    spec, recipe = get_dataset(args.dataset), RECIPES[args.dataset]
    data = spec.load()
    split = Split(*(t.to(args.device) for t in _split(data, recipe.validation_size, args.validation)),
                  num_classes=data.num_classes)
    shared = (args, settings, split)
    if args.jobs == 1:
        executor = _InProcess(shared)
        submit = lambda task, *arguments: executor.submit(task, *arguments)
    else:
        executor = ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork"),
                                       initializer=_start_worker, initargs=(args.threads or 1, shared))
        submit = lambda task, *arguments: executor.submit(_in_worker, task, *arguments)
    seeds = range(settings["seeds"])
    setups = [future.result() for future in [submit(prepare_seed, seed) for seed in seeds]]
    runs = _runs(args.models, args.families)
    tasks = sorted(((seed, index) for seed in seeds for index in range(len(runs))),
                   key=lambda task: parse_model(runs[task[1]][0])[0] != "gan")
    futures = {submit(train_and_score, config, setups[seed], *runs[index]): (seed, index) for seed, index in tasks}
    results = {}
    bar = tqdm(total=len(futures), desc="generate", unit="model", disable=args.no_progress)
    for future in as_completed(futures):
        results[futures[future]] = future.result()
        record = results[futures[future]][0]
        bar.update(1)
        bar.set_postfix_str(f"seed {record['seed']} {_label(record['model'], record['family'])}: "
                            f"judge {100 * record['judge_fidelity']:.1f}%")
    bar.close()
    executor.shutdown()
    eval_labels = torch.arange(split.num_classes).repeat_interleave(settings["per_class"])
    for index, (model, family) in enumerate(runs):
        _save_grid(results[0, index][1], eval_labels, min(10, settings["per_class"]),
                   args.out / name / f"{model}{'' if family is None else '-' + family}.png")
    _save_grid(split.test_images.cpu(), split.test_labels.cpu(), 10, args.out / name / "real-test.png")
    return {"records": [results[seed, index][0] for seed in seeds for index in range(len(runs))],
            "references": [setup.reference for setup in setups]}


METRICS = ("teacher_fidelity", "judge_fidelity", "frechet", "diversity", "train_cpu_seconds")


def projected_wall_seconds(records: list[dict], references: list[dict], workers: int) -> float:
    """The wall time :func:`run`'s tasks would take in ``workers`` processes of one thread on as many
    free cores, from the CPU time each took (``prepare_cpu_seconds``, ``task_cpu_seconds``): the
    seeds' preparations, then, once all are done, the models in the order ``run`` submits them (GANs
    first), each to the first worker free, as the process pool hands them out. The parent's own work
    (loading the data, drawing the grids) is left out; CPU times measured on a loaded machine run
    long, so the projection from them does too."""
    def finish(durations: list[float], start: float) -> float:
        free = [start] * workers
        for duration in durations:
            free[free.index(min(free))] += duration
        return max(free)

    prepared = finish([r["prepare_cpu_seconds"] for r in references], 0.0)
    ordered = sorted(records, key=lambda r: parse_model(r["model"])[0] != "gan")
    return finish([r["task_cpu_seconds"] for r in ordered], prepared)


def summarize(records: list[dict]) -> dict:
    """Mean and sample std over seeds of every metric, per ``model (family)``."""
    table: dict[str, dict] = {}
    for key in dict.fromkeys(_label(r["model"], r["family"]) for r in records):
        rows = [r for r in records if _label(r["model"], r["family"]) == key]
        table[key] = {"seeds": len(rows)}
        for metric in METRICS:
            values = [r[metric] for r in rows]
            table[key][metric] = {"mean": statistics.fmean(values),
                                  "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return table


def paired_difference(records: list[dict], ours: str, theirs: str, metric: str) -> tuple[float, float]:
    """Mean and standard error over seeds of ``metric(ours) - metric(theirs)``, paired by seed
    (``ours``, ``theirs``: ``model (family)`` labels; se 0 with one seed)."""
    by_seed = {key: {r["seed"]: r[metric] for r in records if _label(r["model"], r["family"]) == key}
               for key in (ours, theirs)}
    differences = [by_seed[ours][s] - by_seed[theirs][s] for s in by_seed[ours] if s in by_seed[theirs]]
    se = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else 0.0
    return statistics.fmean(differences), se


def targets(records: list[dict], table: dict, families: list[str], fidelity_targets: dict) -> list[dict]:
    """The issue's claims: the label-free models' judge fidelity (mean over seeds) against the
    family's target; the labelled penact models at least as faithful as their one-hot twin and no
    worse in Frechet distance, paired by seed, within 2 standard errors of the difference."""
    verdicts = []
    for family in families:
        for kind in ("vae", "gan"):
            free, floor = table.get(f"{kind}-free ({family})"), fidelity_targets[family]
            if free is not None:
                fidelity = free["judge_fidelity"]["mean"]
                verdicts.append({"target": f"{kind}-free ({family}): judge fidelity >= {100 * floor:.0f}%",
                                 "measured": f"{100 * fidelity:.1f}%", "met": fidelity >= floor})
            ours, theirs = f"{kind}-labelled ({family})", f"{kind}-onehot"
            if ours in table and theirs in table:
                for metric, sign, scale, what in (("judge_fidelity", 1, 100, "judge fidelity at least"),
                                                  ("frechet", -1, 1, "Frechet distance at most")):
                    mean, se = paired_difference(records, ours, theirs, metric)
                    verdicts.append({"target": f"{ours} {what} {theirs}'s (paired, within 2 se)",
                                     "measured": f"{scale * table[ours][metric]['mean']:.2f} vs "
                                                 f"{scale * table[theirs][metric]['mean']:.2f}, difference "
                                                 f"{scale * mean:+.2f} ± {scale * se:.2f} (se)",
                                     "met": sign * mean >= -2 * se})
    return verdicts


def _cell(entry: dict, metric: str) -> str:
    mean, std = entry[metric]["mean"], entry[metric]["std"]
    if metric.endswith("fidelity"):
        return f"{100 * mean:.1f} ± {100 * std:.1f}"
    return f"{mean:.2f} ± {std:.2f}" if metric != "train_cpu_seconds" else f"{mean:.0f}"


def _clarity_lines(refs: list[dict]) -> list[str]:
    lines = ["| family | samples read % | margin (sd) | real read % | margin (sd) | shuffled real read % | margin (sd) |",
             "|---|---|---|---|---|---|---|"]
    for family in refs[0]["condition_clarity"]:
        cells = []
        for key in ("samples", "real", "shuffled"):
            shares = [r["condition_clarity"][family][key] for r in refs]
            margin, spread = (statistics.fmean(r["condition_clarity"][family][f"{key}_{part}"] for r in refs)
                              for part in ("margin", "margin_std"))
            cells += [" / ".join(f"{100 * v:.1f}" for v in shares), f"{margin:.2f} ({spread:.2f})"]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return lines


def _markdown(summary: dict, command: str, settings: dict, name: str) -> str:
    refs = summary["references"]
    mean = lambda key: statistics.fmean(r[key] for r in refs)
    real = {k: statistics.fmean(r["real_train_split"][k] for r in refs) for k in refs[0]["real_train_split"]}
    split = "a validation split held out from the training images" if summary["validation"] else "the test split"
    lines = [f"# Generator transfer on {summary['dataset']} ({summary['date']})", "",
             f"Command: `{command}`  ", (f"Commit: `{summary['commit']}`"
                                         + (f" with uncommitted changes to {', '.join(summary['uncommitted'])}"
                                            if summary.get("uncommitted") else "")
                                         + f", torch {summary['torch']}, "
                                         f"{summary['jobs']} process(es) of {summary['threads']} thread(s), on "
                                         f"{summary['device']}  "),
             (f"Wall time {summary['wall_seconds'] / 60:.1f} min, CPU time {summary['cpu_seconds'] / 60:.1f} min "
              f"(all processes); load average {summary['load_before']:.1f} before, {summary['load_after']:.1f} after "
              "(other work shares the machine)  "),
             *([] if summary["projected_two_core_wall_seconds"] is None else [
                 f"Projected on 2 free cores (`--jobs 2`, one thread each, from each task's CPU time here: "
                 f"`projected_wall_seconds`): {summary['projected_two_core_wall_seconds'] / 60:.1f} min  "]),
             "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), "",
             (f"Scored against {split}. Teacher test accuracy {100 * mean('teacher_test_accuracy'):.2f}%, judge "
              f"(pixel MLP) {100 * mean('judge_test_accuracy'):.2f}% (means over {len(refs)} seeds). Real training "
              f"images ({settings['per_class']} per class) scored like generated ones: teacher "
              f"{100 * real['teacher_fidelity']:.1f}%, judge {100 * real['judge_fidelity']:.1f}%, Frechet "
              f"{real['frechet']:.2f} (the floor at this size), diversity {real['diversity']:.2f}."), "",
             ("Fidelity: % of images generated for class y that the classifier assigns to y. Frechet: distance "
              "between Gaussians fitted to the judge's features (its last hidden layer) of the generated images and "
              "of the real reference images (lower is better). Diversity: mean pairwise feature distance within a "
              "class, relative to real images (1 = as varied). Mean ± std over seeds."), "",
             "| model | teacher fidelity % | judge fidelity % | Frechet | diversity | train CPU s |",
             "|---|---|---|---|---|---|"]
    for key, entry in summary["table"].items():
        lines.append(f"| {key} | " + " | ".join(_cell(entry, m) for m in METRICS) + " |")
    lines += ["", "## The condition's class clarity", "",
              ("The share of activations the teacher reads as their class (per seed) and the margin "
               "`log p(y|a) - max_{k != y} log p(k|a)` (its mean and, in brackets, its std, each averaged over "
               "seeds): the family's samples `a ~ p(a | y)` (what a penact generator decodes), the real training "
               "activations, and the real activations shuffled coordinate by coordinate within their class (the "
               "real per-class marginals under the family's independence of coordinates)."), ""]
    lines += _clarity_lines(refs)
    lines += ["", "## Targets", ""]
    lines += [f"- {'met' if v['met'] else 'MISSED'}: {v['target']}: {v['measured']}" for v in summary["targets"]]
    lines += ["", (f"Sample grids (seed 0, one row per class): `{name}/<model>-<family>.png`, real reference images "
                   f"in `{name}/real-test.png`."), ""]
    return "\n".join(lines)


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished worker processes."""
    return sum(usage.ru_utime + usage.ru_stime
               for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    config, settings = resolve(args)
    if settings["seeds"] < 1 or settings["per_class"] < 2:
        raise SystemExit("penact generate: --seeds must be >= 1 and --per-class >= 2")
    if args.jobs < 1 or (args.jobs > 1 and args.device.type != "cpu"):
        raise SystemExit("penact generate: --jobs must be >= 1, and 1 on a GPU (one process keeps it busy)")
    stem = "generate" if args.dataset == "digits" else f"generate-{args.dataset}"
    name = args.name or f"{stem}-{datetime.date.today().isoformat()}"
    load_before, wall, cpu = os.getloadavg()[0], time.perf_counter(), _cpu_seconds()
    results = run(args, config, settings, name)
    commit, uncommitted = source_state(short=True)
    table = summarize(results["records"])
    summary = {"date": datetime.date.today().isoformat(), "dataset": args.dataset, "validation": args.validation,
               "commit": commit or "unknown", "uncommitted": uncommitted, "torch": torch.__version__, "jobs": args.jobs,
               "threads": torch.get_num_threads() if args.jobs == 1 else args.threads or 1,
               "device": device_name(args.device), "wall_seconds": time.perf_counter() - wall,
               "cpu_seconds": _cpu_seconds() - cpu, "load_before": load_before,
               "load_after": os.getloadavg()[0], "table": table,
               "projected_two_core_wall_seconds": (projected_wall_seconds(results["records"], results["references"], 2)
                                                   if args.device.type == "cpu" else None),
               "targets": targets(results["records"], table, args.families, RECIPES[args.dataset].fidelity_targets),
               **results}
    settings = {**settings, "architecture": config.architecture}
    command = "penact " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps({**summary, "settings": settings, "command": command}, indent=1))
    (args.out / f"{name}.md").write_text(_markdown(summary, command, settings, name))
    print(f"wrote {args.out / name}.md, .json and {args.out / name}/*.png")
    for verdict in summary["targets"]:
        print(f"{'met ' if verdict['met'] else 'MISS'}  {verdict['target']}: {verdict['measured']}")
    return 0
