"""The phase switch, the teacher policies and the pseudo-labelling, on hand-made tensors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zegot_jax import selftrain
from zegot_jax.train_config import TrainConfig
from zegot_jax.data import label_map
from zegot_jax.data.classes import IGNORE_INDEX, UNLABELLED


def _schedule(transductive=True, **train):
  return selftrain.Schedule.of(TrainConfig(steps=10, **train), transductive=transductive)


def _teacher_trace(schedule):
  """Which step's pre-update params the teacher holds before each step, simulated with the real rule."""
  teacher = jnp.asarray(-1)
  held = []
  for step in range(schedule.total_steps):
    held.append(int(teacher))
    teacher = selftrain.next_teacher(schedule, jnp.asarray(step), teacher, jnp.asarray(step))
  return held


def test_phase_switch_at_20_percent():
  s = _schedule()
  assert [s.phase(t) for t in range(10)] == [1, 1, 2, 2, 2, 2, 2, 2, 2, 2]
  assert [bool(s.self_training(jnp.asarray(t))) for t in range(10)] == [False] * 2 + [True] * 8
  inductive = _schedule(transductive=False)
  assert all(inductive.phase(t) == 1 for t in range(10))


def test_previous_step_teacher():
  """VOC: at every step the teacher is Z_{t−1}, the params before the previous update."""
  held = _teacher_trace(_schedule(teacher="previous"))
  assert held == [-1, 0, 1, 2, 3, 4, 5, 6, 7, 8]


def test_frozen_then_live_teacher():
  """Large datasets: Z_{T_g−1} (the last phase-1 params) until 50% of the steps, then Z_{t−1} again."""
  held = _teacher_trace(_schedule(teacher="frozen_then_live"))
  # steps 0-1 phase 1; steps 2..5 use the params of step 1 (frozen); from step 5 on it follows again.
  assert held == [-1, 0, 1, 1, 1, 1, 5, 6, 7, 8]


def test_pseudo_labels_only_unlabelled_pixels_and_only_unseen_classes():
  labels = jnp.asarray([[[0, UNLABELLED, IGNORE_INDEX, 2, UNLABELLED]]], jnp.int32)  # (1, 1, 5)
  logits = jnp.asarray([[[[9., 0, 1, 0], [9., 1, 0, 3], [0., 0, 9, 9], [0., 9, 0, 0], [5., 2, 9, 1]]]])
  unseen = [1, 3]
  out = np.asarray(selftrain.pseudo_label(labels, logits[..., jnp.asarray(unseen)], unseen))
  # pixel 1: best unseen is 3 (3 > 1) although class 0 scores 9; pixel 4: unseen 1 (2 > 1) although 2 scores 9.
  np.testing.assert_array_equal(out, [[[0, 3, IGNORE_INDEX, 2, 1]]])
  np.testing.assert_array_equal(label_map.ignore_unlabelled(labels), [[[0, IGNORE_INDEX, IGNORE_INDEX, 2,
                                                                         IGNORE_INDEX]]])


def test_jit_and_bad_schedules():
  s = _schedule(teacher="frozen_then_live")
  f = jax.jit(lambda step, t, p: selftrain.next_teacher(s, step, t, p))
  assert int(f(jnp.asarray(3), jnp.asarray(1), jnp.asarray(3))) == 1
  with pytest.raises(ValueError, match="train.teacher='ema': expected a teacher policy"):
    _schedule(teacher="ema")
  with pytest.raises(ValueError, match="phase1_fraction"):
    _schedule(phase1_fraction=0.8)


def test_phase1_leaves_unseen_channels_out_of_the_loss_only_when_asked():
  unseen = [1, 3]
  excluded = _schedule(phase1_unseen="excluded")
  f = jax.jit(lambda step: excluded.loss_classes(step, 5, unseen))
  np.testing.assert_array_equal(f(jnp.asarray(1)), [True, False, True, False, True])  # phase 1
  np.testing.assert_array_equal(f(jnp.asarray(2)), [True] * 5)  # phase 2: every class has labels
  assert _schedule().loss_classes(jnp.asarray(0), 5, unseen) is None  # "negatives"
  assert excluded.loss_classes(jnp.asarray(0), 5, []) is None  # inductive runs have no unseen channels
  with pytest.raises(ValueError, match="train.phase1_unseen='ignored'"):
    _schedule(phase1_unseen="ignored")
