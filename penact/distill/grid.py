"""The distillation benchmark on digits: method x transfer set x seed, and its report.

Per seed: a teacher CNN is trained with cross-entropy on the training split, the chosen family is
fitted to its training activations (the distribution travels with the teacher: the student never
sees labelled data), then for every transfer set and method a student starting from the same
initialization is distilled and evaluated on the clean test split. A method without a data
source (``kd`` or ``weighted`` with no transfer data) is reported as n/a.
"""
from __future__ import annotations

import datetime
import json
import math
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as torch_dist
from tqdm.auto import tqdm

from ..families import ClassConditionalDistribution
from ..data import load_digits_split
from ..models import accuracy, student_cnn
from .._random import stream_seed
from ..experiments import fit_distribution, prepare_teacher
from .trainer import DistillConfig, Distiller, distributed_context, parse_method
from .transfer import transfer_images

TARGETS = {"partial": 0.90, "none": 0.90}
CORRUPTED_MARGIN = 0.03


@dataclass
class CellResult:
    method: str
    transfer: str
    seed: int
    student_accuracy: float
    teacher_accuracy: float
    teacher_transfer_accuracy: float | None  # the teacher on the transfer images with their true labels
    timings: dict


def run_cell(method: str, transfer: str, seed: int, config: DistillConfig, teacher: torch.nn.Module,
             distribution: ClassConditionalDistribution, severity: float,
             checkpoint_dir: Path | None = None, log_every: int = 50) -> CellResult:
    """Distils one student for ``(method, transfer, seed)`` on the teacher's device and evaluates
    it on the test split. The transfer images and the student's initialization are drawn on the
    CPU, so they are the same on every device."""
    data = load_digits_split()
    device = teacher.fc.weight.device
    images = transfer_images(transfer, data, severity=severity, seed=seed)
    torch.manual_seed(stream_seed(seed, "student"))
    student = student_cnn(num_classes=data.num_classes)
    checkpoint = checkpoint_dir / "runs" / f"{method}__{transfer}__seed{seed}.pt" if checkpoint_dir else None
    distiller = Distiller(teacher, student, distribution, images, replace(config, method=method, seed=seed),
                          checkpoint_path=checkpoint, device=device)
    distiller.load_checkpoint()
    distiller.train(log_every=log_every)
    test_images, test_labels = data.test_images.to(device), data.test_labels.to(device)
    transfer_accuracy = None
    if images.shape[0] and transfer != "partial":
        transfer_accuracy = accuracy(teacher, images.to(device), data.train_labels.to(device))
    return CellResult(method, transfer, seed, distiller.evaluate(test_images, test_labels),
                      accuracy(teacher, test_images, test_labels), transfer_accuracy, asdict(distiller.timings))


def has_data_source(method: str, transfer: str) -> bool:
    return transfer != "none" or "synth" in parse_method(method)


def run_grid(methods: list[str], transfers: list[str], seeds: list[int], config: DistillConfig, *,
             teacher_epochs: int = 20, severity: float = 3.0, family: str = "sphere",
             checkpoint_dir: Path | None = None, progress: bool = True, device: torch.device | str = "cpu",
             log_every: int = 50) -> list[CellResult]:
    """Every ``(seed, transfer, method)`` with a data source, on ``device`` (teachers are trained and
    their families fitted there). With ``checkpoint_dir``, teachers, finished cells and running
    cells are saved there, and a rerun skips or resumes them."""
    rank, world_size = distributed_context()
    data = load_digits_split()
    cells = [(seed, transfer, method) for seed in seeds for transfer in transfers for method in methods
             if has_data_source(method, transfer)]
    results = []
    bar = tqdm(total=len(cells), desc="distill grid", unit="run", disable=not progress or rank != 0)
    teachers: dict[int, tuple] = {}
    for seed, transfer, method in cells:
        bar.set_postfix_str(f"seed {seed} {transfer} {method}")
        done = checkpoint_dir / "cells" / f"{method}__{transfer}__seed{seed}.json" if checkpoint_dir else None
        if done is not None and done.exists():
            results.append(CellResult(**json.loads(done.read_text())))
        else:
            if seed not in teachers:
                teacher = prepare_teacher(seed, teacher_epochs, checkpoint_dir, device)
                teachers = {seed: (teacher, fit_distribution(family, teacher, data.train_images, data.train_labels))}
            result = run_cell(method, transfer, seed, config, *teachers[seed], severity, checkpoint_dir, log_every)
            results.append(result)
            if done is not None and rank == 0:
                done.parent.mkdir(parents=True, exist_ok=True)
                done.write_text(json.dumps(asdict(result)))
            if world_size > 1:
                torch_dist.barrier()
        bar.update(1)
        bar.set_postfix_str(f"last {100 * results[-1].student_accuracy:.1f}%")
    bar.close()
    return results


