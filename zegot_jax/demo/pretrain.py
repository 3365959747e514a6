r"""Pretrains the demo's mini-CLIP the way CLIP is pretrained: image-caption pairs only, no pixel labels.

  python -m zegot_jax.demo.pretrain --out DIR [--seed 0] [--workers 2]                     # stage 1, from scratch
  python -m zegot_jax.demo.pretrain --out DIR2 --init DIR --pooling cls+mean+anchored --steps 2000 --lr 5e-4 \
      --warmup_steps 100 --seed 1                                                          # stage 2, from DIR

A run saves its state in `<out>.partial/` every `--checkpoint_every` steps; the same command, run again after an
interruption, continues from there and ends with the weights an uninterrupted run gives.

The two commands above (SHIPPED_STAGES) reproduce the checkpoint shipped in `zegot_jax/demo/mini_clip/` (same
numbers to float tolerance on a CPU; its `pretraining.json` records both runs). What it does:

1. renders a pool of scenes of the textures world (1-4 regions, mostly 1 or 2, 64×64), entry i from its own
   generator seeded by
   (seed, PRETRAIN_STREAM, i): never an image of the `textures_zs3` dataset (streams 0-2);
2. captions each one ("a pattern of red zigzag, bricks and blue dots."): the regions' categories in random
   order, colours named or not, after one of a few prefixes. No pixel labels, no region boxes: only the caption;
3. trains both towers from scratch with CLIP's symmetric InfoNCE between the images' CLS embeddings and their
   captions' EOS embeddings (learned temperature, clipped at 100), AdamW with warmup + cosine decay. The image
   tower's position embedding starts as a 2-D sine-cosine table (a from-scratch ViT need not learn where its
   patches are). `--pooling` adds a second image-level term: the same loss on the mean of the projected patch tokens
   (`cls+mean`, the default), or each projected patch token against every caption of the batch (`cls+patch`:
   a patch's positive is its own image's caption), or the mean term and a local term read from the caption's nouns
   (`cls+mean+local`, `local_loss` at every layer of LOCAL_LAYERS; `cls+mean+anchored`, the shipped stage 2:
   `local_loss` at the first of them, the deeper ones held to its assignment, `anchored_loss`); nothing else differs
   from CLIP;
4. writes the checkpoint in transformers' format with the caption tokenizer, `pretraining.json` (settings and the
   loss of every step) and `knowledge.json` (what the model knows, measured on held-out scenes: `probe.py`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
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
from absl import flags
from flax import serialization
from tqdm import tqdm

from zegot_jax import cli, errors
from zegot_jax.data import textures
from zegot_jax.demo import mini_clip, probe
from zegot_jax.models import encoder_checkpoint, prompts
from zegot_jax.models.clip import CLIP, normalize_image

PRETRAIN_STREAM = 1000  # generator stream of the pretraining images (textures_zs3 uses 0, 1 and 2)
# How often a pretraining scene has 1, 2, 3 or 4 regions (the dataset's scenes have 2-4). Scenes of one or two
# textures are the caption pairs whose every patch the caption describes; measured (docs/demo.md) to teach the patch
# features more per step than 1-4 regions drawn uniformly.
PRETRAIN_REGION_WEIGHTS = (4, 2, 1, 1)
POOLINGS = ("cls", "cls+mean", "cls+patch", "cls+mean+local", "cls+mean+anchored")
LOCAL_LAYERS = (2, 3, 4)  # the layers whose patch tokens the local term trains (those DFA chose from)
LOCAL_ENTROPY = 0.1  # weight of the patches' entropy in the local term
CAPTION_LENGTH = 20  # tokens per caption, padded (the longest caption has 17): text tower cost stays small
DEFAULTS = dict(seed=0, steps=8000, batch_size=64, pool_size=200000, lr=1e-3, warmup_steps=200, weight_decay=0.1,
                pooling="cls+mean", init=None)


# The shipped checkpoint: these defaults from scratch, then continued from that run (`--init`) with the local term.
SHIPPED_STAGES = ({k: v for k, v in DEFAULTS.items() if k != "init"},
                  dict(seed=1, steps=2000, lr=5e-4, warmup_steps=100, pooling="cls+mean+anchored"))


def pretraining_scene(seed: int, index: int) -> tuple[np.ndarray, np.ndarray, str]:
  """(image, labels, caption) of pool entry `index`, from its own generator: any subset or split of the pool gives
  the same entries. The labels are for tests only; pretraining reads the image and the caption."""
  rng = np.random.default_rng([seed, PRETRAIN_STREAM, int(index)])
  weights = np.asarray(PRETRAIN_REGION_WEIGHTS, np.float64)
  count = int(rng.choice(len(weights), p=weights / weights.sum())) + 1
  image, labels, regions = textures.render_scene(rng, mini_clip.IMAGE_SIZE, (count, count))
  return image, labels, textures.caption(regions, rng)


def _render_range(seed: int, indices: np.ndarray) -> tuple[np.ndarray, list[str]]:
  """Pool entries `indices` (images stacked, captions)."""
  scenes = [pretraining_scene(seed, i) for i in indices]
  return np.stack([s[0] for s in scenes]), [s[2] for s in scenes]


def map_chunks(render, items: np.ndarray, workers: int = 1, chunk: int = 1000, desc: str = "rendering") -> list:
  """[render(items[a:b]) for consecutive chunks of `items`], in order, in this process or in `workers` spawned
  ones (not forked: the parent may already run JAX's threads, which a forked child would inherit half-dead).
  `render` must be picklable and its result must depend only on its items."""
  parts_in = [items[a:a + chunk] for a in range(0, len(items), chunk)]
  progress = tqdm(total=len(items), desc=desc, unit="img", mininterval=2.0)
  results = []
  with contextlib.ExitStack() as stack:
    if workers > 1:
      pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
          workers, mp_context=multiprocessing.get_context("spawn")))
      parts = pool.map(render, parts_in)
    else:
      parts = map(render, parts_in)
    for part_in, part in zip(parts_in, parts):
      results.append(part)
      progress.update(len(part_in))
  progress.close()
  return results


def render_pool(seed: int, indices: np.ndarray, tokenizer, context_length: int, workers: int = 1
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """(images (n, 64, 64, 3) uint8, caption token ids (n, context_length) int32, captions) of pool entries
  `indices`; the same for any number of `workers`."""
  parts = map_chunks(functools.partial(_render_range, seed), np.asarray(indices), workers)
  texts = [t for part in parts for t in part[1]]
  ids = prompts.tokenize(tokenizer, texts, length=context_length, max_length=context_length)
  return np.concatenate([p[0] for p in parts]), ids, texts


def batch_indices(seed: int, steps: int, batch_size: int, pool_size: int) -> np.ndarray:
  """(steps, batch_size) pool indices: epochs of random permutations of the pool, one after another."""
  rng = np.random.default_rng([seed, PRETRAIN_STREAM])
  epochs = -(-steps * batch_size // pool_size)
  order = np.concatenate([rng.permutation(pool_size) for _ in range(epochs)])
  return order[:steps * batch_size].reshape(steps, batch_size)


def sincos_position_embedding(grid: tuple[int, int], width: int) -> jax.Array:
  """(1 + h·w, width) 2-D sine-cosine position table (MAE's; the CLS row is zero): half the channels encode the
  row, half the column, at frequencies 1 / 10000^(i / (width/4))."""
  h, w = grid
  quarter = width // 4
  frequencies = 1.0 / 10000 ** (np.arange(quarter) / quarter)  # (width/4,)
  rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")

  def encode(positions):  # (h*w,) → (h*w, width/2)
    angles = positions.reshape(-1)[:, None] * frequencies[None]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  table = np.concatenate([encode(rows), encode(cols)], axis=1)  # (h*w, width)
  return jnp.asarray(np.concatenate([np.zeros((1, width)), table]), jnp.float32)


def _unit(x: jax.Array) -> jax.Array:
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def caption_nouns(texts: list[str]) -> np.ndarray:
  """(n, 12) bool: the texture categories each caption names, read from its words (as GroupViT reads the nouns of
  its captions): what a caption says, nothing more."""
  words = [set(t.rstrip(".").replace(",", " ").split()) for t in texts]
  return np.array([[name in w for name in textures.CATEGORIES] for w in words], bool)


def class_prompt_ids(tokenizer) -> np.ndarray:
  """(12 · frames, CAPTION_LENGTH) token ids of every category in every caption frame, category-major."""
  return prompts.tokenize(tokenizer, probe.class_texts(), length=CAPTION_LENGTH, max_length=CAPTION_LENGTH)


def _caption_mask(named: jax.Array) -> jax.Array:
  """(B, 1, K) additive mask: 0 for the textures a caption names (named (B, K)), −inf for the others."""
  return jnp.where(named[:, None, :], 0.0, -jnp.inf)


def local_loss(z: jax.Array, named: jax.Array) -> jax.Array:
  """Multiple-instance loss of patch logits z (B, P, K) against the nouns of each image's caption, named (B, K).

  A patch shows one of the textures its caption names: −log Σ_{k named} softmax(z)_k; each named texture is shown
  by some patch: −log max_p softmax(z)_{p,k}; and a patch shows one texture, not a blend of the scene's (entropy,
  weight LOCAL_ENTROPY). Scenes of one texture thus teach every patch its name; scenes of several teach a patch to
  name its own region, not the scene."""
  logq = jax.nn.log_softmax(z, axis=-1)  # (B, P, K)
  in_caption = -jax.nn.logsumexp(logq + _caption_mask(named), axis=-1).mean()
  shown = -(jnp.max(logq, axis=1) * named).sum() / named.sum()
  entropy = -(jnp.exp(logq) * logq).sum(-1).mean()
  return in_caption + shown + LOCAL_ENTROPY * entropy


def anchored_loss(z: jax.Array, z_anchor: jax.Array, named: jax.Array) -> jax.Array:
  """Cross-entropy of patch logits z (B, P, K) against the anchor layer's assignment of the same patches among the
  textures their caption names (softmax of z_anchor over the named ones, held fixed). A deeper layer fits
  `local_loss` just as well by giving a scene's named textures to patches of the wrong regions (its tokens have
  seen the whole scene; measured: docs/demo.md); the anchor, a layer whose tokens are still local, says which."""
  target = jax.lax.stop_gradient(jax.nn.softmax(z_anchor + _caption_mask(named), axis=-1))  # (B, P, K), zero off the caption
  return -(target * jax.nn.log_softmax(z, axis=-1)).sum(-1).mean()


def clip_loss(params, model: CLIP, images: jax.Array, ids: jax.Array, pooling: str = "cls+mean",
              named: jax.Array | None = None, class_ids: jax.Array | None = None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CLIP's symmetric InfoNCE: images (B, H, W, 3) uint8 against their captions ids (B, T).

  pooling "cls": the image embedding is CLIP's (CLS token → post-layernorm → projection). "cls+mean": the mean of
  two InfoNCE losses, CLIP's and the same with the image embedding pooled as the mean of the last layer's projected
  patch tokens (global average pooling, as some CLIP variants pool): both image-level, against the whole caption;
  the mean pooling makes every patch carry the caption's meaning, which patch tokens of a CLS-only model lack
  (measured: README, "The mini-CLIP"). "cls+mean+local" adds `local_loss` at LOCAL_LAYERS, the patch tokens against
  the class prompts (class_ids, `class_prompt_ids`) with the caption's nouns (named (B, 12), `caption_nouns`);
  "cls+mean+anchored" applies it at the first of LOCAL_LAYERS and `anchored_loss` to the deeper ones."""
  layer = model.config.vision.num_hidden_layers
  local = pooling.endswith(("+local", "+anchored"))
  feature_layers = () if pooling == "cls" else tuple(sorted({layer, *(LOCAL_LAYERS if local else ())}))
  vision = model.apply({"params": params}, normalize_image(images), feature_layers=feature_layers,
                       method=CLIP.encode_image)
  t = _unit(model.apply({"params": params}, ids, method=CLIP.encode_text).text_embeds)  # (B, D)
  scale = jnp.exp(jnp.minimum(params["logit_scale"], jnp.log(100.0)))  # CLIP clips the temperature at 100
  labels = jnp.arange(ids.shape[0])

  def info_nce(v):  # v (B, D) image embeddings
    logits = scale * _unit(v) @ t.T  # (B, B)
    loss = (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()) / 2
    return loss, jnp.mean(jnp.argmax(logits, axis=1) == labels)

  loss, accuracy = info_nce(vision.image_embeds)
  if pooling == "cls":
    return loss, dict(batch_accuracy=accuracy)
  if pooling == "cls+patch":
    patches = _unit(vision.dense_features[layer]).reshape(ids.shape[0], -1, t.shape[-1])  # (B, P, D)
    logits = scale * jnp.einsum("bpd,cd->bpc", patches, t)  # every patch against every caption
    patch_loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.broadcast_to(labels[:, None], logits.shape[:2])).mean()
    return (loss + patch_loss) / 2, dict(batch_accuracy=accuracy,
                                         patch_accuracy=jnp.mean(jnp.argmax(logits, -1) == labels[:, None]))
  mean_loss, mean_accuracy = info_nce(vision.dense_features[layer].mean(axis=(1, 2)))
  metrics = dict(batch_accuracy=accuracy, mean_pool_accuracy=mean_accuracy)
  loss = (loss + mean_loss) / 2
  if local:
    c = probe.mean_over_templates(model.apply({"params": params}, class_ids, method=CLIP.encode_text).text_embeds)
    z = {l: scale * jnp.einsum("bpd,kd->bpk", _unit(vision.dense_features[l]).reshape(ids.shape[0], -1, c.shape[-1]),
                               c) for l in LOCAL_LAYERS}  # (B, P, 12) per layer
    anchor, *deeper = LOCAL_LAYERS
    if pooling.endswith("+anchored"):  # the first local layer by the caption, the deeper ones by the first
      local_losses = [local_loss(z[anchor], named)] + [anchored_loss(z[l], z[anchor], named) for l in deeper]
    else:
      local_losses = [local_loss(z[l], named) for l in LOCAL_LAYERS]
    metrics["local_loss"] = sum(local_losses) / len(local_losses)
    loss = loss + metrics["local_loss"]
  return loss, metrics


