"""The Flax CLIP equals transformers' PyTorch CLIPModel, output by output."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from tests.conftest import EOS, SOS, random_token_ids
from zegot_jax.models import encoder_checkpoint
from zegot_jax.models import clip_reference

FEATURE_LAYERS = (1, 2, 3)


def _inputs(seed, image_size, batch=2):
  rng = np.random.default_rng(seed)
  pixels = rng.standard_normal((batch, *image_size, 3)).astype(np.float32)
  return pixels, random_token_ids(rng, 3, 12)


def _errors(loaded, torch_model, pixels, ids, attention_mask=None):
  ours = clip_reference.flax_outputs(loaded, pixels, ids, FEATURE_LAYERS, attention_mask)
  reference = clip_reference.reference_outputs(torch_model, pixels, ids, FEATURE_LAYERS, attention_mask)
  assert set(ours) == set(reference)
  assert len([k for k in reference if k.startswith("vision_hidden_")]) == 4  # embeddings + 3 layers
  return clip_reference.relative_errors(ours, reference)


def _assert_below(errors, tolerance):
  worst = {k: e for k, e in errors.items() if not e < tolerance}
  assert not worst, f"outputs differ from transformers beyond {tolerance}: {worst}"


@pytest.mark.parametrize("hidden_act, eps", [("quick_gelu", 1e-5), ("gelu", 1e-6)])
def test_every_output_equals_transformers_float32(make_checkpoint, hidden_act, eps):
  directory, torch_model = make_checkpoint(hidden_act, hidden_act=hidden_act, layer_norm_eps=eps)
  loaded = encoder_checkpoint.from_pretrained(directory)
  assert loaded.config.vision.hidden_act == hidden_act and loaded.config.text.layer_norm_eps == eps
  _assert_below(_errors(loaded, torch_model, *_inputs(0, (32, 32))), 1e-5)


def test_non_square_input_equals_interpolate_pos_encoding(make_checkpoint):
  directory, torch_model = make_checkpoint()
  pixels, ids = _inputs(1, (48, 24))
  on_the_fly = encoder_checkpoint.from_pretrained(directory)  # stored grid 4x4, resized inside the forward pass
  _assert_below(_errors(on_the_fly, torch_model, pixels, ids), 1e-5)
  at_load = encoder_checkpoint.from_pretrained(directory, image_size=(48, 24))  # resized once, at load time
  assert at_load.config.vision.grid == (6, 3)
  assert at_load.params["vision_model"]["embeddings"]["position_embedding"]["embedding"].shape == (1 + 18, 32)
  _assert_below(_errors(at_load, torch_model, pixels, ids), 1e-5)


def test_bfloat16_compute_within_bfloat16_tolerance(make_checkpoint):
  directory, torch_model = make_checkpoint()
  loaded = encoder_checkpoint.from_pretrained(directory, dtype=jnp.bfloat16)
  assert all(p.dtype == jnp.float32 for p in __import__("jax").tree_util.tree_leaves(loaded.params))
  errors = _errors(loaded, torch_model, *_inputs(2, (40, 32)))
  _assert_below(errors, 3e-2)
  assert max(errors.values()) > 1e-4  # it really computed in bfloat16


def test_attention_mask_on_padded_text_equals_transformers(make_checkpoint):
  directory, torch_model = make_checkpoint()
  pixels, ids = _inputs(3, (32, 32))
  mask = (np.cumsum(ids == EOS, axis=1) <= 1).astype(np.int32)  # keep up to and including the first EOS
  _assert_below(_errors(encoder_checkpoint.from_pretrained(directory), torch_model, pixels, ids, mask), 1e-5)


@pytest.mark.parametrize("eos_token_id", [EOS, 2])
def test_pooling_token_follows_transformers_rule(make_checkpoint, eos_token_id):
  """New configs pool at the first eos_token_id; legacy configs (eos_token_id == 2) at the highest id."""
  directory, torch_model = make_checkpoint(f"eos{eos_token_id}", eos_token_id=eos_token_id)
  loaded = encoder_checkpoint.from_pretrained(directory)
  # Ids where the two rules disagree: a token above EOS's id sits before the first EOS, and id 2 appears too.
  ids = np.array([[SOS, 7, 515, 9, EOS, 3, EOS], [SOS, 2, 11, EOS, 519, 4, 2]])
  first_eos, highest = np.argmax(ids == EOS, axis=1), np.argmax(ids, axis=1)
  assert (first_eos != highest).all()
  pixels = np.zeros((1, 32, 32, 3), np.float32)
  errors = _errors(loaded, torch_model, pixels, ids)
  assert errors["text_pooled"] < 1e-5 and errors["text_embeds"] < 1e-5
  rows = np.asarray(clip_reference.flax_outputs(loaded, pixels, ids, ())["text_last_hidden_state"])
  expected_pos = highest if eos_token_id == 2 else first_eos
  pooled = clip_reference.flax_outputs(loaded, pixels, ids, ())["text_pooled"]
  np.testing.assert_array_equal(pooled, rows[np.arange(2), expected_pos])


def test_save_pretrained_round_trips_through_transformers(make_checkpoint, tmp_path):
  directory, torch_model = make_checkpoint()
  loaded = encoder_checkpoint.from_pretrained(directory, image_size=48)  # saved at the resized (square) grid
  encoder_checkpoint.save_pretrained(loaded.params, loaded.config, tmp_path / "saved")
  reloaded_torch = transformers.CLIPModel.from_pretrained(tmp_path / "saved").eval()
  assert reloaded_torch.config.vision_config.image_size == 48
  shutil.copy(directory / "tokenizer.json", tmp_path / "saved")
  pixels, ids = _inputs(4, (48, 48))
  _assert_below(_errors(loaded, reloaded_torch, pixels, ids), 1e-5)
  again = encoder_checkpoint.from_pretrained(tmp_path / "saved")
  for a, b in zip(*(__import__("jax").tree_util.tree_leaves(t) for t in (loaded.params, again.params))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _assert_same_params(a, b):
  import jax
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_pytorch_bin_sharded_and_bfloat16_checkpoints_load(make_checkpoint, tmp_path):
  directory, torch_model = make_checkpoint()
  reference = encoder_checkpoint.from_pretrained(directory).params

  pickle_dir = tmp_path / "bin"
  pickle_dir.mkdir()
  shutil.copy(directory / "config.json", pickle_dir)
  torch.save(torch_model.state_dict(), pickle_dir / "pytorch_model.bin")
  _assert_same_params(encoder_checkpoint.from_pretrained(pickle_dir).params, reference)

  torch_model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
  assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
  assert len(set(json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
                 ["weight_map"].values())) > 1
  _assert_same_params(encoder_checkpoint.from_pretrained(tmp_path / "sharded").params, reference)

  bf16 = transformers.CLIPModel.from_pretrained(directory, dtype=torch.bfloat16)
  bf16.save_pretrained(tmp_path / "bf16")
  rounded = __import__("jax").tree_util.tree_map(lambda p: jnp.asarray(p, jnp.bfloat16).astype(jnp.float32),
                                                 reference)
  _assert_same_params(encoder_checkpoint.from_pretrained(tmp_path / "bf16").params, rounded)
