"""SigLIP in Flax linen, equal to transformers' PyTorch `SiglipModel` for any `SiglipConfig`.

The second encoder family behind ZegOT's seam (`encoders.py`). What differs from CLIP:

  * the patch embedding has a bias, the position table has no CLS row and there is no pre-LN;
  * the global image embedding is an attention-pooling head over the patch tokens (a learned probe attends to
    them, then LayerNorm + MLP with a residual); there is no visual projection. A patch token reaches the joint
    space through the same head's value path: out_proj(v_proj(t)), then + MLP(LayerNorm(·)), which is the head's
    output when the probe attends to that one token. DFA's dense features and the value path (MaskCLIP) use it;
  * the text tower is bidirectional and pools the LAST position through a linear head; it was trained on texts
    padded to max_position_embeddings (64), so prompts are padded there (`pad_to_max_length`), and there is no
    [SOS]: the contexts start at position 0;
  * pixels are normalized with mean = std = 0.5 (the processor's statistics, read from preprocessor_config.json
    when the checkpoint has one).

Parameter names mirror transformers' state-dict keys, so `encoder_checkpoint.py` loads it by the same rule as CLIP
(the pooling head's `in_proj_weight` keeps PyTorch's (3·width, width) layout).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zegot_jax.models.pos_embed import Method, resize_position_embedding
from zegot_jax.models.transformer import (MLP, Dtype, Encoder, Family, TextOutput, TowerConfig, VisionConfig,
                                          VisionOutput, layer_norm, splice_contexts, square_image_size, tower_fields)

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig(VisionConfig):
  hidden_act: str = "gelu_pytorch_tanh"
  layer_norm_eps: float = 1e-6


@dataclasses.dataclass(frozen=True)
class SiglipTextConfig(TowerConfig):
  hidden_act: str = "gelu_pytorch_tanh"
  layer_norm_eps: float = 1e-6
  vocab_size: int = 32000
  max_position_embeddings: int = 64
  projection_size: int | None = None  # the text head's output width; transformers' default: hidden_size

  @property
  def head_size(self) -> int:
    return self.projection_size or self.hidden_size


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
  vision: SiglipVisionConfig
  text: SiglipTextConfig
  image_mean: tuple[float, ...] = SIGLIP_MEAN
  image_std: tuple[float, ...] = SIGLIP_STD

  family = "siglip"
  context_start = 0  # no [SOS]: `X×C <name>. </s> pad…`
  pad_to_max_length = True  # pooled at the last position: padded as in training

  def __post_init__(self):
    if self.text.head_size != self.vision.hidden_size:
      raise ValueError(f"SigLIP's text head gives {self.text.head_size} features and its image head "
                       f"{self.vision.hidden_size}: the joint space needs them equal")

  @property
  def projection_dim(self) -> int:
    """D, the joint space's width (the image pooling head's and the text head's output)."""
    return self.vision.hidden_size


def base_patch16_config(image_size: int) -> SiglipConfig:
  """google/siglip-base-patch16-224's shapes, position embedding at the grid of `image_size`."""
  grid = image_size // 16
  return SiglipConfig(
      vision=SiglipVisionConfig(768, 3072, 12, 12, image_size=224, patch_size=16, pos_grid=(grid, grid)),
      text=SiglipTextConfig(768, 3072, 12, 12, vocab_size=32000, max_position_embeddings=64, projection_size=768))


# ----------------------------------------------------------------------------------------------- vision tower


class SiglipVisionEmbeddings(nn.Module):
  config: SiglipVisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    c = self.config
    patches = nn.Conv(c.hidden_size, (c.patch_size, c.patch_size), strides=c.patch_size, padding="VALID",
                      dtype=self.dtype, param_dtype=self.param_dtype, name="patch_embedding")(pixels)  # (B, h, w, width)
    b, h, w, d = patches.shape
    gh, gw = c.grid
    pos = nn.Embed(gh * gw, d, param_dtype=self.param_dtype, name="position_embedding").embedding
    pos = resize_position_embedding(pos, (gh, gw), (h, w), c.pos_resize_method, class_tokens=0)
    return patches.reshape(b, h * w, d) + pos.astype(patches.dtype)  # (B, h*w, width)