CHECKPOINT_FILE = "pretraining_state.msgpack"


def _weights_digest(directory: str) -> str:
  """sha256 of a checkpoint directory's weights: what `init` was, recorded in pretraining.json."""
  path = pathlib.Path(directory) / "model.safetensors"
  if not path.is_file():
    raise errors.UserError(f"--init {directory}: no model.safetensors there; give a mini-CLIP checkpoint directory")
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _initial_weights(init: str, params):
  """The weights of the mini-CLIP checkpoint `init`, checked to have the shapes of `params` (the mini config)."""
  loaded = encoder_checkpoint.from_pretrained(init).params
  shapes = lambda tree: jax.tree_util.tree_map(lambda x: tuple(np.shape(x)), tree)
  if shapes(loaded) != shapes(params):
    raise errors.UserError(f"--init {init}: not a mini-CLIP of this architecture (mini_clip.mini_config); give a "
                           "checkpoint written by this command")
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), loaded)


def _save(path: pathlib.Path, step: int, settings: dict, params, opt_state, losses: list, accuracies: list) -> None:
  """The run's state after `step` steps, written atomically (a crash while saving keeps the previous one)."""
  state = dict(step=step, settings=json.dumps(settings, sort_keys=True), params=params, opt_state=opt_state,
               loss=np.asarray(jax.device_get(losses), np.float32),
               batch_accuracy=np.asarray(jax.device_get(accuracies), np.float32))
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_bytes(serialization.msgpack_serialize(serialization.to_state_dict(state)))
  os.replace(tmp, path)


