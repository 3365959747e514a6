"""ZegOT (section 4): learnable multi-prompts, GA, DFA, MPOT, fusion, the class-agnostic decoder and the ensemble.

Data flow (docs/reading.md), B images of H×W, patch grid h×w, K classes, N prompts, d DFA layers, D = projection dim:

  images ─ frozen CLIP ViT ─▶ f̄ (B, D) and f_i (B, h, w, D) for i in dfa_layers, L2-normalized
  classes × N contexts ─ frozen text tower ─▶ g (K, N, D), L2-normalized          (once per step / evaluation)
  GA    g_GA = Q(cat[f̄ ⊙ g, g])                                      (B, K, N, D)
  DFA   S_i = f_i · g_GA                                              (d, B, h, w, K, N)    eq. 5
  MPOT  S*_i = (M·N) T*_i ⊙ S_i                                       (d, B, h, w, K, N)    eq. 7
  fuse  S* = S*_L · Π_{i<L} σ(S*_i)^(1/(d−1))                         (B, h, w, K, N)       eq. 8
  Y  = U(Σ_N S*)                                                      (B, H, W, K)          eq. 9
  Ỹ  = D_θ(stack[Σ_N S_i, Σ_N S*])                                     (B, H, W, K)          eq. 10
  Y* = λ Y + (1 − λ) Ỹ                                                 (B, H, W, K)          eq. 11

Everything is per class with weights shared across classes, so any list of class names works and permuting it
permutes the outputs. Parameters live in one tree: `params["clip"]` is the frozen CLIP (no gradient, no optimizer
state; `merge_params` puts it beside the rest), the rest is trainable: `context` (N, C, text width), `global_alignment` (Q),
`decoder`, and for the self-attention ablation `match_query`/`match_key`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zegot_jax.models import encoders, transformer
from zegot_jax.models import prompts as prompts_lib
from zegot_jax.models.decoder import ClassAgnosticDecoder
from zegot_jax.models.mpot import bipartite_refine, mpot_refine
from zegot_jax.models.sinkhorn import SinkhornConfig

MATCHINGS = ("mpot", "none", "bipartite", "self_attention")
PROMPT_KINDS = ("learnable", "handcrafted")
FUSION_NORMS = ("sigmoid", "minmax")
SCORE_SCALE_AT = ("logits", "fusion")
DENSE_FEATURES = ("tokens", "maskclip")
GA_INITS = ("identity", "random")
HANDCRAFTED_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a photo of a small {}.", "a photo of a large {}.")


@dataclasses.dataclass(frozen=True)
class ZegOTConfig:
  """The model's settings; every ablation the paper reports is a value here."""

  num_prompts: int = 4  # N learnable prompts (hand-crafted prompts: one per template)
  context_length: int = 8  # C context tokens per prompt
  dfa_layers: tuple[int, ...] = (8, 9, 10, 11, 12)  # 1-based ViT layers; the last is L of eq. 8
  ensemble_lambda: float = 0.8  # λ of eq. 11 (section 4.2, Table 7)
  matching: str = "mpot"  # Table 4b: mpot | none | bipartite | self_attention
  prompts: str = "learnable"  # Table 8: learnable | handcrafted
  templates: tuple[str, ...] = HANDCRAFTED_TEMPLATES  # for prompts="handcrafted"
  fusion_norm: str = "sigmoid"  # Table 11: sigmoid | minmax
  dense_features: str = "tokens"  # tokens: f_i → ln_post → proj; maskclip: the last layer's value embeddings
  global_alignment: bool = True  # False: g_GA = g (no Q); with matching="none" and λ = 1 this is frozen CLIP alone
  # Q's initialization (the paper leaves it open): "identity" starts from g_GA = g, CLIP's own zero-shot
  # alignment, which training then adapts; "random" (LeCun normal) starts from a random projection of the text.
  ga_init: str = "identity"
  # τ, the scale of the cosine scores in the per-class sigmoids (the paper states none; docs/design.md, "The score
  # branch's scale"). Cosines summed over N prompts span a band far narrower than a sigmoid's working range; CLIP
  # multiplies its cosines by a learned logit scale for the same reason. "logits": Y = τ·U(Σ_N S*) (eq. 9);
  # "fusion": every refined map is scaled, S*_i ← τ·S*_i, before eq. 8's sigmoids (so they gate). Learnable: log τ
  # is a trainable parameter started at log(score_scale), τ capped at 100 as CLIP's.
  score_scale: float = 1.0
  score_scale_learnable: bool = False
  score_scale_at: str = "logits"
  decoder_features: int = 32
  aspp_rates: tuple[int, ...] = (2, 4, 6)
  context_init_std: float = 0.02  # CoOp's random initialization of the contexts
  sinkhorn: SinkhornConfig = SinkhornConfig()

  def __post_init__(self):
    def check(name, value, allowed):
      if value not in allowed:
        raise ValueError(f"ZegOTConfig.{name}={value!r}; expected one of {allowed}")

    check("matching", self.matching, MATCHINGS)
    check("prompts", self.prompts, PROMPT_KINDS)
    check("fusion_norm", self.fusion_norm, FUSION_NORMS)
    check("dense_features", self.dense_features, DENSE_FEATURES)
    check("ga_init", self.ga_init, GA_INITS)
    check("score_scale_at", self.score_scale_at, SCORE_SCALE_AT)
    if not 0.0 < self.score_scale <= 100.0:
      raise ValueError(f"ZegOTConfig.score_scale={self.score_scale}: expected a value in (0, 100]")
    layers = tuple(self.dfa_layers)
    if not layers or list(layers) != sorted(set(layers)) or layers[0] < 1:
      raise ValueError(f"ZegOTConfig.dfa_layers={layers}: expected increasing, distinct 1-based layer numbers")
    if not 0.0 <= self.ensemble_lambda <= 1.0:
      raise ValueError(f"ZegOTConfig.ensemble_lambda={self.ensemble_lambda}: expected a value in [0, 1]")
    if self.num_prompts < 1 or self.context_length < 0:
      raise ValueError(f"ZegOTConfig: num_prompts={self.num_prompts} must be >= 1 and "
                       f"context_length={self.context_length} >= 0")
    if self.prompts == "handcrafted" and (not self.templates or any("{}" not in t for t in self.templates)):
      raise ValueError(f"ZegOTConfig.templates={self.templates}: each template needs a '{{}}' for the class name")

  @property
  def n_prompts(self) -> int:
    """N: the learnable prompts, or one prompt per hand-crafted template."""
    return self.num_prompts if self.prompts == "learnable" else len(self.templates)


