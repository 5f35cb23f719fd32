"""Prediction on files: overlays and predictions.json from a real (tiny, random) model."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image
from tiny_coco import LAYOUT

from maskrcnn.cli.evaluate import add_eval_commands
from maskrcnn.data.annotations import decode_mask
from maskrcnn.evaluation.predict import list_images, predict_folder
from maskrcnn.weights.native import save_model


def test_predict_folder_writes_overlays_and_json(tiny_model, tiny_coco, tmp_path, capsys):
    _, image_dir = tiny_coco
    out = tmp_path / "pred"
    summary = predict_folder(
        tiny_model, [image_dir], out, score_thresh=0.3, batch_size=2, num_workers=1
    )
    assert summary.num_images == 3 and summary.images_per_second > 0
    assert "images/s" in capsys.readouterr().out
    records = json.loads(summary.json_path.read_text())
    assert [r["file"] for r in records] == [str(image_dir / f"img{i}.png") for i in (1, 2, 3)]
    assert sum(len(r["boxes"]) for r in records) > 0
    for record, ((h, w), _), overlay in zip(records, LAYOUT, summary.overlays):
        assert (record["height"], record["width"]) == (h, w)
        n = len(record["boxes"])
        assert len(record["scores"]) == len(record["labels"]) == len(record["masks"]) == n
        assert all(s >= 0.3 for s in record["scores"])
        assert set(record["categories"]) <= {"square", "bar"}
        for rle in record["masks"]:
            assert decode_mask(rle, h, w).shape == (h, w)
        with Image.open(overlay) as png:
            assert png.size == (w, h) and overlay.parent == out


def test_bad_and_missing_images_are_named(tiny_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(folder / "a.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        predict_folder(tiny_model, [folder], tmp_path / "out", num_workers=1, progress=False)
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        list_images([folder / "nowhere.png"])


def test_predict_command(tiny_model, tiny_coco, tmp_path):
    weights = save_model(tiny_model, tmp_path / "model.safetensors")
    parser = argparse.ArgumentParser()
    add_eval_commands(parser.add_subparsers(dest="command"))
    _, image_dir = tiny_coco
    image = image_dir / "img2.png"
    out = tmp_path / "out"
    args = parser.parse_args(
        ["predict", str(image), "--weights", str(weights), "--out", str(out), "--workers", "0"]
    )
    assert args.func(args) == 0
    assert (out / "img2.png").is_file() and len(json.loads((out / "predictions.json").read_text()))
    args = parser.parse_args(
        ["predict", str(tmp_path / "none"), "--weights", str(weights)] + ["--out", str(out)]
    )
    with pytest.raises(SystemExit, match="none"):
        args.func(args)


def test_precision_option_sets_the_models_precision(tiny_model, tmp_path):
    from maskrcnn.cli.evaluate import load_weights

    weights = save_model(tiny_model, tmp_path / "model.safetensors")
    assert load_weights(str(weights)).cfg.precision == "fp32"
    assert load_weights(str(weights), precision="auto").cfg.precision == "auto"
    parser = argparse.ArgumentParser()
    add_eval_commands(parser.add_subparsers(dest="command"))
    base = ["--weights", str(weights)]
    args = parser.parse_args(["predict", "x.png", *base, "--out", "o", "--precision", "bf16"])
    assert args.precision == "bf16"
    args = parser.parse_args(["eval", *base, "--ann", "a", "--images", "i"])
    assert args.precision is None
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", *base, "--ann", "a", "--images", "i", "--precision", "half"])


def _checksums(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_output_folder_holding_inputs_is_refused_before_writing(tiny_model, tiny_coco, tmp_path):
    _, image_dir = tiny_coco
    before = _checksums(image_dir)
    with pytest.raises(ValueError, match="holds the input image"):
        predict_folder(tiny_model, [image_dir], image_dir, num_workers=0, progress=False)
    one = image_dir / "img1.png"
    with pytest.raises(ValueError, match="holds the input image"):
        predict_folder(tiny_model, [one], image_dir / ".", num_workers=0, progress=False)
    assert _checksums(image_dir) == before


def test_out_naming_an_existing_file_is_a_clear_error(tiny_model, tiny_coco, tmp_path):
    _, image_dir = tiny_coco
    weights = save_model(tiny_model, tmp_path / "model.safetensors")
    parser = argparse.ArgumentParser()
    add_eval_commands(parser.add_subparsers(dest="command"))
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    args = parser.parse_args(
        ["predict", str(image_dir), "--weights", str(weights), "--out", str(taken)]
    )
    with pytest.raises(SystemExit, match="existing file"):
        args.func(args)
    assert taken.read_text() == "keep me"


def _folder_with_a_corrupt_image(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "c.png"):
        Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(folder / name)
    good = (folder / "a.png").read_bytes()
    (folder / "b.png").write_bytes(good[: len(good) // 2])  # truncated
    return folder


def test_a_corrupt_image_still_writes_the_others(tiny_model, tmp_path):
    folder = _folder_with_a_corrupt_image(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"1 of 3 images could not be read: .*b\.png.*2 others"):
        predict_folder(tiny_model, [folder], out, batch_size=2, num_workers=0, progress=False)
    records = json.loads((out / "predictions.json").read_text())
    assert [r["file"] for r in records] == [str(folder / "a.png"), str(folder / "c.png")]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png", "predictions.json"]


def test_skip_bad_images_is_a_named_counted_skip(tiny_model, tmp_path, capsys):
    folder = _folder_with_a_corrupt_image(tmp_path)
    weights = save_model(tiny_model, tmp_path / "model.safetensors")
    parser = argparse.ArgumentParser()
    add_eval_commands(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    base = ["predict", str(folder), "--weights", str(weights), "--out", str(out)]
    args = parser.parse_args([*base, "--workers", "0", "--skip-bad-images"])
    assert args.func(args) == 0
    printed = capsys.readouterr()
    assert "b.png" in printed.err + printed.out and "1 unreadable skipped" in printed.out
    assert len(json.loads((out / "predictions.json").read_text())) == 2
    summary = predict_folder(
        tiny_model, [folder], tmp_path / "o2", num_workers=0, progress=False, skip_bad_images=True
    )
    assert summary.num_images == 2 and summary.skipped == (folder / "b.png",)


def test_eval_max_images_zero_is_refused(capsys):
    parser = argparse.ArgumentParser()
    add_eval_commands(parser.add_subparsers(dest="command"))
    base = ["eval", "--weights", "w.safetensors", "--ann", "a.json", "--images", "i"]
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--max-images", "0"])
    assert "expected a count >= 1, got 0" in capsys.readouterr().err


def _fake_detect(n: int):
    import torch

    from maskrcnn.structures import Instances

    def detect(images, paste_masks=False):
        out = []
        for image in images:
            h, w = image.shape[1:]
            boxes = torch.tensor([[0.0, 0.0, w - 1.0, h - 1.0]]).repeat(n, 1)
            boxes[:, 0] += torch.arange(n, dtype=torch.float32)  # distinct, near image-sized
            out.append(
                Instances(
                    image_size=(h, w),
                    boxes=boxes,
                    labels=torch.ones(n, dtype=torch.int64),
                    scores=torch.linspace(0.99, 0.9, n),
                    masks=torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(n)),
                    category_names=("square",) * n,
                )
            )
        return out

    return detect


def test_overlay_is_the_same_as_drawing_all_masks_at_once(tiny_model, tmp_path, monkeypatch):
    import torch

    from maskrcnn.evaluation.predict import _record_and_overlay
    from maskrcnn.evaluation.results import paste_one
    from maskrcnn.ops.paste import paste_function
    from maskrcnn.viz.draw import draw_instances

    image = torch.rand(3, 60, 80, generator=torch.Generator().manual_seed(1))
    result = _fake_detect(7)([image])[0]
    _, overlay = _record_and_overlay(
        image, tmp_path / "x.png", result, score_thresh=0.5, paste="grid_sample", thresh=0.5
    )
    fn = paste_function("grid_sample")
    planes = [
        torch.from_numpy(
            paste_one(result.masks[i], result.boxes[i], (60, 80), paste=fn, threshold=0.5)
        )
        for i in range(7)
    ]
    result.masks = torch.stack(planes)
    expected = draw_instances(image, result, score_thresh=0.5)
    assert np.array_equal(np.asarray(overlay), np.asarray(expected))


def test_predict_memory_is_bounded_by_the_image_not_the_detections(
    tiny_model, tmp_path, monkeypatch
):
    """Image-sized mask planes alive at once, counted through weak references: at most one,
    whether an image has 4 or 80 detections (the issue's 8000x6000 image with 100 kept ones
    held 100 planes, 4.8 GB, before the overlay was drawn)."""
    import weakref

    import maskrcnn.evaluation.predict as predict_module

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((300, 400, 3), 120, np.uint8)).save(folder / "big.png")
    real_paste_one = predict_module.paste_one
    alive, most = [0], [0]

    def gone() -> None:
        alive[0] -= 1

    def counted(*args, **kwargs):
        plane = real_paste_one(*args, **kwargs)
        assert plane.shape == (300, 400)
        alive[0] += 1
        most[0] = max(most[0], alive[0])
        weakref.finalize(plane, gone)
        return plane

    monkeypatch.setattr(predict_module, "paste_one", counted)
    for n in (4, 80):
        most[0] = 0
        monkeypatch.setattr(tiny_model, "detect", _fake_detect(n))
        summary = predict_folder(
            tiny_model, [folder], tmp_path / f"out{n}", num_workers=0, progress=False
        )
        assert len(json.loads(summary.json_path.read_text())[0]["masks"]) == n
        assert most[0] == 1, (n, most[0])
