r"""Pictures of a trained run, after the paper's Figure 1: for a few evaluation images, one row each of

  input | ground truth | prediction | the score map S* of each prompt for one unseen class

Seen and unseen classes are coloured and named in the legend under each row; the prediction is dimmed where
the ground truth has no class (background, which is not evaluated); the unseen class shown is the one
covering most of that image (the first unseen class when none is present). Score maps are ZegOT's fused,
transport-refined maps S* (eq. 8) at the patch grid, each scaled to its own min-max, brighter is higher.

  python -m zegot_jax.demo.pictures --workdir runs/demo [--num_images 4]

The demo (`python -m zegot_jax.demo`) writes them after training. Images come from the config's evaluation
split (`eval.split`).
"""

from __future__ import annotations

import functools
import json
import pathlib

import ml_collections
import numpy as np
from absl import app, flags, logging
from PIL import Image, ImageDraw, ImageFont

from zegot_jax import checkpoints, evaluation, from_config, metrics
from zegot_jax.data import pipeline
from zegot_jax.segmenter import Segmenter
from zegot_jax.predict import load_run_config, palette

PANEL = 128  # pixels per panel side
GAP = 4
HEADER = 14  # title strip above each panel
LEGEND_ROW = 14
NO_LABEL = (40, 40, 40)  # ground-truth pixels without a class (background, ignore)


def _heat(scores: np.ndarray) -> np.ndarray:
  """(h, w) floats → (h, w, 3) uint8, min-max scaled, dark blue → yellow."""
  lo, hi = float(scores.min()), float(scores.max())
  t = (scores - lo) / max(hi - lo, 1e-6)
  dark, bright = np.array([20, 30, 90], np.float32), np.array([250, 230, 40], np.float32)
  return (dark + t[..., None] * (bright - dark)).astype(np.uint8)


