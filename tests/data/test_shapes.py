"""The synthetic shapes world: determinism, exact labels, distinct shapes, captions and speed."""

from __future__ import annotations

import collections
import re
import time

import numpy as np
import pytest

from zegot_jax.data import shapes
from zegot_jax.data.shapes import (BACKGROUNDS, CATEGORIES, COLOURS, IGNORE_LABEL, OBJECT_TEXTURES, ShapeObject,
                                   caption, object_mask, render_object, render_scene)

SIZE = 96
MIN_PIXELS = 0.02 * SIZE * SIZE


def scenes(seed: int, count: int, **kwargs) -> list[tuple[np.ndarray, np.ndarray, list[ShapeObject], str]]:
  rng = np.random.default_rng(seed)
  return [render_scene(rng, SIZE, **kwargs) for _ in range(count)]


def modal_colour(pixels: np.ndarray) -> tuple[int, ...]:
  values, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
  return tuple(int(v) for v in values[np.argmax(counts)])


def test_constants():
  assert len(CATEGORIES) == 12 and shapes.DEFAULT_UNSEEN == (4, 6, 10)
  assert [CATEGORIES[i] for i in shapes.DEFAULT_UNSEEN] == ["heart", "ring", "arrow"]
  words = list(CATEGORIES) + list(COLOURS) + list(BACKGROUNDS)
  assert all(re.fullmatch(r"[a-z]+", w) for w in words)
  assert len(set(CATEGORIES) | set(COLOURS) | set(BACKGROUNDS)) == len(words)  # caption words are unambiguous
  values = np.array(list(COLOURS.values()), np.float64)
  distance = np.linalg.norm(values[:, None] - values[None], axis=-1) + np.eye(len(values)) * 1e3
  assert distance.min() > 80


def test_same_seed_same_scene():
  for (im_a, lab_a, obj_a, bg_a), (im_b, lab_b, obj_b, bg_b) in zip(scenes(7, 20), scenes(7, 20)):
    assert im_a.tobytes() == im_b.tobytes() and lab_a.tobytes() == lab_b.tobytes()
    assert obj_a == obj_b and bg_a == bg_b
    assert caption(obj_a, bg_a, np.random.default_rng(3)) == caption(obj_b, bg_b, np.random.default_rng(3))
  a, b = render_object(np.random.default_rng(5), 3), render_object(np.random.default_rng(5), 3)
  assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes() and a[2:] == b[2:]


def test_different_seeds_differ():
  images = [render_scene(np.random.default_rng(seed))[0] for seed in range(10)]
  assert len({im.tobytes() for im in images}) == 10
  assert len({render_object(np.random.default_rng(seed), 0)[0].tobytes() for seed in range(10)}) == 10


def test_outputs_and_label_values():
  counts = []
  for image, label, objects, background in scenes(0, 200):
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert label.shape == (SIZE, SIZE) and label.dtype == np.uint8
    assert background in BACKGROUNDS
    assert all(o.colour in COLOURS and o.texture in OBJECT_TEXTURES for o in objects)
    present = set(np.unique(label).tolist()) - {IGNORE_LABEL}
    assert present == {o.category for o in objects}
    per_category = collections.Counter(o.category for o in objects)
    for category, n in per_category.items():
      assert (label == category).sum() >= n * MIN_PIXELS
    counts.append(len(objects))
  assert max(counts) <= 4 and np.mean(counts) > 1.5  # few objects are lost to occlusion and clipping
  assert (np.asarray(scenes(1, 5, num_objects=(0, 0))[0][1]) == IGNORE_LABEL).all()


def test_each_object_keeps_enough_visible_pixels():
  for _, label, objects, _ in scenes(1, 150):
    masks = [object_mask(o, SIZE) for o in objects]
    for i, obj in enumerate(objects):
      # Pixels of this category inside this mask belong to this object unless a later one of its category covers them.
      covered = np.zeros_like(masks[i])
      for mask, other in zip(masks[i + 1:], objects[i + 1:]):
        if other.category == obj.category:
          covered |= mask
      visible = masks[i] & (label == obj.category) & ~covered
      assert visible.sum() >= MIN_PIXELS


