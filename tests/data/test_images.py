"""16-bit and float images are scaled to 8 bits, not clipped to white (PIL's own conversion clips them)."""

import io

import numpy as np
import pytest
from PIL import Image

from zegot_jax.data import builders, images


def _gradient16(tmp_path):
  values = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
  path = tmp_path / "sixteen.png"
  Image.fromarray(values).save(path)  # a 16-bit grayscale PNG (read back as mode I or I;16)
  return path, values


def test_a_16_bit_png_keeps_its_gradient(tmp_path):
  path, values = _gradient16(tmp_path)
  with Image.open(path) as image:
    assert image.mode in ("I", "I;16")
    assert np.asarray(image.convert("RGB")).max() == 255 and (np.asarray(image.convert("RGB")) == 255).mean() > 0.9
    rgb = images.to_rgb8(image)
  expected = np.floor(values.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)  # 65535 → 255, 32768 → 128
  assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
  np.testing.assert_array_equal(rgb[..., 0], expected)
  np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_float_images_in_0_1_and_0_255(scale):
  values = np.linspace(0, 1, 30 * 20).reshape(20, 30).astype(np.float32)
  rgb = images.to_rgb8(Image.fromarray(values * scale, mode="F"))
  np.testing.assert_array_equal(rgb[..., 1], np.floor(values.astype(np.float64) * 255 + 0.5).astype(np.uint8))


def test_float_images_without_an_8_bit_reading_are_refused():
  with pytest.raises(images.ImageModeError, match=r"depth\.tiff: float pixels from -1\.0 to 3\.0; expected"):
    images.to_rgb8(Image.fromarray(np.array([[-1.0, 3.0]], np.float32), mode="F"), "depth.tiff")


def test_the_builders_read_a_16_bit_image_scaled(tmp_path):
  path, values = _gradient16(tmp_path)
  data, size = builders.read_image_bytes(path)
  assert size == (48, 64)
  with Image.open(io.BytesIO(data)) as decoded:
    got = np.asarray(decoded.convert("RGB"))
  np.testing.assert_array_equal(got[..., 0], np.floor(values / 257.0 + 0.5).astype(np.uint8))
