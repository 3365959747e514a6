"""How well a threshold separates right from wrong pixels on a run's split (`zegot_jax/confidence.py`): prints the
table and the suggested threshold, and keeps them in the run's confidence.json, where the app reads its threshold
slider's default and range.

    python -m zegot_jax.tools.confidence --workdir runs/demo [--split test] [--step N] [--out FILE]
"""

from __future__ import annotations

import functools
import json
import sys

from absl import flags, logging

from zegot_jax import cli, confidence, errors


def main(argv, f: dict) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  workdir = errors.path_flag(f["workdir"].value, "--workdir", "runs/demo")
  result = confidence.measure(workdir, f["split"].value, f["step"].value)
  print(confidence.format_report(result))
  if f["out"].value:
    out = errors.path_flag(f["out"].value, "--out", "confidence.json")
    with errors.storage(f"--out={out}: cannot write the result"):
      out.write_text(json.dumps(result, indent=2))
  else:
    out = confidence.write(result, workdir)
  print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
  _flags = dict(
      workdir=flags.DEFINE_string("workdir", None, "a training run's directory"),
      split=flags.DEFINE_string("split", None, "the split to measure on (default: the run's evaluation split)"),
      step=flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)"),
      out=flags.DEFINE_string("out", None, f"write the result here instead of <workdir>/{confidence.FILE}"),
  )
  flags.mark_flags_as_required(["workdir"])
  cli.run(functools.partial(main, f=_flags))
