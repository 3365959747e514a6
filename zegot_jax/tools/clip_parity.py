r"""Checks our Flax encoder against transformers' PyTorch model of its family (`CLIPModel`, `SiglipModel`), output
by output.

  python -m zegot_jax.tools.clip_parity          # tiny random CLIPs (both activations) and SigLIP: non-square, bf16
  python -m zegot_jax.tools.clip_parity --model openai/clip-vit-base-patch16 --image_size 512,384
  python -m zegot_jax.tools.clip_parity --model google/siglip-base-patch16-224

With `--model` (a checkpoint directory or a hub id in the local cache) the same comparison runs on that
checkpoint of any supported family (printed), so a user can see that the weights they downloaded load correctly.
Needs torch (the `test` extra).
Prints the relative error ‖ours − reference‖ / ‖reference‖ of every output and exits 1 if any is above the
tolerance (1e-5 in float32, 3e-2 in bfloat16).
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

import jax.numpy as jnp
from absl import flags

from zegot_jax import cli
from zegot_jax.models import encoder_checkpoint, prompts, siglip
from zegot_jax.models.clip_reference import (BFLOAT16_TOLERANCE, FLOAT32_TOLERANCE, compare_checkpoint, group_errors,
                                             random_torch_model, save_with_tokenizer)


def _tiny_checkpoints(root: pathlib.Path) -> dict[str, pathlib.Path]:
  """Tiny random transformers checkpoints for the default run: CLIP (both activations, legacy eos id), SigLIP."""
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
    save_with_tokenizer(random_torch_model(config), out[name])
  config = transformers.SiglipConfig(
      text_config=transformers.SiglipTextConfig(
          vocab_size=len(siglip.tiny_tokenizer()), hidden_size=40, intermediate_size=72, num_hidden_layers=3,
          num_attention_heads=5, max_position_embeddings=64, projection_size=48, pad_token_id=1, eos_token_id=1,
          bos_token_id=None).to_dict(),
      vision_config=transformers.SiglipVisionConfig(hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                                    num_attention_heads=6, image_size=60, patch_size=12).to_dict())
  out["siglip"] = root / "siglip"
  save_with_tokenizer(random_torch_model(config), out["siglip"])
  return out


_MODEL = flags.DEFINE_string("model", None, "checkpoint directory or hub id; default: tiny random checkpoints")
_IMAGE_SIZE = flags.DEFINE_list("image_size", None, "H,W of the test images; default: native and non-square")


def main(argv):
  del argv
  rows = []  # (checkpoint, family, input size, dtype, errors by group)
  with tempfile.TemporaryDirectory() as tmp:
    checkpoints = ({_MODEL.value: _MODEL.value} if _MODEL.value else _tiny_checkpoints(pathlib.Path(tmp)))
    for name, directory in checkpoints.items():
      family, raw = encoder_checkpoint.read_hf_config(encoder_checkpoint.resolve_checkpoint_dir(directory))
      native = family.config_from_hf(raw).vision
      p, s = native.patch_size, native.image_size
      sizes = ([tuple(int(x) for x in _IMAGE_SIZE.value)] if _IMAGE_SIZE.value else [(s, s), (s + 2 * p, s - p)])
      for size in sizes:
        for dtype in (jnp.float32, jnp.bfloat16):
          rows.append((name, family.name, size, jnp.dtype(dtype).name,
                       group_errors(compare_checkpoint(directory, size, dtype))))
  failed = False
  print(f"{'checkpoint':<12} {'family':<7} {'input':>9} {'dtype':<9} {'output':<24} {'rel. error':>10}")
  for name, family, size, dtype, groups in rows:
    tolerance = FLOAT32_TOLERANCE if dtype == "float32" else BFLOAT16_TOLERANCE
    for group, e in groups.items():
      flag = "" if e < tolerance else f"  > {tolerance:g} FAIL"
      failed |= bool(flag)
      print(f"{pathlib.Path(name).name:<12} {family:<7} {size[0]:>4}x{size[1]:<4} {dtype:<9} {group:<24} "
            f"{e:>10.2e}{flag}")
  print("\nlargest error per output over all runs, float32 | bfloat16:")
  for group in rows[0][4]:
    worst = {d: max(g[group] for *_, dd, g in rows if dd == d) for d in ("float32", "bfloat16")}
    print(f"  {group:<24} {worst['float32']:.2e} | {worst['bfloat16']:.2e}")
  print("FAILED: some outputs differ from transformers" if failed else "OK: every output equals transformers' "
        f"within {FLOAT32_TOLERANCE:g} (float32) and {BFLOAT16_TOLERANCE:g} (bfloat16)")
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  cli.run(main)
