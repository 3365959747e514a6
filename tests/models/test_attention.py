"""clip.attention: how the setting resolves on every kind of machine, the text padding as sequence lengths (the
form cuDNN takes) against the boolean mask, the setting's path from the config to the attention call, and
checkpoints saved before it existed."""

import dataclasses
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from zegot_jax import checkpoints, config_lib, from_config
from zegot_jax.errors import ConfigError
from zegot_jax.models import attention, zegot
from zegot_jax.models import clip as clip_lib
from zegot_jax.models.clip import CLIP
from zegot_jax.models.transformer import Attention

ROOT = pathlib.Path(__file__).resolve().parents[2]
BF16, F16, F32 = jnp.bfloat16, jnp.float16, jnp.float32
HOPPER, AMPERE, TURING = ((9, 0), 91000), ((8, 0), 90100), ((7, 5), 90100)


@pytest.fixture
def gpu(monkeypatch):
  """gpu(device): JAX's first GPU reads as `device`, (compute capability, cuDNN version), or None (no CUDA)."""
  return lambda device: monkeypatch.setattr(attention, "cuda_gpu", lambda: device)


# ----------------------------------------------------------------------------------------------- resolve


def test_this_cpu_machine_resolves_to_xla():
  assert jax.default_backend() == "cpu" and attention.cuda_gpu() is None
  assert attention.resolve("auto", BF16, head_dim=64) == "xla"
  assert attention.resolve("auto", BF16, head_dim=64, backend="cpu") == "xla"
  assert attention.resolve("xla", F32) == "xla"


@pytest.mark.parametrize("dtype", [BF16, F16, "bfloat16"])
def test_auto_takes_cudnn_on_an_nvidia_gpu_in_half_precision(gpu, dtype):
  gpu(HOPPER)
  assert attention.resolve("auto", dtype, head_dim=64, backend="gpu") == "cudnn"
  assert attention.resolve("cudnn", dtype, head_dim=64, backend="gpu") == "cudnn"
  assert attention.resolve("xla", dtype, head_dim=64, backend="gpu") == "xla"  # asked for: kept


@pytest.mark.parametrize("device, dtype, head_dim, why", [
    (HOPPER, F32, 64, "clip.dtype is float32"),
    (None, BF16, 64, "no NVIDIA GPU"),  # ROCm, or no CUDA plugin
    (TURING, BF16, 64, "compute capability 8.0 (Ampere) or later and this GPU has 7.5"),
    (HOPPER, BF16, 6, "multiple of 8 up to 256 and this CLIP's is 6"),
    (HOPPER, BF16, 264, "multiple of 8 up to 256"),
    (AMPERE, BF16, 192, "multiple of 8 up to 128 and this CLIP's is 192"),
    (((10, 3), 91000), BF16, 64, "10.3 needs cuDNN 9.11"),
])
def test_auto_falls_back_to_xla_and_cudnn_says_why(gpu, device, dtype, head_dim, why):
  gpu(device)
  assert attention.resolve("auto", dtype, head_dim=head_dim, backend="gpu") == "xla"
  with pytest.raises(ConfigError, match=re.escape(why)):
    attention.resolve("cudnn", dtype, head_dim=head_dim, backend="gpu")


def test_head_dims_up_to_each_generations_limit(gpu):
  gpu(AMPERE)
  assert attention.resolve("auto", BF16, head_dim=128, backend="gpu") == "cudnn"
  gpu(HOPPER)
  assert attention.resolve("auto", BF16, head_dim=192, backend="gpu") == "cudnn"
  assert attention.resolve("auto", BF16, backend="gpu") == "cudnn"  # head dim not known yet: not checked


def test_cudnn_on_a_cpu_is_one_line_naming_the_entry_and_the_way_out():
  with pytest.raises(ConfigError) as error:
    attention.resolve("cudnn", BF16, head_dim=64)
  assert str(error.value) == ("config clip.attention='cudnn': cuDNN's fused attention cannot run here: it needs an "
                              "NVIDIA GPU and the backend is cpu; use --config.clip.attention=auto (cuDNN where it "
                              "can run, XLA elsewhere) or xla")


@pytest.mark.parametrize("setting", ["flash", "Auto", ""])
def test_an_unknown_setting_is_refused(setting):
  with pytest.raises(ConfigError, match=rf"clip.attention={setting!r}: expected one of \('auto', 'xla', 'cudnn'\)"):
    attention.resolve(setting, BF16)


# ----------------------------------------------------------------------------------------------- padding as lengths


def _padding(lengths, t):
  return (np.arange(t)[None] < np.asarray(lengths)[:, None]).astype(np.int32)  # right padding, as tokenizers pad


