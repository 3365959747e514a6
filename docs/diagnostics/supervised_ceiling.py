r"""Diagnostic (not part of the package, not tested): how fast can an image tower learn the demo's scenes if it is
given every patch's label? The strongest supervision there is; caption pretraining gets less.

  .venv/bin/python docs/diagnostics/supervised_ceiling.py --batch_size 64 --lr 2e-3 --images 76800
  .venv/bin/python docs/diagnostics/supervised_ceiling.py --batch_size 16 --lr 1e-3 --images 76800
  .venv/bin/python docs/diagnostics/supervised_ceiling.py --patch_size 4 --batch_size 16 --lr 1e-3 --images 12800
  .venv/bin/python docs/diagnostics/supervised_ceiling.py --batch_size 16 --lr 1e-3 --images 400000  # ^C at 147,000
  .venv/bin/python docs/diagnostics/supervised_ceiling.py --batch_size 16 --lr 1e-3 --images 76800 --scenes 40000
  .venv/bin/python docs/diagnostics/supervised_ceiling.py --batch_size 16 --lr 1e-3 --images 76800 --scenes 40000 \
      --layers 8 --width 96
  # 2026-11-28, second session: equal budgets of 38,400 images, batch 32
  .venv/bin/python docs/diagnostics/supervised_ceiling.py --batch_size 32 --lr 1e-3 --images 38400
  .venv/bin/python docs/diagnostics/supervised_ceiling.py --batch_size 32 --lr 1e-3 --images 38400 --layers 12 --width 64
  .venv/bin/python docs/diagnostics/supervised_ceiling.py --batch_size 32 --lr 1e-3 --images 38400 --grid_sincos 2
  .venv/bin/python docs/diagnostics/supervised_ceiling.py --batch_size 32 --lr 1e-3 --images 38400 --grid_sincos 2 \
      --mimetic 0.5
  .venv/bin/python docs/diagnostics/supervised_ceiling.py --batch_size 32 --lr 2e-3 --images 64000 --tower cnn
  # at scale, for a machine with many cores and a GPU (not run yet):
  python3 docs/diagnostics/supervised_ceiling.py --batch_size 512 --lr 2e-3 --scenes 400000 --images 4000000 \
      --workers 16 --eval_every 256000

--tower vit (default): the image tower of `mini_clip.mini_config` (optionally with another patch size, depth or
width), initialized from scratch as `pretrain_mini_clip` does, plus a linear head on its last layer's dense features
(what ZegOT reads). --tower cnn: a small convolutional network of about the same size (eight 3×3 conv layers, three
of them stride 2 down to the same 8×8 grid, then three dilated residual ones), which the CLIP format cannot hold; it
tells whether the task is learnable at all at 64×64 from this many images. Both are trained with per-patch
cross-entropy over 12 categories and background on --scenes scenes rendered like the demo's (patch label: the
category covering at least half of it, else background). Prints, every 6,400 images, the accuracy on the object
patches of `pretrain_mini_clip.probe_scenes` (the scenes `dense_zero_shot_accuracy` reports on).
"""

import dataclasses
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from zegot_jax.data import shapes
from zegot_jax.models import mini_clip
from zegot_jax.models.clip import CLIP, normalize_image
from zegot_jax.tools import pretrain_mini_clip as pm

TOWER = flags.DEFINE_enum("tower", "vit", ["vit", "cnn"], "the mini-CLIP's ViT, or a small CNN for comparison")
PATCH_SIZE = flags.DEFINE_integer("patch_size", mini_clip.PATCH_SIZE, "ViT patch size")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "scenes per step")
LR = flags.DEFINE_float("lr", 2e-3, "peak AdamW learning rate (warmup 50 steps, cosine decay)")
IMAGES = flags.DEFINE_integer("images", 76800, "training images to show")
SCENES = flags.DEFINE_integer("scenes", 6000, "distinct training scenes rendered")
LAYERS = flags.DEFINE_integer("layers", 4, "ViT depth (the dense features are read at its last layer)")
WIDTH = flags.DEFINE_integer("width", 128, "ViT width (MLP 4×)")
GRID_SINCOS = flags.DEFINE_float("grid_sincos", 0.0, "if > 0: the position embedding is a 2-D sine-cosine table "
                                 "with frequencies from π/2 to π/16 (suited to an 8-patch grid), times this")
MIMETIC = flags.DEFINE_float("mimetic", 0.0, "if > 0: every attention layer starts with W_k = W_q + this × noise, "
                             "so that tokens first attend to similar tokens and positions (mimetic init)")
WORKERS = flags.DEFINE_integer("workers", 1, "processes rendering the scenes (the same scenes for any number)")
EVAL_EVERY = flags.DEFINE_integer("eval_every", 6400, "images between accuracy reports")
BACKGROUND = len(shapes.CATEGORIES)


class SmallCNN(nn.Module):
  """(B, 64, 64, 3) → (B, 8, 8, 13) patch logits."""

  @nn.compact
  def __call__(self, x):
    for features, stride in [(32, 1), (32, 2), (64, 1), (64, 2), (128, 1), (128, 2), (128, 1), (128, 1)]:
      x = nn.relu(nn.GroupNorm(8)(nn.Conv(features, (3, 3), strides=stride)(x)))
    for dilation in (2, 4, 2):
      x = x + nn.relu(nn.GroupNorm(8)(nn.Conv(128, (3, 3), kernel_dilation=dilation)(x)))
    return nn.Dense(BACKGROUND + 1)(x)