def _restore(path: pathlib.Path, settings: dict, params, opt_state):
  """(step, params, opt_state, losses, accuracies) saved by `_save`; a run of other settings is refused."""
  state = serialization.msgpack_restore(path.read_bytes())
  saved = json.loads(state["settings"])
  if saved != settings:
    changed = ", ".join(f"{k}: saved {saved.get(k)!r}, now {settings.get(k)!r}"
                        for k in sorted(set(saved) | set(settings)) if saved.get(k) != settings.get(k))
    raise errors.UserError(f"{path} is a pretraining run with other settings ({changed}); give the same settings "
                           "to resume it, or another --out to start anew")
  params = serialization.from_state_dict(params, state["params"])
  opt_state = serialization.from_state_dict(opt_state, state["opt_state"])
  return (int(state["step"]), params, opt_state, [np.float32(x) for x in state["loss"]],
          [np.float32(x) for x in state["batch_accuracy"]])


def train(*, seed: int = DEFAULTS["seed"], steps: int = DEFAULTS["steps"], batch_size: int = DEFAULTS["batch_size"],
          pool_size: int = DEFAULTS["pool_size"], lr: float = DEFAULTS["lr"],
          warmup_steps: int = DEFAULTS["warmup_steps"], weight_decay: float = DEFAULTS["weight_decay"],
          pooling: str = DEFAULTS["pooling"], stop_after: int | None = None, workers: int = 1,
          init: str | None = DEFAULTS["init"], checkpoint_dir: str | os.PathLike | None = None,
          checkpoint_every: int = 500):
  """Pretrains the mini-CLIP; returns (params, config, tokenizer, report). `stop_after` ends the same run (same
  schedule, same batches) after that many steps, rendering only the images those steps use, to check a prefix
  of it against the shipped `pretraining.json`. `workers`: processes rendering the pool (any number gives the
  same pool). `init`: a mini-CLIP checkpoint directory to continue from instead of a random start (its weights;
  the optimizer starts anew). `checkpoint_dir`: the run's state is saved there every `checkpoint_every` steps and
  resumed from it (same settings only), giving the same result as an uninterrupted run."""
  settings = dict(seed=seed, steps=steps, batch_size=batch_size, pool_size=pool_size, lr=lr,
                  warmup_steps=warmup_steps, weight_decay=weight_decay, pooling=pooling)
  if init:
    settings["init"] = dict(path=str(init), sha256=_weights_digest(init))
  if pooling not in POOLINGS:
    raise ValueError(f"pooling={pooling!r}: expected one of {POOLINGS}")
  start = time.time()
  tokenizer = mini_clip.caption_tokenizer()
  config = mini_clip.mini_config(len(tokenizer), tokenizer.eos_token_id)
  last = steps if stop_after is None else min(stop_after, steps)
  batches = batch_indices(seed, steps, batch_size, pool_size)[:last]  # (last, B)
  used = np.unique(batches)  # the pool entries these steps read, sorted
  images, ids, texts = render_pool(seed, used, tokenizer, CAPTION_LENGTH, workers)
  batches = np.searchsorted(used, batches)  # pool indices → rows of `images`
  named = caption_nouns(texts)  # (n, 12): what each caption names (read by the local term only)
  class_ids = jnp.asarray(class_prompt_ids(tokenizer))
  model = CLIP(config)
  size = config.vision.image_size
  params = model.init(jax.random.key(seed), jnp.zeros((1, size, size, 3)), jnp.zeros((1, 4), jnp.int32))["params"]
  params["vision_model"]["embeddings"]["position_embedding"]["embedding"] = sincos_position_embedding(
      config.vision.grid, config.vision.hidden_size)
  if init:
    params = _initial_weights(init, params)
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, steps)
  optimizer = optax.adamw(schedule, b2=0.98, weight_decay=weight_decay)
  opt_state = optimizer.init(params)
  first, losses, accuracies = 0, [], []
  checkpoint = None if checkpoint_dir is None else pathlib.Path(checkpoint_dir) / CHECKPOINT_FILE
  if checkpoint is not None and checkpoint.is_file():
    first, params, opt_state, losses, accuracies = _restore(checkpoint, settings, params, opt_state)
    if first > last:
      raise errors.UserError(f"{checkpoint} is already at step {first}, past the {last} asked for")
    print(f"resuming pretraining from step {first} ({checkpoint})")

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, images, ids, named):
    (loss, metrics), grads = jax.value_and_grad(clip_loss, has_aux=True)(params, model, images, ids, pooling,
                                                                          named, class_ids)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, dict(loss=loss, **metrics)

  progress = tqdm(range(first, last), desc="pretraining", unit="step", mininterval=2.0, initial=first, total=last)
  for step in progress:
    index = batches[step]
    params, opt_state, metrics = train_step(params, opt_state, images[index], ids[index], named[index])
    losses.append(metrics["loss"])  # device arrays: read back in blocks, not every step
    accuracies.append(metrics["batch_accuracy"])
    if (step + 1) % 50 == 0:
      progress.set_postfix(loss=f"{float(losses[-1]):.3f}", batch_acc=f"{float(accuracies[-1]):.2f}")
    if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == last):
      _save(checkpoint, step + 1, settings, params, opt_state, losses, accuracies)
  params = jax.device_get(params)
  report = dict(settings=settings, region_weights=list(PRETRAIN_REGION_WEIGHTS), loss=[float(x) for x in losses],
                batch_accuracy=[float(x) for x in accuracies],
                example_captions=texts[:8], jax_version=jax.__version__, seconds=round(time.time() - start, 1))
  if init and (pathlib.Path(init) / "pretraining.json").is_file():  # how the weights it started from were made
    report["init_pretraining"] = json.loads((pathlib.Path(init) / "pretraining.json").read_text())
  return params, config, tokenizer, report


