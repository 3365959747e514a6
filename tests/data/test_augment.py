"""mmseg-style training augmentation: image/label alignment, label values, crop rule, sizes, colour, determinism."""

import colorsys
import math
import time

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from zegot_jax.data.augment import (
    IGNORE_INDEX,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation_hue,
    crop_satisfies,
    hsv_to_rgb,
    pad_to,
    photometric_distortion,
    random_crop,
    random_flip,
    random_rescale,
    resize_short_side,
    rgb_to_hsv,
    train_augment,
)

UNLABELLED = 254
VALUES = (0, 3, 7, 12, UNLABELLED, IGNORE_INDEX)

# A distinct colour per label value; every channel >= 30 so no mix of them is black (black = padding).
LUT = np.zeros((256, 3), np.uint8)
LUT[list(VALUES)] = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (220, 220, 60), (60, 220, 220), (150, 150, 150)]


def blocky_pair(seed, h=480, w=640, block=40, values=VALUES):
  """A label of block x block cells of random values (each value present) and the image LUT[label]."""
  rng = np.random.default_rng(seed)
  cells = rng.choice(np.asarray(values, np.uint8), size=(math.ceil(h / block), math.ceil(w / block)))
  cells.flat[: len(values)] = values
  label = np.repeat(np.repeat(cells, block, axis=0), block, axis=1)[:h, :w]
  return LUT[label], label


def window(a, radius):
  """(H - 2r, W - 2r, 2r + 1, 2r + 1) neighbourhoods of the interior pixels."""
  return sliding_window_view(a, (2 * radius + 1, 2 * radius + 1))


def check_alignment(image, label, radius):
  """Every interior pixel whose label neighbourhood is uniform and far from padding has its label's colour.

  Returns how many pixels were checked.
  """
  padded = (label == IGNORE_INDEX) & (image == 0).all(axis=-1)
  lw = window(label, radius)
  uniform = (lw.min(axis=(-2, -1)) == lw.max(axis=(-2, -1))) & ~window(padded, radius).any(axis=(-2, -1))
  inner = (slice(radius, label.shape[0] - radius), slice(radius, label.shape[1] - radius))
  got, want = image[inner][uniform], LUT[label[inner][uniform]]
  bad = np.flatnonzero((got != want).any(axis=-1))
  assert bad.size == 0, f"{bad.size} misaligned pixels, e.g. {got[bad[:3]]} where {want[bad[:3]]} was expected"
  return int(uniform.sum())


# ---------------------------------------------------------------------------------------------------------------
# Alignment of image and label through the whole pipeline.


@pytest.mark.parametrize("seed", range(12))
def test_alignment_downscaling_3x3(seed):
  # 480x640 with ratio <= 0.9: factor = min(2048 r / 640, 512 r / 480) < 1, so bilinear mixing stays within the
  # 3x3 label neighbourhood (PIL's shrinking filter reaches exactly one output pixel each way).
  image, label = blocky_pair(seed)
  out_image, out_label = train_augment(np.random.default_rng(seed), image, label, crop_size=(256, 256),
                                       ratio_range=(0.5, 0.9), photometric=False)
  assert check_alignment(out_image, out_label, radius=1) > 0.5 * out_label.size


@pytest.mark.parametrize("seed", range(12))
def test_alignment_full_range_with_padding(seed):
  # Up to 2.13x enlargement: a bilinear tap reaches one source pixel away, i.e. up to ceil(2.13) output pixels.
  image, label = blocky_pair(seed)
  out_image, out_label = train_augment(np.random.default_rng(seed), image, label, photometric=False)
  assert out_image.shape == (512, 512, 3) and out_label.shape == (512, 512)
  assert check_alignment(out_image, out_label, radius=3) > 0.2 * out_label.size


def test_alignment_with_flips():
  # scale = image size and ratio 1: no resize, crop = whole image, so the output is the input or its mirror.
  image, label = blocky_pair(0, h=64, w=96, block=8)
  flipped = 0
  for seed in range(40):
    out_image, out_label = train_augment(np.random.default_rng(seed), image, label, crop_size=(64, 96),
                                         scale=(96, 64), ratio_range=(1.0, 1.0), photometric=False)
    is_flipped = np.array_equal(out_label, label[:, ::-1])
    assert is_flipped or np.array_equal(out_label, label)
    np.testing.assert_array_equal(out_image, LUT[out_label])
    flipped += is_flipped
  assert 8 <= flipped <= 32


