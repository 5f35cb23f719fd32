"""A figure that explains RoIPool, RoIAlign and RoIWarp on one small example.

:func:`draw_roi_ops` draws an 8x8 single-channel map whose cell ``(row, col)`` holds
``10 * row + col`` (distinct values that tell where they were read), one RoI at float
coordinates, and three panels that pool it to 2x2, with the numbers our operators
(:mod:`maskrcnn.ops`) return on this exact example written under each panel:

1. RoIPool (Fast R-CNN): the RoI rounded to the grid, integer bins, the max cell of each bin.
2. RoIAlign (Mask R-CNN), ``sampling_ratio=2, aligned=True``: exact float bins, 2x2 samples per
   bin at ``(i + 0.5) / 2`` of it, and one sample's four neighbouring cell centres with their
   bilinear weights. ``aligned=True`` is the geometry the picture shows (a cell's value at its
   centre, the RoI sampled where it is drawn); ``aligned=False``, torchvision's default, would
   move every sample half a cell right and down.
3. RoIWarp (MNC), ``sampling_ratio=2``: RoIAlign's bilinear sampling and averaging, but of
   RoIPool's rounded box. This is what explains the paper's Table 2c: RoIWarp has bilinear
   sampling yet stays close to RoIPool, while RoIAlign, which differs from it only by not
   rounding, gains about 3 mask AP (recalled as 26.9 / 27.2 / 30.3 for RoIPool / RoIWarp /
   RoIAlign on ResNet-50-C4, max and average nearly equal). The alignment matters, not the
   bilinear sampling; RoIAlign's max variant would only show that the reduction does not.

Picture coordinates are box coordinates (``spatial_scale=1``): cell ``(r, c)`` covers
``[c, c+1] x [r, r+1]``. The bilinear kernels put cell ``(r, c)``'s value at kernel coordinate
``(c, r)``, so a sample at kernel coordinate ``x`` is drawn at ``x + 0.5``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, Patch, Rectangle
from matplotlib.text import Text

from maskrcnn.ops import roi_align, roi_pool, roi_warp

GRID = 8
ROI = (1.3, 1.7, 6.1, 5.4)  # x1, y1, x2, y2
SPATIAL_SCALE = 1.0
OUTPUT = 2
SAMPLING_RATIO = 2
ALIGNED = True
ROI_TEXT = ", ".join(f"{v:g}" for v in ROI)
SAMPLE = (0, 0, 3)  # the highlighted RoIAlign sample: bin row, bin col, index (row-major)
BIN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")  # bins (0,0), (0,1), (1,0), (1,1)
ROI_COLOR, QUANT_COLOR, WARP_COLOR, SAMPLE_COLOR = "#222222", "#d62728", "#8c1c13", "#c2185b"
DPI = 110
VALUE_FORMAT = "{:.3f}"  # how pooled numbers are written
MAP_CMAP = "Blues"
Point = tuple[float, float]
Style = dict[str, Any]  # matplotlib artist properties, passed on as keyword arguments
TEXT: Style = {"ha": "center", "va": "center"}
VALUE_TEXT: Style = {"fontsize": 9, "color": "#808080", "zorder": 4.5, **TEXT}
WEIGHT_TEXT: Style = {"ha": "center", "fontsize": 9, "weight": "bold", "zorder": 10}
EXACT_LINE: Style = {"color": ROI_COLOR, "lw": 2.2, "ls": (0, (5, 3))}
QUANT_LINE: Style = {"color": QUANT_COLOR, "lw": 2.4}
WARP_LINE: Style = {"color": WARP_COLOR, "lw": 1.8, "ls": (0, (1.5, 2.5))}
STAR_LINE: Style = {"color": SAMPLE_COLOR, "marker": "*", "ms": 11, "lw": 1.5}
SAMPLE_DOT: Style = {"s": 34, "zorder": 8, "ec": "white", "lw": 0.8}
DOT: Style = {"ls": "none", "marker": "o", "color": "#777777", "ms": 7}
LEGEND: Style = {"loc": "upper left", "fontsize": 10, "frameon": False, "handlelength": 2.6}
MARGINS: Style = {"left": 0.035, "right": 0.985, "top": 0.885, "bottom": 0.165}
TITLES = (
    "1. RoIPool (Fast R-CNN)\nround the RoI, integer bins, max per bin",
    f"2. RoIAlign (Mask R-CNN), sampling_ratio={SAMPLING_RATIO}, aligned={ALIGNED}\n"
    "exact float bins, bilinear samples, average per bin",
    f"3. RoIWarp (MNC), sampling_ratio={SAMPLING_RATIO}\n"
    "RoIPool's rounded RoI, then bilinear samples, average",
)


@dataclass
class BilinearSample:
    """One RoIAlign sample point and its bilinear interpolation.

    Attributes:
        x: Kernel x coordinate (cell ``c``'s value sits at ``x = c``).
        y: Kernel y coordinate.
        neighbors: The four ``(row, col)`` cells read, in the kernel's order (low/low,
            low/high, high/low, high/high).
        weights: Their bilinear weights (sum to 1).
        value: ``sum(weight * map[row][col])``.
    """

    x: float
    y: float
    neighbors: list[tuple[int, int]]
    weights: list[float]
    value: float


@dataclass
class RoIExplainResult:
    """What :func:`draw_roi_ops` drew.

    Attributes:
        path: The PNG written.
        feature_map: The ``GRID x GRID`` map (``map[row][col]``).
        roi: ``(x1, y1, x2, y2)``, given to the operators with ``spatial_scale``.
        spatial_scale: The operators' ``spatial_scale``.
        sampling_ratio: RoIAlign's and RoIWarp's ``sampling_ratio``.
        aligned: RoIAlign's ``aligned``.
        pooled: Operator name -> its 2x2 output, as returned by the operator.
        pooled_text: Operator name -> the 2x2 strings written under its panel.
        pool_argmax: RoIPool's ``(row, col)`` max cell per bin, as highlighted.
        sample: The highlighted RoIAlign sample point.
        texts: Every string drawn in the figure.
    """

    path: Path
    feature_map: list[list[float]]
    roi: tuple[float, float, float, float]
    spatial_scale: float
    sampling_ratio: int
    aligned: bool
    pooled: dict[str, list[list[float]]]
    pooled_text: dict[str, list[list[str]]]
    pool_argmax: list[list[tuple[int, int]]]
    sample: BilinearSample
    texts: list[str]


def feature_map() -> torch.Tensor:
    """The example map, [1, 1, GRID, GRID] float32 with value ``10 * row + col``."""
    r = torch.arange(GRID, dtype=torch.float32)
    return (10 * r[:, None] + r[None, :])[None, None]


def _c_round(v: float) -> int:
    """C's ``round``: halves away from zero, as RoIPool quantises."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def pool_bins(roi: tuple[float, ...], scale: float, out: int) -> list[list[tuple[int, ...]]]:
    """RoIPool's bins as ``(hstart, hend, wstart, wend)`` cell ranges (end exclusive)."""
    xs, ys, xe, ye = (_c_round(v * scale) for v in roi)
    bin_w, bin_h = max(xe - xs + 1, 1) / out, max(ye - ys + 1, 1) / out

    def span(p: int, size: float, start: int) -> tuple[int, int]:
        lo = min(max(math.floor(p * size) + start, 0), GRID)
        return lo, min(max(math.ceil((p + 1) * size) + start, 0), GRID)

    return [[span(ph, bin_h, ys) + span(pw, bin_w, xs) for pw in range(out)] for ph in range(out)]


