"""Setting up a run: ``build_run(cfg, resume) -> TrainRun``.

Every check that can fail happens here, before any step: the process group, the device and
precision, the data (annotation files, categories; every validation image is decoded once),
the model configuration and, with ``resume``, whether the run folder's checkpoint fits. Then
the model is built (seeded), moved, optionally restored, and the run folder is prepared
(stale temporaries removed, ``metrics.jsonl`` cut back to the checkpoint's step,
``train_config.json`` written).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from maskrcnn.config import ModelConfig
from maskrcnn.data.categories import CategoryMap
from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.keypoints import keypoint_head_config
from maskrcnn.data.loader import build_train_loader
from maskrcnn.data.transforms import train_transforms
from maskrcnn.modeling import MaskRCNN, build_model
from maskrcnn.modeling.precision import ResolvedPrecision, resolve_precision
from maskrcnn.train import checkpoint as ckpt
from maskrcnn.train import state as run_state
from maskrcnn.train.checkpoint import Counters
from maskrcnn.train.config import TrainConfig
from maskrcnn.train.distributed import (
    DistInfo,
    close_distributed,
    init_distributed,
    resolve_device,
    wants_cuda,
)
from maskrcnn.train.metrics import MetricsWriter
from maskrcnn.train.resumable_data import TrainData
from maskrcnn.train.schedule import WarmupMultiStepLR, build_optimization
from maskrcnn.train.threads import ThreadGovernor
from maskrcnn.train.validation_set import check_validation_set
from maskrcnn.weights.finetune import InitReport, InitSource, init_from_source, read_init_source

logger = logging.getLogger("maskrcnn.train")

TRAIN_CONFIG_FILE = "train_config.json"


@dataclass(frozen=True)
class StartPoint:
    """Where the run starts: step 0 of a new run, or the resumed checkpoint's step.

    Attributes:
        iteration: steps already completed.
        counters: the checkpoint's counters (zeros for a new run).
        resumed: whether a checkpoint was restored.
    """

    iteration: int = 0
    counters: Counters = Counters()
    resumed: bool = False


@dataclass
class TrainRun:
    """Everything a training loop works with, set up and checked.

    Attributes:
        cfg: the run's configuration.
        run_dir: the run folder.
        dist: this process's place in the job.
        device: where the model and batches live.
        precision: the precision that runs (``runtime.precision`` resolved on ``device``).
        train_set: the training dataset.
        val_set: the validation dataset (None: no evaluation).
        categories: the training set's categories (they decide the classes).
        model_cfg: the model's configuration (with the dataset's classes).
        model: the model (unwrapped; SyncBatchNorm-converted when asked).
        train_model: what the steps call: ``model`` or its DistributedDataParallel wrapper.
        optimizer: the optimizer.
        scheduler: the learning-rate schedule.
        scaler: the fp16 GradScaler, or None.
        data: the training batches (positioned at the start point).
        metrics: rank 0's ``metrics.jsonl`` writer (disabled on other ranks).
        start: the step the run starts from, and the resumed counters.
        init_report: what ``model.init`` loaded, carried over and left fresh (a new run
            started from pretrained weights; None otherwise).
        threads: the CPU thread count's governor, started (None on CUDA).
    """

    cfg: TrainConfig
    run_dir: Path
    dist: DistInfo
    device: torch.device
    precision: ResolvedPrecision
    train_set: CocoDataset
    val_set: CocoDataset | None
    categories: CategoryMap
    model_cfg: ModelConfig
    model: MaskRCNN
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: WarmupMultiStepLR
    scaler: torch.amp.GradScaler | None
    data: TrainData
    metrics: MetricsWriter
    start: StartPoint
    init_report: InitReport | None = None
    threads: ThreadGovernor | None = None

    def close(self) -> None:
        """Closes the metrics writer and leaves the process group (if we created it)."""
        self.metrics.close()
        close_distributed(self.dist)


def build_run(cfg: TrainConfig, *, resume: bool = False) -> TrainRun:
    """Sets up a run as ``cfg`` says; with ``resume``, restores the run folder's checkpoint.

    Raises:
        ValueError, FileNotFoundError: bad data, configuration or run folder (the message
            names the file or the field); the process group is left again.
    """
    info = init_distributed(wants_cuda(cfg.runtime.device))
    try:
        return _build(cfg, info, resume)
    except BaseException:
        close_distributed(info)
        raise


def _build(cfg: TrainConfig, info: DistInfo, resume: bool) -> TrainRun:
    run_dir = Path(cfg.out_dir)
    device = resolve_device(cfg.runtime.device, info)
    precision = resolve_precision(cfg.runtime.precision, device)
    if cfg.data.batch_size % info.world_size:
        raise ValueError(
            f"batch_size {cfg.data.batch_size} is not divisible by {info.world_size} processes"
        )
    state = run_state.previous_run(run_dir, cfg, resume=resume)
    source, base = _init_source(cfg, state, where=str(run_dir / ckpt.LAST))
    train_set, val_set = _datasets(cfg, base)
    categories = train_set.categories
    model_cfg = cfg.model.model_config(categories.num_classes, categories.names_by_label, base=base)
    if train_set.keypoints is not None:  # a keypoint dataset trains a keypoint head
        head = keypoint_head_config(train_set.keypoints, model_cfg.keypoint_head)
        model_cfg = model_cfg.replace(keypoint_head=head)
    if state is not None:
        run_state.check_compatible(
            state,
            where=str(run_dir / ckpt.LAST),
            categories=categories,
            model_cfg=model_cfg,
            train_ann=cfg.data.train_ann,
        )

    torch.manual_seed(cfg.runtime.seed)
    model = build_model(model_cfg)
    if cfg.model.imagenet and state is None:
        from maskrcnn.weights.pretrained import load_imagenet_backbone

        load_imagenet_backbone(model, cfg.model.imagenet)
    init_report = None
    if source is not None:  # a new run only: a resumed one has the weights in its checkpoint
        init_report = init_from_source(
            model,
            source,
            target_names=categories.names_by_label,
            name_map=dict(cfg.model.init_map),
        )
        init_report.notes.extend(_norm_notes(model_cfg))
        del source
    model.to(device)
    if info.distributed and cfg.runtime.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer, scheduler = build_optimization(model, cfg)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    loader = build_train_loader(
        train_set,
        batch_size=cfg.data.batch_size // info.world_size,
        num_workers=cfg.data.num_workers,
        seed=cfg.runtime.seed,
        rank=info.rank,
        world_size=info.world_size,
        pin_memory=device.type == "cuda",
    )
    data = TrainData(loader)
    start = StartPoint()
    if state is not None:
        run_state.restore(
            state,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            data=data,
            rank=info.rank,
        )
        start = StartPoint(int(state.iteration), state.counters, resumed=True)
    del state  # the checkpoint's tensors are in the model and optimizer now
    train_model: nn.Module = model
    if info.distributed:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    metrics = MetricsWriter(run_dir, enabled=info.is_main)
    if info.is_main:
        _prepare_run_dir(run_dir, cfg, metrics, start.iteration)
        if init_report is not None:
            init_report.write(run_dir)
    if init_report is not None:
        logger.info("%s", init_report.table().rstrip())
    threads = None
    if device.type == "cpu":
        threads = ThreadGovernor(requested=cfg.runtime.threads)
        threads.start()
    logger.info(
        f"training {cfg.model.preset} ({categories.num_categories} classes) on "
        f"{len(train_set)} images, {cfg.data.batch_size} per step over {info.world_size} "
        f"process(es), lr {cfg.lr:.4g}, {device}"
        + (f" ({threads.choice.describe()})" if threads and threads.choice else "")
        + f", {precision}, "
        f"steps {start.iteration}..{scheduler.plan.max_iter}"
        + (
            " at most, fitted to the time budget"
            if cfg.runtime.max_minutes and cfg.schedule.fit_to_budget and not scheduler.plan.fitted
            else ""
        )
    )
    return TrainRun(
        cfg=cfg,
        run_dir=run_dir,
        dist=info,
        device=device,
        precision=precision,
        train_set=train_set,
        val_set=val_set,
        categories=categories,
        model_cfg=model_cfg,
        model=model,
        train_model=train_model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        data=data,
        metrics=metrics,
        start=start,
        init_report=init_report,
        threads=threads,
    )


def _init_source(
    cfg: TrainConfig, state: ckpt.TrainingState | None, *, where: str
) -> tuple[InitSource | None, ModelConfig | None]:
    """The pretrained weights a new run starts from (None: none, or a resumed run) and the
    architecture the model configuration starts from (None: the preset).

    A resumed run reads no source: its checkpoint's configuration is the architecture.
    """
    spec = cfg.model
    if spec.init is None:
        return None, None
    if state is not None:
        base = ckpt.model_config_from(state, where)
        return None, base if spec.init_arch == "source" else None
    source = read_init_source(spec.init)
    return source, source.config if spec.init_arch == "source" else None


def _norm_notes(model_cfg: ModelConfig) -> list[str]:
    """How the backbone's normalisation behaves in this fine-tuning run (said explicitly)."""
    bb = model_cfg.backbone
    kind = {
        "frozen_bn": "FrozenBN (the source's statistics and affine, fixed)",
        "bn": "BatchNorm (trained; batch statistics of this run's small batches)",
        "gn": "GroupNorm",
        "none": "no normalisation",
    }[bb.norm]
    frozen = ", ".join(("stem", "res2", "res3", "res4", "res5")[: bb.freeze_at]) or "nothing"
    return [
        f"backbone norm: {kind}; change it with --backbone-norm frozen_bn|bn",
        f"frozen: {frozen} (--freeze-at {bb.freeze_at})",
    ]


