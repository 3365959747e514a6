"""mmseg's photometric distortion on the device: `augment.apply_photometric` for a batch, in jnp, inside the jitted
train step. The host draws the parameters (`augment.train_augment_deferred`, in mmseg's order from the example's
generator), so the distribution is unchanged; this applies them with the same float32 operations in the same
order. Brightness and contrast give the host's uint8 values exactly. The HSV round trip may differ by one level in
a few pixels: XLA fuses a multiply and an add into one fused multiply-add, rounded once, which can flip a rint
(tests/data/test_photometric.py bounds it). On the host the distortion was about half of a training example's
CPU time (docs/speed.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zegot_jax.data.augment import PHOTOMETRIC_PARAMS

_HUE_PERIOD = 180.0  # OpenCV's 8-bit hue scale, as augment.py


def _convert(x: jax.Array) -> jax.Array:
  """mmseg's `convert`: clip to [0, 255], truncate to uint8 (kept as float32 values)."""
  return jnp.trunc(jnp.clip(x, 0.0, 255.0))


def _rgb_to_hsv(rgb: jax.Array) -> jax.Array:
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  v = jnp.maximum(jnp.maximum(r, g), b)
  chroma = v - jnp.minimum(jnp.minimum(r, g), b)
  s = jnp.where(v > 0, chroma * 255.0 / jnp.where(v > 0, v, 1.0), 0.0)
  is_r, is_g = v == r, v == g
  diff = jnp.where(is_r, g - b, jnp.where(is_g, b - r, r - g))
  sector = jnp.where(chroma > 0, diff / jnp.where(chroma > 0, chroma, 1.0), 0.0)
  sector = sector + jnp.where(chroma > 0, jnp.where(is_r, 0.0, jnp.where(is_g, 2.0, 4.0)), 0.0)
  h = jnp.mod(sector * jnp.float32(_HUE_PERIOD / 6.0), jnp.float32(_HUE_PERIOD))
  return jnp.stack([h, s, v], axis=-1)


def _hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  h6 = h / jnp.float32(_HUE_PERIOD / 6.0)
  vs = v * (s / jnp.float32(255.0))
  channels = []
  for n in (5.0, 3.0, 1.0):
    k = jnp.mod(jnp.float32(n) + h6, jnp.float32(6.0))
    channels.append(v - vs * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0))
  return jnp.stack(channels, axis=-1)


def _one(image: jax.Array, p: jax.Array) -> jax.Array:
  """One (H, W, 3) uint8 image, params (PHOTOMETRIC_PARAMS + 2,): the draws, then the crop's (h, w)."""
  x = image.astype(jnp.float32)
  brightness, delta, contrast_first, contrast, alpha, saturate, factor, shift_hue, shift = (
      p[i] for i in range(PHOTOMETRIC_PARAMS))
  x = jnp.where(brightness > 0, _convert(x + delta), x)
  x = jnp.where((contrast_first > 0) & (contrast > 0), _convert(x * alpha), x)
  hsv = _rgb_to_hsv(x)
  hsv = hsv.at[..., 1].set(jnp.where(saturate > 0, jnp.clip(hsv[..., 1] * factor, 0.0, 255.0), hsv[..., 1]))
  hsv = hsv.at[..., 0].set(jnp.where(shift_hue > 0, jnp.mod(hsv[..., 0] + shift, _HUE_PERIOD), hsv[..., 0]))
  x = jnp.where((saturate > 0) | (shift_hue > 0), jnp.clip(jnp.rint(_hsv_to_rgb(hsv)), 0.0, 255.0), x)
  x = jnp.where((contrast_first == 0) & (contrast > 0), _convert(x * alpha), x)
  rows, cols = jnp.arange(image.shape[0])[:, None], jnp.arange(image.shape[1])[None, :]
  inside = ((rows < p[PHOTOMETRIC_PARAMS]) & (cols < p[PHOTOMETRIC_PARAMS + 1]))[..., None]  # not the padding
  return jnp.where(inside, x, image.astype(jnp.float32)).astype(jnp.uint8)


def distort(images: jax.Array, params: jax.Array) -> jax.Array:
  """(B, H, W, 3) uint8 crops and their (B, PHOTOMETRIC_PARAMS + 2) float32 params → the distorted crops."""
  return jax.vmap(_one)(images, params)
