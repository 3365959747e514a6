r"""Builds a dataset once, from what the user downloaded, checking it as it goes.

  python -m zegot_jax.data.build voc12_zs3 --manual_dir ~/data/VOC --data_dir ~/tensorflow_datasets
  python -m zegot_jax.data.build pascal_context59_zs3 --manual_dir ~/data/Context --data_dir ...
  python -m zegot_jax.data.build coco_stuff171_zs3 --manual_dir ~/data/coco_stuff164k --data_dir ...
  python -m zegot_jax.data.build textures_zs3 --data_dir ...      # synthetic, no download

Run with a dataset name only and no --manual_dir to see the layout it expects. A dataset that is already built is
not built again (the command says so, and whether that build is partial); --overwrite rebuilds it. A build with
--allow_partial records its split sizes in the dataset's metadata, and training says so.
"""

from __future__ import annotations

import functools
import pathlib
import shutil
import time

import tensorflow_datasets as tfds
from absl import flags

from zegot_jax import errors
from zegot_jax.data import registry
from zegot_jax.data.builders import DatasetLayoutError


def build(name: str, data_dir: str | pathlib.Path, manual_dir: str | None = None, allow_partial: bool = False,
          overwrite: bool = False) -> registry.Dataset:
  """Builds `name` (a built one is kept unless `overwrite`) and opens it."""
  builder = registry.make_builder(name, data_dir, verify_counts=not allow_partial)
  if manual_dir is None and not registry.is_synthetic(name):
    raise DatasetLayoutError(f"{name} is built from files you download; pass --manual_dir.\n"
                             f"Expected layout of --manual_dir:\n{builder.LAYOUT}")
  if manual_dir is not None and (not pathlib.Path(manual_dir).is_dir() or not any(pathlib.Path(manual_dir).iterdir())):
    raise builder.layout_error(f"manual directory {manual_dir} does not exist or is empty")
  if overwrite and builder.is_prepared():
    shutil.rmtree(builder.data_dir)
    builder = registry.make_builder(name, data_dir, verify_counts=not allow_partial)
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  builder.download_and_prepare(download_config=config)  # tfds shows a progress bar per split
  return registry.load(name, data_dir)


def describe(name: str, dataset: registry.Dataset) -> str:
  sizes = ", ".join(f"{k}: {len(v)}" for k, v in dataset.splits.items())
  partial = registry.partial_note(dataset)
  note = f"; PARTIAL build ({partial})" if partial else ""
  return (f"{name} at {dataset.builder.data_dir} ({sizes}){note}; {len(dataset.spec.classes)} classes, unseen: "
          f"{', '.join(dataset.spec.unseen_names)}")


def main(argv, f: dict):
  if len(argv) != 2:
    raise errors.UserError(f"give one dataset name: python -m zegot_jax.data.build NAME [flags], NAME in "
                           f"{sorted(registry.ALL_BUILDERS)}")
  name = argv[1]
  if registry.make_builder(name, f["data_dir"].value).is_prepared() and not f["overwrite"].value:
    print(f"already built, not rebuilt: {describe(name, registry.load(name, f['data_dir'].value))}. Pass "
          f"--overwrite to build it again.")
    return
  start = time.perf_counter()
  dataset = build(name, f["data_dir"].value, f["manual_dir"].value, f["allow_partial"].value, f["overwrite"].value)
  print(f"built {describe(name, dataset)} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  from zegot_jax import cli  # pylint: disable=g-import-not-at-top  (the programs' runner: a layer above data/)

  _flags = dict(
      data_dir=flags.DEFINE_string("data_dir", str(pathlib.Path.home() / "tensorflow_datasets"),
                                   "where the built dataset is written"),
      manual_dir=flags.DEFINE_string("manual_dir", None, "where the downloaded files are (not for textures_zs3)"),
      allow_partial=flags.DEFINE_bool("allow_partial", False, "accept split sizes other than the official ones"),
      overwrite=flags.DEFINE_bool("overwrite", False, "rebuild a dataset that is already built"))
  cli.run(functools.partial(main, f=_flags), positional=1)
