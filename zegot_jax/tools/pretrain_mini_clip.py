r"""Pretrains the demo's mini-CLIP contrastively on captioned scenes of the shapes world.

  python -m zegot_jax.tools.pretrain_mini_clip --out DIR [--seed 0]

The defaults reproduce the checkpoint shipped in `zegot_jax/assets/mini_clip_shapes/` (same seed, same numbers
to float tolerance on a CPU). What it does:

1. renders a pool of single large objects and of scenes of 1-3 objects at 64×64, each from its own generator
   seeded by (seed, PRETRAIN_STREAM, i): never the images of the `shapes_zs3` dataset (streams 0 and 1);
2. captions each one ("a red star and a ring on a striped background"): objects in random order, colours and
   the background named or left out at random, so that short prompts like "a star." are in distribution;
3. trains both towers from scratch (the image tower's position embedding initialized to 2-D sine-cosine),
   contrastively (`pretraining_loss`): CLIP's InfoNCE between images and captions, plus sigmoid image-text losses
   against the single-category prompts "a {name}." named by the caption, on the image embedding and on the best
   patch of the dense features (FILIP-style); AdamW, warmup + cosine.
   Batches follow a curriculum: single objects first, then more and more scenes (`scene_fraction`);
4. writes the checkpoint in transformers' format with the caption tokenizer, plus `pretraining.json` (the
   settings, the loss curve and the zero-shot accuracy on single objects).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import multiprocessing
import os
import pathlib
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from tqdm import tqdm

from zegot_jax.data import shapes
from zegot_jax.models import clip_checkpoint, mini_clip, prompts
from zegot_jax.models.clip import CLIP, normalize_image

PRETRAIN_STREAM = 1000  # generator stream of the pretraining images (shapes_zs3 uses 0 and 1)
PROBE_STREAM = 1001  # generator stream of the zero-shot probe images
# Curriculum: batches hold only single large objects (render_object) for the first third of the steps, then the
# share of multi-object scenes rises linearly to SCENE_FRACTION at two thirds. A from-scratch ViT fed scenes of
# small objects from the start learns colours and backgrounds but no shapes within a CPU budget.
SCENE_FRACTION = 0.5
NAME_COLOURS, NAME_BACKGROUND = 0.5, 0.5  # how often the caption names them
ZERO_SHOT_TEMPLATE = "a {}."
PRETRAINING_ONLY = ("concept_scale", "concept_bias", "dense_scale", "dense_bias")  # sigmoid losses' own t, b
DENSE_LAYERS = (3, 4)  # layers whose patch features are aligned with text (the demo's DFA layers)
HISTORY_EVERY = 100  # steps between loss records in pretraining.json



def scene_fraction(step: int, steps: int) -> float:
  """The share of multi-object scenes in the batch at `step` (the curriculum above)."""
  return SCENE_FRACTION * float(np.clip(3 * step / steps - 1, 0.0, 1.0))


def render_example(rng: np.random.Generator, scene: bool, size: int = mini_clip.IMAGE_SIZE
                   ) -> tuple[np.ndarray, str, np.ndarray]:
  """One (uint8 image (size, size, 3), caption, (12,) bool: which categories it shows): a scene of 1-3
  objects, or one large object."""
  if not scene:
    image, _, obj, background = shapes.render_object(rng, int(rng.integers(len(shapes.CATEGORIES))), size)
    objects = [obj]
  else:
    image, _, objects, background = shapes.render_scene(rng, size, num_objects=(1, 3))
  with_colours = rng.uniform() < NAME_COLOURS
  with_background = rng.uniform() < NAME_BACKGROUND
  text = shapes.caption(objects, background if with_background else None, rng, colours=with_colours)
  present = np.zeros(len(shapes.CATEGORIES), bool)
  present[[o.category for o in objects]] = True
  return image, text, present


def _render_range(seed: int, start: int, stop: int) -> tuple[np.ndarray, list[str], np.ndarray]:
  """Pool entries [start, stop): each from its own generator, so any split into ranges gives the same pool."""
  images, texts, present = [], [], []
  for i in range(start, stop):
    image, text, categories = render_example(np.random.default_rng([seed, PRETRAIN_STREAM, i]), scene=i % 2 == 1)
    images.append(image)
    texts.append(text)
    present.append(categories)
  return np.stack(images), texts, np.stack(present)


def map_ranges(render, count: int, workers: int = 1, chunk: int = 1000, desc: str = "rendering") -> list:
  """[render(start, stop) for consecutive ranges covering [0, count)], in order, in this process or in `workers`
  spawned ones (not forked: the parent may already run JAX's threads, which a forked child would inherit
  half-dead). `render` must be picklable and its result must depend only on the range."""
  ranges = [(start, min(start + chunk, count)) for start in range(0, count, chunk)]
  progress = tqdm(total=count, desc=desc, unit="img", mininterval=2.0)
  results = []
  with contextlib.ExitStack() as stack:
    if workers > 1:
      pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
          workers, mp_context=multiprocessing.get_context("spawn")))
      parts = pool.map(render, *zip(*ranges))
    else:
      parts = (render(a, b) for a, b in ranges)
    for (a, b), part in zip(ranges, parts):
      results.append(part)
      progress.update(b - a)
  progress.close()
  return results


def render_pool(seed: int, count: int, tokenizer, context_length: int, workers: int = 1
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
  """(images (count, 64, 64, 3) uint8, token ids (count, context_length) int32, presence (count, 12) bool,
  captions). Even indices are single objects, odd ones scenes. `workers` > 1 renders in that many processes
  (for large pools on many-core machines); the pool is the same for any number of workers."""
  parts = map_ranges(functools.partial(_render_range, seed), count, workers)
  texts = [t for part in parts for t in part[1]]
  ids = prompts.tokenize(tokenizer, texts, length=context_length, max_length=context_length)
  return np.concatenate([p[0] for p in parts]), ids, np.concatenate([p[2] for p in parts]), texts


def sincos_position_embedding(grid: tuple[int, int], width: int, frequencies: np.ndarray | None = None
                              ) -> jax.Array:
  """(1 + h·w, width) 2-D sine-cosine position embedding (MAE's initialization; the CLS row is zero): half
  the channels encode the row, half the column, at geometric frequencies. A from-scratch ViT with random
  position embeddings must first learn where its patches are; this one knows, and learns shapes much sooner.
  The embedding stays a trained parameter. `frequencies` (width/4,): angular frequencies per position step; by
  default MAE's, 1 / 10000^(i / (width/4))."""
  h, w = grid
  quarter = width // 4
  if frequencies is None:
    frequencies = 1.0 / 10000 ** (np.arange(quarter) / quarter)  # (width/4,)
  rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")

  def encode(positions):  # (h*w,) → (h*w, width/2)
    angles = positions.reshape(-1)[:, None] * frequencies[None]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  table = np.concatenate([encode(rows), encode(cols)], axis=1)  # (h*w, width)
  return jnp.asarray(np.concatenate([np.zeros((1, width)), table]), jnp.float32)


def _unit(x: jax.Array) -> jax.Array:
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def pretraining_loss(params, model: CLIP, images: jax.Array, ids: jax.Array, present: jax.Array,
                     concept_ids: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Three image-text contrastive terms, all from the captions (no pixel labels):

  * caption: CLIP's symmetric InfoNCE between images and their captions;
  * concept: a multi-positive sigmoid loss (SigLIP's form, own temperature and bias) between the image embedding
    and the single-category prompts "a {name}.", positive when the caption names that category: 12 text pairs
    per image instead of one, which brings the from-scratch towers to shape recognition in minutes on a CPU;
  * dense: the same sigmoid loss on the best-matching patch (FILIP's token-wise max similarity) of the dense
    features of DENSE_LAYERS (patch tokens → post_layernorm → projection, what ZegOT reads): a category named in
    the caption must match some patch, and no patch may match a category that is not named. CLS-only training
    leaves patch features unaligned with text, and dense zero-shot segmentation needs them aligned.

  images (B, H, W, 3) uint8, ids (B, T) caption tokens, present (B, 12) bool, concept_ids (12, T') tokens.
  """
  p = {k: v for k, v in params.items() if k not in PRETRAINING_ONLY}
  vision = model.apply({"params": p}, normalize_image(images), feature_layers=DENSE_LAYERS,
                       method=CLIP.encode_image)
  v = _unit(vision.image_embeds)  # (B, D)
  t = _unit(model.apply({"params": p}, ids, method=CLIP.encode_text).text_embeds)  # (B, D)
  concepts = _unit(model.apply({"params": p}, concept_ids, method=CLIP.encode_text).text_embeds)  # (12, D)
  scale = jnp.exp(jnp.minimum(params["logit_scale"], jnp.log(100.0)))  # CLIP clips the temperature at 100
  logits = scale * v @ t.T  # (B, B)
  labels = jnp.arange(logits.shape[0])
  caption_loss = (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                  + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()) / 2
  targets = present.astype(jnp.float32)
  concept_logits = jnp.exp(params["concept_scale"]) * v @ concepts.T + params["concept_bias"]  # (B, 12)
  concept_loss = optax.sigmoid_binary_cross_entropy(concept_logits, targets).sum(-1).mean()
  dense = _unit(jnp.stack([vision.dense_features[i] for i in DENSE_LAYERS]))  # (L, B, h, w, D)
  best = jnp.einsum("lbhwd,kd->lbhwk", dense, concepts).max(axis=(2, 3))  # (L, B, 12) best patch per category
  dense_logits = jnp.exp(params["dense_scale"]) * best + params["dense_bias"]
  dense_loss = optax.sigmoid_binary_cross_entropy(dense_logits, targets[None]).sum(-1).mean()
  metrics = dict(caption_loss=caption_loss, concept_loss=concept_loss, dense_loss=dense_loss,
                 batch_accuracy=jnp.mean(jnp.argmax(logits, axis=1) == labels))
  return caption_loss + concept_loss + dense_loss, metrics


def zero_shot_accuracy(model: CLIP, params, tokenizer, *, seed: int, per_class: int = 50,
                       size: int = mini_clip.IMAGE_SIZE) -> dict[str, float]:
  """Top-1 accuracy of classifying `render_object` images by the nearest of the prompts "a {name}.", per
  category. The images come from their own stream (PROBE_STREAM), so they are never trained on."""
  names = shapes.CATEGORIES
  images, labels = [], []
  for c in range(len(names)):
    for i in range(per_class):
      images.append(shapes.render_object(np.random.default_rng([seed, PROBE_STREAM, c, i]), c, size)[0])
      labels.append(c)
  ids = prompts.tokenize(tokenizer, [ZERO_SHOT_TEMPLATE.format(n) for n in names])

  @jax.jit
  def predict(images):
    v = model.apply({"params": params}, normalize_image(images), method=CLIP.encode_image).image_embeds
    t = model.apply({"params": params}, jnp.asarray(ids), method=CLIP.encode_text).text_embeds
    return jnp.argmax(v @ (t / jnp.linalg.norm(t, axis=-1, keepdims=True)).T, axis=-1)

  predicted = np.asarray(predict(np.stack(images)))
  labels = np.asarray(labels)
  return {n: float(np.mean(predicted[labels == c] == c)) for c, n in enumerate(names)}


def patch_coverage(label: np.ndarray, patch_size: int) -> np.ndarray:
  """(H, W) category label map (IGNORE_LABEL: background) → (H/p, W/p, 12) share of each patch per category."""
  h, w = label.shape[0] // patch_size, label.shape[1] // patch_size
  patches = label.reshape(h, patch_size, w, patch_size).transpose(0, 2, 1, 3).reshape(h, w, -1)
  return (patches[..., None] == np.arange(len(shapes.CATEGORIES))).mean(axis=2, dtype=np.float32)


def probe_scenes(seed: int, count: int = 200, size: int = mini_clip.IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
  """(images (count, size, size, 3) uint8, labels (count, size, size)): scenes drawn like the demo's (1-4 objects)
  from their own stream (PROBE_STREAM + 1)."""
  scenes = [shapes.render_scene(np.random.default_rng([seed, PROBE_STREAM + 1, i]), size) for i in range(count)]
  return np.stack([s[0] for s in scenes]), np.stack([s[1] for s in scenes])


def probe_objects(seed: int, per_class: int = 20, size: int = mini_clip.IMAGE_SIZE,
                  jitter: float = shapes.OBJECT_JITTER) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of single large objects, `per_class` of each category, centred up to `jitter` of the side,
  from their own stream (PROBE_STREAM + 2)."""
  objects = [shapes.render_object(np.random.default_rng([seed, PROBE_STREAM + 2, c, i]), c, size, jitter=jitter)
             for c in range(len(shapes.CATEGORIES)) for i in range(per_class)]
  return np.stack([o[0] for o in objects]), np.stack([o[1] for o in objects])


def dense_zero_shot_accuracy(model: CLIP, params, tokenizer, images: np.ndarray, labels: np.ndarray, *,
                             layer: int = DENSE_LAYERS[-1]) -> dict[str, float]:
  """Per-patch zero-shot accuracy, per category (chance 8.3%): each patch at least half covered by one category
  is classified by the nearest prompt "a {name}." to its dense feature at `layer`, where ZegOT's score maps
  start. images (S, H, W, 3) uint8, labels (S, H, W) category maps (IGNORE_LABEL: background)."""
  coverage = np.stack([patch_coverage(label, model.config.vision.patch_size) for label in labels])  # (S, h, w, 12)
  ids = jnp.asarray(prompts.tokenize(tokenizer, [ZERO_SHOT_TEMPLATE.format(n) for n in shapes.CATEGORIES]))

  @jax.jit
  def predict(images):
    dense = model.apply({"params": params}, normalize_image(images), feature_layers=(layer,),
                        method=CLIP.encode_image).dense_features[layer]  # (S, h, w, D)
    t = model.apply({"params": params}, ids, method=CLIP.encode_text).text_embeds  # (12, D)
    return jnp.argmax(jnp.einsum("bhwd,kd->bhwk", dense, t / jnp.linalg.norm(t, axis=-1, keepdims=True)), -1)

  covered = coverage.max(-1) >= 0.5
  predicted, truth = np.asarray(predict(images))[covered], coverage.argmax(-1)[covered]
  return {n: float(np.mean(predicted[truth == c] == c)) for c, n in enumerate(shapes.CATEGORIES)}


def train(*, seed: int = 0, steps: int = 1800, batch_size: int = 128, pool_size: int = 20000, lr: float = 2e-3,
          warmup_steps: int = 100, weight_decay: float = 0.05, stop_after: int | None = None, workers: int = 1):
  """Pretrains the mini-CLIP; returns (params, config, tokenizer, report). `stop_after` ends the same run (same
  schedule) after that many steps, to check a prefix of it against the shipped `pretraining.json`. `workers`:
  processes rendering the pool (any number gives the same pool)."""
  settings = dict(seed=seed, steps=steps, batch_size=batch_size, pool_size=pool_size, lr=lr,
                  warmup_steps=warmup_steps, weight_decay=weight_decay)
  start = time.time()
  tokenizer = mini_clip.caption_tokenizer()
  config = mini_clip.mini_config(len(tokenizer), tokenizer.eos_token_id)
  images, ids, present, texts = render_pool(seed, pool_size, tokenizer, config.text.max_position_embeddings,
                                           workers)
  concept_ids = jnp.asarray(prompts.tokenize(tokenizer, [ZERO_SHOT_TEMPLATE.format(n) for n in shapes.CATEGORIES]))
  model = CLIP(config)
  size = config.vision.image_size
  params = model.init(jax.random.key(seed), jnp.zeros((1, size, size, 3)), jnp.zeros((1, 4), jnp.int32))["params"]
  params["vision_model"]["embeddings"]["position_embedding"]["embedding"] = sincos_position_embedding(
      config.vision.grid, config.vision.hidden_size)
  # SigLIP's t and b; not saved. Strongly typed float32 like the updates they get: a weakly typed scalar here would
  # make train_step compile again after the first step.
  params.update({name: jnp.asarray(value, jnp.float32) for name, value in [
      ("concept_scale", jnp.log(10.0)), ("concept_bias", -5.0), ("dense_scale", jnp.log(10.0)), ("dense_bias", -5.0)]})
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, steps)
  optimizer = optax.adamw(schedule, b2=0.98, weight_decay=weight_decay)
  opt_state = optimizer.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, images, ids, present):
    (loss, metrics), grads = jax.value_and_grad(pretraining_loss, has_aux=True)(params, model, images, ids,
                                                                               present, concept_ids)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, dict(loss=loss, **metrics)

  sampler = np.random.default_rng([seed, PRETRAIN_STREAM])
  singles, scenes = np.arange(0, pool_size, 2), np.arange(1, pool_size, 2)
  history = []
  last = steps if stop_after is None else min(stop_after, steps)
  progress = tqdm(range(last), desc="pretraining", unit="step", mininterval=2.0)
  for step in progress:
    num_scenes = int(round(batch_size * scene_fraction(step, steps)))
    index = np.concatenate([sampler.choice(singles, batch_size - num_scenes, replace=False),
                            sampler.choice(scenes, num_scenes, replace=False)])
    params, opt_state, metrics = train_step(params, opt_state, images[index], ids[index], present[index])
    if (step + 1) % HISTORY_EVERY == 0 or step + 1 == steps:
      history.append(dict(step=step + 1, **{k: float(v) for k, v in metrics.items()}))
      progress.set_postfix({k[:-5]: f"{history[-1][k]:.3f}" for k in ("caption_loss", "concept_loss", "dense_loss")})
  params = {k: v for k, v in jax.device_get(params).items() if k not in PRETRAINING_ONLY}
  report = dict(settings=settings, history=history, example_captions=texts[:8], jax_version=jax.__version__)
  if stop_after is None:
    accuracy = zero_shot_accuracy(model, params, tokenizer, seed=seed)
    report.update(zero_shot_template=ZERO_SHOT_TEMPLATE, zero_shot_accuracy=accuracy,
                  mean_zero_shot_accuracy=float(np.mean(list(accuracy.values()))))
  report["seconds"] = round(time.time() - start, 1)
  return params, config, tokenizer, report


def pretrain(out: str | os.PathLike, **settings) -> pathlib.Path:
  """Trains the mini-CLIP (`train`'s settings) and writes it to `out`, atomically: a crash leaves no
  half-written directory."""
  out = pathlib.Path(out)
  if out.exists():
    raise FileExistsError(f"--out {out} exists; give a new directory")
  params, config, tokenizer, report = train(**settings)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
  try:
    tmp.chmod(0o755)  # mkdtemp's 0700 would make a shared checkpoint unreadable to others
    clip_checkpoint.save_pretrained(params, config, tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "pretraining.json").write_text(json.dumps(report, indent=1) + "\n")
    for f in tmp.iterdir():
      f.chmod(0o644)
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def _define_flags() -> dict:
  """The CLI's flags, defined only when run as a program (importing this module defines none)."""
  return dict(
      out=flags.DEFINE_string("out", None, "Directory to write the checkpoint to (created; must not exist)."),
      seed=flags.DEFINE_integer("seed", 0, "Seed of the images, captions, initialization and batch order."),
      steps=flags.DEFINE_integer("steps", 1800, "Training steps."),
      batch_size=flags.DEFINE_integer("batch_size", 128, "Image-caption pairs per step."),
      pool_size=flags.DEFINE_integer("pool_size", 20000, "Distinct captioned images rendered."),
      lr=flags.DEFINE_float("lr", 2e-3, "Peak learning rate."),
      warmup_steps=flags.DEFINE_integer("warmup_steps", 100, "Linear warmup steps."),
      weight_decay=flags.DEFINE_float("weight_decay", 0.05, "AdamW weight decay."),
      workers=flags.DEFINE_integer("workers", 1, "Processes rendering the image pool (the pool is the same for "
                                   "any number)."),
  )


def main(argv, f: dict):
  del argv
  if not f["out"].value:
    raise app.UsageError("--out DIR is required")
  settings = {k: flag.value for k, flag in f.items() if k != "out"}
  out = pretrain(f["out"].value, **settings)
  report = json.loads((out / "pretraining.json").read_text())
  print(f"wrote {out}: final loss {report['history'][-1]['loss']:.4f}, zero-shot accuracy on single objects "
        f"{100 * report['mean_zero_shot_accuracy']:.1f}% ({report['seconds']:.0f} s)")


if __name__ == "__main__":
  _flags = _define_flags()
  app.run(functools.partial(main, f=_flags))
