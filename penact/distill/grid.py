"""The distillation benchmarks, method x transfer set x seed, and their report: ``digits``
(scikit-learn's 8x8 digits, the project's first benchmark) and ``mnist`` (DAFL's protocol, Chen et
al. ICCV 2019, Table 1: teacher LeNet-5, student LeNet-5-half).

Per seed: a teacher is trained with cross-entropy on the training split, the chosen family is
fitted to its training activations (the distribution travels with the teacher: the student never
sees labelled data), then for every transfer set and method a student starting from the same
initialization is distilled and evaluated on the clean test split (with ``split="validation"``:
on a part of the training split held out from the teacher and from every transfer set, the split
on which settings are chosen). A method without a data source (``kd`` or ``weighted`` with no
transfer data) is reported as n/a; one whose part has nothing to act on (``synth+weighted`` with no
transfer data) is the same run as the method without it, run once and reported under both names.

Where the benchmark shares its pool (MNIST), the synthesized pool of a seed is made once, by the
draws its ``synth`` run would make, and every ``synth`` run of the seed starts from it: synthesis
is most of the budget, and it does not depend on the transfer set.
"""
from __future__ import annotations

import datetime
import json
import math
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import Tensor
from tqdm.auto import tqdm

from .._random import stream_seed
from ..experiments import fit_distribution, get_dataset, prepare_teacher
from ..families import ClassConditionalDistribution
from ..models import accuracy
from .trainer import METHOD_PARTS, DistillConfig, Distiller, Pool, distributed_context, parse_method
from .transfer import transfer_set

SPLITS = ("test", "validation")
# The settings a pool depends on: two runs that agree on these (and on teacher, family and seed) start
# from the same pool.
POOL_SETTINGS = ("pool_size", "synth_steps", "synth_lr", "match", "tv_weight", "l2_weight", "synth_jitter",
                 "balance_rounds")


@dataclass(frozen=True)
class Target:
    """A bar for the best penact method (any method but ``kd``) on ``transfer``: its mean accuracy
    ``>= threshold``, or ``>=`` plain KD's on the same set ``+ margin_over_kd``. ``source`` says
    where the bar comes from."""

    transfer: str
    threshold: float | None = None
    margin_over_kd: float | None = None
    source: str = ""


@dataclass(frozen=True)
class Benchmark:
    """A data set's distillation benchmark: its transfer sets, default settings, targets and the
    published numbers its report sets beside its own (``(what, published accuracy, our cell)``,
    our cell a ``"transfer/method"`` key, ``"teacher"``, ``"<transfer>/best"`` for the best penact
    method, or None). ``quick`` overrides the defaults for ``--quick`` (keys: ``seeds``,
    ``transfers``, ``methods``, ``teacher_epochs`` and ``DistillConfig`` fields)."""

    dataset: str
    transfers: tuple[str, ...]
    config: DistillConfig
    family: str
    targets: tuple[Target, ...]
    share_pool: bool
    models: str
    published: tuple[tuple[str, float, str | None], ...] = ()
    published_source: str = ""
    quick: dict = field(default_factory=dict)


BENCHMARKS = {
    "digits": Benchmark(
        "digits", ("in-domain", "corrupted", "partial", "none"), DistillConfig(), "sphere",
        (Target("partial", 0.90), Target("none", 0.90), Target("corrupted", margin_over_kd=0.03)),
        share_pool=False, models="a teacher CNN (penultimate width 128) ... a student (width 64)",
        quick={"seeds": 1, "transfers": ("partial", "none"), "methods": ("kd", "synth"), "teacher_epochs": 10,
               "steps": 300}),
    # The settings were chosen on the validation split (docs/distill.md records the runs).
    "mnist": Benchmark(
        "mnist", ("in-domain", "partial", "corrupted", "shifted", "noise", "none"),
        DistillConfig(steps=3000, data_free_steps=6000, batch_size=128, lr=5e-3, pool_size=4096, synth_steps=100,
                      tv_weight=10.0, l2_weight=10.0, augment_shift=2, balance_rounds=3),
        "rectified",
        (Target("none", 0.982, source="DAFL's 98.20%"), Target("none", 0.9877, source="stretch: ZSKD's 98.77%"),
         Target("shifted", 0.96), Target("shifted", margin_over_kd=0.02), Target("partial", 0.97)),
        share_pool=True, models="LeNet-5 (penultimate width 84) ... LeNet-5-half (width 42)",
        published=(("teacher LeNet-5", 0.9891, "teacher"), ("KD with the training data", 0.9891, "in-domain/kd"),
                   ("KD on random noise", 0.8801, "noise/kd"),
                   ("KD on USPS (ours: scikit-learn's digits framed like MNIST)", 0.9456, "shifted/kd"),
                   ("meta-data KD (Lopes et al. 2017)", 0.9247, None),
                   ("DAFL, data-free (Chen et al. 2019)", 0.9820, "none/best"),
                   ("ZSKD, data-free (Nayak et al. 2019)", 0.9877, "none/best")),
        published_source="DAFL (Chen et al., ICCV 2019), Table 1: LeNet-5 teacher, LeNet-5-half student",
        quick={"seeds": 1, "transfers": ("shifted", "none"), "methods": ("kd", "synth"), "teacher_epochs": 2,
               "steps": 300, "data_free_steps": 600, "pool_size": 1024, "synth_steps": 30}),
}


