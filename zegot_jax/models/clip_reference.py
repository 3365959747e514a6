"""The reference side of the encoder parity check: transformers' PyTorch `CLIPModel` or `SiglipModel` and our Flax
module of the same family run on the same inputs, output by output, and their relative errors. Used by `python -m zegot_jax.tools.clip_parity` and by the
tests. Needs torch and transformers (the `test` extra); they are imported only when a function needs them.
"""


from __future__ import annotations

import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zegot_jax.models import encoder_checkpoint, encoders, prompts

FLOAT32_TOLERANCE = 1e-5
BFLOAT16_TOLERANCE = 3e-2
CLASS_NAMES = ("aeroplane", "potted plant", "tv monitor", "sheep")


def reference_outputs(torch_model, pixels: np.ndarray, input_ids: np.ndarray, feature_layers: Sequence[int],
                      attention_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Named outputs of transformers' CLIPModel or SiglipModel: pixels (B, H, W, 3) NHWC, normalized; ids (K, T)."""
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
    to_joint_space, class_tokens = _torch_joint_space(m)

    def dense(tokens):  # (B, [1 +] h*w, C) → the family's map to the joint space → (B, h, w, D)
      return to_joint_space(tokens[:, class_tokens:]).reshape(b, h, w, -1)

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


def _torch_joint_space(m):
  """(the map of a patch token to the joint space, rows before the patches) of a transformers model, built from
  its own submodules: CLIP's post_layernorm → visual_projection; SigLIP's post_layernorm → its pooling head as if
  the probe attended to that token alone (the value rows of the packed in_proj, out_proj, then the residual MLP)."""
  import torch  # pylint: disable=g-import-not-at-top

  post = m.vision_model.post_layernorm
  if m.config.model_type == "clip":
    return (lambda t: m.visual_projection(post(t))), 1
  head = m.vision_model.head
  d = m.config.vision_config.hidden_size
  w_v, b_v = head.attention.in_proj_weight[2 * d:], head.attention.in_proj_bias[2 * d:]

  def siglip(tokens):
    x = head.attention.out_proj(torch.nn.functional.linear(post(tokens), w_v, b_v))
    return x + head.mlp(head.layernorm(x))

  return siglip, 0


def flax_outputs(loaded: encoder_checkpoint.LoadedEncoder, pixels: np.ndarray, input_ids: np.ndarray,
                 feature_layers: Sequence[int], attention_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """The same named outputs from our Flax module, computed under jit."""
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
  """Loads `directory` both ways (ours and transformers' model class of its family) and returns the relative error
  of every output on random inputs."""
  import transformers  # pylint: disable=g-import-not-at-top

  directory = encoder_checkpoint.resolve_checkpoint_dir(directory)
  loaded = encoder_checkpoint.from_pretrained(directory, dtype=dtype)
  torch_model = getattr(transformers, loaded.family.hf_model).from_pretrained(directory).eval()
  layers = feature_layers or range(1, loaded.config.vision.num_hidden_layers + 1)
  rng = np.random.default_rng(seed)
  pixels = rng.standard_normal((2, *image_size, loaded.config.vision.num_channels)).astype(np.float32)
  max_length = loaded.config.text.max_position_embeddings
  ids = prompts.tokenize(prompts.load_tokenizer(directory), [f"a photo of a {n}." for n in CLASS_NAMES],
                         length=max_length if loaded.config.pad_to_max_length else None, max_length=max_length)
  ours = flax_outputs(loaded, pixels, ids, layers)
  return relative_errors(ours, reference_outputs(torch_model, pixels, ids, layers))


def random_torch_model(config, seed: int = 0, scale: float = 0.1):
  """transformers' model of the config's family (`CLIPModel`, `SiglipModel`) with every parameter perturbed by
  N(0, scale²), so that biases and layer norms (initialized to 0 and 1) matter in a comparison."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.manual_seed(seed)
  model = getattr(transformers, encoders.detect(config.to_dict()).hf_model)(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(scale * torch.randn_like(p))
  return model


def save_with_tokenizer(torch_model, directory: pathlib.Path) -> pathlib.Path:
  """A transformers checkpoint directory with its family's tiny tokenizer (CLIP: `prompts.byte_level_tokenizer`,
  SigLIP: `siglip.tiny_tokenizer`)."""
  torch_model.save_pretrained(directory)
  encoders.detect(torch_model.config.to_dict()).tiny_tokenizer().save_pretrained(directory)
  return directory
