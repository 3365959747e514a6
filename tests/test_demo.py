"""The offline demo end to end: the README's command, shortened, beats the frozen-CLIP baseline on the unseen
classes and writes real pictures; the baseline is what it claims to be."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from zegot_jax import config_lib, pictures, runtime
from zegot_jax.data import shapes
from zegot_jax.models import prompts, zegot
from zegot_jax.models.clip import CLIP, normalize_image
from zegot_jax.tools import demo_results

ROOT = pathlib.Path(__file__).resolve().parents[1]


def demo_config(data_dir, arg="runlocal=True"):
  config = config_lib.load_config(str(ROOT / "configs" / f"demo.py:{arg}"))
  config.data_dir = str(data_dir)
  return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp("demo")
  # A relative --workdir, as in the README's command.
  command = [sys.executable, "-m", "zegot_jax.train", "--config", str(ROOT / "configs" / "demo.py:runlocal=True"),
             f"--config.data_dir={data_dir}", "--workdir", workdir.name]
  done = subprocess.run(command, cwd=workdir.parent, capture_output=True, text=True, timeout=900, check=False)
  assert done.returncode == 0, done.stderr[-4000:]
  return workdir, done.stdout


@pytest.mark.xfail(strict=True, reason="issue 6 is open: the shipped mini-CLIP's patch features name 11.5% of "
                   "the patches of the demo's scenes (chance 8.3%); measured after the full 400-step demo: mIoU(U) "
                   "1.5 against the frozen-CLIP baseline's 7.5 (README, 'The offline demo')")
def test_short_demo_beats_the_frozen_clip_on_unseen_classes(demo_run, data_dir, tmp_path):
  workdir, stdout = demo_run
  assert "mIoU(U)" in stdout and "pictures:" in stdout
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  trained = [r for r in rows if "eval/mIoU_unseen" in r][-1]
  baseline = demo_results.evaluate_untrained(demo_results.baseline_config(demo_config(data_dir)), tmp_path)
  assert trained["eval/mIoU_unseen"] > baseline["mIoU_unseen"], (trained, baseline)


def test_pictures_are_pngs_of_the_documented_size(demo_run):
  workdir, _ = demo_run
  config = demo_config(workdir)
  n = config.model.num_prompts
  meta = json.loads((workdir / "pictures" / "pictures.json").read_text())
  assert len(meta["files"]) == config.pictures.num_images
  width = (3 + n) * (pictures.PANEL + pictures.GAP) - pictures.GAP
  heights = []
  for name in meta["files"]:
    with Image.open(workdir / "pictures" / name) as image:
      assert image.format == "PNG" and image.mode == "RGB" and image.width == width
      legend = image.height - (pictures.HEADER + pictures.PANEL + pictures.GAP)
      assert legend > 0 and legend % pictures.LEGEND_ROW == 0
      heights.append(image.height)
      panel = np.asarray(image)[pictures.HEADER:pictures.HEADER + pictures.PANEL, :pictures.PANEL]
      assert panel.std() > 0  # the input image, not a blank panel
  with Image.open(workdir / "pictures" / "figure.png") as figure:
    assert figure.format == "PNG" and figure.size == (width, sum(heights) + pictures.GAP * (len(heights) - 1))


def test_baseline_is_the_frozen_clip_alone(data_dir, tmp_path):
  """The baseline's logits through the ZegOT code path equal cos(last-layer dense features, mean hand-crafted
  text embedding) computed directly with the CLIP, up to the positive factor N (sum over prompts), upsampled."""
  config = demo_results.baseline_config(demo_config(data_dir))
  clip = runtime.load_clip(config, tmp_path)
  model = runtime.build_model(config, clip)
  tokenizer = prompts.load_tokenizer(clip.path)
  names = list(shapes.CATEGORIES)
  tokens = zegot.class_tokens(tokenizer, names, model.config)  # (K, N, T)
  trainable = zegot.init_trainable(model, jax.random.key(0), tokens)
  images = np.stack([shapes.render_scene(np.random.default_rng(i), 64)[0] for i in range(2)])
  logits = model.apply({"params": zegot.merge_params(trainable, clip.params)}, images, tokens)[0].logits

  last = config.model.dfa_layers[-1]
  vision = clip.model.apply({"params": clip.params}, normalize_image(images), feature_layers=(last,),
                            method=CLIP.encode_image)
  dense = vision.dense_features[last]
  dense = dense / jnp.linalg.norm(dense, axis=-1, keepdims=True)  # (B, h, w, D)
  text = clip.model.apply({"params": clip.params}, tokens, method=CLIP.encode_text).text_embeds
  text = (text / jnp.linalg.norm(text, axis=-1, keepdims=True)).mean(1)  # (K, D)
  expected = tokens.shape[1] * jnp.einsum("bhwd,kd->bhwk", dense, text)
  expected = jax.image.resize(expected, (2, 64, 64, len(names)), "bilinear")
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_results_runs_take_the_requested_variant_setting_seed_steps_and_dataset():
  config = demo_results.run_config(str(ROOT / "configs" / "demo.py"), "matching=none", "inductive", 2, 10,
                                   "shapes_zs3/objects")
  assert (config.dataset, config.setting, config.model.matching) == ("shapes_zs3/objects", "inductive", "none")
  assert (config.train.seed, config.train.steps, config.train.eval_every, config.pictures.num_images) == (2, 10, 10, 0)
  assert demo_results.run_config(str(ROOT / "configs" / "demo.py"), "", "transductive", 0, None).dataset == (
      "shapes_zs3/demo")