def get_benchmark(dataset: str) -> Benchmark:
    """The benchmark of ``dataset`` (``digits`` or ``mnist``).

    Raises:
        ValueError: another name.
    """
    if dataset not in BENCHMARKS:
        raise ValueError(f"dataset must be one of {tuple(BENCHMARKS)}, got {dataset!r}")
    return BENCHMARKS[dataset]


def split_dataset(dataset: str, split: str) -> str:
    """The name under which ``penact.experiments`` holds ``dataset`` evaluated on ``split``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return dataset if split == "test" else f"{dataset}-validation"


@dataclass
class CellResult:
    method: str
    transfer: str
    seed: int
    student_accuracy: float
    teacher_accuracy: float
    teacher_transfer_accuracy: float | None  # the teacher on the transfer images with their true labels
    timings: dict
    same_run_as: str | None = None  # the method whose run this cell's is (nothing for its extra part to act on)
    # ``weighted`` cells: how well the log-density it weights by separates the clean test images from
    # the transfer images (AUROC; 0.5: not at all; below 0.5: the transfer images rank higher).
    density_auroc: float | None = None


def run_cell(method: str, transfer: str, seed: int, config: DistillConfig, teacher: torch.nn.Module,
             distribution: ClassConditionalDistribution, severity: float, checkpoint_dir: Path | None = None,
             log_every: int = 50, *, dataset: str = "digits", data=None, pool: Pool | None = None) -> CellResult:
    """Distils one student for ``(method, transfer, seed)`` on the teacher's device (from ``pool``
    when given) and evaluates it on ``data``'s test split (default: ``dataset``'s). The transfer
    images and the student's initialization are drawn on the CPU, so they are the same on every
    device."""
    spec = get_dataset(dataset)
    data = data if data is not None else spec.load()
    device = teacher.fc.weight.device
    transfer_data = transfer_set(transfer, data, severity=severity, seed=seed)
    images = transfer_data.images
    torch.manual_seed(stream_seed(seed, "student"))
    student = spec.student(num_classes=data.num_classes)
    checkpoint = checkpoint_dir / "runs" / f"{method}__{transfer}__seed{seed}.pt" if checkpoint_dir else None
    distiller = Distiller(teacher, student, distribution, images, replace(config, method=method, seed=seed),
                          image_shape=spec.image_shape, checkpoint_path=checkpoint, device=device,
                          pool=pool if "synth" in parse_method(method) else None)
    distiller.load_checkpoint()
    distiller.train(log_every=log_every)
    test_images, test_labels = data.test_images.to(device), data.test_labels.to(device)
    transfer_accuracy = None
    if transfer_data.labels is not None and images.shape[0] and transfer != "partial":
        transfer_accuracy = accuracy(teacher, images.to(device), transfer_data.labels.to(device))
    density_auroc = None
    if "weighted" in parse_method(method) and images.shape[0]:
        with torch.no_grad():
            density_auroc = auroc(distribution.log_marginal(teacher.features(test_images)),
                                  distribution.log_marginal(teacher.features(images.to(device))))
    return CellResult(method, transfer, seed, distiller.evaluate(test_images, test_labels),
                      accuracy(teacher, test_images, test_labels), transfer_accuracy, asdict(distiller.timings),
                      density_auroc=density_auroc)


def auroc(positive: Tensor, negative: Tensor) -> float:
    """The probability that a score of ``positive`` exceeds one of ``negative`` (ties count half):
    the area under the ROC curve of telling them apart by the score."""
    scores = torch.cat([positive, negative]).double()
    ranks = torch.empty_like(scores)
    ranks[scores.argsort()] = torch.arange(1, len(scores) + 1, dtype=scores.dtype, device=scores.device)
    unique, inverse = scores.unique(return_inverse=True)  # ties: the mean rank of their group
    ranks = torch.zeros(len(unique), dtype=scores.dtype, device=scores.device).index_add_(0, inverse, ranks)[inverse] \
        / torch.bincount(inverse, minlength=len(unique)).to(scores.dtype)[inverse]
    count = len(positive)
    return float((ranks[:count].sum() - count * (count + 1) / 2) / (count * len(negative)))


def has_data_source(method: str, transfer: str) -> bool:
    return transfer != "none" or "synth" in parse_method(method)


def same_run(method: str, transfer: str) -> str:
    """The method whose run ``method``'s is on ``transfer``: without ``weighted`` when there are no
    transfer data to weight, else ``method`` itself."""
    parts = parse_method(method)
    if transfer != "none" or "weighted" not in parts:
        return method
    return "+".join(part for part in METHOD_PARTS if part in parts - {"weighted"}) or "kd"


def _pool_paths(checkpoint_dir: Path, seed: int) -> tuple[Path, Path]:
    """The seed's saved pool and, beside it, its settings and timings (read without the pool)."""
    return checkpoint_dir / "pools" / f"seed{seed}.pt", checkpoint_dir / "pools" / f"seed{seed}.json"


