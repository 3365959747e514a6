"""The class-agnostic decoder: it must see how a class's score level compares with the other classes'."""

import jax
import jax.numpy as jnp
import numpy as np

from zegot_jax.models.decoder import ClassAgnosticDecoder


def _apply(maps):
  decoder = ClassAgnosticDecoder(features=8, aspp_rates=(1, 2))
  params = decoder.init(jax.random.key(0), maps, (16, 16))
  return np.asarray(decoder.apply(params, maps, (16, 16)))


def test_uniform_maps_of_different_levels_give_different_outputs():
  # Class 0 scores +0.3 everywhere, class 1 scores -0.3 everywhere. Statistics per class map would normalize
  # both to the same zero map (the bug this guards against): the decoder could not tell them apart.
  maps = jnp.stack([jnp.full((1, 8, 8, 3), 0.3), jnp.full((1, 8, 8, 3), -0.3)], axis=1)  # (B, K, h, w, levels)
  out = _apply(maps)  # (1, 16, 16, 2)
  assert np.abs(out[..., 0] - out[..., 1]).min() > 1e-3


def test_permuting_the_classes_permutes_the_output():
  maps = jax.random.normal(jax.random.key(1), (2, 5, 8, 8, 3))
  order = np.array([3, 0, 4, 1, 2])
  np.testing.assert_allclose(_apply(maps[:, order]), _apply(maps)[..., order], rtol=1e-5, atol=1e-5)


def test_images_of_a_batch_are_independent():
  maps = jax.random.normal(jax.random.key(2), (3, 4, 8, 8, 3))
  both = _apply(maps)
  np.testing.assert_allclose(_apply(maps[1:2]), both[1:2], rtol=1e-5, atol=1e-5)