def test_attention_with_lengths_equals_the_key_mask_on_the_real_tokens():
  """Not causal, so the padding keys would be seen without the lengths: the comparison can fail."""
  lengths, t = np.array([7, 3, 5], np.int32), 7
  x = jax.random.normal(jax.random.key(0), (3, t, 16))
  module = Attention(16, 2)
  params = module.init(jax.random.key(1), x)
  mask = jnp.asarray(_padding(lengths, t)).astype(bool)[:, None, None, :]
  by_mask = np.asarray(module.apply(params, x, mask=mask))
  by_lengths = np.asarray(module.apply(params, x, lengths=jnp.asarray(lengths)))
  unmasked = np.asarray(module.apply(params, x))
  real = _padding(lengths, t).astype(bool)
  np.testing.assert_allclose(by_lengths[real], by_mask[real], rtol=0, atol=1e-6)
  assert np.abs(unmasked[real] - by_mask[real]).max() > 1e-2  # the padding matters here
  np.testing.assert_array_equal(by_lengths[~real], 0.0)  # padding queries attend nothing with lengths (as cuDNN)


@pytest.fixture(scope="module")
def tiny():
  config = clip_lib.tiny_config()
  model = CLIP(config)
  params = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 4), jnp.int32))
  rng = np.random.default_rng(0)
  lengths = np.array([12, 5, 8, 2])
  ids = rng.integers(0, 512, (4, 12))
  ids[:, 0] = 512  # [SOS]
  ids[np.arange(4), lengths - 1] = config.text.eos_token_id
  ids[_padding(lengths, 12) == 0] = config.text.eos_token_id  # pad with EOS, as the byte-level tokenizer does
  return model, params, ids, lengths


def test_text_tower_lengths_form_equals_the_boolean_mask(tiny):
  """The form the text tower takes under cuDNN, computed by XLA: the same embeddings as today's mask."""
  model, params, ids, lengths = tiny
  mask = _padding(lengths, ids.shape[1])
  by_mask = model.apply(params, ids, mask, method="encode_text")
  by_lengths = model.apply(params, ids, mask, method="encode_text", padding_as_lengths=True)
  for name in ("text_embeds", "pooled"):
    np.testing.assert_allclose(getattr(by_lengths, name), getattr(by_mask, name), rtol=0, atol=1e-6, err_msg=name)
  real = mask.astype(bool)
  for layer, (a, b) in enumerate(zip(by_lengths.hidden_states, by_mask.hidden_states)):
    np.testing.assert_allclose(np.asarray(a)[real], np.asarray(b)[real], rtol=0, atol=1e-5, err_msg=str(layer))
  assert not np.allclose(np.asarray(by_lengths.last_hidden_state)[~real],  # the lengths did reach the attention
                         np.asarray(by_mask.last_hidden_state)[~real], atol=1e-3)
  one_short = model.apply(params, ids, _padding(lengths - 1, ids.shape[1]), method="encode_text",
                          padding_as_lengths=True)  # the EOS token cut off: a different embedding
  assert np.abs(np.asarray(one_short.text_embeds) - np.asarray(by_mask.text_embeds)).max(axis=-1).min() > 1e-3


def test_cudnn_takes_no_mask():
  x = jnp.zeros((1, 3, 16), BF16)
  module = Attention(16, 2, dtype=BF16, attention="cudnn")
  params = Attention(16, 2).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="takes padding as lengths"):
    module.apply(params, x, mask=jnp.ones((1, 1, 1, 3), bool))
  with pytest.raises(ValueError, match="expected 'xla' or 'cudnn'"):
    Attention(16, 2, attention="auto").apply(params, x)  # the module takes the resolved value only


# ----------------------------------------------------------------------------------------------- config to model


def _runlocal():
  return config_lib.load_config(str(ROOT / "configs" / "textures_zs3.py") + ":runlocal=True")


def test_every_config_defaults_to_auto():
  for path in sorted((ROOT / "configs").glob("*.py")):
    assert config_lib.load_config(str(path)).clip.attention == "auto", path.name


def test_the_setting_reaches_every_attention_call():
  """ZegOT's field reaches the frozen CLIP's attention calls: under "cudnn" a CPU fails in JAX's cuDNN call
  itself, for the image tower and for the text tower."""
  clip_config = clip_lib.tiny_config()
  images, tokens = jnp.zeros((1, 64, 64, 3), jnp.uint8), jnp.zeros((3, 12), jnp.int32)
  config = zegot.ZegOTConfig(num_prompts=2, context_length=2, dfa_layers=(1, 2), decoder_features=8)
  xla = zegot.ZegOT(clip_config, config, dtype=BF16, attention="xla")
  params = jax.eval_shape(xla.init, jax.random.key(0), images, tokens)
  jax.eval_shape(xla.apply, params, images, tokens)  # XLA traces
  cudnn = zegot.ZegOT(clip_config, config, dtype=BF16, attention="cudnn")
  for method, args in (("encode_images", (images,)), ("encode_classes", (tokens,))):
    with pytest.raises(RuntimeError, match="cuDNN is not detected"):
      jax.eval_shape(lambda p, a: cudnn.apply(p, *a, method=method), params, args)  # noqa: B023


