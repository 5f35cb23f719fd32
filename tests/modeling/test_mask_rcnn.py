"""MaskRCNN's pipeline: the training/inference split, precision from the config, the paste stage."""

from __future__ import annotations

import warnings

import pytest
import torch

from maskrcnn.modeling.precision import cpu_has_fast_bf16


@pytest.fixture
def model(tiny_model):
    """The session's tiny model, with its configuration and mode put back after the test."""
    cfg, training = tiny_model.cfg, tiny_model.training
    yield tiny_model
    tiny_model.cfg = cfg
    tiny_model.train(training)


def _image() -> torch.Tensor:
    return torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(1))


def test_the_caller_chooses_the_proposal_settings_not_the_mode(model):
    rpn_cfg = model.rpn.cfg
    assert model.rpn.train_params.pre_nms_topk == rpn_cfg.pre_nms_topk_train
    assert model.rpn.train_params.post_nms_topk == rpn_cfg.post_nms_topk_train
    assert model.rpn.test_params.pre_nms_topk == rpn_cfg.pre_nms_topk_test
    assert model.rpn.test_params.post_nms_topk == rpn_cfg.post_nms_topk_test
    with torch.no_grad():
        batch = model.preprocessor([_image()])
        features = model.backbone(batch.tensor)
        levels = [features[k] for k in model.rpn_features]
        model.rpn.eval()
        in_eval = model.rpn(batch, levels, params=model.rpn.test_params).proposals
        model.rpn.train()
        in_train = model.rpn(batch, levels, params=model.rpn.test_params).proposals
    assert torch.equal(in_eval[0], in_train[0])


def test_precision_comes_from_the_config(model):
    assert model.set_precision("bf16") is model and model.cfg.precision == "bf16"
    dtypes = []
    handle = model.backbone.register_forward_hook(
        lambda module, args, out: dtypes.append(next(iter(out.values())).dtype)
    )
    try:
        with torch.inference_mode(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.detect([_image()])
    finally:
        handle.remove()
    if cpu_has_fast_bf16():
        assert dtypes == [torch.bfloat16]
    else:  # bf16 is emulated here: fp32, with a warning
        assert dtypes == [torch.float32]
        assert any("running in fp32" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="precision"):
        model.set_precision("half")


def test_the_paste_is_a_stage_hooks_can_see(model):
    seen = []
    handle = model.postprocessor.register_forward_hook(
        lambda module, args, out: seen.append((args[0][0].masks.shape, out[0].masks.shape))
    )
    try:
        with torch.inference_mode():
            (out,) = model([_image()])
    finally:
        handle.remove()
    n = len(out["boxes"])
    assert seen == [((n, 1, 28, 28), (n, 1, 48, 64))]
    assert out["masks"].shape == (n, 1, 48, 64)


def test_predict_thresholds_and_restores_the_mode(model):
    model.train()
    result = model.predict(_image())
    assert model.training
    assert result.masks.dtype == torch.bool and result.masks.shape == (len(result), 48, 64)
    assert len(result.category_names) == len(result)


def test_training_and_detection_feed_the_backbone_channels_last_pixels(model):
    """oneDNN's convolutions run channels-last; NCHW pixels in training cost 2.4x on R50's step."""
    formats = []
    handle = model.backbone.register_forward_pre_hook(
        lambda module, args: formats.append(
            args[0].is_contiguous(memory_format=torch.channels_last)
        )
    )
    image = _image()
    masks = torch.zeros(1, 48, 64, dtype=torch.uint8)
    masks[0, 10:30, 8:40] = 1
    target = {"boxes": torch.tensor([[8.0, 10.0, 40.0, 30.0]]), "labels": torch.tensor([1])}
    try:
        model.train()
        sum(model([image], [{**target, "masks": masks}]).values()).backward()
        model.eval()
        with torch.inference_mode():
            model([image])
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    assert formats == [True, True]
