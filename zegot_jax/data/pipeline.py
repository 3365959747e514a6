"""grain input pipelines: training batches with mmsegmentation's augmentation, and evaluation images.

Training: each JAX process reads its own disjoint shard (`source[process_index::process_count]`), shuffles it
(reshuffled every epoch), augments every example with a generator derived from (seed, position), so the stream
is a pure function of the seed; the iterator's state (`get_state` / `set_state`) makes it resumable exactly.
Unseen-class pixels become UNLABELLED (254) in the transductive setting, IGNORE_INDEX (255) in the inductive one
(`label_map.py`).

Evaluation: images resized so their short side is the dataset's eval_short_side (ratio kept), labels kept at the
original resolution, one example at a time (images differ in size).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np
from absl import flags

from zegot_jax.data import augment, label_map
from zegot_jax.data.classes import IGNORE_INDEX, DatasetSpec

PHOTOMETRIC = ("host", "device", "off")  # where photometric distortion is applied (device: `photometric.distort`)


@dataclasses.dataclass(frozen=True)
class TrainAugment(grain.transforms.RandomMap):
  """mmseg's training chain, then the zero-shot marking of unseen pixels."""

  crop_size: int
  scale: tuple[int, int]
  lut: np.ndarray = dataclasses.field(compare=False)
  ratio_range: tuple[float, float] = (0.5, 2.0)
  cat_max_ratio: float = 0.75
  photometric: str = "host"  # one of PHOTOMETRIC

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    kw = dict(crop_size=(self.crop_size, self.crop_size), scale=tuple(self.scale), ratio_range=tuple(self.ratio_range),
              cat_max_ratio=self.cat_max_ratio, ignore_index=IGNORE_INDEX)
    if self.photometric == "device":  # drawn here, applied in the train step
      image, label, params = augment.train_augment_deferred(rng, element["image"], element["label"][..., 0], **kw)
      return {"image": image, "label": self.lut[label], "photometric": params}
    image, label = augment.train_augment(rng, element["image"], element["label"][..., 0],
                                         photometric=self.photometric == "host", **kw)
    return {"image": image, "label": self.lut[label]}


def _process_shard(source, process_index: int | None, process_count: int | None) -> grain.MapDataset:
  import jax  # pylint: disable=g-import-not-at-top  (only for the defaults)

  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f"process_index={index} must be in 0..{count - 1}")
  return grain.MapDataset.source(source)[index::count]


def train_dataset(source, spec: DatasetSpec, *, batch_size: int, seed: int, setting: str = "transductive",
                  process_index: int | None = None, process_count: int | None = None, num_workers: int = 0,
                  photometric: str | bool = "host") -> grain.IterDataset:
  """Endless stream of {"image": (b, crop, crop, 3) uint8, "label": (b, crop, crop) uint8} for this process;
  batch_size is the per-process batch. `photometric`: "host" (here), "off", or "device": drawn here and applied
  by `photometric.distort` on the device; then the batch also holds "photometric" (b, 11) float32 (True and False
  mean "host" and "off")."""
  photometric = {True: "host", False: "off"}.get(photometric, photometric)
  if photometric not in PHOTOMETRIC:
    raise ValueError(f"photometric={photometric!r}; expected one of {PHOTOMETRIC}")
  ds = _process_shard(source, process_index, process_count)
  if len(ds) < batch_size:
    raise ValueError(f"{spec.name}: this process's shard has {len(ds)} examples, fewer than batch_size={batch_size}")
  transform = TrainAugment(spec.crop_size, tuple(spec.train_scale),
                           label_map.unseen_lut(spec.unseen, setting),
                           ratio_range=tuple(spec.train_ratio_range), photometric=photometric)
  ds = ds.seed(seed).shuffle().repeat().random_map(transform).batch(batch_size, drop_remainder=True)
  iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; a library caller may not have parsed any
      flags.FLAGS.mark_as_parsed()
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter_ds


def eval_dataset(source, spec: DatasetSpec, *, process_index: int | None = None,
                 process_count: int | None = None) -> grain.MapDataset:
  """{"image": resized (h', w', 3) uint8, "label": original (H, W) uint8, "image_id": str}, one per example."""

  def prepare(element):
    image = augment.resize_short_side(element["image"], spec.eval_short_side)
    image_id = element["image_id"]
    return {"image": image, "label": element["label"][..., 0],
            "image_id": image_id.decode() if isinstance(image_id, bytes) else image_id}

  return _process_shard(source, process_index, process_count).map(prepare)
