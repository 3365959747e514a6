"""The demo's mini-CLIP: its caption tokenizer, the shipped checkpoint's zero-shot accuracy, and that the
pretraining script reproduces it."""

import json
import os

import jax
import numpy as np
import pytest
import transformers

from zegot_jax.data import shapes
from zegot_jax.models import clip_checkpoint, mini_clip, prompts
from zegot_jax.tools import pretrain_mini_clip

SHIPPED = mini_clip.shipped_path()
# Zero-shot top-1 accuracy of the shipped mini-CLIP on single-object images (chance: 1/12 = 8.3%). Measured on
# these probe images: mean 63.7%, lowest class 32% (triangle); heart 84%, ring 100%, arrow 76%.
MIN_MEAN_ACCURACY = 0.50
MIN_CLASS_ACCURACY = 0.20


def test_every_caption_word_is_one_token_and_files_round_trip(tmp_path):
  tokenizer = mini_clip.caption_tokenizer()
  for word in mini_clip.caption_words():
    assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word
  tokenizer.save_pretrained(tmp_path)
  loaded = prompts.load_tokenizer(tmp_path)
  assert isinstance(loaded, transformers.CLIPTokenizer)
  texts = ["a red star, a blue ring and a heart on a striped background.", "X X X X heart.", "a teapot."]
  assert loaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
  assert loaded("a teapot.")["input_ids"][2:-2] != []  # an unknown word is still spelled out
  again = tmp_path / "again"
  mini_clip.caption_tokenizer().save_pretrained(again)
  assert (again / "tokenizer.json").read_text() == (tmp_path / "tokenizer.json").read_text()


def test_captions_are_pretrained_from_other_images_than_the_dataset():
  for i in range(20):
    image, text, present = pretrain_mini_clip.render_example(
        np.random.default_rng([0, pretrain_mini_clip.PRETRAIN_STREAM, i]), scene=i % 2 == 1)
    dataset_image = shapes.render_scene(np.random.default_rng([0, 0, i]), 64)[0]
    assert image.shape == (64, 64, 3) and not np.array_equal(image, dataset_image)
    words = text.replace(",", "").split()
    assert all(word in mini_clip.caption_words() for word in words)
    named = {shapes.CATEGORIES.index(w) for w in words if w in shapes.CATEGORIES}
    assert named == set(np.flatnonzero(present))  # the concept targets are exactly the named categories


def test_the_pool_is_the_same_for_any_number_of_rendering_processes():
  tokenizer = mini_clip.caption_tokenizer()
  one = pretrain_mini_clip.render_pool(3, 2100, tokenizer, 32)  # three ranges of the pool, the last one short
  two = pretrain_mini_clip.render_pool(3, 2100, tokenizer, 32, workers=2)
  for a, b in zip(one[:3], two[:3]):
    np.testing.assert_array_equal(a, b)
  assert one[3] == two[3]
  single = pretrain_mini_clip.render_example(np.random.default_rng([3, pretrain_mini_clip.PRETRAIN_STREAM, 2099]),
                                             scene=True)  # the last entry is the one its own generator draws
  np.testing.assert_array_equal(two[0][-1], single[0])
  assert two[3][-1] == single[1]


def test_curriculum_goes_from_single_objects_to_scenes():
  steps = 300
  fractions = [pretrain_mini_clip.scene_fraction(s, steps) for s in range(steps)]
  assert fractions[0] == 0 and fractions[99] == 0 and fractions[-1] == pretrain_mini_clip.SCENE_FRACTION
  assert all(a <= b for a, b in zip(fractions, fractions[1:]))


@pytest.fixture(scope="module")
def shipped():
  assert (SHIPPED / "model.safetensors").is_file(), f"the shipped mini-CLIP is missing from {SHIPPED}"
  return clip_checkpoint.from_pretrained(SHIPPED)


def test_shipped_checkpoint_is_a_transformers_clip(shipped):
  hf = transformers.CLIPConfig.from_pretrained(SHIPPED)
  assert hf.vision_config.num_hidden_layers == shipped.config.vision.num_hidden_layers
  tokenizer = transformers.CLIPTokenizer.from_pretrained(SHIPPED)
  assert tokenizer.eos_token_id == shipped.config.text.eos_token_id
  assert len(tokenizer) == shipped.config.text.vocab_size


