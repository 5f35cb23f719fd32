"""The mask branch: the FCN and MLP heads, and the predicted class's probabilities."""

from __future__ import annotations

import pytest
import torch

from maskrcnn.config import MaskHeadConfig, PoolerConfig
from maskrcnn.modeling.mask_head import (
    MaskFCNHead,
    MaskMLPHead,
    build_mask_head,
    mask_probs_for_labels,
)


@pytest.mark.parametrize("head_type", ["fcn", "mlp"])
@pytest.mark.parametrize("class_agnostic", [False, True])
def test_heads_map_pooled_features_to_one_doubled_map_per_class(head_type, class_agnostic):
    cfg = MaskHeadConfig(
        pooler=PoolerConfig(output_size=7),
        head_type=head_type,
        num_convs=2,
        conv_dim=16,
        class_agnostic=class_agnostic,
    )
    head = build_mask_head(cfg=cfg, in_channels=8, num_classes=5)
    assert isinstance(head, MaskFCNHead if head_type == "fcn" else MaskMLPHead)
    out = head(torch.randn(3, 8, 7, 7))
    assert out.shape == (3, 1 if class_agnostic else 5, 14, 14)


def test_fcn_head_keeps_the_checkpoint_layout():
    head = MaskFCNHead(cfg=MaskHeadConfig(num_convs=2, conv_dim=16), in_channels=8, num_classes=5)
    assert list(head.state_dict()) == [
        "convs.0.conv.weight",
        "convs.0.conv.bias",
        "convs.1.conv.weight",
        "convs.1.conv.bias",
        "deconv.weight",
        "deconv.bias",
        "predictor.weight",
        "predictor.bias",
    ]
    without_convs = MaskFCNHead(cfg=MaskHeadConfig(num_convs=0), in_channels=8, num_classes=5)
    assert without_convs.deconv.in_channels == 8


def test_unknown_head_type_is_rejected():
    cfg = MaskHeadConfig(head_type="transformer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="head_type"):
        build_mask_head(cfg=cfg, in_channels=8, num_classes=5)


def test_mask_probs_for_labels_reads_the_predicted_class():
    logits = torch.randn(4, 3, 5, 5)
    labels = torch.tensor([0, 2, 1, 2])
    sigmoid = mask_probs_for_labels(logits, labels)
    torch.testing.assert_close(sigmoid[:, 0], logits[torch.arange(4), labels].sigmoid())
    softmax = mask_probs_for_labels(logits, labels, loss="softmax")
    torch.testing.assert_close(softmax[:, 0], logits.softmax(1)[torch.arange(4), labels])
    agnostic = mask_probs_for_labels(logits[:, :1], labels)
    torch.testing.assert_close(agnostic, logits[:, :1].sigmoid())