def _colour_labels(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
  valid = labels < len(colours)
  out = np.empty((*labels.shape, 3), np.uint8)
  out[:] = NO_LABEL
  out[valid] = colours[labels[valid]]
  return out


def _dim_unlabelled(coloured: np.ndarray, label: np.ndarray, num_classes: int, keep: float = 0.3) -> np.ndarray:
  """The prediction where the ground truth has no class (background: not a class here, and not evaluated) is
  shown at `keep` of its brightness, so the evaluated pixels stand out; nothing is hidden."""
  out = coloured.astype(np.float32)
  out[label >= num_classes] *= keep
  return out.astype(np.uint8)


def _panel(array: np.ndarray, title: str, font) -> Image.Image:
  """An (h, w, 3) uint8 array scaled to PANEL×PANEL (nearest: label edges and patches stay visible), titled."""
  image = Image.fromarray(array).resize((PANEL, PANEL), Image.Resampling.NEAREST)
  panel = Image.new("RGB", (PANEL, HEADER + PANEL), (255, 255, 255))
  ImageDraw.Draw(panel).text((2, 1), title, fill=(0, 0, 0), font=font)
  panel.paste(image, (0, HEADER))
  return panel


def figure_row(image: np.ndarray, label: np.ndarray, prediction: np.ndarray, prompt_maps: np.ndarray,
               class_names: list[str], unseen: list[int], shown_class: int) -> Image.Image:
  """One row: image (H, W, 3) uint8, label and prediction (H, W) class indices, prompt_maps (h, w, N) of
  `shown_class`; the legend names every class in the label or the prediction, unseen ones marked."""
  font = ImageFont.load_default()
  colours = palette(len(class_names))
  panels = [_panel(image, "input", font), _panel(_colour_labels(label, colours), "ground truth", font),
            _panel(_dim_unlabelled(_colour_labels(prediction, colours), label, len(class_names)), "prediction",
                   font)]
  name = class_names[shown_class]
  panels += [_panel(_heat(prompt_maps[..., n]), f"{name}: prompt {n + 1}", font)
             for n in range(prompt_maps.shape[-1])]
  present = sorted({int(k) for k in np.unique(np.concatenate([label.ravel(), prediction.ravel()]))
                    if k < len(class_names)})
  legend_rows = max(1, -(-len(present) // 4))
  width = len(panels) * (PANEL + GAP) - GAP
  row = Image.new("RGB", (width, HEADER + PANEL + GAP + legend_rows * LEGEND_ROW), (255, 255, 255))
  for i, panel in enumerate(panels):
    row.paste(panel, (i * (PANEL + GAP), 0))
  draw = ImageDraw.Draw(row)
  column = width // 4
  for j, k in enumerate(present):
    x, y = (j % 4) * column, HEADER + PANEL + GAP + (j // 4) * LEGEND_ROW
    draw.rectangle([x + 2, y + 2, x + 12, y + 12], fill=tuple(int(c) for c in colours[k]))
    text = class_names[k] + (" (unseen)" if k in unseen else " (seen)")
    draw.text((x + 16, y + 1), text, fill=(0, 0, 0), font=font)
  return row


def write_pictures(workdir: str | pathlib.Path, config: ml_collections.ConfigDict, *, num_images: int = 4,
                   step: int | None = None, out: str | pathlib.Path | None = None) -> list[pathlib.Path]:
  """Writes example_<i>.png (one row each) and figure.png (all rows) for the first `num_images` images of the
  evaluation split that hold an unseen class; returns their paths."""
  workdir = pathlib.Path(workdir).expanduser()
  out = pathlib.Path(out) if out else workdir / "pictures"
  run = checkpoints.load_run(workdir, config, step)
  dataset = from_config.open_dataset(config)
  spec, names = dataset.spec, list(dataset.spec.classes)
  split = config.eval.get("split", "validation")
  examples = pipeline.eval_dataset(evaluation.evaluation_split(config, dataset), spec)
  chosen = [i for i in range(len(examples)) if np.isin(examples[i]["label"], spec.unseen).any()][:num_images]
  if not chosen:
    raise ValueError(f"no {split} image of {spec.name} holds an unseen class")
  segmenter = Segmenter(run.model, run.tokenizer, names, crop_size=spec.crop_size, stride=spec.eval_stride,
                        mesh=run.mesh, params=run.params)

  out.mkdir(parents=True, exist_ok=True)
  rows, paths = [], []
  for i in chosen:  # one image per call: evaluation images may differ in size
    ex = examples[i]
    image, label = ex["image"], ex["label"]
    if image.shape[:2] != label.shape:
      raise ValueError(f"{spec.name} {split} image {i}: image {image.shape[:2]} and label {label.shape} differ")
    logits, fused = segmenter.score_maps(image)  # (H, W, K), (h, w, K, N)
    prediction = np.asarray(metrics.predict_labels(logits)).astype(np.uint8)
    areas = [(label == k).sum() for k in spec.unseen]
    shown = spec.unseen[int(np.argmax(areas))]
    row = figure_row(image, label, prediction, np.asarray(fused[:, :, shown]), names, list(spec.unseen), shown)
    path = out / f"example_{i:04d}.png"
    row.save(path)
    rows.append(row)
    paths.append(path)
  figure = Image.new("RGB", (rows[0].width, sum(r.height + GAP for r in rows) - GAP), (255, 255, 255))
  y = 0
  for row in rows:
    figure.paste(row, (0, y))
    y += row.height + GAP
  figure.save(out / "figure.png")
  (out / "pictures.json").write_text(json.dumps(dict(step=run.step, split=split, images=chosen, files=[p.name for p in paths]),
                                                indent=2))
  return [out / "figure.png", *paths]


def main(argv, f: dict):
  del argv
  logging.set_verbosity(logging.WARNING)
  workdir = pathlib.Path(f["workdir"].value).expanduser()
  paths = write_pictures(workdir, load_run_config(workdir), num_images=f["num_images"].value, step=f["step"].value)
  print(f"pictures written to {paths[0].parent} (figure.png and one row per image)")


if __name__ == "__main__":  # flags defined only when run as a program: importing this module defines none
  _flags = dict(workdir=flags.DEFINE_string("workdir", None, "a training run's directory"),
                num_images=flags.DEFINE_integer("num_images", 4, "how many evaluation images (rows)"),
                step=flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)"))
  flags.mark_flags_as_required(["workdir"])
  app.run(functools.partial(main, f=_flags))
