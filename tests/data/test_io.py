"""load_image and image_size: every PIL mode and EXIF orientation, errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.data.io import EXIF_ORIENTATION, ImageReadError, image_size, load_image


def _rgb(h: int = 12, w: int = 20) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_rgb_png_is_exact(tmp_path):
    pixels = _rgb()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.shape == (3, 12, 20) and image.dtype == torch.float32
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = _rgb()[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    image = load_image(tmp_path / "g.png")
    assert image.shape == (3, 12, 20)
    expected = torch.from_numpy(gray).float() / 255
    for c in range(3):
        assert torch.equal(image[c], expected)


def test_rgba_drops_alpha(tmp_path):
    rgba = np.concatenate([_rgb(), np.full((12, 20, 1), 7, dtype=np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert torch.equal(image, torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float() / 255)


def test_palette_image(tmp_path):
    Image.fromarray(_rgb()).convert("P").save(tmp_path / "p.png")
    image = load_image(tmp_path / "p.png")
    assert image.shape == (3, 12, 20) and 0 <= image.min() and image.max() <= 1


def test_16_bit_grayscale_uses_the_full_range(tmp_path):
    values = np.array([[0, 1000, 65535], [30000, 255, 12]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    image = load_image(tmp_path / "d.png")
    assert image.shape == (3, 2, 3)
    expected = torch.from_numpy(values.astype(np.float32) / 65535)
    assert torch.allclose(image[0], expected) and torch.equal(image[0], image[2])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_6_rotates_clockwise(tmp_path, fmt):
    pixels = np.zeros((10, 30, 3), dtype=np.uint8)  # stored landscape
    pixels[:, :10] = (255, 0, 0)  # red on the left
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / f"rotated.{fmt.lower()}"
    img.save(path, format=fmt, exif=exif.tobytes())
    image = load_image(path)
    assert image.shape == (3, 30, 10)  # displayed portrait
    assert image_size(path) == (30, 10)
    assert image[0, :8].mean() > 0.9 and image[0, 22:].mean() < 0.1  # red is now on top
    if fmt == "PNG":
        raw = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
        assert torch.equal(image, torch.rot90(raw, k=-1, dims=(1, 2)))


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        load_image(tmp_path / "nothere.png")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageReadError, match="junk.jpg"):
        load_image(tmp_path / "junk.jpg")
    with pytest.raises(ImageReadError, match="junk.jpg"):
        image_size(tmp_path / "junk.jpg")


def test_16_bit_image_using_a_small_part_of_its_range_is_stretched(tmp_path):
    # as the 2018 Data Science Bowl nuclei arrive: 8-bit values (0..235) in a 16-bit PNG
    values = np.array([[0, 20, 235], [117, 235, 3]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "nuclei.png")
    with Image.open(tmp_path / "nuclei.png") as img:
        assert img.mode.startswith("I")  # really read as high bit depth
    image = load_image(tmp_path / "nuclei.png")
    assert image.max() == 1.0 and image.min() == 0.0  # not almost black (235 / 65535)
    expected = torch.from_numpy(values.astype(np.float32) / 235)
    assert torch.allclose(image[0], expected) and torch.equal(image[0], image[1])
    Image.fromarray(np.zeros((2, 3), dtype=np.uint16)).save(tmp_path / "black.png")
    assert torch.equal(load_image(tmp_path / "black.png"), torch.zeros(3, 2, 3))
