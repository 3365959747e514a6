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
import glob
import hashlib
import json
import os
import pathlib
import re
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps
from tqdm import tqdm

from zegot_jax import checkpoints, errors, metrics
from zegot_jax.data import augment, images, registry
from zegot_jax.errors import ConfigError, DamagedFileError, MissingFileError, one_line
from zegot_jax.models import encoders, prompts
from zegot_jax.pictures import palette, resized
from zegot_jax.segmenter import Segmenter

UNASSIGNED = 255  # labels.png's "no class" value with up to 255 classes (8-bit); with more, 65535 (16-bit)
MAX_CLASSES = 65535  # a 16-bit labels.png holds class indices 0-65534 and "no class"


def label_dtype(num_classes: int) -> type:
  """The smallest unsigned type that holds class indices 0..num_classes-1 and a "no class" value above them:
  uint8 up to 255 classes (255 = none), uint16 up to 65535 (65535 = none)."""
  if num_classes > MAX_CLASSES:
    raise ClassNamesError(f"{num_classes} classes: at most {MAX_CLASSES} fit a 16-bit label image")
  return np.uint8 if num_classes <= 255 else np.uint16


def unassigned(num_classes: int) -> int:
  """The label value of pixels with no class: 255 (8-bit labels) or 65535 (16-bit)."""
  return int(np.iinfo(label_dtype(num_classes)).max)


def read_image(path: str | pathlib.Path, name: str | None = None, max_pixels: int | None = None) -> np.ndarray:
  """(H, W, 3) uint8 of an image file of any mode, upright (EXIF orientation applied); `name` is how errors call
  the file (default: its path). An image over `max_pixels` (default: PIL's decompression-bomb limit) is refused
  before it is decoded."""
  path = pathlib.Path(path)
  name = name or str(path)
  check_image_path(path, name)
  kind = None  # the format PIL recognised, once it has
  try:
    with Image.open(path) as image:
      kind = image.format
      images.check_pixels(image, name, max_pixels)
      image.load()
      return images.to_rgb8(ImageOps.exif_transpose(image), name)
  except (images.ImageModeError, images.ImageSizeError):
    raise
  except Image.DecompressionBombError as e:
    raise images.ImageSizeError(images.bomb_message(e, name)) from e
  except Exception as e:  # pylint: disable=broad-except  (PIL raises many types for corrupt files)
    if isinstance(e, OSError) and not isinstance(e, Image.UnidentifiedImageError) and e.errno is not None:
      raise DamagedFileError(f"{name}: cannot be read ({e.strerror}); check the file and its permissions") from e
    if kind is not None:  # recognised, but truncated or in a variant PIL cannot decode
      raise DamagedFileError(f"{name}: a {kind} file that cannot be decoded ({type(e).__name__}: "
                             f"{one_line(str(e))[:120]}); it may be truncated, or save it again as a PNG or "
                             f"JPEG") from e
    why = "" if isinstance(e, Image.UnidentifiedImageError) else f": {one_line(str(e))[:120]}"
    raise DamagedFileError(f"{name}: not a readable image ({type(e).__name__}{why}); expected a PNG, JPEG, BMP, GIF, "
                           f"TIFF or WebP file") from e


def check_image_path(path: pathlib.Path, name: str) -> None:
  """MissingFileError unless `path` is a regular file (a folder, a FIFO or a device is named as what it is)."""
  if path.is_file():
    return
  if path.is_dir():
    raise MissingFileError(f"image {name} is a folder, not an image file; give one image file")
  if path.exists():
    raise MissingFileError(f"image {name} is not a regular file (a pipe, socket or device); give an image file")
  raise MissingFileError(f"image {name} does not exist")


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


WRITER = "zegot_jax.predict"  # summary.json's "written_by": the folder is predict's own, its files replaceable
FIXED_OUTPUTS = ("overlay.png", "labels.png", "summary.json")  # besides the masks (summary.json lists them)


class OutputFolderError(ConfigError):
  """An output folder that predict may not write into: a file, or a folder holding files predict did not write."""


