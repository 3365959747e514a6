r"""MPOT's forward + backward at a training shape: time and XLA's temporary memory of each solver and gradient
(`SinkhornConfig.solver`, `.gradient`) against ott-jax unrolled (the first path), one run, same scores.

  python -m zegot_jax.tools.benchmark_mpot                  # VOC: 5 DFA layers × 16 images × 20 classes
  python -m zegot_jax.tools.benchmark_mpot --classes 171    # COCO-Stuff

Scores are uniform in [-0.2, 0.6] on a 32×32 patch grid (512² input, ViT-B/16) with N = 4 prompts; the loss is a
sum of the refined maps. Time: the best of 3 calls after compilation.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import flags

from zegot_jax import cli
from zegot_jax.models.mpot import mpot_refine
from zegot_jax.models.sinkhorn import SinkhornConfig

_CLASSES = flags.DEFINE_integer("classes", 20, "K, classes per image", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch", 16, "images", lower_bound=1)
_LAYERS = flags.DEFINE_integer("layers", 5, "DFA layers", lower_bound=1)
_GRID = flags.DEFINE_integer("grid", 32, "patch grid side (512 / 16)", lower_bound=1)
_PROMPTS = flags.DEFINE_integer("prompts", 4, "N", lower_bound=1)


PATHS = (("ott", "unrolled"), ("ott", "implicit"), ("batched", "implicit"))


def measure(scores: jax.Array, config: SinkhornConfig) -> tuple[float, float]:
  """(seconds, temporary bytes) of one jitted forward + backward of MPOT on `scores`."""
  step = jax.jit(jax.value_and_grad(lambda s: mpot_refine(s, config)[0].sum() * 1e-3))
  temp = step.lower(scores).compile().memory_analysis().temp_size_in_bytes
  jax.block_until_ready(step(scores))
  times = []
  for _ in range(3):
    start = time.perf_counter()
    jax.block_until_ready(step(scores))
    times.append(time.perf_counter() - start)
  return min(times), temp


def main(argv):
  del argv
  shape = (_LAYERS.value, _BATCH.value, _GRID.value, _GRID.value, _CLASSES.value, _PROMPTS.value)
  scores = jax.random.uniform(jax.random.key(0), shape, jnp.float32, -0.2, 0.6)
  problems = shape[0] * shape[1] * shape[4]
  print(f"MPOT forward + backward, {problems} problems of {shape[2] * shape[3]} pixels × {shape[5]} prompts, "
        f"{jax.devices()[0].platform}")
  print("| solver | gradient | time (s) | temporary memory (GB) | faster | less memory |\n|---|---|---|---|---|---|")
  base = None
  for solver, gradient in PATHS:
    seconds, temp = measure(scores, SinkhornConfig(solver=solver, gradient=gradient))
    base = base or (seconds, temp)
    print(f"| {solver} | {gradient} | {seconds:.2f} | {temp / 1e9:.2f} | {base[0] / seconds:.1f}× | "
          f"{base[1] / max(temp, 1):.1f}× |")


if __name__ == "__main__":
  cli.run(main)