def sample_grid(start: Point, size: Point, out: int, sr: int) -> list[list[list[Point]]]:
    """Kernel coordinates ``(x, y)`` of the ``sr x sr`` samples of each of ``out x out`` bins
    of the RoI ``start`` (x, y), ``size`` (w, h), as ``[ph][pw][k]``, row-major ``k``."""
    bw, bh = size[0] / out, size[1] / out

    def pts(ph: int, pw: int) -> list[Point]:
        x0, y0 = start[0] + pw * bw, start[1] + ph * bh
        return [
            (x0 + (i + 0.5) * bw / sr, y0 + (j + 0.5) * bh / sr)
            for j in range(sr)
            for i in range(sr)
        ]

    return [[pts(ph, pw) for pw in range(out)] for ph in range(out)]


def _axis_taps(v: float, n: int) -> tuple[int, int, float]:
    """One axis of the kernel's bilinear taps: (low, high, weight of high) for ``v`` in [-1, n]."""
    v = max(v, 0.0)
    low = int(v)
    return (n - 1, n - 1, 0.0) if low >= n - 1 else (low, low + 1, v - low)


def bilinear(fmap: list[list[float]], x: float, y: float) -> BilinearSample:
    """The RoIAlign kernel's bilinear interpolation at kernel coordinates ``(x, y)``.

    Follows the kernel's border rules (clamp to 0; a sample at or past the last row/column reads
    only that row/column); points outside ``[-1, H] x [-1, W]`` are not handled.
    """
    (y0, y1, ly), (x0, x1, lx) = _axis_taps(y, len(fmap)), _axis_taps(x, len(fmap[0]))
    cells = [(y0, x0), (y0, x1), (y1, x0), (y1, x1)]
    weights = [(1 - ly) * (1 - lx), (1 - ly) * lx, ly * (1 - lx), ly * lx]
    value = sum(wt * fmap[r][c] for wt, (r, c) in zip(weights, cells))
    return BilinearSample(x, y, cells, weights, value)


