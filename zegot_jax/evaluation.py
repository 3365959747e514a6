"""Zero-shot segmentation metrics (mIoU over seen / unseen classes, hIoU) and mmsegmentation's sliding-window test.

Counting follows mmsegmentation's `intersect_and_union`: only pixels whose label is a class index 0..K-1 count
(IGNORE_INDEX, UNLABELLED and any other value ≥ K are skipped), and on those pixels

  intersection_k = #{pred == label == k},  union_k = #{pred == k} + #{label == k} − intersection_k.

Per-class counts are summed over a whole split (on the host, in int64) before any division; IoU_k =
intersection_k / union_k in percent, and the means skip classes with union 0 (mmseg's nanmean). The harmonic
mean of the seen and unseen means, hIoU = 2·S·U / (S + U), is the zero-shot headline number.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from zegot_jax import runtime
from zegot_jax.data import pipeline
from zegot_jax.data.classes import IGNORE_INDEX
from zegot_jax.models import zegot


def _class_counts(values: jax.Array, valid: jax.Array, num_classes: int) -> jax.Array:
  """How many valid entries hold each class 0..K-1: invalid ones go to an extra bin K that is dropped."""
  binned = jnp.where(valid, values, num_classes).reshape(-1)
  return jnp.bincount(binned, length=num_classes + 1)[:num_classes].astype(jnp.int32)


def iou_counts(pred: jax.Array, label: jax.Array, num_classes: int,
               ignore_index: int = IGNORE_INDEX) -> tuple[jax.Array, jax.Array]:
  """Per-class (intersection, union) pixel counts of one batch of predictions.

  Args:
    pred: predicted class indices, any integer array (predictions outside 0..K-1 match no class).
    label: ground truth of the same shape: 0..K-1, `ignore_index`, or other values ≥ K (all skipped).
    num_classes: K.
    ignore_index: the label value of unlabelled pixels.

  Returns:
    (intersection, union), int32 arrays of shape (K,), summed over all pixels. int32 holds up to 2^31 pixels
    per call (e.g. 1000 images of 2048×1024); accumulate larger sums on the host (IoUAccumulator). Jit-able,
    without a per-class loop; under jit on sharded arrays XLA adds up the devices' counts by itself.
  """
  if pred.shape != label.shape:
    raise ValueError(f"pred {pred.shape} and label {label.shape} must have the same shape")
  pred, label = pred.astype(jnp.int32), label.astype(jnp.int32)
  valid = (label >= 0) & (label < num_classes) & (label != ignore_index)
  pred_valid = valid & (pred >= 0) & (pred < num_classes)
  intersection = _class_counts(label, valid & (pred == label), num_classes)
  area_pred = _class_counts(pred, pred_valid, num_classes)
  area_label = _class_counts(label, valid, num_classes)
  return intersection, area_pred + area_label - intersection


def _mean_or_none(iou: np.ndarray, classes: Sequence[int]) -> float | None:
  """Mean of the IoUs of `classes` that are defined (union > 0); None when there is none."""
  values = iou[np.asarray(list(classes), np.int64)]
  values = values[~np.isnan(values)]
  return float(values.mean()) if values.size else None


def _harmonic(seen: float | None, unseen: float | None) -> float | None:
  if seen is None or unseen is None:
    return None
  return 2.0 * seen * unseen / (seen + unseen) if seen + unseen > 0 else 0.0


def _check_split(num_classes: int, seen: Sequence[int], unseen: Sequence[int]) -> None:
  indices = list(seen) + list(unseen)
  bad = [i for i in indices if not 0 <= i < num_classes]
  if bad or len(set(indices)) != len(indices):
    raise ValueError(f"seen {list(seen)} and unseen {list(unseen)} must be distinct class indices in "
                     f"0..{num_classes - 1}")


def miou_report(intersection: np.ndarray, union: np.ndarray, class_names: Sequence[str], seen: Sequence[int],
                unseen: Sequence[int]) -> dict:
  """mIoU, mIoU over seen and unseen classes, hIoU and per-class IoU (all in percent) from summed counts.

  Args:
    intersection: (K,) per-class intersections summed over a split.
    union: (K,) per-class unions.
    class_names: the K class names.
    seen: indices of the seen classes.
    unseen: indices of the unseen classes.

  Returns:
    {"mIoU", "mIoU_seen", "mIoU_unseen", "hIoU": float or None, "per_class": {name: IoU or None},
    "split": {name: "seen" | "unseen" | ""}}. Means skip classes with union 0; a mean over no defined class
    (an empty list, or only classes with union 0) is None, and so is hIoU when either of its means is None.
    hIoU is 0 when both means are 0. "split" (beyond the brief) lets format_table mark the classes.
  """
  intersection = np.asarray(intersection, np.int64)
  union = np.asarray(union, np.int64)
  k = len(class_names)
  if intersection.shape != (k,) or union.shape != (k,):
    raise ValueError(f"intersection {intersection.shape} and union {union.shape} must be ({k},) for {k} classes")
  _check_split(k, seen, unseen)
  iou = np.where(union > 0, 100.0 * intersection / np.maximum(union, 1), np.nan)  # (K,), nan where undefined
  mean_seen, mean_unseen = _mean_or_none(iou, seen), _mean_or_none(iou, unseen)
  split = {name: "" for name in class_names}
  split.update({class_names[i]: "seen" for i in seen})
  split.update({class_names[i]: "unseen" for i in unseen})
  return {
      "mIoU": _mean_or_none(iou, range(k)),
      "mIoU_seen": mean_seen,
      "mIoU_unseen": mean_unseen,
      "hIoU": _harmonic(mean_seen, mean_unseen),
      "per_class": {name: None if math.isnan(v) else float(v) for name, v in zip(class_names, iou)},
      "split": split,
  }


class IoUAccumulator:
  """Host-side running sums of per-class intersections and unions over a whole split, in int64."""

  def __init__(self, num_classes: int):
    self.num_classes = num_classes
    self.intersection = np.zeros(num_classes, np.int64)
    self.union = np.zeros(num_classes, np.int64)

  def add(self, intersection: jax.Array | np.ndarray, union: jax.Array | np.ndarray) -> None:
    """Adds one batch's (K,) counts (e.g. iou_counts' output; fetched to the host here)."""
    intersection, union = np.asarray(intersection, np.int64), np.asarray(union, np.int64)
    if intersection.shape != (self.num_classes,) or union.shape != (self.num_classes,):
      raise ValueError(f"expected ({self.num_classes},) counts, got {intersection.shape} and {union.shape}")
    self.intersection += intersection
    self.union += union

  def report(self, class_names: Sequence[str], seen: Sequence[int], unseen: Sequence[int]) -> dict:
    """miou_report of the sums so far."""
    return miou_report(self.intersection, self.union, class_names, seen, unseen)


def _format_value(value: float | None) -> str:
  return "-" if value is None else f"{value:.2f}"


def format_table(report: dict) -> str:
  """A plain-text table of a miou_report: one row per class (name, seen/unseen, IoU), then the summary rows."""
  split = report.get("split", {})
  rows = [(name, split.get(name, ""), _format_value(v)) for name, v in report["per_class"].items()]
  summary = [("mIoU(S)", report["mIoU_seen"]), ("mIoU(U)", report["mIoU_unseen"]), ("hIoU", report["hIoU"]),
             ("mIoU", report["mIoU"])]
  header = ("class", "split", "IoU")
  width = max(len(header[0]), *(len(r[0]) for r in rows), *(len(s[0]) for s in summary))
  line = lambda a, b, c: f"{a:<{width}}  {b:<6}  {c:>6}"  # noqa: E731
  rule = "-" * len(line("", "", ""))
  body = [line(*r) for r in rows]
  tail = [line(name, "", _format_value(value)) for name, value in summary]
  return "\n".join([line(*header), rule, *body, rule, *tail])


def predict_labels(logits: jax.Array, seen_mask: jax.Array | None = None, seen_bias: float = 0.0) -> jax.Array:
  """Class indices: argmax over the last axis of per-class scores (..., K) → int32 (...).

  With `seen_mask` ((K,) bool, True for seen classes), `seen_bias` is first subtracted from the seen classes'
  scores (the inductive calibration of ZegCLIP / ZegOT lowers them by 0.1). Ties go to the lower index.
  """
  if seen_mask is not None:
    logits = logits - seen_bias * jnp.asarray(seen_mask, logits.dtype)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def _window_starts(size: int, crop_size: int, stride: int) -> np.ndarray:
  """mmseg's window starts along one axis of (padded) length size ≥ crop_size; every window is full."""
  grids = max(size - crop_size + stride - 1, 0) // stride + 1
  ends = np.minimum(np.arange(grids) * stride + crop_size, size)
  return np.maximum(ends - crop_size, 0)