class MultiheadAttentionPoolingHead(nn.Module):
  """transformers' `SiglipMultiheadAttentionPoolingHead`: a learned probe attends over the tokens (PyTorch's
  `nn.MultiheadAttention`, its packed in_proj kept in PyTorch's layout), then LayerNorm + MLP with a residual."""

  config: SiglipVisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.probe = self.param("probe", nn.initializers.normal(1.0), (1, 1, c.hidden_size), self.param_dtype)
    self.attention = PackedAttention(c.hidden_size, c.num_attention_heads, **kw)
    self.layernorm = layer_norm(c, **kw)
    self.mlp = MLP(c, **kw)

  def _residual_mlp(self, x: jax.Array) -> jax.Array:
    return x + self.mlp(self.layernorm(x))

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """(B, T, width) → (B, width): the pooled image embedding."""
    probe = jnp.broadcast_to(self.probe.astype(self.dtype), (tokens.shape[0], 1, tokens.shape[-1]))
    return self._residual_mlp(self.attention(probe, tokens))[:, 0]

  def value_path(self, tokens: jax.Array) -> jax.Array:
    """(..., width) → (..., width): each token through the head as if the probe attended to it alone."""
    return self._residual_mlp(self.attention.values(tokens))


class PackedAttention(nn.Module):
  """PyTorch's `nn.MultiheadAttention` (batch first): queries from one sequence, keys and values from another."""

  features: int
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    d = self.features
    self.in_proj_weight = self.param("in_proj_weight", nn.initializers.lecun_normal(), (3 * d, d), self.param_dtype)
    self.in_proj_bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,), self.param_dtype)
    self.out_proj = nn.Dense(d, dtype=self.dtype, param_dtype=self.param_dtype)

  def _project(self, x: jax.Array, which: int) -> jax.Array:  # which: 0 q, 1 k, 2 v; y = x Wᵀ + b
    d = self.features
    w = self.in_proj_weight[which * d:(which + 1) * d].astype(self.dtype)
    return jnp.einsum("...i,oi->...o", x.astype(self.dtype), w) + self.in_proj_bias[which * d:(which + 1) * d]

  def __call__(self, queries: jax.Array, tokens: jax.Array) -> jax.Array:
    heads = lambda x: x.reshape(*x.shape[:-1], self.num_heads, self.features // self.num_heads)
    q, k, v = heads(self._project(queries, 0)), heads(self._project(tokens, 1)), heads(self._project(tokens, 2))
    out = jax.nn.dot_product_attention(q, k, v)  # scale head_dim ** -0.5, as PyTorch's
    return self.out_proj(out.reshape(*queries.shape[:-1], self.features))

  def values(self, tokens: jax.Array) -> jax.Array:
    return self.out_proj(self._project(tokens, 2))


class SiglipVisionTransformer(nn.Module):
  """transformers' `SiglipVisionModel` (with its pooling head)."""

  config: SiglipVisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = "xla"

  def setup(self):
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embeddings = SiglipVisionEmbeddings(c, **kw)
    self.encoder = Encoder(c, **kw, attention=self.attention)
    self.post_layernorm = layer_norm(c, **kw)
    self.head = MultiheadAttentionPoolingHead(c, **kw)

  def __call__(self, pixels: jax.Array, *, feature_layers: Sequence[int] = (),
               value_embeddings: bool = False) -> VisionOutput:
    b, height, width, _ = pixels.shape
    h, w = height // self.config.patch_size, width // self.config.patch_size
    x = self.embeddings(pixels.astype(self.dtype))
    hidden_states, values = self.encoder(x, value_embeddings=value_embeddings)
    pooled = self.head(self.post_layernorm(hidden_states[-1]))  # (B, width)

    def grid(tokens):  # (B, h*w, C) → (B, h, w, C)
      return tokens.reshape(b, h, w, tokens.shape[-1])

    def to_joint_space(tokens):
      return self.head.value_path(self.post_layernorm(tokens))

    for layer in feature_layers:
      if not 1 <= layer <= self.config.num_hidden_layers:
        raise ValueError(f"feature layer {layer} is outside 1..{self.config.num_hidden_layers} (1-based)")
    patch_tokens = {i: grid(hidden_states[i]) for i in feature_layers}
    return VisionOutput(
        image_embeds=pooled,
        pooled=pooled,
        hidden_states=hidden_states,
        patch_tokens=patch_tokens,
        dense_features={i: to_joint_space(t) for i, t in patch_tokens.items()},
        value_features=None if values is None else to_joint_space(grid(values)),
        value_embeddings=None if values is None else grid(values),
    )


# ----------------------------------------------------------------------------------------------- text tower


class SiglipTextEmbeddings(nn.Module):
  config: SiglipTextConfig
  param_dtype: Dtype = jnp.float32

  def setup(self):
    c = self.config
    self.token_embedding = nn.Embed(c.vocab_size, c.hidden_size, param_dtype=self.param_dtype)
    self.position_embedding = nn.Embed(c.max_position_embeddings, c.hidden_size, param_dtype=self.param_dtype)

  def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
    return self.token_embedding(input_ids)

  def __call__(self, inputs_embeds: jax.Array) -> jax.Array:
    return inputs_embeds + self.position_embedding.embedding[:inputs_embeds.shape[-2]]


class SiglipTextTransformer(nn.Module):
  """transformers' `SiglipTextModel`: bidirectional, pooled at the last position through `head`."""

  config: SiglipTextConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = "xla"

  def setup(self):
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embeddings = SiglipTextEmbeddings(c, param_dtype=self.param_dtype)
    self.encoder = Encoder(c, **kw, attention=self.attention)
    self.final_layer_norm = layer_norm(c, **kw)
    self.head = nn.Dense(c.head_size, **kw)

  def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
    return self.embeddings.embed_tokens(input_ids)

  def __call__(self, input_ids: jax.Array, *, inputs_embeds: jax.Array | None = None,
               attention_mask: jax.Array | None = None) -> TextOutput:
    batch_shape, t = input_ids.shape[:-1], input_ids.shape[-1]
    if t > self.config.max_position_embeddings:
      raise ValueError(f"text length {t} exceeds max_position_embeddings={self.config.max_position_embeddings}")
    if inputs_embeds is None:
      inputs_embeds = self.embed_tokens(input_ids)
    x = self.embeddings(inputs_embeds)
    x = x.reshape(-1, t, x.shape[-1]).astype(self.dtype)  # (B, T, width)
    mask = None if attention_mask is None else attention_mask.reshape(-1, 1, 1, t).astype(bool)
    hidden_states, _ = self.encoder(x, mask=mask)
    last = self.final_layer_norm(hidden_states[-1])
    pooled = self.head(last[:, -1])  # the last position, padding or not, as transformers

    def unflatten(a):
      return a.reshape(*batch_shape, *a.shape[1:])

    return TextOutput(text_embeds=unflatten(pooled), pooled=unflatten(pooled), last_hidden_state=unflatten(last),
                      hidden_states=tuple(map(unflatten, hidden_states)))


# ----------------------------------------------------------------------------------------------- SigLIP


class Siglip(nn.Module):
  """Both towers with the encoder interface ZegOT uses (`encode_image`, `encode_text`, `encode_prompts`)."""

  config: SiglipConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str = "xla"
  text_attention: str | None = None

  def setup(self):
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.vision_model = SiglipVisionTransformer(c.vision, **kw, attention=self.attention)
    self.text_model = SiglipTextTransformer(c.text, **kw, attention=self.text_attention or self.attention)
    self.logit_scale = self.param("logit_scale", nn.initializers.zeros, (1,), self.param_dtype)
    self.logit_bias = self.param("logit_bias", nn.initializers.zeros, (1,), self.param_dtype)

  def __call__(self, pixels: jax.Array, input_ids: jax.Array) -> tuple[VisionOutput, TextOutput]:
    return self.encode_image(pixels), self.encode_text(input_ids)

  def encode_image(self, pixels: jax.Array, *, feature_layers: Sequence[int] = (),
                   value_embeddings: bool = False) -> VisionOutput:
    """pixels (B, H, W, C), normalized by the config's image_mean / image_std (`transformer.normalize_image`); any H, W (position embedding resized)."""
    return self.vision_model(pixels, feature_layers=tuple(feature_layers), value_embeddings=value_embeddings)

  def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                  padding_as_lengths: bool | None = None) -> TextOutput:
    """input_ids (..., T) → text embeddings (..., D); SigLIP's texts are padded to max_position_embeddings and
    read without a mask, as trained. `padding_as_lengths` is CLIP's (causal) option and is not used here."""
    del padding_as_lengths
    return self.text_model(input_ids, attention_mask=attention_mask)

  def encode_prompts(self, input_ids: jax.Array, context: jax.Array, context_start: int | None = None) -> TextOutput:
    """CoOp prompts (K, T) `X×C <name>. </s> pad…` with N learnable contexts (N, C, width) → (K, N, D)."""
    start = self.config.context_start if context_start is None else context_start
    embeds = splice_contexts(self.text_model.embed_tokens(input_ids), context, start)
    ids = jnp.broadcast_to(input_ids[:, None], embeds.shape[:3])
    return self.text_model(ids, inputs_embeds=embeds)