def _grid_panel(ax: Axes, fmap: list[list[float]], title: str, backed: bool = True) -> None:
    """Draws the faint feature map, its values, the exact RoI and a title.

    With ``backed``, each value sits on a patch of its cell's colour, so that the dotted lines
    through cell centres (zorder 4) pass behind it.
    """
    cmap, vmin, vmax, alpha = colormaps[MAP_CMAP], -20.0, 90.0, 0.28
    ax.imshow(fmap, cmap=cmap, alpha=alpha, extent=(0, GRID, GRID, 0), vmin=vmin, vmax=vmax)
    for r in range(GRID):
        for c in range(GRID):
            rgb = cmap((fmap[r][c] - vmin) / (vmax - vmin))[:3]
            face = tuple(alpha * v + (1 - alpha) for v in rgb)  # as drawn over white
            box = {"boxstyle": "square,pad=0.1", "fc": face, "ec": "none"} if backed else None
            ax.text(c + 0.5, r + 0.5, f"{fmap[r][c]:g}", bbox=box, **VALUE_TEXT)
    for k in range(GRID + 1):
        ax.axhline(k, color="#c8c8c8", lw=0.6, zorder=1)
        ax.axvline(k, color="#c8c8c8", lw=0.6, zorder=1)
    x1, y1, x2, y2 = (v * SPATIAL_SCALE for v in ROI)
    style: Style = {"fill": False, "ec": ROI_COLOR, "lw": 2.2, "ls": (0, (5, 3)), "zorder": 6}
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, **style))
    ax.set(xlim=(0, GRID), ylim=(GRID, 0), aspect="equal")
    ax.set(xticks=range(GRID + 1), yticks=range(GRID + 1))
    ax.tick_params(labelsize=9, length=2, top=True, labeltop=True, bottom=False, labelbottom=False)
    ax.set_title(title, fontsize=12.5, pad=24, linespacing=1.35)


def _bin_lines(ax: Axes, start: Point, size: Point, color: str, box_ls: object = None) -> None:
    """Dotted bin borders of an area (picture coordinates); its outline too if ``box_ls``."""
    if box_ls is not None:
        ax.add_patch(Rectangle(start, *size, fill=False, ec=color, lw=1.8, ls=box_ls, zorder=4))
    (x0, y0), (w, h) = start, size
    for k in range(1, OUTPUT):
        x, y = x0 + k * w / OUTPUT, y0 + k * h / OUTPUT
        ax.plot([x, x], [y0, y0 + h], color=color, lw=1.4, ls=":", zorder=4)
        ax.plot([x0, x0 + w], [y, y], color=color, lw=1.4, ls=":", zorder=4)


