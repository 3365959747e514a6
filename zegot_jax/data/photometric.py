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

from zegot_jax.data import augment
from zegot_jax.data.augment import PHOTOMETRIC_PARAMS


def _convert(x: jax.Array) -> jax.Array:
  """mmseg's `convert`: clip to [0, 255], truncate to uint8 (kept as float32 values)."""
  return jnp.trunc(jnp.clip(x, 0.0, 255.0))


def _one(image: jax.Array, p: jax.Array) -> jax.Array:
  """One (H, W, 3) uint8 image, params (PHOTOMETRIC_PARAMS + 2,): the draws, then the crop's (h, w)."""
  x = image.astype(jnp.float32)
  brightness, delta, contrast_first, contrast, alpha, saturate, factor, shift_hue, shift = (
      p[i] for i in range(PHOTOMETRIC_PARAMS))
  x = jnp.where(brightness > 0, _convert(x + delta), x)
  x = jnp.where((contrast_first > 0) & (contrast > 0), _convert(x * alpha), x)
  hsv = augment.rgb_to_hsv(x, xp=jnp)
  hsv = hsv.at[..., 1].set(jnp.where(saturate > 0, jnp.clip(hsv[..., 1] * factor, 0.0, 255.0), hsv[..., 1]))
  hsv = hsv.at[..., 0].set(jnp.where(shift_hue > 0, jnp.mod(hsv[..., 0] + shift, augment.HUE_PERIOD), hsv[..., 0]))
  x = jnp.where((saturate > 0) | (shift_hue > 0), jnp.clip(jnp.rint(augment.hsv_to_rgb(hsv, xp=jnp)), 0.0, 255.0), x)
  x = jnp.where((contrast_first == 0) & (contrast > 0), _convert(x * alpha), x)
  rows, cols = jnp.arange(image.shape[0])[:, None], jnp.arange(image.shape[1])[None, :]
  inside = ((rows < p[PHOTOMETRIC_PARAMS]) & (cols < p[PHOTOMETRIC_PARAMS + 1]))[..., None]  # not the padding
  return jnp.where(inside, x, image.astype(jnp.float32)).astype(jnp.uint8)


def distort(images: jax.Array, params: jax.Array) -> jax.Array:
  """(B, H, W, 3) uint8 crops and their (B, PHOTOMETRIC_PARAMS + 2) float32 params → the distorted crops."""
  return jax.vmap(_one)(images, params)
