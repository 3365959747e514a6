"""The two training phases of appendix B (Algorithm 2), as pure functions of the step.

Phase 1 (seen-class-guided learning), steps [0, T_g) with T_g = phase1_fraction · total: pixels of unseen
classes are unlabelled (their location is known, not their class) and count as ignored.
Phase 2 (transductive self-training), steps [T_g, total): every unlabelled pixel gets the pseudo-label
argmax over the unseen classes of λY + (1 − λ)Ỹ from a teacher (Algorithm 2, line 11).

The teacher is part of the train state, so a resumed run does the same thing. Its policy:
  * "previous" (VOC): the previous step's parameters, Z_{t−1};
  * "frozen_then_live" (Context, COCO-Stuff): the parameters at the end of phase 1, Z_{T_g−1}, until
    live_fraction · total steps, then the previous step's again.
Both are one rule: the teacher takes the pre-update parameters at every step, except while it is frozen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from zegot_jax.data.classes import UNLABELLED
from zegot_jax.train_config import TrainConfig

@dataclasses.dataclass(frozen=True)
class Schedule:
  """The phases of one run: `Schedule.of(train)` from its (checked) `TrainConfig`, which holds the defaults."""

  total_steps: int
  phase1_fraction: float  # T_g = phase1_fraction · total_steps (appendix B: 20%)
  teacher: str  # train_config.TEACHER_POLICIES
  live_fraction: float  # frozen_then_live: the frozen teacher is used until this fraction of the steps
  transductive: bool  # inductive runs never leave phase 1 (no unseen names, no pseudo-labels)
  phase1_unseen: str  # train_config.PHASE1_UNSEEN

  @classmethod
  def of(cls, train: TrainConfig, transductive: bool = True) -> Schedule:
    return cls(total_steps=train.steps, phase1_fraction=train.phase1_fraction, teacher=train.teacher,
               live_fraction=train.live_fraction, transductive=transductive, phase1_unseen=train.phase1_unseen)

  @property
  def phase1_steps(self) -> int:
    return int(round(self.phase1_fraction * self.total_steps)) if self.transductive else self.total_steps

  @property
  def live_from(self) -> int:
    return int(round(self.live_fraction * self.total_steps)) if self.teacher == "frozen_then_live" else 0

  def phase(self, step: int) -> int:
    """1 or 2 (host-side, for logging)."""
    return 1 if step < self.phase1_steps else 2

  def self_training(self, step: jax.Array) -> jax.Array:
    """Whether `step` (a traced scalar) pseudo-labels: phase 2."""
    return step >= self.phase1_steps

  def loss_classes(self, step: jax.Array, num_classes: int, unseen: Sequence[int]) -> jax.Array | None:
    """(K,) bool: the classes the loss covers at `step` (a traced scalar); None: all of them."""
    if self.phase1_unseen == "negatives" or not unseen:
      return None
    return jnp.ones(num_classes, bool).at[jnp.asarray(unseen)].set(self.self_training(step))

  def teacher_follows(self, step: jax.Array) -> jax.Array:
    """Whether the teacher takes the pre-update parameters at `step`: always in phase 1 (so that it holds
    Z_{T_g−1} when phase 2 starts), never while frozen, always from live_from on."""
    return (step < self.phase1_steps) | (step >= self.live_from)


def next_teacher(schedule: Schedule, step: jax.Array, teacher: Any, params: Any) -> Any:
  """The teacher for step + 1, given the pre-update params of `step`; a select, no host sync."""
  follow = schedule.teacher_follows(step)
  return jax.tree_util.tree_map(lambda t, p: jnp.where(follow, p, t), teacher, params)


def pseudo_label(labels: jax.Array, unseen_logits: jax.Array, unseen: Sequence[int]) -> jax.Array:
  """Algorithm 2, line 11: unlabelled pixels get argmax over the unseen classes of the teacher's
  λY + (1 − λ)Ỹ; labelled and ignored pixels are unchanged. labels (B, H, W); unseen_logits (B, H, W, U): the
  teacher's logits of the unseen classes, in the order of `unseen` (ZegOT.decode(..., keep=unseen) gives them)."""
  unseen = jnp.asarray(unseen, jnp.int32)
  best = unseen[jnp.argmax(unseen_logits, axis=-1)]  # (B, H, W) class indices
  return jnp.where(labels == UNLABELLED, best.astype(labels.dtype), labels)

