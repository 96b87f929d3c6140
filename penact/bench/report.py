"""The results of a run of ``penact bench``: ``<stem>.json`` (every timing, the environment),
``<stem>.md`` (the tables below, a section per family) and ``<stem>.png`` (throughput against N)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .families import ELEMENT_OPS, OPS, PARAMETER_OPS, bench_family
from .peers import LIMIT, LIMIT_NAMES, PEERS


def _ms(seconds) -> str:
    return "—" if seconds is None else (f"{seconds * 1e3:.3g}" if seconds < 10 else f"{seconds * 1e3:.0f}")


def _rate(value) -> str:
    if value is None:
        return "—"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _x(value) -> str:
    return "—" if value is None else f"{value:.3g}x"


def _err(value) -> str:
    return "—" if value is None else f"{value:.2g}"


_STATUS_CELLS = {"skipped": "skip", "error": "error", "n/a": "n/a"}


def _peer_cell(result: dict | None) -> str:
    if result is None:
        return ""
    return _ms(result["time_s"]) if result["status"] == "ok" else _STATUS_CELLS[result["status"]]


def _items(record: dict) -> int:
    """What a call processes: rows (row operations), arguments (element operations) or class and
    coordinate pairs (parameter operations)."""
    return record["C"] * record["D"] if record["op"] in PARAMETER_OPS else record["N"]


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(row) + " |" for row in rows]


def grid_table(records: list[dict], peers: tuple[str, ...]) -> list[str]:
    """One line per case: each peer's median time, penact's throughput, how many times faster penact
    is than each peer, the limit's time over penact's, and the bandwidth bound over penact's."""
    names = [name for name in PEERS if name in peers]
    head = (["op", "D", "C", "regime", "N"] + [f"{name} ms" for name in names] + ["limit ms", "penact /s"]
            + [f"{name} / penact" for name in names if name != "penact"] + ["limit / penact", "bw bound / penact"])
    rows = []
    for record in records:
        results = record["peers"]
        mine = results.get("penact")
        mine_time = mine["time_s"] if mine and mine["status"] == "ok" else None

        def relative(name):
            other = results.get(name)
            if mine_time is None or other is None or other["status"] != "ok":
                return "—"
            return _x(other["time_s"] / mine_time)

        row = [record["op"], str(record["D"]), str(record["C"] or "-"), record["regime"],
               f"{record['N']:.0e}" if record["N"] else "-"]
        row += [_peer_cell(results.get(name)) for name in names]
        row += [_peer_cell(results.get(LIMIT)) if LIMIT in results else "—",
                _rate(_items(record) / mine_time) if mine_time else "—"]
        row += [relative(name) for name in names if name != "penact"]
        row += [relative(LIMIT) if LIMIT in results else "—",
                f"{record['bandwidth_bound_s'] / mine_time:.2f}" if mine_time else "—"]
        rows.append(row)
    return _table(head, rows)


def skip_table(records: list[dict]) -> list[str]:
    """Why peers were not measured, each reason once with the number of cases it covers."""
    reasons: dict[tuple[str, str], int] = {}
    for record in records:
        for name, result in record["peers"].items():
            if result["status"] != "ok":
                reason = re.sub(r"(predicted|took) [0-9.]+ s", r"\1 more", result["reason"] or "")
                key = (name, f"{result['status']}: {reason}")
                reasons[key] = reasons.get(key, 0) + 1
    return _table(["peer", "why not measured", "cases"],
                  [[name, reason, str(count)] for (name, reason), count in sorted(reasons.items())])