def pretrain(out: str | os.PathLike, **settings) -> pathlib.Path:
  """Trains the mini-CLIP (`train`'s settings), measures what it knows (`probe.knowledge`) and writes it to
  `out`, atomically: a crash leaves no half-written directory. Until then the run's state is saved every
  `checkpoint_every` steps in `<out>.partial/`, and the same command resumes from it."""
  out = pathlib.Path(out)
  if out.exists():
    raise errors.UserError(f"--out {out} exists; give a new directory")
  partial = partial_dir(out)
  params, config, tokenizer, report = train(**settings, checkpoint_dir=partial)
  knowledge = probe.knowledge(CLIP(config), params, tokenizer)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
  try:
    tmp.chmod(0o755)  # mkdtemp's 0700 would make a shared checkpoint unreadable to others
    encoder_checkpoint.save_pretrained(params, config, tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "pretraining.json").write_text(json.dumps(report, indent=1) + "\n")
    (tmp / "knowledge.json").write_text(json.dumps(knowledge, indent=1) + "\n")
    (tmp / prompts.VOCABULARY_FILE).write_text(json.dumps(mini_clip.vocabulary(), indent=1) + "\n")
    for f in tmp.iterdir():
      f.chmod(0o644)
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  shutil.rmtree(partial, ignore_errors=True)  # the finished checkpoint replaces the run's state
  return out


