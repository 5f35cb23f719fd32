"""COCO keypoint data: names and flip map, annotation edge cases, flips that swap left/right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from maskrcnn.config import COCO_PERSON_KEYPOINT_NAMES
from maskrcnn.data.coco import CocoDataset, DatasetError, Sample
from maskrcnn.data.figures import FIGURE_KEYPOINTS, FIGURE_SKELETON, write_figures_dataset
from maskrcnn.data.keypoints import KeypointSpec, flip_map_from_names
from maskrcnn.data.transforms import flip_keypoints, train_transforms
from maskrcnn.structures import Instances

# torchvision's references (detection/transforms.py) flip COCO person keypoints with this map.
COCO_FLIP = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)


def test_flip_map_of_coco_person_is_the_references():
    assert flip_map_from_names(COCO_PERSON_KEYPOINT_NAMES) == COCO_FLIP


def test_flip_map_forms_and_errors():
    assert flip_map_from_names(["Left-Hand", "nose", "RIGHT-hand"]) == (2, 1, 0)
    assert flip_map_from_names(["hand left", "hand right", "leftover"]) == (1, 0, 2)
    with pytest.raises(ValueError, match="'left_eye' has no right partner"):
        flip_map_from_names(["left_eye", "nose"])
    with pytest.raises(ValueError, match="distinct"):
        flip_map_from_names(["nose", "nose"])


def test_spec_from_coco_categories():
    cats = [
        {"id": 1, "name": "figure", "keypoints": list(FIGURE_KEYPOINTS), "skeleton": [[1, 2]]},
        {"id": 2, "name": "ball"},
    ]
    spec = KeypointSpec.from_coco(cats, source="f.json")
    assert spec is not None and spec.names == FIGURE_KEYPOINTS and spec.skeleton == ((0, 1),)
    assert KeypointSpec.from_coco([{"id": 2, "name": "ball"}], source="f.json") is None
    bad_skeleton = [{**cats[0], "skeleton": [[0, 1]]}]  # 1-based: 0 is out of range
    with pytest.raises(DatasetError, match=r"f.json: category 1 \('figure'\).*1-based"):
        KeypointSpec.from_coco(bad_skeleton, source="f.json")
    other = [cats[0], {"id": 3, "name": "cat", "keypoints": ["tail"]}]
    with pytest.raises(DatasetError, match="differ from another category"):
        KeypointSpec.from_coco(other, source="f.json")


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    return write_figures_dataset(
        tmp_path_factory.mktemp("figures"), train=6, val=2, seed=1, image_size=(96, 128)
    )


def _edited(figures, tmp_path: Path, edit) -> Path:
    data = json.loads(figures.train_ann.read_text())
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


def test_dataset_reads_keypoints(figures):
    ds = CocoDataset(figures.train_ann, figures.image_dir)
    assert ds.keypoints is not None and ds.keypoints.skeleton == FIGURE_SKELETON
    data = json.loads(figures.train_ann.read_text())
    gt = ds.targets(0)
    anns = [a for a in data["annotations"] if a["image_id"] == ds.image_ids[0]]
    assert gt.keypoints is not None and gt.keypoints.shape == (len(anns), 11, 3)
    expected = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float32).reshape(-1, 11, 3)
    torch.testing.assert_close(gt.keypoints, expected)
    visibilities = {v for a in data["annotations"] for v in a["keypoints"][2::3]}
    assert visibilities == {0, 1, 2}, "the synthetic set has unlabelled, occluded, visible joints"


def test_crowd_and_zero_keypoint_instances(figures, tmp_path):
    def edit(data):
        data["annotations"][0]["iscrowd"] = 1
        second = data["annotations"][1]
        second["keypoints"] = [0] * 33
        second["num_keypoints"] = 0
        del data["annotations"][2]["keypoints"]  # no field at all: unlabelled as well

    path = _edited(figures, tmp_path, edit)
    ds = CocoDataset(path, figures.image_dir)
    assert ds.stats.crowd == 1
    assert ds.stats.targets == len(json.loads(path.read_text())["annotations"]) - 1
    data = json.loads(path.read_text())
    for index in range(len(ds)):
        gt = ds.targets(index)
        anns = [a for a in data["annotations"] if a["image_id"] == ds.image_ids[index]]
        anns = [a for a in anns if not a.get("iscrowd")]
        for a, kps in zip(anns, gt.keypoints):
            if a["id"] in (2, 3):
                assert bool((kps == 0).all()), "zero-keypoint instances stay as box targets"


def test_bad_keypoints_name_the_annotation(figures, tmp_path):
    def edit(data):
        data["annotations"][0]["keypoints"] = [1.0, 2.0, 2]  # one keypoint of 11
        data["annotations"][1]["keypoints"][2] = 5  # visibility not 0/1/2

    path = _edited(figures, tmp_path, edit)
    with pytest.raises(DatasetError) as info:
        CocoDataset(path, figures.image_dir)
    message = str(info.value)
    assert "bad_keypoints x2" in message and "annotation 1 (keypoints must be a list of 3 x 11" in (
        message
    )
    assert "annotation 2 (keypoint visibilities must be 0, 1 or 2" in message


def test_min_keypoints_per_image(figures):
    ds = CocoDataset(figures.train_ann, figures.image_dir, min_keypoints_per_image=10**6)
    assert len(ds) == 0 and ds.stats.few_keypoints_images == 6
    assert len(CocoDataset(figures.train_ann, figures.image_dir, min_keypoints_per_image=1)) > 0


def _sample(keypoints: torch.Tensor, w: int = 40, h: int = 30) -> Sample:
    masks = torch.zeros(1, h, w, dtype=torch.bool)
    masks[0, 5:20, 5:25] = True
    gt = Instances(
        image_size=(h, w),
        boxes=torch.tensor([[5.0, 5.0, 25.0, 20.0]]),
        labels=torch.tensor([1]),
        masks=masks,
        keypoints=keypoints,
    )
    return Sample(image=torch.rand(3, h, w), gt=gt, image_id=1, file_name="x.png")


def test_flip_mirrors_and_swaps_left_right():
    names = ("nose", "left_eye", "right_eye")
    kps = torch.tensor([[[10.0, 8.0, 2.0], [7.0, 6.0, 1.0], [0.0, 0.0, 0.0]]])
    transform = train_transforms(
        (30,), 1000, flip_prob=1.0, keypoint_flip_map=flip_map_from_names(names)
    )
    out = transform(_sample(kps))
    assert out.gt.keypoints is not None
    # nose mirrored; the left eye's flipped point is now the right eye, the unlabelled
    # right eye becomes the unlabelled left eye (still at 0, 0)
    expected = torch.tensor([[[30.0, 8.0, 2.0], [0.0, 0.0, 0.0], [33.0, 6.0, 1.0]]])
    torch.testing.assert_close(out.gt.keypoints, expected)
    torch.testing.assert_close(out.gt.boxes, torch.tensor([[15.0, 5.0, 35.0, 20.0]]))
    twice = flip_keypoints(flip_keypoints(kps, 40, (0, 2, 1)), 40, (0, 2, 1))
    torch.testing.assert_close(twice.as_subclass(torch.Tensor), kps)


def test_resize_scales_keypoints_and_no_flip_keeps_them():
    kps = torch.tensor([[[10.0, 8.0, 2.0], [7.0, 6.0, 1.0]]])
    out = train_transforms((60,), 1000, flip_prob=0.0)(_sample(kps))  # 30 -> 60: x2
    assert out.image.shape[-2:] == (60, 80)
    torch.testing.assert_close(out.gt.keypoints, torch.tensor([[[20.0, 16.0, 2.0], [14, 12, 1]]]))


def test_flip_without_a_flip_map_is_refused():
    kps = torch.tensor([[[10.0, 8.0, 2.0]]])
    with pytest.raises(ValueError, match="flipping keypoints needs a flip map"):
        train_transforms((30,), 1000, flip_prob=1.0)(_sample(kps))


def test_transformed_dataset_samples_keep_keypoints_consistent(figures):
    ds = CocoDataset(figures.train_ann, figures.image_dir)
    assert ds.keypoints is not None
    ds.transforms = train_transforms(
        (48,), 1000, flip_prob=1.0, keypoint_flip_map=ds.keypoints.flip_map
    )
    original = ds.targets(0)
    sample = ds[0]
    w = sample.image.shape[-1]
    scale = w / 128
    kp = sample.gt.keypoints
    assert kp is not None and kp.shape == original.keypoints.shape
    flip = ds.keypoints.flip_map
    for k in range(11):
        before = original.keypoints[:, flip[k]]
        labelled = before[:, 2] > 0
        torch.testing.assert_close(kp[labelled, k, 2], before[labelled, 2])
        torch.testing.assert_close(kp[labelled, k, 0], w - before[labelled, 0] * scale)
