"""The ablation's report: ``ablation.md``, ``.csv``, ``ablation_runs.csv`` and ``.png``.

Every number is read from the runs' own evaluation files (the trainer's
``eval/iter_XXXXXXX/metrics.json`` that each ``result.json`` names), in percent: mask AP,
AP50, AP75 and box AP per run, then their mean and sample standard deviation over seeds per
variant, beside the paper's figures. A variant with failed runs says so; one whose runs all
failed is reported as failed.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskrcnn.ablation.sweep import PlannedRun, RunRecord, SweepSettings
from maskrcnn.ablation.variants import BACKBONES, TABLE_TITLES, Variant

# (column, COCOeval task, statistic)
METRICS: tuple[tuple[str, str, str], ...] = (
    ("mask_AP", "segm", "AP"),
    ("mask_AP50", "segm", "AP50"),
    ("mask_AP75", "segm", "AP75"),
    ("box_AP", "bbox", "AP"),
)


@dataclass(frozen=True)
class RunValues:
    """One run's figures (percent), read from its evaluation file; None when not done."""

    run_name: str
    seed: int
    status: str
    iteration: int | None
    eval_file: Path | None
    values: dict[str, float] | None
    error: str | None = None


@dataclass(frozen=True)
class VariantSummary:
    """A variant's runs and their mean and spread."""

    variant: Variant
    runs: tuple[RunValues, ...]

    @property
    def done(self) -> tuple[RunValues, ...]:
        return tuple(r for r in self.runs if r.values is not None)

    @property
    def failed(self) -> tuple[RunValues, ...]:
        return tuple(r for r in self.runs if r.status == "failed")

    def mean(self, metric: str) -> float | None:
        vals = [r.values[metric] for r in self.done if r.values is not None]
        return statistics.fmean(vals) if vals else None

    def sd(self, metric: str) -> float | None:
        vals = [r.values[metric] for r in self.done if r.values is not None]
        return statistics.stdev(vals) if len(vals) >= 2 else None


def read_run(run: PlannedRun, record: RunRecord) -> RunValues:
    """The run's figures from the evaluation file its ``result.json`` names."""
    if record.status != "done":
        error = record.data.get("error") if record.status == "failed" else None
        return RunValues(run.run_name, run.seed, record.status, None, None, None, error)
    path = record.folder / str(record.data["eval"])
    metrics = json.loads(path.read_text())
    values = {name: 100 * float(metrics[task][key]) for name, task, key in METRICS}
    return RunValues(
        run.run_name, run.seed, "done", int(record.data["iteration"]), path, values, None
    )


def summarise(
    variants: Sequence[Variant], records: Sequence[tuple[PlannedRun, RunRecord]]
) -> list[VariantSummary]:
    """Each variant with the runs of its model (shared between rows of the same model)."""
    by_name: dict[str, list[RunValues]] = {}
    for run, record in records:
        by_name.setdefault(run.run_name, []).append(read_run(run, record))
    return [VariantSummary(v, tuple(by_name.get(v.run_name, ()))) for v in variants]


def _cell(s: VariantSummary, metric: str) -> str:
    if not s.done:
        return "failed" if s.failed else "-"
    mean, sd = s.mean(metric), s.sd(metric)
    assert mean is not None
    return f"{mean:.1f}" if sd is None else f"{mean:.1f} ± {sd:.1f}"


