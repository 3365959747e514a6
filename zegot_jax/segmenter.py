"""Inference of a trained ZegOT for one class list: the `Segmenter`, and mmsegmentation's sliding-window test.

A `Segmenter` computes the class list's text embeddings once (per set of parameters) and owns the jitted window
inference; evaluation (`evaluation.py`), prediction (`prediction.py`) and the pictures (`pictures.py`) all segment
through it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from zegot_jax.models import prompts, zegot


def _window_starts(size: int, crop_size: int, stride: int) -> np.ndarray:
  """mmseg's window starts along one axis of (padded) length size ≥ crop_size; every window is full."""
  grids = max(size - crop_size + stride - 1, 0) // stride + 1
  ends = np.minimum(np.arange(grids) * stride + crop_size, size)
  return np.maximum(ends - crop_size, 0)


def _coverage(size: int, starts: np.ndarray, crop_size: int) -> np.ndarray:
  """How many windows along one axis cover each position: (size,)."""
  covered = np.arange(size)[None, :] - starts[:, None]  # (n, size)
  return ((covered >= 0) & (covered < crop_size)).sum(0)


def _chunked(logits_fn: Callable[[jax.Array], jax.Array], windows: jax.Array, batch_windows: int | None) -> jax.Array:
  """logits_fn on (n, crop, crop, C) windows at once, or batch_windows at a time (one traced call, lax.map)."""
  n = windows.shape[0]
  if batch_windows is None or batch_windows >= n:
    return logits_fn(windows)
  if batch_windows < 1:
    raise ValueError(f"batch_windows must be >= 1, got {batch_windows}")
  chunks = -(-n // batch_windows)
  padded = jnp.pad(windows, [(0, chunks * batch_windows - n)] + [(0, 0)] * (windows.ndim - 1))
  out = jax.lax.map(logits_fn, padded.reshape(chunks, batch_windows, *windows.shape[1:]))  # (chunks, b, ...)
  return out.reshape(chunks * batch_windows, *out.shape[2:])[:n]


def sliding_window_logits(logits_fn: Callable[[jax.Array], jax.Array], image: jax.Array, crop_size: int,
                          stride: int, num_classes: int, batch_windows: int | None = None) -> jax.Array:
  """mmsegmentation's 'slide' inference on one image: averaged logits of overlapping crop×crop windows.

  An image smaller than the crop is first padded at the bottom / right with zeros up to crop_size. Windows start
  at y1 = max(min(i·stride + crop, H') − crop, 0) for i < max(H' − crop + stride − 1, 0) // stride + 1 (and so
  for x), so the last one is flush with the border. Each pixel's logits are the sum over the windows covering
  it divided by their number; the padding is then cropped away.

  Args:
    logits_fn: (n, crop, crop, C) windows → (n, crop, crop, K) float logits.
    image: (H, W, C), any dtype, passed to logits_fn unchanged (apart from the zero padding).
    crop_size: the square window size.
    stride: the step between window starts.
    num_classes: K, checked against logits_fn's output.
    batch_windows: None to call logits_fn on all windows at once, else on chunks of this many (the last chunk
      is padded with zero windows whose logits are dropped; logits_fn is traced once, under lax.map).

  Returns:
    (H, W, K) float32 logits. Window positions are static (from the static shape), so this is jit-able.
  """
  if crop_size < 1 or stride < 1:
    raise ValueError(f"crop_size ({crop_size}) and stride ({stride}) must be >= 1")
  h, w, c = image.shape
  hp, wp = max(h, crop_size), max(w, crop_size)
  padded = jnp.pad(image, [(0, hp - h), (0, wp - w), (0, 0)])  # (H', W', C)
  ys, xs = _window_starts(hp, crop_size, stride), _window_starts(wp, crop_size, stride)
  y0, x0 = (a.reshape(-1) for a in np.meshgrid(ys, xs, indexing="ij"))  # (n,) each, static

  def crop(y: jax.Array, x: jax.Array) -> jax.Array:
    return jax.lax.dynamic_slice(padded, (y, x, 0), (crop_size, crop_size, c))

  windows = jax.vmap(crop)(jnp.asarray(y0, jnp.int32), jnp.asarray(x0, jnp.int32))  # (n, crop, crop, C)
  logits = _chunked(logits_fn, windows, batch_windows).astype(jnp.float32)  # (n, crop, crop, K)
  if logits.shape != (len(y0), crop_size, crop_size, num_classes):
    raise ValueError(f"logits_fn returned {logits.shape}, expected {(len(y0), crop_size, crop_size, num_classes)}")
  offsets = np.arange(crop_size)
  rows = (y0[:, None] + offsets)[:, :, None]  # (n, crop, 1)
  cols = (x0[:, None] + offsets)[:, None, :]  # (n, 1, crop)
  canvas = jnp.zeros((hp, wp, num_classes), jnp.float32).at[rows, cols].add(logits)  # (H', W', K)
  # The windows form a grid, so a pixel's window count is (#y windows over its row) · (#x windows over its column).
  count = np.outer(_coverage(hp, ys, crop_size), _coverage(wp, xs, crop_size)).astype(np.float32)  # (H', W')
  return (canvas / count[:, :, None])[:h, :w]


def image_logits(window_logits: Callable[[jax.Array], jax.Array], image: np.ndarray, crop_size: int, stride: int,
                 num_classes: int, output_size: tuple[int, int], batch_windows: int | None = None) -> jax.Array:
  """Sliding-window logits of one (already resized) image, resized to `output_size` (H, W): (H, W, K)."""
  logits = sliding_window_logits(window_logits, jnp.asarray(image), crop_size, stride, num_classes,
                                 batch_windows=batch_windows)
  return jax.image.resize(logits, (*output_size, num_classes), "bilinear")


class Segmenter:
  """A trained ZegOT's inference for a class list.

    segmenter = Segmenter(model, tokenizer, ["cat", "grass"], crop_size=512, stride=426, mesh=mesh, params=params)
    logits = segmenter.logits(image)            # (H, W, K) Y* of eq. 11, float32
    segmenter.set_params(new_params)            # e.g. the next periodic evaluation: same compiled programs
    segmenter.set_classes(["car", "road"])      # another class list (prediction, the app): same programs too

  The text embeddings g (K, N, D) of a class list are computed once per set of parameters and kept for the last
  `text_cache` class lists, not computed per image. The jitted programs belong to the segmenter and take the
  parameters and the text as arguments, so one segmenter evaluates every checkpoint of a run, and segments with
  any class list, with one compilation per window count and number of classes.
  """

  def __init__(self, model: zegot.ZegOT, tokenizer, class_names: Sequence[str], *, crop_size: int, stride: int,
               mesh: jax.sharding.Mesh, batch_windows: int | None = None, params: Any = None,
               text_cache: int = 16):
    self.model, self.tokenizer = model, tokenizer
    self.crop_size, self.stride, self.batch_windows = crop_size, stride, batch_windows
    self._replicated = NamedSharding(mesh, P())
    self._texts: collections.OrderedDict[tuple[str, ...], jax.Array] = collections.OrderedDict()
    self._text_cache = max(text_cache, 1)
    self._encode = jax.jit(lambda params, tokens: model.apply({"params": params}, tokens, method="encode_classes"))

    def segment(params, text, images):  # ZegOT.segment: (output, aux)
      return model.apply({"params": params}, images, text, method="segment")

    self._windows = jax.jit(lambda params, text, windows: segment(params, text, windows)[0].logits)

    def maps(params, text, image):  # one window-sized image → Y* (H, W, K) and S* of eq. 8 (h, w, K, N)
      output, aux = segment(params, text, image[None])
      return output.logits[0], aux["fused_map"][0]

    self._maps = jax.jit(maps)
    self.params = self.text = None
    self.set_classes(class_names)
    if params is not None:
      self.set_params(params)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def set_classes(self, class_names: Sequence[str]) -> None:
    """Segment with another class list; its text embeddings are computed with the current parameters, or taken
    from the cache. ValueError for an empty list, an empty or repeated name, or a prompt longer than the text
    tower takes; the segmenter then keeps its class list."""
    names = tuple(prompts.check_class_names(class_names))
    text = None if self.params is None else self._text_of(names)  # may refuse the list: then nothing changes
    self.class_names, self.text = list(names), text

  def set_params(self, params: Any) -> None:
    """Segment with `params` (the full tree: trainable + "clip"); computes the text embeddings, once: setting
    the same tree again (e.g. evaluation, then its pictures) keeps them."""
    if params is self.params:
      return
    self.params = params
    self._texts.clear()  # embeddings of the previous parameters
    self.text = self._text_of(tuple(self.class_names))

  def _text_of(self, names: tuple[str, ...]) -> jax.Array:
    """g (K, N, D) of a class list with the current parameters: computed once, kept for the last few lists."""
    if names in self._texts:
      self._texts.move_to_end(names)
      return self._texts[names]
    tokens = jax.device_put(zegot.class_tokens(self.tokenizer, list(names), self.model.config,
                                               self.model.clip_config), self._replicated)
    self._texts[names] = self._encode(self.params, tokens)
    while len(self._texts) > self._text_cache:
      self._texts.popitem(last=False)
    return self._texts[names]

  def _bound(self) -> tuple[Any, jax.Array]:
    if self.params is None:
      raise RuntimeError("Segmenter.set_params(params) first")
    return self.params, self.text

  def window_logits(self, windows: jax.Array) -> jax.Array:
    """(n, crop, crop, 3) windows → (n, crop, crop, K) logits Y*."""
    return self._windows(*self._bound(), windows)

  def logits(self, image: np.ndarray, output_size: tuple[int, int] | None = None) -> jax.Array:
    """Sliding-window logits (H, W, K) of one image (h, w, 3), already resized to the evaluation scale, resized
    to `output_size` (default: the image's size)."""
    return image_logits(self.window_logits, image, self.crop_size, self.stride, self.num_classes,
                        output_size or image.shape[:2], batch_windows=self.batch_windows)

  def score_maps(self, image: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """One image segmented whole (no windows): (logits Y* (H, W, K), fused score maps S* (h, w, K, N))."""
    return self._maps(*self._bound(), jnp.asarray(image))