def _neighbours(ax: Axes, sample: BilinearSample, color: str) -> None:
    """Links a sample point to its four cell centres and writes the bilinear weights."""
    sx, sy, radius = sample.x + 0.5, sample.y + 0.5, 0.27
    label_box = {"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.85}
    for (r, c), wt in zip(sample.neighbors, sample.weights):
        cx, cy = c + 0.5, r + 0.5
        dist = math.hypot(cx - sx, cy - sy)
        if dist > radius:  # the link stops at the ring around the cell's value
            ex, ey = cx - (cx - sx) * radius / dist, cy - (cy - sy) * radius / dist
            ax.plot([sx, ex], [sy, ey], color=color, lw=1.5, zorder=7)
        ax.add_patch(Circle((cx, cy), radius, fill=False, ec=color, lw=1.8, zorder=9))
        below = cy > sy  # the weight goes outside the ring, on the side away from the sample
        va, dy = ("top", 0.3) if below else ("bottom", -0.3)
        ax.text(cx, cy + dy, f"{wt:.3f}", va=va, color=color, bbox=label_box, **WEIGHT_TEXT)
    ax.scatter([sx], [sy], s=190, marker="*", color=color, ec="white", lw=0.6, zorder=11)


def _samples(ax: Axes, grid: list[list[list[Point]]]) -> None:
    """Dots at every sample point (kernel coordinates, drawn +0.5), coloured by bin."""
    for color, points in zip(BIN_COLORS, (p for row in grid for p in row)):
        xs, ys = zip(*points)
        ax.scatter([x + 0.5 for x in xs], [y + 0.5 for y in ys], color=color, **SAMPLE_DOT)


def _output_table(ax: Axes, values: list[list[float]], call: str) -> list[list[str]]:
    """Draws a 2x2 output with bin-coloured cells; returns the strings written."""
    strings = [[VALUE_FORMAT.format(v) for v in row] for row in values]
    mono = "DejaVu Sans Mono"
    for k, color in enumerate(BIN_COLORS[: OUTPUT * OUTPUT]):
        ph, pw = divmod(k, OUTPUT)
        ax.add_patch(Rectangle((pw, ph), 1, 1, fc=color, alpha=0.16, ec="none"))
        ax.add_patch(Rectangle((pw, ph), 1, 1, fill=False, ec=color, lw=1.5))
        text = strings[ph][pw]
        ax.text(pw + 0.5, ph + 0.5, text, fontsize=13, family=mono, weight="bold", **TEXT)
    ax.set(xlim=(-0.6 * OUTPUT, 1.6 * OUTPUT), ylim=(OUTPUT + 0.02, -0.02))
    ax.axis("off")
    ax.set_title(call, fontsize=10, family=mono, pad=6)
    return strings


def _legend(ax: Axes, handles: list[Artist], extra: str | None = None) -> None:
    """A one-column legend in an empty axes under a panel, with an optional last line of text."""
    ax.axis("off")
    handles = [*handles, Line2D([], [], label=extra, ls="none")] if extra else handles
    leg = ax.legend(handles=handles, borderaxespad=0.0, labelspacing=0.45, **LEGEND)
    if extra:
        leg.get_texts()[-1].set_color(SAMPLE_COLOR)


def _caption(
    qbox: tuple[int, ...], align_grid: list[list[list[Point]]], warp_grid: list[list[list[Point]]]
) -> str:
    """The figure's caption, with the example's own numbers."""
    x1, y1, x2, y2 = (v * SPATIAL_SCALE for v in ROI)
    qx, qy, qx2, qy2 = qbox
    outside = max(x1 - qx, qx2 + 1 - x2, y1 - qy, qy2 + 1 - y2)
    dropped = max(qx - x1, x2 - qx2 - 1, qy - y1, y2 - qy2 - 1)

    def centre(points: list[Point]) -> Point:
        xs, ys = zip(*points)
        return sum(xs) / len(xs), sum(ys) / len(ys)

    def centres(grid: list[list[list[Point]]]) -> list[Point]:
        return [centre(bin_) for row in grid for bin_ in row]

    pairs = zip(centres(warp_grid), centres(align_grid))
    shifts = [abs(w - a) for cw, ca in pairs for w, a in zip(cw, ca)]
    return (
        f"RoIPool rounds the RoI ({ROI_TEXT} -> cells {qx}..{qx2} x {qy}..{qy2}) and cuts it "
        f"into whole cells: its bins read features up to {outside:.1f} cell outside the RoI "
        f"and drop up to {dropped:.1f} cell inside it,\n"
        "so the pooled 2x2 no longer lines up with the RoI. At stride 16 a 0.5-cell shift is "
        "8 image pixels: harmless for a class score, harmful for a pixel-accurate mask. "
        "RoIAlign keeps the exact coordinates.\n"
        "The map's value is 10*row + col, so each number tells where it was read: RoIAlign's "
        "averages are the map at the exact bin centres; RoIWarp's bin centres are off by "
        f"{min(shifts):.1f} to {max(shifts):.1f} cell.\n"
        "RoIWarp samples bilinearly but inside the rounded RoI, so it keeps RoIPool's "
        "misalignment: in the paper's Table 2c it gains little over RoIPool, while RoIAlign "
        "gains about 3 mask AP."
    )


def draw_roi_ops(out: str | Path) -> RoIExplainResult:
    """Draws the RoIPool / RoIAlign / RoIWarp explainer figure (see the module docstring).

    Args:
        out: Path of the PNG to write; parent directories are created.

    Returns:
        The path and every number and string drawn.
    """
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = feature_map()
    fmap = x[0, 0].tolist()
    box = torch.tensor([[0.0, *ROI]])
    with torch.no_grad():
        outs = {
            "RoIPool": roi_pool(x, box, OUTPUT, SPATIAL_SCALE),
            "RoIAlign": roi_align(x, box, OUTPUT, SPATIAL_SCALE, SAMPLING_RATIO, ALIGNED),
            "RoIWarp": roi_warp(x, box, OUTPUT, SPATIAL_SCALE, SAMPLING_RATIO),
        }
    pooled = {k: [[float(v) for v in row] for row in t[0, 0].tolist()] for k, t in outs.items()}

    # Geometry, from the operators' definitions (REFERENCE.md section 1).
    off = 0.5 if ALIGNED else 0.0
    x1, y1, x2, y2 = (v * SPATIAL_SCALE for v in ROI)
    size = (x2 - x1, y2 - y1) if ALIGNED else (max(x2 - x1, 1.0), max(y2 - y1, 1.0))
    align_grid = sample_grid((x1 - off, y1 - off), size, OUTPUT, SAMPLING_RATIO)
    qx, qy, qx2, qy2 = (_c_round(v * SPATIAL_SCALE) for v in ROI)
    q_size = (float(max(qx2 - qx + 1, 1)), float(max(qy2 - qy + 1, 1)))
    warp_grid = sample_grid((float(qx), float(qy)), q_size, OUTPUT, SAMPLING_RATIO)
    sample = bilinear(fmap, *align_grid[SAMPLE[0]][SAMPLE[1]][SAMPLE[2]])

    fig = Figure(figsize=(18, 11), dpi=DPI)  # no pyplot: no global state, no display
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(3, 3, height_ratios=[8, 1.75, 2.3], wspace=0.14, hspace=0.16, **MARGINS)
    title = "Pooling one RoI to a 2x2 output: RoIPool vs RoIAlign vs RoIWarp"
    fig.suptitle(title, fontsize=18, weight="bold", y=0.985)
    axes, legends, tables = ([fig.add_subplot(gs[r, i]) for i in range(3)] for r in range(3))
    exact = Line2D([], [], label=f"RoI, exact: x1, y1, x2, y2 = {ROI_TEXT}", **EXACT_LINE)
    label = f"RoI rounded to the grid: cells x {qx}..{qx2}, y {qy}..{qy2}"
    quant = Line2D([], [], label=label, **QUANT_LINE)
    n = SAMPLING_RATIO
    dots = Line2D([], [], label=f"{n}x{n} sample points per bin (colour = bin), averaged", **DOT)
    quant_box: Style = {"fill": False, "ec": QUANT_COLOR, "lw": 2.4, "zorder": 6}

    # 1. RoIPool: rounded RoI, integer bins, the max cell of each bin highlighted.
    ax = axes[0]
    _grid_panel(ax, fmap, TITLES[0], backed=False)
    ax.add_patch(Rectangle((qx, qy), *q_size, **quant_box))
    argmax: list[list[tuple[int, int]]] = []
    for i, row in enumerate(pool_bins(ROI, SPATIAL_SCALE, OUTPUT)):
        argmax.append([])
        for j, (h0, h1, w0, w1) in enumerate(row):
            color = BIN_COLORS[i * OUTPUT + j]
            fill: Style = {"fc": color, "alpha": 0.2, "ec": color, "lw": 1.2, "zorder": 2}
            ax.add_patch(Rectangle((w0 + 0.07, h0 + 0.07), w1 - w0 - 0.14, h1 - h0 - 0.14, **fill))
            cells = [(r, c) for r in range(h0, h1) for c in range(w0, w1)]
            best = max(cells, key=lambda rc: fmap[rc[0]][rc[1]])
            argmax[i].append(best)
            ring: Style = {"fill": False, "ec": color, "lw": 2.8, "zorder": 7}
            ax.add_patch(Rectangle((best[1] + 0.12, best[0] + 0.12), 0.76, 0.76, **ring))
    binfill = Patch(fc="#cccccc", ec="#888888", label="integer bins of whole cells (colour = bin)")
    maxcell = Patch(fc="white", ec="#444444", lw=2.5, label="max cell of each bin = the output")
    _legend(legends[0], [exact, quant, binfill, maxcell])

    # 2. RoIAlign: exact bins, samples, one sample's bilinear neighbours.
    ax = axes[1]
    _grid_panel(ax, fmap, TITLES[1])
    _bin_lines(ax, (x1 - off + 0.5, y1 - off + 0.5), size, ROI_COLOR)
    _samples(ax, align_grid)
    _neighbours(ax, sample, SAMPLE_COLOR)
    terms = zip(sample.weights, sample.neighbors)
    equation = " + ".join(f"{wt:.3f}*{fmap[r][c]:g}" for wt, (r, c) in terms)
    label = "one sample, its 4 neighbouring cell centres and weights:"
    neigh = Line2D([], [], label=label, **STAR_LINE)
    _legend(legends[1], [exact, dots, neigh], f"{equation} = {sample.value:.3f}")

    # 3. RoIWarp: rounded RoI, bilinear samples in roi_warp's own frame.
    ax = axes[2]
    _grid_panel(ax, fmap, TITLES[2])
    ax.add_patch(Rectangle((qx, qy), *q_size, **quant_box))
    _bin_lines(ax, (qx + 0.5, qy + 0.5), q_size, WARP_COLOR, WARP_LINE["ls"])
    _samples(ax, warp_grid)
    label = "area sampled and its bins (aligned=False: ½ cell off)"
    warped = Line2D([], [], label=label, **WARP_LINE)
    _legend(legends[2], [exact, quant, warped, dots])

    calls = {
        "RoIPool": f"roi_pool(x, box, {OUTPUT})",
        "RoIAlign": f"roi_align(x, box, {OUTPUT}, sampling_ratio={n}, aligned={ALIGNED})",
        "RoIWarp": f"roi_warp(x, box, {OUTPUT}, sampling_ratio={n})",
    }
    pooled_text = {k: _output_table(t, pooled[k], calls[k]) for t, k in zip(tables, calls)}
    caption = _caption((qx, qy, qx2, qy2), align_grid, warp_grid)
    fig.text(0.5, 0.018, caption, ha="center", va="bottom", fontsize=11.5, linespacing=1.55)
    fig.savefig(path, dpi=DPI, facecolor="white")
    texts = [t.get_text() for t in fig.findobj(Text) if t.get_text()]
    settings = (ROI, SPATIAL_SCALE, SAMPLING_RATIO, ALIGNED)
    return RoIExplainResult(path, fmap, *settings, pooled, pooled_text, argmax, sample, texts)
