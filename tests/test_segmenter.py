"""Sliding-window logits against a Python-loop version of mmsegmentation's slide inference."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zegot_jax.segmenter import sliding_window_logits

# Sliding windows ----------------------------------------------------------------------------------------------

CROP, STRIDE = 8, 5
SIZES = [(8, 8), (5, 7), (3, 20), (8, 13), (17, 9), (20, 23), (23, 30)]  # smaller, equal, non-multiples of stride


def linear_fn(weights: np.ndarray) -> Callable[[jax.Array], jax.Array]:
  """A per-pixel logits function: windows (n, crop, crop, C) → their pixels times weights (C, K)."""
  return lambda windows: jnp.einsum("nhwc,ck->nhwk", windows.astype(jnp.float32), jnp.asarray(weights))


def positional_fn(windows: jax.Array) -> jax.Array:
  """Logits that depend on the position in the window and on the whole window, not only on the pixel."""
  n, h, w, _ = windows.shape
  x = windows.astype(jnp.float32)
  ys = jnp.broadcast_to(jnp.arange(h, dtype=jnp.float32)[None, :, None], (n, h, w))
  xs = jnp.broadcast_to(jnp.arange(w, dtype=jnp.float32)[None, None, :], (n, h, w))
  window_mean = jnp.broadcast_to(x.mean(axis=(1, 2, 3))[:, None, None], (n, h, w))
  return jnp.stack([ys, xs, x[..., 0] * (1 + ys), window_mean], axis=-1)  # (n, h, w, 4)


def positional_np(window: np.ndarray) -> np.ndarray:
  """positional_fn for one (crop, crop, C) window, in numpy float64."""
  h, w, _ = window.shape
  ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
  x = window.astype(np.float64)
  return np.stack([ys, xs, x[..., 0] * (1 + ys), np.full((h, w), x.mean())], axis=-1)


def reference_slide(fn, image: np.ndarray, crop: int, stride: int, k: int) -> np.ndarray:
  """mmsegmentation's slide_inference, written as its Python loops over windows (zero padding up to crop)."""
  h, w, c = image.shape
  padded = np.zeros((max(h, crop), max(w, crop), c), image.dtype)
  padded[:h, :w] = image
  hp, wp = padded.shape[:2]
  h_grids = max(hp - crop + stride - 1, 0) // stride + 1
  w_grids = max(wp - crop + stride - 1, 0) // stride + 1
  preds = np.zeros((hp, wp, k))
  count = np.zeros((hp, wp))
  for h_idx in range(h_grids):
    for w_idx in range(w_grids):
      y1, x1 = h_idx * stride, w_idx * stride
      y2, x2 = min(y1 + crop, hp), min(x1 + crop, wp)
      y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
      preds[y1:y2, x1:x2] += fn(padded[y1:y2, x1:x2])
      count[y1:y2, x1:x2] += 1
  assert (count > 0).all()
  return (preds / count[..., None])[:h, :w]


@pytest.mark.parametrize("size", SIZES)
def test_slide_per_pixel_function_is_exact(size):
  rng = np.random.default_rng(4)
  image = rng.integers(0, 10, size=(*size, 3)).astype(np.uint8)  # integers: sums and averages are exact
  weights = rng.integers(-2, 3, size=(3, 5)).astype(np.float32)
  seen_dtypes = []

  def fn(windows):
    seen_dtypes.append(windows.dtype)
    return linear_fn(weights)(windows)

  out = sliding_window_logits(fn, jnp.asarray(image), CROP, STRIDE, 5)
  assert out.shape == (*size, 5) and out.dtype == jnp.float32
  assert seen_dtypes == [jnp.uint8]
  np.testing.assert_array_equal(np.asarray(out), image.astype(np.float32) @ weights)


@pytest.mark.parametrize("size", SIZES)
def test_slide_matches_mmseg_loop(size):
  rng = np.random.default_rng(5)
  image = rng.normal(size=(*size, 2)).astype(np.float32)
  out = sliding_window_logits(positional_fn, jnp.asarray(image), CROP, STRIDE, 4)
  expected = reference_slide(positional_np, image, CROP, STRIDE, 4)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6, atol=1e-6)


