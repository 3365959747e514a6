"""mmsegmentation's training augmentation (Resize, RandomCrop, RandomFlip, PhotoMetricDistortion, Pad) in numpy/PIL.

Images are (H, W, 3) uint8 RGB arrays and labels (H, W) integer maps (uint8 in this project) whose values are
class indices or special values (255 = ignore, 254 = unlabelled); geometric transforms move label values around
but never invent new ones: labels are resampled by nearest neighbour, and only padding adds `ignore_index`.

Every random draw comes from the `np.random.Generator` passed in, in the order mmseg makes its draws, so a
pipeline is deterministic given the generator's state.

Known differences from mmseg (which resizes with OpenCV):
  * images are resized with PIL's bilinear filter, which anti-aliases when shrinking (cv2's INTER_LINEAR does not);
  * labels are resampled at pixel centres, src = floor((dst + 0.5) * in / out) (cv2's INTER_NEAREST uses
    floor(dst * in / out));
  * saturation and hue are changed in one float HSV round trip instead of two uint8 ones (cv2 quantises H to 0-179
    and S, V to 0-255 on each trip).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from zegot_jax.data.classes import IGNORE_INDEX

HUE_PERIOD = 180.0  # OpenCV's 8-bit hue scale: degrees / 2.


# ---------------------------------------------------------------------------------------------------------------
# Resizing.


def _round_half_up(x: float) -> int:
  """mmcv's `int(x + 0.5)` rounding of sizes (not Python's round-half-to-even)."""
  return int(x + 0.5)


def rescale_size(size: tuple[int, int], long_max: float, short_max: float) -> tuple[int, int]:
  """(h, w) scaled by one factor so the long side fits long_max and the short side fits short_max (mmcv)."""
  h, w = size
  factor = min(long_max / max(h, w), short_max / min(h, w))
  return max(1, _round_half_up(h * factor)), max(1, _round_half_up(w * factor))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear (PIL, anti-aliased when shrinking) resize of an (H, W, 3) uint8 image to size=(h, w)."""
  if image.shape[:2] == tuple(size):
    return image.copy()
  pil = Image.fromarray(np.ascontiguousarray(image))
  return np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BILINEAR))


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
  """Source index of each of n_out samples at pixel centres: floor((i + 0.5) * n_in / n_out)."""
  idx = ((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out)).astype(np.int64)
  return np.minimum(idx, n_in - 1)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of an (H, W) label map to size=(h, w); only values already present come out."""
  if label.shape[:2] == tuple(size):
    return label.copy()
  rows = _nearest_indices(label.shape[0], size[0])
  cols = _nearest_indices(label.shape[1], size[1])
  return label[rows[:, None], cols[None, :]]


def _check_pair(image: np.ndarray, label: np.ndarray) -> None:
  """Raises ValueError unless image is (H, W, C) and label is (H, W) with the same H, W."""
  if image.ndim != 3 or label.ndim != 2 or image.shape[:2] != label.shape:
    raise ValueError(f"expected an (H, W, C) image and an (H, W) label, got {image.shape} and {label.shape}")


def random_rescale(
    rng: np.random.Generator,
    image: np.ndarray,
    label: np.ndarray,
    scale: tuple[int, int] = (2048, 512),
    ratio_range: tuple[float, float] = (0.5, 2.0),
) -> tuple[np.ndarray, np.ndarray]:
  """mmseg `Resize(img_scale=scale, ratio_range=ratio_range, keep_ratio=True)`.

  Draws r ~ U(ratio_range); the target scale is (int(scale[0] * r), int(scale[1] * r)) (mmseg truncates), read
  as (long side max, short side max); factor = min(long_max / max(h, w), short_max / min(h, w)); the new size is
  (int(h * factor + 0.5), int(w * factor + 0.5)), at least 1.

  Args:
    rng: source of the ratio.
    image: (H, W, 3) uint8 image, resized bilinearly (PIL).
    label: (H, W) label map, resized by nearest neighbour.
    scale: base (long, short) scale; the order does not matter (max / min are taken).
    ratio_range: (low, high) of the uniform ratio.

  Returns:
    The resized (image, label).
  """
  _check_pair(image, label)
  low, high = ratio_range
  ratio = rng.random() * (high - low) + low
  target = int(scale[0] * ratio), int(scale[1] * ratio)
  size = rescale_size(label.shape, max(target), min(target))
  return resize_image(image, size), resize_label(label, size)


def resize_short_side(image: np.ndarray, short_side: int, max_long_side: int | None = None) -> np.ndarray:
  """Evaluation resize keeping the aspect ratio, bilinear (PIL).

  The short side becomes short_side, unless the long side would then exceed max_long_side: then the long side
  becomes max_long_side and the short side is smaller. Sizes round as in `rescale_size`.

  Args:
    image: (H, W, 3) uint8 image.
    short_side: target short side.
    max_long_side: cap on the long side, or None.

  Returns:
    The resized image.
  """
  h, w = image.shape[:2]
  long_max = float("inf") if max_long_side is None else max_long_side
  return resize_image(image, rescale_size((h, w), long_max, short_side))


# ---------------------------------------------------------------------------------------------------------------
# Cropping, flipping, padding.


def _random_crop_box(
    rng: np.random.Generator, shape: tuple[int, int], crop_size: tuple[int, int]
) -> tuple[int, int, int, int]:
  """(y0, y1, x0, x1) of a crop of min(crop, shape) per dim, offsets uniform over valid positions (mmseg)."""
  margin_h = max(shape[0] - crop_size[0], 0)
  margin_w = max(shape[1] - crop_size[1], 0)
  y0 = int(rng.integers(0, margin_h + 1))
  x0 = int(rng.integers(0, margin_w + 1))
  return y0, min(y0 + crop_size[0], shape[0]), x0, min(x0 + crop_size[1], shape[1])


def crop_satisfies(label: np.ndarray, cat_max_ratio: float, ignore_index: int = IGNORE_INDEX) -> bool:
  """mmseg's crop rule: more than one non-ignored value, the most frequent below cat_max_ratio of them."""
  if label.dtype == np.uint8:  # fast path: one pass, no sort
    counts = np.bincount(label.ravel(), minlength=256)
    if 0 <= ignore_index < 256:
      counts[ignore_index] = 0
    counts = counts[counts > 0]
  else:
    _, counts = np.unique(label[label != ignore_index], return_counts=True)
  return len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio


