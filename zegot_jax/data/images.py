"""Any image file a user may give, as 8-bit RGB: the same rule for the dataset builders and for `predict`.

PIL's own conversion clips 16-bit and 32-bit pixels to 255, which turns a 16-bit PNG white. Here the value range
of the mode is scaled to 0-255 instead:

  I;16, I;16B, I;16L   16-bit integers: value / 257 (65535 → 255)
  I                    32-bit integers, as PIL opens 16-bit PNGs: 0-65535 is scaled as 16-bit; others refused
  F                    32-bit floats: 0-1 is scaled by 255, 0-255 is kept; others (negative, larger, NaN) refused
  anything else        PIL's conversion (palette, grayscale, RGBA, CMYK, ...)
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from zegot_jax.errors import UserError


class ImageModeError(UserError, ValueError):
  """An image whose pixel values have no 8-bit reading (e.g. a float image with negative values)."""


class ImageSizeError(UserError, ValueError):
  """An image with more pixels than is read: a decompression bomb, or more than a program bounds itself to."""


def max_pixels() -> int:
  """The most pixels an image file may have to be read: PIL's guard against decompression bombs (2 ×
  Image.MAX_IMAGE_PIXELS, 178,956,970 by default; PIL only warns between the two)."""
  return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 2**62


def check_pixels(image: Image.Image, where: str = "image", limit: int | None = None) -> None:
  """ImageSizeError when the opened (not yet decoded) image has more than `limit` pixels (default max_pixels())."""
  limit = limit or max_pixels()
  w, h = image.size
  if w * h > limit:
    raise ImageSizeError(size_message(where, w * h, limit, (w, h)))


def size_message(where: str, pixels: int, limit: int, size: tuple[int, int] | None = None) -> str:
  shape = f"{size[0]}×{size[1]} = " if size else ""
  return (f"{where}: {shape}{pixels:,} pixels, over the limit of {limit:,} pixels that images are read at; "
          f"downscale it first (e.g. to 8000 pixels on its long side)")


def bomb_message(error: Exception, where: str) -> str:
  """PIL's DecompressionBombError as size_message: its text names the pixel count, then the limit."""
  numbers = [int(n) for n in re.findall(r"\d+", str(error))]
  return size_message(where, numbers[0], numbers[1]) if len(numbers) >= 2 else f"{where}: {error}"


def to_rgb8(image: Image.Image, where: str = "image") -> np.ndarray:
  """(H, W, 3) uint8 of a PIL image of any mode; `where` names the file in errors."""
  mode = image.mode
  if mode.startswith("I;16"):
    values = np.asarray(image, dtype=np.float64)
    return _gray_to_rgb(np.rint(values / 257.0))
  if mode == "I":
    values = np.asarray(image, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
      raise ImageModeError(f"{where}: 32-bit integer pixels from {values.min()} to {values.max()}; expected 0-65535 "
                           f"(16-bit); save it as an 8-bit or 16-bit PNG or a JPEG")
    return _gray_to_rgb(np.rint(values / 257.0))
  if mode == "F":
    values = np.asarray(image, dtype=np.float64)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not np.isfinite(values).all() or lo < 0 or hi > 255:
      raise ImageModeError(f"{where}: float pixels from {lo} to {hi}; expected values in 0-1 or 0-255; save it as "
                           f"an 8-bit PNG or a JPEG")
    return _gray_to_rgb(np.rint(values * 255.0) if hi <= 1.0 else np.rint(values))
  return np.asarray(image.convert("RGB"))


def _gray_to_rgb(values: np.ndarray) -> np.ndarray:
  gray = np.clip(values, 0, 255).astype(np.uint8)
  return np.repeat(gray[..., None], 3, axis=-1)
