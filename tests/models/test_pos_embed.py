"""The position-embedding resize equals torch.nn.functional.interpolate, as transformers calls it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from zegot_jax.models.pos_embed import resize_position_embedding


def _torch_resize(pos, grid, new_grid, method):
  patch = torch.from_numpy(pos[1:].reshape(1, *grid, -1)).permute(0, 3, 1, 2)
  out = torch.nn.functional.interpolate(patch, size=new_grid, mode=method, align_corners=False)
  return np.concatenate([pos[:1], out.permute(0, 2, 3, 1).reshape(-1, pos.shape[1]).numpy()])


@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
@pytest.mark.parametrize("grid, new_grid", [((4, 4), (6, 3)), ((14, 14), (32, 32)), ((14, 14), (7, 9)),
                                            ((3, 5), (5, 2)), ((2, 2), (1, 1))])
def test_equals_torch_interpolate(method, grid, new_grid):
  pos = np.random.default_rng(0).standard_normal((1 + grid[0] * grid[1], 8)).astype(np.float32)
  expected = _torch_resize(pos, grid, new_grid, method)
  np.testing.assert_allclose(resize_position_embedding(pos, grid, new_grid, method), expected, atol=1e-5)
  jitted = jax.jit(resize_position_embedding, static_argnums=(1, 2, 3))
  np.testing.assert_allclose(jitted(jnp.asarray(pos), grid, new_grid, method), expected, atol=1e-5)


def test_same_grid_is_identity_and_cls_is_kept():
  pos = np.random.default_rng(1).standard_normal((1 + 12, 4)).astype(np.float32)
  np.testing.assert_array_equal(resize_position_embedding(pos, (3, 4), (3, 4)), pos)
  np.testing.assert_array_equal(resize_position_embedding(pos, (3, 4), (9, 2))[0], pos[0])


def test_wrong_table_size_is_an_error():
  with pytest.raises(ValueError, match=r"17 rows, expected 1 \+ 3\*4"):
    resize_position_embedding(np.zeros((17, 4)), (3, 4), (5, 5))
  with pytest.raises(ValueError, match="'bicubic' or 'bilinear'"):
    resize_position_embedding(np.zeros((5, 4)), (2, 2), (3, 3), "nearest")
