"""What the cost account (`tools/benchmark.py`) measures: a random ZegOT at a config's settings, its inputs, and
the pieces of its train step. No flags here, so tests import it beside any tool.

The CLIP is random, with ViT-B/16's shapes at the config's image size unless a `clip_config` is given (tests give
a tiny one). The K classes are the dataset's, tokenized with the byte-level tokenizer. Nothing is downloaded or
read from disk.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zegot_jax import from_config, trainer
from zegot_jax.data import augment, label_map
from zegot_jax.data import classes as classes_lib
from zegot_jax.models import prompts, zegot
from zegot_jax.models.clip import CLIP, CLIPConfig, vit_b16_config

OPTIMIZER_SCOPE = "optimizer"  # the name scope of the optimizer's ops in the compiled step (`named_updates`)


def named_updates(optimizer: optax.GradientTransformation, name: str) -> optax.GradientTransformation:
  """`optimizer` with its update traced under the name scope `name`: the same computation, whose ops a profile
  of the compiled step can tell apart from the model's."""

  def update(updates, state, params=None, **extra_args):
    with jax.named_scope(name):
      return optimizer.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(optimizer.init, update)


@dataclasses.dataclass
class Bench:
  """A random ZegOT at the config's settings, its inputs, and the pieces of its train step."""

  config: Any
  batch: int
  dtype: Any
  clip_config: CLIPConfig | None = None  # default: ViT-B/16 at the config's image size

  def __post_init__(self):
    c = self.config
    self.spec = classes_lib.SPECS[c.dataset.split("/")[0]]
    self.class_indices, _ = label_map.training_classes(self.spec, c.setting)
    self.unseen = [i for i, k in enumerate(self.class_indices) if k in self.spec.unseen]
    self.model_config = from_config.model_config(c)
    size = c.clip.image_size
    clip_config = self.clip_config or vit_b16_config(size, eos_token_id=prompts.byte_level_tokenizer().eos_token_id)
    self.model = zegot.ZegOT(clip_config, self.model_config, dtype=self.dtype,
                             attention=from_config.attention_for(c, clip_config, self.dtype))
    names = [self.spec.classes[i] for i in self.class_indices]
    self.tokens = jnp.asarray(zegot.class_tokens(prompts.byte_level_tokenizer(), names, self.model_config))
    rng = jax.random.key(0)
    self.clip_params = jax.jit(CLIP(clip_config, dtype=self.dtype).init)(
        rng, jnp.zeros((1, size, size, 3)), jnp.zeros((1, 4), jnp.int32))["params"]
    self.params = zegot.init_trainable(self.model, rng)
    optimizer, self.lr_schedule = trainer.make_optimizer(c)
    self.optimizer = named_updates(optimizer, OPTIMIZER_SCOPE)
    self.schedule = trainer.make_schedule(c)
    self.images, self.labels = self.inputs(self.batch)
    self.distortion = self.photometric(self.batch)

  def inputs(self, batch: int) -> tuple[jax.Array, jax.Array]:
    """Random uint8 images and labels, (B, S, S, 3) and (B, S, S): a tenth of the pixels ignored, and in the
    transductive setting a tenth unlabelled (the unseen classes' pixels, which phase 2 pseudo-labels)."""
    size = self.config.clip.image_size
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(self.class_indices), (batch, size, size)).astype(np.uint8)
    draw = rng.random(labels.shape)
    labels[draw < 0.1] = classes_lib.IGNORE_INDEX
    if self.unseen:
      labels[(draw >= 0.1) & (draw < 0.2)] = classes_lib.UNLABELLED
    return jnp.asarray(rng.integers(0, 256, (batch, size, size, 3), np.uint8)), jnp.asarray(labels)

  def photometric(self, batch: int) -> jax.Array:
    """(B, 11) photometric distortions as the pipeline draws them, for crops without padding."""
    rng = np.random.default_rng(1)
    size = self.config.clip.image_size
    return jnp.asarray(np.stack([np.concatenate([augment.draw_photometric(rng), [size, size]]) for _ in range(batch)]),
                       jnp.float32)

  def apply(self, params, clip_params, method: str, *args):
    return self.model.apply({"params": zegot.merge_params(params, clip_params)}, *args, method=method)

  def features(self, f, f_bar) -> zegot.ImageFeatures:
    size = self.config.clip.image_size
    return zegot.ImageFeatures(f, f_bar, (size, size))  # the image size stays static

  @functools.cached_property
  def _initial_state(self) -> trainer.TrainState:
    return jax.jit(functools.partial(trainer.initial_state, self.model, self.optimizer))(
        jax.random.key(0), self.clip_params, self.tokens)

  def state(self, phase: int) -> trainer.TrainState:
    """A fresh train state at the first step of `phase` (a new copy each call: a step may donate it)."""
    step = 0 if phase == 1 else self.schedule.phase1_steps
    state = jax.tree_util.tree_map(jnp.copy, self._initial_state)
    return state.replace(step=jnp.asarray(step, jnp.int32))

  def phases(self) -> tuple[int, ...]:
    """The train step's phases: 1, and 2 (with its teacher) when there are unseen classes to pseudo-label."""
    return (1, 2) if self.unseen else (1,)

  def train_step(self) -> Callable:
    """(state, clip_params, tokens, images, labels, photometric) → (state, metrics): the trainer's own step."""
    return trainer.make_train_step(self.model, self.optimizer, self.lr_schedule, self.schedule, self.unseen)

  def train_args(self, phase: int) -> tuple:
    """The train step's arguments at the first step of `phase`."""
    return self.state(phase), self.clip_params, self.tokens, self.images, self.labels, self.distortion

  def eval_forward(self) -> Callable:
    """(params, clip_params, tokens, images) → logits: the forward pass of an evaluation."""
    return lambda p, c, t, im: self.apply(p, c, "__call__", im, t)[0].logits

  def eval_args(self) -> tuple:
    return self.params, self.clip_params, self.tokens, self.images
