"""torchvision Mask R-CNN checkpoints -> our model, configured to reproduce torchvision exactly.

torchvision's quirks are expressed as configuration (see ``config.torchvision_v1``): RoIAlign
with aligned=False and sampling ratio 2, rounded anchors with strides derived from the grid,
the "+1" integer paste, FrozenBN eps 0 for the published v1 weights, and the legacy key names
of the published v1 file. Only tensors are read: a ``.pth`` goes through
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from maskrcnn.config import ModelConfig, torchvision_keypoint_v1, torchvision_v1, torchvision_v2
from maskrcnn.modeling import MaskRCNN, build_model
from maskrcnn.weights.torchvision_keys import torchvision_key

TorchvisionVariant = Literal["v1", "v2", "keypoint_v1"]
"""torchvision's designs: ``maskrcnn_resnet50_fpn`` (v1), its ``_v2``, and
``keypointrcnn_resnet50_fpn`` (keypoint_v1: no mask head, a keypoint head)."""
_VARIANTS = ("v1", "v2", "keypoint_v1")


def convert_torchvision_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Renames every key; an unknown key raises a ``ValueError`` naming it."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        new = torchvision_key(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"not torchvision Mask R-CNN keys: {unknown[:8]}")
    return out


def read_state_dict(source: str | Path | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict given directly, or read from a ``.pth``/``.safetensors`` file safely."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the unpickler's refusals have many types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{path}: not a weights-only torch checkpoint ({first})") from err
    if isinstance(data, Mapping) and "model" in data and isinstance(data["model"], Mapping):
        data = data["model"]
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(data).__name__}")
    return dict(data)


_BUILDER_KWARGS = {
    "num_classes",
    "min_size",
    "max_size",
    "image_mean",
    "image_std",
    "box_score_thresh",
    "box_nms_thresh",
    "box_detections_per_img",
    "rpn_pre_nms_top_n_train",
    "rpn_pre_nms_top_n_test",
    "rpn_post_nms_top_n_train",
    "rpn_post_nms_top_n_test",
    "rpn_nms_thresh",
    "rpn_score_thresh",
    "rpn_fg_iou_thresh",
    "rpn_bg_iou_thresh",
    "rpn_batch_size_per_image",
    "rpn_positive_fraction",
    "box_fg_iou_thresh",
    "box_bg_iou_thresh",
    "box_batch_size_per_image",
    "box_positive_fraction",
    "norm_eps",
    "num_keypoints",
}


def infer_norm_eps(state_dict: Mapping[str, Tensor]) -> float:
    """The FrozenBN eps that reproduces a torchvision v1 state dict (torchvision's names).

    A model torchvision built without weights has plain ``BatchNorm2d`` (eps 1e-5), which is
    recognisable by its ``num_batches_tracked`` buffers; the published COCO weights (FrozenBN
    without those buffers) use eps 0.0.
    """
    tracked = any(
        k.startswith("backbone.body.") and k.endswith("num_batches_tracked") for k in state_dict
    )
    return 1e-5 if tracked else 0.0


def torchvision_config(variant: TorchvisionVariant = "v1", **kwargs: Any) -> ModelConfig:
    """The configuration reproducing torchvision's model, with its builder's keyword arguments.

    ``norm_eps`` (ours) sets the FrozenBN eps: 0.0 for the published v1 weights (default), 1e-5
    for a v1 model torchvision built itself (``weights=None``).
    """
    unknown = sorted(set(kwargs) - _BUILDER_KWARGS)
    if unknown:
        raise ValueError(f"unsupported keyword argument(s) {unknown}")
    if variant not in _VARIANTS:
        raise ValueError(f"variant must be one of {list(_VARIANTS)}, got {variant!r}")
    if "num_keypoints" in kwargs and variant != "keypoint_v1":
        raise ValueError(f"num_keypoints: only for variant 'keypoint_v1', not {variant!r}")
    if variant == "keypoint_v1":
        cfg = torchvision_keypoint_v1(
            kwargs.get("num_classes", 2), num_keypoints=int(kwargs.get("num_keypoints", 17))
        )
    else:
        build = torchvision_v1 if variant == "v1" else torchvision_v2
        cfg = build(kwargs.get("num_classes", 91))
    r = dataclasses.replace
    inp, rpn, box = cfg.input, cfg.rpn, cfg.box_head
    if "min_size" in kwargs:
        size = kwargs["min_size"]
        inp = r(inp, min_size=tuple(size) if isinstance(size, (list, tuple)) else (int(size),))
    if "max_size" in kwargs:
        inp = r(inp, max_size=int(kwargs["max_size"]))
    if "image_mean" in kwargs:
        inp = r(inp, pixel_mean=tuple(kwargs["image_mean"]))
    if "image_std" in kwargs:
        inp = r(inp, pixel_std=tuple(kwargs["image_std"]))
    rpn_names = {
        "rpn_pre_nms_top_n_train": "pre_nms_topk_train",
        "rpn_pre_nms_top_n_test": "pre_nms_topk_test",
        "rpn_post_nms_top_n_train": "post_nms_topk_train",
        "rpn_post_nms_top_n_test": "post_nms_topk_test",
        "rpn_nms_thresh": "nms_thresh",
        "rpn_score_thresh": "score_thresh",
        "rpn_fg_iou_thresh": "fg_iou_thresh",
        "rpn_bg_iou_thresh": "bg_iou_thresh",
        "rpn_batch_size_per_image": "batch_size_per_image",
        "rpn_positive_fraction": "positive_fraction",
    }
    box_names = {
        "box_score_thresh": "score_thresh",
        "box_nms_thresh": "nms_thresh",
        "box_detections_per_img": "detections_per_image",
        "box_fg_iou_thresh": "fg_iou_thresh",
        "box_bg_iou_thresh": "bg_iou_thresh",
        "box_batch_size_per_image": "batch_size_per_image",
        "box_positive_fraction": "positive_fraction",
    }
    rpn = r(rpn, **{ours: kwargs[tv] for tv, ours in rpn_names.items() if tv in kwargs})
    box = r(box, **{ours: kwargs[tv] for tv, ours in box_names.items() if tv in kwargs})
    backbone = cfg.backbone
    if "norm_eps" in kwargs:
        backbone = r(backbone, norm_eps=float(kwargs["norm_eps"]))
    return cfg.replace(input=inp, rpn=rpn, box_head=box, backbone=backbone)


def from_torchvision(
    state_dict_or_path: str | Path | Mapping[str, Tensor],
    variant: TorchvisionVariant = "v1",
    *,
    category_names: tuple[str, ...] = (),
    **kwargs: Any,
) -> MaskRCNN:
    """Our model, in eval mode, holding torchvision Mask (or Keypoint) R-CNN weights.

    Args:
        state_dict_or_path: a state dict of ``maskrcnn_resnet50_fpn`` (v1),
            ``maskrcnn_resnet50_fpn_v2`` (v2) or ``keypointrcnn_resnet50_fpn`` (keypoint_v1),
            or a path to one (.pth or .safetensors).
        variant: which torchvision architecture the weights are for.
        category_names: label names (index = label).
        **kwargs: torchvision builder arguments (``box_score_thresh``, ``min_size``, ...) and
            ``norm_eps`` (see :func:`torchvision_config`). Without ``norm_eps``, a v1 state dict
            with ``num_batches_tracked`` buffers (a model torchvision built without weights:
            plain BatchNorm) gets 1e-5, one without them (the published weights) 0.0.
    """
    source = (
        "torchvision state dict"
        if isinstance(state_dict_or_path, Mapping)
        else str(state_dict_or_path)
    )
    raw = read_state_dict(state_dict_or_path)
    if variant in ("v1", "keypoint_v1") and "norm_eps" not in kwargs:
        kwargs["norm_eps"] = infer_norm_eps(raw)
    state_dict = convert_torchvision_state_dict(raw)
    classes = "roi_heads.box_predictor.cls_score.weight"
    if classes not in state_dict:
        raise ValueError(
            f"{source}: not a whole torchvision Mask R-CNN checkpoint: the key {classes!r} "
            "(the class scores) is missing"
        )
    if "num_classes" not in kwargs:
        kwargs["num_classes"] = int(state_dict[classes].shape[0])
    keypoints = "roi_heads.keypoint_head.predictor.weight"  # [C, K, 4, 4]
    if variant == "keypoint_v1" and keypoints in state_dict and "num_keypoints" not in kwargs:
        kwargs["num_keypoints"] = int(state_dict[keypoints].shape[1])
    cfg = torchvision_config(variant, **kwargs).replace(category_names=tuple(category_names))
    model = build_model(cfg)
    load_exact(model, state_dict, source=f"torchvision checkpoint {source}")
    return model.eval()


def load_exact(model: torch.nn.Module, state_dict: Mapping[str, Tensor], *, source: str) -> None:
    """Loads every tensor; missing or unexpected keys raise a ``ValueError`` naming them."""
    try:
        result = model.load_state_dict(dict(state_dict), strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{source} does not fit the model: {err}") from err
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{source} does not fit the model: missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )
