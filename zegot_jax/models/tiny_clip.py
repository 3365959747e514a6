"""Tiny randomly initialized encoders for smoke runs and tests (`clip.path = "random-tiny"`), of any family.

Written in transformers' format through `save_pretrained`, with the family's tiny tokenizer, so they are loaded
by the same `from_pretrained` path as a real checkpoint. Deterministic from the seed; no torch needed.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import jax
import jax.numpy as jnp

from zegot_jax import errors
from zegot_jax.models import encoder_checkpoint, encoders

RANDOM_TINY = "random-tiny"


def directory_name(family: str) -> str:
  """Where in a workdir training writes the tiny random encoder of `family`."""
  return "random_tiny_clip" if family == "clip" else f"random_tiny_{family}"


def make_random_clip(directory: str | pathlib.Path, seed: int = 0, family: str = "clip") -> pathlib.Path:
  """Writes the tiny random encoder of `family` to `directory` once. Written to a temporary directory and renamed,
  so that several processes sharing a disk never see a half-written checkpoint (the first rename wins)."""
  directory = pathlib.Path(directory)
  if directory.is_dir():
    return directory
  spec = encoders.FAMILIES[family]
  config = spec.tiny_config()
  v = config.vision
  params = spec.module(config).init(jax.random.key(seed), jnp.zeros((1, v.image_size, v.image_size, 3)),
                                    jnp.zeros((1, 4), jnp.int32))["params"]
  with errors.storage(f"could not write the tiny random {family} to {directory}"):
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=directory.name + ".", dir=directory.parent))
    try:
      spec.tiny_tokenizer().save_pretrained(tmp)
      encoder_checkpoint.save_pretrained(params, config, tmp)
    except BaseException:  # a full disk or a kill: no half-written copy is left behind
      shutil.rmtree(tmp, ignore_errors=True)
      raise
  try:
    os.rename(tmp, directory)
  except OSError:  # another process finished first: its copy is identical
    shutil.rmtree(tmp, ignore_errors=True)
  return directory
