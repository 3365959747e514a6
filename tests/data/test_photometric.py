"""Photometric distortion on the device (`data/photometric.py`) against the host's numpy distortion: per example
through the whole augmentation, and batch by batch through the pipeline the trainer uses. Same draws; the same
uint8 values, except that the HSV round trip may differ by one level in a few pixels (XLA's fused multiply-adds)."""

import jax
import numpy as np
import pytest

from zegot_jax.data import augment, build, photometric, pipeline


def _image(rng, kind, shape=(90, 70)):
  if kind == "noise":
    return rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
  if kind == "gray":  # every channel equal: zero chroma, the HSV branches' edge case
    return np.repeat(rng.integers(0, 256, (*shape, 1), dtype=np.uint8), 3, axis=-1)
  if kind == "saturated":  # pure primaries and black/white: hue sectors' boundaries, v = 0
    return rng.choice([0, 255], (*shape, 3)).astype(np.uint8)
  ramp = np.linspace(0, 255, shape[0] * shape[1] * 3).reshape(*shape, 3)  # smooth: every level once
  return np.roll(ramp, int(rng.integers(100)), axis=1).astype(np.uint8)


@pytest.mark.parametrize("kind", ["noise", "gray", "saturated", "smooth"])
def test_device_distortion_equals_the_host_one_example_by_example(kind):
  """40 examples each: the same generator draws the same distortion; crops of 64² from images that rescale below
  64 in some draws, so padding (which the distortion must leave alone) occurs too."""
  distort = jax.jit(photometric.distort)
  kw = dict(crop_size=(64, 64), scale=(96, 64), ratio_range=(0.5, 1.5))
  differing = []
  for seed in range(40):
    rng = np.random.default_rng(seed)
    image, label = _image(rng, kind), rng.integers(0, 5, (90, 70)).astype(np.uint8)
    host, host_label = augment.train_augment(np.random.default_rng(seed), image, label, **kw)
    crop, crop_label, params = augment.train_augment_deferred(np.random.default_rng(seed), image, label, **kw)
    np.testing.assert_array_equal(crop_label, host_label)
    device = np.asarray(distort(crop[None], params[None]))[0]
    assert_close(device, host, params, f"seed {seed}, params {params}")
    differing.append(np.mean(device != host))
  assert np.mean(differing) < 0.01


def assert_close(device, host, params, what=""):
  """Equal where no HSV round trip ran and in the padding; elsewhere one level apart in under 5% of the pixels
  (two where a contrast factor up to 1.5 follows the round trip)."""
  h, w = params[augment.PHOTOMETRIC_PARAMS:].astype(int)
  np.testing.assert_array_equal(device[h:], host[h:], err_msg=what)  # padding untouched
  np.testing.assert_array_equal(device[:, w:], host[:, w:], err_msg=what)
  if not (params[5] or params[7]):
    np.testing.assert_array_equal(device, host, err_msg=what)
  difference = np.abs(device.astype(int) - host.astype(int))
  assert difference.max() <= (2 if params[3] and not params[2] else 1), what
  assert np.mean(difference > 0) < 0.05, what


def test_every_distortion_step_occurs_in_these_draws():
  """The comparison above covers each branch: brightness, contrast first and last, saturation, hue, padding."""
  drawn = np.stack([augment.draw_photometric(np.random.default_rng(seed)) for seed in range(40)])
  assert drawn[:, 0].any() and (drawn[:, 2] * drawn[:, 3]).any() and ((1 - drawn[:, 2]) * drawn[:, 3]).any()
  assert drawn[:, 5].any() and drawn[:, 7].any() and (drawn[:, [0, 3, 5, 7]].sum(1) == 0).any()


def test_pipeline_with_device_distortion_gives_the_host_pipeline_batches(tmp_path):
  world = build.build("textures_zs3/tiny", tmp_path)
  kw = dict(batch_size=4, seed=3, process_index=0, process_count=1)
  host = iter(pipeline.train_dataset(world.splits["train"], world.spec, photometric="host", **kw))
  device = iter(pipeline.train_dataset(world.splits["train"], world.spec, photometric="device", **kw))
  distort = jax.jit(photometric.distort)
  for _ in range(6):
    a, b = next(host), next(device)
    assert b["photometric"].shape == (4, augment.PHOTOMETRIC_PARAMS + 2)
    np.testing.assert_array_equal(b["label"], a["label"])
    for on_device, on_host, params in zip(np.asarray(distort(b["image"], b["photometric"])), a["image"],
                                          b["photometric"]):
      assert_close(on_device, on_host, params)
  with pytest.raises(ValueError, match="photometric='gpu'"):
    pipeline.train_dataset(world.splits["train"], world.spec, photometric="gpu", **kw)
