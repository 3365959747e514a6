"""The segmentation loss of eq. 12 (appendix C): 1·BCE + 20·focal(γ = 2) + 1·dice, on per-class sigmoids.

Only labelled pixels count (label != ignore_index). Labels are class indices into the K classes of the logits;
each pixel's target is the one-hot vector of its class. Everything is computed in float32.

The one-hot target is never built: every term is a sum over classes of its y = 0 form, corrected at the pixel's
own class (one gather of the logit there), and dice's per-class sums over y are a scatter-add over the labels.
The logits (B, H, W, K) are read in one fused pass; tests/models/test_losses.py holds this to the one-hot form.

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


@jax.named_scope("losses")  # its ops' name in a compiled step, which a profile attributes by (tools/profile_parts.py)
def segmentation_loss(logits: jax.Array, labels: jax.Array, *, weights: LossWeights = LossWeights(),
                      gamma: float = 2.0, ignore_index: int = IGNORE_INDEX,
                      classes: jax.Array | None = None) -> SegmentationLoss:
  """logits (B, H, W, K), labels (B, H, W) int → L_seg and its terms (eqs. 13-15). `classes` (K,) bool: the
  classes whose channels the loss covers (default all); the others get no loss and no gradient (labels must not
  name them)."""
  k = logits.shape[-1]
  included = jnp.ones(k, jnp.float32) if classes is None else jnp.asarray(classes, jnp.float32)  # (K,)
  k_included = jnp.maximum(included.sum(), 1.0)
  x = logits.astype(jnp.float32)
  valid = labels != ignore_index  # (B, H, W)
  label = jnp.where(valid, labels, 0).astype(jnp.int32)
  n_valid = jnp.maximum(valid.sum(), 1).astype(jnp.float32)

  def terms(x):
    """(BCE, focal) of a logit against targets 0 and 1 (eqs. 13, 14), and p = σ(x)."""
    log_p, log_not_p = jax.nn.log_sigmoid(x), jax.nn.log_sigmoid(-x)  # log σ(x), log(1 − σ(x)), stable
    p = jax.nn.sigmoid(x)
    return (-log_not_p, -log_p), (-(p**gamma) * log_not_p, -((1 - p) ** gamma) * log_p), p

  (bce0, _), (focal0, _), p = terms(x)  # (B, H, W, K): every class as if y = 0
  bce0, focal0 = bce0 * included, focal0 * included
  x_own = jnp.take_along_axis(x, label[..., None], axis=-1)[..., 0]  # (B, H, W): the logit of the pixel's class
  (bce0_own, bce1_own), (focal0_own, focal1_own), p_own = terms(x_own)
  mask = valid.astype(jnp.float32)
  own_included = included[label]  # (B, H, W): 1 (labels name included classes only)
  bce = ((bce0.sum(-1) + (bce1_own - bce0_own) * own_included) * mask).sum() / (n_valid * k_included)
  focal = ((focal0.sum(-1) + (focal1_own - focal0_own) * own_included) * mask).sum() / (n_valid * k_included)

  # Dice per class over the batch's labelled pixels: Σ y·p and Σ y² by class (scatter-adds), Σ p² (eq. 15).
  yp = jnp.zeros(k, jnp.float32).at[label.ravel()].add((p_own * mask).ravel())
  yy = jnp.zeros(k, jnp.float32).at[label.ravel()].add(mask.ravel())
  pp = ((p * p) * mask[..., None]).sum(tuple(range(x.ndim - 1)))
  dice = ((1 - (2 * yp + 1) / (yy + pp + 1)) * included).sum() / k_included
  total = weights.bce * bce + weights.focal * focal + weights.dice * dice
  return SegmentationLoss(total, bce, focal, dice)
