"""Segmenting any image with any list of class names, using a trained run: the library behind
`python -m zegot_jax.predict` (predict.py, which documents the files written) and the browser app (`zegot_jax.app`).

A `Predictor` loads a run once. It reads the image as 8-bit RGB (16-bit and float images scaled,
`data/images.py`; turned upright by its EXIF orientation), resizes it so its short side is the run's dataset's
evaluation size, segments it with that dataset's sliding windows and stride through one `Segmenter` (exactly as
evaluation does; text embeddings kept per class list, programs compiled once per window count and number of
classes), and resizes the per-class logits back to the image. `write_outputs` turns a `Segmentation` into the
files that predict writes and the app shows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from zegot_jax import checkpoints, metrics
from zegot_jax.data import augment, images, registry
from zegot_jax.errors import ConfigError, DamagedFileError, MissingFileError
from zegot_jax.models import prompts
from zegot_jax.pictures import palette, resized
from zegot_jax.segmenter import Segmenter

UNASSIGNED = 255


def read_image(path: str | pathlib.Path, name: str | None = None) -> np.ndarray:
  """(H, W, 3) uint8 of an image file of any mode, upright (EXIF orientation applied); `name` is how errors call
  the file (default: its path)."""
  path = pathlib.Path(path)
  name = name or str(path)
  if not path.is_file():
    raise MissingFileError(f"image {name} does not exist")
  try:
    with Image.open(path) as image:
      image.load()
      return images.to_rgb8(ImageOps.exif_transpose(image), name)
  except images.ImageModeError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (PIL raises many types for corrupt files)
    raise DamagedFileError(f"{name}: not a readable image ({type(e).__name__}); expected a PNG, JPEG, BMP, GIF, "
                           f"TIFF or WebP file") from e


def fit_within(image: np.ndarray, max_side: int | None) -> np.ndarray:
  """The image downscaled (Lanczos, aspect kept) so that its long side is at most max_side; unchanged when it
  already fits or max_side is None."""
  h, w = image.shape[:2]
  if not max_side or max(h, w) <= max_side:
    return image
  scale = max_side / max(h, w)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


class ClassNamesError(ConfigError):
  """A class list that cannot be used: empty, with an empty or repeated name, or a prompt longer than the text
  tower takes."""


def check_class_names(class_names: Sequence[str]) -> list[str]:
  """The names stripped; ClassNamesError when the list is empty or a name is empty or repeated."""
  try:
    return prompts.check_class_names(class_names)
  except ValueError as e:
    raise ClassNamesError(str(e)) from e


def check_threshold(threshold: float, where: str = "--threshold") -> float:
  if not 0.0 <= threshold <= 1.0:
    raise ConfigError(f"{where}={threshold}: expected a probability in [0, 1] (0 assigns every pixel)")
  return float(threshold)


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


def file_name(prefix: str, k: int, name: str) -> str:
  """<prefix>_<index>_<class name with unsafe characters replaced>.png, e.g. mask_003_bus_stop.png"""
  return f"{prefix}_{k:03d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"


@dataclasses.dataclass(frozen=True)
class Segmentation:
  """One image segmented with one class list (everything at the image's size)."""

  image: np.ndarray  # (H, W, 3) uint8, as segmented
  class_names: list[str]
  logits: jax.Array  # (H, W, K) Y* (eq. 11), float32
  best: np.ndarray  # (H, W) uint8: the class of the highest logit
  confidence: np.ndarray  # (H, W) float32: the sigmoid probability of that class

  def labels(self, threshold: float = 0.0) -> np.ndarray:
    """(H, W) uint8 class indices, UNASSIGNED where the best class's probability is below `threshold`."""
    return np.where(self.confidence < threshold, UNASSIGNED, self.best).astype(np.uint8)


def write_outputs(segmentation: Segmentation, out: pathlib.Path, threshold: float = 0.0, **about) -> dict:
  """Writes overlay.png, labels.png, one mask per class and summary.json into `out` (an earlier run's files
  there are replaced); returns the summary: `about` (e.g. the image and the step), then the class list, the
  share of the image each class covers, the unassigned share and the files."""
  names = segmentation.class_names
  labels = segmentation.labels(threshold)
  out.mkdir(parents=True, exist_ok=True)
  for pattern in OUTPUTS:  # an earlier run's files (e.g. masks of another class list) do not stay beside these
    for stale in out.glob(pattern):
      stale.unlink()
  render_overlay(segmentation.image, labels, names).save(out / "overlay.png")
  Image.fromarray(labels).save(out / "labels.png")
  masks = [file_name("mask", k, name) for k, name in enumerate(names)]
  for k, file in enumerate(masks):
    Image.fromarray(((labels == k) * 255).astype(np.uint8)).save(out / file)
  summary = dict(**about, size=list(labels.shape), classes=names, threshold=threshold,
                 coverage={name: float((labels == k).mean()) for k, name in enumerate(names)},
                 unassigned=float((labels == UNASSIGNED).mean()), masks=masks, out=str(out))
  (out / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary


class Predictor:
  """A trained run, loaded once, that segments any image with any class list: `predict` and the app use it.

    predictor = Predictor("runs/demo")                          # the model, once
    segmentation = predictor.segment(image, ["zigzag", "dots"])  # (H, W, 3) uint8 image
    summary = write_outputs(segmentation, out_dir, threshold=0.3)

  One `Segmenter` serves every request: a class list's text embeddings are computed once and kept for the last
  16 lists; the model's program is compiled once per window count (images whose evaluation-scale size needs the
  same number of windows share it) and number of classes. Not thread-safe: callers serialize requests.
  """

  def __init__(self, workdir: str | pathlib.Path, config: ml_collections.ConfigDict | None = None,
               step: int | None = None):
    self.workdir = pathlib.Path(workdir).expanduser()
    self.config = config or checkpoints.read_run_config(self.workdir)
    self.run = checkpoints.load_run(self.workdir, self.config, step)
    self.spec = registry.make_builder(self.config.dataset, pathlib.Path(self.config.data_dir).expanduser()).spec
    self._segmenter: Segmenter | None = None

  @property
  def step(self) -> int:
    return self.run.step

  def segmenter(self, class_names: Sequence[str]) -> Segmenter:
    """The one Segmenter, set to this class list (ClassNamesError naming what is wrong with the list)."""
    try:
      if self._segmenter is None:
        self._segmenter = Segmenter(self.run.model, self.run.tokenizer, class_names,
                                    crop_size=self.spec.crop_size, stride=self.spec.eval_stride, mesh=self.run.mesh,
                                    params=self.run.params)
      else:
        self._segmenter.set_classes(class_names)
    except ValueError as e:  # an empty or repeated name, or a prompt too long for the text tower
      raise ClassNamesError(str(e)) from e
    return self._segmenter

  def logits(self, image: np.ndarray, class_names: Sequence[str]) -> jax.Array:
    """(H, W, K) logits of one image (H, W, 3) uint8: resized to the dataset's evaluation scale and segmented
    with its windows and stride, exactly as evaluation does, then resized back."""
    segmenter = self.segmenter(class_names)
    return segmenter.logits(augment.resize_short_side(image, self.spec.eval_short_side), image.shape[:2])

  def segment(self, image: np.ndarray, class_names: Sequence[str]) -> Segmentation:
    logits = self.logits(image, class_names)
    best = metrics.predict_labels(logits)
    confidence = jax.nn.sigmoid(logits.max(axis=-1))  # the best class's probability (sigmoid is monotonic)
    return Segmentation(image, list(self._segmenter.class_names), logits, np.asarray(best).astype(np.uint8),
                        np.asarray(confidence, np.float32))

  def score_maps(self, image: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """ZegOT's refined, layer-fused score maps S* (eq. 8) of the image resized to one window: (h, w, K, N) at
    the patch grid, as the pictures show them."""
    segmenter = self.segmenter(class_names)
    _, fused = segmenter.score_maps(resized(image, (segmenter.crop_size,) * 2))
    return np.asarray(fused, np.float32)


def predict(workdir: str | pathlib.Path, image_path: str | pathlib.Path, class_names: list[str], *,
            config: ml_collections.ConfigDict | None = None, step: int | None = None, threshold: float = 0.0,
            out: str | pathlib.Path | None = None, max_side: int | None = None) -> dict:
  """Segments one image; writes the files listed in predict.py's docstring and returns the summary."""
  workdir = pathlib.Path(workdir).expanduser()
  threshold = check_threshold(threshold)
  if max_side is not None and max_side < 1:
    raise ConfigError(f"--max_side={max_side}: expected a positive number of pixels (or no flag: full size)")
  config = config or checkpoints.read_run_config(workdir)
  try:
    names = check_class_names(class_names or [])  # before anything is loaded
    image = fit_within(read_image(image_path), max_side)
    predictor = Predictor(workdir, config, step)
    segmentation = predictor.segment(image, names)
  except ClassNamesError as e:
    raise ConfigError(f"--classes: {e}; give comma-separated names, e.g. --classes 'cat,grass,sky'") from e
  out = pathlib.Path(out) if out else output_dir(workdir, image_path)
  return write_outputs(segmentation, out, threshold, image=str(image_path), step=predictor.step)