def random_crop(
    rng: np.random.Generator,
    image: np.ndarray,
    label: np.ndarray,
    crop_size: tuple[int, int] = (512, 512),
    cat_max_ratio: float = 0.75,
    ignore_index: int = IGNORE_INDEX,
    max_tries: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
  """mmseg `RandomCrop(crop_size, cat_max_ratio)`.

  The crop is min(crop_size, image size) in each dim, with offsets uniform over the valid positions. If
  cat_max_ratio < 1, up to max_tries crops are checked with `crop_satisfies` and the first that passes is taken;
  as in mmseg, a crop that fails draws the next one, so when all max_tries fail the crop drawn after the last
  check is returned unchecked (a fresh uniform crop, not one known to be bad).

  Args:
    rng: source of the offsets.
    image: (H, W, 3) image.
    label: (H, W) label map.
    crop_size: (h, w) of the crop.
    cat_max_ratio: largest allowed share of the most frequent non-ignored value; >= 1 disables the rule.
    ignore_index: label value left out of the rule.
    max_tries: how many crops are checked.

  Returns:
    The cropped (image, label), views into the inputs.
  """
  _check_pair(image, label)
  y0, y1, x0, x1 = _random_crop_box(rng, label.shape, crop_size)
  if cat_max_ratio < 1.0:
    for _ in range(max_tries):
      if crop_satisfies(label[y0:y1, x0:x1], cat_max_ratio, ignore_index):
        break
      y0, y1, x0, x1 = _random_crop_box(rng, label.shape, crop_size)
  return image[y0:y1, x0:x1], label[y0:y1, x0:x1]


def random_flip(
    rng: np.random.Generator, image: np.ndarray, label: np.ndarray, prob: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
  """mmseg `RandomFlip(prob)`: flips image and label left-right together with probability prob."""
  _check_pair(image, label)
  if rng.random() < prob:
    return image[:, ::-1], label[:, ::-1]
  return image, label


def pad_to(
    image: np.ndarray, label: np.ndarray, size: tuple[int, int], ignore_index: int = IGNORE_INDEX
) -> tuple[np.ndarray, np.ndarray]:
  """Pads bottom/right to at least size=(h, w): the image with 0, the label with ignore_index (mmseg `Pad`)."""
  _check_pair(image, label)
  pad_h = max(size[0] - label.shape[0], 0)
  pad_w = max(size[1] - label.shape[1], 0)
  if pad_h == 0 and pad_w == 0:
    return image, label
  image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=0)
  label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=ignore_index)
  return image, label


# ---------------------------------------------------------------------------------------------------------------
# Colour.


def rgb_to_hsv(rgb: np.ndarray, xp=np) -> np.ndarray:
  """(..., 3) RGB in [0, 255] → float32 HSV with OpenCV's 8-bit scales: H in [0, 180), S and V in [0, 255].
  `xp`: numpy, or jax.numpy for the device (`photometric.py`): the same float32 operations in the same order."""
  r, g, b = xp.moveaxis(rgb, -1, 0).astype(xp.float32)
  v = xp.maximum(xp.maximum(r, g), b)
  chroma = v - xp.minimum(xp.minimum(r, g), b)
  s = xp.where(v > 0, chroma * 255.0 / xp.where(v > 0, v, 1.0), 0.0).astype(xp.float32)
  is_r, is_g = v == r, v == g
  diff = xp.where(is_r, g - b, xp.where(is_g, b - r, r - g))  # position inside the sextant pair, times chroma
  sector = xp.where(chroma > 0, diff / xp.where(chroma > 0, chroma, 1.0), 0.0).astype(xp.float32)
  sector = sector + xp.where(chroma > 0, xp.where(is_r, 0.0, xp.where(is_g, 2.0, 4.0)), 0.0).astype(xp.float32)
  h = xp.mod(sector * xp.float32(HUE_PERIOD / 6.0), xp.float32(HUE_PERIOD))
  return xp.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv: np.ndarray, xp=np) -> np.ndarray:
  """Inverse of `rgb_to_hsv`: float32 RGB in [0, 255] (not rounded); `xp` as there.

  Uses the branch-free form channel(n) = V - V * S * clip(min(k, 4 - k), 0, 1), k = (n + H / 60deg) mod 6, with
  n = 5, 3, 1 for R, G, B.
  """
  h, s, v = xp.moveaxis(hsv, -1, 0).astype(xp.float32)
  h6 = h / xp.float32(HUE_PERIOD / 6.0)
  vs = v * (s / xp.float32(255.0))
  channels = []
  for n in (5.0, 3.0, 1.0):
    k = xp.mod(xp.float32(n) + h6, xp.float32(6.0))
    channels.append(v - vs * xp.clip(xp.minimum(k, 4.0 - k), 0.0, 1.0))
  return xp.stack(channels, axis=-1)


def _to_uint8(x: np.ndarray) -> np.ndarray:
  """mmseg's `convert`: clip to [0, 255], then truncate to uint8."""
  return np.clip(x, 0, 255).astype(np.uint8)


def adjust_brightness(image: np.ndarray, delta: float) -> np.ndarray:
  """image + delta, clipped and truncated to uint8."""
  return _to_uint8(image.astype(np.float32) + np.float32(delta))


def adjust_contrast(image: np.ndarray, alpha: float) -> np.ndarray:
  """image * alpha, clipped and truncated to uint8."""
  return _to_uint8(image.astype(np.float32) * np.float32(alpha))


def adjust_saturation_hue(image: np.ndarray, saturation: float | None, hue_shift: int | None) -> np.ndarray:
  """Saturation and hue changes in one HSV round trip, rounded back to uint8 RGB.

  S is multiplied by `saturation` and clipped to [0, 255]; `hue_shift` is added to H on OpenCV's 0-180 scale,
  wrapping. None leaves that channel alone.
  """
  if saturation is None and hue_shift is None:
    return image
  hsv = rgb_to_hsv(image)
  if saturation is not None:
    hsv[..., 1] = np.clip(hsv[..., 1] * np.float32(saturation), 0.0, 255.0)
  if hue_shift is not None:
    hsv[..., 0] = np.mod(hsv[..., 0] + np.float32(hue_shift), HUE_PERIOD)
  return np.clip(np.rint(hsv_to_rgb(hsv)), 0, 255).astype(np.uint8)


# The draws of photometric distortion as one float32 vector (what the device applies, `photometric.py`):
# [brightness?, delta, contrast first?, contrast?, alpha, saturation?, factor, hue?, shift], flags as 0/1.
PHOTOMETRIC_PARAMS = 9


