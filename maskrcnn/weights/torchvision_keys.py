"""torchvision's state-dict names -> ours: ResNet, ``BackboneWithFPN`` and the whole Mask R-CNN.

Every key map is a pure function of one key. Our ResNet names read ``res3.0.conv2.conv.weight``,
``res3.0.conv2.norm.running_var``, ``res3.0.shortcut.conv.weight`` (see
``maskrcnn.modeling.backbone``); our FPN's ``backbone.fpn.lateral_convs.{i}.conv.*`` and
``output_convs``; the heads' names are in ``_HEAD_RULES``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from maskrcnn.modeling.backbone import ResNet
from maskrcnn.modeling.layers import FrozenBatchNorm2d

_TV_BLOCK_KEY = re.compile(r"layer([1-4])\.(\d+)\.(conv|bn)([1-3])\.(.+)")
_TV_DOWNSAMPLE_KEY = re.compile(r"layer([1-4])\.(\d+)\.downsample\.([01])\.(.+)")


def torchvision_resnet_key(key: str) -> str | None:
    """Maps a torchvision ResNet state-dict key to ours.

    ``conv1.weight`` -> ``stem.conv1.conv.weight``, ``bn1.*`` -> ``stem.conv1.norm.*``,
    ``layer{t}.{b}.conv{k}.weight`` -> ``res{t+1}.{b}.conv{k}.conv.weight``,
    ``layer{t}.{b}.bn{k}.*`` -> ``res{t+1}.{b}.conv{k}.norm.*``,
    ``layer{t}.{b}.downsample.0.*`` / ``.1.*`` -> ``res{t+1}.{b}.shortcut.conv.*`` / ``.norm.*``.

    Returns:
        Our key, or ``None`` for the classifier (``fc.*``), which we do not have.

    Raises:
        ValueError: for a key that is not part of a torchvision ResNet.
    """
    if key.startswith("fc."):
        return None
    if key == "conv1.weight":
        return "stem.conv1.conv.weight"
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[len("bn1.") :]
    m = _TV_BLOCK_KEY.fullmatch(key)
    if m:
        t, b, kind, k, rest = m.groups()
        part = "conv" if kind == "conv" else "norm"
        if kind == "conv" and rest != "weight":
            raise ValueError(f"not a torchvision ResNet key: {key!r}")
        return f"res{int(t) + 1}.{b}.conv{k}.{part}.{rest}"
    m = _TV_DOWNSAMPLE_KEY.fullmatch(key)
    if m:
        t, b, idx, rest = m.groups()
        part = "conv" if idx == "0" else "norm"
        return f"res{int(t) + 1}.{b}.shortcut.{part}.{rest}"
    raise ValueError(f"not a torchvision ResNet key: {key!r}")


def load_torchvision_resnet(resnet: ResNet, state_dict: Mapping[str, Tensor]) -> None:
    """Loads a torchvision ResNet ``state_dict`` (e.g. ImageNet weights) into ``resnet``.

    The classifier (``fc.*``) is ignored, and ``num_batches_tracked`` is dropped where our
    norm is a :class:`FrozenBatchNorm2d`. Anything else must match exactly.

    Args:
        resnet: the network to fill (its stages must be those present in ``state_dict``).
        state_dict: torchvision names -> tensors.

    Raises:
        ValueError: naming every missing key (ours), unexpected key (torchvision's) and
            shape mismatch; nothing is loaded in that case.
    """
    own = resnet.state_dict()
    mapped: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        try:
            new_key = torchvision_resnet_key(key)
        except ValueError:
            unexpected.append(key)
            continue
        if new_key is None:
            continue
        if new_key not in own:
            if new_key.endswith(".num_batches_tracked") and _is_frozen_bn(resnet, new_key):
                continue
            unexpected.append(key)
            continue
        mapped[new_key] = value
    missing = [k for k in own if k not in mapped]
    mismatched = [
        f"{k}: {tuple(v.shape)} vs ours {tuple(own[k].shape)}"
        for k, v in mapped.items()
        if v.shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys (ours): {missing}")
    if unexpected:
        problems.append(f"unexpected keys (torchvision): {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches: {mismatched}")
    if problems:
        raise ValueError("cannot load torchvision ResNet weights; " + "; ".join(problems))
    with torch.no_grad():
        resnet.load_state_dict(mapped, strict=True)


def _is_frozen_bn(module: nn.Module, key: str) -> bool:
    """Whether ``key``'s owning module (``a.b.norm`` for ``a.b.norm.x``) is a FrozenBN."""
    owner_name = key.rsplit(".", 1)[0]
    try:
        owner = module.get_submodule(owner_name)
    except AttributeError:
        return False
    return isinstance(owner, FrozenBatchNorm2d)


_TV_FPN_KEY = re.compile(r"backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(?:([01])\.)?(.+)")


def torchvision_fpn_key(key: str) -> str | None:
    """Maps a torchvision ``BackboneWithFPN`` key (with ``backbone.`` prefix) to ours.

    * ``backbone.body.<resnet key>`` -> ``backbone.bottom_up.<our resnet key>``
      (see :func:`torchvision_resnet_key`).
    * ``backbone.fpn.inner_blocks.{i}.0.{weight,bias}`` ->
      ``backbone.fpn.lateral_convs.{i}.conv.*``; with a norm (v2), ``inner_blocks.{i}.1.*``
      -> ``lateral_convs.{i}.norm.*``.
    * ``backbone.fpn.layer_blocks.{i}...`` likewise -> ``backbone.fpn.output_convs.{i}...``.
    * Legacy (state-dict version < 2) names without the ``.0``, e.g.
      ``backbone.fpn.inner_blocks.{i}.weight``, which torchvision renames on load.

    Returns:
        Our key, or ``None`` for a key we drop (a classifier ``backbone.body.fc.*``).

    Raises:
        ValueError: for keys outside torchvision's ``backbone.body`` / ``backbone.fpn``.
    """
    if key.startswith("backbone.body."):
        sub = torchvision_resnet_key(key[len("backbone.body.") :])
        return None if sub is None else "backbone.bottom_up." + sub
    m = _TV_FPN_KEY.fullmatch(key)
    if m is None:
        raise ValueError(f"not a torchvision backbone key: {key!r}")
    block, i, idx, rest = m.groups()
    ours = "lateral_convs" if block == "inner_blocks" else "output_convs"
    if idx is None:  # legacy: the conv was the block itself
        if rest not in ("weight", "bias"):
            raise ValueError(f"not a torchvision backbone key: {key!r}")
        idx = "0"
    if idx == "0" and rest not in ("weight", "bias"):
        raise ValueError(f"not a torchvision backbone key: {key!r}")
    part = "conv" if idx == "0" else "norm"
    return f"backbone.fpn.{ours}.{i}.{part}.{rest}"


# (pattern, replacement) for everything outside the backbone, tried in order.
_HEAD_RULES: list[tuple[str, str]] = [
    (r"^rpn\.head\.conv\.(\d+)\.0\.(weight|bias)$", r"rpn.head.convs.\1.conv.\2"),
    (r"^rpn\.head\.conv\.(weight|bias)$", r"rpn.head.convs.0.conv.\1"),  # legacy v1 name
    (r"^rpn\.head\.cls_logits\.", "rpn.head.objectness_logits."),
    (r"^rpn\.head\.bbox_pred\.", "rpn.head.anchor_deltas."),
    (r"^roi_heads\.box_head\.fc6\.", "roi_heads.box_head.fcs.0."),
    (r"^roi_heads\.box_head\.fc7\.", "roi_heads.box_head.fcs.1."),
    (r"^roi_heads\.box_head\.([0-3])\.0\.", r"roi_heads.box_head.convs.\1.conv."),  # v2
    (r"^roi_heads\.box_head\.([0-3])\.1\.", r"roi_heads.box_head.convs.\1.norm."),  # v2
    (r"^roi_heads\.box_head\.5\.", "roi_heads.box_head.fcs.0."),  # v2: after Flatten
    (r"^roi_heads\.box_predictor\.", "roi_heads.box_predictor."),
    (r"^roi_heads\.mask_head\.(\d+)\.0\.", r"roi_heads.mask_head.convs.\1.conv."),
    (r"^roi_heads\.mask_head\.(\d+)\.1\.", r"roi_heads.mask_head.convs.\1.norm."),  # v2
    (r"^roi_heads\.mask_predictor\.conv5_mask\.", "roi_heads.mask_head.deconv."),
    (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.", "roi_heads.mask_head.predictor."),
]


def _legacy_mask_key(key: str) -> str:
    """``mask_head.mask_fcn{i+1}.*`` (torchvision < 0.8 names) -> ``mask_head.{i}.0.*``."""
    match = re.match(r"^(roi_heads\.mask_head\.)mask_fcn(\d+)\.(.*)$", key)
    if match:
        return f"{match.group(1)}{int(match.group(2)) - 1}.0.{match.group(3)}"
    return key


_TV_KEYPOINT_CONV = re.compile(r"^roi_heads\.keypoint_head\.(\d+)\.(weight|bias)$")


def _keypoint_key(key: str) -> str | None:
    """Keypoint R-CNN's head: ``keypoint_head.{2i}.*`` (convs between ReLUs) ->
    ``keypoint_head.convs.{i}.conv.*``; ``keypoint_predictor.kps_score_lowres.*`` ->
    ``keypoint_head.predictor.*``. None for any other key."""
    match = _TV_KEYPOINT_CONV.match(key)
    if match:
        index = int(match.group(1))
        if index % 2:
            raise ValueError(f"not a torchvision Keypoint R-CNN key: {key!r} (a ReLU's index)")
        return f"roi_heads.keypoint_head.convs.{index // 2}.conv.{match.group(2)}"
    prefix = "roi_heads.keypoint_predictor.kps_score_lowres."
    if key.startswith(prefix):
        return "roi_heads.keypoint_head.predictor." + key[len(prefix) :]
    return None


def torchvision_key(key: str) -> str | None:
    """Our state-dict key for a torchvision Mask (or Keypoint) R-CNN key (None: not a weight
    we keep)."""
    if key.startswith("backbone."):
        return torchvision_fpn_key(key)
    if key.startswith(("roi_heads.keypoint_head.", "roi_heads.keypoint_predictor.")):
        return _keypoint_key(key)
    key = _legacy_mask_key(key)
    for pattern, replacement in _HEAD_RULES:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    return None