def test_random_flip_moves_image_and_label_together():
  image, label = blocky_pair(1, h=20, w=30, block=3)
  outcomes = set()
  for seed in range(30):
    out_image, out_label = random_flip(np.random.default_rng(seed), image, label)
    np.testing.assert_array_equal(out_image, LUT[out_label])
    outcomes.add(np.array_equal(out_label, label[:, ::-1]))
    assert np.array_equal(out_label, label[:, ::-1]) or np.array_equal(out_label, label)
  assert outcomes == {True, False}
  never, always = random_flip(np.random.default_rng(0), image, label, prob=0.0), random_flip(
      np.random.default_rng(0), image, label, prob=1.0)
  np.testing.assert_array_equal(never[1], label)
  np.testing.assert_array_equal(always[1], label[:, ::-1])


# ---------------------------------------------------------------------------------------------------------------
# Label values.


def test_labels_stay_in_the_input_set():
  values = (0, 3, 7, 12, UNLABELLED)  # no 255 in the input: it may only come from padding
  image, label = blocky_pair(3, values=values)
  padded = 0
  for seed in range(40):
    _, out_label = train_augment(np.random.default_rng(seed), image, label)
    assert set(np.unique(out_label)) <= set(values) | {IGNORE_INDEX}
    # 255 only as bottom/right padding: the other values fill exactly a top-left rectangle.
    rows, cols = np.nonzero(out_label != IGNORE_INDEX)
    expected = np.full_like(out_label, IGNORE_INDEX)
    expected[:rows.max() + 1, :cols.max() + 1] = 0
    np.testing.assert_array_equal(out_label == IGNORE_INDEX, expected == IGNORE_INDEX)
    padded += rows.max() < 511 or cols.max() < 511
  assert padded > 0


def test_crop_smaller_than_image_never_adds_ignore():
  image, label = blocky_pair(4, values=(1, 2, UNLABELLED))
  for seed in range(20):
    _, out_label = train_augment(np.random.default_rng(seed), image, label, crop_size=(128, 128))
    assert set(np.unique(out_label)) <= {1, 2, UNLABELLED}


@pytest.mark.parametrize("seed", range(6))
def test_rescale_preserves_value_areas_including_254(seed):
  image, label = blocky_pair(seed)
  _, out = random_rescale(np.random.default_rng(seed), image, label)
  for v in VALUES:
    assert abs((out == v).mean() - (label == v).mean()) < 0.02, v
  assert set(np.unique(out)) == set(VALUES)


def test_label_dtype_is_kept():
  image, label = blocky_pair(5)
  for lab in (label, label.astype(np.int32)):
    _, out = train_augment(np.random.default_rng(0), image, lab)
    assert out.dtype == lab.dtype


# ---------------------------------------------------------------------------------------------------------------
# RandomCrop.


def band_label():
  """1000x400 of class 1 with a 100-row band of class 0: 90% class 1; a 300-row crop holding > 75 band rows
  passes the 0.75 rule (about 35% of the offsets)."""
  label = np.ones((1000, 400), np.uint8)
  label[450:550] = 0
  return np.zeros((1000, 400, 3), np.uint8), label


def test_crop_rule_accepted_crop_satisfies_it():
  image, label = band_label()
  for seed in range(100):
    out_image, out_label = random_crop(np.random.default_rng(seed), image, label, (300, 400), max_tries=50)
    assert out_image.shape == (300, 400, 3) and out_label.shape == (300, 400)
    counts = np.bincount(out_label.ravel(), minlength=2)
    assert counts.min() > 0 and counts.max() / counts.sum() < 0.75


def test_crop_rule_default_tries_beat_no_rule():
  image, label = band_label()

  def pass_rate(ratio):
    return np.mean([crop_satisfies(random_crop(np.random.default_rng(s), image, label, (300, 400), ratio)[1], 0.75)
                    for s in range(300)])

  assert pass_rate(0.75) > 0.95  # P(fail) ~ 0.65^11
  assert 0.2 < pass_rate(1.0) < 0.5  # no rule: ~35%


