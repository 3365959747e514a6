"""The loss of eq. 12 against a hand computation, pixel by pixel, on a tiny example with ignored pixels."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from zegot_jax.data.classes import IGNORE_INDEX
from zegot_jax.models.losses import LossWeights, segmentation_loss


def _hand_loss(logits, labels, gamma=2.0):
  """Eqs. 13-15 written out with Python loops and math, over labelled pixels only."""
  b, h, w, k = logits.shape
  bce = focal = 0.0
  count = 0
  inter, sum_y, sum_p = [0.0] * k, [0.0] * k, [0.0] * k
  for i in range(b):
    for r in range(h):
      for c in range(w):
        if labels[i, r, c] == IGNORE_INDEX:
          continue
        count += 1
        for j in range(k):
          y = 1.0 if labels[i, r, c] == j else 0.0
          p = 1 / (1 + math.exp(-float(logits[i, r, c, j])))
          bce += -(y * math.log(p) + (1 - y) * math.log(1 - p))
          focal += -(y * (1 - p) ** gamma * math.log(p) + (1 - y) * p**gamma * math.log(1 - p))
          inter[j] += y * p
          sum_y[j] += y * y
          sum_p[j] += p * p
  bce /= count * k
  focal /= count * k
  dice = sum(1 - (2 * inter[j] + 1) / (sum_y[j] + sum_p[j] + 1) for j in range(k)) / k
  return bce, focal, dice


def test_loss_terms_equal_hand_computation():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 2, (2, 3, 4, 3)).astype(np.float32)
  labels = rng.integers(0, 3, (2, 3, 4))
  labels[0, 0, :2] = IGNORE_INDEX
  labels[1, 2, 3] = IGNORE_INDEX
  bce, focal, dice = _hand_loss(logits, labels)
  out = segmentation_loss(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose([out.bce, out.focal, out.dice], [bce, focal, dice], rtol=1e-5)
  np.testing.assert_allclose(out.total, bce + 20 * focal + dice, rtol=1e-5)
  weighted = segmentation_loss(jnp.asarray(logits), jnp.asarray(labels), weights=LossWeights(2.0, 3.0, 0.5))
  np.testing.assert_allclose(weighted.total, 2 * bce + 3 * focal + 0.5 * dice, rtol=1e-5)


def test_ignored_pixels_have_no_effect_and_no_gradient():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(1, 4, 4, 2)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 2, (1, 4, 4))).at[0, :2].set(IGNORE_INDEX)
  changed = logits.at[0, :2].set(100.0)  # anything at ignored pixels
  np.testing.assert_allclose(segmentation_loss(logits, labels).total, segmentation_loss(changed, labels).total,
                             rtol=1e-6)
  grad = jax.grad(lambda x: segmentation_loss(x, labels).total)(logits)
  assert (np.asarray(grad)[0, :2] == 0).all() and np.abs(np.asarray(grad)[0, 2:]).sum() > 0


def test_stable_for_large_logits_and_bfloat16():
  logits = jnp.asarray([[[[80.0, -80.0], [-80.0, 80.0]]]], jnp.bfloat16)  # (1, 1, 2, 2), confidently right
  labels = jnp.asarray([[[0, 1]]])
  out = segmentation_loss(logits, labels)
  assert np.isfinite([out.total, out.bce, out.focal, out.dice]).all() and float(out.bce) < 1e-6


def _one_hot_loss(logits, labels, gamma=2.0):
  """Eqs. 13-15 with an explicit one-hot target (B, H, W, K): the form the gather-based loss must equal."""
  k = logits.shape[-1]
  valid = (labels != IGNORE_INDEX)[..., None].astype(jnp.float32)
  y = jax.nn.one_hot(jnp.where(labels == IGNORE_INDEX, 0, labels), k, dtype=jnp.float32)
  n = jnp.maximum(valid.sum(), 1.0)
  log_p, log_not_p, p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits), jax.nn.sigmoid(logits)
  bce = (-(y * log_p + (1 - y) * log_not_p) * valid).sum() / (n * k)
  focal = (-(y * (1 - p) ** gamma * log_p + (1 - y) * p**gamma * log_not_p) * valid).sum() / (n * k)
  pv, yv = p * valid, y * valid
  dice = (1 - (2 * (yv * pv).sum((0, 1, 2)) + 1) / ((yv**2).sum((0, 1, 2)) + (pv**2).sum((0, 1, 2)) + 1)).mean()
  return bce + 20 * focal + dice


def test_loss_and_gradient_equal_the_one_hot_form_at_large_logits():
  """Values and gradients against the one-hot form, with logits up to ±30 (where a careless difference of
  the y = 0 and y = 1 terms would lose precision) and classes absent from the batch."""
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(0, 10, (2, 9, 7, 6)).clip(-30, 30), jnp.float32)
  labels = rng.integers(0, 4, (2, 9, 7))  # classes 4 and 5 never occur
  labels[rng.random(labels.shape) < 0.2] = IGNORE_INDEX
  labels = jnp.asarray(labels)
  ours = lambda x: segmentation_loss(x, labels).total  # noqa: E731
  np.testing.assert_allclose(ours(logits), _one_hot_loss(logits, labels), rtol=1e-5)
  reference = jax.grad(lambda x: _one_hot_loss(x, labels))(logits)
  # float32 rounding of the correction at the pixel's class: ~1e-7 of the largest gradient entry
  np.testing.assert_allclose(jax.grad(ours)(logits), reference, rtol=1e-4, atol=1e-6 * float(jnp.abs(reference).max()))


def test_excluded_classes_are_the_loss_of_the_other_channels_alone():
  """classes=mask equals the loss of the included channels with the labels renumbered into them (the hand
  computation of eqs. 13-15 over those channels), and gives the excluded channels no gradient."""
  rng = np.random.default_rng(3)
  logits = rng.normal(0, 2, (2, 3, 4, 5)).astype(np.float32)
  included = np.array([True, False, True, True, False])
  kept = np.flatnonzero(included)
  labels = rng.choice(kept, (2, 3, 4))
  labels[0, 1] = IGNORE_INDEX
  renumbered = np.where(labels == IGNORE_INDEX, IGNORE_INDEX, np.searchsorted(kept, labels))
  bce, focal, dice = _hand_loss(logits[..., kept], renumbered)
  out = segmentation_loss(jnp.asarray(logits), jnp.asarray(labels), classes=jnp.asarray(included))
  np.testing.assert_allclose([out.bce, out.focal, out.dice], [bce, focal, dice], rtol=1e-5)
  grad = np.asarray(jax.grad(lambda x: segmentation_loss(x, jnp.asarray(labels), classes=included).total)(
      jnp.asarray(logits)))
  assert (grad[..., ~included] == 0).all() and np.abs(grad[..., included]).sum() > 0
