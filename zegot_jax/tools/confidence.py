"""How well a threshold separates right from wrong pixels: a trained run's evaluation split segmented as `predict`
does (every class of the dataset named), then, for each pixel with a label, its best class's probability and
whether that class is right. Prints a table per threshold (pixels left unassigned, how many of them were wrong,
the accuracy of the rest) and the AUROC of the probability as a right/wrong score; writes it as JSON.

    python -m zegot_jax.tools.confidence --workdir runs/demo [--split test] [--out confidence.json]

The app's threshold slider and its help text come from this table on the demo (docs/results.md).
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys

import numpy as np
from absl import flags, logging
from tqdm import tqdm

from zegot_jax import cli, errors, prediction
from zegot_jax.data import registry
from zegot_jax.data.classes import IGNORE_INDEX

THRESHOLDS = tuple(np.round(np.arange(0.0, 1.0001, 0.05), 2))


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
                percentiles={p: float(v) for p, v in zip((5, 25, 50, 75, 95), np.percentile(c, [5, 25, 50, 75, 95]))},
                table=threshold_table(c, r))

  return dict(workdir=str(workdir), step=predictor.step, dataset=spec.name, split=split,
              all=part(np.ones_like(correct)), unseen=part(unseen))


def format_report(result: dict) -> str:
  lines = [f"{result['dataset']} {result['split']}, step {result['step']}"]
  for key in ("all", "unseen"):
    r = result[key]
    p = r["percentiles"]
    lines.append(f"\n{key} pixels: {r['pixels']}, accuracy {100 * r['accuracy']:.1f}%, AUROC of the best class's "
                 f"probability as a right/wrong score {r['auroc']:.3f}; its percentiles 5/25/50/75/95: "
                 + " / ".join(f"{p[q]:.2f}" for q in (5, 25, 50, 75, 95)))
    lines.append("threshold  unassigned  wrong among them  accuracy of the rest")
    for row in r["table"]:
      wrong = "-" if row["wrong_among_unassigned"] is None else f"{100 * row['wrong_among_unassigned']:.1f}%"
      kept = "-" if row["accuracy_kept"] is None else f"{100 * row['accuracy_kept']:.1f}%"
      lines.append(f"{row['threshold']:9.2f}  {100 * row['unassigned']:9.1f}%  {wrong:>16}  {kept:>20}")
  return "\n".join(lines)


def main(argv, f: dict) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  workdir = errors.path_flag(f["workdir"].value, "--workdir", "runs/demo")
  result = measure(workdir, f["split"].value, f["step"].value)
  print(format_report(result))
  if f["out"].value:
    out = errors.path_flag(f["out"].value, "--out", "confidence.json")
    with errors.storage(f"--out={out}: cannot write the result"):
      out.write_text(json.dumps(result, indent=2))
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
  _flags = dict(
      workdir=flags.DEFINE_string("workdir", None, "a training run's directory"),
      split=flags.DEFINE_string("split", None, "the split to measure on (default: the run's evaluation split)"),
      step=flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)"),
      out=flags.DEFINE_string("out", None, "also write the result as JSON to this file"),
  )
  flags.mark_flags_as_required(["workdir"])
  cli.run(functools.partial(main, f=_flags))
