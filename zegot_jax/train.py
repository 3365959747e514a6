r"""Trains ZegOT: both phases in one run, sharded jitted steps, orbax checkpoints, exact resume.

  python -m zegot_jax.train --config configs/voc12_zs3.py --workdir runs/voc
  python -m zegot_jax.train --config configs/textures_zs3.py:runlocal=True --workdir /tmp/smoke
  python -m zegot_jax.train --config configs/voc12_zs3.py --config.train.steps=1000 --workdir runs/short

Restarting the same command resumes from the latest checkpoint in --workdir; SIGTERM saves and exits.
The workdir holds checkpoints/, metrics.jsonl, tb/ (TensorBoard) and config.json. See trainer.py.

  python -m zegot_jax.train --config ... --workdir runs/voc --restart_from=4000 --config.train.lr=1e-4
restarts from an earlier checkpoint (after a divergence, or a damaged latest checkpoint) with another learning
rate; the checkpoints after it are moved to runs/voc/abandoned/. Mistakes (a misspelt field, a missing file, a
workdir in use) are one line and exit code 2.
"""

from __future__ import annotations

import jax
from absl import flags, logging
from ml_collections import config_flags

from zegot_jax import cli, from_config, metrics, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/voc12_zs3.py[:variants]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and TensorBoard events go")
_RESTART_FROM = flags.DEFINE_integer("restart_from", None, "restart from this earlier checkpoint; train.lr and "
                                     "train.warmup_steps may then differ from its config")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO; --verbosity=0 brings them back
  from_config.maybe_initialize_distributed()
  config = _CONFIG.value
  result = trainer.train_and_evaluate(config, _WORKDIR.value, restart_from=_RESTART_FROM.value)
  if jax.process_index() != 0 or result["stopped"]:
    return
  if result["eval"]:
    print(metrics.format_table(result["eval"]["report"]))
    print(f"step {result['step']}: evaluated on {result['eval']['examples']} images of {result['eval']['dataset']}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
