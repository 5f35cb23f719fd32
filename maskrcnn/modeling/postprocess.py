"""Output side of the model: detections from the network frame back to the image frame.

The RoI heads return boxes in the network frame (the resized image the network saw) and masks
in the RoI frame ([N, 1, M, M] probabilities of each box's own window). Here boxes are rescaled
to each image's own pixels (the image frame) and, unless the caller wants to paste them itself,
masks are pasted into it ([N, 1, H, W] probabilities). :class:`Postprocessor` is the model's
stage for it, a module so that forward hooks see it (e.g. to time the paste).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from maskrcnn.ops.boxes import scale_boxes
from maskrcnn.ops.paste import paste_function
from maskrcnn.structures import Instances


def to_image_frame(
    result: Instances, image_size: tuple[int, int], *, paste: str | None
) -> Instances:
    """Maps one image's detections from the network frame to the image frame.

    Args:
        result: detections in the network frame (``result.image_size`` is that frame's size),
            masks [N, 1, M, M] RoI-frame probabilities (or None).
        image_size: (H, W) of the image as the caller gave it.
        paste: how RoI-frame masks are pasted ("torchvision" or "grid_sample", see
            :mod:`maskrcnn.ops.paste`): into [N, 1, H, W] image-frame probabilities; None
            leaves them in the RoI frame.

    Returns:
        New Instances with ``image_size`` = ``image_size`` and boxes rescaled to it.
    """
    boxes = scale_boxes(result.boxes, result.image_size, image_size)
    keypoints = result.keypoints
    if keypoints is not None:
        keypoints = scale_keypoints(keypoints, result.image_size, image_size)
    masks = result.masks
    if masks is not None and paste is not None:
        masks = paste_function(paste)(masks, boxes, image_size)
    return Instances(
        image_size=image_size,
        boxes=boxes,
        labels=result.labels,
        scores=result.scores,
        masks=masks,
        category_names=result.category_names,
        keypoints=keypoints,
        keypoints_scores=result.keypoints_scores,
    )


def scale_keypoints(
    keypoints: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]
) -> Tensor:
    """[N, K, 3] (x, y, v): x and y rescaled from a frame of ``from_size`` to ``to_size``.

    The ratios are float32 ``to / from`` per axis, as torchvision's ``resize_keypoints``.
    """
    ratio_h = torch.tensor(to_size[0], dtype=torch.float32) / from_size[0]
    ratio_w = torch.tensor(to_size[1], dtype=torch.float32) / from_size[1]
    out = keypoints.clone()
    out[..., 0] *= ratio_w.to(out.device)
    out[..., 1] *= ratio_h.to(out.device)
    return out


class Postprocessor(nn.Module):
    """The model's last stage: :func:`to_image_frame` for every image of a batch.

    It has no weights; it is a module so that hooks can observe the stage.
    """

    def forward(
        self,
        results: list[Instances],
        image_sizes: list[tuple[int, int]],
        *,
        paste: str | None,
    ) -> list[Instances]:
        """Per image, detections in the network frame -> detections in the image frame.

        Args:
            results: per image, the RoI heads' detections (network frame).
            image_sizes: per image, (H, W) as the caller gave it.
            paste: the paste method, or None to keep RoI-frame masks.
        """
        return [to_image_frame(r, size, paste=paste) for r, size in zip(results, image_sizes)]
