"""CLIP in Flax linen, equal to transformers' PyTorch `CLIPModel` for any `CLIPConfig`.

Parameter names mirror transformers' state-dict keys (`vision_model/encoder/layers_0/self_attn/q_proj/kernel`
for `vision_model.encoder.layers.0.self_attn.q_proj.weight`), so loading is a fixed renaming and transposing
(see `encoder_checkpoint.py`). The transformer blocks are shared with SigLIP (`transformer.py`). Images are NHWC.
Everything ZegOT reads from the frozen towers comes out of one forward pass:

  * the global image embedding f̄ (CLS → post_layernorm → visual_projection),
  * the patch tokens of any requested layers, raw and mapped through the frozen post_layernorm and
    visual_projection (the dense features of DFA; docs/design.md),
  * the last block's value embeddings (MaskCLIP-style dense features) on request,
  * text embeddings from token ids, or from token embeddings whose placeholder positions hold learnable
    CoOp contexts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zegot_jax.models import prompts, transformer
from zegot_jax.models.pos_embed import Method, resize_position_embedding
from zegot_jax.models.transformer import (Dtype, Encoder, Family, TextOutput, TowerConfig, VisionConfig,
                                          VisionOutput, layer_norm, splice_contexts)


@dataclasses.dataclass(frozen=True)
class TextConfig(TowerConfig):
  vocab_size: int = 49408
  max_position_embeddings: int = 77
  eos_token_id: int = 49407


# OpenAI's CLIP preprocessing statistics (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  vision: VisionConfig
  text: TextConfig
  projection_dim: int = 512
  image_mean: tuple[float, ...] = CLIP_MEAN  # the checkpoint's preprocessor_config.json, when it has one
  image_std: tuple[float, ...] = CLIP_STD

  family = "clip"  # the encoder family's name (`encoders.FAMILIES`)
  # The text conventions ZegOT's prompts follow: `[SOS] X×C <name>. [EOS]`, so the contexts start at position 1;
  # pooled at the EOS token and causal, so padding to the longest prompt is enough.
  context_start = 1
  pad_to_max_length = False


def vit_b16_config(image_size: int, eos_token_id: int = 49407) -> CLIPConfig:
  """openai/clip-vit-base-patch16's shapes, position embedding at the grid of `image_size`."""
  grid = image_size // 16
  return CLIPConfig(
      vision=VisionConfig(768, 3072, 12, 12, image_size=224, patch_size=16, pos_grid=(grid, grid)),
      text=TextConfig(512, 2048, 12, 8, vocab_size=49408, max_position_embeddings=77, eos_token_id=eos_token_id),
      projection_dim=512)


# ----------------------------------------------------------------------------------------------- vision tower


class VisionEmbeddings(nn.Module):
  config: VisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    c = self.config
    patches = nn.Conv(c.hidden_size, (c.patch_size, c.patch_size), strides=c.patch_size, padding="VALID",
                      use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="patch_embedding")(pixels)  # (B, h, w, width)
    b, h, w, d = patches.shape
    cls = self.param("class_embedding", nn.initializers.normal(d**-0.5), (d,), self.param_dtype)
    gh, gw = c.grid
    pos = nn.Embed(1 + gh * gw, d, param_dtype=self.param_dtype, name="position_embedding").embedding
    pos = resize_position_embedding(pos, (gh, gw), (h, w), c.pos_resize_method)  # no-op on the stored grid
    tokens = jnp.concatenate([jnp.broadcast_to(cls.astype(patches.dtype), (b, 1, d)),
                              patches.reshape(b, h * w, d)], axis=1)
    return tokens + pos.astype(patches.dtype)  # (B, 1 + h*w, width)


class VisionTransformer(nn.Module):
  """transformers' `CLIPVisionModel` plus `visual_projection`."""

  config: VisionConfig
  projection_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = "xla"

  def setup(self):
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embeddings = VisionEmbeddings(c, **kw)
    self.pre_layrnorm = layer_norm(c, **kw)  # sic: transformers' spelling
    self.encoder = Encoder(c, **kw, attention=self.attention)
    self.post_layernorm = layer_norm(c, **kw)

  def __call__(self, pixels: jax.Array, projection: nn.Module, *, feature_layers: Sequence[int] = (),
               value_embeddings: bool = False) -> VisionOutput:
    b, height, width, _ = pixels.shape
    h, w = height // self.config.patch_size, width // self.config.patch_size
    x = self.pre_layrnorm(self.embeddings(pixels.astype(self.dtype)))
    hidden_states, values = self.encoder(x, value_embeddings=value_embeddings)
    pooled = self.post_layernorm(hidden_states[-1][:, 0])

    def grid(tokens):  # (B, 1 + h*w, C) → (B, h, w, C), the CLS token dropped
      return tokens[:, 1:].reshape(b, h, w, tokens.shape[-1])

    def to_joint_space(tokens):  # the frozen post_layernorm + visual_projection, applied per patch
      return projection(self.post_layernorm(tokens))

    for layer in feature_layers:
      if not 1 <= layer <= self.config.num_hidden_layers:
        raise ValueError(f"feature layer {layer} is outside 1..{self.config.num_hidden_layers} (1-based)")
    patch_tokens = {i: grid(hidden_states[i]) for i in feature_layers}
    return VisionOutput(
        image_embeds=projection(pooled),
        pooled=pooled,
        hidden_states=hidden_states,
        patch_tokens=patch_tokens,
        dense_features={i: to_joint_space(t) for i, t in patch_tokens.items()},
        value_features=None if values is None else to_joint_space(grid(values)),
        value_embeddings=None if values is None else grid(values),
    )