def draw_photometric(
    rng: np.random.Generator,
    brightness_delta: float = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
  """mmseg `PhotoMetricDistortion`'s random draws, in its order, as a (PHOTOMETRIC_PARAMS,) float32 vector.

  1. brightness: add U(-brightness_delta, brightness_delta), with probability 0.5;
  2. mode: contrast first or last, 50/50;
  3. contrast (if first): multiply by U(contrast_range), with probability 0.5;
  4. saturation: multiply S by U(saturation_range), with probability 0.5;
  5. hue: add randint(-hue_delta, hue_delta) (numpy's half-open range, as mmseg) to H on the 0-180 scale, with
     probability 0.5 (hue_delta = 0: no shift, where numpy would raise);
  6. contrast (if last), with probability 0.5.
  """
  p = np.zeros(PHOTOMETRIC_PARAMS, np.float32)
  p[4], p[6] = 1.0, 1.0  # neutral contrast and saturation factors
  if rng.integers(2):
    p[0], p[1] = 1.0, rng.uniform(-brightness_delta, brightness_delta)
  p[2] = contrast_first = bool(rng.integers(2))

  def contrast():
    if rng.integers(2):
      p[3], p[4] = 1.0, rng.uniform(*contrast_range)

  if contrast_first:
    contrast()
  if rng.integers(2):
    p[5], p[6] = 1.0, rng.uniform(*saturation_range)
  if rng.integers(2):
    p[7], p[8] = 1.0, (int(rng.integers(-hue_delta, hue_delta)) if hue_delta > 0 else 0)
  if not contrast_first:
    contrast()
  return p


def apply_photometric(image: np.ndarray, p: np.ndarray) -> np.ndarray:
  """The distortion `draw_photometric` drew, on an (H, W, 3) uint8 image. Brightness and contrast clip to
  [0, 255] and truncate to uint8 after each step, as mmseg's `convert`; saturation and hue share one float HSV
  round trip (rounded to uint8 at the end)."""
  image = np.asarray(image, dtype=np.uint8)
  if p[0]:
    image = adjust_brightness(image, p[1])
  if p[2] and p[3]:
    image = adjust_contrast(image, p[4])
  image = adjust_saturation_hue(image, p[6] if p[5] else None, int(p[8]) if p[7] else None)
  if not p[2] and p[3]:
    image = adjust_contrast(image, p[4])
  return image


def photometric_distortion(
    rng: np.random.Generator,
    image: np.ndarray,
    brightness_delta: float = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
  """mmseg `PhotoMetricDistortion` on an (H, W, 3) uint8 RGB image: `draw_photometric`, then `apply_photometric`."""
  return apply_photometric(image, draw_photometric(rng, brightness_delta, contrast_range, saturation_range,
                                                   hue_delta))


# ---------------------------------------------------------------------------------------------------------------
# The pipeline.


def train_augment(
    rng: np.random.Generator,
    image: np.ndarray,
    label: np.ndarray,
    *,
    crop_size: tuple[int, int] = (512, 512),
    scale: tuple[int, int] = (2048, 512),
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    ignore_index: int = IGNORE_INDEX,
    photometric: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
  """mmseg's training order: random_rescale → random_crop → random_flip → photometric_distortion → pad_to.

  Returns:
    (image, label) of exactly crop_size, contiguous: (h, w, 3) uint8 and (h, w) with the label's dtype.
  """
  image, label, params = _augment(rng, image, label, crop_size, scale, ratio_range, cat_max_ratio, ignore_index,
                                  photometric)
  if photometric:
    valid = params[PHOTOMETRIC_PARAMS:].astype(int)
    image[:valid[0], :valid[1]] = apply_photometric(image[:valid[0], :valid[1]], params)
  return image, label


def train_augment_deferred(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, *,
                           crop_size: tuple[int, int] = (512, 512), scale: tuple[int, int] = (2048, 512),
                           ratio_range: tuple[float, float] = (0.5, 2.0), cat_max_ratio: float = 0.75,
                           ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`train_augment` with its photometric distortion drawn but not applied: (image, label, params), params =
  (PHOTOMETRIC_PARAMS + 2,) float32, the draws then the (h, w) of the crop before padding, for
  `photometric.distort` to apply on the device. The same generator makes the same draws in the same order, so
  applying them gives `train_augment`'s image exactly (tests/data/test_photometric.py)."""
  return _augment(rng, image, label, crop_size, scale, ratio_range, cat_max_ratio, ignore_index, True)


def _augment(rng, image, label, crop_size, scale, ratio_range, cat_max_ratio, ignore_index, photometric):
  """Geometry, the photometric draws (when asked for) and padding; the distortion itself is the caller's."""
  image, label = random_rescale(rng, image, label, scale, ratio_range)
  image, label = random_crop(rng, image, label, crop_size, cat_max_ratio, ignore_index)
  image, label = random_flip(rng, image, label)
  params = np.concatenate([draw_photometric(rng) if photometric else np.zeros(PHOTOMETRIC_PARAMS, np.float32),
                           np.asarray(label.shape, np.float32)])
  image, label = pad_to(image, label, crop_size, ignore_index)
  return np.array(image, order="C"), np.ascontiguousarray(label), params
