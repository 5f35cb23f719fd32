"""Batching: collate, aspect-ratio grouped (and distributed) batch sampling, DataLoaders.

Images of a batch are padded to a common size by the model, so a batch of landscape and
portrait images wastes most of its padding. :class:`GroupedBatchSampler` forms batches within
two groups (``w >= h`` and ``w < h``), as torchvision's reference ``GroupedBatchSampler`` and
detectron2's ``AspectRatioGroupedDataset`` do, and shards each epoch across ranks.

Randomness is reproducible and independent of the number of workers: the sampler's order is
a function of ``(seed, epoch)``, and :func:`build_train_loader` seeds ``torch`` before each
sample from ``(seed, rank, epoch, position)``, so augmentation does not depend on which worker
loads a sample, and a run resumed with ``set_epoch`` replays the same epoch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from maskrcnn.data.coco import Sample
from maskrcnn.structures import Instances


def collate(samples: Sequence[Sample]) -> tuple[list[Tensor], list[Instances], list[int]]:
    """Samples -> (images [3, H_i, W_i], ground truth per image, image ids); no padding."""
    return (
        [s.image for s in samples],
        [s.gt for s in samples],
        [s.image_id for s in samples],
    )


def aspect_groups(aspect_ratios: Sequence[float]) -> list[int]:
    """Group id per image from its width / height: 0 if ``w >= h`` (landscape), else 1."""
    return [0 if r >= 1.0 else 1 for r in aspect_ratios]


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices drawn from one aspect-ratio group at a time.

    Each epoch, a permutation seeded by ``seed + epoch`` (the same on every rank) is padded by
    wrapping around to a multiple of ``world_size`` and rank ``r`` takes every
    ``world_size``-th index from ``r``: shards are disjoint apart from the padding, cover the
    dataset, and have equal length ``m``. Every rank yields exactly ``m // batch_size`` batches
    (DDP needs equal counts): indices are buffered per group and a batch is emitted when a
    buffer is full; leftover buffers are completed with earlier indices of the same group.

    Args:
        group_ids: group of each dataset index (see :func:`aspect_groups`).
        batch_size: images per batch (per rank).
        seed: base seed of the permutation.
        rank, world_size: this process's shard.
        shuffle: False keeps dataset order (still sharded and grouped).
        infinite: iterate epoch after epoch forever (iteration-based training); the epoch
            counter starts at the value given to :meth:`set_epoch`.
    """

    def __init__(
        self,
        group_ids: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        infinite: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.group_ids = [int(g) for g in group_ids]
        if not self.group_ids:
            raise ValueError("GroupedBatchSampler: the dataset is empty")
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.infinite = infinite
        self.epoch = 0
        self.shard_size = math.ceil(len(self.group_ids) / world_size)
        if self.shard_size < batch_size:
            raise ValueError(
                f"GroupedBatchSampler: {len(self.group_ids)} images over {world_size} rank(s) "
                f"give {self.shard_size} per rank, fewer than batch_size={batch_size}"
            )

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch (the permutation); call before iterating each epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches per epoch (on every rank)."""
        if self.infinite:
            raise TypeError("an infinite GroupedBatchSampler has no length")
        return self.shard_size // self.batch_size

    def shard(self, epoch: int) -> list[int]:
        """This rank's indices for ``epoch``, in order (length ``shard_size``)."""
        n = len(self.group_ids)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(n, generator=gen).tolist()
        else:
            order = list(range(n))
        total = self.shard_size * self.world_size
        padded = (order * math.ceil(total / n))[:total]
        return padded[self.rank :: self.world_size]

    def epoch_batches(self, epoch: int) -> Iterator[list[int]]:
        """The batches of one epoch on this rank."""
        wanted = self.shard_size // self.batch_size
        indices = self.shard(epoch)
        buffers: dict[int, list[int]] = {}
        emitted = 0
        for i in indices:
            buffer = buffers.setdefault(self.group_ids[i], [])
            buffer.append(i)
            if len(buffer) == self.batch_size:
                yield buffer
                buffers[self.group_ids[i]] = []
                emitted += 1
        while emitted < wanted:  # at most (number of groups - 1) times
            group = max(buffers, key=lambda g: (len(buffers[g]), -g))
            members = [i for i in indices if self.group_ids[i] == group]
            batch = buffers.pop(group)
            batch += [members[k % len(members)] for k in range(self.batch_size - len(batch))]
            yield batch
            emitted += 1

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        while True:
            yield from self.epoch_batches(epoch)
            if not self.infinite:
                return
            epoch += 1


class SeededBatchSampler(Sampler[list[tuple[int, int]]]):
    """Pairs each index of a batch sampler with a seed from ``(seed, rank, epoch, position)``.

    ``epoch`` is the wrapped sampler's ``epoch`` when iteration starts and ``position`` counts
    samples from there, so seeds are reproducible, differ between ranks and epochs, and do not
    depend on the DataLoader's workers.
    """

    def __init__(self, batch_sampler: GroupedBatchSampler, seed: int) -> None:
        self.batch_sampler = batch_sampler
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        start = [self.seed, self.batch_sampler.rank, self.batch_sampler.epoch]
        position = 0
        for batch in self.batch_sampler:
            keyed = []
            for index in batch:
                state = np.random.SeedSequence([*start, position]).generate_state(1)
                keyed.append((index, int(state[0])))
                position += 1
            yield keyed


class SeededDataset(Dataset[Sample]):
    """Loads ``dataset[index]`` with ``torch`` (and ``random``, ``numpy``) seeded for the sample.

    Indexed by ``(index, seed)`` pairs from :class:`SeededBatchSampler`; plain ints pass through.
    """

    def __init__(self, dataset: Dataset[Sample]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        if isinstance(key, int):
            return self.dataset[key]
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            py_state, np_state = random.getstate(), np.random.get_state()
            random.seed(seed)
            np.random.seed(seed % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


def _seed_worker(worker_id: int) -> None:
    """Seeds ``random`` and ``numpy`` in a worker from its (DataLoader-derived) torch seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_train_loader(
    dataset: Any,
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    infinite: bool = False,
    pin_memory: bool = False,
) -> DataLoader[Sample]:
    """A training DataLoader: aspect-ratio grouped batches, this rank's shard, seeded samples.

    Args:
        dataset: a dataset of :class:`Sample`; with ``aspect_ratios()`` (as
            :class:`~maskrcnn.data.coco.CocoDataset`) batches are grouped by orientation.
        batch_size: images per batch on this rank.
        num_workers: loader processes (0: load in the main process).
        seed: makes the order and the augmentation reproducible.
        rank, world_size: distributed training shard.
        infinite: never-ending iteration (iteration-based training).

    Returns:
        A DataLoader yielding ``(images, gt instances, image ids)`` (see :func:`collate`). Call
        ``loader.batch_sampler.set_epoch(epoch)`` before each epoch; ``loader.dataset.dataset``
        is ``dataset``.
    """
    ratios = dataset.aspect_ratios() if hasattr(dataset, "aspect_ratios") else [1.0] * len(dataset)
    sampler = GroupedBatchSampler(
        aspect_groups(ratios),
        batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        infinite=infinite,
    )
    return DataLoader(
        SeededDataset(dataset),
        batch_sampler=SeededBatchSampler(sampler, seed),
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed + 7919 * rank),
        persistent_workers=num_workers > 0 and not infinite,
        pin_memory=pin_memory,
    )


def build_test_loader(
    dataset: Any, *, batch_size: int = 1, num_workers: int = 0
) -> DataLoader[Sample]:
    """An evaluation DataLoader: every image once, in dataset order, no grouping."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
    )
