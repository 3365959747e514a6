"""`textures_zs3`: the synthetic "stuff" world of named textures, rendered by the builder itself from a seed.

Every pixel belongs to a region of one of 12 texture categories (`textures.CATEGORIES`); zigzag, bricks and rings
are unseen. Splits: train (for training), validation (for choosing settings) and test (where the README's numbers
are reported), each from its own generator stream: example i of a split is drawn from its own generator, seeded by
(seed, split stream, i), so the dataset does not depend on build order. The world's parameters are fixed in
`textures.py` (documented there). Training does not rescale the images at random (mmseg's 0.5-2.0 would halve or
double every period, out of the world's range); crops, flips and photometric distortion stay.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from zegot_jax.data import textures
from zegot_jax.data.builders import SegmentationBuilder, encode_png
from zegot_jax.data.classes import DatasetSpec

SPLIT_STREAMS = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass
class TexturesConfig(tfds.core.BuilderConfig):
  image_size: int = 64
  train_size: int = 2000
  validation_size: int = 200
  test_size: int = 300
  seed: int = 0
  num_regions: tuple[int, int] = (2, 4)


def textures_spec(config: TexturesConfig) -> DatasetSpec:
  return DatasetSpec(name="textures_zs3", classes=textures.CATEGORIES, unseen=textures.DEFAULT_UNSEEN,
                     split_sizes={"train": config.train_size, "validation": config.validation_size,
                                  "test": config.test_size},
                     crop_size=config.image_size, train_scale=(4 * config.image_size, config.image_size),
                     eval_stride=config.image_size, eval_short_side=config.image_size,
                     train_ratio_range=(1.0, 1.0))  # no random rescale: a texture's period is part of its look


class TexturesZs3(SegmentationBuilder):
  """Synthetic scenes of named texture regions; no download needed."""

  name = "textures_zs3"
  IMAGE_FORMAT = "png"
  LAYOUT = "(no manual directory: the builder renders the scenes itself)"
  BUILDER_CONFIGS = [
      TexturesConfig(name="default", description="2,000 train / 200 validation / 300 test scenes of 64x64 (the "
                     "offline demo's world)"),
      TexturesConfig(name="tiny", description="40 / 10 / 10 scenes of 64x64, for tests", train_size=40,
                     validation_size=10, test_size=10),
  ]

  @property
  def spec(self) -> DatasetSpec:
    return textures_spec(self.builder_config)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in SPLIT_STREAMS}

  def _generate_examples(self, split):  # pylint: disable=arguments-renamed
    c = self.builder_config
    for i in range(self.spec.split_sizes[split]):
      rng = np.random.default_rng([c.seed, SPLIT_STREAMS[split], i])
      image, label, _ = textures.render_scene(rng, c.image_size, tuple(c.num_regions))
      image_id = f"{split}_{i:06d}"
      yield image_id, {"image": encode_png(image), "label": encode_png(label[..., None]), "image_id": image_id}
