"""Zero-shot segmentation metrics (mIoU over seen / unseen classes, hIoU) (pure functions of predictions and labels).

Counting follows mmsegmentation's `intersect_and_union`: only pixels whose label is a class index 0..K-1 count
(IGNORE_INDEX, UNLABELLED and any other value ≥ K are skipped), and on those pixels

  intersection_k = #{pred == label == k},  union_k = #{pred == k} + #{label == k} − intersection_k.

Per-class counts are summed over a whole split (on the host, in int64) before any division; IoU_k =
intersection_k / union_k in percent, and the means skip classes with union 0 (mmseg's nanmean). The harmonic
mean of the seen and unseen means, hIoU = 2·S·U / (S + U), is the zero-shot headline number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zegot_jax.data.classes import IGNORE_INDEX


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


def auroc(scores: np.ndarray, positive: np.ndarray, axis: int | None = None) -> np.ndarray | float:
  """Area under the ROC curve of `scores` ranking the `positive` entries above the others: the probability that a
  random positive scores above a random negative, ties counting one half (Mann-Whitney U / (P·N), from average
  ranks). NaN when either side is empty. axis None: over every entry; axis=0: one AUROC per column of scores
  (n, ...), with `positive` broadcastable to their shape."""
  import scipy.stats  # pylint: disable=g-import-not-at-top

  scores = np.asarray(scores)
  positive = np.broadcast_to(np.asarray(positive, bool), scores.shape)
  if axis is None:
    scores, positive = scores.ravel(), positive.ravel()
  elif axis != 0:
    raise ValueError(f"auroc: axis={axis}; expected None or 0")
  n_pos = positive.sum(0)
  n_neg = positive.shape[0] - n_pos
  ranks = scipy.stats.rankdata(scores, axis=0)  # 1-based, ties averaged
  with np.errstate(invalid="ignore", divide="ignore"):
    area = ((ranks * positive).sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
  area = np.where((n_pos == 0) | (n_neg == 0), np.nan, area)
  return float(area) if area.ndim == 0 else area