def _datasets(
    cfg: TrainConfig, base: ModelConfig | None = None
) -> tuple[CocoDataset, CocoDataset | None]:
    """The training set (with the model's input sizes and flips) and the validation set."""
    data = cfg.data
    sizes = cfg.model.model_config(base=base).input
    train_set = CocoDataset(
        data.train_ann,
        data.train_images,
        transforms=train_transforms(tuple(sizes.min_size), sizes.max_size, data.flip_prob),
        skip_bad_images=data.skip_bad_images,
    )
    if train_set.keypoints is not None:  # flips swap left and right keypoints
        train_set.transforms = train_transforms(
            tuple(sizes.min_size),
            sizes.max_size,
            data.flip_prob,
            keypoint_flip_map=train_set.keypoints.flip_map,
        )
    if train_set.categories.num_categories == 0:
        raise ValueError(f"{data.train_ann}: no categories to train on")
    _warn_without_targets(train_set)
    val_set = None
    if data.val_ann is not None and data.val_images is not None:
        val_set = CocoDataset(data.val_ann, data.val_images, categories=train_set.categories)
        check_validation_set(val_set, max_images=cfg.eval.max_images)
    return train_set, val_set


def _warn_without_targets(train_set: CocoDataset) -> None:
    """Warns (``UserWarning``) when no annotation of the training set is a usable target."""
    stats = train_set.stats
    if stats.targets > 0:
        return
    dropped = {
        "crowd": stats.crowd,
        "degenerate boxes": stats.degenerate_boxes,
        "degenerate polygons": stats.degenerate_polygons,
        "no segmentation": stats.missing_segmentations,
    }
    why = ", ".join(f"{n} {name}" for name, n in dropped.items() if n) or "no annotations"
    warnings.warn(
        f"{train_set.ann_file}: no usable training target in {stats.images} images "
        f"({stats.annotations} annotations: {why}); every image is a negative, so the model "
        "can learn nothing but background",
        UserWarning,
        stacklevel=3,
    )


def _prepare_run_dir(run_dir: Path, cfg: TrainConfig, metrics: MetricsWriter, step: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt.remove_stale_temporaries(run_dir)
    metrics.truncate_after(step)
    (run_dir / TRAIN_CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
