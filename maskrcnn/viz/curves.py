"""Training curves: losses and AP against the step, read from a run's ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not JSON ({err.msg})") from err
        if not isinstance(row, dict) or "iter" not in row:
            raise ValueError(f"{path}:{number}: expected an object with an 'iter' key")
        rows.append(row)
    return rows


def plot_curves(metrics_jsonl_path: str | Path, out_png: str | Path) -> Path:
    """Plots loss curves (keys starting with "loss") and AP (keys ending in "_AP") vs iteration.

    Args:
        metrics_jsonl_path: one JSON object per line, each with "iter".
        out_png: the PNG to write; the AP panel appears only if some line has AP keys.
    """
    from matplotlib.figure import Figure

    path = Path(metrics_jsonl_path)
    rows = _read_jsonl(path)
    numeric = {k for r in rows for k, v in r.items() if isinstance(v, (int, float))}
    loss_keys = sorted(k for k in numeric if k.startswith("loss"))
    ap_keys = sorted(k for k in numeric if k.endswith("_AP"))
    if not loss_keys and not ap_keys:
        raise ValueError(f"{path}: no loss or AP keys to plot")
    panels = [("loss", loss_keys)] * bool(loss_keys) + [("AP", ap_keys)] * bool(ap_keys)
    fig = Figure(figsize=(6 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            points = [(r["iter"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=key, marker="o" if title == "AP" else None, linewidth=1.2)
        ax.set_xlabel("iteration")
        if title == "AP":  # on its whole scale, so a single point or a small gap is not magnified
            ax.set_ylim(0.0, 1.0)
            ax.set_xlim(left=0)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png
