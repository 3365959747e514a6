"""The zero-shot label mapping, in one place: what a dataset's label map becomes for training in each setting.

The peers' protocol (ZegCLIP, OTSeg; docs/reading.md): a transductive run trains on every class name, and the
unseen classes' pixels are UNLABELLED (254): their place is known, their class is not, and phase 2 pseudo-labels
them; phase 1 reads them as ignored. An inductive run never sees an unseen name: it trains on the seen classes
only, and their pixels are IGNORE_INDEX (255), as boundaries and background are. A supervised run is not zero-shot:
every class is labelled (the fully supervised ceiling the peers report beside their zero-shot numbers); it is
evaluated as the others are, with the seen / unseen split of the dataset.

Dataset label ids are indices into `spec.classes`; the model's are indices into the trained class list
(`training_classes`), which is the dataset's own order, without the unseen classes when inductive.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zegot_jax.data.classes import IGNORE_INDEX, UNLABELLED, DatasetSpec

SETTINGS = ("transductive", "inductive", "supervised")


def check_setting(setting: str) -> str:
  if setting not in SETTINGS:
    raise ValueError(f"setting={setting!r}; expected one of {SETTINGS}")
  return setting


def unseen_lut(unseen: Sequence[int], setting: str) -> np.ndarray:
  """256-entry table on dataset ids: unseen classes → UNLABELLED (transductive), IGNORE_INDEX (inductive) or
  unchanged (supervised), the rest unchanged. Applied by the input pipeline to every training label map."""
  lut = np.arange(256, dtype=np.uint8)
  if check_setting(setting) != "supervised":
    lut[list(unseen)] = UNLABELLED if setting == "transductive" else IGNORE_INDEX
  return lut


def training_classes(spec: DatasetSpec, setting: str) -> tuple[list[int], np.ndarray]:
  """(dataset class indices the model is trained on, 256-entry table from dataset ids into that list). Inductive
  runs train on the seen classes only."""
  indices = list(spec.seen) if check_setting(setting) == "inductive" else list(range(len(spec.classes)))
  lut = np.arange(256, dtype=np.uint8)
  lut[:len(spec.classes)] = IGNORE_INDEX
  lut[indices] = np.arange(len(indices))
  return indices, lut


def unseen_positions(spec: DatasetSpec, setting: str) -> list[int]:
  """The unseen classes' positions in the trained class list: what phase 2 pseudo-labels ([] unless
  transductive)."""
  classes, _ = training_classes(spec, setting)
  return [classes.index(i) for i in spec.unseen] if setting == "transductive" else []


def ignore_unlabelled(labels: jax.Array) -> jax.Array:
  """Phase 1: unlabelled pixels count as ignored."""
  return jnp.where(labels == UNLABELLED, jnp.asarray(IGNORE_INDEX, labels.dtype), labels)