class ZegOTOutput(NamedTuple):
  logits: jax.Array  # (B, H, W, K) Y* = λY + (1 − λ)Ỹ, eq. 11
  score_logits: jax.Array  # (B, H, W, K) Y, eq. 9
  decoder_logits: jax.Array  # (B, H, W, K) Ỹ, eq. 10


class ImageFeatures(NamedTuple):
  """What the frozen image tower gives the head."""

  f: jax.Array  # (d, B, h, w, D) L2-normalized dense features of the DFA layers
  f_bar: jax.Array  # (B, D) L2-normalized global image embedding
  image_size: tuple[int, int]  # (H, W) of the input, static


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-6) -> jax.Array:
  x32 = x.astype(jnp.float32)
  return (x32 * jax.lax.rsqrt(jnp.maximum(jnp.sum(x32 * x32, axis=axis, keepdims=True), eps * eps))).astype(x.dtype)


def fuse_score_maps(refined: jax.Array, norm: str = "sigmoid") -> jax.Array:
  """Eq. 8 as docs/reading.md makes it well-defined: the last layer's refined map, raw, times the geometric mean of
  the normalized earlier layers. refined: (d, ..., h, w, K, N) → (..., h, w, K, N), float32."""
  refined = refined.astype(jnp.float32)
  last, earlier = refined[-1], refined[:-1]
  if earlier.shape[0] == 0:
    return last
  if norm == "sigmoid":
    log_normed = jax.nn.log_sigmoid(earlier)  # log σ(S*_i), stable for any score
  else:  # min-max over the pixels of each (image, class, prompt) map, into [0, 1]
    lo = earlier.min(axis=(-4, -3), keepdims=True)
    hi = earlier.max(axis=(-4, -3), keepdims=True)
    log_normed = jnp.log(jnp.clip((earlier - lo) / jnp.maximum(hi - lo, 1e-6), 1e-6, 1.0))
  return last * jnp.exp(log_normed.mean(axis=0))  # Π σ(S*_i)^(1/(d−1))


