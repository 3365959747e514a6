r"""Build time of `textures_zs3` and throughput of its training pipeline on this machine.

  python -m zegot_jax.tools.benchmark_data                 # default config: 2,000 + 300 scenes of 96²
  python -m zegot_jax.tools.benchmark_data --workers 0,2 --batches 100
"""

from __future__ import annotations

import tempfile
import time

from absl import flags
from tqdm import tqdm

from zegot_jax import errors
from zegot_jax.data import build, pipeline

_NAME = flags.DEFINE_string("name", "textures_zs3", "dataset (with config) to build")
_BATCH = flags.DEFINE_integer("batch", 16, "batch size")
_BATCHES = flags.DEFINE_integer("batches", 100, "batches timed per setting (after 5 warm-up batches)")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "worker process counts to time")


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as data_dir:
    start = time.perf_counter()
    dataset = build.build(_NAME.value, data_dir)
    build_s = time.perf_counter() - start
    sizes = {k: len(v) for k, v in dataset.splits.items()}
    rows = []
    for workers in map(int, _WORKERS.value):
      it = iter(pipeline.train_dataset(dataset.splits["train"], dataset.spec, batch_size=_BATCH.value, seed=0,
                                       process_index=0, process_count=1, num_workers=workers))
      for _ in range(5):
        next(it)
      start = time.perf_counter()
      for _ in tqdm(range(_BATCHES.value), desc=f"{workers} workers", leave=False):
        next(it)
      rows.append((workers, _BATCHES.value * _BATCH.value / (time.perf_counter() - start)))
  print(f"built {_NAME.value} ({sizes}) in {build_s:.1f} s")
  for workers, rate in rows:
    print(f"training pipeline, {workers} worker processes: {rate:.0f} examples/s "
          f"(crop {dataset.spec.crop_size}, batch {_BATCH.value}, full mmseg augmentation)")


if __name__ == "__main__":
  errors.run(main)
