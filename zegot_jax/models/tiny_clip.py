"""A tiny randomly initialized CLIP checkpoint for smoke runs and tests (`clip.path = "random-tiny"`).

Written in transformers' format through `save_pretrained`, with the byte-level tokenizer, so it is loaded by the
same `from_pretrained` path as a real checkpoint. Deterministic from the seed; no torch needed.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import jax
import jax.numpy as jnp

from zegot_jax import errors
from zegot_jax.models import clip_checkpoint, prompts
from zegot_jax.models.clip import CLIP, CLIPConfig, TextConfig, VisionConfig

RANDOM_TINY = "random-tiny"


def tiny_config() -> CLIPConfig:
  tokenizer_size = 514  # prompts.byte_level_tokenizer(): 512 symbols + [SOS] + [EOS]
  return CLIPConfig(
      vision=VisionConfig(32, 64, 2, 4, image_size=64, patch_size=8),
      text=TextConfig(32, 64, 2, 4, vocab_size=tokenizer_size, max_position_embeddings=77, eos_token_id=513),
      projection_dim=32)


def make_random_clip(directory: str | pathlib.Path, seed: int = 0) -> pathlib.Path:
  """Writes the tiny random CLIP to `directory` once. Written to a temporary directory and renamed, so that
  several processes sharing a disk never see a half-written checkpoint (the first rename wins)."""
  directory = pathlib.Path(directory)
  if directory.is_dir():
    return directory
  config = tiny_config()
  v = config.vision
  params = CLIP(config).init(jax.random.key(seed), jnp.zeros((1, v.image_size, v.image_size, 3)),
                             jnp.zeros((1, 4), jnp.int32))["params"]
  with errors.storage(f"could not write the tiny random CLIP to {directory}"):
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=directory.name + ".", dir=directory.parent))
    try:
      prompts.byte_level_tokenizer().save_pretrained(tmp)
      clip_checkpoint.save_pretrained(params, config, tmp)
    except BaseException:  # a full disk or a kill: no half-written copy is left behind
      shutil.rmtree(tmp, ignore_errors=True)
      raise
  try:
    os.rename(tmp, directory)
  except OSError:  # another process finished first: its copy is identical
    shutil.rmtree(tmp, ignore_errors=True)
  return directory
