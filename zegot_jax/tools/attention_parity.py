r"""cuDNN's fused attention against XLA's in the CLIP towers, in bfloat16, on an NVIDIA GPU (clip.attention).

  python -m zegot_jax.tools.attention_parity                          # 512² × 4 images, 80 prompts
  python -m zegot_jax.tools.attention_parity --image_size 224 --batch 16

A random CLIP of ViT-B/16's shapes (`clip.vit_b16_config`, initialized on the device: no checkpoint to write) runs
with `attention="xla"` and `attention="cudnn"` on the same inputs: the image embeddings and the dense features of a
middle layer; the text embeddings of prompts right-padded to 77 tokens (the padding as sequence lengths under
cuDNN); and the gradient of CoOp contexts through the text tower, training's backward pass, at the odd length 77.
Prints the relative error ‖cuDNN − XLA‖ / ‖XLA‖ of each and of its worst vector, and both sides' times (medians
of interleaved calls). Exits 1 when a side fails or an error is above bfloat16's tolerance, 3e-2 (the parity
tests' against transformers), or 1e-1 for the gradient, which comes back through 12 layers in bfloat16. Four
compilations in all; well under a minute on an H200. Without an NVIDIA GPU it says so and exits 0.
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from zegot_jax import cli
from zegot_jax.models import attention
from zegot_jax.models.clip import CLIP, vit_b16_config
from zegot_jax.models.clip_reference import BFLOAT16_TOLERANCE
from zegot_jax.tools.benchmark_clip import median_times


MIDDLE_LAYER = 6
LENGTH = 77  # CLIP's text length; odd, so the backward pass meets an odd sequence length too
CLASSES, PROMPTS, CONTEXT_LENGTH = 20, 4, 8  # the CoOp prompts whose contexts are differentiated
GRADIENT_TOLERANCE = 1e-1


def relative_errors(ours: jax.Array, reference: jax.Array) -> tuple[float, float]:
  """(‖a − r‖ / ‖r‖ over everything, the largest of the same over the last axis's vectors)."""
  a, r = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  worst = np.linalg.norm(a - r, axis=-1) / np.maximum(np.linalg.norm(r, axis=-1), 1e-30)
  return float(np.linalg.norm(a - r) / np.linalg.norm(r)), float(worst.max())


def padded_ids(rng: np.random.Generator, count: int, shortest: int, longest: int,
               eos: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids, attention mask) of `count` random sequences `[SOS] tokens… [EOS]` of random lengths, right-padded
  to LENGTH with EOS, as CLIP's tokenizers pad."""
  lengths = rng.integers(shortest, longest + 1, size=count)
  ids = rng.integers(0, eos - 1, size=(count, LENGTH))
  ids[:, 0] = eos - 1  # [SOS]
  mask = (np.arange(LENGTH) < lengths[:, None]).astype(np.int32)
  ids[mask == 0] = eos
  ids[np.arange(count), lengths - 1] = eos
  return ids.astype(np.int32), mask


def define_flags() -> dict:
  """The flags, defined only when run as a program (other tools define --batch too; tests import them all)."""
  return dict(
      image_size=flags.DEFINE_integer("image_size", 512, "square input size of the image tower", lower_bound=16),
      batch=flags.DEFINE_integer("batch", 4, "images per call", lower_bound=1),
      texts=flags.DEFINE_integer("texts", 80, "padded prompts per call (e.g. 20 classes × 4 prompts)", lower_bound=1),
      calls=flags.DEFINE_integer("calls", 5, "timed calls per side", lower_bound=1))


def main(argv, f: dict):
  del argv
  compare(**{name: flag.value for name, flag in f.items()})


def compare(image_size: int = 512, batch: int = 4, texts: int = 80, calls: int = 5) -> None:
  """Prints the tables above; exits 1 when a side fails or an error is above its tolerance."""
  dtype = jnp.bfloat16
  config = vit_b16_config(image_size)
  why = attention.why_not_cudnn(dtype, head_dim=config.vision.head_dim)  # both towers' head dimension is 64
  if why is not None:
    print(f"attention_parity: nothing to compare on this machine ({jax.devices()[0].device_kind}): cuDNN's fused "
          f"attention cannot run here: {why}")
    return
  size, eos = image_size, config.text.eos_token_id
  rng = np.random.default_rng(0)
  pixels = jnp.asarray(rng.standard_normal((batch, size, size, 3)), jnp.float32)
  ids, mask = map(jnp.asarray, padded_ids(rng, texts, 8, 40, eos))
  coop = jnp.asarray(padded_ids(rng, CLASSES, CONTEXT_LENGTH + 4, CONTEXT_LENGTH + 12, eos)[0])
  context = jnp.asarray(0.02 * rng.standard_normal((PROMPTS, CONTEXT_LENGTH, config.text.hidden_size)), jnp.float32)
  weights = jnp.asarray(rng.standard_normal((CLASSES, PROMPTS, config.projection_dim)), jnp.float32)
  params = jax.jit(CLIP(config).init)(jax.random.key(0), pixels[:1], ids[:1])["params"]

  def functions(implementation):
    model = CLIP(config, dtype=dtype, attention=implementation)

    def image(p):
      out = model.apply({"params": p}, pixels, feature_layers=(MIDDLE_LAYER,), method=CLIP.encode_image)
      return out.image_embeds, out.dense_features[MIDDLE_LAYER]

    def prompt_loss(c, p):  # what training differentiates: the text embeddings of CoOp prompts
      embeds = model.apply({"params": p}, coop, c, method=CLIP.encode_prompts).text_embeds
      return jnp.sum(embeds.astype(jnp.float32) * weights)

    def text(p):
      padded = model.apply({"params": p}, ids, mask, method=CLIP.encode_text).text_embeds
      return padded, jax.grad(prompt_loss)(context, p)

    return {"image tower": jax.jit(image), "text tower": jax.jit(text)}

  sides = {name: functions(name) for name in ("xla", "cudnn")}
  outputs, times, failed = {}, {}, []
  for part in ("image tower", "text tower"):
    timed = {name: (lambda f=fns[part]: jax.block_until_ready(f(params))) for name, fns in sides.items()}
    try:
      times[part] = median_times(timed, calls)
      outputs[part] = {name: call() for name, call in timed.items()}
      print(f"{part}: compiled and timed on both sides", flush=True)  # progress, should the run be cut short
    except Exception as e:  # pylint: disable=broad-except  (a side cuDNN refuses: reported, the rest still runs)
      failed.append(f"{part}: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}")

  rows = []  # (what, (error, worst vector's), tolerance)
  if "image tower" in outputs:
    (xla_embeds, xla_dense), (cudnn_embeds, cudnn_dense) = (outputs["image tower"][k] for k in ("xla", "cudnn"))
    rows += [(f"image embeddings, {batch} × {size}²", relative_errors(cudnn_embeds, xla_embeds), BFLOAT16_TOLERANCE),
             (f"dense features of layer {MIDDLE_LAYER}", relative_errors(cudnn_dense, xla_dense), BFLOAT16_TOLERANCE)]
  if "text tower" in outputs:
    (xla_text, xla_grad), (cudnn_text, cudnn_grad) = (outputs["text tower"][k] for k in ("xla", "cudnn"))
    rows += [(f"text embeddings, {texts} prompts padded to {LENGTH}", relative_errors(cudnn_text, xla_text),
              BFLOAT16_TOLERANCE),
             (f"gradient of {PROMPTS} CoOp contexts, {CLASSES} classes × {LENGTH} tokens",
              relative_errors(cudnn_grad, xla_grad), GRADIENT_TOLERANCE)]

  (major, minor), cudnn_version = attention.cuda_gpu()
  print(f"cuDNN's fused attention against XLA's: random ViT-B/16 CLIP in bfloat16 (jax {jax.__version__}, "
        f"{jax.devices()[0].device_kind}, compute capability {major}.{minor}, cuDNN {cudnn_version})")
  print("| output | relative error | worst vector | tolerance |")
  print("|---|---|---|---|")
  for what, (error, worst), tolerance in rows:
    print(f"| {what} | {error:.1e} | {worst:.1e} | {tolerance:.0e} |")
  print()
  print(f"| call (median of {calls}) | XLA (ms) | cuDNN (ms) | cuDNN faster by |")
  print("|---|---|---|---|")
  for part, t in times.items():
    what = (f"{part}: {batch} × {size}²" if part == "image tower" else
            f"{part}: {texts} padded prompts + the CoOp gradient")
    print(f"| {what} | {1e3 * t['xla']:.2f} | {1e3 * t['cudnn']:.2f} | {t['xla'] / t['cudnn']:.2f}× |")
  failed += [f"{what}: relative error {error:.1e} above {tolerance:.0e}" for what, (error, _), tolerance in rows
             if not error <= tolerance]
  for line in failed:
    print(f"FAILED {line}")
  if failed:
    sys.exit(1)


if __name__ == "__main__":
  cli.run(functools.partial(main, f=define_flags()))