def claim_output_dir(out: pathlib.Path, where: str = "--out", create: bool = True) -> list[pathlib.Path]:
  """Makes `out` predict's folder: creates it (unless `create` is False: only the checks, before any work), or
  accepts it when empty or written by predict before. Returns the files an earlier predict wrote there (to
  replace); a folder holding anything else is refused, so that nothing of the user's is overwritten or deleted."""
  if out.exists() and not out.is_dir():
    raise OutputFolderError(f"{_named(where, out)} is a file; give a folder (it is created if missing)")
  present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
  earlier = _summary_of_predict(out / "summary.json") if present else {}
  if earlier is None:
    raise OutputFolderError(f"{_named(where, out)} holds files that predict did not write ({', '.join(present[:3])}"
                            f"{', ...' if len(present) > 3 else ''}); give a new or empty folder, or one that predict "
                            f"wrote before (it replaces its own files there)")
  existing = next(p for p in (out, *out.absolute().parents) if p.exists())
  if not os.access(existing, os.W_OK | os.X_OK):
    raise errors.StorageError(f"{_named(where, out)}: {existing} is not writable (a read-only disk, or no "
                              f"permission); give a folder you can write to")
  if create:
    with errors.storage(f"{_named(where, out)}: cannot create the folder"):
      out.mkdir(parents=True, exist_ok=True)
  return [out / name for name in (*FIXED_OUTPUTS, *earlier.get("masks", [])) if name in present]


def _named(where: str, out: pathlib.Path) -> str:
  return f"{where}={out}" if where.startswith("--") else f"{where} {out}"


def _summary_of_predict(path: pathlib.Path) -> dict | None:
  try:
    summary = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  return summary if isinstance(summary, dict) and summary.get("written_by") == WRITER else None


def render_overlay(image: np.ndarray, labels: np.ndarray, class_names: list[str], alpha: float = 0.55) -> Image.Image:
  """The image with each class's pixels tinted, above a legend of the classes present (and their share); labels
  as Segmentation.labels gives them."""
  colours = palette(len(class_names))
  tinted = image.astype(np.float32)
  assigned = labels != unassigned(len(class_names))
  tinted[assigned] = (1 - alpha) * tinted[assigned] + alpha * colours[labels[assigned]]
  overlay = Image.fromarray(tinted.astype(np.uint8))
  counts = np.bincount(labels[assigned].ravel(), minlength=len(class_names))
  present = [(int(k), counts[k] / labels.size) for k in np.flatnonzero(counts)]
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
  best: np.ndarray  # (H, W) int32: the class of the highest logit
  confidence: np.ndarray  # (H, W) float32: the sigmoid probability of that class

  @property
  def unassigned(self) -> int:
    """The label of pixels with no class: 255, or 65535 with more than 255 classes."""
    return unassigned(len(self.class_names))

  def labels(self, threshold: float = 0.0) -> np.ndarray:
    """(H, W) class indices as label_dtype (uint8 up to 255 classes, else uint16), `unassigned` where the best
    class's probability is below `threshold`."""
    dtype = label_dtype(len(self.class_names))
    return np.where(self.confidence < threshold, self.unassigned, self.best).astype(dtype)


