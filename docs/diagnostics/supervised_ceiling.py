r"""Diagnostic (not part of the package, not tested): how fast can the mini-CLIP's image tower learn the demo's
scenes if it is given every patch's label? The strongest supervision there is; caption pretraining gets less.

  .venv/bin/python docs/diagnostics/supervised_ceiling.py --batch_size 64 --lr 2e-3 --images 76800
  .venv/bin/python docs/diagnostics/supervised_ceiling.py --batch_size 16 --lr 1e-3 --images 76800
  .venv/bin/python docs/diagnostics/supervised_ceiling.py --patch_size 4 --batch_size 16 --lr 1e-3 --images 12800
  .venv/bin/python docs/diagnostics/supervised_ceiling.py --batch_size 16 --lr 1e-3 --images 400000  # ^C at 147,000
  .venv/bin/python docs/diagnostics/supervised_ceiling.py --batch_size 16 --lr 1e-3 --images 76800 --scenes 40000
  .venv/bin/python docs/diagnostics/supervised_ceiling.py --batch_size 16 --lr 1e-3 --images 76800 --scenes 40000 \
      --layers 8 --width 96

The image tower of `mini_clip.mini_config` (optionally with another patch size), initialized from scratch as
`pretrain_mini_clip` does, plus a linear head on its last layer's dense features (what ZegOT reads), trained with
per-patch cross-entropy over 12 categories and background on --scenes scenes rendered like the demo's (patch label:
the category covering at least half of it, else background). Prints, every 6,400 images, the accuracy on the
object patches of `pretrain_mini_clip.probe_scenes` (the scenes `dense_zero_shot_accuracy` reports on).
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from zegot_jax.data import shapes
from zegot_jax.models import mini_clip
from zegot_jax.models.clip import CLIP, normalize_image
from zegot_jax.tools import pretrain_mini_clip as pm

PATCH_SIZE = flags.DEFINE_integer("patch_size", mini_clip.PATCH_SIZE, "ViT patch size")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "scenes per step")
LR = flags.DEFINE_float("lr", 2e-3, "peak AdamW learning rate (warmup 50 steps, cosine decay)")
IMAGES = flags.DEFINE_integer("images", 76800, "training images to show")
SCENES = flags.DEFINE_integer("scenes", 6000, "distinct training scenes rendered")
LAYERS = flags.DEFINE_integer("layers", 4, "image tower depth (the dense features are read at its last layer)")
WIDTH = flags.DEFINE_integer("width", 128, "image tower width (MLP 4×)")
BACKGROUND = len(shapes.CATEGORIES)


def patch_labels(label: np.ndarray, patch_size: int) -> np.ndarray:
  coverage = pm.patch_coverage(label, patch_size)
  return np.where(coverage.max(-1) >= 0.5, coverage.argmax(-1), BACKGROUND)


def main(argv):
  del argv
  patch, batch = PATCH_SIZE.value, BATCH_SIZE.value
  tokenizer = mini_clip.caption_tokenizer()
  config = mini_clip.mini_config(len(tokenizer), tokenizer.eos_token_id)
  config = dataclasses.replace(config, vision=dataclasses.replace(
      config.vision, patch_size=patch, num_hidden_layers=LAYERS.value, hidden_size=WIDTH.value,
      intermediate_size=4 * WIDTH.value))
  layer = LAYERS.value
  model = CLIP(config)
  scenes = [shapes.render_scene(np.random.default_rng([7, pm.PRETRAIN_STREAM, i]), mini_clip.IMAGE_SIZE)
            for i in range(SCENES.value)]
  images = np.stack([s[0] for s in scenes])
  labels = np.stack([patch_labels(s[1], patch) for s in scenes])
  probe_images, probe_labels = pm.probe_scenes(0)
  probe_labels = np.stack([patch_labels(label, patch) for label in probe_labels])

  params = model.init(jax.random.key(0), jnp.zeros((1, mini_clip.IMAGE_SIZE, mini_clip.IMAGE_SIZE, 3)),
                      jnp.zeros((1, 4), jnp.int32))["params"]
  params["vision_model"]["embeddings"]["position_embedding"]["embedding"] = pm.sincos_position_embedding(
      config.vision.grid, config.vision.hidden_size)
  params = dict(clip=params, head=jnp.zeros((config.projection_dim, BACKGROUND + 1)))
  steps = IMAGES.value // batch
  optimizer = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, LR.value, 50, steps), weight_decay=0.05)
  opt_state = optimizer.init(params)

  def logits(params, x):  # (B, h, w, 13)
    dense = model.apply({"params": params["clip"]}, normalize_image(x), feature_layers=(layer,),
                        method=CLIP.encode_image).dense_features[layer]
    return dense @ params["head"]

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
    if (step * batch) % 6400 == 0:
      accuracy = float(object_patch_accuracy(params, probe_images, probe_labels))
      print(f"{step * batch:7d} images  {time.time() - start:6.0f} s  loss {float(loss):.3f}  "
            f"object-patch accuracy {100 * accuracy:.1f}%", flush=True)


if __name__ == "__main__":
  app.run(main)