def test_crop_rule_impossible_still_returns_a_crop():
  image = np.zeros((400, 300, 3), np.uint8)
  for label in (np.full((400, 300), 5, np.uint8), np.where(np.arange(300) % 10 == 0, 1, 2).astype(np.uint8)[None]
                .repeat(400, axis=0)):
    for seed in range(10):
      out_image, out_label = random_crop(np.random.default_rng(seed), image, label, (128, 96))
      assert out_image.shape == (128, 96, 3) and out_label.shape == (128, 96)


def test_crop_rule_ignores_ignore_index():
  label = np.full((10, 10), IGNORE_INDEX, np.uint8)
  label[0, :5], label[1, :5] = 1, 2  # 80% ignored; the rest split 50/50
  assert crop_satisfies(label, 0.75)
  assert not crop_satisfies(label, 0.5)
  label[1, :5] = IGNORE_INDEX  # one class left
  assert not crop_satisfies(label, 0.75)
  assert crop_satisfies(np.array([[1, 2, 255, 255]], np.int32), 0.75)  # non-uint8 path
  assert not crop_satisfies(np.array([[1, 1, 1, 2]], np.int32), 0.75)


def test_crop_offsets_are_uniform_and_aligned():
  # Image channels hold the pixel's (row, column): the crop's top-left pixel tells the offset.
  h, w = 60, 40
  ys, xs = np.mgrid[:h, :w]
  image = np.stack([ys, xs, np.zeros_like(ys)], axis=-1).astype(np.uint8)
  label = ((ys * 7 + xs) % 250).astype(np.uint8)
  offsets = set()
  for seed in range(400):
    out_image, out_label = random_crop(np.random.default_rng(seed), image, label, (50, 30), cat_max_ratio=1.0)
    y0, x0 = int(out_image[0, 0, 0]), int(out_image[0, 0, 1])
    np.testing.assert_array_equal(out_image, image[y0:y0 + 50, x0:x0 + 30])
    np.testing.assert_array_equal(out_label, label[y0:y0 + 50, x0:x0 + 30])
    offsets.add((y0, x0))
  assert {y for y, _ in offsets} == set(range(11)) and {x for _, x in offsets} == set(range(11))


def test_crop_larger_than_image_takes_it_whole_per_dim():
  image, label = blocky_pair(0, h=100, w=700)
  out_image, out_label = random_crop(np.random.default_rng(0), image, label, (512, 512))
  assert out_label.shape == (100, 512) and out_image.shape == (100, 512, 3)


# ---------------------------------------------------------------------------------------------------------------
# Resize.


@pytest.mark.parametrize("h, w, r, expected", [
    (375, 500, 1.0, (512, 683)),  # short side bound: 512/375
    (375, 500, 0.7, (358, 477)),  # target (int(1433.6), int(358.4)) = (1433, 358)
    (1000, 300, 0.5, (853, 256)),  # target (1024, 256): short side bound 256/300
    (100, 2000, 1.0, (102, 2048)),  # long side bound 2048/2000
    (512, 512, 2.0, (1024, 1024)),
    (1024, 1025, 1.0, (512, 513)),  # 1025 * 0.5 = 512.5 rounds half up (mmcv's int(x + 0.5))
])
def test_rescale_size_formula(h, w, r, expected):
  image, label = np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.uint8)
  out_image, out_label = random_rescale(np.random.default_rng(0), image, label, ratio_range=(r, r))
  assert out_label.shape == expected and out_image.shape == (*expected, 3)


@pytest.mark.parametrize("seed", [0, 7, 123])
@pytest.mark.parametrize("h, w", [(375, 500), (640, 427), (200, 900)])
def test_rescale_size_with_random_ratio(seed, h, w):
  r = np.random.default_rng(seed).random() * 1.5 + 0.5  # U(0.5, 2.0), mmseg's random_sample draw
  long_max, short_max = int(2048 * r), int(512 * r)
  factor = min(long_max / max(h, w), short_max / min(h, w))
  expected = (int(h * factor + 0.5), int(w * factor + 0.5))
  _, out = random_rescale(np.random.default_rng(seed), np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.uint8))
  assert out.shape == expected


