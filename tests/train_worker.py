"""Runs a short training in a fresh process (for the multi-device and multi-process tests) and saves the final
trainable params as params_<process>.npz in the workdir.

  python tests/train_worker.py WORKDIR DATA_DIR [config.key=value ...]

XLA_FLAGS / JAX_COORDINATOR_ADDRESS etc. come from the environment, set by the test.
"""

import pathlib
import sys

import numpy as np


def main():
  workdir, data_dir, *overrides = sys.argv[1:]
  from zegot_jax import from_config  # pylint: disable=g-import-not-at-top

  from_config.maybe_initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top

  from zegot_jax import trainer  # pylint: disable=g-import-not-at-top
  from configs import textures_zs3  # pylint: disable=g-import-not-at-top

  config = textures_zs3.get_config("runlocal=True")
  config.data_dir = data_dir
  config.train.eval_every = 0
  for item in overrides:
    key, value = item.split("=")
    node = config
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = type(node[leaf])(value)
  result = trainer.train_and_evaluate(config, workdir)
  params = jax.tree_util.tree_leaves_with_path(result["params"])
  np.savez(pathlib.Path(workdir) / f"params_{jax.process_index()}.npz",
           **{jax.tree_util.keystr(k): np.asarray(jax.device_get(v)) for k, v in params})
  print("devices", jax.device_count(), "processes", jax.process_count(), "step", result["step"])


if __name__ == "__main__":
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  main()
