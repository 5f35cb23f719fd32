"""Training batches epoch after epoch, resumable in the middle of an epoch.

:class:`TrainData` wraps the training loader; its :class:`DataPosition` (epoch, batch within
it) is the data's part of a checkpoint, and :meth:`TrainData.seek` starts from one without
loading the skipped images.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader, Sampler

from maskrcnn.data.coco import Sample


@dataclass(frozen=True)
class DataPosition:
    """Where the data stands: ``batch`` batches of epoch ``epoch`` were taken.

    Attributes:
        epoch: the current epoch (0-based).
        batch: batches already taken in it.
        batches_per_epoch: the epoch's length when the position was taken (a resumed run
            with another length cannot continue the same order).
    """

    epoch: int = 0
    batch: int = 0
    batches_per_epoch: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "batches_per_epoch": self.batches_per_epoch,
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> DataPosition:
        """Inverse of :meth:`to_dict` (a missing ``batches_per_epoch`` reads as 0: unknown)."""
        return DataPosition(
            epoch=int(data.get("epoch", 0)),
            batch=int(data.get("batch", 0)),
            batches_per_epoch=int(data.get("batches_per_epoch") or 0),
        )


class ResumableBatches(Sampler[list[Any]]):
    """Wraps a batch sampler so that the next pass starts ``skip`` batches in.

    The wrapped sampler still produces the skipped batches (indices and seeds only, which is
    cheap), so per-sample seeds that count positions from the start of the epoch stay right.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[list[Any]]:
        skip, self.skip = self.skip, 0
        batches = iter(self.inner)
        for _ in range(skip):
            if next(batches, None) is None:
                return
        yield from batches


def resumable_loader(
    loader: DataLoader[Sample],
) -> tuple[DataLoader[Sample], ResumableBatches]:
    """The same loader (dataset, workers, collate, seeding) over a :class:`ResumableBatches`."""
    batches = ResumableBatches(loader.batch_sampler)
    workers = loader.num_workers
    rebuilt = DataLoader(
        loader.dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=loader.collate_fn,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        persistent_workers=loader.persistent_workers if workers > 0 else False,
        pin_memory=loader.pin_memory,
        prefetch_factor=loader.prefetch_factor if workers > 0 else None,
        timeout=loader.timeout,
        multiprocessing_context=loader.multiprocessing_context,
    )
    return rebuilt, batches


class TrainData:
    """Batches epoch after epoch; the position (epoch, batch within it) is the data state."""

    def __init__(self, loader: DataLoader[Sample], *, epoch: int = 0, batch: int = 0) -> None:
        self.loader, self.batches = resumable_loader(loader)
        self.epoch = epoch
        self.batch = batch
        self._iterator: Iterator[Any] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return len(self.batches)

    def next(self) -> Any:
        """The next batch (starting a new epoch when one runs out)."""
        for _ in range(2):
            if self._iterator is None:
                self.batches.set_epoch(self.epoch)
                self.batches.skip = self.batch
                self._iterator = iter(self.loader)
            try:
                item = next(self._iterator)
            except StopIteration:
                self._iterator = None
                self.epoch, self.batch = self.epoch + 1, 0
                continue
            self.batch += 1
            return item
        raise RuntimeError("the training loader yields no batch (is the dataset empty?)")

    def position(self) -> DataPosition:
        """The current position (what a checkpoint stores)."""
        return DataPosition(self.epoch, self.batch, self.batches_per_epoch)

    def seek(self, epoch: int, batch: int) -> None:
        """Continues from ``batch`` batches into ``epoch`` (before the first :meth:`next`)."""
        self.epoch, self.batch = epoch, batch
        self._iterator = None
