"""What the app does for each request, without the web page: parse the class list, read the image, segment it
through the run's one `Predictor`, write the files `predict` writes and describe them for the page.

Everything here returns plain values (file paths, dicts, messages), so the page (`ui.py`) only wires them to its
components, and tests can call it directly. Requests are served one at a time (one lock): the Predictor's
Segmenter holds the current class list.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import shutil
import threading
import time
from collections import OrderedDict

import jax
import numpy as np
from PIL import Image

from zegot_jax import confidence, evaluation, prediction
from zegot_jax.data import registry
from zegot_jax.errors import ConfigError, UserError, one_line
from zegot_jax.pictures import class_maps_row, holding_unseen

MAX_SIDE = 1024  # images with a longer side are downscaled to it (the outputs then have the downscaled size)
KEEP_REQUESTS = 32  # output directories kept (older ones are deleted)
# What one request may hold, so that one user cannot exhaust the server: the upload's size (enforced by the server
# before the file is kept), its decoded pixels (checked from the header, before decoding) and the class count
# (the logits hold max_side² × classes floats: 4 MB per class at 1024 px).
MAX_UPLOAD_MB = 50
MAX_PIXELS = 50_000_000
MAX_CLASSES = 64


class InputError(UserError, ValueError):
  """Something the user gave the page that cannot be used: shown in the page as one line."""


def parse_class_names(text: str | None) -> list[str]:
  """Class names as typed, separated by commas or new lines (spaces around them and blank lines ignored);
  InputError naming what is wrong, or when there are over MAX_CLASSES."""
  lines = [line for line in (text or "").splitlines() if line.strip()]
  names = [n.strip() for n in ",".join(lines).split(",")]
  if names == [""]:
    raise InputError("no class names: type them separated by commas, e.g. 'zigzag, dots, plain'")
  if len(names) > MAX_CLASSES:
    raise InputError(f"{len(names)} class names: the app takes at most {MAX_CLASSES} per request (predict takes "
                     f"more)")
  try:
    return prediction.check_class_names(names)
  except prediction.ClassNamesError as e:
    raise _class_names_error(e) from e


def _class_names_error(error: Exception) -> InputError:
  return InputError(f"class names: {error}; type each name once, separated by commas, e.g. 'zigzag, dots, plain'")


@dataclasses.dataclass(frozen=True)
class Result:
  """One segmentation as the page shows it."""

  overlay: str  # overlay.png: the image, each class tinted, a legend of names and shares
  masks: list[tuple[str, str]]  # (mask_<k>_<name>.png, caption) per class
  shares: dict[str, float]  # "name (seen)" → share of the image, for the classes present; "unassigned" if any
  class_names: list[str]
  shown: str  # the class whose score maps are drawn first
  score_maps: str  # class_maps_row of `shown`
  message: str  # one line: the image, its size, timings


@dataclasses.dataclass
class _Kept:
  """A segmentation kept for later requests, with its score maps once drawn."""

  segmentation: prediction.Segmentation
  fused: np.ndarray | None = None  # S* (h, w, K, N) of the image resized to one window


class Session:
  """The app's state: one Predictor (one model load), the last few segmentations, the request directories.

    session = Session(prediction.Predictor("runs/demo"), out_root)
    result = session.segment("photo.jpg", "zigzag, dots, plain", threshold=0.0)
    path = session.score_maps("photo.jpg", "zigzag, dots, plain", "dots")
  """

  def __init__(self, predictor: prediction.Predictor, out_root: str | pathlib.Path, *, max_side: int = MAX_SIDE,
               cache: int = 4):
    self.predictor, self.max_side = predictor, max_side
    self.out_root = pathlib.Path(out_root)
    self.out_root.mkdir(parents=True, exist_ok=True)
    spec = predictor.spec
    self.dataset_classes = {name.lower(): ("unseen" if k in spec.unseen else "seen")
                            for k, name in enumerate(spec.classes)}
    self._kept: OrderedDict[tuple, _Kept] = OrderedDict()
    self._cache = cache
    self._requests = 0
    self._lock = threading.Lock()
    self.measured = confidence.read(predictor.workdir, predictor.step)  # None: the run was not measured

  # What the page says about the run.

  def describe(self) -> str:
    spec, step = self.predictor.spec, self.predictor.step
    seen = [n for k, n in enumerate(spec.classes) if k not in spec.unseen]
    unseen = [spec.classes[k] for k in spec.unseen]
    return (f"Run `{self.predictor.workdir}`, step {step}, trained on `{spec.name}`. "
            f"{self.predictor.describe_model()} The dataset's classes are marked: seen (labelled in training): "
            f"{', '.join(seen)}; unseen (never labelled): "
            f"{', '.join(unseen)}. Images over {self.max_side} px are downscaled to {self.max_side} px. Limits per "
            f"request: {MAX_UPLOAD_MB} MB per file, {MAX_PIXELS // 1_000_000} megapixels, {MAX_CLASSES} classes.")

  def threshold_setting(self) -> tuple[float, float, str]:
    """The threshold slider's (default, maximum, label): from the run's confidence.json, when it measured this
    checkpoint, the suggested threshold and the 95th percentile of the best class's probability; else 0 and 1."""
    label = "threshold: pixels whose best class probability is below it stay unassigned"
    if self.measured is None:
      return 0.0, 1.0, (f"{label} (python -m zegot_jax.tools.confidence --workdir {self.predictor.workdir} "
                        f"measures which thresholds remove mostly wrong pixels)")
    default = self.measured["suggested"]["threshold"]
    return (default, max(default, confidence.slider_maximum(self.measured["all"])),
            f"{label}; {confidence.describe_suggestion(self.measured)}")

  def tag(self, name: str) -> str:
    """'name (seen)', 'name (unseen)' or 'name (new)': what the run's dataset knows of a class name."""
    return f"{name} ({self.dataset_classes.get(name.lower(), 'new')})"

  def default_classes(self) -> str:
    return ", ".join(self.predictor.spec.classes)

  def warm_up(self) -> float:
    """Segments a blank window-sized image with the dataset's classes and draws its score maps, so that the
    model's programs for the commonest request (one window, the default class list) are compiled before the
    first user arrives; returns the seconds it took."""
    start = time.perf_counter()
    size = self.predictor.spec.crop_size
    segmentation = self.predictor.segment(np.zeros((size, size, 3), np.uint8), list(self.predictor.spec.classes))
    self.predictor.score_maps(segmentation.image, segmentation.class_names)
    return time.perf_counter() - start

  # Requests.

  def read(self, path: str | pathlib.Path | None) -> tuple[np.ndarray, str, tuple[int, int]]:
    """(the image as segmented, its name, its size as uploaded); InputError when there is none or it is not an
    image."""
    if not path:
      raise InputError("no image: upload one (PNG, JPEG, ...) or pick an example")
    name = pathlib.Path(path).name
    image = prediction.read_image(path, name=name, max_pixels=MAX_PIXELS)
    return prediction.fit_within(image, self.max_side), name, image.shape[:2]

  def _segmentation(self, path: str, names: list[str]) -> tuple[_Kept, str, str]:
    """The segmentation of (file contents, class list), kept for the last few requests (a threshold or a
    chosen class neither segments again nor recomputes the score maps); also the image's name and how it was
    read."""
    image, name, size = self.read(path)
    key = (hashlib.sha256(image.tobytes()).hexdigest(), image.shape, tuple(names))
    note = f"{name}: {size[1]}×{size[0]}" + (f", downscaled to {image.shape[1]}×{image.shape[0]}"
                                              if image.shape[:2] != size else "")
    if key in self._kept:
      self._kept.move_to_end(key)
      return self._kept[key], name, note
    start = time.perf_counter()
    try:
      segmentation = self.predictor.segment(image, names)
    except prediction.ClassNamesError as e:  # a name too long for the text tower
      raise _class_names_error(e) from e
    jax.block_until_ready(segmentation.logits)
    note += f", segmented in {time.perf_counter() - start:.2f} s"
    self._kept[key] = _Kept(segmentation)
    while len(self._kept) > self._cache:
      self._kept.popitem(last=False)
    return self._kept[key], name, note

  def _request_dir(self) -> pathlib.Path:
    self._requests += 1
    out = self.out_root / f"request_{self._requests:06d}"
    for old in sorted(self.out_root.glob("request_*"))[:-KEEP_REQUESTS]:
      shutil.rmtree(old, ignore_errors=True)
    return out

  def segment(self, path: str | None, class_text: str | None, threshold: float = 0.0,
              shown: str | None = None) -> Result:
    """Segments the image with the typed classes; writes predict's files into a new request directory."""
    names = parse_class_names(class_text)
    threshold = prediction.check_threshold(float(threshold), "threshold")
    with self._lock:
      kept, name, note = self._segmentation(path, names)
      out = self._request_dir()
      summary = prediction.write_outputs(kept.segmentation, out, threshold, image=name, step=self.predictor.step)
      shown = shown if shown in names else self._first_shown(summary)
      maps = self._draw_score_maps(kept, names.index(shown), out)
    c = summary["confidence"]
    note += (f"; best-class probability {c['p5']:.2f}–{c['p95']:.2f} over 90% of the pixels (a threshold in that "
             f"range leaves the less sure ones unassigned)")
    unknown = self.predictor.unknown_words(names)
    if unknown:
      note += f"; unknown to this model: {', '.join(unknown)} (segmented, but they mean nothing to it)"
    shares = {self.tag(n): share for n, share in summary["coverage"].items() if share > 0}
    if summary["unassigned"] > 0:
      shares["unassigned"] = summary["unassigned"]
    masks = [(str(out / file), f"{self.tag(n)}: {100 * summary['coverage'][n]:.1f}%")
             for file, n in zip(summary["masks"], names)]
    return Result(str(out / "overlay.png"), masks, shares, names, shown, maps, note)

  def score_maps(self, path: str | None, class_text: str | None, shown: str) -> str:
    """The per-prompt score maps of one class (a new choice in the page): the image file drawn."""
    names = parse_class_names(class_text)
    if shown not in names:
      raise InputError(f"class {shown!r} is not in the class list: segment with it first")
    with self._lock:
      kept, _, _ = self._segmentation(path, names)
      return self._draw_score_maps(kept, names.index(shown), self._request_dir())

  def _first_shown(self, summary: dict) -> str:
    """The class whose maps are drawn first: the unseen class covering most of the image, else the largest."""
    coverage = summary["coverage"]
    unseen = [n for n in coverage if self.dataset_classes.get(n.lower()) == "unseen" and coverage[n] > 0]
    return max(unseen or coverage, key=lambda n: coverage[n])

  def _draw_score_maps(self, kept: _Kept, k: int, out: pathlib.Path) -> str:
    segmentation = kept.segmentation
    if kept.fused is None:  # one forward pass per segmentation, whichever classes are drawn
      kept.fused = self.predictor.score_maps(segmentation.image, segmentation.class_names)  # (h, w, K, N)
    probability = np.asarray(jax.nn.sigmoid(segmentation.logits[..., k]))
    name = segmentation.class_names[k]
    out.mkdir(parents=True, exist_ok=True)
    path = out / prediction.file_name("score_maps", k, name)
    class_maps_row(segmentation.image, kept.fused[:, :, k], probability, name).save(path)
    return str(path)

  # Examples.

  def examples(self, count: int) -> list[str]:
    """Up to `count` images of the run's evaluation split that hold an unseen class, as PNG files, when the
    run's dataset is built in its data_dir (nothing is built here); [] otherwise."""
    config = self.predictor.config
    data_dir = pathlib.Path(config.data_dir).expanduser()
    if count < 1 or not registry.make_builder(config.dataset, data_dir).is_prepared():
      return []
    dataset = registry.load(config.dataset, data_dir)
    try:
      source = evaluation.evaluation_split(config, dataset)
    except ConfigError:  # the run's config names a split the dataset lacks: no examples, not an error here
      return []
    out = self.out_root / "examples"
    out.mkdir(parents=True, exist_ok=True)
    prefix = f"{dataset.spec.name.replace('/', '_')}_{evaluation.evaluation_split_name(config)}"
    paths = []
    for i in holding_unseen(source, dataset.spec.unseen, count):
      paths.append(out / f"{prefix}_{i:04d}.png")
      Image.fromarray(source[i]["image"]).save(paths[-1])
    return [str(p) for p in paths]


def message_of(error: Exception) -> str:
  """The one line the page shows for a user error."""
  return f"error: {one_line(str(error))}"
