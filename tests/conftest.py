"""Shared fixtures: tiny random CLIP checkpoints written by transformers itself, a tokenizer for them, the
suite's dataset directory, and a trained smoke run."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

# Full float32 matmuls on every backend: parity is checked to 1e-5 relative error.
jax.config.update("jax_default_matmul_precision", "highest")

import transformers  # noqa: E402  (the parity reference; torch comes with the `test` extra: no silent skip)

from zegot_jax.models.clip_reference import random_torch_model, save_with_tokenizer  # noqa: E402

def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False,
                   help="also run the slow checks (marked slow: a minute or more each)")


def pytest_collection_modifyitems(config, items):
  """Slow checks (each a minute or more, each a repeat of a guarantee a faster test also covers in part) run only
  with --runslow, so that the default suite stays under about 25 minutes on a 2-core CPU."""
  if config.getoption("--runslow"):
    return
  skip = pytest.mark.skip(reason="slow: run with --runslow")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)


# The byte-level tokenizer's special ids (prompts.byte_level_tokenizer).
SOS, EOS = 512, 513


def tiny_hf_config(hidden_act="quick_gelu", eos_token_id=EOS, layer_norm_eps=1e-5, image_size=32, **overrides):
  """A CLIPConfig small enough for CPU tests, with different widths per tower so that mix-ups fail."""
  text = dict(vocab_size=520, hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
              max_position_embeddings=77, hidden_act=hidden_act, layer_norm_eps=layer_norm_eps,
              eos_token_id=eos_token_id, bos_token_id=SOS, pad_token_id=EOS)
  vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                image_size=image_size, patch_size=8, hidden_act=hidden_act, layer_norm_eps=layer_norm_eps)
  text.update(overrides.pop("text", {}))
  vision.update(overrides.pop("vision", {}))
  return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16, **overrides)


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
  """make_checkpoint(name, **config_kwargs) → (directory, torch model); cached per name for the session."""
  cache = {}

  def make(name="quick_gelu", seed=0, **kwargs):
    if name not in cache:
      model = random_torch_model(tiny_hf_config(**kwargs), seed)
      cache[name] = (save_with_tokenizer(model, tmp_path_factory.mktemp(name)), model)
    return cache[name]

  return make


def random_token_ids(rng: np.random.Generator, batch: int, length: int, eos: int = EOS) -> np.ndarray:
  """[SOS] random symbols [EOS] padding…, each row with its EOS at a different position."""
  ids = rng.integers(0, 512, size=(batch, length))
  ids[:, 0] = SOS
  for i in range(batch):
    end = rng.integers(2, length)
    ids[i, end:] = eos
  return ids


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One tensorflow_datasets directory for the suite: the synthetic worlds build themselves into it on first use."""
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
  """A run of configs/textures_zs3.py:runlocal=True trained for 2 steps (tiny CLIP, textures_zs3/tiny), with its
  own dataset directory: prediction and the app read it."""
  from zegot_jax import trainer  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "textures_zs3.py"
  spec = importlib.util.spec_from_file_location("textures_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("runlocal=True")
  config.data_dir = str(tmp_path_factory.mktemp("smoke_tfds"))
  config.train.update(dict(steps=2, checkpoint_every=2, eval_every=0))
  workdir = tmp_path_factory.mktemp("smoke_run")
  trainer.train_and_evaluate(config, workdir)
  return workdir
