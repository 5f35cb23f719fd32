"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is one ``torch.save`` file of plain containers, numbers, strings and tensors, so
it loads with ``torch.load(weights_only=True)`` (no pickled code runs):

    format, iteration, model, optimizer, scheduler, scaler, rng, data, model_config,
    categories, train_config, counters

In memory it is a :class:`TrainingState` whose bookkeeping parts are typed
(:class:`~maskrcnn.train.resumable_data.DataPosition`, :class:`Counters`, one
:class:`~maskrcnn.train.rng.RngState` per rank); they become plain containers only in
:meth:`TrainingState.to_dict` / :meth:`TrainingState.from_dict`, at the ``torch.save`` /
``torch.load`` boundary. Format 2 stores ``train_config`` in the sectioned layout of
:class:`~maskrcnn.train.config.TrainConfig`; format 1 files (the flat layout) still load.

Writing goes to a temporary file in the same folder, which is flushed, fsynced and renamed
over the target (``os.replace`` is atomic), so a crash at any moment leaves either the old
file or the new one, never half of one. A run folder holds ``last.ckpt`` and, optionally, the
most recent ``iter_XXXXXXX.ckpt`` files (hard links to the same data where possible).

:func:`export_model` writes the final model in the deployable format of
:mod:`maskrcnn.weights.native` (safetensors, configuration and category names inside).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from maskrcnn.config import ModelConfig
from maskrcnn.train.resumable_data import DataPosition
from maskrcnn.train.rng import RngState

if TYPE_CHECKING:
    from maskrcnn.modeling import MaskRCNN

FORMAT = "maskrcnn-train/2"
READABLE_FORMATS = ("maskrcnn-train/1", FORMAT)  # 1: flat train_config
LAST = "last.ckpt"
_ITER_RE = re.compile(r"^iter_(\d{7,})\.ckpt$")
_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Counters:
    """Bookkeeping numbers of a run.

    Attributes:
        skipped_steps: steps skipped for a non-finite loss or gradient, in the whole run.
        elapsed_seconds: wall-clock seconds of training, over all invocations.
    """

    skipped_steps: int = 0
    elapsed_seconds: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {"skipped_steps": self.skipped_steps, "elapsed_seconds": self.elapsed_seconds}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Counters:
        """Inverse of :meth:`to_dict` (missing numbers read as 0)."""
        return Counters(
            skipped_steps=int(data.get("skipped_steps", 0)),
            elapsed_seconds=float(data.get("elapsed_seconds", 0.0)),
        )


@dataclass
class TrainingState:
    """The content of a training checkpoint.

    Attributes:
        iteration: optimisation steps completed.
        model: the model's ``state_dict`` (CPU tensors).
        optimizer: the optimizer's ``state_dict``.
        scheduler: the learning-rate scheduler's ``state_dict``.
        scaler: the fp16 gradient scaler's ``state_dict``, or None without one.
        rng: the random generator states of every rank (index = rank).
        data: the data's position.
        model_config: :meth:`ModelConfig.to_dict` of the model.
        categories: the category map (``CategoryMap.to_dict``).
        train_config: ``TrainConfig.to_dict`` of the run (read it with
            ``TrainConfig.from_dict``, which also reads format 1's flat layout).
        counters: bookkeeping numbers (e.g. skipped non-finite steps).
    """

    iteration: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    rng: tuple[RngState, ...]
    data: DataPosition
    model_config: dict[str, Any]
    categories: dict[str, Any]
    train_config: dict[str, Any]
    counters: Counters = field(default_factory=Counters)

    def to_dict(self) -> dict[str, Any]:
        """The plain containers ``torch.save`` writes (format :data:`FORMAT`)."""
        return {
            "format": FORMAT,
            "iteration": self.iteration,
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "rng": {"ranks": [r.to_dict() for r in self.rng]},
            "data": self.data.to_dict(),
            "model_config": self.model_config,
            "categories": self.categories,
            "train_config": self.train_config,
            "counters": self.counters.to_dict(),
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any], where: str = "checkpoint") -> TrainingState:
        """Inverse of :meth:`to_dict`, for every format in :data:`READABLE_FORMATS`.

        Raises:
            ValueError: another format, or missing parts (the message names ``where``).
        """
        if not isinstance(data, Mapping) or data.get("format") not in READABLE_FORMATS:
            raise ValueError(f"{where}: not a maskrcnn training checkpoint (format {FORMAT!r})")
        names = [f for f in TrainingState.__dataclass_fields__ if f != "counters"]
        missing = [k for k in names if k not in data]
        if missing:
            raise ValueError(f"{where}: checkpoint lacks {missing}")
        return TrainingState(
            iteration=int(data["iteration"]),
            model=data["model"],
            optimizer=data["optimizer"],
            scheduler=data["scheduler"],
            scaler=data["scaler"],
            rng=tuple(RngState.from_dict(r) for r in (data["rng"] or {}).get("ranks", [])),
            data=DataPosition.from_dict(data["data"]),
            model_config=data["model_config"],
            categories=data["categories"],
            train_config=data["train_config"],
            counters=Counters.from_dict(data.get("counters") or {}),
        )


