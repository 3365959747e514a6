"""The Flax SigLIP equals transformers' PyTorch SiglipModel, output by output, on tiny random configs unlike the
CLIP tests' (other widths and head counts per tower, patch 6, gelu_pytorch_tanh, another vocabulary)."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from tests.models.test_clip_parity import _assert_below, _errors  # the same comparison, layers (1, 2, 3)
from zegot_jax.models import clip_reference, encoder_checkpoint, prompts, siglip, zegot



def tiny_siglip_config(image_size=36):
  tokenizer = siglip.tiny_tokenizer()
  text = transformers.SiglipTextConfig(
      vocab_size=len(tokenizer) + 5, hidden_size=20, intermediate_size=36, num_hidden_layers=3, num_attention_heads=4,
      max_position_embeddings=64, projection_size=30, pad_token_id=1, eos_token_id=1, bos_token_id=None)
  vision = transformers.SiglipVisionConfig(hidden_size=30, intermediate_size=44, num_hidden_layers=3,
                                           num_attention_heads=5, image_size=image_size, patch_size=6)
  return transformers.SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  model = clip_reference.random_torch_model(tiny_siglip_config(), seed=1)
  return clip_reference.save_with_tokenizer(model, tmp_path_factory.mktemp("siglip")), model


def _inputs(seed, image_size, batch=2):
  rng = np.random.default_rng(seed)
  pixels = rng.standard_normal((batch, *image_size, 3)).astype(np.float32)
  ids = rng.integers(3, 99, size=(3, 64))
  ids[:, -1] = 1  # as SigLIP's texts: padded with </s> to 64
  return pixels, ids


def test_every_output_equals_transformers_float32(checkpoint):
  directory, torch_model = checkpoint
  loaded = encoder_checkpoint.from_pretrained(directory)
  assert loaded.family.name == "siglip" and loaded.config.vision.hidden_act == "gelu_pytorch_tanh"
  assert (loaded.config.vision.hidden_size, loaded.config.text.hidden_size, loaded.config.projection_dim) == (30, 20, 30)
  errors = _errors(loaded, torch_model, *_inputs(0, (36, 36)))
  _assert_below(errors, 1e-5)
  logits = loaded.model.apply({"params": loaded.params}, method=lambda m: (m.logit_scale, m.logit_bias))
  np.testing.assert_allclose(np.concatenate(logits), [torch_model.logit_scale.item(), torch_model.logit_bias.item()],
                             rtol=1e-6)


def test_logits_equal_transformers(checkpoint):
  """SigLIP's sigmoid logits: exp(t) cos(image, text) + b, from our embeddings and scale, against SiglipModel's."""
  import torch  # pylint: disable=import-outside-toplevel

  directory, torch_model = checkpoint
  loaded = encoder_checkpoint.from_pretrained(directory)
  pixels, ids = _inputs(5, (36, 36))
  out = clip_reference.flax_outputs(loaded, pixels, ids, ())
  image = out["image_embeds"] / np.linalg.norm(out["image_embeds"], axis=-1, keepdims=True)
  text = out["text_embeds"] / np.linalg.norm(out["text_embeds"], axis=-1, keepdims=True)
  p = loaded.params
  ours = image @ text.T * np.exp(p["logit_scale"]) + p["logit_bias"]
  with torch.no_grad():
    reference = torch_model(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(
        pixels.transpose(0, 3, 1, 2).copy())).logits_per_image.numpy()
  np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


def test_non_square_input_equals_interpolate_pos_encoding(checkpoint):
  directory, torch_model = checkpoint
  pixels, ids = _inputs(1, (54, 24))
  on_the_fly = encoder_checkpoint.from_pretrained(directory)  # stored grid 6x6, resized inside the forward pass
  _assert_below(_errors(on_the_fly, torch_model, pixels, ids), 1e-5)
  at_load = encoder_checkpoint.from_pretrained(directory, image_size=(54, 24))  # resized once, at load time
  assert at_load.config.vision.grid == (9, 4)
  assert at_load.params["vision_model"]["embeddings"]["position_embedding"]["embedding"].shape == (9 * 4, 30)  # no CLS
  _assert_below(_errors(at_load, torch_model, pixels, ids), 1e-5)


def test_attention_mask_on_text_equals_transformers(checkpoint):
  directory, torch_model = checkpoint
  pixels, ids = _inputs(3, (36, 36))
  mask = np.ones_like(ids)
  mask[0, 40:], mask[1, 10:] = 0, 0
  _assert_below(_errors(encoder_checkpoint.from_pretrained(directory), torch_model, pixels, ids, mask), 1e-5)


def test_bfloat16_compute_within_bfloat16_tolerance(checkpoint):
  directory, torch_model = checkpoint
  errors = _errors(encoder_checkpoint.from_pretrained(directory, dtype=jnp.bfloat16), torch_model,
                   *_inputs(2, (36, 42)))
  _assert_below(errors, clip_reference.BFLOAT16_TOLERANCE)
  assert max(errors.values()) > 1e-4  # it really computed in bfloat16


def test_save_pretrained_round_trips_through_transformers(checkpoint, tmp_path):
  directory, _ = checkpoint
  loaded = encoder_checkpoint.from_pretrained(directory, image_size=48)  # saved at the resized (square) grid
  encoder_checkpoint.save_pretrained(loaded.params, loaded.config, tmp_path / "saved")
  reloaded_torch = transformers.SiglipModel.from_pretrained(tmp_path / "saved").eval()
  assert reloaded_torch.config.vision_config.image_size == 48
  pixels, ids = _inputs(4, (48, 48))
  _assert_below(_errors(loaded, reloaded_torch, pixels, ids), 1e-5)
  again = encoder_checkpoint.from_pretrained(tmp_path / "saved")
  assert jax.tree_util.tree_structure(again.params) == jax.tree_util.tree_structure(loaded.params)
  for a, b in zip(*(jax.tree_util.tree_leaves(t) for t in (loaded.params, again.params))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_pixel_statistics_come_from_the_preprocessor_config(checkpoint, tmp_path):
  directory, _ = checkpoint
  copy = shutil.copytree(directory, tmp_path / "copy")
  assert encoder_checkpoint.from_pretrained(copy).config.image_mean == (0.5, 0.5, 0.5)  # SigLIP's, without the file
  (copy / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [1, 2, 4]}))
  config = encoder_checkpoint.from_pretrained(copy).config
  assert (config.image_mean, config.image_std) == ((0.1, 0.2, 0.3), (1.0, 2.0, 4.0))
  (copy / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2]}))
  with pytest.raises(encoder_checkpoint.CheckpointError, match=r"image_mean has 2 values for 3 channels"):
    encoder_checkpoint.from_pretrained(copy)


def test_prompts_start_at_position_0_and_are_padded_as_siglip_was_trained(checkpoint):
  """No [SOS]: the contexts replace positions 0..C-1 of `X×C <name>. </s> pad…`, padded to 64. With the
  placeholders' own token embeddings as contexts, encode_prompts must equal encode_text of the same ids."""
  directory, _ = checkpoint
  loaded = encoder_checkpoint.from_pretrained(directory)
  tokenizer = prompts.load_tokenizer(directory)
  config = zegot.ZegOTConfig(num_prompts=1, context_length=3)
  ids = zegot.class_tokens(tokenizer, ["cat", "potted plant"], config, loaded.config)
  assert ids.shape == (2, 64) and (ids[:, :3] == prompts.placeholder_id(tokenizer)).all() and (ids[:, -1] == 1).all()
  p = {"params": loaded.params}
  table = loaded.params["text_model"]["embeddings"]["token_embedding"]["embedding"]
  context = table[ids[0, :3]][None]  # (N=1, C=3, width)
  spliced = loaded.model.apply(p, ids, context, method="encode_prompts").text_embeds[:, 0]
  plain = loaded.model.apply(p, ids, method="encode_text").text_embeds
  np.testing.assert_allclose(spliced, plain, rtol=1e-6, atol=1e-6)
  other = context + np.random.default_rng(0).standard_normal(context.shape).astype(np.float32)  # not a constant:
  shifted = loaded.model.apply(p, ids, other, method="encode_prompts").text_embeds[:, 0]  # pre-LN removes those
  assert np.abs(shifted - plain).max() > 1e-3  # the contexts do reach the tower
  with pytest.raises(ValueError, match=r"puts the prompt context at position 1, the siglip text tower expects it "
                                       r"at 0: the tokenizer does not belong to the checkpoint"):
    zegot.class_tokens(prompts.byte_level_tokenizer(), ["cat"], config, loaded.config)


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(tmp_path_factory):
  """A SigLIP tokenizer as the hub's checkpoints ship it (spiece.model, transformers' SiglipTokenizer: lower-cases,
  drops punctuation, appends </s>), on a SentencePiece model trained here on a few words."""
  import io  # pylint: disable=import-outside-toplevel
  import itertools  # pylint: disable=import-outside-toplevel

  import sentencepiece  # pylint: disable=import-outside-toplevel

  words = ["a", "photo", "of", "cat", "potted", "plant", "x", "dog", "the", "art", "sheep", "tv", "monitor", "bird"]
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter([" ".join(p) for p in itertools.permutations(words, 3)]), model_writer=model,
      vocab_size=36, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
  directory = tmp_path_factory.mktemp("spiece")
  (directory / "spiece.model").write_bytes(model.getvalue())
  transformers.SiglipTokenizer(vocab_file=str(directory / "spiece.model"), model_max_length=64).save_pretrained(directory)
  return prompts.load_tokenizer(directory)


