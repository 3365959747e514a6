r"""Pictures of a trained ZegOT, after the paper's Figure 1: for a few evaluation images, one row each of

  input | ground truth | prediction | the score map S* of each prompt for one unseen class

An evaluator the config asks for: `eval.pictures = N` draws the first N images of the evaluation split that hold
an unseen class, at every evaluation of a training run and at `python -m zegot_jax.evaluate`, into
<workdir>/pictures/ (example_<i>.png per row, figure.png with all rows, pictures.json naming the step).

Seen and unseen classes are coloured and named in the legend under each row; the prediction (the evaluation's
sliding-window logits) is dimmed where the ground truth has no class (background, which is not evaluated); the
unseen class shown is the one covering most of that image. Score maps are ZegOT's fused, transport-refined maps
S* (eq. 8) at the patch grid of the image resized to one window, each scaled to its own min-max, brighter is
higher.
"""

from __future__ import annotations

import itertools
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from zegot_jax import metrics
from zegot_jax.errors import ConfigError
from zegot_jax.segmenter import Segmenter

PANEL = 128  # pixels per panel side
GAP = 4
HEADER = 14  # title strip above each panel
LEGEND_ROW = 14
NO_LABEL = (40, 40, 40)  # ground-truth pixels without a class (background, ignore)


def palette(n: int) -> np.ndarray:
  """n well-separated RGB colours (golden-ratio hues): (n, 3) uint8."""
  hues = (np.arange(n) * 0.618033988749895) % 1.0
  rgb = []
  for h in hues:
    i, f = int(h * 6), h * 6 - int(h * 6)
    v, s = 0.95, 0.75
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb.append([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i % 6])
  return (np.asarray(rgb) * 255).astype(np.uint8)


