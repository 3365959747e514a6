"""The pre-LN transformer blocks that CLIP and SigLIP share, and what an encoder's towers give ZegOT.

Parameter names mirror transformers' state-dict keys (`encoder/layers_0/self_attn/q_proj/kernel` for
`encoder.layers.0.self_attn.q_proj.weight`), so loading a checkpoint of either family is a fixed renaming and
transposing (`encoder_checkpoint.py`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from zegot_jax.models.pos_embed import Method

Dtype = Any

# Activations transformers' configs name (`ACT2FN`): CLIP uses quick_gelu (OpenAI) or gelu, SigLIP
# gelu_pytorch_tanh.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class TowerConfig:
  """What a pre-LN transformer tower needs; fields named as in transformers' tower configs."""

  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5

  def __post_init__(self):
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; expected one of {sorted(ACTIVATIONS)}")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(
          f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
      )

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class VisionConfig(TowerConfig):
  """A ViT tower: the patch grid and its position embedding."""

  image_size: int = 224
  patch_size: int = 16
  num_channels: int = 3
  # Patch grid of the stored position embedding: (image_size // patch_size,) * 2 as released, or the grid of
  # the image size it was resized to at load time.
  pos_grid: tuple[int, int] | None = None
  pos_resize_method: Method = "bicubic"

  @property
  def grid(self) -> tuple[int, int]:
    if self.pos_grid is not None:
      return tuple(self.pos_grid)
    g = self.image_size // self.patch_size
    return (g, g)


def tower_fields(c) -> dict[str, Any]:
  """The TowerConfig fields of a transformers tower config (or ours): both use the same names."""
  return {f.name: getattr(c, f.name) for f in dataclasses.fields(TowerConfig)}


def square_image_size(v: VisionConfig) -> int:
  """The image_size a transformers config needs for this position grid (square grids only, as transformers)."""
  gh, gw = v.grid
  if gh != gw:
    raise ValueError(f"transformers configs need a square position grid; this model's is {v.grid}")
  return gh * v.patch_size


