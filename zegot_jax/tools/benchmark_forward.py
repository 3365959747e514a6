r"""Forward time of ZegOT with and without MPOT, on whatever device JAX finds.

  python -m zegot_jax.tools.benchmark_forward                     # ViT-B/16-sized random CLIP, 2 × 512², 20 classes
  python -m zegot_jax.tools.benchmark_forward --dtype bfloat16 --batch 16

The CLIP is randomly initialized with ViT-B/16's shapes (the timing does not depend on the weights; the Sinkhorn
iteration counts do, so they are reported for these random weights). Each configuration is compiled once, then
timed over --repeats runs; the median is reported.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from tqdm import tqdm

from zegot_jax import errors
from zegot_jax.models import prompts, zegot
from zegot_jax.models.clip import CLIP, vit_b16_config
from zegot_jax.models.mpot import mpot_refine

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")

_BATCH = flags.DEFINE_integer("batch", 2, "images per forward pass")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 512, "square input size")
_CLASSES = flags.DEFINE_integer("classes", 20, "number of classes (VOC names, repeated with a suffix beyond 20)")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed runs per configuration")


def _timed(fn, *args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def main(argv):
  del argv
  dtype = jnp.dtype(_DTYPE.value)
  clip_config = vit_b16_config(_IMAGE_SIZE.value, eos_token_id=513)  # the byte-level tokenizer's [EOS]
  names = [VOC_CLASSES[i % 20] + ("" if i < 20 else f" {i // 20}") for i in range(_CLASSES.value)]
  tokenizer = prompts.byte_level_tokenizer()
  rng = jax.random.key(0)
  clip_params = jax.jit(CLIP(clip_config).init)(
      rng, jnp.zeros((1, _IMAGE_SIZE.value, _IMAGE_SIZE.value, 3)), jnp.zeros((1, 4), jnp.int32))["params"]
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (_BATCH.value, _IMAGE_SIZE.value,
                                                                  _IMAGE_SIZE.value, 3)), jnp.uint8)
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {jax.device_count()} device(s); "
        f"batch {_BATCH.value} × {_IMAGE_SIZE.value}², {_CLASSES.value} classes, {dtype.name}, "
        f"ViT-B/16-sized random CLIP")
  forwards, inputs = {}, {}
  for matching in ("none", "mpot"):
    config = dataclasses.replace(zegot.ZegOTConfig(), matching=matching)
    model = zegot.ZegOT(clip_config, config, dtype=dtype)
    tokens = jnp.asarray(zegot.class_tokens(tokenizer, names, config))
    params = zegot.merge_params(zegot.init_trainable(model, rng, tokens), clip_params)
    forwards[matching] = jax.jit(model.apply)
    inputs[matching] = ({"params": params}, images, tokens)
  _, aux = jax.block_until_ready(forwards["mpot"](*inputs["mpot"]))  # compile and warm up both
  jax.block_until_ready(forwards["none"](*inputs["none"]))
  sinkhorn = zegot.ZegOTConfig().sinkhorn
  refine = jax.jit(lambda s: mpot_refine(s, sinkhorn))
  # Worst case: a threshold no float32 solve reaches, so every problem runs to max_iterations.
  refine_capped = jax.jit(lambda s: mpot_refine(s, dataclasses.replace(sinkhorn, threshold=0.0)))
  jax.block_until_ready((refine(aux["score_maps"]), refine_capped(aux["score_maps"])))

  times = {"none": [], "mpot": [], "solve": [], "capped": []}
  for _ in tqdm(range(_REPEATS.value), desc="timing (interleaved)"):
    for matching in ("none", "mpot"):  # interleaved, so that drifts in machine load hit both alike
      times[matching].append(_timed(forwards[matching], *inputs[matching]))
    times["solve"].append(_timed(refine, aux["score_maps"]))
    times["capped"].append(_timed(refine_capped, aux["score_maps"]))
  t_none, t_mpot, t_solve, t_capped = (statistics.median(times[k]) for k in ("none", "mpot", "solve", "capped"))
  iterations = np.asarray(aux["sinkhorn_iterations"])
  print(f"forward without MPOT: {t_none * 1e3:9.1f} ms ({_BATCH.value / t_none:.2f} images/s)")
  print(f"forward with MPOT:    {t_mpot * 1e3:9.1f} ms ({_BATCH.value / t_mpot:.2f} images/s)")
  print(f"difference:           {100 * (t_mpot / t_none - 1):+.1f}% (medians of {_REPEATS.value} interleaved runs)")
  print(f"MPOT solve alone:     {t_solve * 1e3:9.1f} ms = {100 * t_solve / t_none:.2f}% of the forward pass")
  print(f"MPOT solve at the {sinkhorn.max_iterations}-iteration cap: {t_capped * 1e3:.1f} ms = "
        f"{100 * t_capped / t_none:.2f}% of the forward pass (worst case)")
  print(f"Sinkhorn: {iterations.size} problems of {(_IMAGE_SIZE.value // 16) ** 2} pixels × "
        f"{zegot.ZegOTConfig().n_prompts} prompts; iterations min {iterations.min()}, "
        f"mean {iterations.mean():.1f}, max {iterations.max()} (limit {zegot.ZegOTConfig().sinkhorn.max_iterations})")

if __name__ == "__main__":
  errors.run(main)
