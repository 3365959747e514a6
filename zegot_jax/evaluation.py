"""The evaluation protocol (docs/reading.md) on one dataset split, built once per run as big_vision builds its evaluators.

Each image is resized to the dataset's evaluation scale (short side), segmented with sliding windows of the crop
size and the dataset's stride (`segmenter.Segmenter`), its logits resized back to the label's resolution; the
predicted class is the argmax of the per-class scores (seen classes lowered by `eval.seen_bias` in the inductive
setting), and intersections and unions are summed over the whole split (`metrics.py`). The text embeddings are
computed once per evaluation. With `eval.pictures = N` in the config, each evaluation also draws Figure 1 for N
images (`pictures.py`) through the same segmenter.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from zegot_jax import checkpoints, from_config, metrics, pictures
from zegot_jax.data import pipeline, registry
from zegot_jax.errors import ConfigError
from zegot_jax.models import zegot
from zegot_jax.segmenter import Segmenter


def evaluation_split_name(config: ml_collections.ConfigDict) -> str:
  """The name of the split that evaluation reads: `config.eval.split` ("validation" unless the config says
  otherwise)."""
  return config.eval.get("split", "validation")


def evaluation_split(config: ml_collections.ConfigDict, dataset) -> Any:
  """The split that evaluation reads (`evaluation_split_name`); ConfigError when the dataset lacks it."""
  name = evaluation_split_name(config)
  if name not in dataset.splits:
    raise ConfigError(f"config eval.split={name!r}: dataset {dataset.spec.name} has the splits "
                     f"{sorted(dataset.splits)}; set --config.eval.split to one of them")
  return dataset.splits[name]


class Evaluator:
  """mIoU(S), mIoU(U), hIoU and per-class IoU of a model's parameters on the split `config.eval.split` (default
  "validation") of a dataset (default: the config's).

    evaluator = Evaluator(config, model, tokenizer, mesh=mesh)   # opens the dataset, once
    result = evaluator(params, step)                              # as often as needed (periodic evaluations)

  Each process evaluates its shard of the images; the counts are summed over processes at the end. `dataset`:
  an already opened dataset to evaluate on (training passes its own, so a run opens its dataset once).
  `pictures_dir`: where the pictures go when the config asks for them (`eval.pictures`); the result then names
  the figure under "pictures".
  """

  def __init__(self, config: ml_collections.ConfigDict, model: zegot.ZegOT, tokenizer, *, mesh: jax.sharding.Mesh,
               dataset_name: str | None = None, dataset: registry.Dataset | None = None, max_examples: int = 0,
               pictures_dir: pathlib.Path | None = None):
    self.dataset = dataset if dataset is not None else from_config.open_dataset(config, dataset_name)
    spec = self.spec = self.dataset.spec
    self.split = evaluation_split_name(config)
    self.examples = pipeline.eval_dataset(evaluation_split(config, self.dataset), spec)
    n = len(self.examples)
    self.count = n if not max_examples else min(n, max(1, max_examples // jax.process_count()))
    self.segmenter = Segmenter(model, tokenizer, spec.classes, crop_size=spec.crop_size, stride=spec.eval_stride,
                               mesh=mesh, batch_windows=config.eval.batch_windows or None)
    seen_mask = np.zeros(len(spec.classes), bool)
    seen_mask[list(spec.seen)] = True
    self.seen_mask, self.seen_bias = jnp.asarray(seen_mask), config.eval.seen_bias
    self.pictures = None
    if pictures_dir is not None and config.eval.get("pictures", 0):
      self.pictures = pictures.Pictures(self.segmenter, self.examples, spec, split=self.split, out=pictures_dir,
                                        num_images=config.eval.pictures, seen_mask=self.seen_mask,
                                        seen_bias=self.seen_bias)

  def __call__(self, params: Any, step: int | None = None) -> dict:
    """params: the full parameter tree (trainable + "clip"); step: the training step they are from."""
    spec, num_classes = self.spec, len(self.spec.classes)
    self.segmenter.set_params(params)  # the text embeddings: once per evaluation
    accumulator = metrics.IoUAccumulator(num_classes)
    for i in tqdm(range(self.count), desc=f"eval {spec.name}", disable=jax.process_index() != 0, leave=False):
      ex = self.examples[i]
      logits = self.segmenter.logits(ex["image"], ex["label"].shape)
      pred = metrics.predict_labels(logits, self.seen_mask, self.seen_bias)
      accumulator.add(*metrics.iou_counts(pred, jnp.asarray(ex["label"]), num_classes))
    intersection, union = accumulator.intersection, accumulator.union
    if jax.process_count() > 1:
      intersection = np.asarray(multihost_utils.process_allgather(intersection)).sum(0)
      union = np.asarray(multihost_utils.process_allgather(union)).sum(0)
    report = metrics.miou_report(intersection, union, spec.classes, spec.seen, spec.unseen)
    result = dict(dataset=spec.name, split=self.split, examples=int(self.count * jax.process_count()),
                  report=report, **{k: report[k] for k in ("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU")})
    if self.pictures is not None:
      result["pictures"] = str(self.pictures(params, step))
    return result


def evaluate_dataset(config: ml_collections.ConfigDict, model: zegot.ZegOT, params: Any, tokenizer, *,
                     mesh: jax.sharding.Mesh, dataset_name: str | None = None, max_examples: int = 0) -> dict:
  """One evaluation: `Evaluator(...)(params)`."""
  return Evaluator(config, model, tokenizer, mesh=mesh, dataset_name=dataset_name, max_examples=max_examples)(params)


def evaluate_run(workdir: str | pathlib.Path, config: ml_collections.ConfigDict, step: int | None = None, *,
                 dataset_name: str | None = None, max_examples: int = 0,
                 pictures_dir: pathlib.Path | None = None) -> dict:
  """The evaluation of a trained run's checkpoint (latest or `step`), with its pictures in `pictures_dir`
  (default <workdir>/pictures) when the config asks for them. The result records the checkpoint's step and every
  setting that changes the numbers."""
  workdir = pathlib.Path(workdir).expanduser()
  run = checkpoints.load_run(workdir, config, step)
  evaluator = Evaluator(config, run.model, run.tokenizer, mesh=run.mesh, dataset_name=dataset_name,
                        max_examples=max_examples, pictures_dir=pictures_dir or workdir / "pictures")
  settings = dict(setting=config.setting, seen_bias=config.eval.seen_bias, max_examples=max_examples,
                  crop_size=evaluator.spec.crop_size, stride=evaluator.spec.eval_stride,
                  eval_short_side=evaluator.spec.eval_short_side)
  return dict(step=run.step, settings=settings, **evaluator(run.params, run.step))
