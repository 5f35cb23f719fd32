"""Grouped (distributed) batch sampling, collation and reproducible loaders."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from maskrcnn.data.coco import Sample
from maskrcnn.data.loader import (
    GroupedBatchSampler,
    aspect_groups,
    build_test_loader,
    build_train_loader,
    collate,
)
from maskrcnn.data.transforms import train_transforms
from maskrcnn.structures import Instances

GROUPS = [0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0]  # 23 images


def test_aspect_groups():
    assert aspect_groups([1.5, 1.0, 0.75]) == [0, 0, 1]


def test_batches_stay_within_one_group_and_are_reproducible():
    sampler = GroupedBatchSampler(GROUPS, 4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 23 // 4
    for batch in batches:
        assert len(batch) == 4 and len({GROUPS[i] for i in batch}) == 1
    assert batches == list(GroupedBatchSampler(GROUPS, 4, seed=3))
    sampler.set_epoch(1)
    assert list(sampler) != batches
    assert list(GroupedBatchSampler(GROUPS, 4, seed=4)) != batches


def test_distributed_shards_are_disjoint_and_cover_the_dataset():
    world = 3
    shards = [GroupedBatchSampler(GROUPS, 2, seed=0, rank=r, world_size=world) for r in range(3)]
    for epoch in (0, 5):
        for s in shards:
            s.set_epoch(epoch)
        indices = [s.shard(epoch) for s in shards]
        assert {len(i) for i in indices} == {8}  # ceil(23 / 3)
        union = Counter(itertools.chain.from_iterable(indices))
        assert set(union) == set(range(23))
        assert sum(union.values()) - 23 == 1  # exactly the padding is repeated
        counts = {len(list(s)) for s in shards}
        assert counts == {4}  # every rank yields the same number of batches
    divisible = [GroupedBatchSampler(GROUPS[:21], 3, rank=r, world_size=3) for r in range(3)]
    flat = [i for s in divisible for batch in s for i in batch]
    for s in divisible:
        for batch in s:
            assert len({GROUPS[i] for i in batch}) == 1
    shards_21 = [set(s.shard(0)) for s in divisible]
    assert not (shards_21[0] & shards_21[1]) and not (shards_21[1] & shards_21[2])
    assert set().union(*shards_21) == set(range(21))
    assert len(flat) == 3 * 2 * 3  # 7 images per rank: two batches of 3


def test_infinite_iteration_goes_on_across_epochs():
    sampler = GroupedBatchSampler(GROUPS, 4, seed=1, infinite=True)
    with pytest.raises(TypeError):
        len(sampler)
    first = list(itertools.islice(sampler, 12))  # two epochs and more
    finite = GroupedBatchSampler(GROUPS, 4, seed=1)
    epoch0 = list(finite)
    finite.set_epoch(1)
    assert first[:10] == epoch0 + list(finite)


def test_bad_sampler_arguments():
    with pytest.raises(ValueError, match="rank"):
        GroupedBatchSampler(GROUPS, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        GroupedBatchSampler([0, 1, 0], 4)


class ToyDataset(torch.utils.data.Dataset):
    """Landscape and portrait images with one instance each."""

    def __init__(self) -> None:
        self.sizes = [(12, 18), (18, 12), (12, 16), (16, 12), (10, 20), (14, 14)]
        self.transforms = train_transforms((8, 12, 16, 20), 64)

    def __len__(self) -> int:
        return len(self.sizes)

    def aspect_ratios(self) -> list[float]:
        return [w / h for h, w in self.sizes]

    def __getitem__(self, index: int) -> Sample:
        h, w = self.sizes[index]
        masks = torch.zeros(1, h, w, dtype=torch.bool)
        masks[0, 2:6, 2:8] = True
        gt = Instances((h, w), torch.tensor([[2.0, 2, 8, 6]]), torch.tensor([1]), masks=masks)
        image = torch.full((3, h, w), index / 10)
        return self.transforms(Sample(image, gt, image_id=100 + index, file_name=f"{index}.png"))


def _epoch(loader) -> list[tuple[list[int], list[tuple[int, ...]], list[float]]]:
    out = []
    for images, gts, ids in loader:
        shapes = [tuple(img.shape) for img in images]
        out.append((ids, shapes, [float(gt.boxes[0, 0]) for gt in gts]))
    return out


def test_loader_is_reproducible_and_independent_of_workers():
    dataset = ToyDataset()
    serial = build_train_loader(dataset, batch_size=2, num_workers=0, seed=7)
    first = _epoch(serial)
    assert len(first) == 3
    for _ids, shapes, _ in first:
        assert len({(w >= h) for _, h, w in shapes}) == 1  # one orientation per batch
    assert _epoch(build_train_loader(dataset, batch_size=2, num_workers=0, seed=7)) == first
    parallel = build_train_loader(dataset, batch_size=2, num_workers=2, seed=7)
    assert _epoch(parallel) == first  # same order and the same augmentation
    serial.batch_sampler.set_epoch(1)
    assert _epoch(serial) != first
    assert serial.dataset.dataset is dataset


def test_collate_and_test_loader():
    dataset = ToyDataset()
    images, gts, ids = collate([dataset[0], dataset[1]])
    assert len(images) == len(gts) == 2 and ids == [100, 101]
    assert isinstance(gts[0], Instances) and images[1].shape[0] == 3
    batches = list(build_test_loader(dataset, batch_size=4))
    assert [b[2] for b in batches] == [[100, 101, 102, 103], [104, 105]]
