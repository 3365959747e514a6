"""The zero-shot label mapping on a hand-made spec: what each setting makes of seen, unseen, ignored pixels."""

import jax.numpy as jnp
import numpy as np
import pytest

from zegot_jax.data import label_map
from zegot_jax.data.classes import IGNORE_INDEX, UNLABELLED, DatasetSpec


def _spec():
  return DatasetSpec(name="toy", classes=("a", "b", "c", "d", "e"), unseen=(1, 3), split_sizes={"train": 1},
                     crop_size=8, train_scale=(16, 8), eval_stride=8, eval_short_side=8)


def test_transductive_keeps_every_class_and_marks_unseen_pixels_unlabelled():
  spec = _spec()
  dataset_labels = np.array([0, 1, 2, 3, 4, IGNORE_INDEX], np.uint8)
  marked = label_map.unseen_lut(spec.unseen, "transductive")[dataset_labels]
  np.testing.assert_array_equal(marked, [0, UNLABELLED, 2, UNLABELLED, 4, IGNORE_INDEX])
  classes, lut = label_map.training_classes(spec, "transductive")
  assert classes == [0, 1, 2, 3, 4]
  np.testing.assert_array_equal(lut[marked], marked)  # the trained list is the dataset's: ids unchanged
  assert label_map.unseen_positions(spec, "transductive") == [1, 3]


def test_inductive_trains_on_seen_names_only_and_ignores_unseen_pixels():
  spec = _spec()
  marked = label_map.unseen_lut(spec.unseen, "inductive")[np.array([0, 1, 2, 3, 4, IGNORE_INDEX], np.uint8)]
  np.testing.assert_array_equal(marked, [0, IGNORE_INDEX, 2, IGNORE_INDEX, 4, IGNORE_INDEX])
  classes, lut = label_map.training_classes(spec, "inductive")
  assert classes == [0, 2, 4]
  np.testing.assert_array_equal(lut[marked], [0, IGNORE_INDEX, 1, IGNORE_INDEX, 2, IGNORE_INDEX])
  assert label_map.unseen_positions(spec, "inductive") == []


def test_supervised_labels_every_class_and_pseudo_labels_none():
  spec = _spec()
  dataset_labels = np.array([0, 1, 2, 3, 4, IGNORE_INDEX], np.uint8)
  marked = label_map.unseen_lut(spec.unseen, "supervised")[dataset_labels]
  np.testing.assert_array_equal(marked, [0, 1, 2, 3, 4, IGNORE_INDEX])
  classes, lut = label_map.training_classes(spec, "supervised")
  assert classes == [0, 1, 2, 3, 4]
  np.testing.assert_array_equal(lut[marked], marked)
  assert label_map.unseen_positions(spec, "supervised") == []


def test_phase_1_reads_unlabelled_as_ignored_and_a_bad_setting_is_named():
  labels = jnp.asarray([0, UNLABELLED, IGNORE_INDEX, 2], jnp.int32)
  np.testing.assert_array_equal(label_map.ignore_unlabelled(labels), [0, IGNORE_INDEX, IGNORE_INDEX, 2])
  with pytest.raises(ValueError, match=r"setting='zero-shot'; expected one of \('transductive', 'inductive', 'supervised'\)"):
    label_map.training_classes(_spec(), "zero-shot")
