"""Model configuration: frozen dataclasses, one per pipeline stage, and named presets.

Every knob that differs between the paper, torchvision and detectron2 is a field here, so
that a reference model's quirks are configuration, not code paths. ``build_model(cfg)`` in
``maskrcnn.modeling`` wires modules from a :class:`ModelConfig`; nothing is looked up by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

NormKind = Literal["frozen_bn", "bn", "gn", "none"]
PoolerKind = Literal["align", "align_max", "warp", "warp_max", "pool"]
MaskLossKind = Literal["sigmoid", "softmax"]
ResNetDepth = Literal[18, 34, 50, 101, 152]
# The project's precision vocabulary (resolved for a device by maskrcnn.modeling.precision).
Precision = Literal["fp32", "bf16", "fp16", "auto"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16", "auto")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_precision(precision: object, *, where: str = "precision") -> Precision:
    """``precision`` if it is one of :data:`PRECISIONS`; a ``ValueError`` naming ``where``."""
    if precision not in PRECISIONS:
        raise ValueError(f"{where}: must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


@dataclass(frozen=True)
class InputConfig:
    """Pre-processing: resize, normalise, pad.

    Images arrive as RGB float tensors in [0, 1]. They are multiplied by ``pixel_scale``,
    reordered to ``channel_order`` and normalised with ``pixel_mean``/``pixel_std`` (given in
    that scaled space and order).
    """

    min_size: tuple[int, ...] = (800,)  # training picks one at random; test uses the last
    max_size: int = 1333
    pixel_scale: float = 1.0  # 255.0 for detectron2 weights
    channel_order: Literal["RGB", "BGR"] = "RGB"
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    size_divisibility: int = 32


@dataclass(frozen=True)
class BackboneConfig:
    """ResNet / ResNeXt bottom-up network."""

    depth: ResNetDepth = 50
    groups: int = 1  # 32 for ResNeXt-101 32x8d
    width_per_group: int = 64  # 8 for ResNeXt-101 32x8d
    norm: NormKind = "frozen_bn"
    norm_eps: float = 1e-5
    gn_groups: int = 32
    freeze_at: int = 2  # 0: nothing frozen, 1: stem, 2: stem + res2, ... 5: everything
    stride_in_1x1: bool = False  # True: MSRA/detectron2 style (stride in the 1x1 conv)


@dataclass(frozen=True)
class FPNConfig:
    """Feature pyramid: P2-P5 from C2-C5, P6 by stride-2 subsampling of P5."""

    out_channels: int = 256
    norm: NormKind = "none"  # "bn" for torchvision's v2 model


@dataclass(frozen=True)
class AnchorConfig:
    """Anchors: one size tuple per feature level, shared aspect ratios (h / w)."""

    sizes: tuple[tuple[float, ...], ...] = ((32,), (64,), (128,), (256,), (512,))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    round_base_anchors: bool = True  # torchvision rounds the base anchors; detectron2 does not
    offset: float = 0.0  # anchor centres at (i + offset) * stride
    # torchvision derives each level's stride as padded_image_size // grid_size (61 rather than
    # 64 for P6 of an 800-pixel side); detectron2 uses the nominal stride.
    strides_from_grid: bool = False


@dataclass(frozen=True)
class RPNConfig:
    """Region proposal network: head, proposal selection, and (training) anchor sampling."""

    num_convs: int = 1  # 3x3 convs before the predictors (torchvision v2: 2, with BN)
    conv_norm: NormKind = "none"
    pre_nms_topk_train: int = 2000  # per level
    pre_nms_topk_test: int = 1000  # per level
    post_nms_topk_train: int = 2000  # per image
    post_nms_topk_test: int = 1000  # per image
    nms_thresh: float = 0.7
    min_size: float = 1e-3
    score_thresh: float = 0.0
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    box_coder_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    smooth_l1_beta: float = 1.0 / 9

    def __post_init__(self) -> None:
        _check_unit_interval(
            self,
            "rpn",
            ("nms_thresh", "score_thresh", "fg_iou_thresh", "bg_iou_thresh", "positive_fraction"),
        )


@dataclass(frozen=True)
class PoolerConfig:
    """Multi-level RoI pooling: which operator, and the FPN level rule."""

    output_size: int = 7
    op: PoolerKind = "align"
    sampling_ratio: int = 2
    aligned: bool = False
    canonical_box_size: int = 224
    canonical_level: int = 4
    level_eps: float = 1e-6  # torchvision adds 1e-6 to the log; detectron2 adds 1e-8 inside it


@dataclass(frozen=True)
class BoxHeadConfig:
    """Fast R-CNN head: pooled features -> class scores and class-specific box deltas."""

    pooler: PoolerConfig = field(default_factory=PoolerConfig)
    num_convs: int = 0  # torchvision v2: 4 convs of 256 with BN before one FC
    conv_dim: int = 256
    conv_norm: NormKind = "none"
    num_fc: int = 2
    fc_dim: int = 1024
    box_coder_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    min_box_size: float = 1e-2
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    smooth_l1_beta: float = 1.0 / 9

    def __post_init__(self) -> None:
        _check_unit_interval(
            self,
            "box_head",
            ("score_thresh", "nms_thresh", "fg_iou_thresh", "bg_iou_thresh", "positive_fraction"),
        )


@dataclass(frozen=True)
class MaskHeadConfig:
    """The mask branch: a small FCN on each RoI, one 28x28 mask per class."""

    pooler: PoolerConfig = field(default_factory=lambda: PoolerConfig(output_size=14))
    head_type: Literal["fcn", "mlp"] = "fcn"
    num_convs: int = 4
    conv_dim: int = 256
    conv_norm: NormKind = "none"
    class_agnostic: bool = False
    loss: MaskLossKind = "sigmoid"
    # How a 28x28 mask is pasted into the image: torchvision's integer-box method (parity),
    # or an unquantised grid-sample paste (default for our own models).
    paste: Literal["torchvision", "grid_sample"] = "grid_sample"
    threshold: float = 0.5  # used by predict() to binarise masks

    def __post_init__(self) -> None:
        _check_unit_interval(self, "mask_head", ("threshold",))


@dataclass(frozen=True)
class KeypointHeadConfig:
    """The keypoint branch (paper section 5): one 56x56 heatmap per keypoint for each person.

    ``num_convs`` 3x3 convs of ``conv_dim`` (+ ReLU) on the pooled 14x14 features, a 4x4
    stride-2 transposed convolution to ``num_keypoints`` maps at 28x28 and a bilinear x2
    upsampling to 56x56 (torchvision's layout). ``keypoint_names`` (index = keypoint) and
    ``skeleton`` (pairs of keypoint indices, 0-based) are carried for drawing and flipping.
    """

    num_keypoints: int = 17
    pooler: PoolerConfig = field(
        default_factory=lambda: PoolerConfig(output_size=14, sampling_ratio=0, aligned=True)
    )
    num_convs: int = 8
    conv_dim: int = 512
    keypoint_names: tuple[str, ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.num_keypoints < 1:
            raise ValueError(f"keypoint_head.num_keypoints: must be >= 1, got {self.num_keypoints}")
        if self.keypoint_names and len(self.keypoint_names) != self.num_keypoints:
            raise ValueError(
                f"keypoint_head.keypoint_names: {len(self.keypoint_names)} names for "
                f"{self.num_keypoints} keypoints"
            )
        for pair in self.skeleton:
            if len(pair) != 2 or not all(0 <= int(i) < self.num_keypoints for i in pair):
                raise ValueError(
                    f"keypoint_head.skeleton: {pair!r} is not a pair of keypoint indices in "
                    f"[0, {self.num_keypoints})"
                )


def _check_unit_interval(section: Any, name: str, fields: tuple[str, ...]) -> None:
    """Raises ``ValueError("<name>.<field>: must be in [0, 1] (got v)")`` for the first
    threshold or fraction of ``section`` outside [0, 1] (NaN included)."""
    for f in fields:
        value = getattr(section, f)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
        if not ok:
            raise ValueError(f"{name}.{f}: must be a number in [0, 1] (got {value!r})")


@dataclass(frozen=True)
class ModelConfig:
    """A whole Mask R-CNN. ``num_classes`` counts the background, which is label 0."""

    num_classes: int = 91
    # "fpn": P2-P6; "c4": RPN and RoIs on res4, res5 as the shared RoI head. One level, no
    # FPN, with the FPN design's box head (fcs) and mask head (convs) on it: "c5" (res5,
    # stride 32: the paper's Table 2d "R50-C5") and "c4_fc" (res4, stride 16, no res5).
    head: Literal["fpn", "c4", "c5", "c4_fc"] = "fpn"
    input: InputConfig = field(default_factory=InputConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    box_head: BoxHeadConfig = field(default_factory=BoxHeadConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    mask_on: bool = True  # False: no mask branch (e.g. torchvision's Keypoint R-CNN)
    keypoint_head: KeypointHeadConfig | None = None  # None: no keypoint branch
    category_names: tuple[str, ...] = ()  # index = label; "" where a label has no name
    # Inference precision of detect()/predict() (training: TrainConfig.runtime.precision).
    # "bf16" falls back to fp32 on CPUs without fast bf16; see maskrcnn.modeling.precision.
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        check_precision(self.precision, where="config.precision")

    def replace(self, **changes: Any) -> ModelConfig:
        """Returns a copy with top-level fields replaced."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a ``ValueError`` naming them.

        Missing keys take their defaults, so configurations saved before a field existed
        still load (e.g. ``precision``, "fp32").
        """
        return _from_dict(ModelConfig, data, "config")


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} for {cls.__name__}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = _NESTED.get((cls, name))
        if sub is not None and value is not None:
            kwargs[name] = _from_dict(sub, value, f"{where}.{name}")
        else:
            kwargs[name] = _tupled(value)
    return cls(**kwargs)


def _tupled(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value


_NESTED: dict[tuple[type, str], type] = {
    (ModelConfig, "input"): InputConfig,
    (ModelConfig, "backbone"): BackboneConfig,
    (ModelConfig, "fpn"): FPNConfig,
    (ModelConfig, "anchors"): AnchorConfig,
    (ModelConfig, "rpn"): RPNConfig,
    (ModelConfig, "box_head"): BoxHeadConfig,
    (ModelConfig, "mask_head"): MaskHeadConfig,
    (BoxHeadConfig, "pooler"): PoolerConfig,
    (MaskHeadConfig, "pooler"): PoolerConfig,
    (ModelConfig, "keypoint_head"): KeypointHeadConfig,
    (KeypointHeadConfig, "pooler"): PoolerConfig,
}


def config_value(cfg: ModelConfig, key: str) -> Any:
    """The value of the dotted field ``key``; an optional section that is None (e.g.
    ``keypoint_head``) reads as its defaults, as :func:`override` would create it."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if (
            not dataclasses.is_dataclass(node)
            or isinstance(node, type)
            or part not in {f.name for f in dataclasses.fields(node)}
        ):
            where = (
                [f.name for f in dataclasses.fields(node)]
                if dataclasses.is_dataclass(node) and not isinstance(node, type)
                else []
            )
            allowed = f"; {part!r} is not one of {where}" if where else ""
            raise ValueError(f"unknown config key {key!r}{allowed}")
        child = getattr(node, part)
        if child is None and i < len(parts) - 1 and (type(node), part) in _NESTED:
            child = _NESTED[(type(node), part)]()
        node = child
    return node


