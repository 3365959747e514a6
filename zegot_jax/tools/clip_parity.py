r"""Checks the Flax CLIP against transformers' PyTorch `CLIPModel`, output by output.

  python -m zegot_jax.tools.clip_parity                    # tiny random CLIPs: both activations, non-square, bf16
  python -m zegot_jax.tools.clip_parity --model openai/clip-vit-base-patch16 --image_size 512,384

With `--model` (a checkpoint directory or a hub id in the local cache) the same comparison runs on that
checkpoint, so a user can see that the weights they downloaded load correctly. Needs torch (the `test` extra).
Prints the relative error ‖ours − reference‖ / ‖reference‖ of every output and exits 1 if any is above the
tolerance (1e-5 in float32, 3e-2 in bfloat16).
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from zegot_jax.models import clip_checkpoint, prompts

FLOAT32_TOLERANCE = 1e-5
BFLOAT16_TOLERANCE = 3e-2
CLASS_NAMES = ("aeroplane", "potted plant", "tv monitor", "sheep")


def reference_outputs(torch_model, pixels: np.ndarray, input_ids: np.ndarray, feature_layers: Sequence[int],
                      attention_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Named outputs of transformers' CLIPModel: pixels (B, H, W, 3) NHWC, CLIP-normalized; ids (K, T)."""
  import torch  # pylint: disable=g-import-not-at-top

  px = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))).float()
  ids = torch.from_numpy(np.asarray(input_ids, np.int64))
  mask = None if attention_mask is None else torch.from_numpy(np.asarray(attention_mask, np.int64))
  m = torch_model
  with torch.no_grad():
    vision = m.vision_model(pixel_values=px, interpolate_pos_encoding=True, output_hidden_states=True)
    text = m.text_model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    b, _, height, width = px.shape
    patch = m.config.vision_config.patch_size
    h, w = height // patch, width // patch

    def dense(tokens):  # (B, 1 + h*w, C) → post_layernorm → visual_projection → (B, h, w, D)
      return m.visual_projection(m.vision_model.post_layernorm(tokens[:, 1:])).reshape(b, h, w, -1)

    last = m.vision_model.encoder.layers[-1]
    values = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(vision.hidden_states[-2])))
    out = {
        "image_embeds": m.get_image_features(pixel_values=px, interpolate_pos_encoding=True).pooler_output,
        "image_pooled": vision.pooler_output,
        "text_embeds": m.get_text_features(input_ids=ids, attention_mask=mask).pooler_output,
        "text_pooled": text.pooler_output,
        "text_last_hidden_state": text.last_hidden_state,
        "value_features": dense(values),
    }
    out.update({f"vision_hidden_{i}": s for i, s in enumerate(vision.hidden_states)})
    out.update({f"text_hidden_{i}": s for i, s in enumerate(text.hidden_states)})
    out.update({f"dense_features_{i}": dense(vision.hidden_states[i]) for i in feature_layers})
  return {k: v.float().numpy() for k, v in out.items()}


def flax_outputs(loaded: clip_checkpoint.LoadedCLIP, pixels: np.ndarray, input_ids: np.ndarray,
                 feature_layers: Sequence[int], attention_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """The same named outputs from the Flax CLIP, computed under jit."""
  variables = {"params": loaded.params}

  @jax.jit
  def run(pixels, input_ids, attention_mask):
    v = loaded.model.apply(variables, pixels, feature_layers=tuple(feature_layers), value_embeddings=True,
                           method="encode_image")
    t = loaded.model.apply(variables, input_ids, attention_mask, method="encode_text")
    return v, t

  v, t = run(jnp.asarray(pixels), jnp.asarray(input_ids), None if attention_mask is None else
             jnp.asarray(attention_mask))
  out = {
      "image_embeds": v.image_embeds,
      "image_pooled": v.pooled,
      "text_embeds": t.text_embeds,
      "text_pooled": t.pooled,
      "text_last_hidden_state": t.last_hidden_state,
      "value_features": v.value_features,
  }
  out.update({f"vision_hidden_{i}": s for i, s in enumerate(v.hidden_states)})
  out.update({f"text_hidden_{i}": s for i, s in enumerate(t.hidden_states)})
  out.update({f"dense_features_{i}": f for i, f in v.dense_features.items()})
  return {k: np.asarray(x, np.float32) for k, x in out.items()}


def relative_errors(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
  """‖ours − reference‖ / ‖reference‖ per output (float64); a shape mismatch is an error."""
  errors = {}
  for name, ref in reference.items():
    if ours[name].shape != ref.shape:
      raise ValueError(f"{name}: shape {ours[name].shape} differs from the reference's {ref.shape}")
    a, b = ours[name].astype(np.float64), ref.astype(np.float64)
    errors[name] = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
  return errors


def group_errors(errors: dict[str, float]) -> dict[str, float]:
  """The largest error per kind of output (every hidden state of a tower is one group)."""
  groups: dict[str, float] = {}
  for name, e in errors.items():
    group = name.rsplit("_", 1)[0] if name[-1].isdigit() else name
    groups[group] = max(groups.get(group, 0.0), e)
  return groups


def compare_checkpoint(directory, image_size: tuple[int, int], dtype=jnp.float32, seed: int = 0,
                       feature_layers: Sequence[int] | None = None) -> dict[str, float]:
  """Loads `directory` both ways and returns the relative error of every output on random inputs."""
  import transformers  # pylint: disable=g-import-not-at-top

  directory = clip_checkpoint.resolve_checkpoint_dir(directory)
  torch_model = transformers.CLIPModel.from_pretrained(directory).eval()
  loaded = clip_checkpoint.from_pretrained(directory, dtype=dtype)
  layers = feature_layers or range(1, loaded.config.vision.num_hidden_layers + 1)
  rng = np.random.default_rng(seed)
  pixels = rng.standard_normal((2, *image_size, loaded.config.vision.num_channels)).astype(np.float32)
  ids = prompts.tokenize(prompts.load_tokenizer(directory), [f"a photo of a {n}." for n in CLASS_NAMES])
  ours = flax_outputs(loaded, pixels, ids, layers)
  return relative_errors(ours, reference_outputs(torch_model, pixels, ids, layers))


def _tiny_checkpoints(root: pathlib.Path) -> dict[str, pathlib.Path]:
  """Tiny random transformers CLIP checkpoints for the default run (both activations, legacy eos id)."""
  import transformers  # pylint: disable=g-import-not-at-top

  tokenizer = prompts.byte_level_tokenizer()
  out = {}
  for name, act, eos in (("quick_gelu", "quick_gelu", tokenizer.eos_token_id), ("gelu", "gelu", 2)):
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=4,
                         num_attention_heads=4, hidden_act=act, eos_token_id=eos,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                           image_size=64, patch_size=16, hidden_act=act),
        projection_dim=32)
    out[name] = root / name
    save_with_tokenizer(random_torch_clip(config), out[name])
  return out


