"""``maskrcnn ablate``: the paper's Table 2 ablations at CPU scale (one command, resumable).

:mod:`~maskrcnn.ablation.variants` holds the tables as data (stand-in models, rows, the
paper's figures), :mod:`~maskrcnn.ablation.sweep` trains one run per row and seed in its own
folder (resumable, failures recorded), :mod:`~maskrcnn.ablation.report` writes
``ablation.md``, ``ablation.csv`` and ``ablation.png`` from the runs' evaluation files.
"""

from maskrcnn.ablation.report import write_report
from maskrcnn.ablation.sweep import DataPaths, SweepSettings, default_data, plan_runs, sweep
from maskrcnn.ablation.variants import BACKBONES, TABLES, Variant, select_tables

__all__ = [
    "BACKBONES",
    "TABLES",
    "DataPaths",
    "SweepSettings",
    "Variant",
    "default_data",
    "plan_runs",
    "select_tables",
    "sweep",
    "write_report",
]