def override(cfg: ModelConfig, key: str, value: Any) -> ModelConfig:
    """Returns ``cfg`` with the dotted field ``key`` (e.g. ``"rpn.nms_thresh"``) set."""
    return _override(cfg, key.split("."), value, key)


def _override(node: Any, parts: list[str], value: Any, key: str) -> Any:
    head, rest = parts[0], parts[1:]
    if (
        not dataclasses.is_dataclass(node)
        or isinstance(node, type)
        or head not in {f.name for f in dataclasses.fields(node)}
    ):
        raise ValueError(f"unknown config key {key!r}")
    child = getattr(node, head)
    if rest and child is None and (type(node), head) in _NESTED:
        child = _NESTED[(type(node), head)]()  # e.g. "keypoint_head.conv_dim" adds the head
    new = _override(child, rest, value, key) if rest else value
    return dataclasses.replace(node, **{head: new})


# ----------------------------------------------------------------------------------------------
# Presets


def r50_fpn(num_classes: int = 91) -> ModelConfig:
    """ResNet-50-FPN, the paper's main model, with our defaults (aligned RoIAlign)."""
    aligned = PoolerConfig(output_size=7, sampling_ratio=0, aligned=True)
    return ModelConfig(
        num_classes=num_classes,
        box_head=BoxHeadConfig(pooler=aligned),
        mask_head=MaskHeadConfig(pooler=dataclasses.replace(aligned, output_size=14)),
        anchors=AnchorConfig(round_base_anchors=False),
    )