# ---------------------------------------------------------------------------------------------
# The report.


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: list[CellResult], methods: list[str], transfers: list[str]) -> dict:
    """Means and standard deviations (over seeds) per ``(transfer, method)``, the teacher's, the
    timing shares per method, and the verdict on each target."""
    table = {}
    for transfer in transfers:
        for method in methods:
            accuracies = {r.seed: r.student_accuracy for r in results if (r.transfer, r.method) == (transfer, method)}
            if accuracies:
                mean, std = _mean_std(list(accuracies.values()))
                table[f"{transfer}/{method}"] = {"mean": mean, "std": std, "seeds": accuracies}
    teacher_by_seed = {r.seed: r.teacher_accuracy for r in results}
    teacher_mean, teacher_std = _mean_std(list(teacher_by_seed.values()))
    shift = {}
    for transfer in transfers:
        values = {r.seed: r.teacher_transfer_accuracy for r in results
                  if r.transfer == transfer and r.teacher_transfer_accuracy is not None}
        if values:
            shift[transfer] = _mean_std(list(values.values()))
    timing = {}
    for method in methods:
        runs = [r.timings for r in results if r.method == method]
        if runs:
            total, steps = sum(t["total"] for t in runs), sum(t["steps"] for t in runs)
            timing[method] = {"seconds_per_run": total / len(runs),
                              "seconds_per_step": total / steps if steps else math.nan,
                              **{key: sum(t[key] for t in runs) / total for key in ("synthesis", "sampler", "log_density")}}
    return {"table": table, "teacher": {"mean": teacher_mean, "std": teacher_std, "seeds": teacher_by_seed},
            "teacher_on_transfer": shift, "timing_shares": timing,
            "targets": _targets(table, methods)}


def _targets(table: dict, methods: list[str]) -> list[dict]:
    def best(transfer: str):
        candidates = [(table[f"{transfer}/{m}"]["mean"], m) for m in methods
                      if m != "kd" and f"{transfer}/{m}" in table]
        return max(candidates, key=lambda candidate: candidate[0]) if candidates else None  # ties: first listed

    def kd(transfer: str):
        return table.get(f"{transfer}/kd", {}).get("mean")

    verdicts = []
    for transfer, threshold in TARGETS.items():
        found = best(transfer)
        if found:
            verdicts.append({"target": f"{transfer}: best penact method >= {100 * threshold:.0f}%",
                             "measured": f"{found[1]} {100 * found[0]:.2f}%", "met": found[0] >= threshold})
    found, baseline = best("corrupted"), kd("corrupted")
    if found and baseline is not None:
        verdicts.append({"target": f"corrupted: best penact method >= kd + {100 * CORRUPTED_MARGIN:.0f} points",
                         "measured": f"{found[1]} {100 * found[0]:.2f}% vs kd {100 * baseline:.2f}% "
                                     f"({100 * (found[0] - baseline):+.2f})",
                         "met": found[0] - baseline >= CORRUPTED_MARGIN})
    if "in-domain/kd" in table:
        baseline = table["in-domain/kd"]["seeds"]
        for method in methods:
            key = f"in-domain/{method}"
            if method == "kd" or key not in table:
                continue
            # Seeds share the teacher and the student's initialization: compare per seed (paired).
            differences = [table[key]["seeds"][seed] - baseline[seed] for seed in table[key]["seeds"] if seed in baseline]
            mean, std = _mean_std(differences)
            standard_error = std / math.sqrt(len(differences))
            verdicts.append({"target": f"in-domain: {method} no worse than kd (paired mean + 2 se >= 0)",
                             "measured": f"{100 * table[key]['mean']:.2f}% vs kd {100 * kd('in-domain'):.2f}%, "
                                         f"paired difference {100 * mean:+.2f} ± {100 * standard_error:.2f} (se)",
                             "met": mean + 2 * standard_error >= 0})
    return verdicts