def _coverage(size: int, starts: np.ndarray, crop_size: int) -> np.ndarray:
  """How many windows along one axis cover each position: (size,)."""
  covered = np.arange(size)[None, :] - starts[:, None]  # (n, size)
  return ((covered >= 0) & (covered < crop_size)).sum(0)


def _chunked(logits_fn: Callable[[jax.Array], jax.Array], windows: jax.Array, batch_windows: int | None) -> jax.Array:
  """logits_fn on (n, crop, crop, C) windows at once, or batch_windows at a time (one traced call, lax.map)."""
  n = windows.shape[0]
  if batch_windows is None or batch_windows >= n:
    return logits_fn(windows)
  if batch_windows < 1:
    raise ValueError(f"batch_windows must be >= 1, got {batch_windows}")
  chunks = -(-n // batch_windows)
  padded = jnp.pad(windows, [(0, chunks * batch_windows - n)] + [(0, 0)] * (windows.ndim - 1))
  out = jax.lax.map(logits_fn, padded.reshape(chunks, batch_windows, *windows.shape[1:]))  # (chunks, b, ...)
  return out.reshape(chunks * batch_windows, *out.shape[2:])[:n]


def sliding_window_logits(logits_fn: Callable[[jax.Array], jax.Array], image: jax.Array, crop_size: int,
                          stride: int, num_classes: int, batch_windows: int | None = None) -> jax.Array:
  """mmsegmentation's 'slide' inference on one image: averaged logits of overlapping crop×crop windows.

  An image smaller than the crop is first padded at the bottom / right with zeros up to crop_size. Windows start
  at y1 = max(min(i·stride + crop, H') − crop, 0) for i < max(H' − crop + stride − 1, 0) // stride + 1 (and so
  for x), so the last one is flush with the border. Each pixel's logits are the sum over the windows covering
  it divided by their number; the padding is then cropped away.

  Args:
    logits_fn: (n, crop, crop, C) windows → (n, crop, crop, K) float logits.
    image: (H, W, C), any dtype, passed to logits_fn unchanged (apart from the zero padding).
    crop_size: the square window size.
    stride: the step between window starts.
    num_classes: K, checked against logits_fn's output.
    batch_windows: None to call logits_fn on all windows at once, else on chunks of this many (the last chunk
      is padded with zero windows whose logits are dropped; logits_fn is traced once, under lax.map).

  Returns:
    (H, W, K) float32 logits. Window positions are static (from the static shape), so this is jit-able.
  """
  if crop_size < 1 or stride < 1:
    raise ValueError(f"crop_size ({crop_size}) and stride ({stride}) must be >= 1")
  h, w, c = image.shape
  hp, wp = max(h, crop_size), max(w, crop_size)
  padded = jnp.pad(image, [(0, hp - h), (0, wp - w), (0, 0)])  # (H', W', C)
  ys, xs = _window_starts(hp, crop_size, stride), _window_starts(wp, crop_size, stride)
  y0, x0 = (a.reshape(-1) for a in np.meshgrid(ys, xs, indexing="ij"))  # (n,) each, static

  def crop(y: jax.Array, x: jax.Array) -> jax.Array:
    return jax.lax.dynamic_slice(padded, (y, x, 0), (crop_size, crop_size, c))

  windows = jax.vmap(crop)(jnp.asarray(y0, jnp.int32), jnp.asarray(x0, jnp.int32))  # (n, crop, crop, C)
  logits = _chunked(logits_fn, windows, batch_windows).astype(jnp.float32)  # (n, crop, crop, K)
  if logits.shape != (len(y0), crop_size, crop_size, num_classes):
    raise ValueError(f"logits_fn returned {logits.shape}, expected {(len(y0), crop_size, crop_size, num_classes)}")
  offsets = np.arange(crop_size)
  rows = (y0[:, None] + offsets)[:, :, None]  # (n, crop, 1)
  cols = (x0[:, None] + offsets)[:, None, :]  # (n, 1, crop)
  canvas = jnp.zeros((hp, wp, num_classes), jnp.float32).at[rows, cols].add(logits)  # (H', W', K)
  # The windows form a grid, so a pixel's window count is (#y windows over its row) · (#x windows over its column).
  count = np.outer(_coverage(hp, ys, crop_size), _coverage(wp, xs, crop_size)).astype(np.float32)  # (H', W')
  return (canvas / count[:, :, None])[:h, :w]


@functools.lru_cache(maxsize=8)
def encode_classes(model: zegot.ZegOT) -> Callable[[Any, jax.Array], jax.Array]:
  """Jitted (params, class tokens) → text embeddings (K, N, D), cached per model."""
  return jax.jit(lambda params, tokens: model.apply({"params": params}, tokens, method="encode_classes"))


@functools.lru_cache(maxsize=8)
def segment_windows(model: zegot.ZegOT) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
  """Jitted (params, text, windows (n, crop, crop, 3)) → Y* logits (n, crop, crop, K). Params and text are
  arguments, not constants captured by the compiled program; one function per model (cached), so periodic
  evaluations during training reuse its compilation."""
  return jax.jit(lambda params, text, windows: model.apply({"params": params}, windows, text,
                                                           method="segment")[0].logits)


def image_logits(window_logits: Callable[[jax.Array], jax.Array], image: np.ndarray, crop_size: int, stride: int,
                 num_classes: int, output_size: tuple[int, int], batch_windows: int | None = None) -> jax.Array:
  """Sliding-window logits of one (already resized) image, resized to `output_size` (H, W): (H, W, K)."""
  logits = sliding_window_logits(window_logits, jnp.asarray(image), crop_size, stride, num_classes,
                                 batch_windows=batch_windows)
  return jax.image.resize(logits, (*output_size, num_classes), "bilinear")


def evaluation_split(config: ml_collections.ConfigDict, dataset) -> Any:
  """The split that evaluation reads: `config.eval.split` ("validation" unless the config says otherwise)."""
  name = config.eval.get("split", "validation")
  if name not in dataset.splits:
    raise ValueError(f"config eval.split={name!r}: dataset {dataset.spec.name} has the splits "
                     f"{sorted(dataset.splits)}; set --config.eval.split to one of them")
  return dataset.splits[name]


def evaluate_dataset(config: ml_collections.ConfigDict, model: zegot.ZegOT, params: Any, tokenizer, *,
                     mesh: jax.sharding.Mesh, dataset_name: str | None = None, max_examples: int = 0) -> dict:
  """Runs the protocol on the split `config.eval.split` (default "validation") of `dataset_name` (default: the
  config's dataset).

  params: the full parameter tree (trainable + "clip"). Each process evaluates its shard of the images; the
  counts are summed over processes at the end.
  """
  dataset = runtime.open_dataset(config, dataset_name)
  spec = dataset.spec
  num_classes = len(spec.classes)
  replicated = NamedSharding(mesh, P())
  tokens = jax.device_put(zegot.class_tokens(tokenizer, spec.classes, model.config), replicated)
  text = encode_classes(model)(params, tokens)  # once per evaluation

  window_logits = functools.partial(segment_windows(model), params, text)

  seen_mask = np.zeros(num_classes, bool)
  seen_mask[list(spec.seen)] = True
  examples = pipeline.eval_dataset(evaluation_split(config, dataset), spec)
  count = len(examples) if not max_examples else min(len(examples), max(1, max_examples // jax.process_count()))
  accumulator = IoUAccumulator(num_classes)
  for i in tqdm(range(count), desc=f"eval {spec.name}", disable=jax.process_index() != 0, leave=False):
    ex = examples[i]
    logits = image_logits(window_logits, ex["image"], spec.crop_size, spec.eval_stride, num_classes,
                          ex["label"].shape, batch_windows=config.eval.batch_windows or None)
    pred = predict_labels(logits, jnp.asarray(seen_mask), config.eval.seen_bias)
    accumulator.add(*iou_counts(pred, jnp.asarray(ex["label"]), num_classes))
  intersection, union = accumulator.intersection, accumulator.union
  if jax.process_count() > 1:
    intersection = np.asarray(multihost_utils.process_allgather(intersection)).sum(0)
    union = np.asarray(multihost_utils.process_allgather(union)).sum(0)
  report = miou_report(intersection, union, spec.classes, spec.seen, spec.unseen)
  return dict(dataset=spec.name, split=config.eval.get("split", "validation"), examples=int(count * jax.process_count()), report=report,
              **{k: report[k] for k in ("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU")})