def r101_fpn(num_classes: int = 91) -> ModelConfig:
    """ResNet-101-FPN."""
    cfg = r50_fpn(num_classes)
    return cfg.replace(backbone=dataclasses.replace(cfg.backbone, depth=101))


def x101_32x8d_fpn(num_classes: int = 91) -> ModelConfig:
    """ResNeXt-101 32x8d-FPN."""
    cfg = r50_fpn(num_classes)
    return cfg.replace(
        backbone=dataclasses.replace(cfg.backbone, depth=101, groups=32, width_per_group=8)
    )


def r18_fpn(num_classes: int = 91) -> ModelConfig:
    """ResNet-18-FPN: a CPU-sized model for small data and quick experiments."""
    cfg = r50_fpn(num_classes)
    return cfg.replace(backbone=dataclasses.replace(cfg.backbone, depth=18))


def r50_c4(num_classes: int = 91) -> ModelConfig:
    """ResNet-50-C4: RPN and RoIAlign on C4, res5 as the shared head (paper Figure 4, left).

    One anchor level on C4 (stride 16) with the paper's five sizes; 14x14 RoIs go through res5
    (stride 2 in its first block) to a 7x7 map shared by the box head and the mask branch.
    """
    aligned = PoolerConfig(output_size=14, sampling_ratio=0, aligned=True)
    return ModelConfig(
        num_classes=num_classes,
        head="c4",
        anchors=AnchorConfig(
            sizes=((32, 64, 128, 256, 512),),
            aspect_ratios=(0.5, 1.0, 2.0),
            round_base_anchors=False,
        ),
        rpn=RPNConfig(pre_nms_topk_train=12000, pre_nms_topk_test=6000, post_nms_topk_test=1000),
        box_head=BoxHeadConfig(pooler=aligned),
        mask_head=MaskHeadConfig(pooler=aligned, num_convs=0),
    )