def make_pool(seed: int, config: DistillConfig, teacher: torch.nn.Module, distribution: ClassConditionalDistribution,
              dataset: str, checkpoint_dir: Path | None = None) -> tuple[Pool, dict]:
    """The seed's shared pool, the pool of its ``synth`` run (the same draws), and its record
    (``settings``, ``timings`` of the synthesis); loaded from ``checkpoint_dir/pools`` when made
    there before.

    Raises:
        ValueError: a saved pool made with other synthesis settings.
    """
    settings = {"seed": seed, "family": distribution.name, **{key: getattr(config, key) for key in POOL_SETTINGS}}
    device = teacher.fc.weight.device
    if checkpoint_dir is not None and all(path.exists() for path in _pool_paths(checkpoint_dir, seed)):
        pool_path, record_path = _pool_paths(checkpoint_dir, seed)
        record = json.loads(record_path.read_text())
        if record["settings"] != settings:
            raise ValueError(f"{pool_path} was made with {record['settings']}, this grid asks for {settings}: "
                             "use another --checkpoint-dir")
        return Pool(**torch.load(pool_path, map_location="cpu", weights_only=True)).to(device), record
    spec = get_dataset(dataset)
    torch.manual_seed(stream_seed(seed, "student"))
    builder = Distiller(teacher, spec.student(num_classes=distribution.num_classes), distribution, None,
                        replace(config, method="synth", seed=seed), image_shape=spec.image_shape, device=device)
    pool = builder.synthesize_pool()
    record = {"settings": settings, "timings": asdict(builder.timings)}
    if checkpoint_dir is not None and distributed_context()[0] == 0:
        pool_path, record_path = _pool_paths(checkpoint_dir, seed)
        pool_path.parent.mkdir(parents=True, exist_ok=True)
        partial = pool_path.with_name(pool_path.name + ".partial")
        torch.save({"images": pool.images.cpu(), "labels": pool.labels.cpu(), "logits": pool.logits.cpu(),
                    "draws": pool.draws}, partial)
        partial.replace(pool_path)
        record_path.write_text(json.dumps(record))  # last: a record means its pool is complete
    return pool, record


