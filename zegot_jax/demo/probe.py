r"""What the mini-CLIP knows, measured on held-out scenes of the textures world (written to `knowledge.json`).

  python -m zegot_jax.demo.probe [--clip DIR]     # default: the shipped mini-CLIP

* image-level zero-shot accuracy: single-texture images classified by the nearest class prompt (the mean of the
  hand-crafted templates' text embeddings);
* dense zero-shot accuracy per patch, per layer: each patch whose majority category covers at least half of it is
  classified by the nearest class prompt to its dense feature (patch tokens → post-layernorm → projection, what
  ZegOT's score maps start from), over all 12 categories; and per pixel as mIoU (what a frozen-CLIP baseline on
  that layer alone segments);
* a linear-probe ceiling of each layer's dense features: softmax regression over all 12 categories, trained
  with every category's patch labels on other scenes; per patch, and per pixel (logits upsampled bilinearly, as
  ZegOT's are) as mIoU(S), mIoU(U), hIoU: the best a linear read-out of these features can segment;
* seen-trained alignment: a linear map from patch to text space trained on the seen categories only (cosine
  logits against the class prompts), tested over all 12, per patch and per pixel: the kind of alignment ZegOT's
  GA/DFA can learn from seen labels alone.

Accuracies are per category, then averaged over the seen and the unseen categories (chance 1/12). The probe
scenes come from their own generator streams (PROBE_STREAM...), never the dataset's or pretraining's.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from zegot_jax import cli, metrics
from zegot_jax.data import textures
from zegot_jax.models import prompts
from zegot_jax.models.clip import CLIP, normalize_image

PROBE_STREAM = 2000
TEMPLATES = tuple(prefix + "{}." for prefix in textures.CAPTION_PREFIXES)  # the captions' frames
SEEN = tuple(c for c in range(len(textures.CATEGORIES)) if c not in textures.DEFAULT_UNSEEN)
UNSEEN = textures.DEFAULT_UNSEEN


def probe_scenes(stream: int, count: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(images (count, size, size, 3) uint8, labels (count, size, size)): dataset-like scenes (2-4 regions)."""
  scenes = [textures.render_scene(np.random.default_rng([seed, stream, i]), size) for i in range(count)]
  return np.stack([s[0] for s in scenes]), np.stack([s[1] for s in scenes])