PRESETS = {
    "r50_fpn": r50_fpn,
    "r101_fpn": r101_fpn,
    "x101_32x8d_fpn": x101_32x8d_fpn,
    "r50_c4": r50_c4,
    "r18_fpn": r18_fpn,
}


def preset(name: str, num_classes: int = 91) -> ModelConfig:
    """Returns the named preset; an unknown name raises a ``ValueError`` listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](num_classes)


def torchvision_v1(num_classes: int = 91) -> ModelConfig:
    """Reproduces torchvision's ``maskrcnn_resnet50_fpn`` exactly (its quirks as configuration).

    FrozenBN eps is 0.0 as for the published COCO_V1 weights; ``from_torchvision`` sets 1e-5
    for a state dict of a model torchvision built with ``weights=None`` (plain BatchNorm).
    """
    legacy = PoolerConfig(output_size=7, sampling_ratio=2, aligned=False, level_eps=1e-6)
    return ModelConfig(
        num_classes=num_classes,
        backbone=BackboneConfig(depth=50, norm="frozen_bn", norm_eps=0.0, freeze_at=2),
        anchors=AnchorConfig(round_base_anchors=True, strides_from_grid=True),
        box_head=BoxHeadConfig(pooler=legacy),
        mask_head=MaskHeadConfig(
            pooler=dataclasses.replace(legacy, output_size=14), paste="torchvision"
        ),
    )


def torchvision_v2(num_classes: int = 91) -> ModelConfig:
    """Reproduces torchvision's ``maskrcnn_resnet50_fpn_v2``: BN everywhere, heavier heads."""
    cfg = torchvision_v1(num_classes)
    return cfg.replace(
        backbone=dataclasses.replace(cfg.backbone, norm="bn", norm_eps=1e-5),
        fpn=FPNConfig(norm="bn"),
        rpn=dataclasses.replace(cfg.rpn, num_convs=2),  # two plain 3x3 convs, no norm
        box_head=dataclasses.replace(cfg.box_head, num_convs=4, conv_norm="bn", num_fc=1),
        mask_head=dataclasses.replace(cfg.mask_head, conv_norm="bn"),
    )


