"""Train class-conditional VAEs and GANs whose condition is the teacher's penultimate activation
(both families), and their one-hot baselines, on digits; judge them and write the report.

Per seed: the teacher CNN (as in ``penact distill``), the judge (a pixel MLP trained on the same
split, another architecture), both families fitted to the teacher's activations; then every model
is trained and generates ``--per-class`` images per class, scored by teacher and judge fidelity,
the Frechet distance in the judge's features to the real test split, and intra-class diversity.
Writes <out>/<name>.md and .json (mean +- std over seeds, the targets of the issue) and, for the
first seed, a PNG grid per model (<out>/<name>/<model>.png: one row per class).
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._random import stream_seed
from ..data import load_digits_split
from ..experiments import add_device_argument, device_name, fit_distribution, git, prepare_teacher
from ..models import accuracy, train_classifier
from .families import FAMILIES, LatentSpace
from .metrics import Judges
from .networks import JudgeMLP
from .trainers import MODELS, TrainConfig, parse_model, train_model

JUDGE_EPOCHS = 60
FIDELITY_TARGET = 0.85


def _choices(allowed: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        chosen = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in chosen if item not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"choose a comma-separated subset of {','.join(allowed)}, got {text!r}")
        return chosen
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--models", type=_choices(MODELS), default=list(MODELS), help="default: all of %(default)s")
    parser.add_argument("--families", type=_choices(FAMILIES), default=list(FAMILIES), help="default: %(default)s")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (default: %(default)s)")
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--judge-epochs", type=int, default=JUDGE_EPOCHS)
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps)
    parser.add_argument("--gan-steps", type=int, default=defaults.gan_steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--discriminator-lr", type=float, default=defaults.discriminator_lr,
                        help="the GAN discriminator's Adam learning rate (default: %(default)s; "
                             "the generator's is 2e-4)")
    parser.add_argument("--consistency", type=float, default=defaults.consistency,
                        help="weight of the penact GAN's consistency term (default: %(default)s)")
    parser.add_argument("--free-kl", choices=("joint", "mixture"), default=defaults.free_kl,
                        help="the label-free VAE's KL (default: %(default)s)")
    parser.add_argument("--per-class", type=int, default=100, help="generated images per class for the scores")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default=None, help="file stem (default: generate-<date>)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    add_device_argument(parser)
    parser.add_argument("--log-every", type=int, default=100,
                        help="steps between readings of the losses (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true")


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
    """One row per class, ``columns`` images each, 8x8 pixels scaled by 4, dark ink on white."""
    import matplotlib.pyplot as plt

    classes = int(labels.max()) + 1
    pad, scale = 1, 4
    size = images.shape[-1] + pad
    canvas = torch.ones(classes * size + pad, columns * size + pad)
    for c in range(classes):
        for k, image in enumerate(images[labels == c][:columns]):
            canvas[pad + c * size:(c + 1) * size, pad + k * size:(k + 1) * size] = 1 - image[0]
    canvas = canvas.repeat_interleave(scale, dim=0).repeat_interleave(scale, dim=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, canvas.numpy(), cmap="gray", vmin=0, vmax=1)


def _sample_reading(space: LatentSpace, seed: int, per_class: int = 1000) -> float:
    """The share of the teacher's own samples ``a ~ p(a | y)`` that it reads as class ``y``: how
    class-clear the condition a penact generator decodes is (a generator faithful to it inherits that)."""
    labels = torch.arange(space.num_classes, device=space.distribution.weight.device).repeat_interleave(per_class)
    a = space.prior_sample(labels, torch.Generator().manual_seed(stream_seed(seed, space.family, "reading")))
    return float((space.class_log_posterior(a).argmax(dim=1) == labels).double().mean())


def run(args: argparse.Namespace, name: str) -> dict:
    """Every seed and model on ``args.device``: teachers, judges, families, training, generation and
    scores there (the real images are moved there; the grids are drawn from CPU copies)."""
    data = load_digits_split()
    device = args.device
    train_images, train_labels = data.train_images.to(device), data.train_labels.to(device)
    test_images, test_labels = data.test_images.to(device), data.test_labels.to(device)
    config = TrainConfig(vae_steps=args.vae_steps, gan_steps=args.gan_steps, batch_size=args.batch_size,
                         discriminator_lr=args.discriminator_lr, consistency=args.consistency, free_kl=args.free_kl)
    runs = _runs(args.models, args.families)
    num_classes = data.num_classes
    eval_labels = torch.arange(num_classes, device=device).repeat_interleave(args.per_class)
    records, references = [], []
    bar = tqdm(total=args.seeds * len(runs), desc="generate", unit="model", disable=args.no_progress)
    for seed in range(args.seeds):
        teacher = prepare_teacher(seed, args.teacher_epochs, device=device)
        torch.manual_seed(stream_seed(seed, "judge"))
        judge = JudgeMLP(num_classes).to(device)
        train_classifier(judge, train_images, train_labels, args.judge_epochs, seed=stream_seed(seed, "judge"),
                         progress=False)
        judges = Judges(teacher, judge, test_images, test_labels)
        real = judges.score(train_images, train_labels)
        references.append({"seed": seed, "teacher_test_accuracy": accuracy(teacher, test_images, test_labels),
                           "judge_test_accuracy": accuracy(judge, test_images, test_labels),
                           "real_train_split": asdict(real)})
        spaces = {family: LatentSpace(fit_distribution(family, teacher, train_images, train_labels))
                  for family in {f for _, f in runs if f is not None}}
        references[-1]["sample_reading"] = {family: _sample_reading(space, seed) for family, space in spaces.items()}
        for model, family in runs:
            bar.set_postfix_str(f"seed {seed} {_label(model, family)}")
            mode = parse_model(model)[1]
            result = train_model(model, teacher, spaces.get(family), train_images,
                                 None if mode == "free" else train_labels, config,
                                 seed=stream_seed(seed, model, family), progress=not args.no_progress,
                                 log_every=args.log_every)
            generator = torch.Generator().manual_seed(stream_seed(seed, model, family, "evaluate"))
            images = result.generator.generate(eval_labels, generator)
            scores = judges.score(images, eval_labels)
            records.append({"model": model, "family": family, "seed": seed, "train_seconds": result.seconds,
                            "final_losses": result.final_losses, **asdict(scores)})
            if seed == 0:
                _save_grid(images.cpu(), eval_labels.cpu(), min(10, args.per_class),
                           args.out / name / f"{model}{'' if family is None else '-' + family}.png")
            bar.update(1)
            bar.set_postfix_str(f"{_label(model, family)}: judge {100 * scores.judge_fidelity:.1f}%")
    bar.close()
    _save_grid(data.test_images, data.test_labels, 10, args.out / name / "real-test.png")
    return {"records": records, "references": references}


METRICS = ("teacher_fidelity", "judge_fidelity", "frechet", "diversity", "train_seconds")


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


def targets(table: dict, families: list[str]) -> list[dict]:
    """The issue's claims, each checked on the means over seeds."""
    verdicts = []
    for family in families:
        for kind in ("vae", "gan"):
            free = table.get(f"{kind}-free ({family})")
            if free is not None:
                fidelity = free["judge_fidelity"]["mean"]
                verdicts.append({"target": f"{kind}-free ({family}): judge fidelity >= {100 * FIDELITY_TARGET:.0f}%",
                                 "measured": f"{100 * fidelity:.1f}%", "met": fidelity >= FIDELITY_TARGET})
            labelled, baseline = table.get(f"{kind}-labelled ({family})"), table.get(f"{kind}-onehot")
            if labelled is not None and baseline is not None:
                for metric, better in (("judge_fidelity", lambda a, b: a >= b), ("frechet", lambda a, b: a <= b)):
                    ours, theirs = labelled[metric]["mean"], baseline[metric]["mean"]
                    scale = 100 if metric == "judge_fidelity" else 1
                    verdicts.append({"target": f"{kind}-labelled ({family}) {metric} at least as good as {kind}-onehot",
                                     "measured": f"{scale * ours:.2f} vs {scale * theirs:.2f}",
                                     "met": better(ours, theirs)})
    return verdicts


