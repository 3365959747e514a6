"""Every dataset by name: building it and opening its splits as random-access sources."""

from __future__ import annotations

import hashlib
import pathlib
from typing import Any, NamedTuple

import numpy as np

from zegot_jax.data.builders import BUILDERS, SegmentationBuilder
from zegot_jax.data.classes import DatasetSpec
from zegot_jax.data.textures_builder import TexturesZs3
from zegot_jax.errors import ConfigError, DamagedFileError, MissingFileError

SYNTHETIC: dict[str, type[SegmentationBuilder]] = {TexturesZs3.name: TexturesZs3}  # render themselves: no download
ALL_BUILDERS: dict[str, type[SegmentationBuilder]] = {**BUILDERS, **SYNTHETIC}


class Dataset(NamedTuple):
  spec: DatasetSpec  # classes, unseen split, crop and evaluation settings (the builder's; stored in its metadata)
  splits: dict[str, Any]  # split name → tfds ArrayRecordDataSource (len, random access, decoded numpy)
  builder: SegmentationBuilder


def is_synthetic(name: str) -> bool:
  """Whether the dataset renders itself (built on first use, no manual directory)."""
  return name.partition("/")[0] in SYNTHETIC


def parse_name(name: str) -> tuple[str, str | None]:
  """'textures_zs3/tiny' → ('textures_zs3', 'tiny'); an unknown dataset or config is a ConfigError."""
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
  base, config = parse_name(name)
  # array_record: the format tfds writes and reads without TensorFlow, with random access for grain.
  return ALL_BUILDERS[base](data_dir=str(data_dir), config=config, file_format="array_record", **kwargs)


def load(name: str, data_dir: str | pathlib.Path) -> Dataset:
  """Opens a built dataset; a dataset that was not built gives the command that builds it."""
  builder = make_builder(name, data_dir)
  if not builder.is_prepared():
    raise MissingFileError(f"dataset {name!r} is not built in {data_dir} (looked for {builder.data_dir}); build it "
                           f"with {_build_command(name, data_dir)}")
  try:
    splits = {k: CheckedSource(v, name, k, data_dir) for k, v in builder.as_data_source().items()}
    for source in splits.values():  # a truncated file fails here, at its first or last record
      _ = source[0], source[len(source) - 1]
  except DamagedFileError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (array_record raises RuntimeError, ValueError, ...)
    raise DamagedFileError(f"dataset {name!r} in {builder.data_dir} cannot be read ({type(e).__name__}: {e}); "
                           f"rebuild it: {_build_command(name, data_dir, overwrite=True)}") from e
  return Dataset(builder.spec, splits, builder)


def _build_command(name: str, data_dir, overwrite: bool = False) -> str:
  return (f"python -m zegot_jax.data.build {name} --data_dir {data_dir}"
          + ("" if is_synthetic(name) else " --manual_dir <where you downloaded it>")
          + (" --overwrite" if overwrite else ""))


class CheckedSource:
  """A split's random-access source whose read errors name the dataset, split and record, and the fix."""

  def __init__(self, source: Any, name: str, split: str, data_dir):
    self.source, self.name, self.split, self.data_dir = source, name, split, data_dir

  def __len__(self) -> int:
    return len(self.source)

  def __iter__(self):
    return (self[i] for i in range(len(self)))

  def __getitem__(self, index: int) -> Any:
    if not -len(self) <= index < len(self):
      raise IndexError(f"record {index} of {self.name}/{self.split} ({len(self)} records)")
    try:
      return self.source[index]
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedFileError(f"dataset {self.name!r}, split {self.split!r}, record {index} cannot be read "
                             f"({type(e).__name__}: {e}); the file is damaged: rebuild it with "
                             f"{_build_command(self.name, self.data_dir, overwrite=True)}") from e

  def __repr__(self) -> str:
    return f"CheckedSource({self.name}/{self.split}, {len(self)} records)"


def partial_note(dataset: Dataset) -> str | None:
  """'train 3 of 10582, validation 2 of 1449' for a dataset built with --allow_partial; None for a full one."""
  partial = dict(dataset.builder.info.metadata).get("partial")
  return ", ".join(f"{k} {v}" for k, v in partial.items()) if partial else None


def fingerprint(dataset: Dataset, split: str = "train", samples: int = 8) -> dict:
  """What identifies a build's split cheaply: its record count and a sha256 of `samples` records spread over it
  (every array's name, dtype, shape and bytes) and of its class list. Two builds of the same files agree; a build
  of other images, another class list or another size does not. Reads `samples` records."""
  source = dataset.splits[split]
  n = len(source)
  digest = hashlib.sha256(repr((list(dataset.spec.classes), list(dataset.spec.unseen))).encode())
  for index in sorted({round(i * (n - 1) / max(samples - 1, 1)) for i in range(samples)} if n else ()):
    record = source[index]
    for key in sorted(record):
      value = np.asarray(record[key])
      digest.update(f"{index}/{key}/{value.dtype}/{value.shape}".encode())
      digest.update(np.ascontiguousarray(value).tobytes())
  return dict(split=split, examples=n, sha256=digest.hexdigest())