def write_outputs(segmentation: Segmentation, out: pathlib.Path, threshold: float = 0.0, where: str = "--out",
                  **about) -> dict:
  """Writes overlay.png, labels.png (8-bit, or 16-bit over 255 classes), one mask per class and summary.json into
  `out`, a folder that claim_output_dir accepts (an earlier predict's files there are replaced; anyone else's
  make it refused); returns the summary: `about` (e.g. the image and the step), then the class list, the share
  of the image each class covers, the unassigned share and the files. `where` names `out` in errors."""
  names = segmentation.class_names
  labels = segmentation.labels(threshold)
  stale = claim_output_dir(out, where)
  counts = np.bincount(labels.ravel(), minlength=segmentation.unassigned + 1) / labels.size
  masks = [file_name("mask", k, name) for k, name in enumerate(names)]
  p5, p50, p95 = (float(v) for v in np.percentile(segmentation.confidence, [5, 50, 95]))
  summary = dict(**about, size=list(labels.shape), classes=names, threshold=threshold,
                 confidence=dict(p5=p5, p50=p50, p95=p95),  # the best class's probability over the pixels
                 coverage={name: float(counts[k]) for k, name in enumerate(names)},
                 unassigned=float(counts[segmentation.unassigned]), masks=masks, out=str(out), written_by=WRITER)
  with errors.storage(f"{_named(where, out)}: could not write the outputs"):
    for path in stale:  # an earlier predict's files (e.g. masks of another class list) do not stay beside these
      path.unlink()
    render_overlay(segmentation.image, labels, names).save(out / "overlay.png")
    Image.fromarray(labels).save(out / "labels.png")
    for k, file in enumerate(masks):
      Image.fromarray(((labels == k) * 255).astype(np.uint8)).save(out / file)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))  # last: the folder is predict's once it is there
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
    self.vocabulary = prompts.closed_vocabulary(self.run.tokenizer)  # None: an open vocabulary (a real CLIP)
    self._segmenter: Segmenter | None = None

  def unknown_words(self, class_names: Sequence[str]) -> list[str]:
    """Words of the class names this model's closed vocabulary lacks (they are segmented, but mean nothing to it)."""
    return prompts.unknown_words(class_names, self.vocabulary)

  def describe_model(self) -> str:
    """Which text encoder is loaded and what words it knows, in one sentence."""
    path = pathlib.Path(getattr(self.run.tokenizer, "name_or_path", "") or "?")
    encoder = encoders.family_of(self.run.model.clip_config).title
    if self.vocabulary is None:
      return f"Its {encoder} ({path.name}) reads any English words."
    return (f"Its {encoder} ({path.name}) knows only the {len(self.vocabulary)} words it was trained on: "
            f"{', '.join(self.vocabulary)}; other words are segmented but mean nothing to it (train with a real "
            f"CLIP for open vocabularies).")

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
    return Segmentation(image, list(self._segmenter.class_names), logits, np.asarray(best, np.int32),
                        np.asarray(confidence, np.float32))

  def score_maps(self, image: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """ZegOT's refined, layer-fused score maps S* (eq. 8) of the image resized to one window: (h, w, K, N) at
    the patch grid, as the pictures show them."""
    segmenter = self.segmenter(class_names)
    _, fused = segmenter.score_maps(resized(image, (segmenter.crop_size,) * 2))
    return np.asarray(fused, np.float32)


def _checked_request(workdir: pathlib.Path, class_names: list[str], threshold: float, max_side: int | None,
                     config: ml_collections.ConfigDict | None) -> tuple[list[str], float, ml_collections.ConfigDict]:
  """(names, threshold, config) of a predict request, checked before anything is loaded."""
  threshold = check_threshold(threshold)
  if max_side is not None and max_side < 1:
    raise ConfigError(f"--max_side={max_side}: expected a positive number of pixels (0: full size)")
  config = config or checkpoints.read_run_config(workdir)
  try:
    names = check_class_names(class_names or [])
    label_dtype(len(names))
  except ClassNamesError as e:
    raise ConfigError(f"--classes: {e}; give comma-separated names, e.g. --classes 'cat,grass,sky'") from e
  return names, threshold, config


def predict(workdir: str | pathlib.Path, image_path: str | pathlib.Path, class_names: list[str], *,
            config: ml_collections.ConfigDict | None = None, step: int | None = None, threshold: float = 0.0,
            out: str | pathlib.Path | None = None, max_side: int | None = None) -> dict:
  """Segments one image; writes the files listed in predict.py's docstring and returns the summary."""
  workdir = pathlib.Path(workdir).expanduser()
  names, threshold, config = _checked_request(workdir, class_names, threshold, max_side, config)
  where = "--out" if out else "the output folder (another one: --out)"
  out = pathlib.Path(out).expanduser() if out else output_dir(workdir, image_path)
  image = fit_within(read_image(image_path), max_side)
  claim_output_dir(out, where, create=False)
  predictor = Predictor(workdir, config, step)
  try:
    segmentation = predictor.segment(image, names)
  except ClassNamesError as e:  # a prompt too long for the text tower
    raise ConfigError(f"--classes: {e}; give comma-separated names, e.g. --classes 'cat,grass,sky'") from e
  return write_outputs(segmentation, out, threshold, where, image=str(image_path), step=predictor.step,
                       unknown_words=predictor.unknown_words(names))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def expand_images(inputs: Sequence[str | pathlib.Path]) -> list[pathlib.Path]:
  """The image files that `inputs` name, in order, each once: a file as given; a folder's image files (by suffix,
  not its subfolders), sorted; a glob pattern's matches, sorted. ConfigError naming an input that names none."""
  found: dict[pathlib.Path, None] = {}
  for given in inputs:
    text = str(given)
    if glob.has_magic(text):
      matches = sorted(pathlib.Path(p) for p in glob.glob(os.path.expanduser(text)) if os.path.isfile(p))
      if not matches:
        raise MissingFileError(f"--image={text}: the pattern matches no file; quote it so the shell leaves it to "
                               f"predict, or give files or a folder")
    elif (path := pathlib.Path(text).expanduser()).is_dir():
      matches = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
      if not matches:
        raise MissingFileError(f"--image={text}: the folder holds no image files (looked for "
                               f"{', '.join(IMAGE_SUFFIXES)}); give image files, a folder of them or a pattern")
    else:
      matches = [path]
    found.update(dict.fromkeys(matches))
  return list(found)


def predict_many(workdir: str | pathlib.Path, inputs: Sequence[str | pathlib.Path], class_names: list[str], *,
                 config: ml_collections.ConfigDict | None = None, step: int | None = None, threshold: float = 0.0,
                 out: str | pathlib.Path | None = None, max_side: int | None = None,
                 progress: bool = True) -> dict:
  """Segments every image that `inputs` name (files, folders, patterns: expand_images) with one model load; each
  image's files go to its own folder (<out or <workdir>/predictions>/<name>-<hash of its path>/), and one table of
  the batch, a JSON line per image (its folder and shares, or why it could not be segmented), to
  <that root>/predict_<time>.jsonl. An image that cannot be read is recorded and the others go on. Returns
  {"rows", "table", "failed"}."""
  workdir = pathlib.Path(workdir).expanduser()
  names, threshold, config = _checked_request(workdir, class_names, threshold, max_side, config)
  paths = expand_images(inputs)
  root = pathlib.Path(out).expanduser() if out else workdir / "predictions"
  where = "--out" if out else "the output folder (another one: --out)"
  if root.exists() and not root.is_dir():
    raise OutputFolderError(f"{_named(where, root)} is a file; give a folder (it is created if missing)")
  predictor = Predictor(workdir, config, step)
  rows = []
  for path in tqdm(paths, desc="predict", unit="image", disable=not progress, dynamic_ncols=True):
    folder = root / output_dir(workdir, path).name
    try:
      image = fit_within(read_image(path), max_side)
      summary = write_outputs(predictor.segment(image, names), folder, threshold, where, image=str(path),
                              step=predictor.step, unknown_words=predictor.unknown_words(names))
      rows.append(dict(image=str(path), out=str(folder), size=summary["size"], unassigned=summary["unassigned"],
                       coverage=summary["coverage"]))
    except errors.UserError as e:
      rows.append(dict(image=str(path), error=one_line(str(e))))
  table = root / f"predict_{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}.jsonl"
  with errors.storage(f"{_named(where, root)}: could not write the batch's table"):
    root.mkdir(parents=True, exist_ok=True)
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
  return dict(rows=rows, table=str(table), failed=sum("error" in row for row in rows),
              unknown_words=predictor.unknown_words(names))