def test_labels_follow_the_topmost_returned_object():
  for _, label, objects, _ in scenes(2, 150):
    top = np.full(label.shape, IGNORE_LABEL, np.uint8)
    for obj in objects:
      top[object_mask(obj, SIZE)] = obj.category
    labelled = label != IGNORE_LABEL
    np.testing.assert_array_equal(label[labelled], top[labelled])  # clutter is never labelled


def test_solid_objects_paint_exactly_their_labelled_pixels():
  checked = 0
  for image, label, objects, _ in scenes(3, 300):
    once = collections.Counter(o.category for o in objects)
    for obj in objects:
      if obj.texture == "solid" and once[obj.category] == 1:
        pixels = image[label == obj.category]
        assert (pixels == COLOURS[obj.colour]).all(), obj
        checked += 1
  assert checked > 50


def test_dropped_objects_stay_painted_but_unlabelled():
  big = ShapeObject(0, "red", "solid", (40.0, 40.0), 20.0, 0.0)
  corner = ShapeObject(1, "blue", "solid", (0.0, 0.0), 6.0, 0.0)  # a quarter of it shows: under 2%
  objects = [big, corner]
  image = np.zeros((SIZE, SIZE, 3), np.uint8)
  instances = shapes._paint(np.random.default_rng(0), image, objects)
  label, kept = shapes._labels(instances, objects)
  assert kept == [big]
  mask = object_mask(corner, SIZE)
  assert 0 < mask.sum() < MIN_PIXELS
  assert (label[mask] == IGNORE_LABEL).all() and (image[mask] == COLOURS["blue"]).all()
  assert (label == 0).sum() == object_mask(big, SIZE).sum()


@pytest.mark.parametrize("category", range(len(CATEGORIES)), ids=CATEGORIES)
def test_render_object(category):
  rng = np.random.default_rng(category)
  for _ in range(6):
    image, label, obj, background = render_object(rng, category)
    assert obj.category == category and background in BACKGROUNDS
    assert set(np.unique(label).tolist()) == {category, IGNORE_LABEL}
    assert 0.05 <= (label == category).mean() <= 0.60
    assert modal_colour(image[label == category]) == COLOURS[obj.colour]  # textures keep the main colour dominant
    if CATEGORIES[category] == "ring":
      y, x = (int(round(c)) for c in obj.center)
      assert label[y, x] == IGNORE_LABEL


def test_object_size_and_position_follow_their_arguments():
  rng = np.random.default_rng(0)
  offsets, radii = [], []
  for i in range(60):
    _, _, obj, _ = render_object(rng, i % len(CATEGORIES), SIZE, object_size=(0.15, 0.2), jitter=0.25)
    offsets.append(np.abs(np.asarray(obj.center) - (SIZE - 1) / 2) / SIZE)
    radii.append(obj.size / SIZE)
  assert np.max(offsets) <= 0.25 and np.max(offsets) > 0.2  # spread over the whole allowed range
  assert 0.15 <= np.min(radii) and np.max(radii) <= 0.2
  # The defaults draw what they always drew (the datasets and the shipped mini-CLIP's probe depend on it).
  default = render_object(np.random.default_rng(1), 3, SIZE)
  explicit = render_object(np.random.default_rng(1), 3, SIZE, object_size=shapes.OBJECT_SIZE,
                           jitter=shapes.OBJECT_JITTER)
  assert default[2] == explicit[2] and np.array_equal(default[0], explicit[0])
  big = [o.size / SIZE for _, _, objects, _ in scenes(6, 40, object_size=(0.3, 0.4)) for o in objects]
  assert big and 0.3 <= min(big) and max(big) <= 0.4
  with pytest.raises(ValueError, match="object_size"):
    render_scene(np.random.default_rng(0), object_size=(0.3, 0.2))


