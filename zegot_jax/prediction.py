"""Segmenting any image with any list of class names, using a trained run: the library behind
`python -m zegot_jax.predict` (predict.py, which documents the files written).

The image is read as 8-bit RGB (16-bit and float images scaled, `data/images.py`), resized so its short side is the
run's dataset's evaluation size, segmented with its sliding windows and stride through a `Segmenter` (exactly as
evaluation does), and the per-class sigmoid scores are resized back to the original image.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re

import jax
import ml_collections
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from zegot_jax import checkpoints, metrics
from zegot_jax.data import augment, images, registry
from zegot_jax.errors import ConfigError, DamagedFileError, MissingFileError
from zegot_jax.models import prompts
from zegot_jax.pictures import palette
from zegot_jax.segmenter import Segmenter

UNASSIGNED = 255


def read_image(path: str | pathlib.Path) -> np.ndarray:
  path = pathlib.Path(path)
  if not path.is_file():
    raise MissingFileError(f"image {path} does not exist")
  try:
    with Image.open(path) as image:
      image.load()
      return images.to_rgb8(image, str(path))
  except images.ImageModeError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (PIL raises many types for corrupt files)
    raise DamagedFileError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def output_dir(workdir: pathlib.Path, image_path: str | pathlib.Path) -> pathlib.Path:
  """<workdir>/predictions/<stem>-<hash of the image's full path>: one directory per image file."""
  path = pathlib.Path(image_path).expanduser().resolve()
  return workdir / "predictions" / f"{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


OUTPUTS = ("overlay.png", "labels.png", "summary.json", "mask_*.png")  # what predict writes: replaced on a rerun


def render_overlay(image: np.ndarray, labels: np.ndarray, class_names: list[str], alpha: float = 0.55) -> Image.Image:
  """The image with each class's pixels tinted, above a legend of the classes present (and their share)."""
  colours = palette(len(class_names))
  tinted = image.astype(np.float32)
  assigned = labels != UNASSIGNED
  tinted[assigned] = (1 - alpha) * tinted[assigned] + alpha * colours[labels[assigned]]
  overlay = Image.fromarray(tinted.astype(np.uint8))
  present = [(k, float((labels == k).mean())) for k in range(len(class_names)) if (labels == k).any()]
  font = ImageFont.load_default()
  row = 16
  legend = Image.new("RGB", (max(overlay.width, 160), row * max(len(present), 1) + 4), (255, 255, 255))
  draw = ImageDraw.Draw(legend)
  for i, (k, share) in enumerate(present):
    y = 2 + i * row
    draw.rectangle([4, y + 2, 16, y + 13], fill=tuple(int(c) for c in colours[k]))
    draw.text((22, y + 1), f"{class_names[k]} ({100 * share:.1f}%)", fill=(0, 0, 0), font=font)
  canvas = Image.new("RGB", (max(overlay.width, legend.width), overlay.height + legend.height), (255, 255, 255))
  canvas.paste(overlay, (0, 0))
  canvas.paste(legend, (0, overlay.height))
  return canvas


def image_logits(run: checkpoints.TrainedRun, config: ml_collections.ConfigDict, image: np.ndarray,
                 class_names: list[str]) -> jax.Array:
  """(H, W, K) logits of one image (H, W, 3) uint8 for any class list: resized to the run's dataset's evaluation
  scale and segmented with its windows and stride, exactly as evaluation does, then resized back."""
  spec = registry.make_builder(config.dataset, pathlib.Path(config.data_dir).expanduser()).spec
  segmenter = Segmenter(run.model, run.tokenizer, class_names, crop_size=spec.crop_size, stride=spec.eval_stride,
                        mesh=run.mesh, params=run.params)
  return segmenter.logits(augment.resize_short_side(image, spec.eval_short_side), image.shape[:2])


def predict(workdir: str | pathlib.Path, image_path: str | pathlib.Path, class_names: list[str], *,
            config: ml_collections.ConfigDict | None = None, step: int | None = None, threshold: float = 0.0,
            out: str | pathlib.Path | None = None) -> dict:
  """Segments one image; writes the files listed in predict.py's docstring and returns the summary."""
  workdir = pathlib.Path(workdir).expanduser()
  if not 0.0 <= threshold <= 1.0:
    raise ConfigError(f"--threshold={threshold}: expected a probability in [0, 1] (0 assigns every pixel)")
  config = config or checkpoints.read_run_config(workdir)
  try:
    names = prompts.check_class_names(class_names or [])
  except ValueError as e:
    raise ConfigError(f"--classes: {e}; give comma-separated names, e.g. --classes 'cat,grass,sky'") from e
  image = read_image(image_path)

  run = checkpoints.load_run(workdir, config, step)
  logits = image_logits(run, config, image, names)
  scores = np.asarray(jax.nn.sigmoid(logits))  # (H, W, K) per-class probabilities
  labels = np.asarray(metrics.predict_labels(logits)).astype(np.uint8)
  labels[scores.max(axis=-1) < threshold] = UNASSIGNED

  out = pathlib.Path(out) if out else output_dir(workdir, image_path)
  out.mkdir(parents=True, exist_ok=True)
  for pattern in OUTPUTS:  # an earlier run's files (e.g. masks of another class list) do not stay beside these
    for stale in out.glob(pattern):
      stale.unlink()
  render_overlay(image, labels, names).save(out / "overlay.png")
  Image.fromarray(labels).save(out / "labels.png")
  for k, name in enumerate(names):
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    Image.fromarray(((labels == k) * 255).astype(np.uint8)).save(out / f"mask_{k:03d}_{safe}.png")
  summary = dict(image=str(image_path), step=run.step, classes=names, threshold=threshold,
                 coverage={name: float((labels == k).mean()) for k, name in enumerate(names)},
                 unassigned=float((labels == UNASSIGNED).mean()), out=str(out))
  (out / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary
