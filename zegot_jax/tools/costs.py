"""What the cost account (`tools/benchmark.py`) measures with: XLA's FLOP and byte counts (the batched Sinkhorn's
loop counted once per block it ran), the best of several timed calls, XLA's peak memory, and the roofline time.
No flags here, so tests import it beside any tool.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from zegot_jax.models import sinkhorn

# Peak dense bfloat16 tensor-core FLOP/s and HBM bandwidth (NVIDIA's data sheets, SXM parts).
ROOFLINES = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12)}


class Cost(NamedTuple):
  flops: float
  bytes: float

  def __add__(self, other):
    return Cost(self.flops + other.flops, self.bytes + other.bytes)

  def __sub__(self, other):
    return Cost(self.flops - other.flops, self.bytes - other.bytes)

  def __mul__(self, k):
    return Cost(self.flops * k, self.bytes * k)


def xla_cost(fn: Callable, *args) -> Cost:
  """XLA's count for one call of jitted `fn` (loop bodies once)."""
  return compiled_cost(jax.jit(fn).lower(*args).compile())


def compiled_cost(compiled: jax.stages.Compiled) -> Cost:
  """XLA's count for one call of a compiled program (loop bodies once)."""
  analysis = compiled.cost_analysis()
  analysis = (analysis[0] if isinstance(analysis, (list, tuple)) else analysis) or {}
  return Cost(float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0)))


def best_time(fn: Callable, *args, repeats: int) -> float:
  """Seconds of the fastest of `repeats` calls after the first; NaN when repeats is 0 (nothing is run)."""
  if repeats == 0:
    return float("nan")
  jitted = jax.jit(fn)
  jax.block_until_ready(jitted(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(jitted(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def peak_memory(fn: Callable, *args, donate: tuple[int, ...] = ()) -> int:
  """Bytes a device holds at the peak of one call, by XLA's memory analysis of the compiled function."""
  return compiled_memory(jax.jit(fn, donate_argnums=donate).lower(*args).compile())


def compiled_memory(compiled: jax.stages.Compiled) -> int:
  """Bytes a device holds at the peak of one call of a compiled program (arguments + outputs + temporaries −
  donated)."""
  m = compiled.memory_analysis()
  return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def roofline(cost: Cost, peak_flops: float, bandwidth: float) -> float:
  return max(cost.flops / peak_flops, cost.bytes / bandwidth)


def loop_corrected(cost: Cost, config: sinkhorn.SinkhornConfig, shape: tuple[int, int, int],
                   iterations: int) -> Cost:
  """`cost` of a batched Sinkhorn solve of `shape` (P, M, N) problems that ran `iterations` iterations, with its
  while loop counted once per block (XLA counts the body once). Other solvers are returned as XLA counts them."""
  if config.solver != "batched":
    return cost
  p, m, n = shape
  kernel = jax.ShapeDtypeStruct((p, m, n), jnp.float32)
  state = sinkhorn.Scalings(jax.ShapeDtypeStruct((p, m), jnp.float32), jax.ShapeDtypeStruct((p, n), jnp.float32),
                            jax.ShapeDtypeStruct((p,), bool), jax.ShapeDtypeStruct((p,), jnp.int32),
                            jax.ShapeDtypeStruct((), jnp.int32))
  block = xla_cost(lambda k, s: sinkhorn.batched_block(k, s, config), kernel, state)
  blocks = -(-iterations // config.inner_iterations)
  return cost + block * (blocks - 1)
