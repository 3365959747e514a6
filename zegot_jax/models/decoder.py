"""The class-agnostic decoder D_θ (eq. 10, appendix G): FPN-style merge over layers, ASPP, upsampling.

It runs on each class's own stack of score maps (the DFA layers' maps Σ_N S_i and the fused map Σ_N S*) as
B·K single-class "images" of h×w, with weights shared across classes: it works for any number and order of
classes, permuting the classes permutes its output, and no parameter has K in its shape (docs/reading.md).

Normalization statistics are shared by the K class maps of an image (GroupNorm over K·h·w and the group's
channels). A class's score level relative to the other classes at the same pixel is what names the pixel;
statistics per class map would subtract each map's own mean and scale, and the decoder could then only compare
shapes of maps, not their levels: it could not even fit one batch (measured on the demo's world). Shared
statistics are symmetric in the classes, so permuting the classes still permutes the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class ConvNormReLU(nn.Module):
  """(B, K, h, w, C) → (B, K, h, w, features): a convolution of each class map, then GroupNorm with statistics
  over all K class maps of the image (see the module docstring; no batch statistics, so training and inference
  agree), then ReLU."""

  features: int
  kernel_size: int = 3
  dilation: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, (self.kernel_size,) * 2, kernel_dilation=self.dilation, padding="SAME",
                use_bias=False, dtype=self.dtype)(x)  # leading (B, K) are batch dimensions
    b, k, h, w, c = x.shape
    x = nn.GroupNorm(num_groups=min(8, self.features), dtype=self.dtype)(x.reshape(b, k * h, w, c))
    return nn.relu(x.reshape(b, k, h, w, c))


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling: parallel dilated convolutions and an image-level branch."""

  features: int
  rates: Sequence[int] = (2, 4, 6)  # small rates fit a 32×32 grid
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branches = [ConvNormReLU(self.features, 1, dtype=self.dtype)(x)]
    branches += [ConvNormReLU(self.features, 3, r, dtype=self.dtype)(x) for r in self.rates]
    # Image-level branch, per class map: a 1×1 map has little to normalize over, so no norm here.
    pooled = nn.relu(nn.Conv(self.features, (1, 1), dtype=self.dtype, name="image_pool")(
        jnp.mean(x, axis=(2, 3), keepdims=True)))
    branches.append(jnp.broadcast_to(pooled, x.shape[:-1] + (self.features,)))
    return ConvNormReLU(self.features, 1, dtype=self.dtype)(jnp.concatenate(branches, axis=-1))


class ClassAgnosticDecoder(nn.Module):
  """(B, K, h, w, d + 1) per-class map stacks → (B, H, W, K) decoder logits Ỹ."""

  features: int = 32
  aspp_rates: Sequence[int] = (2, 4, 6)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, maps: jax.Array, output_size: tuple[int, int], keep: Sequence[int] | None = None) -> jax.Array:
    """`keep`: the classes whose logits are upsampled and returned (all when None); the normalization still sees
    every class."""
    b, k, h, w, levels = maps.shape
    x = maps.astype(self.dtype)  # B·K single-class images, kept as (B, K, ...) for the shared normalization
    # FPN-style top-down merge: start from the fused map (the top level), then add each DFA layer from the
    # deepest to the shallowest through its own lateral 1×1 conv, smoothing with a 3×3 conv after each merge.
    top = nn.Conv(self.features, (1, 1), dtype=self.dtype, name="lateral_fused")(x[..., -1:])
    for level in reversed(range(levels - 1)):
      lateral = nn.Conv(self.features, (1, 1), dtype=self.dtype, name=f"lateral_{level}")(x[..., level:level + 1])
      top = ConvNormReLU(self.features, dtype=self.dtype, name=f"smooth_{level}")(top + lateral)
    top = ASPP(self.features, tuple(self.aspp_rates), dtype=self.dtype)(top)
    logits = nn.Conv(1, (1, 1), dtype=self.dtype, name="classifier")(top)[..., 0]  # (B, K, h, w)
    if keep is not None:
      logits = logits[:, jnp.asarray(keep)]  # before upsampling: only the kept classes reach full resolution
    logits = jax.image.resize(logits.astype(jnp.float32), (b, logits.shape[1], *output_size), "bilinear")  # U
    return jnp.moveaxis(logits, 1, -1)  # (B, H, W, K)