COCO_PERSON_KEYPOINT_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
# COCO's person skeleton (the annotation file's 1-based pairs, here 0-based).
COCO_PERSON_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
    (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip


def torchvision_keypoint_v1(num_classes: int = 2, num_keypoints: int = 17) -> ModelConfig:
    """Reproduces torchvision's ``keypointrcnn_resnet50_fpn``: no mask head, a keypoint head.

    The box side is ``torchvision_v1``'s; training short sides 640..800 (test: 800); keypoint
    RoIs pooled like the box RoIs (14x14, sampling ratio 2, aligned=False).
    """
    cfg = torchvision_v1(num_classes)
    coco = num_keypoints == 17
    return cfg.replace(
        input=dataclasses.replace(cfg.input, min_size=(640, 672, 704, 736, 768, 800)),
        mask_on=False,
        keypoint_head=KeypointHeadConfig(
            num_keypoints=num_keypoints,
            pooler=dataclasses.replace(cfg.box_head.pooler, output_size=14),
            keypoint_names=COCO_PERSON_KEYPOINT_NAMES if coco else (),
            skeleton=COCO_PERSON_SKELETON if coco else (),
        ),
        category_names=("__background__", "person") if num_classes == 2 else (),
    )


_FLOAT32_TINY = 1.1754943508222875e-38  # the smallest positive normal float32


def detectron2_config(
    num_classes: int = 80,
    *,
    depth: ResNetDepth = 50,
    min_size: int | tuple[int, ...] = (640, 672, 704, 736, 768, 800),
    max_size: int = 1333,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_image: int = 100,
    mask_threshold: float = 0.5,
    class_agnostic_mask: bool = False,
    norm_eps: float = 1e-5,
    category_names: tuple[str, ...] = (),
) -> ModelConfig:
    """detectron2's R-FPN Mask R-CNN (``Base-RCNN-FPN`` + ``mask_rcnn_R_*_FPN``) as our config.

    Args:
        num_classes: detectron2's foreground classes; our ``num_classes`` is one more (label 0
            is the background).
        depth: ResNet depth (50 or 101 in the model zoo).
        min_size: training short sides (one picked at random); test uses the last.
        max_size: longest side after resizing.
        score_thresh, nms_thresh, detections_per_image: test-time filtering (score above,
            per-class NMS IoU, detections kept per image).
        mask_threshold: probability at which ``predict`` binarises masks.
        class_agnostic_mask: one mask channel for all classes.
        norm_eps: FrozenBN eps (detectron2 uses 1e-5).
        category_names: label names (index = our label).

    Note: the FPN level rule differs from detectron2's by ~1e-8 in the log only at exact level
    boundaries: ours is ``floor(4 + log2(s / 224) + eps)``, detectron2's
    ``floor(4 + log2(s / 224 + 1e-8))``.
    """
    aligned = PoolerConfig(output_size=7, sampling_ratio=0, aligned=True, level_eps=1e-8)
    sizes = (int(min_size),) if isinstance(min_size, int) else tuple(int(s) for s in min_size)
    return ModelConfig(
        num_classes=num_classes + 1,
        input=InputConfig(
            min_size=sizes,
            max_size=max_size,
            pixel_scale=255.0,
            channel_order="BGR",
            pixel_mean=(103.530, 116.280, 123.675),  # BGR, 0-255 scale
            pixel_std=(1.0, 1.0, 1.0),
        ),
        backbone=BackboneConfig(
            depth=depth, norm="frozen_bn", norm_eps=norm_eps, freeze_at=2, stride_in_1x1=True
        ),
        anchors=AnchorConfig(round_base_anchors=False, offset=0.0, strides_from_grid=False),
        # detectron2 keeps proposals with w > 0 and h > 0; our filter keeps w, h >= min_size,
        # so the smallest positive normal float32 stands in for its MIN_SIZE of 0.
        rpn=RPNConfig(post_nms_topk_train=1000, min_size=_FLOAT32_TINY, smooth_l1_beta=0.0),
        box_head=BoxHeadConfig(
            pooler=aligned,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_image=detections_per_image,
            min_box_size=0.0,  # detectron2 drops no small boxes at test time
            smooth_l1_beta=0.0,  # detectron2 trains with L1
        ),
        mask_head=MaskHeadConfig(
            pooler=dataclasses.replace(aligned, output_size=14),
            class_agnostic=class_agnostic_mask,
            paste="grid_sample",
            threshold=mask_threshold,
        ),
        category_names=tuple(category_names),
    )