# ----------------------------------------------------------------------------------------------- text tower


def eos_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
  """The token transformers pools, per sequence: the first `eos_token_id`, or for legacy configs whose
  eos_token_id is 2 (before transformers PR #24773) the highest id in the sequence."""
  if eos_token_id == 2:
    return jnp.argmax(input_ids, axis=-1)
  return jnp.argmax(input_ids == eos_token_id, axis=-1)


class TextEmbeddings(nn.Module):
  """Token and position tables (transformers' `CLIPTextEmbeddings`)."""

  config: TextConfig
  param_dtype: Dtype = jnp.float32

  def setup(self):
    c = self.config
    self.token_embedding = nn.Embed(c.vocab_size, c.hidden_size, param_dtype=self.param_dtype)
    self.position_embedding = nn.Embed(c.max_position_embeddings, c.hidden_size, param_dtype=self.param_dtype)

  def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
    return self.token_embedding(input_ids)

  def __call__(self, inputs_embeds: jax.Array) -> jax.Array:
    """Adds the position embeddings of positions 0..T-1 to (..., T, width) token embeddings."""
    return inputs_embeds + self.position_embedding.embedding[:inputs_embeds.shape[-2]]


class TextTransformer(nn.Module):
  """transformers' `CLIPTextModel` plus `text_projection`, causal, any length up to max_position_embeddings."""

  config: TextConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = "xla"

  def setup(self):
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embeddings = TextEmbeddings(c, param_dtype=self.param_dtype)
    self.encoder = Encoder(c, **kw, attention=self.attention)
    self.final_layer_norm = layer_norm(c, **kw)

  def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
    return self.embeddings.embed_tokens(input_ids)

  def __call__(self, input_ids: jax.Array, projection: nn.Module, *, inputs_embeds: jax.Array | None = None,
               attention_mask: jax.Array | None = None, padding_as_lengths: bool | None = None) -> TextOutput:
    """input_ids (..., T) give the pooling position; inputs_embeds (..., T, width), when given, replace the
    token embeddings (CoOp contexts). attention_mask (..., T) marks the real tokens; see `CLIP.encode_text`."""
    batch_shape, t = input_ids.shape[:-1], input_ids.shape[-1]
    if t > self.config.max_position_embeddings:
      raise ValueError(f"text length {t} exceeds max_position_embeddings={self.config.max_position_embeddings}")
    if inputs_embeds is None:
      inputs_embeds = self.embed_tokens(input_ids)
    x = self.embeddings(inputs_embeds)
    x = x.reshape(-1, t, x.shape[-1]).astype(self.dtype)  # (B, T, width)
    if padding_as_lengths is None:
      padding_as_lengths = self.attention == "cudnn"  # cuDNN takes no mask
    mask = lengths = None
    if attention_mask is not None and padding_as_lengths:  # right padding: the real tokens are a prefix
      lengths = attention_mask.reshape(-1, t).sum(axis=-1, dtype=jnp.int32)  # (B,)
    elif attention_mask is not None:
      mask = attention_mask.reshape(-1, 1, 1, t).astype(bool)  # (B, heads=1, q=1, k=T)
    hidden_states, _ = self.encoder(x, causal=True, mask=mask, lengths=lengths)
    last = self.final_layer_norm(hidden_states[-1])
    eos = eos_positions(input_ids.reshape(-1, t), self.config.eos_token_id)
    pooled = jnp.take_along_axis(last, eos[:, None, None], axis=1)[:, 0]  # (B, width)

    def unflatten(a):
      return a.reshape(*batch_shape, *a.shape[1:])

    return TextOutput(text_embeds=unflatten(projection(pooled)), pooled=unflatten(pooled),
                      last_hidden_state=unflatten(last), hidden_states=tuple(map(unflatten, hidden_states)))


# ----------------------------------------------------------------------------------------------- CLIP


