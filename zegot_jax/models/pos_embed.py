"""Resizing a ViT's learned position embedding to another patch grid.

transformers' `interpolate_pos_encoding=True` resizes with `torch.nn.functional.interpolate(mode="bicubic",
align_corners=False)`: half-pixel centres, Keys' cubic kernel with a = -0.75, border samples clamped, no
anti-aliasing. `jax.image.resize` uses a = -0.5 and anti-aliases when shrinking, so the resize is written
here as two small interpolation matrices (one per axis) that reproduce PyTorch's sampling exactly.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
import numpy as np

Method = Literal["bicubic", "bilinear"]

_CUBIC_A = -0.75  # PyTorch's bicubic coefficient.


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """Keys' cubic convolution weights for the 4 taps at offsets -1, 0, 1, 2 from floor(x); t = x - floor(x)."""
  a = _CUBIC_A

  def near(d):  # |d| <= 1
    return ((a + 2) * d - (a + 3)) * d * d + 1

  def far(d):  # 1 < |d| < 2
    return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def interpolation_matrix(n_in: int, n_out: int, method: Method = "bicubic") -> np.ndarray:
  """(n_out, n_in) matrix W such that W @ x resamples x with half-pixel centres (align_corners=False)."""
  scale = n_in / n_out
  x = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5  # source coordinate of each output sample
  w = np.zeros((n_out, n_in), dtype=np.float64)
  rows = np.arange(n_out)
  if method == "bicubic":
    x0 = np.floor(x)
    taps = _cubic_weights(x - x0)  # (n_out, 4)
    for j, offset in enumerate(range(-1, 3)):
      idx = np.clip(x0.astype(np.int64) + offset, 0, n_in - 1)
      np.add.at(w, (rows, idx), taps[:, j])
  elif method == "bilinear":
    x = np.maximum(x, 0.0)  # PyTorch clamps negative source coordinates for linear modes.
    x0 = np.floor(x).astype(np.int64)
    t = x - x0
    np.add.at(w, (rows, np.clip(x0, 0, n_in - 1)), 1.0 - t)
    np.add.at(w, (rows, np.clip(x0 + 1, 0, n_in - 1)), t)
  else:
    raise ValueError(f"position embedding resize method must be 'bicubic' or 'bilinear', got {method!r}")
  return w


def resize_position_embedding(
    pos: jnp.ndarray,
    grid: tuple[int, int],
    new_grid: tuple[int, int],
    method: Method = "bicubic",
    class_tokens: int = 1,
) -> jnp.ndarray:
  """Resizes a (c + gh*gw, D) position table to (c + nh*nw, D), where c = `class_tokens` leading positions (CLIP's
  CLS: 1; SigLIP has none) are kept apart.

  Works on numpy arrays (at load time) and inside `jax.jit` (grids are static Python ints).
  """
  gh, gw = grid
  nh, nw = new_grid
  if pos.shape[0] != class_tokens + gh * gw:
    raise ValueError(f"position embedding has {pos.shape[0]} rows, expected {class_tokens} + {gh}*{gw} for grid "
                     f"{grid}")
  if (gh, gw) == (nh, nw):
    return pos
  xp = np if isinstance(pos, np.ndarray) else jnp
  cls_pos, patch_pos = pos[:class_tokens], pos[class_tokens:].reshape(gh, gw, -1)
  wh = interpolation_matrix(gh, nh, method).astype(np.float32)  # (nh, gh)
  ww = interpolation_matrix(gw, nw, method).astype(np.float32)  # (nw, gw)
  resized = xp.einsum("ih,jw,hwd->ijd", wh, ww, patch_pos.astype(xp.float32))  # (nh, nw, D)
  resized = resized.reshape(nh * nw, -1).astype(pos.dtype)
  return xp.concatenate([cls_pos, resized], axis=0)