def _cell(entry: dict, metric: str) -> str:
    mean, std = entry[metric]["mean"], entry[metric]["std"]
    if metric.endswith("fidelity"):
        return f"{100 * mean:.1f} ± {100 * std:.1f}"
    return f"{mean:.2f} ± {std:.2f}" if metric != "train_seconds" else f"{mean:.0f}"


def _markdown(summary: dict, command: str, settings: dict, name: str) -> str:
    refs = summary["references"]
    mean = lambda key: statistics.fmean(r[key] for r in refs)  # noqa: E731
    real = {k: statistics.fmean(r["real_train_split"][k] for r in refs) for k in refs[0]["real_train_split"]}
    lines = [f"# Generator transfer on digits ({summary['date']})", "",
             f"Command: `{command}`  ", f"Commit: `{summary['commit']}`, torch {summary['torch']}, "
             f"{summary['threads']} threads, on {summary['device']}  ",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), "",
             f"Teacher (CNN) test accuracy {100 * mean('teacher_test_accuracy'):.1f}%, judge (pixel MLP) "
             f"{100 * mean('judge_test_accuracy'):.1f}% (means over {len(refs)} seeds). Real training images scored "
             f"like generated ones: teacher {100 * real['teacher_fidelity']:.1f}%, judge "
             f"{100 * real['judge_fidelity']:.1f}%, Frechet {real['frechet']:.2f} (the floor), diversity "
             f"{real['diversity']:.2f}.", "",
             "The teacher reads " + ", ".join(
                 f"{100 * statistics.fmean(r['sample_reading'][f] for r in refs):.1f}% of its {f} samples"
                 for f in refs[0]["sample_reading"]) + " as their class (per seed: " + "; ".join(
                 ", ".join(f"{f} {100 * v:.1f}%" for f, v in r["sample_reading"].items()) for r in refs)
             + "): the condition's own class clarity, which a faithful generator inherits.", "",
             "Fidelity: % of images generated for class y that the classifier assigns to y. Frechet: distance "
             "between Gaussians fitted to the judge's 64-wide features of the generated images and of the real "
             "test split (lower is better). Diversity: mean pairwise feature distance within a class, relative "
             "to real test images (1 = as varied). Mean ± std over seeds.", "",
             "| model | teacher fidelity % | judge fidelity % | Frechet | diversity | train s |",
             "|---|---|---|---|---|---|"]
    for key, entry in summary["table"].items():
        lines.append(f"| {key} | " + " | ".join(_cell(entry, m) for m in METRICS) + " |")
    lines += ["", "## Targets (issue 6)", ""]
    lines += [f"- {'met' if v['met'] else 'MISSED'}: {v['target']}: {v['measured']}" for v in summary["targets"]]
    lines += ["", f"Sample grids (seed 0, one row per class 0-9): `{name}/<model>-<family>.png`, real test images in "
              f"`{name}/real-test.png`.", ""]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.seeds < 1 or args.per_class < 2:
        raise SystemExit("penact generate: --seeds must be >= 1 and --per-class >= 2")
    name = args.name or f"generate-{datetime.date.today().isoformat()}"
    results = run(args, name)
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    table = summarize(results["records"])
    summary = {"date": datetime.date.today().isoformat(), "commit": commit, "torch": torch.__version__,
               "threads": torch.get_num_threads(), "device": device_name(args.device), "table": table,
               "targets": targets(table, args.families),
               **results}
    settings = {k: getattr(args, k) for k in ("seeds", "teacher_epochs", "judge_epochs", "vae_steps", "gan_steps",
                                              "batch_size", "discriminator_lr", "consistency", "free_kl",
                                              "per_class")}
    command = "penact " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps({**summary, "settings": settings, "command": command}, indent=1))
    (args.out / f"{name}.md").write_text(_markdown(summary, command, settings, name))
    print(f"wrote {args.out / name}.md, .json and {args.out / name}/*.png")
    for verdict in summary["targets"]:
        print(f"{'met ' if verdict['met'] else 'MISS'}  {verdict['target']}: {verdict['measured']}")
    return 0