@pytest.mark.parametrize("kind", ["learnable", "handcrafted"])
def test_prompts_are_what_the_sentencepiece_tokenizer_pads_to_64(sentencepiece_tokenizer, kind):
  """The ids ZegOT feeds a hub SigLIP equal its tokenizer's own `padding="max_length"` encoding of the same texts
  (SigLIP's training convention): contexts at 0, no start token, </s> then padding to 64."""
  tokenizer = sentencepiece_tokenizer
  assert type(tokenizer).__name__ == "SiglipTokenizer" and prompts.context_start(tokenizer) == 0
  names = ["cat", "potted plant", "tv monitor"]
  config = zegot.ZegOTConfig(num_prompts=2, context_length=3, prompts=kind,
                             templates=("a photo of a {}.", "the art of the {}."))
  ids = zegot.class_tokens(tokenizer, names, config, siglip.tiny_config())
  texts = ([f"X X X {n}." for n in names] if kind == "learnable"
           else [t.format(n) for n in names for t in config.templates])
  reference = np.asarray(tokenizer(texts, padding="max_length", max_length=64)["input_ids"])
  np.testing.assert_array_equal(ids.reshape(-1, 64), reference)
  assert (reference[:, 0] != tokenizer.eos_token_id).all() and (reference[:, -1] == tokenizer.pad_token_id).all()


def test_the_parity_tool_proves_a_siglip_directory_and_names_its_family(checkpoint):
  """`python -m zegot_jax.tools.clip_parity --model DIR` on a SigLIP checkpoint: every output of both dtypes
  reported against SiglipModel, the family read from its config.json, and the verdict."""
  import pathlib  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  directory, _ = checkpoint
  done = subprocess.run([sys.executable, "-m", "zegot_jax.tools.clip_parity", f"--model={directory}",
                         "--image_size=36,24"], cwd=pathlib.Path(__file__).resolve().parents[2], capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  rows = [line.split() for line in done.stdout.splitlines() if line.startswith(directory.name[:12])]
  assert {r[1] for r in rows} == {"siglip"} and {r[3] for r in rows} == {"float32", "bfloat16"}
  assert all(float(r[-1]) < 1e-5 for r in rows if r[3] == "float32")
  assert "OK: every output equals transformers'" in done.stdout
