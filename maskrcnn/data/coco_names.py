"""COCO category names, in the two label layouts our converted models use.

* :data:`COCO_91_NAMES`: torchvision's layout. The index is the COCO category id, so label 0
  is ``"__background__"`` and the eleven ids COCO never uses are ``"N/A"`` (91 entries).
* :data:`COCO_80_NAMES`: detectron2's contiguous layout, the 80 used categories in id order.
  :data:`COCO_80_IDS` holds their COCO category ids (``COCO_80_IDS[j]`` is the id of
  ``COCO_80_NAMES[j]``).
* :data:`COCO_81_NAMES`: our labels for a converted detectron2 model: background at 0, then
  the 80 contiguous names (detectron2 class ``j`` is our label ``j + 1``).
"""

from __future__ import annotations

BACKGROUND = "__background__"
UNUSED = "N/A"

COCO_91_NAMES: tuple[str, ...] = (
    BACKGROUND,
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    UNUSED,  # 12
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    UNUSED,  # 26
    "backpack",
    "umbrella",
    UNUSED,  # 29
    UNUSED,  # 30
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    UNUSED,  # 45
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    UNUSED,  # 66
    "dining table",
    UNUSED,  # 68
    UNUSED,  # 69
    "toilet",
    UNUSED,  # 71
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    UNUSED,  # 83
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)

COCO_80_IDS: tuple[int, ...] = tuple(
    i for i, name in enumerate(COCO_91_NAMES) if name not in (BACKGROUND, UNUSED)
)
COCO_80_NAMES: tuple[str, ...] = tuple(COCO_91_NAMES[i] for i in COCO_80_IDS)
COCO_81_NAMES: tuple[str, ...] = (BACKGROUND, *COCO_80_NAMES)

assert len(COCO_91_NAMES) == 91 and len(COCO_80_NAMES) == 80