def test_rescale_ratios_span_the_range():
  shorts = [random_rescale(np.random.default_rng(s), np.zeros((375, 500, 3), np.uint8),
                           np.zeros((375, 500), np.uint8))[1].shape[0] for s in range(200)]
  assert min(shorts) < 300 and max(shorts) > 950  # 512 r for r in [0.5, 2]


def test_resize_keeps_constant_colours_exact():
  image = np.full((37, 53, 3), (200, 17, 255), np.uint8)
  for r in (0.5, 1.3, 2.0):
    out, _ = random_rescale(np.random.default_rng(0), image, np.zeros((37, 53), np.uint8), ratio_range=(r, r))
    assert (out == (200, 17, 255)).all()


@pytest.mark.parametrize("shape, short, cap, expected", [
    ((375, 500), 512, None, (512, 683)),
    ((375, 500), 512, 600, (450, 600)),
    ((500, 375), 512, 2048, (683, 512)),
    ((100, 1000), 512, 2048, (205, 2048)),
])
def test_resize_short_side(shape, short, cap, expected):
  out = resize_short_side(np.zeros((*shape, 3), np.uint8), short, cap)
  assert out.shape == (*expected, 3) and out.dtype == np.uint8


# ---------------------------------------------------------------------------------------------------------------
# Padding and output size.


def test_pad_to():
  image, label = blocky_pair(0, h=30, w=50, block=5)
  out_image, out_label = pad_to(image, label, (40, 45))
  assert out_label.shape == (40, 50)
  np.testing.assert_array_equal(out_label[:30], label)
  assert (out_label[30:] == IGNORE_INDEX).all() and (out_image[30:] == 0).all()
  np.testing.assert_array_equal(out_image[:30], image)
  same_image, same_label = pad_to(image, label, (10, 10))
  assert same_label.shape == label.shape and same_image.shape == image.shape
  _, other = pad_to(image, label, (31, 51), ignore_index=99)
  assert (other[30] == 99).all() and (other[:, 50] == 99).all()


@pytest.mark.parametrize("crop", [(512, 512), (300, 200), (64, 96)])
def test_output_is_exactly_crop_size(crop):
  image, label = blocky_pair(2, h=100, w=80, block=10)  # at r = 0.5 this becomes 320x256 (< 512)
  for seed in range(8):
    out_image, out_label = train_augment(np.random.default_rng(seed), image, label, crop_size=crop)
    assert out_image.shape == (*crop, 3) and out_label.shape == crop
    assert out_image.dtype == np.uint8 and out_image.flags.c_contiguous and out_label.flags.c_contiguous


def test_small_image_is_padded_with_zero_and_ignore():
  image, label = blocky_pair(2, h=100, w=80, block=10, values=(1, 2, 3))
  out_image, out_label = train_augment(np.random.default_rng(0), image, label, ratio_range=(0.5, 0.5),
                                       photometric=False)
  # target (1024, 256): factor = min(1024/100, 256/80) = 3.2 → 320x256, padded to 512x512
  assert (out_label[320:] == IGNORE_INDEX).all() and (out_label[:, 256:] == IGNORE_INDEX).all()
  assert (out_image[320:] == 0).all() and (out_image[:, 256:] == 0).all()
  assert set(np.unique(out_label[:320, :256])) <= {1, 2, 3}


# ---------------------------------------------------------------------------------------------------------------
# Colour.


def random_image(seed, shape=(64, 80)):
  return np.random.default_rng(seed).integers(0, 256, (*shape, 3)).astype(np.uint8)