class CLIP(nn.Module):
  """Both towers and their projections. Call `encode_image` / `encode_text` / `encode_prompts` with `apply`."""

  config: CLIPConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = "xla"  # the towers' attention: "xla" or "cudnn" (`attention.resolve` of clip.attention)
  text_attention: str | None = None  # the text tower's, when not `attention`

  def setup(self):
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.vision_model = VisionTransformer(c.vision, c.projection_dim, **kw, attention=self.attention)
    self.text_model = TextTransformer(c.text, **kw, attention=self.text_attention or self.attention)
    self.visual_projection = nn.Dense(c.projection_dim, use_bias=False, **kw)
    self.text_projection = nn.Dense(c.projection_dim, use_bias=False, **kw)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(2.6592), (), self.param_dtype)

  def __call__(self, pixels: jax.Array, input_ids: jax.Array) -> tuple[VisionOutput, TextOutput]:
    return self.encode_image(pixels), self.encode_text(input_ids)

  def encode_image(self, pixels: jax.Array, *, feature_layers: Sequence[int] = (),
                   value_embeddings: bool = False) -> VisionOutput:
    """pixels (B, H, W, C), CLIP-normalized (see `normalize_image`); any H, W (position embedding resized)."""
    return self.vision_model(pixels, self.visual_projection, feature_layers=tuple(feature_layers),
                             value_embeddings=value_embeddings)

  def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                  padding_as_lengths: bool | None = None) -> TextOutput:
    """input_ids (..., T) → text embeddings (..., D). attention_mask (..., T): 1 on the real tokens, 0 on the
    padding after them (right padding, as CLIP's tokenizers pad), masking the padding keys as transformers does.

    The padding reaches the attention as a boolean mask of the keys (XLA; transformers' computation exactly) or,
    with `padding_as_lengths` (the default under cuDNN, which takes no mask), as each sequence's length. The
    embeddings are the same either way (tested); only the hidden states at padding positions differ, whose
    attention output is zero with lengths."""
    return self.text_model(input_ids, self.text_projection, attention_mask=attention_mask,
                           padding_as_lengths=padding_as_lengths)

  def encode_prompts(self, input_ids: jax.Array, context: jax.Array, context_start: int | None = None) -> TextOutput:
    """CoOp prompts: every class's token ids, with the tokens at [context_start, context_start + C) replaced by
    each of N learnable contexts.

    input_ids: (K, T) `[SOS] X×C <class name> . [EOS] pad…` (see `prompts.prompt_token_ids`).
    context:   (N, C, width) learnable context vectors, shared by all classes.
    Returns text embeddings (K, N, D).
    """
    start = self.config.context_start if context_start is None else context_start
    embeds = splice_contexts(self.text_model.embed_tokens(input_ids), context, start)  # (K, N, T, width)
    ids = jnp.broadcast_to(input_ids[:, None], embeds.shape[:3])
    return self.text_model(ids, self.text_projection, inputs_embeds=embeds)


def normalize_image(images: jax.Array, config: CLIPConfig | None = None) -> jax.Array:
  """uint8 (…, H, W, 3) in [0, 255] or float in [0, 1] → normalized float32 by the config's statistics (OpenAI's
  when None)."""
  mean, std = (CLIP_MEAN, CLIP_STD) if config is None else (config.image_mean, config.image_std)
  return transformer.normalize_image(images, mean, std)


# ----------------------------------------------------------------------------------------------- transformers configs


def config_from_hf(raw: dict[str, Any], *, pos_grid: tuple[int, int] | None = None,
                   pos_resize_method: Method = "bicubic") -> CLIPConfig:
  """Our `CLIPConfig` from a checkpoint's config.json (read through transformers' `CLIPConfig`)."""
  import transformers  # pylint: disable=g-import-not-at-top

  hf = transformers.CLIPConfig.from_dict(raw)
  v, t = hf.vision_config, hf.text_config
  return CLIPConfig(
      vision=VisionConfig(**transformer.tower_fields(v), image_size=v.image_size, patch_size=v.patch_size,
                          num_channels=v.num_channels, pos_grid=pos_grid, pos_resize_method=pos_resize_method),
      text=TextConfig(**transformer.tower_fields(t), vocab_size=t.vocab_size,
                      max_position_embeddings=t.max_position_embeddings, eos_token_id=t.eos_token_id),
      projection_dim=hf.projection_dim)


def config_to_hf(config: CLIPConfig):
  """transformers' `CLIPConfig` for our config (square position grids only, as transformers requires)."""
  import transformers  # pylint: disable=g-import-not-at-top

  v, t = config.vision, config.text
  return transformers.CLIPConfig(
      vision_config=dict(**transformer.tower_fields(v), image_size=transformer.square_image_size(v),
                         patch_size=v.patch_size, num_channels=v.num_channels),
      text_config=dict(**transformer.tower_fields(t), vocab_size=t.vocab_size,
                       max_position_embeddings=t.max_position_embeddings, eos_token_id=t.eos_token_id,
                       bos_token_id=max(t.eos_token_id - 1, 0)),
      projection_dim=config.projection_dim)


def tiny_config() -> CLIPConfig:
  """The tiny random CLIP of `clip.path = "random-tiny"`, with `prompts.byte_level_tokenizer()`."""
  tokenizer_size = 514  # 512 symbols + [SOS] + [EOS]
  return CLIPConfig(
      vision=VisionConfig(32, 64, 2, 4, image_size=64, patch_size=8),
      text=TextConfig(32, 64, 2, 4, vocab_size=tokenizer_size, max_position_embeddings=77, eos_token_id=513),
      projection_dim=32)


FAMILY = Family(name="clip", title="CLIP", model_type="clip", module=CLIP, config_from_hf=config_from_hf,
                config_to_hf=config_to_hf, hf_model="CLIPModel", class_tokens=1, tiny_config=tiny_config,
                tiny_tokenizer=prompts.byte_level_tokenizer)