def upsample(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
  """U: (B, h, w, K) → (B, H, W, K), bilinear, half-pixel centres."""
  return jax.image.resize(maps.astype(jnp.float32), (maps.shape[0], *size, maps.shape[-1]), "bilinear")


def text_passthrough_init(key, shape, dtype=jnp.float32):
  """Q's kernel (2D, D) = [0; I]: applied to cat[f̄ ⊙ g, g] it returns g, so GA starts as the identity."""
  del key
  two_d, d = shape
  if two_d != 2 * d:
    raise ValueError(f"GA kernel shape {shape}: expected (2D, D)")
  return jnp.concatenate([jnp.zeros((d, d), dtype), jnp.eye(d, dtype=dtype)])


def _frozen(tree):
  return jax.tree_util.tree_map(jax.lax.stop_gradient, tree)


@functools.cache
def frozen_encoder(module: type[nn.Module]) -> type[nn.Module]:
  """The encoder family's module whose parameters are read through stop_gradient: no gradient reaches them, whatever
  is differentiated."""
  return nn.map_variables(module, "params", trans_in_fn=_frozen, init=True,
                          methods=("__call__", "encode_image", "encode_text", "encode_prompts"))


class ZegOT(nn.Module):
  """The whole model on top of a frozen encoder of `clip_config` (any family of `encoders.FAMILIES`: CLIP, SigLIP);
  see the module docstring for the data flow."""

  clip_config: Any  # the encoder's config (`clip.CLIPConfig`, `siglip.SiglipConfig`)
  config: ZegOTConfig = ZegOTConfig()
  dtype: Any = jnp.float32  # compute dtype of CLIP, GA and the decoder; MPOT and the fusion run in float32
  attention: str = "xla"  # CLIP's attention implementation, "xla" or "cudnn" (`attention.resolve`)
  text_attention: str | None = None  # the text tower's, when not `attention` (`from_config.build_model`)

  def setup(self):
    c, clip_config = self.config, self.clip_config
    d = clip_config.projection_dim
    if c.dfa_layers[-1] > clip_config.vision.num_hidden_layers:
      raise ValueError(f"ZegOTConfig.dfa_layers={c.dfa_layers} reach past the image tower's "
                       f"{clip_config.vision.num_hidden_layers} layers")
    module = frozen_encoder(encoders.family_of(clip_config).module)
    self.clip = module(clip_config, dtype=self.dtype, attention=self.attention, text_attention=self.text_attention)
    if c.prompts == "learnable":
      self.context = self.param("context", nn.initializers.normal(c.context_init_std),
                                (c.num_prompts, c.context_length, clip_config.text.hidden_size), jnp.float32)
    if c.global_alignment:
      kernel_init = text_passthrough_init if c.ga_init == "identity" else nn.initializers.lecun_normal()
      self.global_alignment = nn.Dense(d, dtype=self.dtype, kernel_init=kernel_init)  # Q of GA: 2D → D
    if c.matching == "self_attention":  # Table 4b's learnable alternative to MPOT
      self.match_query = nn.Dense(d, dtype=self.dtype)
      self.match_key = nn.Dense(d, dtype=self.dtype)
    self.decoder = ClassAgnosticDecoder(c.decoder_features, c.aspp_rates, dtype=self.dtype)
    if c.score_scale_learnable:  # log τ, as CLIP learns its logit scale
      self.log_score_scale = self.param("log_score_scale", nn.initializers.constant(np.log(c.score_scale)), (),
                                        jnp.float32)

  def score_scale(self) -> jax.Array:
    """τ: the fixed scale, or the learned one (capped at 100)."""
    if not self.config.score_scale_learnable:
      return jnp.float32(self.config.score_scale)
    return jnp.exp(jnp.minimum(self.log_score_scale, np.log(100.0)))

  def __call__(self, images: jax.Array, class_tokens: jax.Array) -> tuple[ZegOTOutput, dict[str, Any]]:
    """images (B, H, W, 3) uint8 or float in [0, 1]; class_tokens from `class_tokens()`."""
    return self.segment(images, self.encode_classes(class_tokens))

  def encode_classes(self, class_tokens: jax.Array) -> jax.Array:
    """g: (K, N, D) L2-normalized text embeddings of every class under every prompt. Independent of the image:
    compute it once per step, and once per evaluation."""
    if self.config.prompts == "learnable":  # class_tokens (K, T): [SOS] X×C <name> . [EOS]
      g = self.clip.encode_prompts(class_tokens, self.context).text_embeds
    else:  # class_tokens (K, N, T): every template filled with every class name
      g = self.clip.encode_text(class_tokens).text_embeds
    return l2_normalize(g)

  def segment(self, images: jax.Array, text: jax.Array) -> tuple[ZegOTOutput, dict[str, Any]]:
    """Segments images against precomputed text embeddings `text` (K, N, D) from `encode_classes`."""
    return self.decode(self.encode_images(images), text)

  def encode_images(self, images: jax.Array) -> ImageFeatures:
    """The frozen image tower's part: f_i of every DFA layer and f̄, L2-normalized. It depends on no trainable
    parameter, so a training step computes it once and shares it between the teacher and the student."""
    c = self.config
    pixels = transformer.normalize_image(images, self.clip_config.image_mean, self.clip_config.image_std)
    vision = self.clip.encode_image(pixels, feature_layers=c.dfa_layers,
                                    value_embeddings=c.dense_features == "maskclip")
    dense = [vision.dense_features[i] for i in c.dfa_layers]
    if c.dense_features == "maskclip":
      dense[-1] = vision.value_features
    f = l2_normalize(jnp.stack(dense)).astype(jnp.float32)  # (d, B, h, w, D)
    f_bar = l2_normalize(vision.image_embeds)  # (B, D) global image embedding f̄_L
    return ImageFeatures(f, f_bar, images.shape[1:3])

  def decode(self, features: ImageFeatures, text: jax.Array, keep: Sequence[int] | None = None
             ) -> tuple[ZegOTOutput, dict[str, Any]]:
    """Everything after the frozen towers: GA and DFA (`align`), matching (`match`), fusion, decoder and ensemble
    (`head`). `keep`: the classes whose logits are wanted (all when None); see `head`."""
    scores, g_ga = self.align(features, text)
    refined, plans, iterations = self.match(scores, features.f, g_ga)  # S*_i, eq. 7
    out, fused = self.head(scores, refined, features.image_size, keep)
    aux = dict(score_maps=scores, refined_maps=refined, fused_map=fused, transport_plans=plans,
               sinkhorn_iterations=iterations, text_embeddings=text, aligned_text=g_ga)
    return out, aux

  def align(self, features: ImageFeatures, text: jax.Array) -> tuple[jax.Array, jax.Array]:
    """GA (supplementary, "Global Text Alignment"; eq. 4 is the transport plan) and DFA's score maps (eq. 5):
    (S_i (d, B, h, w, K, N), g_GA (B, K, N, D)), float32."""
    c = self.config
    f, f_bar = features.f, features.f_bar
    g = jnp.broadcast_to(text[None], (f_bar.shape[0], *text.shape))  # (B, K, N, D)
    if c.global_alignment:
      g = self.global_alignment(jnp.concatenate([f_bar[:, None, None, :] * g, g], axis=-1))  # GA
    g_ga = l2_normalize(g).astype(jnp.float32)  # (B, K, N, D)
    return jnp.einsum("lbhwd,bknd->lbhwkn", f, g_ga), g_ga  # S_i, eq. 5

  def head(self, scores: jax.Array, refined: jax.Array, image_size: tuple[int, int],
           keep: Sequence[int] | None = None) -> tuple[ZegOTOutput, jax.Array]:
    """Fusion (eq. 8), the score logits (eq. 9), the decoder (eq. 10) and their ensemble (eq. 11); also returns the
    fused map S* (B, h, w, K, N). With `keep` (static class indices) the logits hold only those classes, in that
    order, and only they are upsampled to full resolution; their values are the same as without `keep` (the
    decoder's normalization still sees every class)."""
    c = self.config
    tau = self.score_scale()
    if c.score_scale_at == "fusion":
      refined = tau * refined
    fused = fuse_score_maps(refined, c.fusion_norm)  # S*, eq. 8: (B, h, w, K, N)
    kept = fused.sum(-1) if keep is None else fused.sum(-1)[..., jnp.asarray(keep)]
    if c.score_scale_at == "logits":  # τ·U(x) = U(τ·x): scaled on the patch grid, before upsampling
      kept = tau * kept
    score_logits = upsample(kept, image_size)  # Y = U(M(S*)), eq. 9
    stack = jnp.concatenate([scores.sum(-1), fused.sum(-1)[None]], axis=0)  # (d + 1, B, h, w, K)
    decoder_logits = self.decoder(jnp.transpose(stack, (1, 4, 2, 3, 0)), image_size, keep)  # Ỹ, eq. 10
    lam = c.ensemble_lambda
    logits = lam * score_logits + (1 - lam) * decoder_logits  # Y*, eq. 11
    return ZegOTOutput(logits, score_logits, decoder_logits), fused

  def match(self, scores: jax.Array, f: jax.Array, g_ga: jax.Array):
    """Refines every layer's score maps by the configured matching: (refined, plans or None, iterations or None)."""
    c = self.config
    if c.matching == "mpot":
      refined, transport = mpot_refine(scores, c.sinkhorn)
      return refined, transport.plan, transport.iterations
    if c.matching == "bipartite":
      refined, transport = bipartite_refine(scores, c.sinkhorn)
      return refined, transport.plan, transport.iterations
    if c.matching == "self_attention":  # pixels attend over the N prompts of each class with learnable Wq, Wk
      q = self.match_query(f.astype(self.dtype)).astype(jnp.float32)  # (d, B, h, w, D)
      k = self.match_key(g_ga.astype(self.dtype)).astype(jnp.float32)  # (B, K, N, D)
      attention = jax.nn.softmax(jnp.einsum("lbhwd,bknd->lbhwkn", q, k) / np.sqrt(q.shape[-1]), axis=-1)
      return scores.shape[-1] * attention * scores, attention, None  # N·A: same scale as (M·N)·T
    return scores, None, None  # matching = "none"


# ----------------------------------------------------------------------------------------------- helpers


def class_tokens(tokenizer, class_names: Sequence[str], config: ZegOTConfig, encoder: Any = None) -> np.ndarray:
  """Token ids for `ZegOT.encode_classes` under the text conventions of the `encoder` config (its context_start,
  pad_to_max_length and max_position_embeddings; None: CLIP's, 77 tokens): (K, T) CoOp ids for learnable prompts,
  (K, N, T) filled templates for hand-crafted prompts. T is the shortest length that holds every prompt, or the
  text tower's maximum for a family trained on padded texts (SigLIP)."""
  names = prompts_lib.check_class_names(class_names)
  max_length = 77 if encoder is None else encoder.text.max_position_embeddings
  length = max_length if encoder is not None and encoder.pad_to_max_length else None
  if config.prompts == "learnable":
    tokens = prompts_lib.prompt_token_ids(tokenizer, names, config.context_length, length=length,
                                          max_length=max_length)
    expected = 1 if encoder is None else encoder.context_start
    if tokens.context_start != expected:
      raise ValueError(f"this tokenizer puts the prompt context at position {tokens.context_start}, the "
                       f"{getattr(encoder, 'family', 'clip')} text tower expects it at {expected}: the tokenizer "
                       f"does not belong to the checkpoint")
    return tokens.input_ids
  texts = [t.format(n) for n in names for t in config.templates]
  ids = prompts_lib.tokenize(tokenizer, texts, length=length, max_length=max_length)
  return ids.reshape(len(names), len(config.templates), -1)


def merge_params(trainable: Mapping[str, Any], clip_params: Any) -> dict[str, Any]:
  return {**trainable, "clip": clip_params}


def _initialize_trainable(model: ZegOT, rng: jax.Array) -> dict[str, Any]:
  """Every trainable parameter, initialized through `decode` on placeholder features and text of one image, one
  class and N prompts: `decode` touches every trainable module and never the CLIP, whose parameters are loaded,
  not initialized. Flax derives each parameter's key from its module path, so the values are those a full
  `model.init` would give."""
  c, clip = model.config, model.clip_config
  size = (2 * clip.vision.patch_size, 2 * clip.vision.patch_size)
  features = ImageFeatures(f=jnp.zeros((len(c.dfa_layers), 1, 2, 2, clip.projection_dim)),
                           f_bar=jnp.zeros((1, clip.projection_dim)), image_size=size)
  text = jnp.zeros((1, c.n_prompts, clip.projection_dim))
  return model.init(rng, features, text, method=ZegOT.decode)["params"]


def init_trainable(model: ZegOT, rng: jax.Array) -> dict[str, Any]:
  """The trainable parameters, initialized (the CLIP part is never materialized)."""
  return jax.jit(functools.partial(_initialize_trainable, model))(rng)


def abstract_trainable(model: ZegOT) -> dict[str, Any]:
  """The trainable parameter tree as shapes and dtypes (jax.ShapeDtypeStruct leaves): what a checkpoint holds."""
  return jax.eval_shape(functools.partial(_initialize_trainable, model), jax.random.key(0))