def test_slide_window_grid():
  starts = []

  def fn(windows):
    starts.append(windows.shape[0])
    return positional_fn(windows)

  image = jnp.zeros((20, 13, 1))  # y starts 0, 5, 10, 12 (the last one flush); x starts 0, 5
  out = sliding_window_logits(fn, image, CROP, STRIDE, 4)
  assert starts == [8]
  local_y = np.asarray(out[:, 0, 0])  # mean of the local y of the windows covering each row
  # rows 0-4: window 0; 5-7: windows 0, 5; 8-9: 5; 10-11: 5, 10; 12: 5, 10, 12; 13-17: 10, 12; 18-19: 12
  expected = [0, 1, 2, 3, 4, 2.5, 3.5, 4.5, 3, 4, 2.5, 3.5, 3, 2, 3, 4, 5, 6, 6, 7]
  np.testing.assert_allclose(local_y, expected, rtol=1e-6)


@pytest.mark.parametrize("batch_windows", [1, 3, 7, 16, 100])
def test_slide_batch_windows_chunks(batch_windows):
  rng = np.random.default_rng(6)
  image = jnp.asarray(rng.normal(size=(20, 23, 2)).astype(np.float32))  # 4 × 4 = 16 windows
  calls = []

  def fn(windows):
    calls.append(windows.shape[0])
    return positional_fn(windows)

  whole = sliding_window_logits(positional_fn, image, CROP, STRIDE, 4)
  chunked = sliding_window_logits(fn, image, CROP, STRIDE, 4, batch_windows=batch_windows)
  assert calls == [min(batch_windows, 16)]  # traced once, whatever the number of chunks
  np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), rtol=1e-6, atol=1e-6)


def test_slide_under_jit():
  rng = np.random.default_rng(7)
  image = jnp.asarray(rng.normal(size=(17, 9, 2)).astype(np.float32))
  run = jax.jit(functools.partial(sliding_window_logits, positional_fn, crop_size=CROP, stride=STRIDE,
                                  num_classes=4, batch_windows=2))
  out = run(image)
  expected = reference_slide(positional_np, np.asarray(image), CROP, STRIDE, 4)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6, atol=1e-6)


def test_slide_checks_num_classes():
  with pytest.raises(ValueError, match="logits_fn returned"):
    sliding_window_logits(positional_fn, jnp.zeros((8, 8, 1)), CROP, STRIDE, 3)


def test_a_class_name_too_long_for_the_text_tower_is_named_at_its_own_limit():
  """The mini-CLIP's text tower takes 32 positions (not CLIP's 77): a long name is refused by name, at that limit,
  before the tower sees it; the segmenter keeps its class list."""
  from zegot_jax.demo import mini_clip  # pylint: disable=import-outside-toplevel
  from zegot_jax.models import encoder_checkpoint, prompts, zegot  # pylint: disable=import-outside-toplevel
  from zegot_jax.segmenter import Segmenter  # pylint: disable=import-outside-toplevel

  clip = encoder_checkpoint.from_pretrained(mini_clip.shipped_path())
  assert clip.config.text.max_position_embeddings == 32
  model = zegot.ZegOT(clip.config, zegot.ZegOTConfig(dfa_layers=(1, 2), num_prompts=2, context_length=2))
  params = zegot.merge_params(zegot.init_trainable(model, jax.random.key(0)), clip.params)
  mesh = jax.make_mesh((1,), ("data",))
  segmenter = Segmenter(model, prompts.load_tokenizer(clip.path), ["zigzag", "dots"], crop_size=64, stride=64,
                        mesh=mesh, params=params)
  long = "zigzag " * 30
  with pytest.raises(ValueError, match=r"prompts longer than the text tower's 32 tokens: .*zigzag zigzag"):
    segmenter.set_classes(["dots", long])
  assert segmenter.class_names == ["zigzag", "dots"]