def run_grid(methods: list[str], transfers: list[str], seeds: list[int], config: DistillConfig, *,
             teacher_epochs: int | None = None, severity: float = 3.0, family: str | None = None,
             checkpoint_dir: Path | None = None, progress: bool = True, device: torch.device | str = "cpu",
             log_every: int = 50, dataset: str = "digits", split: str = "test",
             share_pool: bool | None = None) -> tuple[list[CellResult], dict[int, dict]]:
    """Every ``(seed, transfer, method)`` with a data source, on ``device`` (teachers are trained and
    their families fitted there), and the record of each seed's shared pool (:func:`make_pool`).
    ``family`` and ``share_pool`` default to the benchmark's, ``teacher_epochs`` to the data set's.
    With ``checkpoint_dir``, teachers, pools, finished cells and running cells are saved there, and
    a rerun skips or resumes them."""
    rank, world_size = distributed_context()
    name = split_dataset(dataset, split)
    data = get_dataset(name).load()
    benchmark = get_benchmark(dataset)
    share_pool = benchmark.share_pool if share_pool is None else share_pool
    family = benchmark.family if family is None else family
    cells = [(seed, transfer, method) for seed in seeds for transfer in transfers for method in methods
             if has_data_source(method, transfer)]
    runs = list(dict.fromkeys((seed, transfer, same_run(method, transfer)) for seed, transfer, method in cells))
    done_runs: dict[tuple, CellResult] = {}
    pools: dict[int, dict] = {}
    bar = tqdm(total=len(runs), desc=f"distill grid ({dataset})", unit="run", disable=not progress or rank != 0)
    current: dict = {}  # the seed's teacher, distribution and pool
    for seed, transfer, method in runs:
        bar.set_postfix_str(f"seed {seed} {transfer} {method}")
        done = checkpoint_dir / "cells" / f"{method}__{transfer}__seed{seed}.json" if checkpoint_dir else None
        if done is not None and done.exists():
            result = CellResult(**json.loads(done.read_text()))
        else:
            if current.get("seed") != seed:
                teacher = prepare_teacher(seed, teacher_epochs, checkpoint_dir, device, dataset=name)
                current = {"seed": seed, "teacher": teacher,
                           "distribution": fit_distribution(family, teacher, data.train_images, data.train_labels)}
            if share_pool and "synth" in parse_method(method) and "pool" not in current:
                current["pool"], pools[seed] = make_pool(seed, config, current["teacher"], current["distribution"],
                                                         name, checkpoint_dir)
            result = run_cell(method, transfer, seed, config, current["teacher"], current["distribution"], severity,
                              checkpoint_dir, log_every, dataset=name, data=data, pool=current.get("pool"))
            if done is not None and rank == 0:
                done.parent.mkdir(parents=True, exist_ok=True)
                done.write_text(json.dumps(asdict(result)))
            if world_size > 1:
                torch_dist.barrier()
        done_runs[seed, transfer, method] = result
        bar.update(1)
        bar.set_postfix_str(f"last {100 * result.student_accuracy:.1f}%")
    bar.close()
    if share_pool and checkpoint_dir is not None:  # pools made by an earlier invocation
        for seed in seeds:
            record_path = _pool_paths(checkpoint_dir, seed)[1]
            if seed not in pools and record_path.exists():
                pools[seed] = json.loads(record_path.read_text())
    results = []
    for seed, transfer, method in cells:
        run = done_runs[seed, transfer, same_run(method, transfer)]
        results.append(run if run.method == method else replace(run, method=method, same_run_as=run.method))
    return results, pools