def headline_table(headline: dict) -> list[str]:
    entries = headline["ops"]
    names = [name for name in PEERS if any(name in e["peers"] for e in entries.values())]
    head = (["op", "limit", "limit ms"] + [f"{name} (x limit)" for name in names]
            + ["penact, ratio of minimums", "target", "met (medians)"])
    rows = []
    for op, entry in entries.items():
        row = [op, f"`{entry['limit']}`", _ms(entry["peers"][LIMIT]["time_s"])]
        for name in names:
            result = entry["peers"].get(name)
            ratio = entry["ratio_to_limit"].get(name)
            row.append(f"{_x(ratio)} ({_ms(result['time_s'])} ms)" if ratio is not None
                       else (_STATUS_CELLS[result["status"]] if result else "—"))
        row += [_x(entry["ratio_of_minimums"].get("penact")), f"<= {entry['target']}x",
                "yes" if entry["met"] else "**no**"]
        rows.append(row)
    lines = _table(head, rows)
    memory = headline.get("memory")
    if memory:
        lines += ["", "Peak memory of `sample` (extra resident memory during one call / bytes of its output):", ""]
        memory_rows = []
        for name, entry in memory["peers"].items():
            if "skipped" in entry:
                memory_rows.append([name, f"{_STATUS_CELLS[entry['status']]}: {entry['skipped']}", "", ""])
                continue
            peak = entry["peak_bytes"]
            memory_rows.append([name, "—" if peak is None else f"{peak / 2**20:.1f}",
                                f"{entry['output_bytes'] / 2**20:.1f}", _x(entry["ratio"])])
        lines += _table(["peer", "peak MiB", "output MiB", "peak / output"], memory_rows)
        penact_ratio = memory["peers"].get("penact", {}).get("ratio")
        lines += ["", f"penact: peak / output {_x(penact_ratio)}; "
                  + (f"target <= {memory['target']}x: {'met' if memory['met'] else '**not met**'}."
                     if memory["target"] is not None else f"{headline['issue']} sets no target.")]
    return lines


def _point(point: dict | None) -> str:
    if point is None:
        return "—"
    return "(" + ", ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                           for key, value in point.items()) + ")"


def accuracy_tables(records: list[dict]) -> list[str]:
    lines = []
    special = [r for r in records if r["section"] == "special"]
    if special:
        lines += [f"Functions of the parameters against {special[0]['reference']}:", ""]
        rows = []
        for r in special:
            bad = f"{r['n_nonfinite']} / {r['n_points']}"
            if r["n_nonfinite"]:
                bad += " at " + ", ".join(f"{_point(p['point'])}->{p['value']}" for p in r["nonfinite"][:4]) \
                       + (" ..." if r["n_nonfinite"] > 4 else "")
            rows.append([r["op"], r["peer"], r["dtype"], _err(r["max_rel_error"]), _point(r["worst_point"]), bad])
        lines += _table(["function", "peer", "dtype", "max rel. error", "at", "non-finite / points"], rows)
    density = [r for r in records if r["section"] == "density"]
    if density:
        lines += ["", "Log-densities against the float64 twin with mpmath normalizers (C = 10, N = 2000 per "
                  "(D, regime); relative error |a - r| / max(|r|, 1), worst over the grid):", ""]
        merged: dict[tuple, dict] = {}
        for r in density:
            entry = merged.setdefault((r["op"], r["peer"], r["dtype"]),
                                      dict(rel=None, abs=None, at=None, bad=0, total=0, where=[]))
            entry["total"] += r["n_points"]
            entry["bad"] += r["n_nonfinite"]
            if r["n_nonfinite"]:
                entry["where"].append(f"D={r['D']} {r['regime']}: {r['n_nonfinite']}")
            if r["max_rel_error"] is not None and (entry["rel"] is None or r["max_rel_error"] > entry["rel"]):
                entry.update(rel=r["max_rel_error"], at=f"({r['D']}, {r['regime']})")
            if r["max_abs_error"] is not None and (entry["abs"] is None or r["max_abs_error"] > entry["abs"]):
                entry["abs"] = r["max_abs_error"]
        lines += _table(["op", "peer", "dtype", "max rel. error", "max abs. error", "worst at (D, regime)",
                         "non-finite / values"],
                        [[op, peer, dtype, _err(e["rel"]), _err(e["abs"]), e["at"] or "—",
                          f"{e['bad']} / {e['total']}" + (f" ({'; '.join(e['where'])})" if e["where"] else "")]
                         for (op, peer, dtype), e in merged.items()])
    sample = [r for r in records if r["section"] == "sample"]
    if sample:
        first = sample[0]
        lines += ["", f"Samples: z-score of the {first['statistic']} against {first['expectation']} from mpmath "
                  "(|z| > 4 flags a biased sampler, or another law), distance from the support, non-finite rows:", ""]
        rows = []
        for r in sample:
            if "error" in r:
                rows.append([r["peer"], "", str(r["D"]), r["regime"], f"error: {r['error']}", "", "", "", ""])
                continue
            flag = " **(!)**" if abs(r["z"]) > 4 else ""
            rows.append([r["peer"], r["dtype"], str(r["D"]), r["regime"], f"{r['mean']:.6g}", f"{r['expected']:.6g}",
                         f"{r['z']:+.2f}{flag}", f"{r['distance_from_support']:.2g}", str(r["n_nonfinite"])])
        lines += _table(["peer", "dtype", "D", "regime", first["statistic"], first["expectation"], "z",
                         first["support_error"], "non-finite"], rows)
    return lines


