"""MPOT: ott-jax's and the batched Sinkhorn against an independent log-domain Sinkhorn and each other, their
gradients (unrolled and implicit), batching, stability."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from zegot_jax.models.mpot import bipartite_refine, mpot_refine
from zegot_jax.models.sinkhorn import SinkhornConfig, sinkhorn_plans

OTT = SinkhornConfig(solver="ott", gradient="unrolled")
TIGHT = SinkhornConfig(threshold=1e-7, max_iterations=2000, solver="ott", gradient="unrolled")
BATCHED = SinkhornConfig(solver="batched", gradient="implicit")
BATCHED_TIGHT = SinkhornConfig(threshold=1e-7, max_iterations=2000, solver="batched", gradient="implicit")


def reference_plan(cost: np.ndarray, epsilon: float = 0.05, iterations: int = 20000) -> np.ndarray:
  """Algorithm 1 in the log domain, float64, uniform marginals, run to convergence."""
  cost = np.asarray(cost, np.float64)
  m, n = cost.shape
  log_mu, log_nu = np.full(m, -np.log(m)), np.full(n, -np.log(n))
  f, g = np.zeros(m), np.zeros(n)
  for _ in range(iterations):
    f = epsilon * (log_mu - logsumexp((g[None, :] - cost) / epsilon, axis=1))  # a^t = μ / K b^{t-1}
    g = epsilon * (log_nu - logsumexp((f[:, None] - cost) / epsilon, axis=0))  # b^t = ν / Kᵀ a^t
    plan = np.exp((f[:, None] + g[None, :] - cost) / epsilon)
    if np.abs(plan.sum(1) - 1 / m).sum() < 1e-15:
      break
  return plan


def unrolled_plan(cost: jax.Array, epsilon: float = 0.05, iterations: int = 300) -> jax.Array:
  """The same algorithm in JAX, unrolled for a fixed number of iterations: an autodiff reference."""
  m, n = cost.shape
  log_mu, log_nu = -jnp.log(m), -jnp.log(n)

  def step(_, fg):
    f, g = fg
    f = epsilon * (log_mu - jax.nn.logsumexp((g[None, :] - cost) / epsilon, axis=1))
    g = epsilon * (log_nu - jax.nn.logsumexp((f[:, None] - cost) / epsilon, axis=0))
    return f, g

  f, g = jax.lax.fori_loop(0, iterations, step, (jnp.zeros(m), jnp.zeros(n)))
  return jnp.exp((f[:, None] + g[None, :] - cost) / epsilon)


def _scores(seed, shape, low=-0.3, high=0.6):
  return jax.random.uniform(jax.random.key(seed), shape, jnp.float32, low, high)


def test_marginals_are_uniform():
  scores = _scores(0, (2, 3, 6, 5, 4, 3))  # (d, B, h, w, K, N)
  _, transport = mpot_refine(scores, TIGHT)
  plan = np.asarray(transport.plan, np.float64)  # (d, B, h, w, K, N)
  m, n = 6 * 5, 3
  np.testing.assert_allclose(plan.sum(axis=-1), 1 / m, rtol=1e-5)  # μ: every pixel
  np.testing.assert_allclose(plan.sum(axis=(2, 3)), 1 / n, rtol=1e-5)  # ν: every prompt


@pytest.mark.parametrize("config", [TIGHT, BATCHED_TIGHT], ids=["ott", "batched"])
def test_plan_equals_independent_float64_sinkhorn(config):
  cost = 1.0 - _scores(1, (4, 48, 4))
  plans = np.asarray(sinkhorn_plans(cost, config).plan)
  for p in range(cost.shape[0]):
    reference = reference_plan(np.asarray(cost[p]))
    # Compared on the mean-1 scale of (M·N)·T, the scale at which MPOT uses the plan.
    np.testing.assert_allclose(48 * 4 * plans[p], 48 * 4 * reference, atol=1e-6 * 48 * 4, rtol=0)
    assert np.abs(48 * 4 * (plans[p] - reference)).max() < 5e-5


def test_refined_maps_are_rescaled_plan_times_scores():
  scores = _scores(2, (1, 2, 4, 4, 3, 2))
  refined, transport = mpot_refine(scores)
  np.testing.assert_allclose(refined, 16 * 2 * transport.plan * scores, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("config", [OTT, BATCHED], ids=["ott", "batched"])
def test_batched_equals_one_problem_at_a_time(config):
  """Each problem stops at its own check, whatever else is in the batch (the batched solver freezes converged
  problems)."""
  scores = _scores(3, (2, 2, 4, 3, 5, 4))  # 2·2·5 = 20 problems
  scores = scores.at[0, 0].multiply(3.0)  # wider score ranges: these problems need more iterations than others
  refined, transport = mpot_refine(scores, config)
  assert len(np.unique(np.asarray(transport.iterations))) > 1
  solve_one = jax.jit(lambda s: mpot_refine(s, config))  # one compilation for all 20 single problems
  for l in range(2):
    for b in range(2):
      for k in range(5):
        single, single_t = solve_one(scores[l:l + 1, b:b + 1, :, :, k:k + 1])
        np.testing.assert_allclose(refined[l, b, :, :, k], single[0, 0, :, :, 0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(transport.plan[l, b, :, :, k], single_t.plan[0, 0, :, :, 0], rtol=1e-6,
                                   atol=1e-9)
        assert transport.iterations.reshape(2, 2, 5)[l, b, k] == single_t.iterations[0]


def test_gradients_equal_unrolled_reference_and_finite_differences():
  scores = _scores(4, (1, 1, 4, 3, 2, 3))
  weights = jax.random.normal(jax.random.key(5), scores.shape)
  config = SinkhornConfig(threshold=1e-9, max_iterations=300, solver="ott", gradient="unrolled")  # runs all 300

  def loss_ours(s):
    return jnp.sum(weights * mpot_refine(s, config)[0])

  def loss_reference(s):
    problems = jnp.moveaxis(s, -2, -4).reshape(-1, 12, 3)  # (l, b, k) problems of 12 pixels × 3 prompts
    plans = jax.vmap(unrolled_plan)(1.0 - problems).reshape(1, 1, 2, 4, 3, 3)
    return jnp.sum(weights * 12 * 3 * jnp.moveaxis(plans, -4, -2) * s)

  np.testing.assert_allclose(loss_ours(scores), loss_reference(scores), rtol=1e-5)
  loss_ours = jax.jit(loss_ours)
  g_ours, g_ref = jax.jit(jax.grad(loss_ours))(scores), jax.jit(jax.grad(loss_reference))(scores)
  assert np.isfinite(np.asarray(g_ours)).all()
  np.testing.assert_allclose(g_ours, g_ref, rtol=1e-3, atol=1e-3 * float(jnp.abs(g_ref).max()))

  eps = 1e-3
  rng = np.random.default_rng(0)
  for _ in range(4):
    idx = tuple(int(rng.integers(0, d)) for d in scores.shape)
    bump = jnp.zeros_like(scores).at[idx].set(eps)
    fd = (loss_ours(scores + bump) - loss_ours(scores - bump)) / (2 * eps)
    np.testing.assert_allclose(float(fd), float(g_ours[idx]), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("config", [OTT, BATCHED], ids=["ott", "batched"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_no_nan_at_extreme_costs(dtype, config):
  """Scores near 1 and −1 (costs near 0 and 2), in float32 and bfloat16: plans and gradients stay finite."""
  base = jnp.where(jax.random.bernoulli(jax.random.key(6), 0.5, (1, 2, 4, 4, 3, 4)), 0.9999, -0.9999)
  scores = base.astype(dtype)
  refined, transport = mpot_refine(scores, config)
  assert refined.dtype == jnp.float32 and np.isfinite(np.asarray(refined)).all()
  np.testing.assert_allclose(np.asarray(transport.plan).sum(axis=-1), 1 / 16, rtol=1e-4)
  grad = jax.jit(jax.grad(lambda s: mpot_refine(s, config)[0].sum()))(scores.astype(jnp.float32))
  assert np.isfinite(np.asarray(grad)).all()
  uniform = jnp.full((1, 1, 3, 3, 2, 4), 1.0, dtype)  # every cost exactly 0
  refined, transport = mpot_refine(uniform, config)
  np.testing.assert_allclose(transport.plan, 1 / 36, rtol=1e-5)


def test_bipartite_assigns_each_pixel_to_one_prompt():
  scores = _scores(7, (1, 2, 4, 4, 3, 4))
  refined, transport = bipartite_refine(scores)
  active = np.asarray(transport.plan) > 0
  assert (active.sum(axis=-1) == 1).all()  # exactly one prompt per pixel
  np.testing.assert_allclose(np.asarray(refined)[active], 4 * np.asarray(scores)[active], rtol=1e-6)
  assert (np.asarray(refined)[~active] == 0).all()


def test_sinkhorn_config_rejects_wrong_iteration_settings():
  with pytest.raises(ValueError, match="min_iterations < inner_iterations"):
    SinkhornConfig(min_iterations=10)
  with pytest.raises(ValueError, match="multiple of inner_iterations"):
    SinkhornConfig(max_iterations=95)


def test_min_iterations_at_inner_iterations_would_stop_ott_early():
  """Why SinkhornConfig forbids min_iterations >= inner_iterations: ott-jax then stops after one block."""
  from ott.geometry import geometry
  from ott.problems.linear import linear_problem
  from ott.solvers.linear import sinkhorn

  cost = 1.0 - _scores(1, (48, 4))
  solve = lambda **kw: sinkhorn.Sinkhorn(threshold=1e-7, max_iterations=2000, implicit_diff=None, **kw)(
      linear_problem.LinearProblem(geometry.Geometry(cost_matrix=cost, epsilon=0.05)))
  assert int(solve(min_iterations=10).n_iters) == 10  # "diverged" on the skipped check
  assert int(solve(min_iterations=0).n_iters) > 10


IMPLICIT_TIGHT = SinkhornConfig(threshold=1e-7, max_iterations=2000, solver="ott", gradient="implicit")
CASES = ["random", "near_ties", "equal_rows", "wide_range"]


def _case_scores(case: str, shape=(2, 1, 6, 5, 3, 4)) -> jax.Array:
  """Random score maps (d, B, h, w, K, N), or adversarial ones."""
  scores = _scores(7, shape)
  if case == "near_ties":  # every prompt scores a pixel almost the same
    scores = scores[..., :1] + 1e-4 * _scores(8, shape)
  elif case == "equal_rows":  # whole rows of the cost identical: a flat plan along them
    scores = scores.at[..., :3, :, :, :].set(0.2)
  elif case == "wide_range":  # costs spread over almost all of [0, 2]
    scores = 0.99 * jnp.sign(scores - 0.15) * jnp.abs(scores) ** 0.2
  return scores


@pytest.mark.parametrize("case", CASES)
def test_batched_solver_equals_ott(case):
  """The batched kernel-domain solve against ott-jax's: the same plans, refined maps and stopping iterations, at
  the default threshold and at convergence."""
  scores = _case_scores(case, (2, 2, 6, 5, 3, 4))
  for ott_config, batched_config in ((OTT, BATCHED), (TIGHT, BATCHED_TIGHT)):
    refined_o, transport_o = mpot_refine(scores, ott_config)
    refined_b, transport_b = mpot_refine(scores, batched_config)
    if ott_config.threshold >= 1e-5:  # at 1e-7 the marginal error is float32 rounding, and so is when they stop
      np.testing.assert_array_equal(transport_b.iterations, transport_o.iterations)
    m, n = 30, 4  # compared on the mean-1 scale (M·N)·T at which MPOT uses the plan
    np.testing.assert_allclose(m * n * transport_b.plan, m * n * transport_o.plan, rtol=0, atol=2e-5)
    np.testing.assert_allclose(refined_b, refined_o, rtol=0, atol=2e-5)


@pytest.mark.parametrize("solver", ["ott", "batched"])
@pytest.mark.parametrize("case", CASES)
def test_implicit_gradients_equal_the_unrolled_ones_and_finite_differences(case, solver):
  """The implicit backward pass (an N×N solve per problem), with either solver, against autodiff through
  ott-jax's iterations, both at convergence, and against central finite differences; on random and adversarial
  score maps."""
  shape = (2, 1, 6, 5, 3, 4)  # (d, B, h, w, K, N)
  scores = _case_scores(case, shape)
  implicit_config = IMPLICIT_TIGHT if solver == "ott" else BATCHED_TIGHT
  weights = jax.random.normal(jax.random.key(9), shape)

  def loss(s, config):
    return jnp.sum(weights * mpot_refine(s, config)[0])

  implicit = jax.jit(lambda s: loss(s, implicit_config))
  if solver == "ott":  # the forward pass is ott-jax's, unchanged
    refined_i, transport_i = mpot_refine(scores, implicit_config)
    refined_u, transport_u = mpot_refine(scores, TIGHT)
    np.testing.assert_array_equal(refined_i, refined_u)
    np.testing.assert_array_equal(transport_i.plan, transport_u.plan)
  g_implicit = jax.jit(jax.grad(lambda s: loss(s, implicit_config)))(scores)
  g_unrolled = jax.jit(jax.grad(lambda s: loss(s, TIGHT)))(scores)
  assert np.isfinite(np.asarray(g_implicit)).all()
  scale = float(jnp.abs(g_unrolled).max())
  np.testing.assert_allclose(g_implicit, g_unrolled, rtol=1e-4, atol=1e-4 * scale)

  eps = 1e-3
  rng = np.random.default_rng(1)
  for _ in range(4):
    idx = tuple(int(rng.integers(0, d)) for d in shape)
    bump = jnp.zeros_like(scores).at[idx].set(eps)
    fd = (implicit(scores + bump) - implicit(scores - bump)) / (2 * eps)
    np.testing.assert_allclose(float(fd), float(g_implicit[idx]), rtol=3e-2, atol=3e-2 * max(scale, 1.0))


def test_implicit_gradient_is_a_config_choice():
  with pytest.raises(ValueError, match="gradient='adjoint'"):
    SinkhornConfig(gradient="adjoint")
  with pytest.raises(ValueError, match="solver='pot'"):
    SinkhornConfig(solver="pot")
  with pytest.raises(ValueError, match="differentiated implicitly only"):
    SinkhornConfig(solver="batched", gradient="unrolled")
  with pytest.raises(ValueError, match="epsilon >= 0.025"):  # exp(-2/0.01) would leave float32's range
    SinkhornConfig(solver="batched", gradient="implicit", epsilon=0.01)