def _paper(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _runs_cell(s: VariantSummary) -> str:
    text = f"{len(s.done)}/{len(s.runs)}"
    if s.failed:
        text += f" ({len(s.failed)} failed)"
    return text


def _ordering(summaries: Sequence[VariantSummary]) -> str:
    """Whether the measured mask AP ranks the rows as the paper does."""
    rows = [s for s in summaries if s.variant.paper is not None and s.mean("mask_AP") is not None]
    if len(rows) < 2:
        return ""
    paper = sorted(rows, key=lambda s: -s.variant.paper.ap)  # type: ignore[union-attr]
    ours = sorted(rows, key=lambda s: -(s.mean("mask_AP") or 0.0))
    p = " > ".join(s.variant.label for s in paper)
    o = " > ".join(f"{s.variant.label} ({s.mean('mask_AP'):.1f})" for s in ours)
    same = [s.variant.label for s in paper] == [s.variant.label for s in ours]
    verdict = "same order as the paper" if same else "the order differs from the paper's"
    return f"Mask AP order - paper: {p}; measured: {o} ({verdict})."


def markdown(
    summaries: Sequence[VariantSummary],
    settings: SweepSettings,
    *,
    total_minutes: float | None = None,
    data_note: str = "",
) -> str:
    """The report as markdown: set-up, then one table per ablation table."""
    backbones = sorted({s.variant.backbone for s in summaries})
    lines = ["# Mask R-CNN Table 2 at CPU scale", ""]
    lines.append(
        f"One training per variant and seed (seeds {list(settings.seeds)}), every run with the "
        f"same data, recipe and training budget of {settings.minutes_per_run:g} min "
        f"(AdamW {settings.lr:g}, batch {settings.batch_size}, {settings.precision}, warm-up "
        f"{settings.warmup_fraction:.0%}, decay x0.1 at {list(settings.lr_steps)} of the steps), "
        "differing only in the ablated setting. Mask AP, AP50, AP75 and box AP (COCOeval, "
        "percent) are the mean ± sample standard deviation over seeds, read from each run's "
        "final evaluation file; the paper's figures are COCO minival mask AP of ResNet-50 "
        "models trained for 160k+ iterations, so only the orderings compare."
    )
    lines.append("")
    if data_note:
        lines += [f"Data: {data_note}", ""]
    if settings.backbone is not None:
        lines += [
            f"Every run's ResNet starts from {settings.backbone} (the paper's start from "
            "ImageNet weights); the heads start fresh.",
            "",
        ]
    lines.append("Stand-in models (said plainly: not the paper's ResNet-50s):")
    lines.append("")
    for name in backbones:
        b = BACKBONES[name]
        lines.append(f"- `{name}` for {b.stands_in_for}: {b.description}.")
    lines.append("")
    if total_minutes is not None:
        lines += [f"Wall-clock time of this invocation: {total_minutes:.1f} min.", ""]
    tables: dict[str, list[VariantSummary]] = {}
    for s in summaries:
        tables.setdefault(s.variant.table, []).append(s)
    for table, rows in tables.items():
        lines += [f"## {TABLE_TITLES.get(table, table)}", ""]
        lines.append(
            "| variant | paper AP | paper AP50 | paper AP75 | mask AP | mask AP50 | mask AP75 "
            "| box AP | runs |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s in rows:
            p = s.variant.paper
            cells = [
                s.variant.label,
                _paper(p.ap if p else None),
                _paper(p.ap50 if p else None),
                _paper(p.ap75 if p else None),
                *(_cell(s, m) for m, _, _ in METRICS),
                _runs_cell(s),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        order = _ordering(rows)
        if order:
            lines += [order, ""]
        for s in rows:
            for r in s.failed:
                lines.append(f"- {s.variant.label}, seed {r.seed}: failed: {r.error}")
        if any(s.failed for s in rows):
            lines.append("")
    return "\n".join(lines)


def write_csv(summaries: Sequence[VariantSummary], path: Path) -> Path:
    """One row per variant: means and spreads beside the paper's figures."""
    header = ["table", "variant", "run_name", "stand_in", "runs_done", "runs_failed"]
    for m, _, _ in METRICS:
        header += [f"{m}_mean", f"{m}_sd"]
    header += ["paper_AP", "paper_AP50", "paper_AP75"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for s in summaries:
            v, p = s.variant, s.variant.paper
            row: list[Any] = [v.table, v.label, v.run_name, BACKBONES[v.backbone].stands_in_for]
            row += [len(s.done), len(s.failed)]
            for m, _, _ in METRICS:
                row += [_num(s.mean(m)), _num(s.sd(m))]
            row += [_num(p.ap if p else None), _num(p.ap50 if p else None)]
            row += [_num(p.ap75 if p else None)]
            w.writerow(row)
    return path


def write_runs_csv(summaries: Sequence[VariantSummary], path: Path) -> Path:
    """One row per run (each model once): its figures and the evaluation file they come from."""
    seen: set[tuple[str, int]] = set()
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["run_name", "seed", "status", "iteration", *(m for m, _, _ in METRICS), "eval_file"]
        )
        for s in summaries:
            for r in s.runs:
                if (r.run_name, r.seed) in seen:
                    continue
                seen.add((r.run_name, r.seed))
                vals = [_num(r.values[m]) if r.values else "" for m, _, _ in METRICS]
                w.writerow(
                    [r.run_name, r.seed, r.status, r.iteration or "", *vals, r.eval_file or ""]
                )
    return path


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def write_plot(summaries: Sequence[VariantSummary], path: Path) -> Path:
    """Bar chart per table: the paper's AP, the measured mask AP and AP75 (± sd over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables: dict[str, list[VariantSummary]] = {}
    for s in summaries:
        tables.setdefault(s.variant.table, []).append(s)
    fig, axes = plt.subplots(
        1,
        len(tables),
        figsize=(3.2 + 1.6 * max(len(r) for r in tables.values()) * len(tables), 4.2),
        squeeze=False,
    )
    width = 0.27
    for ax, (table, rows) in zip(axes[0], tables.items()):
        xs = range(len(rows))
        paper = [s.variant.paper.ap if s.variant.paper else 0.0 for s in rows]
        ap = [s.mean("mask_AP") or 0.0 for s in rows]
        ap_sd = [s.sd("mask_AP") or 0.0 for s in rows]
        ap75 = [s.mean("mask_AP75") or 0.0 for s in rows]
        ap75_sd = [s.sd("mask_AP75") or 0.0 for s in rows]
        ax.bar([x - width for x in xs], paper, width, color="0.75", label="paper mask AP (COCO)")
        ax.bar(xs, ap, width, yerr=ap_sd, capsize=3, color="tab:blue", label="measured mask AP")
        ax.bar(
            [x + width for x in xs],
            ap75,
            width,
            yerr=ap75_sd,
            capsize=3,
            color="tab:cyan",
            label="measured mask AP75",
        )
        for x, s in zip(xs, rows):
            if not s.done:
                ax.text(x, 1, "failed" if s.failed else "n/a", ha="center", rotation=90, fontsize=8)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([s.variant.label for s in rows], rotation=20, ha="right", fontsize=8)
        ax.set_title(TABLE_TITLES.get(table, table).split(":")[0], fontsize=10)
        ax.set_ylabel("AP (%)")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    csv: Path
    runs_csv: Path
    plot: Path


def write_report(
    variants: Sequence[Variant],
    records: Sequence[tuple[PlannedRun, RunRecord]],
    settings: SweepSettings,
    *,
    total_minutes: float | None = None,
    data_note: str = "",
) -> ReportFiles:
    """Writes the four report files into ``settings.out``."""
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarise(variants, records)
    md = out / "ablation.md"
    md.write_text(markdown(summaries, settings, total_minutes=total_minutes, data_note=data_note))
    return ReportFiles(
        md,
        write_csv(summaries, out / "ablation.csv"),
        write_runs_csv(summaries, out / "ablation_runs.csv"),
        write_plot(summaries, out / "ablation.png"),
    )