def write_report(summary: dict, methods: list[str], transfers: list[str], out_dir: Path, name: str,
                 command: str, settings: dict) -> list[Path]:
    """Writes ``<name>.md``, ``<name>.json`` and ``<name>.png`` (grouped bars, error bars = std)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.md", out_dir / f"{name}.json", out_dir / f"{name}.png"]
    payload = {"command": command, "date": datetime.date.today().isoformat(), "settings": settings, **summary}
    paths[1].write_text(json.dumps(payload, indent=2, default=str) + "\n")
    _plot(summary, methods, transfers, paths[2])
    paths[0].write_text(_markdown(summary, methods, transfers, command, settings, paths[2].name))
    return paths


FORMULATION = [
    "How it works (module docstrings of `penact.distill` have the details): per seed a teacher CNN "
    "(penultimate width 128) is trained on the training split and its family fitted to its training "
    "activations; a student (width 64) is distilled with Adam (cosine-annealed learning rate) on the "
    "soft-label loss `T^2 KL(softmax(t/T) || softmax(s/T))`. `synth` draws balanced labels and "
    "activations `a ~ p(a | y)` from the family, optimizes `x = sigmoid(z)` to minimize "
    "`1 - cos(f_T(x), a)` (sphere family; squared error for others) plus a total-variation prior, and "
    "distils on a batch of that pool beside each transfer batch (the whole batch when there are no "
    "transfer data). `weighted` multiplies each transfer sample's loss by "
    "`n softmax(log p(a_i) / tau)` over its batch, `tau` the std of `log p(a)` under the model's own "
    "samples. Students start from the same initialization for every method of a seed.",
    "",
]


def _percent(entry: dict | None) -> str:
    return "n/a" if entry is None else f"{100 * entry['mean']:.2f} ± {100 * entry['std']:.2f}"


def _markdown(summary: dict, methods: list[str], transfers: list[str], command: str, settings: dict,
              image: str) -> str:
    table, teacher = summary["table"], summary["teacher"]
    seeds = len(teacher["seeds"])
    lines = [
        f"# Distillation on digits: student accuracy (%) on the clean test split, mean ± std over {seeds} seeds",
        "",
        f"Command: `{command}`",
        "",
        "Settings: " + ", ".join(f"{key}={value}" for key, value in settings.items()),
        "",
        "| transfer set | teacher | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for transfer in transfers:
        cells = [_percent(table.get(f"{transfer}/{method}")) for method in methods]
        lines.append(f"| {transfer} | {_percent(teacher)} | " + " | ".join(cells) + " |")
    lines += ["", f"![student accuracy by method and transfer set]({image})", "", *FORMULATION]
    if summary["teacher_on_transfer"]:
        lines.append("The teacher's own accuracy on the transfer images (true labels): " + ", ".join(
            f"{transfer} {100 * mean:.1f} ± {100 * std:.1f}%" for transfer, (mean, std) in summary["teacher_on_transfer"].items()))
        lines.append("")
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for verdict in summary["targets"]:
        lines.append(f"| {verdict['target']} | {verdict['measured']} | {'yes' if verdict['met'] else '**no**'} |")
    lines += ["", "## Where the time goes", "",
              f"On {settings.get('device', 'cpu')}. Seconds per step: a run's wall-clock time over its steps, pool "
              "synthesis included; the shares are of that time. On CUDA each part is timed on the GPU by CUDA events "
              "around it, read with the loss every log interval (no synchronization per step).", "",
              "| method | seconds per run | seconds per step | pool synthesis | sampler | log-density |",
              "|---|---|---|---|---|---|"]
    for method, shares in summary["timing_shares"].items():
        lines.append(f"| {method} | {shares['seconds_per_run']:.1f} | {shares['seconds_per_step']:.2e} "
                     f"| {100 * shares['synthesis']:.1f}% | {100 * shares['sampler']:.3f}% "
                     f"| {100 * shares['log_density']:.3f}% |")
    lines.append("")
    return "\n".join(lines)


def _plot(summary: dict, methods: list[str], transfers: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary["table"]
    width = 0.8 / len(methods)
    figure, axis = plt.subplots(figsize=(3.0 + 1.6 * len(transfers), 4.2))
    for index, method in enumerate(methods):
        positions, means, stds = [], [], []
        for column, transfer in enumerate(transfers):
            entry = table.get(f"{transfer}/{method}")
            if entry is not None:
                positions.append(column - 0.4 + (index + 0.5) * width)
                means.append(100 * entry["mean"])
                stds.append(100 * entry["std"])
        axis.bar(positions, means, width, yerr=stds, capsize=2, label=method)
        for column, transfer in enumerate(transfers):
            if f"{transfer}/{method}" not in table:
                axis.text(column - 0.4 + (index + 0.5) * width, 2, "n/a", ha="center", fontsize=7, rotation=90)
    axis.axhline(100 * summary["teacher"]["mean"], color="k", linestyle="--", linewidth=1, label="teacher")
    axis.set_xticks(range(len(transfers)), transfers)
    axis.set_xlabel("transfer set")
    axis.set_ylabel("student test accuracy (%)")
    axis.set_ylim(0, 100)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