# ----------------------------------------------------------------------------------------------- transformers configs


def config_from_hf(raw: dict[str, Any], *, pos_grid: tuple[int, int] | None = None,
                   pos_resize_method: Method = "bicubic") -> SiglipConfig:
  """Our `SiglipConfig` from a checkpoint's config.json (read through transformers' `SiglipConfig`)."""
  import transformers  # pylint: disable=g-import-not-at-top

  hf = transformers.SiglipConfig.from_dict(raw)
  v, t = hf.vision_config, hf.text_config
  if not getattr(v, "vision_use_head", True):
    raise ValueError("vision_use_head is False: ZegOT needs SigLIP's pooling head (the image embedding and the "
                     "dense features' map to the joint space)")
  return SiglipConfig(
      vision=SiglipVisionConfig(**tower_fields(v), image_size=v.image_size, patch_size=v.patch_size,
                                num_channels=v.num_channels, pos_grid=pos_grid, pos_resize_method=pos_resize_method),
      text=SiglipTextConfig(**tower_fields(t), vocab_size=t.vocab_size, max_position_embeddings=t.max_position_embeddings,
                            projection_size=getattr(t, "projection_size", None)))


def config_to_hf(config: SiglipConfig):
  """transformers' `SiglipConfig` for our config (square position grids only, as transformers requires)."""
  import transformers  # pylint: disable=g-import-not-at-top

  v, t = config.vision, config.text
  vision = transformers.SiglipVisionConfig(**tower_fields(v), image_size=square_image_size(v),
                                           patch_size=v.patch_size, num_channels=v.num_channels)
  text = transformers.SiglipTextConfig(**tower_fields(t), vocab_size=t.vocab_size,
                                       max_position_embeddings=t.max_position_embeddings, projection_size=t.head_size,
                                       pad_token_id=1, eos_token_id=1, bos_token_id=None)  # SigLIP's: </s> pads
  return transformers.SiglipConfig(vision_config=vision.to_dict(), text_config=text.to_dict())