# ---------------------------------------------------------------------------------------------
# The report.


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: list[CellResult], methods: list[str], transfers: list[str], benchmark: Benchmark,
              pools: dict[int, dict] | None = None) -> dict:
    """Means and standard deviations (over seeds) per ``(transfer, method)``, the teacher's, the
    timing shares per method (each run counted once), the shared pools' synthesis, the published
    numbers beside ours, and the verdict on each of ``benchmark``'s targets."""
    table = {}
    for transfer in transfers:
        for method in methods:
            accuracies = {r.seed: r.student_accuracy for r in results if (r.transfer, r.method) == (transfer, method)}
            if accuracies:
                mean, std = _mean_std(list(accuracies.values()))
                table[f"{transfer}/{method}"] = {"mean": mean, "std": std, "seeds": accuracies}
    teacher_by_seed = {r.seed: r.teacher_accuracy for r in results}
    teacher_mean, teacher_std = _mean_std(list(teacher_by_seed.values()))
    teacher = {"mean": teacher_mean, "std": teacher_std, "seeds": teacher_by_seed}
    separation = {}
    for transfer in transfers:
        values = [r.density_auroc for r in results if r.transfer == transfer and r.density_auroc is not None
                  and r.same_run_as is None]
        if values:
            separation[transfer] = _mean_std(values)
    shift = {}
    for transfer in transfers:
        values = {r.seed: r.teacher_transfer_accuracy for r in results
                  if r.transfer == transfer and r.teacher_transfer_accuracy is not None}
        if values:
            shift[transfer] = _mean_std(list(values.values()))
    timing = {}
    for method in methods:
        runs = [r.timings for r in results if r.method == method and r.same_run_as is None]
        if runs:
            total, steps = sum(t["total"] for t in runs), sum(t["steps"] for t in runs)
            timing[method] = {"seconds_per_run": total / len(runs),
                              "seconds_per_step": total / steps if steps else math.nan,
                              **{key: sum(t[key] for t in runs) / total for key in ("synthesis", "sampler", "log_density")}}
    pool = None
    if pools:
        seconds = [record["timings"]["synthesis"] for record in pools.values()]
        sampler = sum(record["timings"]["sampler"] for record in pools.values())
        runs = {r.seed: 0 for r in results}
        for r in results:
            runs[r.seed] += r.same_run_as is None and "synth" in parse_method(r.method)
        pool = {"seconds_per_seed": statistics.fmean(seconds), "sampler_share": sampler / sum(seconds),
                "runs_per_pool": statistics.fmean(runs[seed] for seed in pools)}
    return {"table": table, "teacher": teacher, "teacher_on_transfer": shift, "density_auroc": separation,
            "timing_shares": timing, "pool": pool,
            "published": _published(table, teacher, methods, benchmark), "targets": _targets(table, methods, benchmark)}


def _best(table: dict, methods: list[str], transfer: str) -> tuple[float, str] | None:
    """The best penact method (any but ``kd``) on ``transfer``: ``(mean, method)``; ties: the first listed."""
    candidates = [(table[f"{transfer}/{m}"]["mean"], m) for m in methods if m != "kd" and f"{transfer}/{m}" in table]
    return max(candidates, key=lambda candidate: candidate[0]) if candidates else None


def _published(table: dict, teacher: dict, methods: list[str], benchmark: Benchmark) -> list[dict]:
    rows = []
    for what, published, ours in benchmark.published:
        entry, method = None, None
        if ours == "teacher":
            entry = teacher
        elif ours is not None and ours.endswith("/best"):
            found = _best(table, methods, ours.split("/")[0])
            if found:
                method = found[1]
                entry = table[f"{ours.split('/')[0]}/{method}"]
        elif ours is not None:
            entry = table.get(ours)
        rows.append({"what": what, "published": published, "ours": ours if method is None else
                     f"{ours.split('/')[0]}/{method}", "mean": entry and entry["mean"], "std": entry and entry["std"]})
    return rows


def _targets(table: dict, methods: list[str], benchmark: Benchmark) -> list[dict]:
    verdicts = []
    for target in benchmark.targets:
        found = _best(table, methods, target.transfer)
        source = f" ({target.source})" if target.source else ""
        if not found:
            continue
        if target.threshold is not None:
            verdicts.append({"target": f"{target.transfer}: best penact method >= {100 * target.threshold:.4g}%{source}",
                             "measured": f"{found[1]} {100 * found[0]:.2f}%", "met": found[0] >= target.threshold})
        baseline = table.get(f"{target.transfer}/kd", {}).get("mean")
        if target.margin_over_kd is not None and baseline is not None:
            verdicts.append({"target": f"{target.transfer}: best penact method >= kd + "
                                       f"{100 * target.margin_over_kd:.4g} points{source}",
                             "measured": f"{found[1]} {100 * found[0]:.2f}% vs kd {100 * baseline:.2f}% "
                                         f"({100 * (found[0] - baseline):+.2f})",
                             "met": found[0] - baseline >= target.margin_over_kd})
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
                             "measured": f"{100 * table[key]['mean']:.2f}% vs kd {100 * table['in-domain/kd']['mean']:.2f}%, "
                                         f"paired difference {100 * mean:+.2f} ± {100 * standard_error:.2f} (se)",
                             "met": mean + 2 * standard_error >= 0})
    return verdicts