def test_shapes_are_distinct():
  """No two categories overlap closely at any relative rotation (same centre and circumradius)."""
  size = 64
  angles = range(0, 360, 6)
  masks = [[object_mask(ShapeObject(c, "red", "solid", (31.5, 31.5), 28.0, a), size) for a in angles]
           for c in range(len(CATEGORIES))]
  for i in range(len(CATEGORIES)):
    for j in range(i + 1, len(CATEGORIES)):
      a = masks[i][0]
      iou = max((a & b).sum() / (a | b).sum() for b in masks[j])
      assert iou < 0.9, (CATEGORIES[i], CATEGORIES[j], iou)
  square, diamond = CATEGORIES.index("square"), CATEGORIES.index("diamond")
  assert max((masks[diamond][0] & b).sum() / (masks[diamond][0] | b).sum() for b in masks[square]) < 0.8


def test_category_restriction():
  allowed = {0, 4, 9}
  for _, label, objects, _ in scenes(4, 200, categories=sorted(allowed)):
    assert {o.category for o in objects} <= allowed
    assert set(np.unique(label).tolist()) <= allowed | {IGNORE_LABEL}
  seen = {o.category for _, _, objects, _ in scenes(5, 100, categories=[2]) for o in objects}
  assert seen == {2}
  with pytest.raises(ValueError, match="categories"):
    render_scene(np.random.default_rng(0), categories=[12])


def test_caption_examples():
  star = ShapeObject(3, "red", "striped", (10.0, 10.0), 10.0, 0.0)
  cross = ShapeObject(5, "blue", "solid", (30.0, 30.0), 10.0, 0.0)
  ring = ShapeObject(6, "green", "dotted", (50.0, 50.0), 10.0, 0.0)
  circle = ShapeObject(0, "orange", "solid", (50.0, 50.0), 10.0, 0.0)
  assert caption([star, ring], "striped") == "a red star and a green ring on a striped background"
  assert caption([star, cross, ring], "plain") == "a red star, a blue cross and a green ring on a plain background"
  assert caption([circle], "dotted") == "an orange circle on a dotted background"
  assert caption([star, circle], None, colours=False) == "a star and a circle"
  assert caption([circle, ring], "plain", colours=False) == "a circle and a ring on a plain background"


def parse_caption(text: str) -> tuple[list[tuple[str, str]], str]:
  match = re.fullmatch(r"(.+) on a ([a-z]+) background", text)
  assert match, text
  phrases = re.split(r", | and ", match.group(1))
  named = []
  for phrase in phrases:
    words = phrase.split(" ")
    assert len(words) == 3 and words[0] in ("a", "an"), phrase
    named.append((words[1], words[2]))
  return named, match.group(2)


def test_captions_name_every_object_once():
  shuffled = 0
  for i, (_, _, objects, background) in enumerate(scenes(6, 200)):
    if not objects:
      continue
    expected = [(o.colour, CATEGORIES[o.category]) for o in objects]
    named, bg = parse_caption(caption(objects, background))
    assert named == expected and bg == background
    named, bg = parse_caption(caption(objects, background, np.random.default_rng(i)))
    assert sorted(named) == sorted(expected) and bg == background
    shuffled += named != expected
    words = re.findall(r"[a-z]+", caption(objects, background))
    for category, n in collections.Counter(o.category for o in objects).items():
      assert words.count(CATEGORIES[category]) == n
  assert shuffled > 20  # the rng does reorder


def test_speed():
  rng = np.random.default_rng(0)
  render_scene(rng)
  start = time.perf_counter()
  for _ in range(200):
    render_scene(rng, SIZE)
  rate = 200 / (time.perf_counter() - start)
  print(f"render_scene: {rate:.0f} scenes/s at size {SIZE}")
  assert rate > 100
