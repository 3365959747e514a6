"""Metrics: IoU counts and reports against a numpy confusion matrix, and the calibrated argmax."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zegot_jax.data.classes import IGNORE_INDEX, UNLABELLED
from zegot_jax import metrics
from zegot_jax.metrics import IoUAccumulator, format_table, iou_counts, miou_report, predict_labels

NAMES = ("sky", "road", "car", "tree", "person", "boat")  # class 5 (boat) never occurs
SEEN, UNSEEN = (0, 1, 2, 5), (3, 4)


def random_segmentation(rng: np.random.Generator, shape: tuple[int, ...], present: int = 5) -> tuple[np.ndarray,
                                                                                                     np.ndarray]:
  """Labels and predictions over classes 0..present-1, labels ~20% IGNORE_INDEX; predictions agree ~50%."""
  label = rng.integers(0, present, size=shape)
  pred = np.where(rng.random(shape) < 0.5, label, rng.integers(0, present, size=shape))
  label = np.where(rng.random(shape) < 0.2, IGNORE_INDEX, label)
  return pred.astype(np.int32), label.astype(np.int32)


def reference_iou(pred: np.ndarray, label: np.ndarray, k: int) -> np.ndarray:
  """Per-class IoU in percent from a confusion matrix (rows: label, columns: prediction); nan where union 0."""
  valid = label < k
  conf = np.bincount(k * label[valid] + pred[valid], minlength=k * k).reshape(k, k).astype(np.float64)
  diag = np.diag(conf)
  union = conf.sum(0) + conf.sum(1) - diag
  with np.errstate(invalid="ignore"):
    return 100.0 * diag / union


def test_counts_and_report_match_confusion_matrix():
  rng = np.random.default_rng(0)
  pred, label = random_segmentation(rng, (3, 17, 23))
  k = len(NAMES)
  iou = reference_iou(pred, label, k)
  assert np.isnan(iou[5]) and not np.isnan(iou[:5]).any()

  inter, union = iou_counts(jnp.asarray(pred), jnp.asarray(label), k)
  assert inter.dtype == jnp.int32 and union.dtype == jnp.int32 and inter.shape == union.shape == (k,)
  report = miou_report(np.asarray(inter), np.asarray(union), NAMES, SEEN, UNSEEN)

  for name, expected in zip(NAMES, iou):
    if np.isnan(expected):
      assert report["per_class"][name] is None
    else:
      np.testing.assert_allclose(report["per_class"][name], expected, rtol=1e-12)
  seen = np.mean([iou[0], iou[1], iou[2]])  # boat (5) is seen but has union 0: left out
  unseen = np.mean([iou[3], iou[4]])
  np.testing.assert_allclose(report["mIoU"], np.mean(iou[:5]), rtol=1e-12)
  np.testing.assert_allclose(report["mIoU_seen"], seen, rtol=1e-12)
  np.testing.assert_allclose(report["mIoU_unseen"], unseen, rtol=1e-12)
  np.testing.assert_allclose(report["hIoU"], 2 * seen * unseen / (seen + unseen), rtol=1e-12)


def test_accumulating_chunks_equals_one_call():
  rng = np.random.default_rng(1)
  pred, label = random_segmentation(rng, (6, 11, 13))
  k = len(NAMES)
  accumulator = IoUAccumulator(k)
  for chunk in np.split(np.arange(6), [1, 4]):  # 3 chunks of unequal size
    accumulator.add(*iou_counts(jnp.asarray(pred[chunk]), jnp.asarray(label[chunk]), k))
  inter, union = iou_counts(jnp.asarray(pred), jnp.asarray(label), k)
  np.testing.assert_array_equal(accumulator.intersection, np.asarray(inter))
  np.testing.assert_array_equal(accumulator.union, np.asarray(union))
  assert accumulator.intersection.dtype == np.int64


def test_counts_under_jit_skip_out_of_range_labels():
  rng = np.random.default_rng(2)
  pred, label = random_segmentation(rng, (2, 9, 31))
  label = np.where(rng.random(label.shape) < 0.1, UNLABELLED, label)  # 254 ≥ K: skipped like 255
  k = len(NAMES)
  counts = jax.jit(functools.partial(iou_counts, num_classes=k))(jnp.asarray(pred), jnp.asarray(label))
  eager = iou_counts(jnp.asarray(pred), jnp.asarray(label), k)
  for a, b in zip(counts, eager):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  valid = label < k
  conf = np.bincount(k * label[valid] + pred[valid], minlength=k * k).reshape(k, k)
  np.testing.assert_array_equal(np.asarray(counts[0]), np.diag(conf))
  np.testing.assert_array_equal(np.asarray(counts[1]), conf.sum(0) + conf.sum(1) - np.diag(conf))


def test_counts_by_hand():
  label = jnp.array([0, 0, 1, 1, 2, IGNORE_INDEX, UNLABELLED, 1])
  pred = jnp.array([0, 1, 1, 1, 0, 2, 2, 7])  # 7: a prediction outside 0..K-1 matches no class
  inter, union = iou_counts(pred, label, 3)
  np.testing.assert_array_equal(np.asarray(inter), [1, 2, 0])
  np.testing.assert_array_equal(np.asarray(union), [3, 4, 1])  # class 1: pred {1,2,3}, label {2,3,7}


def test_report_edge_cases():
  names = ("a", "b", "c")
  inter, union = np.array([0, 5, 0]), np.array([4, 10, 0])
  report = miou_report(inter, union, names, seen=(0, 1, 2), unseen=())
  assert report["per_class"] == {"a": 0.0, "b": 50.0, "c": None}
  assert report["mIoU"] == report["mIoU_seen"] == 25.0
  assert report["mIoU_unseen"] is None and report["hIoU"] is None
  report = miou_report(inter, union, names, seen=(0,), unseen=(2,))  # unseen list holds only a union-0 class
  assert report["mIoU_unseen"] is None and report["hIoU"] is None
  report = miou_report(inter, union, names, seen=(0,), unseen=(1,))
  assert report["hIoU"] == 0.0  # S = 0: 2·S·U / (S + U) = 0
  report = miou_report(np.zeros(3), union, names, seen=(0,), unseen=(1,))
  assert report["mIoU_seen"] == report["mIoU_unseen"] == report["hIoU"] == 0.0  # S + U = 0
  with pytest.raises(ValueError):
    miou_report(inter, union, names, seen=(0, 1), unseen=(1, 2))
  with pytest.raises(ValueError):
    miou_report(inter, union, names[:2], seen=(0,), unseen=(1,))


def test_format_table():
  report = miou_report(np.array([1, 5, 0, 3]), np.array([4, 10, 0, 9]), ("cat", "dog", "ghost", "bird"),
                       seen=(0, 1, 2), unseen=(3,))
  table = format_table(report)
  lines = table.splitlines()
  for name, mark, value in [("cat", "seen", "25.00"), ("dog", "seen", "50.00"), ("ghost", "seen", "-"),
                            ("bird", "unseen", "33.33")]:
    row = next(line for line in lines if line.split()[0] == name)
    assert row.split()[1:] == [mark, value]
  for label, value in [("mIoU(S)", "37.50"), ("mIoU(U)", "33.33"), ("hIoU", "35.29"), ("mIoU", "36.11")]:
    row = next(line for line in lines if line.split()[0] == label)
    assert row.split()[-1] == value
  assert [line.split()[0] for line in lines[-4:]] == ["mIoU(S)", "mIoU(U)", "hIoU", "mIoU"]


def test_predict_labels_seen_bias_by_hand():
  seen_mask = jnp.array([True, False, True])
  logits = jnp.array([
      [1.00, 0.95, 0.0],  # seen 0 leads unseen 1 by 0.05 < 0.1: flips to 1
      [1.00, 0.85, 0.0],  # lead 0.15 ≥ 0.1: stays 0
      [0.50, 0.90, 0.0],  # unseen already leads: stays 1
      [0.20, 0.00, 0.25],  # both leaders seen, both lowered: stays 2
      [0.00, 0.00, 0.0],  # a tie between seen 0 and unseen 1: the bias breaks it for 1
  ])
  np.testing.assert_array_equal(np.asarray(predict_labels(logits)), [0, 0, 1, 2, 0])
  out = predict_labels(logits, seen_mask, 0.1)
  assert out.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(out), [1, 0, 1, 2, 1])
  np.testing.assert_array_equal(np.asarray(predict_labels(logits, seen_mask, 0.0)), [0, 0, 1, 2, 0])


def test_predict_labels_bias_flips_exactly_below_margin():
  rng = np.random.default_rng(3)
  k, bias = 7, 0.1
  seen = np.array([True, False, True, True, False, True, False])
  logits = rng.normal(0.0, 0.1, size=(4, 50, k)).astype(np.float32)  # (B, P, K)
  best_seen = np.where(seen, logits, -np.inf).max(-1)
  best_unseen = np.where(~seen, logits, -np.inf).max(-1)
  margin = best_seen - best_unseen
  clear = np.abs(margin - bias) > 1e-4  # rows too close to the threshold are left to float rounding
  flips = (margin > 0) & (margin < bias)
  assert flips[clear].sum() > 10 and (~flips & (margin > 0))[clear].sum() > 10
  plain = logits.argmax(-1)
  expected = np.where(margin < bias, np.where(~seen, logits, -np.inf).argmax(-1),
                      np.where(seen, logits, -np.inf).argmax(-1))
  out = np.asarray(jax.jit(predict_labels)(jnp.asarray(logits), jnp.asarray(seen), bias))
  assert out.shape == (4, 50)
  np.testing.assert_array_equal(out[clear], expected[clear])
  np.testing.assert_array_equal((out != plain)[clear], flips[clear])


def test_auroc_equals_the_pairwise_definition():
  """AUROC from ranks equals the fraction of (positive, negative) pairs ordered right, ties counting 1/2, counted
  pair by pair; a perfect and a reversed ranking give 1 and 0."""
  rng = np.random.default_rng(5)
  scores = rng.integers(0, 12, 300).astype(np.float32)  # many ties
  positive = rng.random(300) < 0.3 + 0.05 * scores
  pos, neg = scores[positive], scores[~positive]
  pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
  np.testing.assert_allclose(metrics.auroc(scores, positive), pairs, rtol=1e-12)
  assert metrics.auroc(np.arange(10.0), np.arange(10) >= 6) == 1.0
  assert metrics.auroc(-np.arange(10.0), np.arange(10) >= 6) == 0.0
  assert np.isnan(metrics.auroc(np.arange(3.0), np.zeros(3, bool)))


def test_auroc_along_the_first_axis_is_one_per_column():
  """axis=0 ranks every column at once (diagnose's classes × prompts) and equals ranking each column alone; axis
  None ranks every entry of a map, as its flattened form."""
  rng = np.random.default_rng(6)
  scores, labels = rng.normal(size=(400, 3, 2)), rng.integers(0, 3, 400)
  columns = metrics.auroc(scores, (labels[:, None] == np.arange(3))[..., None], axis=0)
  assert columns.shape == (3, 2)
  for c in range(3):
    for n in range(2):
      assert columns[c, n] == pytest.approx(metrics.auroc(scores[:, c, n], labels == c), abs=1e-12)
  image, positive = rng.normal(size=(4, 5, 6)), rng.random((4, 5, 6)) < 0.3
  assert metrics.auroc(image, positive) == metrics.auroc(image.ravel(), positive.ravel())