def write_report(summary: dict, methods: list[str], transfers: list[str], out_dir: Path, name: str,
                 command: str, settings: dict, benchmark: Benchmark, quick: bool = False) -> list[Path]:
    """Writes ``<name>.md``, ``<name>.json`` and ``<name>.png`` (grouped bars, error bars = std);
    a ``quick`` run says so at the top of each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.md", out_dir / f"{name}.json", out_dir / f"{name}.png"]
    payload = {"command": command, "date": datetime.date.today().isoformat(), "quick": quick, "settings": settings,
               **summary}
    paths[1].write_text(json.dumps(payload, indent=2, default=str) + "\n")
    _plot(summary, methods, transfers, paths[2], title=f"{benchmark.dataset}{' (QUICK RUN)' if quick else ''}")
    paths[0].write_text(_markdown(summary, methods, transfers, command, settings, paths[2].name, benchmark, quick))
    return paths


def _formulation(benchmark: Benchmark) -> list[str]:
    teacher, student = benchmark.models.split(" ... ")
    pool = ("One pool per seed, synthesized once, serves every `synth` run of that seed. " if benchmark.share_pool
            else "")
    return [
        "How it works (module docstrings of `penact.distill` have the details): per seed "
        f"{teacher} is trained on the training split and its family fitted to its training "
        f"activations; {student} is distilled with Adam (cosine-annealed learning rate) on the "
        "soft-label loss `T^2 KL(softmax(t/T) || softmax(s/T))`. `synth` draws balanced labels and "
        "activations `a ~ p(a | y)` from the family, optimizes `x = sigmoid(z)` to minimize "
        "`1 - cos(f_T(x), a)` (sphere family; squared error for others) plus total-variation and L2 priors, and "
        "distils on a batch of that pool beside each transfer batch (the whole batch when there are no "
        f"transfer data). {pool}`weighted` multiplies each transfer sample's loss by "
        "`n softmax(log p(a_i) / tau)` over its batch, `tau` the std of `log p(a)` under the model's own "
        "samples. Students start from the same initialization for every method of a seed.",
        "",
    ]


def _percent(entry: dict | None) -> str:
    return "n/a" if entry is None or entry.get("mean") is None else f"{100 * entry['mean']:.2f} ± {100 * entry['std']:.2f}"


def _markdown(summary: dict, methods: list[str], transfers: list[str], command: str, settings: dict,
              image: str, benchmark: Benchmark, quick: bool) -> str:
    table, teacher = summary["table"], summary["teacher"]
    seeds = len(teacher["seeds"])
    split = "the held-out validation part of the training split" if settings.get("split") == "validation" else \
        "the clean test split"
    lines = [f"# Distillation on {benchmark.dataset}: student accuracy (%) on {split}, mean ± std over {seeds} seeds",
             ""]
    if quick:
        lines += ["**QUICK RUN** (`--quick`): fewer seeds, cells, steps and synthesis than the benchmark; a check "
                  "that everything runs, not the benchmark's numbers.", ""]
    lines += [
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
    lines += ["", f"![student accuracy by method and transfer set]({image})", ""]
    if summary["published"]:
        lines += [f"Published on the same protocol: {benchmark.published_source}.", "",
                  "| | published | ours | our cell |", "|---|---|---|---|"]
        for row in summary["published"]:
            lines.append(f"| {row['what']} | {100 * row['published']:.2f} | {_percent(row)} | {row['ours'] or '—'} |")
        lines.append("")
    lines += _formulation(benchmark)
    if summary["teacher_on_transfer"]:
        lines.append("The teacher's own accuracy on the transfer images (true labels): " + ", ".join(
            f"{transfer} {100 * mean:.1f} ± {100 * std:.1f}%" for transfer, (mean, std) in summary["teacher_on_transfer"].items()))
        lines.append("")
    if summary.get("density_auroc"):
        lines.append("How well the log-density that `weighted` weights by tells the clean test images from the "
                     "transfer images (AUROC over the `weighted` runs; 0.5: not at all, below 0.5: the transfer "
                     "images get the higher density): " + ", ".join(
                         f"{transfer} {mean:.3f} ± {std:.3f}" for transfer, (mean, std) in summary["density_auroc"].items()))
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
    if summary["pool"]:
        pool = summary["pool"]
        lines += ["", f"The shared pool (outside the runs above): {pool['seconds_per_seed']:.1f} s to synthesize per "
                      f"seed, of which the sampler {100 * pool['sampler_share']:.3f}%, serving "
                      f"{pool['runs_per_pool']:.0f} `synth` runs per seed."]
    lines.append("")
    return "\n".join(lines)


def _plot(summary: dict, methods: list[str], transfers: list[str], path: Path, title: str) -> None:
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
    axis.set_title(title)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
