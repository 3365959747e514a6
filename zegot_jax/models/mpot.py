"""Multi-prompt optimal transport (MPOT, eq. 7 and Algorithm 1) and the matchings it is compared with.

Every (layer, image, class) score map S (M = h·w pixels × N prompts) is its own transport problem with cost
C = 1 − S and uniform marginals μ = 1/M, ν = 1/N. All problems are solved in one batched (vmapped) ott-jax
Sinkhorn in float32, log domain, ε = 0.05 absolute, at most 100 iterations.

Differentiation is unrolled (`implicit_diff=None`) with `min_iterations < max_iterations`: ott-jax 0.6.0's
implicit differentiation gives NaN in float32 here, and with `min_iterations == max_iterations` its unrolled
backward pass starts from iteration 0 and the gradients are wrong (DESIGN.md; tests/models/test_mpot.py checks
the gradients against an independent unrolled Sinkhorn and finite differences). Each problem stops on its own
when the L1 error of its prompt marginal falls below the threshold, so results do not depend on the batch.

`SinkhornConfig.gradient="implicit"` differentiates the converged plan instead (`implicit_plans`): the backward
pass solves the optimality conditions' adjoint system, which reduces to one N×N system per problem (N prompts),
so it stores no iterations and its cost does not grow with them. ott-jax still solves the forward problem.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn


@dataclasses.dataclass(frozen=True)
class SinkhornConfig:
  epsilon: float = 0.05  # absolute entropic regularization (ott's epsilon=None would mean 0.05·std(cost))
  max_iterations: int = 100
  min_iterations: int = 0  # must stay below inner_iterations (see __post_init__)
  inner_iterations: int = 10  # iterations between two convergence checks
  threshold: float = 1e-4  # L1 error of the prompt marginal ν at which a problem stops
  gradient: str = "unrolled"  # "unrolled" (through ott's iterations) or "implicit" (`implicit_plans`)

  def __post_init__(self):
    if self.gradient not in ("unrolled", "implicit"):
      raise ValueError(f"Sinkhorn gradient={self.gradient!r}: expected 'unrolled' or 'implicit'")
    # ott-jax 0.6.0 records an infinite error for a convergence check that falls before min_iterations and
    # reads it as divergence: min_iterations >= inner_iterations stops every solve after one block of
    # iterations. min_iterations == max_iterations would avoid that, but then its unrolled gradients are wrong.
    if not 0 <= self.min_iterations < self.inner_iterations:
      raise ValueError(f"Sinkhorn needs 0 <= min_iterations < inner_iterations (ott-jax 0.6.0 reads the skipped "
                       f"error checks as divergence), got min_iterations={self.min_iterations}, "
                       f"inner_iterations={self.inner_iterations}")
    if self.max_iterations % self.inner_iterations or self.max_iterations <= self.min_iterations:
      raise ValueError(f"max_iterations ({self.max_iterations}) must be a positive multiple of inner_iterations "
                       f"({self.inner_iterations})")
    if not self.epsilon > 0:
      raise ValueError(f"Sinkhorn epsilon must be > 0, got {self.epsilon}")


class Transport(NamedTuple):
  plan: jax.Array  # (P, M, N) transport plans, rows sum to 1/M, columns to 1/N
  iterations: jax.Array  # (P,) Sinkhorn iterations each problem took


def sinkhorn_plans(cost: jax.Array, config: SinkhornConfig = SinkhornConfig()) -> Transport:
  """Entropic OT plans (Algorithm 1) of a batch of cost matrices (P, M, N), uniform marginals, in float32;
  differentiated as `config.gradient` says."""
  cost = cost.astype(jnp.float32)
  if config.gradient == "implicit":
    return Transport(*implicit_plans(cost, config))
  return _ott_plans(cost, config)


def _ott_plans(cost: jax.Array, config: SinkhornConfig) -> Transport:
  """ott-jax's batched log-domain Sinkhorn; autodiff unrolls its iterations."""
  solver = sinkhorn.Sinkhorn(lse_mode=True, threshold=config.threshold, inner_iterations=config.inner_iterations,
                             min_iterations=config.min_iterations, max_iterations=config.max_iterations,
                             implicit_diff=None)

  def solve(c):  # (M, N)
    geom = geometry.Geometry(cost_matrix=c, epsilon=config.epsilon)
    out = solver(linear_problem.LinearProblem(geom))  # uniform a = 1/M, b = 1/N by default
    return out.matrix, out.n_iters

  plan, iterations = jax.vmap(solve)(cost)
  return Transport(plan, iterations)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def implicit_plans(cost: jax.Array, config: SinkhornConfig) -> tuple[jax.Array, jax.Array]:
  """(plans (P, M, N), iterations (P,)) of ott-jax's Sinkhorn, differentiated implicitly at the converged plan.

  With potentials f, g and T_ij = exp((f_i + g_j − C_ij)/ε), the marginal conditions T1 = μ, Tᵀ1 = ν give, for a
  cotangent G of T and H = G ⊙ T / ε, the cost cotangent  ∂L/∂C = T ⊙ (x ⊕ y) − H,  where (x, y) solves
      diag(μ) x + T y = H1,   Tᵀ x + diag(ν) y = Hᵀ1.
  Eliminating x leaves the N×N system (diag(ν) − Tᵀ diag(1/μ) T) y = Hᵀ1 − Tᵀ (H1 / μ), singular only along
  the constant vector (the potentials' shift); adding 11ᵀ picks the solution with Σy = 0. Exact at convergence;
  the forward solve's threshold bounds the error.
  """
  transport = _ott_plans(cost, config)
  return transport.plan, transport.iterations