def test_hsv_matches_colorsys_and_known_colours():
  pixels = random_image(0, (50, 40)).reshape(-1, 3)
  hsv = rgb_to_hsv(pixels)
  for (r, g, b), (h, s, v) in zip(pixels, hsv):
    eh, es, ev = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
    assert abs((h - eh * 180 + 90) % 180 - 90) < 1e-3 and abs(s - es * 255) < 1e-3 and abs(v - ev * 255) < 1e-3
  known = {(255, 0, 0): (0, 255, 255), (255, 255, 0): (30, 255, 255), (0, 255, 0): (60, 255, 255),
           (0, 0, 255): (120, 255, 255), (128, 128, 128): (0, 0, 128), (0, 0, 0): (0, 0, 0)}
  np.testing.assert_allclose(rgb_to_hsv(np.array(list(known), np.uint8)), np.array(list(known.values())), atol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_hsv_round_trip(seed):
  image = random_image(seed, (128, 96))
  np.testing.assert_allclose(np.rint(hsv_to_rgb(rgb_to_hsv(image))), image, atol=1)
  np.testing.assert_array_equal(adjust_saturation_hue(image, 1.0, 0), image)


def test_hue_shift_of_120_degrees_rotates_channels():
  image = random_image(1)
  np.testing.assert_allclose(adjust_saturation_hue(image, None, 60).astype(int), image[..., [2, 0, 1]], atol=1)
  np.testing.assert_allclose(adjust_saturation_hue(image, None, -60).astype(int), image[..., [1, 2, 0]], atol=1)


def test_zero_saturation_gives_gray_at_value():
  image = random_image(2)
  out = adjust_saturation_hue(image, 0.0, None)
  np.testing.assert_array_equal(out, np.repeat(image.max(axis=-1, keepdims=True), 3, axis=-1))


def test_brightness_and_contrast_steps():
  image = random_image(3).astype(np.float32)
  np.testing.assert_array_equal(adjust_brightness(image, 20.7), np.clip(image + 20.7, 0, 255).astype(np.uint8))
  np.testing.assert_array_equal(adjust_contrast(image, 1.3), np.clip(image * 1.3, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("seed", range(30))
def test_photometric_keeps_gray_gray(seed):
  gray = np.repeat(np.random.default_rng(seed).integers(0, 256, (40, 50, 1)), 3, axis=-1).astype(np.uint8)
  out = photometric_distortion(np.random.default_rng(seed), gray)
  assert out.dtype == np.uint8 and out.shape == gray.shape
  assert (out == out[..., :1]).all()


def test_photometric_neutral_parameters_are_identity():
  for seed in range(20):
    image = random_image(seed)
    out = photometric_distortion(np.random.default_rng(seed), image, brightness_delta=0, contrast_range=(1, 1),
                                 saturation_range=(1, 1), hue_delta=0)
    np.testing.assert_array_equal(out, image)


def test_photometric_brightness_only():
  image = random_image(4)
  changed = 0
  for seed in range(40):
    out = photometric_distortion(np.random.default_rng(seed), image, contrast_range=(1, 1),
                                 saturation_range=(1, 1), hue_delta=0)
    diff = out.astype(int) - image.astype(int)
    mid = (image >= 40) & (image <= 215)  # never clipped by a shift of at most 32
    assert np.ptp(diff[mid]) <= 1 and np.abs(diff).max() <= 33  # one shift for all, truncation adds at most 1
    assert abs(out.mean() - image.mean()) <= 33
    changed += bool(diff.any())
  assert 10 <= changed <= 30  # brightness happens with probability 0.5


def test_photometric_sometimes_identity_sometimes_not():
  image = random_image(5)
  same = [np.array_equal(photometric_distortion(np.random.default_rng(s), image), image) for s in range(200)]
  assert 2 <= sum(same) <= 40  # all four steps skipped: 1/16


# ---------------------------------------------------------------------------------------------------------------
# Determinism and speed.


def test_same_seed_same_output_different_seed_different_output():
  image, label = blocky_pair(6)
  a = train_augment(np.random.default_rng(11), image, label)
  b = train_augment(np.random.default_rng(11), image, label)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  for seed in (12, 13, 14):
    c = train_augment(np.random.default_rng(seed), image, label)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


def test_inputs_are_not_modified():
  image, label = blocky_pair(7)
  image0, label0 = image.copy(), label.copy()
  for seed in range(5):
    train_augment(np.random.default_rng(seed), image, label)
  np.testing.assert_array_equal(image, image0)
  np.testing.assert_array_equal(label, label0)


def test_throughput():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (375, 500, 3)).astype(np.uint8)
  _, label = blocky_pair(8, h=375, w=500, block=25)
  train_augment(rng, image, label)  # warm-up
  n = 30
  start = time.perf_counter()
  for _ in range(n):
    train_augment(rng, image, label)
  per_second = n / (time.perf_counter() - start)
  print(f"train_augment 500x375 → 512x512: {per_second:.1f} images/s")
  assert per_second > 5