def random_torch_clip(config, seed: int = 0, scale: float = 0.1):
  """transformers' CLIPModel with every parameter perturbed by N(0, scale²), so that biases and layer norms
  (initialized to 0 and 1) matter in a comparison."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.manual_seed(seed)
  model = transformers.CLIPModel(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(scale * torch.randn_like(p))
  return model


def save_with_tokenizer(torch_model, directory: pathlib.Path) -> pathlib.Path:
  """A transformers checkpoint directory with the byte-level tokenizer (`prompts.byte_level_tokenizer`)."""
  torch_model.save_pretrained(directory)
  prompts.byte_level_tokenizer().save_pretrained(directory)
  return directory


_MODEL = flags.DEFINE_string("model", None, "checkpoint directory or hub id; default: tiny random checkpoints")
_IMAGE_SIZE = flags.DEFINE_list("image_size", None, "H,W of the test images; default: native and non-square")


def main(argv):
  del argv
  rows = []  # (checkpoint, input size, dtype, errors by group)
  with tempfile.TemporaryDirectory() as tmp:
    checkpoints = ({_MODEL.value: _MODEL.value} if _MODEL.value else _tiny_checkpoints(pathlib.Path(tmp)))
    for name, directory in checkpoints.items():
      native = clip_checkpoint.read_hf_config(clip_checkpoint.resolve_checkpoint_dir(directory)).vision_config
      p, s = native.patch_size, native.image_size
      sizes = ([tuple(int(x) for x in _IMAGE_SIZE.value)] if _IMAGE_SIZE.value else [(s, s), (s + 2 * p, s - p)])
      for size in sizes:
        for dtype in (jnp.float32, jnp.bfloat16):
          rows.append((name, size, jnp.dtype(dtype).name, group_errors(compare_checkpoint(directory, size, dtype))))
  failed = False
  print(f"{'checkpoint':<12} {'input':>9} {'dtype':<9} {'output':<24} {'rel. error':>10}")
  for name, size, dtype, groups in rows:
    tolerance = FLOAT32_TOLERANCE if dtype == "float32" else BFLOAT16_TOLERANCE
    for group, e in groups.items():
      flag = "" if e < tolerance else f"  > {tolerance:g} FAIL"
      failed |= bool(flag)
      print(f"{pathlib.Path(name).name:<12} {size[0]:>4}x{size[1]:<4} {dtype:<9} {group:<24} {e:>10.2e}{flag}")
  print("\nlargest error per output over all runs, float32 | bfloat16:")
  for group in rows[0][3]:
    worst = {d: max(g[group] for _, _, dd, g in rows if dd == d) for d in ("float32", "bfloat16")}
    print(f"  {group:<24} {worst['float32']:.2e} | {worst['bfloat16']:.2e}")
  print("FAILED: some outputs differ from transformers" if failed else "OK: every output equals transformers' "
        f"within {FLOAT32_TOLERANCE:g} (float32) and {BFLOAT16_TOLERANCE:g} (bfloat16)")
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  app.run(main)