def _environment_lines(report: dict) -> list[str]:
    env, settings, bandwidth = report["environment"], report["settings"], report["bandwidth"]
    return [f"# penact bench: {env['device_name']} ({env['device']}), {env['date']}", "",
            f"- command: `{env['command']}`",
            f"- commit {env['git_commit']}"
            + (f" (uncommitted changes in {', '.join(env['git_uncommitted'])})" if env["git_dirty"] else "") + "; "
            + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
            "- extension binary: " + (f"{env['extension']['file']} sha256 {env['extension']['sha256']}..., built "
                                       f"{env['extension']['modified']}" if env.get("extension") else "unknown"),
            f"- CPU: {env['cpu_model']}, {env['cpu_count']} logical CPUs, torch threads {env['torch_threads']} "
            f"(interop {env['torch_interop_threads']}); {env['platform']}",
            f"- machine load: `{env['uptime_start']}` at the start, `{report.get('uptime_end')}` at the end; "
            f"1-minute load seen between cases: {report.get('load_summary')}",
            f"- families {', '.join(settings['families'])}; dtype {settings['dtype']}; copy bandwidth "
            f"{bandwidth['bytes_per_s'] / 1e9:.2f} GB/s read + written ({bandwidth['method']})",
            f"- timing: warm-up {settings['timing']['warmup']}, then interleaved rounds, "
            f"{settings['timing']['min_repeats']} to {settings['timing']['max_repeats']} timed calls per peer and "
            f"case, medians; {'CUDA events' if settings['device'].startswith('cuda') else 'time.perf_counter'}; "
            f"wall time of the run {report['wall_s']:.0f} s", ""]


def _oversubscribed(report: dict) -> list[str]:
    env = report["environment"]
    cpus = env["cpu_affinity"] or env["cpu_count"] or 1
    loads = [record["load_1min"] for record in report.get("grid", [])] + env["loadavg_start"][:1]
    if max(loads) <= cpus:
        return []
    return [f"**The machine was oversubscribed** (1-minute load up to {max(loads):.1f} on {cpus} CPUs, from other "
            "processes): a call that needs every torch thread waits for the slowest one to be scheduled, so "
            "times of a few ms or less are dominated by scheduling (they cluster near multiples of the "
            "scheduler's time slice), and medians of all peers are inflated. Ratios measured in the same "
            "interleaved rounds are more trustworthy than absolute times; `min_s` in the JSON is the "
            "least-disturbed call.", ""]


