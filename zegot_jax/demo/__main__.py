r"""The offline demo, end to end: train ZegOT on the textures world with the shipped mini-CLIP, evaluate it on the
test split beside the frozen mini-CLIP alone, and draw the figure.

  python -m zegot_jax.demo [--workdir runs/demo] [--config configs/demo.py[:variants]] [--config.train.steps=...]

Rerunning resumes (or reuses) the finished training run and the baseline's result in the workdir.
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
import time

from absl import flags, logging
from ml_collections import config_flags

from zegot_jax import cli, confidence, evaluation, metrics, trainer
from zegot_jax.demo import results

DEFAULT_CONFIG = "configs/demo.py"


def baseline(config, workdir: pathlib.Path) -> dict:
  """(a) the frozen mini-CLIP with hand-crafted prompts, no training; cached in <workdir>/baseline/result.json."""
  done = workdir / "baseline" / "result.json"
  if not done.is_file():
    results.write_result(done, results.evaluate_untrained(results.baseline_config(config), workdir / "baseline"))
  return json.loads(done.read_text())


def comparison_table(zegot: dict, frozen: dict) -> str:
  """Markdown: ZegOT's mIoU(S), mIoU(U), hIoU beside the frozen CLIP's, and the difference."""
  lines = ["| | mIoU(S) | mIoU(U) | hIoU |", "|---|---|---|---|"]
  for title, r in (("(a) frozen mini-CLIP, hand-crafted prompts, no training", frozen), ("(e) ZegOT (this run)", zegot)):
    lines.append(f"| {title} | " + " | ".join(f"{r[m]:.1f}" for m in results.METRICS) + " |")
  lines.append("| ZegOT − frozen | " + " | ".join(f"{zegot[m] - frozen[m]:+.1f}" for m in results.METRICS) + " |")
  return "\n".join(lines)


def main(argv, f: dict):
  del argv
  logging.set_verbosity(logging.WARNING)
  start = time.time()
  workdir = pathlib.Path(f["workdir"].value).expanduser().resolve()
  config = f["config"].value
  run = trainer.train_and_evaluate(config, workdir)
  if run["stopped"]:
    return
  zegot = run["eval"]
  if zegot is None:  # the run had already finished: evaluate its last checkpoint (and draw its pictures)
    zegot = evaluation.evaluate_run(workdir, config)
  frozen = baseline(config, workdir)
  print(metrics.format_table(zegot["report"]))
  print(f"\n{zegot['dataset']} {zegot['split']} split, {zegot['examples']} images, step {run['step']}; "
        f"unseen: {', '.join(n for n, s in zegot['report']['split'].items() if s == 'unseen')}\n")
  print(comparison_table(zegot, frozen))
  # How well a threshold separates right from wrong pixels on the same split: the app's threshold slider.
  measured = confidence.read(workdir, run["step"])
  if measured is None:
    measured = confidence.measure(workdir, zegot["split"], run["step"])
    confidence.write(measured, workdir)
  print(f"\n{confidence.describe_suggestion(measured)} (the app's default; python -m zegot_jax.tools.confidence "
        f"--workdir {f['workdir'].value} prints the table)")
  if "pictures" in zegot:
    print(f"\nfigure: {zegot['pictures']} (input | ground truth | prediction | per-prompt score maps of an unseen "
          "class)")
  print(f"demo done in {time.time() - start:.0f} s")


if __name__ == "__main__":
  _flags = dict(workdir=flags.DEFINE_string("workdir", "runs/demo", "where the run, the baseline and the figure go"),
                config=config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "the demo's config file[:variants]",
                                                       lock_config=True))
  if not pathlib.Path(DEFAULT_CONFIG).is_file() and not any(a.startswith("--config=") or a == "--config"
                                                             for a in sys.argv):
    print(f"error: {DEFAULT_CONFIG} not found: run from the repository root, or pass --config PATH/configs/demo.py",
          file=sys.stderr)
    sys.exit(2)
  cli.run(functools.partial(main, f=_flags))
