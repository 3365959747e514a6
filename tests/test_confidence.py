"""The threshold measurement (confidence.py): its AUROC equals scipy's Mann-Whitney statistic, its table
equals hand counts, and on a run it counts each labelled pixel of the split once, right or wrong as predict's
labels say."""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from zegot_jax import confidence, prediction
from zegot_jax.data import registry


def test_auroc_is_the_mann_whitney_statistic_with_ties():
  rng = np.random.default_rng(0)
  score = np.round(rng.random(500), 1)  # many ties
  positive = rng.random(500) < score
  u = stats.mannwhitneyu(score[positive], score[~positive]).statistic
  assert confidence.auroc(score, positive) == pytest.approx(u / (positive.sum() * (~positive).sum()), abs=1e-12)
  assert confidence.auroc(np.array([0.1, 0.9]), np.array([False, True])) == 1.0
  assert np.isnan(confidence.auroc(np.array([0.5, 0.6]), np.array([True, True])))


def test_the_table_counts_pixels_below_each_threshold():
  probability = np.array([0.1, 0.2, 0.3, 0.6, 0.8])
  correct = np.array([False, True, False, True, True])
  rows = confidence.threshold_table(probability, correct, thresholds=(0.0, 0.25, 0.5, 0.9))
  assert rows[0] == dict(threshold=0.0, unassigned=0.0, wrong_among_unassigned=None, accuracy_kept=0.6)
  assert rows[1] == dict(threshold=0.25, unassigned=0.4, wrong_among_unassigned=0.5, accuracy_kept=pytest.approx(2 / 3))
  assert rows[2] == dict(threshold=0.5, unassigned=0.6, wrong_among_unassigned=pytest.approx(2 / 3), accuracy_kept=1.0)
  assert rows[3] == dict(threshold=0.9, unassigned=1.0, wrong_among_unassigned=0.4, accuracy_kept=None)


def test_the_suggestion_is_the_largest_threshold_removing_pixels_wrong_twice_as_often_as_all():
  # 10 pixels, 3 wrong (30%): a threshold must remove pixels of which at least 60% were wrong.
  probability = np.array([0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
  correct = np.array([False, False, True, False, True, True, True, True, True, True])
  part = dict(accuracy=0.7, table=confidence.threshold_table(probability, correct, confidence.THRESHOLDS))
  # below 0.31: 3 of 4 wrong (75%); below 0.41 to 0.50: 3 of 5 (60%); below 0.51: 3 of 6 (50%)
  chosen = confidence.suggest(part)
  assert chosen["threshold"] == 0.5 and chosen["unassigned"] == 0.5 and chosen["wrong_among_unassigned"] == 0.6
  assert confidence.suggest(dict(accuracy=0.7, table=confidence.threshold_table(probability, np.ones(10, bool))))[
      "threshold"] == 0.0
  assert confidence.slider_maximum(dict(percentiles=dict(p95=0.81))) == 0.85


def test_a_runs_split_is_measured_pixel_by_pixel_as_predict_labels_it(smoke_run, tmp_path):
  result = confidence.measure(smoke_run, split="test")
  predictor = prediction.Predictor(smoke_run)
  dataset = registry.load(predictor.config.dataset, predictor.config.data_dir)
  examples = list(dataset.splits["test"])
  for i, example in enumerate(examples):
    Image.fromarray(example["image"]).save(tmp_path / f"{i:02d}.png")
  batch = prediction.predict_many(smoke_run, [tmp_path], list(predictor.spec.classes), out=tmp_path / "out",
                                  progress=False)  # predict's own files, image by image
  right = 0
  for row, example in zip(batch["rows"], examples):
    labels = np.asarray(Image.open(pathlib.Path(row["out"]) / "labels.png"))
    right += int((labels == example["label"].reshape(labels.shape)).sum())
  pixels = sum(e["label"].size for e in examples)  # textures label every pixel
  assert result["all"]["pixels"] == pixels and result["all"]["accuracy"] == pytest.approx(right / pixels)
  unseen = sum(int(np.isin(e["label"], predictor.spec.unseen).sum()) for e in examples)
  assert result["unseen"]["pixels"] == unseen
  assert "threshold  unassigned" in confidence.format_report(result)
  assert confidence.read(smoke_run, result["step"]) is None
  confidence.write(result, smoke_run)
  assert confidence.read(smoke_run, result["step"]) == json.loads(json.dumps(result))
  assert confidence.read(smoke_run, result["step"] + 1) is None  # another checkpoint's
  (smoke_run / confidence.FILE).unlink()
