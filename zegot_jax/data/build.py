r"""Builds a dataset once, from what the user downloaded, checking it as it goes.

  python -m zegot_jax.data.build voc12_zs3 --manual_dir ~/data/VOC --data_dir ~/tensorflow_datasets
  python -m zegot_jax.data.build pascal_context59_zs3 --manual_dir ~/data/Context --data_dir ...
  python -m zegot_jax.data.build coco_stuff171_zs3 --manual_dir ~/data/coco_stuff164k --data_dir ...
  python -m zegot_jax.data.build textures_zs3 --data_dir ...      # synthetic, no download

Run with a dataset name only and no --manual_dir to see the layout it expects.
"""

from __future__ import annotations

import pathlib
import sys
import time

import tensorflow_datasets as tfds
from absl import app, flags

from zegot_jax.data import registry
from zegot_jax.data.builders import DatasetContentError, DatasetLayoutError

_DATA_DIR = flags.DEFINE_string("data_dir", str(pathlib.Path.home() / "tensorflow_datasets"),
                                "where the built dataset is written")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "where the downloaded files are (not for the synthetic textures_zs3)")
_ALLOW_PARTIAL = flags.DEFINE_bool("allow_partial", False, "accept split sizes other than the official ones")


def build(name: str, data_dir: str, manual_dir: str | None = None, allow_partial: bool = False) -> registry.Dataset:
  builder = registry.make_builder(name, data_dir, verify_counts=not allow_partial)
  if manual_dir is None and not registry.is_synthetic(name):
    raise DatasetLayoutError(f"{name} is built from files you download; pass --manual_dir.\n"
                             f"Expected layout of --manual_dir:\n{builder.LAYOUT}")
  if manual_dir is not None and (not pathlib.Path(manual_dir).is_dir() or not any(pathlib.Path(manual_dir).iterdir())):
    raise builder.layout_error(f"manual directory {manual_dir} does not exist or is empty")
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  builder.download_and_prepare(download_config=config)  # tfds shows a progress bar per split
  return registry.load(name, data_dir)


def main(argv):
  if len(argv) != 2:
    raise app.UsageError(f"usage: python -m zegot_jax.data.build NAME [flags]; NAME in {sorted(registry.ALL_BUILDERS)}")
  start = time.perf_counter()
  try:
    dataset = build(argv[1], _DATA_DIR.value, _MANUAL_DIR.value, _ALLOW_PARTIAL.value)
  except (DatasetLayoutError, DatasetContentError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  sizes = ", ".join(f"{k}: {len(v)}" for k, v in dataset.splits.items())
  print(f"built {argv[1]} in {time.perf_counter() - start:.1f} s at {dataset.builder.data_dir} ({sizes}); "
        f"{len(dataset.spec.classes)} classes, unseen: {', '.join(dataset.spec.unseen_names)}")


if __name__ == "__main__":
  app.run(main)
