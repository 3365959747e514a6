"""Multi-prompt optimal transport (MPOT, eq. 7 and Algorithm 1) and the matchings it is compared with.

Every (layer, image, class) score map S (M = h·w pixels × N prompts) is its own transport problem with cost
C = 1 − S and uniform marginals μ = 1/M, ν = 1/N. All problems are solved in one batched Sinkhorn in float32
(`sinkhorn.py`: ott-jax or the equal batched kernel-domain solve, unrolled or implicit gradients), ε = 0.05
absolute, at most 100 iterations. Each problem stops on its own when the L1 error of its prompt marginal falls
below the threshold, so results do not depend on the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zegot_jax.models.sinkhorn import SinkhornConfig, Transport, sinkhorn_plans



def _problems(scores: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
  """(..., h, w, K, N) score maps → (P, M = h·w, N) problems, one per leading index and class."""
  *lead, h, w, k, n = scores.shape
  s = jnp.moveaxis(scores, -2, -4)  # (..., K, h, w, N)
  return s.reshape(-1, h * w, n), (*lead, k, h, w, n)


def _maps(problems: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return jnp.moveaxis(problems.reshape(shape), -4, -2)  # (..., h, w, K, N)


def mpot_refine(scores: jax.Array, config: SinkhornConfig = SinkhornConfig()) -> tuple[jax.Array, Transport]:
  """S*_i = (M·N) · T*_i ⊙ S_i (eq. 7) for score maps (..., h, w, K, N); one transport problem per map and class.

  The M·N factor rescales each plan to mean 1 (docs/reading.md; the paper's eq. 7 omits it, which would shrink the
  scores by M·N). Returns the refined maps, float32, and the plans in the same (..., h, w, K, N) layout.
  """
  s, shape = _problems(scores.astype(jnp.float32))  # (P, M, N)
  m, n = s.shape[-2:]
  transport = sinkhorn_plans(1.0 - s, config)  # cost C = 1 − S (section 4.2 b)
  refined = (m * n) * transport.plan * s
  return _maps(refined, shape), Transport(_maps(transport.plan, shape), transport.iterations)


def bipartite_refine(scores: jax.Array, config: SinkhornConfig = SinkhornConfig()) -> tuple[jax.Array, Transport]:
  """Table 4b's bipartite matching: each pixel is assigned to exactly one prompt (one-to-one instead of MPOT's
  one-to-many), the prompt its transport plan favours, with the same row mass 1/M. The assignment is a
  constant for differentiation; gradients flow through the scores."""
  s, shape = _problems(scores.astype(jnp.float32))
  m, n = s.shape[-2:]
  transport = sinkhorn_plans(1.0 - s, config)
  assignment = jax.nn.one_hot(jnp.argmax(transport.plan, axis=-1), n, dtype=jnp.float32) / m  # (P, M, N)
  assignment = jax.lax.stop_gradient(assignment)
  return _maps((m * n) * assignment * s, shape), Transport(_maps(assignment, shape), transport.iterations)
