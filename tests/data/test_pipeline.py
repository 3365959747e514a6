"""The grain pipeline on the tiny synthetic dataset: determinism, exact resume, sharding, zero-shot marking."""

import numpy as np
import pytest

from zegot_jax.data import build, pipeline
from zegot_jax.data.classes import IGNORE_INDEX, UNLABELLED


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return build.build("textures_zs3/tiny", tmp_path_factory.mktemp("tfds"))


def _batches(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def _train(world, **kwargs):
  defaults = dict(batch_size=4, seed=3, process_index=0, process_count=1)
  return pipeline.train_dataset(world.splits["train"], world.spec, **{**defaults, **kwargs})


def test_batches_have_crop_shape_and_valid_labels(world):
  for batch in _batches(_train(world), 5):
    assert batch["image"].shape == (4, 64, 64, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (4, 64, 64) and batch["label"].dtype == np.uint8
    values = set(np.unique(batch["label"]).tolist())
    assert values <= set(world.spec.seen) | {UNLABELLED, IGNORE_INDEX}


def test_same_seed_same_batches_other_seed_other_batches(world):
  _assert_same(_batches(_train(world), 6), _batches(_train(world), 6))
  other = _batches(_train(world, seed=4), 1)[0]
  assert not np.array_equal(other["image"], _batches(_train(world), 1)[0]["image"])


def test_restored_iterator_continues_with_the_same_batches(world):
  """Crosses an epoch boundary (40 examples = 10 batches) to cover the reshuffle too."""
  it = iter(_train(world))
  for _ in range(8):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(5)]
  restored = iter(_train(world))
  restored.set_state(state)
  _assert_same([next(restored) for _ in range(5)], expected)


def test_worker_processes_give_the_same_stream(world):
  _assert_same(_batches(_train(world, num_workers=2), 4), _batches(_train(world), 4))


def test_processes_get_disjoint_shards(world):
  source = world.splits["train"]
  ids = [{ex["image_id"] for ex in pipeline.eval_dataset(source, world.spec, process_index=p, process_count=2)}
         for p in range(2)]
  assert ids[0].isdisjoint(ids[1]) and len(ids[0] | ids[1]) == len(source)
  a = _batches(_train(world, process_index=0, process_count=2), 2)
  b = _batches(_train(world, process_index=1, process_count=2), 2)
  assert not np.array_equal(a[0]["image"], b[0]["image"])


def test_unseen_pixels_are_unlabelled_or_ignored(world):
  unseen = list(world.spec.unseen)
  raw_unseen = sum(int(np.isin(world.splits["train"][i]["label"], unseen).sum()) for i in range(40))
  assert raw_unseen > 0  # the tiny dataset has unseen objects
  trans = _batches(_train(world, photometric=False), 10)
  induct = _batches(_train(world, setting="inductive", photometric=False), 10)
  for t, i in zip(trans, induct):
    assert not np.isin(t["label"], unseen).any() and not np.isin(i["label"], unseen).any()
    assert UNLABELLED not in i["label"]
    np.testing.assert_array_equal(t["image"], i["image"])  # same augmentation, only the marking differs
    np.testing.assert_array_equal(np.where(t["label"] == UNLABELLED, IGNORE_INDEX, t["label"]), i["label"])
  assert sum(int((t["label"] == UNLABELLED).sum()) for t in trans) > 0
  supervised = _batches(_train(world, setting="supervised", photometric=False), 10)
  for t, s in zip(trans, supervised):  # every unlabelled pixel of the transductive batch keeps its unseen class
    np.testing.assert_array_equal(t["image"], s["image"])
    assert np.isin(s["label"][t["label"] == UNLABELLED], unseen).all()
    np.testing.assert_array_equal(np.where(np.isin(s["label"], unseen), UNLABELLED, s["label"]), t["label"])
  with pytest.raises(ValueError, match="setting='semi'"):
    _train(world, setting="semi")


def test_eval_examples_keep_labels_at_original_resolution(world):
  ds = pipeline.eval_dataset(world.splits["validation"], world.spec, process_index=0, process_count=1)
  assert len(ds) == 10
  ex = ds[0]
  raw = world.splits["validation"][0]
  np.testing.assert_array_equal(ex["label"], raw["label"][..., 0])
  assert min(ex["image"].shape[:2]) == world.spec.eval_short_side and ex["image_id"] == raw["image_id"].decode()