def _implicit_fwd(cost, config):
  transport = _ott_plans(cost, config)  # nothing is kept of its iterations: the backward needs the plan alone
  return (transport.plan, transport.iterations), transport.plan


def _implicit_bwd(config, plan, cotangents):
  g, _ = cotangents  # the iteration counts are integers: no cotangent
  m, n = plan.shape[-2:]
  mu, nu = 1.0 / m, 1.0 / n  # uniform marginals
  h = g * plan / config.epsilon  # (P, M, N)
  h_rows, h_cols = h.sum(-1), h.sum(-2)  # (P, M), (P, N)
  schur = nu * jnp.eye(n) - jnp.einsum("pmi,pmj->pij", plan, plan) / mu  # (P, N, N)
  rhs = h_cols - jnp.einsum("pmn,pm->pn", plan, h_rows) / mu  # (P, N)
  y = jnp.linalg.solve(schur + 1.0, rhs[..., None])[..., 0]  # + 11ᵀ: the solution with Σy = 0
  x = (h_rows - jnp.einsum("pmn,pn->pm", plan, y)) / mu  # (P, M)
  return (plan * (x[..., :, None] + y[..., None, :]) - h,)


implicit_plans.defvjp(_implicit_fwd, _implicit_bwd)


def _problems(scores: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
  """(..., h, w, K, N) score maps → (P, M = h·w, N) problems, one per leading index and class."""
  *lead, h, w, k, n = scores.shape
  s = jnp.moveaxis(scores, -2, -4)  # (..., K, h, w, N)
  return s.reshape(-1, h * w, n), (*lead, k, h, w, n)


def _maps(problems: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return jnp.moveaxis(problems.reshape(shape), -4, -2)  # (..., h, w, K, N)


def mpot_refine(scores: jax.Array, config: SinkhornConfig = SinkhornConfig()) -> tuple[jax.Array, Transport]:
  """S*_i = (M·N) · T*_i ⊙ S_i (eq. 7) for score maps (..., h, w, K, N); one transport problem per map and class.

  The M·N factor rescales each plan to mean 1 (DESIGN.md; the paper's eq. 7 omits it, which would shrink the
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