def test_build_model_resolves_the_setting(tmp_path, gpu, monkeypatch):
  config = _runlocal()
  clip = from_config.load_clip(config, tmp_path)
  assert from_config.build_model(config, clip).attention == "xla"  # a CPU
  config.clip.dtype = "bfloat16"
  gpu(HOPPER)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  model = from_config.build_model(config, clip)
  # Both towers' head dimension, 8, fits; under auto the differentiated text tower stays on XLA.
  assert (model.attention, model.text_attention) == ("cudnn", "xla")
  config.clip.attention = "cudnn"
  model = from_config.build_model(config, clip)
  assert (model.attention, model.text_attention) == ("cudnn", "cudnn")
  config.clip.attention = "xla"
  assert from_config.attention_for(config, clip.config) == "xla"
  config.clip.attention = "auto"
  narrow_text = dataclasses.replace(clip.config, text=dataclasses.replace(clip.config.text, num_attention_heads=8))
  assert narrow_text.text.head_dim == 4
  assert from_config.attention_for(config, narrow_text) == "xla"  # one tower that cannot: both on XLA


def test_train_with_cudnn_on_a_cpu_is_one_line(tmp_path):
  done = subprocess.run([sys.executable, "-m", "zegot_jax.train", "--config", "configs/textures_zs3.py:runlocal=True",
                         f"--config.data_dir={tmp_path / 'tfds'}", "--workdir", str(tmp_path / "w"),
                         "--config.clip.attention=cudnn"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert done.returncode == 2, done.stderr[-3000:]
  assert done.stderr.strip().splitlines() == [
      "error: config clip.attention='cudnn': cuDNN's fused attention cannot run here: it needs an NVIDIA GPU and the "
      "backend is cpu; use --config.clip.attention=auto (cuDNN where it can run, XLA elsewhere) or xla"]
  assert not (tmp_path / "tfds").exists()  # refused before the dataset was touched


# ----------------------------------------------------------------------------------------------- checkpoints


def test_a_checkpoint_from_before_the_setting_resumes_and_loads(tmp_path):
  """Saved configs lack clip.attention (it was not there, or it is resumable): accepted for resuming and for
  inference, under any value; a run's config.json without it builds its model as auto."""
  config = _runlocal()
  saved = checkpoints.checked_config(config)
  assert "clip.attention" not in saved and "clip.dtype" in saved
  for value in attention.IMPLEMENTATIONS:
    config.clip.attention = value
    checkpoints.check_matches(saved, config, "old")
    checkpoints.check_matches(saved, config, "old", prefixes=checkpoints.INFERENCE_CHECKED)
  config.clip.dtype = "bfloat16"  # the neighbours are still checked
  with pytest.raises(ConfigError, match="clip.dtype: checkpoint has 'float32', config has 'bfloat16'"):
    checkpoints.check_matches(saved, config, "old", prefixes=checkpoints.INFERENCE_CHECKED)

  old = ml_collections.ConfigDict(_runlocal().to_dict())
  del old.clip["attention"]
  assert from_config.attention_for(old) == "xla"  # auto, on this CPU
  assert from_config.build_model(old, from_config.load_clip(old, tmp_path)).attention == "xla"


# ----------------------------------------------------------------------------------------------- the GPU check


def test_attention_parity_says_there_is_no_gpu_and_exits_0():
  done = subprocess.run([sys.executable, "-m", "zegot_jax.tools.attention_parity"], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.splitlines() == ["attention_parity: nothing to compare on this machine (cpu): cuDNN's fused "
                                      "attention cannot run here: it needs an NVIDIA GPU and the backend is cpu"]


def test_attention_parity_compares_and_times_both_sides(monkeypatch, capsys):
  """The GPU check's own path on a CPU: a tiny CLIP, and "cudnn" computed by XLA (so only the text padding's form
  differs between the sides): every row is there and agrees."""
  from zegot_jax.tools import attention_parity  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(attention, "why_not_cudnn", lambda *args, **kwargs: None)
  monkeypatch.setattr(attention, "cuda_gpu", lambda: HOPPER)
  monkeypatch.setattr(attention_parity, "vit_b16_config", lambda size: clip_lib.tiny_config())
  monkeypatch.setattr(attention_parity, "MIDDLE_LAYER", 1)
  xla = jax.nn.dot_product_attention
  monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, implementation=None, **k: xla(*a, **k))
  attention_parity.compare(image_size=64, batch=2, texts=3, calls=1)
  rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in capsys.readouterr().out.splitlines()
          if line.startswith("| ") and not line.startswith("| output") and not line.startswith("| call")}
  errors = {what: float(cells[0]) for what, cells in rows.items() if "tower" not in what}
  assert list(errors) == ["image embeddings, 2 × 64²", "dense features of layer 1", "text embeddings, 3 prompts "
                          "padded to 77", "gradient of 4 CoOp contexts, 20 classes × 77 tokens"]
  assert max(errors.values()) <= 1e-6, errors
  assert [what for what in rows if "tower" in what] == ["image tower: 2 × 64²",
                                                        "text tower: 3 padded prompts + the CoOp gradient"]