def single_textures(per_class: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(images (12·per_class, size, size, 3), categories): one texture filling the image."""
  images, labels = [], []
  for c in range(len(textures.CATEGORIES)):
    for i in range(per_class):
      images.append(textures.render_scene(np.random.default_rng([seed, PROBE_STREAM + 2, c, i]), size,
                                          categories=[c])[0])
      labels.append(c)
  return np.stack(images), np.asarray(labels)


def patch_labels(labels: np.ndarray, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(S, H, W) pixel labels → (S, h, w) majority category per patch, and its share of the patch."""
  s, hh, ww = labels.shape
  h, w = hh // patch_size, ww // patch_size
  patches = labels.reshape(s, h, patch_size, w, patch_size).transpose(0, 1, 3, 2, 4).reshape(s, h, w, -1)
  coverage = (patches[..., None] == np.arange(len(textures.CATEGORIES))).mean(axis=3)  # (S, h, w, 12)
  return coverage.argmax(-1), coverage.max(-1)


def class_texts() -> list[str]:
  """Every category in every template, category-major (12 · templates texts)."""
  return [t.format(name) for name in textures.CATEGORIES for t in TEMPLATES]


def mean_over_templates(text_embeds: jax.Array) -> jax.Array:
  """(12 · templates, D) text embeddings of `class_texts` → (12, D) unit class embeddings: the mean of the
  templates' unit embeddings, renormalized."""
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  return unit(unit(text_embeds).reshape(len(textures.CATEGORIES), len(TEMPLATES), -1).mean(1))


def class_text(model: CLIP, params, tokenizer) -> jax.Array:
  """(12, D) unit class embeddings (`mean_over_templates`)."""
  ids = jnp.asarray(prompts.tokenize(tokenizer, class_texts()))
  return mean_over_templates(model.apply({"params": params}, ids, method=CLIP.encode_text).text_embeds)


def features(model: CLIP, params, images: np.ndarray, layers: tuple[int, ...], batch: int = 200
             ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
  """Unit image embeddings (S, D) and unit dense features {layer: (S, h, w, D)}."""
  encode = jax.jit(lambda x: model.apply({"params": params}, normalize_image(x), feature_layers=layers,
                                         method=CLIP.encode_image))
  outs = [encode(images[i:i + batch]) for i in range(0, len(images), batch)]
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  image = unit(np.concatenate([np.asarray(o.image_embeds) for o in outs]))
  dense = {l: unit(np.concatenate([np.asarray(o.dense_features[l]) for o in outs])) for l in layers}
  return image, dense


def _group_means(per_class: np.ndarray) -> dict[str, float]:
  return dict(seen=float(np.mean(per_class[list(SEEN)])), unseen=float(np.mean(per_class[list(UNSEEN)])),
              per_class={n: float(a) for n, a in zip(textures.CATEGORIES, per_class)})


def _accuracy(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
  per_class = np.array([np.mean(predicted[truth == c] == c) if np.any(truth == c) else np.nan
                        for c in range(len(textures.CATEGORIES))])
  return _group_means(per_class)


def _pixel_miou(patch_logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """mIoU(S), mIoU(U), hIoU of per-patch logits (S, h, w, 12) upsampled bilinearly to the pixels (as ZegOT's
  are), against pixel labels (S, H, W)."""
  logits = jax.image.resize(jnp.asarray(patch_logits), (*labels.shape, patch_logits.shape[-1]), "bilinear")
  counts = metrics.IoUAccumulator(len(textures.CATEGORIES))
  counts.add(*metrics.iou_counts(jnp.argmax(logits, -1), jnp.asarray(labels), len(textures.CATEGORIES)))
  report = metrics.miou_report(counts.intersection, counts.union, textures.CATEGORIES, SEEN, UNSEEN)
  return {k: report[k] for k in ("mIoU_seen", "mIoU_unseen", "hIoU")}


def _fit(loss_fn, params, steps: int = 500, lr: float = 0.05):
  """Full-batch Adam on a small convex-ish probe (deterministic)."""
  optimizer = optax.adam(lr)

  @jax.jit
  def run(params):
    def step(carry, _):
      p, s = carry
      grads = jax.grad(loss_fn)(p)
      updates, s = optimizer.update(grads, s, p)
      return (optax.apply_updates(p, updates), s), None
    return jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)[0][0]

  return run(params)


def knowledge(model: CLIP, params, tokenizer, *, scenes: int = 300, per_class: int = 30) -> dict:
  """The measurements above, as a JSON-ready dict."""
  num_layers = model.config.vision.num_hidden_layers
  layers = tuple(range(1, num_layers + 1))
  patch = model.config.vision.patch_size
  text = np.asarray(class_text(model, params, tokenizer))  # (12, D)
  result = dict(templates=list(TEMPLATES), unseen=[textures.CATEGORIES[c] for c in UNSEEN], chance=1 / 12)

  images, categories = single_textures(per_class)
  image_embeds, _ = features(model, params, images, (num_layers,))
  result["image_zero_shot"] = _accuracy(np.argmax(image_embeds @ text.T, -1), categories)

  train_images, train_labels = probe_scenes(PROBE_STREAM, scenes)
  test_images, test_labels = probe_scenes(PROBE_STREAM + 1, scenes)
  _, train_dense = features(model, params, train_images, layers)
  _, test_dense = features(model, params, test_images, layers)
  test_patch, test_cover = patch_labels(test_labels, patch)
  keep = test_cover >= 0.5
  result["dense_zero_shot"] = {
      str(l): _accuracy(np.argmax(test_dense[l] @ text.T, -1)[keep], test_patch[keep]) for l in layers}

  last = num_layers
  train_patch, train_cover = patch_labels(train_labels, patch)
  y_train = jnp.asarray(train_patch[train_cover >= 0.5])

  def linear_probe(layer):  # softmax regression over all 12 categories, every category's labels
    x = jnp.asarray(train_dense[layer][train_cover >= 0.5])  # (P, D)

    def probe_loss(p):
      return optax.softmax_cross_entropy_with_integer_labels(x @ p["w"] + p["b"], y_train).mean()

    k = len(textures.CATEGORIES)
    fitted = _fit(probe_loss, dict(w=jnp.zeros((x.shape[-1], k)), b=jnp.zeros(k)))
    logits = np.asarray(test_dense[layer] @ fitted["w"] + fitted["b"])  # (S, h, w, 12)
    return dict(patches=_accuracy(logits.argmax(-1)[keep], test_patch[keep]), pixels=_pixel_miou(logits, test_labels))

  result["linear_probe_layers"] = {str(l): linear_probe(l) for l in layers}
  result["linear_probe"] = result["linear_probe_layers"][str(last)]["patches"]
  result["linear_probe_pixels"] = result["linear_probe_layers"][str(last)]["pixels"]
  x_train = jnp.asarray(train_dense[last][train_cover >= 0.5])  # (P, D)
  dim = x_train.shape[-1]

  seen_rows = np.isin(y_train, SEEN)
  x_seen, y_seen = x_train[seen_rows], y_train[seen_rows]
  text_seen = jnp.asarray(text)

  def align_loss(p):  # a map into text space learned on the seen categories only; cosine logits, temperature 20
    mapped = x_seen @ p["w"]
    mapped = mapped / jnp.linalg.norm(mapped, axis=-1, keepdims=True)
    logits = 20.0 * mapped @ text_seen[jnp.asarray(SEEN)].T
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.searchsorted(jnp.asarray(SEEN), y_seen)).mean()

  align = _fit(align_loss, dict(w=jnp.eye(dim)))
  mapped = test_dense[last] @ np.asarray(align["w"])
  result["seen_trained_alignment"] = _accuracy(np.argmax(mapped @ text.T, -1)[keep], test_patch[keep])
  result["seen_trained_alignment_pixels"] = _pixel_miou(mapped @ text.T, test_labels)
  result["dense_zero_shot_pixels"] = {str(l): _pixel_miou(test_dense[l] @ text.T, test_labels) for l in layers}
  return result


def format_knowledge(k: dict) -> str:
  """A short table of the measurements (percent)."""
  rows = [("image-level zero-shot (single textures)", k["image_zero_shot"])]
  rows += [(f"dense zero-shot, layer {l} (per patch)", v) for l, v in k["dense_zero_shot"].items()]
  per_layer = k.get("linear_probe_layers", {})  # knowledge.json files before it have the last layer only
  rows += [("linear map learned on seen categories only, last layer", k["seen_trained_alignment"])]
  rows += [(f"linear probe, all 12 categories' labels, layer {l}", v["patches"]) for l, v in per_layer.items()]
  rows += [] if per_layer else [("linear probe, all 12 categories' labels, last layer", k["linear_probe"])]
  lines = ["| probe | seen | unseen |", "|---|---|---|"]
  lines += [f"| {name} | {100 * v['seen']:.1f}% | {100 * v['unseen']:.1f}% |" for name, v in rows]
  pixels = [(f"dense zero-shot, layer {l}", v) for l, v in k.get("dense_zero_shot_pixels", {}).items()]
  pixels += [("linear map learned on seen categories only, last layer", k.get("seen_trained_alignment_pixels"))]
  pixels += [(f"linear probe, all 12 categories' labels, layer {l}", v["pixels"]) for l, v in per_layer.items()]
  pixels += [] if per_layer else [("linear probe, all 12 categories' labels, last layer", k["linear_probe_pixels"])]
  lines += ["", "| per pixel | mIoU(S) | mIoU(U) | hIoU |", "|---|---|---|---|"]
  lines += [f"| {name} | {v['mIoU_seen']:.1f} | {v['mIoU_unseen']:.1f} | {v['hIoU']:.1f} |" for name, v in pixels if v]
  lines.append(f"(chance accuracy {100 * k['chance']:.1f}%)")
  return "\n".join(lines)


def main(argv, f: dict):
  del argv
  from zegot_jax.demo import mini_clip  # pylint: disable=g-import-not-at-top
  from zegot_jax.models import encoder_checkpoint  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(f["clip"].value or mini_clip.shipped_path())
  clip = encoder_checkpoint.from_pretrained(str(path))
  k = knowledge(clip.model, clip.params, prompts.load_tokenizer(str(path)))
  print(format_knowledge(k))
  if f["write"].value:
    (path / "knowledge.json").write_text(json.dumps(k, indent=1) + "\n")


if __name__ == "__main__":
  _flags = dict(clip=flags.DEFINE_string("clip", None, "checkpoint directory (default: the shipped mini-CLIP)"),
                write=flags.DEFINE_bool("write", False, "write knowledge.json into the checkpoint directory"))
  cli.run(functools.partial(main, f=_flags))