# ----------------------------------------------------------------------------------------------- tiny random SigLIP


def tiny_tokenizer():
  """A fast tokenizer with SigLIP's conventions (words marked by "▁", no [SOS], `</s>` ends the text and pads it)
  spelling every word letter by letter, plus the CoOp placeholder "▁X" as one token. For tiny random models and
  tests without sentencepiece or a downloaded vocabulary. Ids: `<pad>` 0, `</s>` 1, `<unk>` 2, then the symbols."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from tokenizers import models, pre_tokenizers, processors  # pylint: disable=g-import-not-at-top

  symbols = ["▁"] + [chr(c) for c in range(33, 127)] + ["▁X"]
  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{s: 3 + i for i, s in enumerate(symbols)}}
  backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[("▁", "X")], unk_token="<unk>"))
  backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
  backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
  return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="</s>",
                                              unk_token="<unk>", model_max_length=64)


def tiny_config() -> SiglipConfig:
  """A tiny random SigLIP, shaped unlike the tiny CLIP (width, heads, patch size, activation, vocabulary)."""
  return SiglipConfig(
      vision=SiglipVisionConfig(24, 48, 2, 3, image_size=64, patch_size=16),
      text=SiglipTextConfig(24, 40, 2, 2, vocab_size=3 + 96, max_position_embeddings=64))


FAMILY = Family(name="siglip", title="SigLIP", model_type="siglip", module=Siglip, config_from_hf=config_from_hf,
                config_to_hf=config_to_hf, hf_model="SiglipModel", class_tokens=0, tiny_config=tiny_config,
                tiny_tokenizer=tiny_tokenizer)
