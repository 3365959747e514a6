"""Every dataset by name: building it and opening its splits as random-access sources."""

from __future__ import annotations

import pathlib
from typing import Any, NamedTuple


from zegot_jax.data.builders import BUILDERS, SegmentationBuilder
from zegot_jax.data.classes import DatasetSpec
from zegot_jax.data.textures_builder import TexturesZs3
from zegot_jax.errors import ConfigError, MissingFileError

SYNTHETIC: dict[str, type[SegmentationBuilder]] = {TexturesZs3.name: TexturesZs3}  # render themselves: no download
ALL_BUILDERS: dict[str, type[SegmentationBuilder]] = {**BUILDERS, **SYNTHETIC}


class Dataset(NamedTuple):
  spec: DatasetSpec  # classes, unseen split, crop and evaluation settings (from the built dataset's metadata)
  splits: dict[str, Any]  # split name → tfds ArrayRecordDataSource (len, random access, decoded numpy)
  builder: SegmentationBuilder


def is_synthetic(name: str) -> bool:
  """Whether the dataset renders itself (built on first use, no manual directory)."""
  return name.partition("/")[0] in SYNTHETIC


def _parse(name: str) -> tuple[str, str | None]:
  base, _, config = name.partition("/")
  if base not in ALL_BUILDERS:
    raise ConfigError(f"unknown dataset {base!r}; known datasets: {sorted(ALL_BUILDERS)}")
  configs = [c.name for c in ALL_BUILDERS[base].BUILDER_CONFIGS]
  if config and config not in configs:
    choices = f"its configs are {configs}" if configs else f"it has no configs: write {base!r} alone"
    raise ConfigError(f"dataset {base!r} has no config {config!r}; {choices}")
  return base, config or None


def make_builder(name: str, data_dir: str | pathlib.Path, **kwargs) -> SegmentationBuilder:
  """name: a dataset name, optionally with a config ('textures_zs3/tiny')."""
  base, config = _parse(name)
  # array_record: the format tfds writes and reads without TensorFlow, with random access for grain.
  return ALL_BUILDERS[base](data_dir=str(data_dir), config=config, file_format="array_record", **kwargs)


def load(name: str, data_dir: str | pathlib.Path) -> Dataset:
  """Opens a built dataset; a dataset that was not built gives the command that builds it."""
  builder = make_builder(name, data_dir)
  if not builder.is_prepared():
    raise MissingFileError(
        f"dataset {name!r} is not built in {data_dir} (looked for {builder.data_dir}). Build it with\n"
        f"    python -m zegot_jax.data.build {name} --data_dir {data_dir}"
        + ("" if is_synthetic(name) else " --manual_dir <where you downloaded it>"))
  splits = builder.as_data_source()
  return Dataset(builder.spec, dict(splits), builder)


def built_spec(dataset: Dataset) -> dict:
  """The metadata stored with the built dataset (classes, unseen, ignore index): what training trusts."""
  return dict(dataset.builder.info.metadata)
