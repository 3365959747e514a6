"""The zero-shot label mapping, in one place: what a dataset's label map becomes for training in each setting.

The peers' protocol (ZegCLIP, OTSeg; docs/reading.md): a transductive run trains on every class name, and the
unseen classes' pixels are UNLABELLED (254): their place is known, their class is not, and phase 2 pseudo-labels
them; phase 1 reads them as ignored. An inductive run never sees an unseen name: it trains on the seen classes
only, and their pixels are IGNORE_INDEX (255), as boundaries and background are.

Dataset label ids are indices into `spec.classes`; the model's are indices into the trained class list
(`training_classes`), which is the dataset's own order, without the unseen classes when inductive.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zegot_jax.data.classes import IGNORE_INDEX, UNLABELLED, DatasetSpec

SETTINGS = ("transductive", "inductive")


def check_setting(setting: str) -> str:
  if setting not in SETTINGS:
    raise ValueError(f"setting={setting!r}; expected one of {SETTINGS}")
  return setting


def unseen_lut(unseen: Sequence[int], setting: str) -> np.ndarray:
  """256-entry table on dataset ids: unseen classes → UNLABELLED (transductive) or IGNORE_INDEX (inductive), the
  rest unchanged. Applied by the input pipeline to every training label map."""
  lut = np.arange(256, dtype=np.uint8)
  lut[list(unseen)] = UNLABELLED if check_setting(setting) == "transductive" else IGNORE_INDEX
  return lut


def training_classes(spec: DatasetSpec, setting: str) -> tuple[list[int], np.ndarray]:
  """(dataset class indices the model is trained on, 256-entry table from dataset ids into that list). Inductive
  runs train on the seen classes only."""
  indices = list(range(len(spec.classes))) if check_setting(setting) == "transductive" else list(spec.seen)
  lut = np.arange(256, dtype=np.uint8)
  lut[:len(spec.classes)] = IGNORE_INDEX
  lut[indices] = np.arange(len(indices))
  return indices, lut


def unseen_positions(spec: DatasetSpec, setting: str) -> list[int]:
  """The unseen classes' positions in the trained class list: what phase 2 pseudo-labels ([] when inductive)."""
  classes, _ = training_classes(spec, setting)
  return [classes.index(i) for i in spec.unseen] if setting == "transductive" else []


def ignore_unlabelled(labels: jax.Array) -> jax.Array:
  """Phase 1: unlabelled pixels count as ignored."""
  return jnp.where(labels == UNLABELLED, jnp.asarray(IGNORE_INDEX, labels.dtype), labels)