def test_shipped_clip_classifies_single_objects_zero_shot(shipped):
  # Fresh probe images (seed 1; pretraining used seed 0 for both its images and its own probe).
  accuracy = pretrain_mini_clip.zero_shot_accuracy(shipped.model, shipped.params, prompts.load_tokenizer(SHIPPED),
                                                   seed=1, per_class=25)
  assert set(accuracy) == set(shapes.CATEGORIES)
  assert np.mean(list(accuracy.values())) >= MIN_MEAN_ACCURACY, accuracy
  assert min(accuracy.values()) >= MIN_CLASS_ACCURACY, accuracy  # unseen classes included


# Per-patch zero-shot accuracy of the dense features (layer 4, what ZegOT's score maps start from), measured on
# these probes: 62.0% on large centred objects (heart 74%, ring 100%, arrow 52%); on scenes like the demo's
# (1-4 objects anywhere, 6-19 px circumradius) 11.5%, near chance (8.3%). The patch features know the centred
# view the pretraining showed most, not objects elsewhere or smaller: that is why ZegOT cannot work on the demo
# yet (issue 6).
MIN_DENSE_CENTRED = 0.45
DEMO_SCENES_TARGET = 0.30


def test_shipped_clip_patch_features_name_large_centred_objects(shipped):
  images, labels = pretrain_mini_clip.probe_objects(seed=1)
  accuracy = pretrain_mini_clip.dense_zero_shot_accuracy(shipped.model, shipped.params,
                                                         prompts.load_tokenizer(SHIPPED), images, labels)
  assert np.mean(list(accuracy.values())) >= MIN_DENSE_CENTRED, accuracy


@pytest.mark.xfail(strict=True, reason="issue 6: the mini-CLIP's patch features are near chance on the demo's "
                                       "scenes (11.5%); pretraining that fixes it is open work")
def test_shipped_clip_patch_features_name_objects_in_scenes(shipped):
  images, labels = pretrain_mini_clip.probe_scenes(seed=1)
  accuracy = pretrain_mini_clip.dense_zero_shot_accuracy(shipped.model, shipped.params,
                                                         prompts.load_tokenizer(SHIPPED), images, labels)
  assert np.mean(list(accuracy.values())) >= DEMO_SCENES_TARGET, accuracy


def test_patch_coverage_counts_the_pixels_of_each_category_in_each_patch():
  rng = np.random.default_rng(0)
  label = rng.choice(np.array([0, 3, 11, shapes.IGNORE_LABEL], np.uint8), size=(64, 64))
  coverage = pretrain_mini_clip.patch_coverage(label, 8)
  assert coverage.shape == (8, 8, len(shapes.CATEGORIES))
  for y, x, c in [(0, 0, 0), (7, 7, 3), (2, 5, 11), (4, 1, 5)]:
    patch = label[8 * y:8 * y + 8, 8 * x:8 * x + 8]
    assert coverage[y, x, c] == pytest.approx(np.count_nonzero(patch == c) / 64)


def _flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_pretraining_reproduces_the_shipped_run():
  """The first HISTORY_EVERY steps of the shipped settings give the shipped run's recorded loss. The whole run
  (ZEGOT_SLOW=1) must give the shipped weights."""
  report = json.loads((SHIPPED / "pretraining.json").read_text())
  settings = report["settings"]
  if os.environ.get("ZEGOT_SLOW") == "1":
    params, _, _, again = pretrain_mini_clip.train(**settings)
    shipped_params = clip_checkpoint.from_pretrained(SHIPPED).params
    a, b = _flat(params), _flat(shipped_params)
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=key)
    assert [h["loss"] for h in again["history"]] == pytest.approx([h["loss"] for h in report["history"]], rel=1e-4)
    return
  _, _, _, again = pretrain_mini_clip.train(**settings, stop_after=pretrain_mini_clip.HISTORY_EVERY)
  assert again["history"][0]["step"] == report["history"][0]["step"]
  assert again["history"][0]["loss"] == pytest.approx(report["history"][0]["loss"], rel=1e-5)
  assert again["example_captions"] == report["example_captions"]