def partial_dir(out: pathlib.Path) -> pathlib.Path:
  """Where an unfinished pretraining run into `out` keeps its state."""
  return out.parent / (out.name + ".partial")


def _define_flags() -> dict:
  """The CLI's flags, defined only when run as a program (importing this module defines none)."""
  d = DEFAULTS
  return dict(
      out=flags.DEFINE_string("out", None, "Directory to write the checkpoint to (created; must not exist)."),
      seed=flags.DEFINE_integer("seed", d["seed"], "Seed of the images, captions, initialization and batch order."),
      steps=flags.DEFINE_integer("steps", d["steps"], "Training steps."),
      batch_size=flags.DEFINE_integer("batch_size", d["batch_size"], "Image-caption pairs per step."),
      pool_size=flags.DEFINE_integer("pool_size", d["pool_size"], "Distinct captioned images rendered."),
      lr=flags.DEFINE_float("lr", d["lr"], "Peak learning rate."),
      warmup_steps=flags.DEFINE_integer("warmup_steps", d["warmup_steps"], "Linear warmup steps."),
      weight_decay=flags.DEFINE_float("weight_decay", d["weight_decay"], "AdamW weight decay."),
      pooling=flags.DEFINE_enum("pooling", d["pooling"], list(POOLINGS), "Image embeddings of the InfoNCE "
                                "loss: CLIP's CLS token, and also the mean of the projected patch tokens "
                                "(cls+mean) or each projected patch token (cls+patch); cls+mean+local adds a "
                                "per-patch term from the caption's nouns."),
      init=flags.DEFINE_string("init", d["init"], "A mini-CLIP checkpoint directory to continue pretraining from "
                               "(default: a random start)."),
      checkpoint_every=flags.DEFINE_integer("checkpoint_every", 500, "Steps between saves of the run's state in "
                                            "<out>.partial/ (the same command resumes from it)."),
      workers=flags.DEFINE_integer("workers", 1, "Processes rendering the image pool (the pool is the same for "
                                   "any number)."),
  )


def main(argv, f: dict):
  del argv
  if not f["out"].value:
    raise errors.UserError("--out DIR is required: where the pretrained mini-CLIP is written")
  settings = {k: flag.value for k, flag in f.items() if k != "out"}
  out = pretrain(f["out"].value, **settings)
  report = json.loads((out / "pretraining.json").read_text())
  knowledge = json.loads((out / "knowledge.json").read_text())
  print(f"wrote {out}: final loss {report['loss'][-1]:.4f} ({report['seconds']:.0f} s)")
  print(probe.format_knowledge(knowledge))


if __name__ == "__main__":
  _flags = _define_flags()
  cli.run(functools.partial(main, f=_flags))
