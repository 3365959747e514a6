"""Bad checkpoints fail with a message that names the file or field and what was expected."""

import builtins
import errno
import json
import shutil

import pytest
import transformers
from safetensors.numpy import load_file, save_file

from zegot_jax.models import encoder_checkpoint
from zegot_jax.models.encoder_checkpoint import CheckpointError, from_pretrained


@pytest.fixture()
def checkpoint_copy(make_checkpoint, tmp_path):
  directory, _ = make_checkpoint()
  return shutil.copytree(directory, tmp_path / "clip")


def test_missing_directory(tmp_path):
  with pytest.raises(CheckpointError, match=r"'.*nowhere' does not exist.*config\.json and model\.safetensors"):
    from_pretrained(str(tmp_path / "nowhere"))


def test_missing_config(checkpoint_copy):
  (checkpoint_copy / "config.json").unlink()
  with pytest.raises(CheckpointError, match=r"has no config\.json"):
    from_pretrained(checkpoint_copy)


def test_missing_weights_lists_what_is_there(checkpoint_copy):
  (checkpoint_copy / "model.safetensors").unlink()
  with pytest.raises(CheckpointError, match=r"holds no encoder weights: expected model\.safetensors.*'config\.json'"):
    from_pretrained(checkpoint_copy)


def test_not_an_encoder_config(tmp_path):
  transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=37).save_pretrained(tmp_path)
  with pytest.raises(CheckpointError, match=r"config\.json: model_type is 'bert'; the supported encoder families "
                                            r"are \['clip', 'siglip'\]"):
    from_pretrained(tmp_path)


def test_a_family_other_than_the_checkpoint_is_named(checkpoint_copy):
  with pytest.raises(CheckpointError, match=r"holds a clip checkpoint \(config\.json's model_type 'clip'\), but "
                                            r"family 'siglip' was asked for; set clip\.family to 'clip' or 'auto'"):
    from_pretrained(checkpoint_copy, family="siglip")
  assert from_pretrained(checkpoint_copy, family="clip").family.name == "clip"


def test_invalid_json_config(checkpoint_copy):
  (checkpoint_copy / "config.json").write_text("{not json")
  with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
    from_pretrained(checkpoint_copy)


def test_shapes_that_do_not_match_the_config(checkpoint_copy):
  config = json.loads((checkpoint_copy / "config.json").read_text())
  config["text_config"]["intermediate_size"] = 44  # the checkpoint has 40
  (checkpoint_copy / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError) as e:
    from_pretrained(checkpoint_copy)
  message = str(e.value)
  assert "does not match its clip config" in message
  assert "text_model.encoder.layers.0.mlp.fc1.weight: checkpoint has (40, 24), config expects (44, 24)" in message
  assert "text_model.encoder.layers.2.mlp.fc2.weight: checkpoint has (24, 40), config expects (24, 44)" in message


def test_missing_and_unexpected_tensors_are_named(checkpoint_copy):
  state = load_file(checkpoint_copy / "model.safetensors")
  state.pop("vision_model.post_layernorm.bias")
  state["vision_model.extra_head.weight"] = state["visual_projection.weight"]
  save_file(state, checkpoint_copy / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(CheckpointError, match=r"(?s)1 parameters missing.*vision_model\.post_layernorm\.bias.*"
                                            r"1 unexpected tensors.*vision_model\.extra_head\.weight"):
    from_pretrained(checkpoint_copy)


def test_corrupt_weights_file_is_named(checkpoint_copy):
  data = (checkpoint_copy / "model.safetensors").read_bytes()
  (checkpoint_copy / "model.safetensors").write_bytes(data[:len(data) // 2])
  with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
    from_pretrained(checkpoint_copy)


def test_hub_id_without_network_or_cache_says_what_to_download(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
  with pytest.raises(CheckpointError) as e:
    from_pretrained("some-org/clip-that-is-not-here", offline=True)
  message = str(e.value)
  assert "not in the Hugging Face cache" in message
  assert "hf download some-org/clip-that-is-not-here" in message and "--local-dir" in message


def test_pytorch_pickle_without_torch_says_how_to_fix(make_checkpoint, tmp_path, monkeypatch):
  directory, torch_model = make_checkpoint()
  shutil.copy(directory / "config.json", tmp_path)
  import torch
  torch.save(torch_model.state_dict(), tmp_path / "pytorch_model.bin")
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == "torch":
      raise ImportError("No module named 'torch'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_torch)
  with pytest.raises(CheckpointError, match=r"pytorch_model\.bin is a PyTorch pickle and torch is not installed"):
    encoder_checkpoint.read_state_dict(tmp_path)


def test_unsupported_activation_and_image_size(checkpoint_copy):
  with pytest.raises(CheckpointError, match=r"image_size \(50, 32\) is not a multiple of the patch size 8"):
    from_pretrained(checkpoint_copy, image_size=(50, 32))
  config = json.loads((checkpoint_copy / "config.json").read_text())
  config["vision_config"]["hidden_act"] = "swish"
  (checkpoint_copy / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError, match=r"hidden_act='swish' is not supported; expected one of"):
    from_pretrained(checkpoint_copy)


def test_feature_layers_out_of_range(make_checkpoint):
  import jax.numpy as jnp
  loaded = from_pretrained(make_checkpoint()[0])
  with pytest.raises(ValueError, match=r"feature layer 4 is outside 1\.\.3"):
    loaded.model.apply({"params": loaded.params}, jnp.zeros((1, 32, 32, 3)), feature_layers=(3, 4),
                       method="encode_image")


def test_a_full_disk_while_writing_the_tiny_clip_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
  from zegot_jax import errors  # pylint: disable=import-outside-toplevel
  from zegot_jax.models import tiny_clip  # pylint: disable=import-outside-toplevel

  save = encoder_checkpoint.save_pretrained

  def full(params, config, directory):
    save(params, config, directory)  # some files written, then the disk is full
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(encoder_checkpoint, "save_pretrained", full)
  with pytest.raises(errors.StorageError, match=rf"could not write the tiny random clip to {tmp_path / 'clip'}: No "
                                                r"space left on device; free space"):
    tiny_clip.make_random_clip(tmp_path / "clip")
  assert list(tmp_path.iterdir()) == []  # no half-written copy, no temporary directory
  monkeypatch.setattr(encoder_checkpoint, "save_pretrained", save)
  assert (tiny_clip.make_random_clip(tmp_path / "clip") / "config.json").is_file()