def patch_labels(label: np.ndarray, patch_size: int) -> np.ndarray:
  coverage = pm.patch_coverage(label, patch_size)
  return np.where(coverage.max(-1) >= 0.5, coverage.argmax(-1), BACKGROUND)


def render_range(start: int, stop: int, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Training scenes [start, stop) and their patch labels, each scene from its own generator."""
  scenes = [shapes.render_scene(np.random.default_rng([7, pm.PRETRAIN_STREAM, i]), mini_clip.IMAGE_SIZE)
            for i in range(start, stop)]
  return np.stack([s[0] for s in scenes]), np.stack([patch_labels(s[1], patch_size) for s in scenes])


def render_training_scenes(count: int, patch_size: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
  parts = pm.map_ranges(functools.partial(render_range, patch_size=patch_size), count, workers, desc="scenes")
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def vit(patch: int):
  """(init params, logits function) of the mini-CLIP's image tower with a linear head."""
  tokenizer = mini_clip.caption_tokenizer()
  config = mini_clip.mini_config(len(tokenizer), tokenizer.eos_token_id)
  config = dataclasses.replace(config, vision=dataclasses.replace(
      config.vision, patch_size=patch, num_hidden_layers=LAYERS.value, hidden_size=WIDTH.value,
      intermediate_size=4 * WIDTH.value))
  layer, width = LAYERS.value, WIDTH.value
  model = CLIP(config)
  params = model.init(jax.random.key(0), jnp.zeros((1, mini_clip.IMAGE_SIZE, mini_clip.IMAGE_SIZE, 3)),
                      jnp.zeros((1, 4), jnp.int32))["params"]
  embeddings = params["vision_model"]["embeddings"]["position_embedding"]
  embeddings["embedding"] = pm.sincos_position_embedding(config.vision.grid, width)
  if GRID_SINCOS.value > 0:
    frequencies = np.pi / 2 ** np.linspace(1, 4, width // 4)  # from π/2 to π/16
    embeddings["embedding"] = GRID_SINCOS.value * pm.sincos_position_embedding(config.vision.grid, width, frequencies)
  if MIMETIC.value > 0:
    rng = np.random.default_rng(1)
    for block in params["vision_model"]["encoder"].values():
      q = rng.normal(0, width ** -0.5, (width, width))
      block["self_attn"]["q_proj"]["kernel"] = jnp.asarray(q, jnp.float32)
      block["self_attn"]["k_proj"]["kernel"] = jnp.asarray(
          q + MIMETIC.value * rng.normal(0, width ** -0.5, (width, width)), jnp.float32)

  def logits(params, x):
    dense = model.apply({"params": params["clip"]}, normalize_image(x), feature_layers=(layer,),
                        method=CLIP.encode_image).dense_features[layer]
    return dense @ params["head"]

  return dict(clip=params, head=jnp.zeros((config.projection_dim, BACKGROUND + 1))), logits


def cnn():
  net = SmallCNN()
  params = net.init(jax.random.key(0), jnp.zeros((1, mini_clip.IMAGE_SIZE, mini_clip.IMAGE_SIZE, 3)))
  return params, lambda params, x: net.apply(params, normalize_image(x))


def main(argv):
  del argv
  patch = PATCH_SIZE.value if TOWER.value == "vit" else mini_clip.PATCH_SIZE
  batch = BATCH_SIZE.value
  images, labels = render_training_scenes(SCENES.value, patch, WORKERS.value)
  probe_images, probe_labels = pm.probe_scenes(0)
  probe_labels = np.stack([patch_labels(label, patch) for label in probe_labels])

  params, logits = vit(patch) if TOWER.value == "vit" else cnn()
  image_side = [x.size for path, x in jax.tree_util.tree_leaves_with_path(params)
                if "text" not in jax.tree_util.keystr(path) and "logit_scale" not in jax.tree_util.keystr(path)]
  print(f"{TOWER.value}: {sum(image_side) / 1e6:.2f} M parameters (image side and head)", flush=True)
  steps = IMAGES.value // batch
  optimizer = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, LR.value, 50, steps), weight_decay=0.05)
  opt_state = optimizer.init(params)

  @jax.jit
  def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(
        lambda p: optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean())(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def object_patch_accuracy(params, x, y):
    on_object = y < BACKGROUND
    return ((logits(params, x).argmax(-1) == y) & on_object).sum() / on_object.sum()

  rng = np.random.default_rng(0)
  start = time.time()
  for step in range(1, steps + 1):
    index = rng.choice(len(images), batch, replace=False)
    params, opt_state, loss = train_step(params, opt_state, images[index], labels[index])
    if step * batch // EVAL_EVERY.value > (step - 1) * batch // EVAL_EVERY.value:
      accuracy = float(object_patch_accuracy(params, probe_images, probe_labels))
      print(f"{step * batch:7d} images  {time.time() - start:6.0f} s  loss {float(loss):.3f}  "
            f"object-patch accuracy {100 * accuracy:.1f}%", flush=True)


if __name__ == "__main__":
  app.run(main)
