"""The textures world: determinism from the generator, labels that match the pixels exactly, captions, builder."""

from __future__ import annotations

import re

import numpy as np
import pytest

from zegot_jax.data import build, label_map, textures
from zegot_jax.data.classes import IGNORE_INDEX
from zegot_jax.data.textures import CATEGORIES, COLOURS, caption, render_scene, texture_mask


def test_constants():
  assert len(CATEGORIES) == 12 and len(set(CATEGORIES)) == 12
  assert [CATEGORIES[i] for i in textures.DEFAULT_UNSEEN] == ["zigzag", "bricks", "rings"]
  words = textures.caption_words()
  assert all(re.fullmatch(r"[a-z]+", w) for w in words)
  assert not set(CATEGORIES) & set(COLOURS)  # a caption word names a category or a colour, never both


def test_same_generator_state_same_scene_and_caption():
  for seed in range(10):
    a, b = render_scene(np.random.default_rng(seed)), render_scene(np.random.default_rng(seed))
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes() and a[2] == b[2]
    assert caption(a[2], np.random.default_rng(seed)) == caption(b[2], np.random.default_rng(seed))
  assert len({render_scene(np.random.default_rng(seed))[0].tobytes() for seed in range(20)}) == 20


def test_scenes_have_distinct_categories_and_every_pixel_labelled():
  counts = []
  for seed in range(100):
    image, label, regions = render_scene(np.random.default_rng(seed), 64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and label.dtype == np.uint8
    cats = [r.category for r in regions]
    assert 2 <= len(cats) <= 4 and len(set(cats)) == len(cats)
    assert set(np.unique(label)) == set(cats)  # every region is visible, every pixel is one of them
    for r in regions:
      assert np.mean(label == r.category) == pytest.approx(r.area)
    counts.append(len(cats))
  assert set(counts) == {2, 3, 4}


@pytest.fixture
def noiseless(monkeypatch):
  """Pure colours: no pixel noise, no colour jitter (the randomness that remains draws the same way)."""
  monkeypatch.setattr(textures, "NOISE", 0.0)
  monkeypatch.setattr(textures, "COLOUR_JITTER", 0)


def test_labels_match_pixels_exactly(noiseless):
  """Without noise and jitter every pixel labelled with a region's category has that region's foreground or
  background colour, and a region shows both (one for plain) where its texture says: a label shifted by one pixel,
  or drawn from another partition than the one painted, breaks this at the boundaries."""
  colours = {n: np.array(v) for n, v in COLOURS.items()}
  for seed in range(40):
    image, label, regions = render_scene(np.random.default_rng(seed), 64)
    for r in regions:
      pixels = image[label == r.category]
      is_fore = np.all(pixels == colours[r.colour], axis=-1)
      is_back = np.all(pixels == colours[r.second_colour], axis=-1)
      assert np.all(is_fore | is_back), (seed, CATEGORIES[r.category])
      if CATEGORIES[r.category] == "plain":
        assert np.all(is_fore)
      else:
        assert is_fore.any() and is_back.any(), (seed, CATEGORIES[r.category])


def test_a_single_region_fills_the_image():
  for c in range(len(CATEGORIES)):
    _, label, regions = render_scene(np.random.default_rng(c), 32, categories=[c])
    assert np.all(label == c) and regions[0].area == 1.0


def test_textures_differ_by_category_at_the_same_draws():
  """The same random draws give 12 different masks: the category, not the randomness, makes the pattern."""
  masks = [texture_mask(np.random.default_rng(0), c, 64) for c in range(len(CATEGORIES))]
  assert len({m.tobytes() for m in masks}) == len(CATEGORIES)
  for name, mask in zip(CATEGORIES, masks):
    share = mask.mean()
    assert share == 1.0 if name == "plain" else 0.05 < share < 0.8, (name, share)


def test_captions_name_exactly_the_regions():
  for seed in range(50):
    rng = np.random.default_rng(seed)
    _, _, regions = render_scene(rng, 64)
    text = caption(regions, rng)
    assert text.endswith(".") and any(text.startswith(p) for p in textures.CAPTION_PREFIXES)
    words = text[:-1].replace(",", "").split()
    assert set(words) <= set(textures.caption_words())
    assert sorted(w for w in words if w in CATEGORIES) == sorted(CATEGORIES[r.category] for r in regions)
    named = [w for w in words if w in COLOURS]
    assert set(named) <= {r.colour for r in regions}


def test_builder_splits_are_deterministic_and_disjoint(tmp_path):
  first = build.build("textures_zs3/tiny", tmp_path / "a")
  again = build.build("textures_zs3/tiny", tmp_path / "b")
  assert {k: len(v) for k, v in first.splits.items()} == {"train": 40, "validation": 10, "test": 10}
  images = {}
  for split in ("train", "validation", "test"):
    for i in range(len(first.splits[split])):
      a, b = first.splits[split][i], again.splits[split][i]
      assert a["image"].tobytes() == b["image"].tobytes() and a["label"].tobytes() == b["label"].tobytes()
      assert a["label"].max() < len(CATEGORIES) and IGNORE_INDEX not in a["label"]
      images[a["image"].tobytes()] = split
  assert len(images) == 60  # no image repeats within or across splits
  meta = dict(first.builder.info.metadata)
  assert meta["classes"] == list(CATEGORIES) and meta["unseen"] == list(textures.DEFAULT_UNSEEN)


def test_training_does_not_rescale_the_textures(tmp_path):
  """The spec turns the random rescale off, so a training label is the stored label, flipped or not (unseen
  pixels marked unlabelled): every texture keeps the period it was drawn with."""
  from zegot_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  world = build.build("textures_zs3/tiny", tmp_path)
  assert world.builder.info.metadata["train_ratio_range"] == [1.0, 1.0]
  lut = label_map.unseen_lut(world.spec.unseen, "transductive")
  stored = [lut[example["label"][..., 0]] for example in world.splits["train"]]
  batch = next(iter(pipeline.train_dataset(world.splits["train"], world.spec, batch_size=8, seed=0,
                                           process_index=0, process_count=1)))
  for label in batch["label"]:
    assert any(np.array_equal(label, s) or np.array_equal(label, s[:, ::-1]) for s in stored)
