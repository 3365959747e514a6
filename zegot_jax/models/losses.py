"""The segmentation loss of eq. 12 (appendix C): 1·BCE + 20·focal(γ = 2) + 1·dice, on per-class sigmoids.

Only labelled pixels count (label != ignore_index). Labels are class indices into the K classes of the logits;
each pixel's target is the one-hot vector of its class. Everything is computed in float32.

Reductions (the paper's eqs. 13-15 leave them open):
  * BCE and focal: mean over labelled pixels and over the K classes;
  * dice: per class over all labelled pixels of the batch, 1 − (2Σ y·p + 1) / (Σ y² + Σ p² + 1), then the mean
    over classes. The +1 smoothing gives classes absent from the batch a gradient towards p = 0 (as ZegCLIP's
    dice does); without it their term would be the constant 1.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from zegot_jax.data.classes import IGNORE_INDEX


class LossWeights(NamedTuple):
  bce: float = 1.0
  focal: float = 20.0
  dice: float = 1.0


class SegmentationLoss(NamedTuple):
  total: jax.Array
  bce: jax.Array
  focal: jax.Array
  dice: jax.Array


def segmentation_loss(logits: jax.Array, labels: jax.Array, *, weights: LossWeights = LossWeights(),
                      gamma: float = 2.0, ignore_index: int = IGNORE_INDEX) -> SegmentationLoss:
  """logits (B, H, W, K), labels (B, H, W) int → L_seg and its terms (eqs. 13-15)."""
  k = logits.shape[-1]
  x = logits.astype(jnp.float32)
  valid = (labels != ignore_index)[..., None].astype(jnp.float32)  # (B, H, W, 1)
  y = jax.nn.one_hot(jnp.where(labels == ignore_index, 0, labels), k, dtype=jnp.float32)  # (B, H, W, K)
  n_valid = jnp.maximum(valid.sum(), 1.0)

  log_p, log_not_p = jax.nn.log_sigmoid(x), jax.nn.log_sigmoid(-x)  # log σ(x), log(1 − σ(x)), stable
  p = jax.nn.sigmoid(x)
  bce = -(y * log_p + (1 - y) * log_not_p)  # eq. 13
  focal = -(y * (1 - p) ** gamma * log_p + (1 - y) * p**gamma * log_not_p)  # eq. 14
  bce = (bce * valid).sum() / (n_valid * k)
  focal = (focal * valid).sum() / (n_valid * k)

  pv, yv = p * valid, y * valid
  reduce = tuple(range(x.ndim - 1))
  dice_per_class = 1 - (2 * (yv * pv).sum(reduce) + 1) / ((yv**2).sum(reduce) + (pv**2).sum(reduce) + 1)  # eq. 15
  dice = dice_per_class.mean()
  total = weights.bce * bce + weights.focal * focal + weights.dice * dice
  return SegmentationLoss(total, bce, focal, dice)