class Attention(nn.Module):
  """Multi-head self-attention with q/k/v/out projections (transformers' `CLIPAttention`, `SiglipAttention`).

  `attention`: "xla" (JAX's default implementation) or "cudnn" (cuDNN's fused attention), as resolved from the
  setting clip.attention by `attention.resolve`. Padding comes as a boolean `mask` (B, 1, 1, T) of the keys, or
  as `lengths` (B,): the first lengths[b] tokens of sequence b are real, the rest padding, which neither attends
  nor is attended (its attention output is zero). cuDNN takes the lengths form only.
  """

  features: int
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = "xla"

  def setup(self):
    if self.attention not in ("xla", "cudnn"):
      raise ValueError(f"Attention.attention={self.attention!r}: expected 'xla' or 'cudnn' (see attention.resolve)")
    dense = functools.partial(nn.Dense, self.features, dtype=self.dtype, param_dtype=self.param_dtype)
    self.q_proj, self.k_proj, self.v_proj, self.out_proj = dense(), dense(), dense(), dense()

  def _heads(self, x: jax.Array) -> jax.Array:
    return x.reshape(*x.shape[:-1], self.num_heads, self.features // self.num_heads)  # (B, T, heads, head_dim)

  def __call__(self, x: jax.Array, *, causal: bool = False, mask: jax.Array | None = None,
               lengths: jax.Array | None = None) -> jax.Array:
    if self.attention == "cudnn" and mask is not None:
      raise ValueError("cuDNN's fused attention takes padding as lengths, not as a mask")
    q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
    out = jax.nn.dot_product_attention(  # scale = head_dim ** -0.5
        q, k, v, mask=mask, is_causal=causal, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
        implementation=None if self.attention == "xla" else "cudnn")  # None: JAX's default, XLA
    return self.out_proj(out.reshape(x.shape))

  def value_embeddings(self, x: jax.Array) -> jax.Array:
    """The value path alone, out_proj(v_proj(x)): MaskCLIP's dense features skip the query-key attention."""
    return self.out_proj(self.v_proj(x))


class MLP(nn.Module):
  config: TowerConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    x = dense(self.config.intermediate_size, name="fc1")(x)
    x = ACTIVATIONS[self.config.hidden_act](x)
    return dense(self.config.hidden_size, name="fc2")(x)


def layer_norm(config: TowerConfig, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
  # Flax computes the statistics in float32 whatever `dtype` is.
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, param_dtype=param_dtype)


class EncoderLayer(nn.Module):
  """Pre-LN block: x + attn(ln1(x)), then + mlp(ln2(x))."""

  config: TowerConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = "xla"

  def setup(self):
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.layer_norm1 = layer_norm(c, **kw)
    self.self_attn = Attention(c.hidden_size, c.num_attention_heads, **kw, attention=self.attention)
    self.layer_norm2 = layer_norm(c, **kw)
    self.mlp = MLP(c, **kw)

  def __call__(self, x: jax.Array, *, causal: bool = False, mask: jax.Array | None = None,
               lengths: jax.Array | None = None) -> jax.Array:
    x = x + self.self_attn(self.layer_norm1(x), causal=causal, mask=mask, lengths=lengths)
    return x + self.mlp(self.layer_norm2(x))

  def value_embeddings(self, x: jax.Array) -> jax.Array:
    return self.self_attn.value_embeddings(self.layer_norm1(x))


class Encoder(nn.Module):
  """A stack of `EncoderLayer`s; returns every hidden state, the input included (as transformers does)."""

  config: TowerConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = "xla"

  def setup(self):
    self.layers = [EncoderLayer(self.config, self.dtype, self.param_dtype, self.attention)  # layers_0, layers_1, ...
                   for _ in range(self.config.num_hidden_layers)]

  def __call__(self, x: jax.Array, *, causal: bool = False, mask: jax.Array | None = None,
               lengths: jax.Array | None = None,
               value_embeddings: bool = False) -> tuple[tuple[jax.Array, ...], jax.Array | None]:
    """Returns (hidden_states, values): hidden_states[i] is the output of layer i (1-based), [0] the input;
    values are the last layer's value embeddings when asked for (else None)."""
    hidden_states, values = [x], None
    for i, layer in enumerate(self.layers):
      if value_embeddings and i == len(self.layers) - 1:
        values = layer.value_embeddings(x)
      x = layer(x, causal=causal, mask=mask, lengths=lengths)
      hidden_states.append(x)
    return tuple(hidden_states), values


@dataclasses.dataclass(frozen=True)
class Family:
  """One frozen-encoder family behind ZegOT's seam (`encoders.FAMILIES`): what the rest of the code needs to know.

  The family's config class carries the text and pixel conventions as attributes: `family` (this name),
  `context_start` (where a CoOp context goes in the token sequence), `pad_to_max_length` (whether prompts are
  padded to max_position_embeddings), `image_mean` / `image_std`, `projection_dim`, `vision` (a VisionConfig) and
  `text` (with hidden_size and max_position_embeddings). Its module has `encode_image`, `encode_text` and
  `encode_prompts`, returning `VisionOutput` and `TextOutput`.
  """

  name: str  # clip.family's value
  title: str  # as people write it ("CLIP", "SigLIP")
  model_type: str  # config.json's model_type
  module: type  # the Flax module of both towers
  config_from_hf: Callable[..., Any]  # (config.json as a dict, *, pos_grid, pos_resize_method) → config
  config_to_hf: Callable[[Any], Any]  # config → transformers' config object (for save_pretrained)
  hf_model: str  # transformers' model class (the parity tool and tests)
  class_tokens: int  # rows of the position table before the patches' (CLIP: 1, the CLS token; SigLIP: 0)
  tiny_config: Callable[[], Any]  # the tiny random model of `clip.path = "random-tiny"`
  tiny_tokenizer: Callable[[], Any]  # its tokenizer (no vocabulary download)


class VisionOutput(NamedTuple):
  """What an image tower gives ZegOT. h, w is the patch grid of the input; D the joint (image-text) width. "To the
  joint space" is the family's own map of a token: CLIP's post_layernorm → visual_projection, SigLIP's
  post_layernorm → its pooling head's value path."""

  image_embeds: jax.Array  # (B, D) the global image embedding f̄ (not normalized)
  pooled: jax.Array  # (B, width or D) transformers' pooler_output
  hidden_states: tuple[jax.Array, ...]  # L + 1 of (B, [1 +] h*w, width); [0] the embeddings
  patch_tokens: dict[int, jax.Array]  # layer → (B, h, w, width) raw patch tokens of the requested layers
  dense_features: dict[int, jax.Array]  # layer → (B, h, w, D) patch tokens mapped to the joint space
  value_features: jax.Array | None  # (B, h, w, D) last block's value embeddings mapped to the joint space
  value_embeddings: jax.Array | None  # (B, h, w, width) the raw value embeddings


class TextOutput(NamedTuple):
  text_embeds: jax.Array  # (..., D) in the joint space (not normalized)
  pooled: jax.Array  # (..., width or D) transformers' pooler_output
  last_hidden_state: jax.Array  # (..., T, width) after final_layer_norm
  hidden_states: tuple[jax.Array, ...]  # L + 1 of (..., T, width); [0] the embeddings


def splice_contexts(embeds: jax.Array, context: jax.Array, context_start: int) -> jax.Array:
  """CoOp prompts: every class's token embeddings (K, T, width) with positions [context_start, context_start + C)
  replaced by each of N learnable contexts (N, C, width) → (K, N, T, width)."""
  k, t, width = embeds.shape
  n, c, _ = context.shape
  end = context_start + c
  if end > t:
    raise ValueError(f"{c} context tokens from position {context_start} do not fit in length {t}")
  embeds = jnp.broadcast_to(embeds[:, None], (k, n, t, width))
  ctx = jnp.broadcast_to(context[None].astype(embeds.dtype), (k, n, c, width))
  return jnp.concatenate([embeds[:, :, :context_start], ctx, embeds[:, :, end:]], axis=2)


def normalize_image(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 (…, H, W, 3) in [0, 255] or float in [0, 1] → normalized float32, by the encoder's own statistics
  (its config's image_mean / image_std)."""
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