def _heat(scores: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
  """(h, w) floats → (h, w, 3) uint8, dark blue (lo) → yellow (hi); lo, hi default to the map's min and max."""
  lo = float(scores.min()) if lo is None else lo
  hi = float(scores.max()) if hi is None else hi
  t = np.clip((scores - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
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


def _prompt_panels(prompt_maps: np.ndarray, name: str, font) -> list[Image.Image]:
  """One panel per prompt of a class's score maps (h, w, N), each min-max scaled."""
  return [_panel(_heat(prompt_maps[..., n]), f"{name}: prompt {n + 1}", font) for n in range(prompt_maps.shape[-1])]


def _strip(panels: list[Image.Image], height: int) -> Image.Image:
  """The panels side by side, GAP apart, on a white strip of `height`."""
  row = Image.new("RGB", (len(panels) * (PANEL + GAP) - GAP, height), (255, 255, 255))
  for i, panel in enumerate(panels):
    row.paste(panel, (i * (PANEL + GAP), 0))
  return row


def figure_row(image: np.ndarray, label: np.ndarray, prediction: np.ndarray, prompt_maps: np.ndarray,
               class_names: list[str], unseen: list[int], shown_class: int) -> Image.Image:
  """One row: image (H, W, 3) uint8, label and prediction (H, W) class indices, prompt_maps (h, w, N) of
  `shown_class`; the legend names every class in the label or the prediction, unseen ones marked."""
  font = ImageFont.load_default()
  colours = palette(len(class_names))
  panels = [_panel(image, "input", font), _panel(_colour_labels(label, colours), "ground truth", font),
            _panel(_dim_unlabelled(_colour_labels(prediction, colours), label, len(class_names)), "prediction",
                   font)]
  panels += _prompt_panels(prompt_maps, class_names[shown_class], font)
  present = sorted({int(k) for k in np.unique(np.concatenate([label.ravel(), prediction.ravel()]))
                    if k < len(class_names)})
  legend_rows = max(1, -(-len(present) // 4))
  row = _strip(panels, HEADER + PANEL + GAP + legend_rows * LEGEND_ROW)
  width = row.width
  draw = ImageDraw.Draw(row)
  column = width // 4
  for j, k in enumerate(present):
    x, y = (j % 4) * column, HEADER + PANEL + GAP + (j // 4) * LEGEND_ROW
    draw.rectangle([x + 2, y + 2, x + 12, y + 12], fill=tuple(int(c) for c in colours[k]))
    text = class_names[k] + (" (unseen)" if k in unseen else " (seen)")
    draw.text((x + 16, y + 1), text, fill=(0, 0, 0), font=font)
  return row


def class_maps_row(image: np.ndarray, prompt_maps: np.ndarray, probability: np.ndarray, name: str) -> Image.Image:
  """Figure 1 for one class of any image: the input, the score map S* (eq. 8) of each of its N prompts
  (h, w, N; each min-max scaled), their sum M(S*) (eq. 9), and its final probability σ(Y*) (eq. 11) at the
  image's size (H, W), scaled 0 (dark) to 1 (bright)."""
  font = ImageFont.load_default()
  panels = [_panel(image, "input", font), *_prompt_panels(prompt_maps, name, font),
            _panel(_heat(prompt_maps.sum(-1)), f"{name}: sum M(S*)", font),
            _panel(_heat(probability, 0.0, 1.0), f"{name}: final", font)]
  return _strip(panels, HEADER + PANEL)


def holding_unseen(examples: Sequence[dict], unseen: Sequence[int], count: int) -> list[int]:
  """The indices of the first `count` examples whose "label" holds an unseen class."""
  holding = (i for i in range(len(examples)) if np.isin(examples[i]["label"], unseen).any())
  return list(itertools.islice(holding, count))


def resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(h, w, 3) uint8 → (H, W, 3) uint8, bilinear; unchanged when already that size."""
  if image.shape[:2] == tuple(size):
    return image
  return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))


class Pictures:
  """Figure 1 of a run's parameters on a few evaluation images, drawn through the evaluation's own `Segmenter`.

    pictures = Pictures(segmenter, examples, spec, split="test", out=workdir / "pictures", num_images=4)
    figure_path = pictures(params, step)       # writes the rows, figure.png and pictures.json

  `examples`: the evaluation split (indexable, each with "image" at the evaluation scale and "label" at its
  original size). The images shown are chosen once, here: the first `num_images` holding an unseen class.
  `seen_mask`, `seen_bias`: the evaluation's calibration of the argmax (inductive setting).
  """

  def __init__(self, segmenter: Segmenter, examples: Sequence[dict], spec, *, split: str, out: pathlib.Path,
               num_images: int, seen_mask: Any = None, seen_bias: float = 0.0):
    self.segmenter, self.examples, self.spec, self.split, self.out = segmenter, examples, spec, split, out
    self.seen_mask, self.seen_bias = seen_mask, seen_bias  # the prediction is the evaluation's (metrics.predict_labels)
    self.chosen = holding_unseen(examples, spec.unseen, num_images)
    if not self.chosen:
      raise ConfigError(f"config eval.pictures={num_images}: no {split} image of {spec.name} holds an unseen class; "
                       f"set --config.eval.pictures=0")

  def row(self, index: int) -> Image.Image:
    """The figure row of evaluation image `index`, with the segmenter's current parameters."""
    spec, names = self.spec, list(self.spec.classes)
    ex = self.examples[index]
    label = ex["label"]
    logits = self.segmenter.logits(ex["image"], label.shape)  # (H, W, K), as evaluation computes it
    prediction = np.asarray(metrics.predict_labels(logits, self.seen_mask, self.seen_bias)).astype(np.uint8)
    window = resized(ex["image"], (self.segmenter.crop_size,) * 2)
    _, fused = self.segmenter.score_maps(window)  # S*: (h, w, K, N)
    shown = spec.unseen[int(np.argmax([(label == k).sum() for k in spec.unseen]))]
    return figure_row(resized(ex["image"], label.shape), label, prediction, np.asarray(fused[:, :, shown]), names,
                      list(spec.unseen), shown)

  def __call__(self, params: Any, step: int) -> pathlib.Path:
    """Draws every chosen image with `params` (the full tree) and writes them (process 0); returns figure.png."""
    self.segmenter.set_params(params)  # the evaluation's text embeddings when it has just run with these params
    rows = [self.row(i) for i in self.chosen]
    figure_path = self.out / "figure.png"
    if jax.process_index() != 0:
      return figure_path
    self.out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, row in zip(self.chosen, rows):
      files.append(f"example_{i:04d}.png")
      row.save(self.out / files[-1])
    figure = Image.new("RGB", (rows[0].width, sum(r.height + GAP for r in rows) - GAP), (255, 255, 255))
    y = 0
    for row in rows:
      figure.paste(row, (0, y))
      y += row.height + GAP
    figure.save(figure_path)
    (self.out / "pictures.json").write_text(json.dumps(dict(step=step, split=self.split, images=self.chosen,
                                                            files=files), indent=2))
    return figure_path
