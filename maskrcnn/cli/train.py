"""The ``train`` command: ``maskrcnn train --data DIR --out RUN_DIR [...]``.

    maskrcnn train --data data/shapes --out runs/shapes --preset r18_fpn \\
        --set input.min_size=[512] --batch-size 4 --max-iter 3000 --eval-period 500
    maskrcnn train --out runs/shapes --resume          # continue after a crash or Ctrl-C
    torchrun --nproc-per-node 4 -m maskrcnn.cli train ...   # distributed

``--data DIR`` is the layout of ``maskrcnn data shapes`` (DIR/train.json, DIR/val.json,
DIR/images); otherwise give ``--train-ann/--train-images`` (and ``--val-ann/--val-images``).

Where the settings come from, each layer over the one before: the defaults (or, with
``--resume``, the run's checkpoint), ``--recipe NAME`` (``maskrcnn recipes`` lists them),
``--config FILE`` (YAML, TOML or JSON, whole or partial, e.g. a run's ``train_config.json``),
then the options below. ``--print-config`` prints the result as YAML, which ``--config``
reads back to the same configuration, and trains nothing.
``--set key=value`` overrides the model configuration (``ModelSpec.overrides``),
``--train-set section.field=value`` any :class:`TrainConfig` field (``optim.base_lr=0.01``;
the flat names of earlier versions, ``base_lr=0.01``, still work). ``--precision`` is one of
fp32/bf16/fp16/auto; ``--amp none|auto|bf16|fp16`` is its older spelling (none = fp32).
With ``--resume`` the run's own configuration is read from its checkpoint, and only the
options given on the command line change it.

Exit codes: 0 done, 1 stopped by non-finite losses, 2 bad input (found before training, or
an unreadable image met while training: the message names the file).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from maskrcnn.modeling.precision import PRECISIONS
from maskrcnn.train.assignments import parse_assignments
from maskrcnn.train.checkpoint import LAST, load_checkpoint
from maskrcnn.train.config import TrainConfig
from maskrcnn.train.config_compat import AMP_MODES, precision_of_amp
from maskrcnn.train.config_file import dump_config, merged, read_config_file
from maskrcnn.train.recipes import RECIPES, recipe

# option -> TrainConfig field (dotted path), for the explicit flags
_FLAGS = {
    "preset": "model.preset",
    "batch_size": "data.batch_size",
    "max_iter": "schedule.max_iter",
    "max_minutes": "runtime.max_minutes",
    "precision": "runtime.precision",
    "workers": "data.num_workers",
    "eval_period": "eval.period",
    "checkpoint_period": "checkpoint.period",
    "imagenet": "model.imagenet",
    "device": "runtime.device",
    "seed": "runtime.seed",
    "threads": "runtime.threads",
    "skip_bad_images": "data.skip_bad_images",
}


def add_train_command(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``train`` to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "train",
        help="train a model on COCO-format data (resumable)",
        description=__doc__.split("\n\n")[0],
    )
    data = p.add_argument_group("data")
    data.add_argument("--data", help="folder with train.json, val.json and images/")
    data.add_argument("--train-ann", help="training COCO annotation file")
    data.add_argument("--train-images", help="training image folder")
    data.add_argument("--val-ann", help="validation COCO annotation file")
    data.add_argument("--val-images", help="validation image folder")
    p.add_argument("--out", help="run folder (checkpoints, metrics, final model)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--preset", help="model preset (default r50_fpn)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="model config override"
    )
    p.add_argument(
        "--train-set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="TrainConfig field, e.g. optim.base_lr=0.01 (old flat names work too)",
    )
    p.add_argument("--batch-size", type=int, help="images per step over all processes")
    p.add_argument("--lr", type=float, help="learning rate (as is; default 0.02 x batch / 16)")
    p.add_argument("--max-iter", type=int, help="optimisation steps")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget of this invocation")
    p.add_argument("--precision", choices=PRECISIONS, help="fp32, bf16, fp16 or auto")
    p.add_argument("--amp", choices=AMP_MODES, help="older spelling of --precision (none: fp32)")
    p.add_argument("--workers", type=int, help="data-loading processes per training process")
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: OMP_NUM_THREADS, else the cores not busy elsewhere)",
    )
    p.add_argument("--eval-period", type=int, help="steps between evaluations (0: at the end)")
    p.add_argument("--checkpoint-period", type=int, help="steps between checkpoints")
    p.add_argument("--imagenet", help="ImageNet backbone weights (name or file)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--skip-bad-images",
        action="store_const",
        const=True,
        default=None,
        help="skip unreadable training images (logged and counted) instead of stopping",
    )
    _add_config_sources(p)
    _add_init_options(p)
    p.set_defaults(func=cmd_train)
    return p


def _add_config_sources(p: argparse.ArgumentParser) -> None:
    """``--recipe``, ``--config`` and ``--print-config``."""
    sources = p.add_argument_group("configuration sources (under the options above)")
    sources.add_argument(
        "--recipe", choices=list(RECIPES), help="start from a named recipe (maskrcnn recipes)"
    )
    sources.add_argument(
        "--config",
        metavar="FILE",
        help="settings from a YAML, TOML or JSON file (whole or partial; train_config.json too)",
    )
    sources.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration (YAML, --config reads it) and train nothing",
    )


# ----------------------------------------------------------------------------------------------
# Fine-tuning from a pretrained Mask R-CNN (--init, --init-map, --freeze-at, --backbone-norm)


def _add_init_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("fine-tuning from a pretrained Mask R-CNN")
    group.add_argument(
        "--init",
        metavar="SOURCE",
        help="start from a whole Mask R-CNN: our .safetensors or training checkpoint, a "
        "torchvision .pth (v1/v2), a detectron2 .pkl/.pth, or a published name; class rows "
        "are carried over by category name",
    )
    group.add_argument(
        "--init-map",
        action="append",
        default=[],
        metavar="DATA=SOURCE,...",
        help="map data categories to source categories by hand (DATA= : start it fresh)",
    )
    group.add_argument(
        "--freeze-at",
        type=int,
        choices=range(6),
        help="freeze the stem and the first stages (0: nothing, 1: stem, 2: + res2, ... 5)",
    )
    group.add_argument(
        "--backbone-norm",
        choices=("frozen_bn", "bn"),
        help="backbone normalisation: frozen_bn (fixed statistics, the usual fine-tuning "
        "choice) or bn (trained BatchNorm)",
    )


def apply_init_options(cfg: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    """``cfg`` with the fine-tuning options set: ``--init`` (the architecture from the source
    unless ``--preset`` is given), ``--init-map``, and ``--freeze-at`` / ``--backbone-norm``
    as model overrides (joining the ``--set`` values)."""
    changes: dict[str, Any] = {}
    if args.init is not None:
        changes["model.init"] = args.init
        changes["model.init_arch"] = "preset" if args.preset is not None else "source"
    if args.init_map:
        changes["model.init_map"] = parse_init_map(args.init_map)
    overrides = dict(cfg.model.overrides)
    if args.freeze_at is not None:
        overrides["backbone.freeze_at"] = args.freeze_at
    if args.backbone_norm is not None:
        overrides["backbone.norm"] = args.backbone_norm
    if overrides != dict(cfg.model.overrides):
        changes["model.overrides"] = overrides
    return cfg.with_values(changes) if changes else cfg


def parse_init_map(items: list[str]) -> tuple[tuple[str, str], ...]:
    """``["rider=person,car=car"]`` -> ``(("rider", "person"), ("car", "car"))``.

    Raises:
        ValueError: an entry without ``=`` or without a data name.
    """
    pairs: list[tuple[str, str]] = []
    for item in items:
        for entry in item.split(","):
            if not entry.strip():
                continue
            data_name, sep, source_name = entry.partition("=")
            if not sep or not data_name.strip():
                raise ValueError(f"--init-map: expected DATA_NAME=SOURCE_NAME, got {entry!r}")
            pairs.append((data_name.strip(), source_name.strip()))
    return tuple(pairs)


def build_config(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """The :class:`TrainConfig` the arguments describe, and whether a checkpoint is resumed.

    Raises:
        ValueError: missing or inconsistent options (the message says which).
    """
    config = getattr(args, "config", None)
    file_layer = read_config_file(config) if config else {}
    out = args.out if args.out is not None else file_layer.get("out_dir")
    if out is None:
        raise ValueError("give --out RUN_DIR (or out_dir in the --config file)")
    changes: dict[str, Any] = {"out_dir": str(out)}
    if args.amp is not None:
        if args.precision is not None:
            raise ValueError("--amp and --precision exclude each other (--amp is the old name)")
        changes["runtime.precision"] = precision_of_amp(args.amp)
    for option, name in _FLAGS.items():
        value = getattr(args, option)
        if value is not None:
            changes[name] = value
    if args.no_progress:
        changes["log.progress"] = False
    last = Path(out) / LAST
    resuming = bool(args.resume and last.is_file())
    layers: list[dict[str, Any]] = []
    if resuming:
        layers.append(TrainConfig.from_dict(load_checkpoint(last).train_config).to_dict())
    if getattr(args, "recipe", None):
        layers.append(recipe(args.recipe).to_dict())
    layers += [file_layer, {"data": _data_paths(args)}]
    settings = merged(*layers)
    if not resuming and "train_ann" not in settings.get("data", {}):
        if args.resume:
            raise ValueError(
                f"no checkpoint in {out} to resume ({last} not found); to start a "
                "new run there, give --data DIR, or --train-ann and --train-images"
            )
        raise ValueError(
            "give --data DIR, or --train-ann and --train-images (or data.train_ann and "
            "data.train_images in the --config file)"
        )
    try:
        cfg = TrainConfig.from_dict(settings)
    except ValueError as err:
        raise ValueError(f"{config}: {err}" if config else str(err)) from None
    if args.set:  # parsed here, once: the configuration holds typed values
        parsed = parse_assignments(args.set, where="model override")
        changes["model.overrides"] = {**cfg.model.overrides, **parsed}
    cfg = cfg.with_values(changes).with_assignments(args.train_set)
    cfg = apply_init_options(cfg, args)
    if args.lr is not None:  # an absolute rate: it refers to this batch size
        cfg = cfg.with_values(
            {"optim.base_lr": args.lr, "optim.base_batch_size": cfg.data.batch_size}
        )
    return cfg, resuming


def _data_paths(args: argparse.Namespace) -> dict[str, str]:
    explicit = {
        "train_ann": args.train_ann,
        "train_images": args.train_images,
        "val_ann": args.val_ann,
        "val_images": args.val_images,
    }
    if args.data is not None:
        if any(v is not None for v in explicit.values()):
            raise ValueError("--data and --train-ann/--train-images/--val-* exclude each other")
        root = Path(args.data)
        if not root.is_dir():
            raise FileNotFoundError(f"--data: folder not found: {root}")
        paths = {"train_ann": str(root / "train.json"), "train_images": str(root / "images")}
        if (root / "val.json").is_file():
            paths.update(val_ann=str(root / "val.json"), val_images=str(root / "images"))
        return paths
    if (explicit["train_ann"] is None) != (explicit["train_images"] is None):
        raise ValueError("--train-ann and --train-images go together")
    if (explicit["val_ann"] is None) != (explicit["val_images"] is None):
        raise ValueError("--val-ann and --val-images go together")
    return {k: v for k, v in explicit.items() if v is not None}


def cmd_train(args: argparse.Namespace) -> int:
    """Runs ``maskrcnn train``; returns the exit code."""
    from maskrcnn.data.annotations import DatasetError
    from maskrcnn.train.trainer import FinalEvaluationError, NonFiniteLossError, Trainer

    _configure_logging()
    try:
        cfg, resuming = build_config(args)
        if args.print_config:
            print(dump_config(cfg), end="")
            return 0
        trainer = Trainer(cfg, resume=args.resume)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"maskrcnn train: error: {err}", file=sys.stderr)
        return 2
    if args.resume and not resuming:
        print(f"maskrcnn train: no checkpoint in {args.out}; started a new run", file=sys.stderr)
    try:
        result = trainer.run()
    except (NonFiniteLossError, FinalEvaluationError) as err:
        print(f"maskrcnn train: {err}", file=sys.stderr)
        return 1
    except DatasetError as err:  # an image or annotation found bad while loading
        hint = "" if cfg.data.skip_bad_images else " (--skip-bad-images skips bad images)"
        print(f"maskrcnn train: error: {_without_worker_traceback(err)}{hint}", file=sys.stderr)
        return 2
    if trainer.dist.is_main:
        print(
            f"{result.stop_reason}: {result.iteration} steps in {result.seconds / 60:.1f} min, "
            f"{result.skipped_steps} skipped; run folder {result.run_dir}"
        )
        if result.final_model is not None:
            print(f"model: {result.final_model}")
        if result.eval is not None:
            print(result.eval.table(), end="")
        if result.stop_reason == "interrupted":
            print(f"continue with: maskrcnn train --out {result.run_dir} --resume")
    return 0


def _without_worker_traceback(err: Exception) -> str:
    """The message of ``err``; for one re-raised from a DataLoader worker (whose message holds
    the worker's traceback), the original message only."""
    text = str(err)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    name = f"{type(err).__name__}: "
    return last.split(name, 1)[1] if name in last else last


def _configure_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:  # other ranks of a distributed run only report problems
        level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s")


def main(argv: list[str] | None = None) -> int:
    """``python -m maskrcnn.cli.train train ...`` (the same as ``maskrcnn train``)."""
    parser = argparse.ArgumentParser(prog="maskrcnn")
    add_train_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
