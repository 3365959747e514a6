"""How well a threshold separates right from wrong pixels: a trained run's evaluation split segmented as `predict`
does (every class of the dataset named), then, for each pixel with a label, its best class's probability and
whether that class is right. `measure` gives a table per threshold (pixels left unassigned, how many of them were
wrong, the accuracy of the rest), the AUROC of the probability as a right/wrong score and a suggested threshold;
`write` keeps it in the run (confidence.json), where the app reads its slider's default and range.

    python -m zegot_jax.tools.confidence --workdir runs/demo     # the demo writes it too
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from tqdm import tqdm

from zegot_jax import errors, prediction
from zegot_jax.data import registry
from zegot_jax.data.classes import IGNORE_INDEX

PERCENTILES = (5, 25, 50, 75, 95)
THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.0, 1.0001, 0.01), 2))
FILE = "confidence.json"  # in the run's folder
# The suggested threshold: the largest whose unassigned pixels were wrong at least this many times as often as the
# split's pixels overall (and more often wrong than right), so that it removes only uncertain pixels.
WRONG_RATIO = 2.0


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
  """The probability that a random positive scores above a random negative (ties count one half): the
  Mann-Whitney statistic from the scores' average ranks. NaN when one side is empty."""
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  if not n_pos or not n_neg:
    return float("nan")
  order = np.argsort(score, kind="stable")
  ranks = np.empty(len(score), np.float64)
  ranks[order] = np.arange(1, len(score) + 1)
  sorted_scores = score[order]
  starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # ties share their mean rank
  ends = np.r_[starts[1:], len(score)]
  for s, e in zip(starts, ends):
    if e - s > 1:
      ranks[order[s:e]] = (s + 1 + e) / 2
  return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def threshold_table(confidence: np.ndarray, correct: np.ndarray, thresholds=THRESHOLDS) -> list[dict]:
  """Per threshold t: the share of pixels below t (left unassigned), the share of those that were wrong, and the
  accuracy of the pixels kept."""
  rows = []
  for t in thresholds:
    removed = confidence < t
    rows.append(dict(threshold=float(t), unassigned=float(removed.mean()),
                     wrong_among_unassigned=float((~correct[removed]).mean()) if removed.any() else None,
                     accuracy_kept=float(correct[~removed].mean()) if (~removed).any() else None))
  return rows


def measure(workdir: str | pathlib.Path, split: str | None = None, step: int | None = None) -> dict:
  """The run's `split` (default: its evaluation split) segmented image by image; the table, AUROC and
  percentiles of the best class's probability, over all labelled pixels and over those of unseen classes."""
  predictor = prediction.Predictor(workdir, step=step)
  config, spec = predictor.config, predictor.spec
  dataset = registry.load(config.dataset, pathlib.Path(config.data_dir).expanduser())
  split = split or config.eval.get("split", "validation")
  if split not in dataset.splits:
    raise errors.ConfigError(f"--split={split}: dataset {spec.name} has the splits {sorted(dataset.splits)}")
  names = list(spec.classes)
  confidence, correct, unseen = [], [], []
  for example in tqdm(dataset.splits[split], desc=f"segment {split}", dynamic_ncols=True):
    segmentation = predictor.segment(example["image"], names)
    label = np.asarray(example["label"]).astype(np.int64).reshape(segmentation.best.shape)  # (H, W[, 1])
    valid = label != IGNORE_INDEX
    confidence.append(segmentation.confidence[valid])
    correct.append(segmentation.best[valid] == label[valid])
    unseen.append(np.isin(label[valid], spec.unseen))
  confidence, correct, unseen = (np.concatenate(x) for x in (confidence, correct, unseen))

  def part(mask: np.ndarray) -> dict:
    c, r = confidence[mask], correct[mask]
    return dict(pixels=int(mask.sum()), accuracy=float(r.mean()), auroc=auroc(c, r),
                percentiles={f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(c, PERCENTILES))},
                table=threshold_table(c, r))

  result = dict(workdir=str(workdir), step=predictor.step, dataset=spec.name, split=split,
                all=part(np.ones_like(correct)), unseen=part(unseen))
  result["suggested"] = suggest(result["all"])
  return result


def suggest(part: dict) -> dict:
  """The largest threshold whose unassigned pixels were wrong at least WRONG_RATIO times as often as all pixels
  (and more often wrong than right), with what it does on the split; threshold 0 when none is."""
  error = 1 - part["accuracy"]
  chosen = dict(part["table"][0])
  for row in part["table"]:
    wrong = row["wrong_among_unassigned"]
    if wrong is not None and row["unassigned"] > 0 and wrong >= max(WRONG_RATIO * error, 0.5) - 1e-9:
      chosen = dict(row)
  return chosen


def slider_maximum(part: dict) -> float:
  """The threshold slider's top: the 95th percentile of the best class's probability, rounded up to 0.05 (above
  it nearly every pixel is unassigned)."""
  return float(min(1.0, np.ceil(part["percentiles"]["p95"] * 20) / 20))


def write(result: dict, workdir: str | pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(workdir) / FILE
  with errors.storage(f"{path}: cannot write the measurement"):
    path.write_text(json.dumps(result, indent=2))
  return path


def read(workdir: str | pathlib.Path, step: int) -> dict | None:
  """The run's measurement of checkpoint `step`, or None when there is none (or it is of another step, or
  unreadable)."""
  try:
    result = json.loads((pathlib.Path(workdir) / FILE).read_text())
    return result if result.get("step") == step and "suggested" in result else None
  except (OSError, ValueError):
    return None


def format_report(result: dict) -> str:
  lines = [f"{result['dataset']} {result['split']}, step {result['step']}"]
  for key in ("all", "unseen"):
    r = result[key]
    p = r["percentiles"]
    lines.append(f"\n{key} pixels: {r['pixels']}, accuracy {100 * r['accuracy']:.1f}%, AUROC of the best class's "
                 f"probability as a right/wrong score {r['auroc']:.3f}; its percentiles 5/25/50/75/95: "
                 + " / ".join(f"{p[f'p{q}']:.2f}" for q in PERCENTILES))
    lines.append("threshold  unassigned  wrong among them  accuracy of the rest")
    for row in r["table"][::5]:  # every 0.05
      wrong = "-" if row["wrong_among_unassigned"] is None else f"{100 * row['wrong_among_unassigned']:.1f}%"
      kept = "-" if row["accuracy_kept"] is None else f"{100 * row['accuracy_kept']:.1f}%"
      lines.append(f"{row['threshold']:9.2f}  {100 * row['unassigned']:9.1f}%  {wrong:>16}  {kept:>20}")
  lines.append("\n" + describe_suggestion(result))
  return "\n".join(lines)


def describe_suggestion(result: dict) -> str:
  s = result["suggested"]
  if not s["threshold"]:
    return f"suggested threshold: 0 (on {result['split']}, no threshold removes mostly wrong pixels)"
  return (f"suggested threshold: {s['threshold']:.2f}: on {result['dataset']} {result['split']} it leaves "
          f"{100 * s['unassigned']:.1f}% of the pixels unassigned, {100 * s['wrong_among_unassigned']:.0f}% of which "
          f"were wrong (of all pixels: {100 * (1 - result['all']['accuracy']):.0f}%)")
