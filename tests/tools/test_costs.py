"""The cost account's arithmetic (zegot_jax/tools/costs.py): the Sinkhorn loop counted once per block it ran."""

import jax
import jax.numpy as jnp
import numpy as np

from zegot_jax.models import sinkhorn
from zegot_jax.tools import costs


def test_loop_corrected_cost_equals_the_solve_unrolled_in_python():
  """XLA counts a while loop's body once; `loop_corrected` adds the blocks it ran. Reference: the same solve with
  its blocks unrolled in Python, which XLA counts in full."""
  config = sinkhorn.SinkhornConfig()  # the batched solver
  cost = 1.0 - jax.random.uniform(jax.random.key(0), (12, 64, 4), jnp.float32, -1.0, 1.0) ** 3
  iterations = int(sinkhorn.sinkhorn_plans(cost, config).iterations.max())
  blocks = iterations // config.inner_iterations
  assert blocks >= 3  # enough blocks that counting the loop once would be far off

  def unrolled(c):
    kernel = sinkhorn.sinkhorn_kernel(c, config.epsilon)
    p, m, n = c.shape
    s = sinkhorn.Scalings(jnp.ones((p, m)), jnp.ones((p, n)), jnp.zeros(p, bool), jnp.zeros(p, jnp.int32),
                          jnp.zeros((), jnp.int32))
    for _ in range(blocks):
      s = sinkhorn.batched_block(kernel, s, config)
    return s.u[:, :, None] * kernel * s.v[:, None, :]

  np.testing.assert_allclose(jax.jit(unrolled)(cost), sinkhorn.sinkhorn_plans(cost, config).plan, rtol=1e-6)
  counted = costs.xla_cost(lambda c: sinkhorn.sinkhorn_plans(c, config).plan, cost)
  corrected = costs.loop_corrected(counted, config, cost.shape, iterations)
  reference = costs.xla_cost(unrolled, cost)
  assert counted.flops < 0.6 * reference.flops  # what XLA alone reports
  np.testing.assert_allclose(corrected.flops, reference.flops, rtol=0.03)
  np.testing.assert_allclose(corrected.bytes, reference.bytes, rtol=0.25)


def test_roofline_is_the_slower_of_compute_and_memory():
  flops, bandwidth = costs.ROOFLINES["H100"]
  assert costs.roofline(costs.Cost(flops, 0.0), flops, bandwidth) == 1.0
  assert costs.roofline(costs.Cost(flops, 2 * bandwidth), flops, bandwidth) == 2.0
