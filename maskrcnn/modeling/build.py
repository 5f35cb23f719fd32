"""``build_model(cfg)``: every module wired explicitly from a :class:`ModelConfig`."""

from __future__ import annotations

from torch import nn

from maskrcnn.config import BackboneConfig, ModelConfig
from maskrcnn.modeling.anchors import AnchorGenerator
from maskrcnn.modeling.backbone import ResNet, resnet_stage
from maskrcnn.modeling.box_head import BoxHead, BoxPredictor
from maskrcnn.modeling.fpn import BackboneWithFPN
from maskrcnn.modeling.keypoint_head import KeypointHead
from maskrcnn.modeling.layers import freeze
from maskrcnn.modeling.mask_head import build_mask_head
from maskrcnn.modeling.mask_rcnn import MaskRCNN
from maskrcnn.modeling.poolers import MultiLevelRoIPooler
from maskrcnn.modeling.preprocess import Preprocessor
from maskrcnn.modeling.roi_heads import BoxFeatureHead, GlobalAvgPool, RoIHeads
from maskrcnn.modeling.rpn import RPN, RPNHead


def build_model(cfg: ModelConfig) -> MaskRCNN:
    """Builds a Mask R-CNN (FPN, C4, C5 or C4-fc design) in training mode with fresh weights."""
    backbone: BackboneWithFPN | ResNet
    rpn_features: tuple[str, ...]
    roi_features: tuple[str, ...]
    if cfg.head == "fpn":
        backbone = BackboneWithFPN.from_config(cfg.backbone, cfg.fpn)
        rpn_features = ("p2", "p3", "p4", "p5", "p6")
        roi_features = ("p2", "p3", "p4", "p5")
        channels = backbone.out_channels
        shared_head = None
        box_in, mask_in = channels, channels
    elif cfg.head == "c4":
        backbone = ResNet(cfg.backbone, out_features=("res4",))
        rpn_features = roi_features = ("res4",)
        channels = backbone.out_channels["res4"]
        shared_head = _res5_head(cfg.backbone)
        box_in = mask_in = 2 * channels
    elif cfg.head in ("c5", "c4_fc"):  # one level, no FPN, the FPN design's heads on it
        level = "res5" if cfg.head == "c5" else "res4"
        backbone = ResNet(cfg.backbone, out_features=(level,))
        rpn_features = roi_features = (level,)
        channels = backbone.out_channels[level]
        shared_head = None
        box_in = mask_in = channels
    else:
        raise ValueError(f"head: unknown design {cfg.head!r} (choose 'fpn', 'c4', 'c5' or 'c4_fc')")
    if cfg.keypoint_head is not None and cfg.head != "fpn":
        raise ValueError(f"keypoint_head: needs the 'fpn' design (head='fpn'), got {cfg.head!r}")
    rpn_strides = tuple(backbone.strides[k] for k in rpn_features)
    roi_strides = tuple(backbone.strides[k] for k in roi_features)

    anchor_generator = AnchorGenerator(cfg=cfg.anchors, strides=rpn_strides)
    rpn = RPN(
        cfg=cfg.rpn,
        anchor_generator=anchor_generator,
        head=RPNHead(
            in_channels=channels,
            num_anchors=anchor_generator.num_anchors_per_location,
            num_convs=cfg.rpn.num_convs,
            norm=cfg.rpn.conv_norm,
        ),
    )
    box_head: BoxFeatureHead
    if shared_head is None:
        box_head = BoxHead(cfg=cfg.box_head, in_channels=box_in)
    else:
        box_head = GlobalAvgPool(box_in)
    roi_heads = RoIHeads(
        box_pooler=MultiLevelRoIPooler(cfg=cfg.box_head.pooler, strides=roi_strides),
        box_head=box_head,
        box_predictor=BoxPredictor(in_features=box_head.out_features, num_classes=cfg.num_classes),
        mask_pooler=(
            MultiLevelRoIPooler(cfg=cfg.mask_head.pooler, strides=roi_strides)
            if cfg.mask_on
            else None
        ),
        mask_head=(
            build_mask_head(cfg=cfg.mask_head, in_channels=mask_in, num_classes=cfg.num_classes)
            if cfg.mask_on
            else None
        ),
        box_cfg=cfg.box_head,
        mask_cfg=cfg.mask_head,
        shared_head=shared_head,
        keypoint_pooler=(
            None
            if cfg.keypoint_head is None
            else MultiLevelRoIPooler(cfg=cfg.keypoint_head.pooler, strides=roi_strides)
        ),
        keypoint_head=(
            None
            if cfg.keypoint_head is None
            else KeypointHead(cfg=cfg.keypoint_head, in_channels=channels)
        ),
    )
    return MaskRCNN(
        cfg=cfg,
        preprocessor=Preprocessor(cfg=cfg.input),
        backbone=backbone,
        rpn=rpn,
        roi_heads=roi_heads,
        rpn_features=rpn_features,
        roi_features=roi_features,
    )


def _res5_head(cfg: BackboneConfig) -> nn.Sequential:
    """res5 run on 14x14 RoI features (stride 2 in its first block): the C4 shared head."""
    stage = resnet_stage(cfg, 3)
    if cfg.freeze_at >= 5:
        freeze(stage)
    return stage