def iter_name(iteration: int) -> str:
    """``iter_0001234.ckpt``."""
    return f"iter_{iteration:07d}.ckpt"


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` through a temporary file: all of it or nothing at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return path


def save_checkpoint(
    state: TrainingState, run_dir: str | Path, *, keep: int = 0
) -> tuple[Path, Path | None]:
    """Writes ``run_dir/last.ckpt`` and, with ``keep != 0``, ``run_dir/iter_XXXXXXX.ckpt``.

    Args:
        state: what to save.
        run_dir: the run folder.
        keep: how many ``iter_*.ckpt`` files to keep (older ones are deleted; negative keeps
            all; 0 writes none).

    Returns:
        The path of ``last.ckpt`` and of the iteration file (or None).

    Raises:
        ValueError: the model or optimizer state holds a NaN or an infinity (nothing is
            written, so the last good checkpoint stays).
    """
    from maskrcnn.weights.native import check_finite

    run_dir = Path(run_dir)
    check_finite(
        {"model": state.model, "optimizer": state.optimizer},
        what="the training state",
        path=run_dir / LAST,
    )
    last = atomic_torch_save(state.to_dict(), run_dir / LAST)
    if keep == 0:
        return last, None
    numbered = run_dir / iter_name(state.iteration)
    _link_or_copy(last, numbered)
    if keep > 0:
        for old in list_iter_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return last, numbered


def _link_or_copy(src: Path, dst: Path) -> None:
    """Makes ``dst`` a hard link to (or an atomic copy of) ``src``."""
    tmp = dst.with_name(f"{_TMP_PREFIX}{dst.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links on this file system
        atomic_torch_save(torch.load(src, map_location="cpu", weights_only=True), dst)
        return
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_iter_checkpoints(run_dir: str | Path) -> list[Path]:
    """The ``iter_*.ckpt`` files of a run folder, oldest iteration first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _ITER_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Deletes temporary files left by a process killed while writing; returns them."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    stale = [p for p in run_dir.iterdir() if p.name.startswith(_TMP_PREFIX) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | Path) -> TrainingState:
    """Reads a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable training checkpoint (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, not a torch file, disallowed types
        raise ValueError(f"{path}: cannot read the checkpoint ({err})") from err
    return TrainingState.from_dict(data, where=str(path))


# ----------------------------------------------------------------------------------------------
# The deployable model


def export_model(
    model: MaskRCNN | nn.parallel.DistributedDataParallel,
    path: str | Path,
    cfg: ModelConfig | None = None,
) -> Path:
    """Writes the final model as ``.safetensors`` with its configuration (category names in it).

    Args:
        model: a :class:`~maskrcnn.modeling.MaskRCNN` (a DistributedDataParallel wrapper is
            unwrapped).
        path: the file to write (atomically).
        cfg: the configuration to store if it differs from ``model.cfg`` (e.g. to add category
            names); it must describe the same architecture.
    """
    from maskrcnn.weights.native import save_model

    inner: MaskRCNN
    if isinstance(model, nn.parallel.DistributedDataParallel):
        inner = model.module
    else:
        inner = model
    if cfg is not None and cfg != inner.cfg:
        previous = inner.cfg
        inner.cfg = cfg
        try:
            return save_model(inner, path)
        finally:
            inner.cfg = previous
    return save_model(inner, path)


def unwrap_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's ``state_dict`` on the CPU (without a DDP ``module.`` prefix)."""
    inner = getattr(model, "module", model)
    return {k: v.detach().to("cpu") for k, v in inner.state_dict().items()}


def model_config_from(state: TrainingState, where: str) -> ModelConfig:
    """The checkpoint's model configuration; a bad one raises a ``ValueError`` naming ``where``."""
    try:
        return ModelConfig.from_dict(state.model_config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: bad model configuration: {err}") from err