def markdown_report(report: dict, method: str) -> str:
    """The Markdown of ``report`` (the JSON's content), ending with ``method`` (how it was measured)."""
    settings = report["settings"]
    lines = _environment_lines(report) + _oversubscribed(report)
    for name in settings["families"]:
        family = bench_family(name)
        lines += [f"## The {name} family", "", "Regimes: " + "; ".join(
            f"{regime}: {family.regimes[regime]}" for regime in settings["regimes"][name]) + ".", ""]
        headline = report.get("headline", {}).get(name)
        if headline:
            lines += [f"### Headline ({headline['issue']}): N = {headline['N']}, D = {headline['D']}, "
                      f"C = {headline['C']}, {headline['regime']}, {headline['dtype']}", "",
                      "Time of each peer as a multiple of the limit's time (lower is better).", ""]
            lines += headline_table(headline) + [""]
        records = [record for record in report.get("grid", []) if record["family"] == name]
        if records:
            lines += ["### Grid", "",
                      "Median ms per call; `X / penact` is X's time over penact's (> 1: penact is faster); "
                      "`limit / penact` is the fraction of the limit penact reaches (1 = at the limit); "
                      "`bw bound / penact` the same against the bytes the op must move at the measured copy "
                      "bandwidth; `penact /s`: rows, arguments, or (class, coordinate) pairs for log_partition, "
                      "per second; `n/a`: the peer has no counterpart. Ops whose cost does not depend on the "
                      "regime run at the default regime only. Limits: "
                      + "; ".join(f"{op}: `{limit}`" for op, limit in LIMIT_NAMES.items()) + ".", ""]
            lines += grid_table(records, tuple(settings["peers"])) + [""]
            lines += ["Peers not measured:", ""] + skip_table(records) + [""]
            notes = sorted({f"{peer}: {result['note']}" for record in records
                            for peer, result in record["peers"].items() if result.get("note")})
            lines += ["Notes on the peers: " + "; ".join(notes) + ".", ""]
        accuracy = [record for record in report.get("accuracy", []) if record["family"] == name]
        if accuracy:
            lines += ["### Accuracy", ""] + accuracy_tables(accuracy) + [""]
    if report.get("accuracy_skipped"):
        lines += ["## Accuracy", "", f"Skipped: {report['accuracy_skipped']}", ""]
    lines += ["## Method", "", method, ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Throughput (rows or arguments per second) against N, one panel per family, operation and C,
    one colour per peer and one line style per D, at the family's default regime (or the first)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [record for record in report["grid"] if record["N"] is not None]
    panels = []
    for name in report["settings"]["families"]:
        family = bench_family(name)
        mine = [r for r in records if r["family"] == name]
        regimes = {r["regime"] for r in mine}
        regime = family.default_regime if family.default_regime in regimes else min(regimes, default=None)
        classes = sorted({r["C"] for r in mine if r["C"] is not None})
        for op in OPS:
            if any(r["op"] == op for r in mine):
                panels += [(name, op, c, regime) for c in ([None] if op in ELEMENT_OPS else classes)]
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    colours = {name: f"C{index}" for index, name in enumerate(PEERS)} | {LIMIT: "k"}
    styles = ["-", "--", ":", "-."]
    dims = sorted({r["D"] for r in records})
    for ax, (family, op, wanted_classes, regime) in zip(axes.flat, panels):
        for dim_index, dim in enumerate(dims):
            chosen = sorted((r for r in records if (r["family"], r["op"], r["D"], r["regime"], r["C"])
                             == (family, op, dim, regime, wanted_classes)), key=lambda r: r["N"])
            for name in PEERS + (LIMIT,):
                points = [(r["N"], r["N"] / r["peers"][name]["time_s"]) for r in chosen
                          if name in r["peers"] and r["peers"][name]["status"] == "ok"]
                if points:
                    ax.plot(*zip(*points), styles[dim_index % len(styles)], marker="o", markersize=3,
                            color=colours[name], label=f"{name} D={dim}")
        title = f"{family}: {op}" + ("" if wanted_classes is None else f", C={wanted_classes}") + f", {regime}"
        ax.set(xscale="log", yscale="log", title=title, xlabel="N",
               ylabel="arguments/s" if op in ELEMENT_OPS else "rows/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    env = report["environment"]
    figure.suptitle(f"penact bench on {env['device_name']} ({env['torch_threads']} threads), "
                    f"{env['date'][:10]}, {report['settings']['dtype']}", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(report: dict, stem: Path, method: str, with_plot: bool) -> tuple[str, list[Path]]:
    """Writes ``<stem>.json``, ``<stem>.md`` and (``with_plot``, if the grid has a case) ``<stem>.png``;
    returns the Markdown and the paths written."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    paths[0].write_text(json.dumps(report, indent=1, default=str) + "\n")
    text = markdown_report(report, method)
    paths[1].write_text(text)
    if with_plot and any(record["N"] is not None for record in report.get("grid", [])):
        paths.append(stem.with_suffix(".png"))
        plot(report, paths[-1])
    return text, paths
