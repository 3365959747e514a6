r"""Throughput of the data pipeline on this machine: training examples/s per CPU core through the full
augmentation, evaluation examples/s, and where one core spends its time per training example.

  python -m zegot_jax.tools.benchmark_data --dataset voc12_zs3                 # 300 + 75 images of ~500×375
  python -m zegot_jax.tools.benchmark_data --dataset coco_stuff171_zs3 --count 120 --workers 4
  python -m zegot_jax.tools.benchmark_data                                      # textures_zs3 (synthetic world)

voc12_zs3 and coco_stuff171_zs3: --count train images (and count // 4 validation images) at the real datasets'
sizes are written in their download layout to a temporary directory (`make_benchmark_data`) and built through the
real builder (a partial build), so the JPEGs, label PNGs and array_record files are what training reads.
textures_zs3 (optionally with a config, textures_zs3/tiny) is built as it is.

Measured:
- training: `pipeline.train_dataset` (decode, mmseg's augmentation to the dataset's crop, unseen marking,
  batching) with photometric distortion on the host, and on the device as the trainer runs it (its draws on the
  host, `photometric.distort` in the jitted step), with 0 worker processes and (device) with --workers; after
  warm-up batches, --batches batches are timed.
  CPU seconds (this process and its workers, all threads) are measured with the wall time: examples per CPU
  second is the rate per core (with 0 workers grain still reads on 2 threads, so the process may use more than
  one core).
- evaluation: `pipeline.eval_dataset` (decode, resize to the evaluation short side), one core.
- per stage: the first --stage_examples training examples go through the functions of `augment.py` one by one
  with a fixed generator, each stage timed alone on one core (milliseconds per example). Rows marked ↳ are not
  added to the total: the rescale's label part (the same nearest-neighbour resize, done again alone; the image part
  is the rest) and one HSV round trip (saturation and hue, which photometric distortion draws with p = 0.75) on
  each crop.
Then the cores needed to feed --images_per_s training images per second: images_per_s / (examples/s per core).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import tempfile
import time
from collections.abc import Callable

import numpy as np
import psutil
import tensorflow_datasets as tfds
from absl import flags
from tqdm import tqdm

from zegot_jax import cli, errors
from zegot_jax.data import augment, build, label_map, pipeline, registry
from zegot_jax.data.classes import IGNORE_INDEX
from zegot_jax.tools import make_benchmark_data

_DATASET = flags.DEFINE_string("dataset", "textures_zs3", f"{' or '.join(make_benchmark_data.DATASETS)} (a "
                               f"generated layout, built for the run), or textures_zs3[/config]")
flags.DEFINE_alias("name", "dataset")
_COUNT = flags.DEFINE_integer("count", 300, "train images generated (validation: count // 4); not for textures_zs3",
                              lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "seed of the generated images, the pipeline and the per-stage generator")
_BATCH = flags.DEFINE_integer("batch", 16, "batch size", lower_bound=1)
_BATCHES = flags.DEFINE_integer("batches", 20, "training batches timed per setting, after warm-up", lower_bound=1)
_WORKERS = flags.DEFINE_integer("workers", 2, "worker processes of the second training measurement (0: none)",
                                lower_bound=0)
_EVAL_EXAMPLES = flags.DEFINE_integer("eval_examples", 100, "validation examples timed (at most the split)",
                                      lower_bound=1)
_STAGE_EXAMPLES = flags.DEFINE_integer("stage_examples", 50, "training examples in the per-stage breakdown",
                                       lower_bound=1)
_IMAGES_PER_S = flags.DEFINE_float("images_per_s", 230.0, "training images/s to feed (about one H100 at the "
                                   "roofline step rate)", lower_bound=0.0)


def cpu_seconds() -> float:
  """User + system CPU seconds of this process (all threads) and of its live child processes (grain's workers)."""
  total = time.process_time()  # nanosecond resolution; psutil's (for the children) has clock ticks
  for child in psutil.Process().children(recursive=True):
    try:
      total += sum(child.cpu_times()[:2])
    except psutil.Error:  # a child that has just ended
      pass
  return total


@dataclasses.dataclass(frozen=True)
class Rate:
  examples: int
  wall_s: float
  cpu_s: float

  @property
  def per_s(self) -> float:
    return self.examples / self.wall_s

  @property
  def per_core(self) -> float:
    return self.examples / self.cpu_s if self.cpu_s > 0 else float("nan")

  @property
  def cores(self) -> float:
    return self.cpu_s / self.wall_s


def _timed(step: Callable[[], None], steps: int, examples_per_step: int, desc: str) -> Rate:
  cpu, start = cpu_seconds(), time.perf_counter()
  for _ in tqdm(range(steps), desc=desc, leave=False):
    step()
  return Rate(steps * examples_per_step, time.perf_counter() - start, cpu_seconds() - cpu)


def time_training(dataset: registry.Dataset, *, workers: int, batch: int, batches: int, seed: int,
                  photometric: str = "device") -> Rate:
  """`photometric="device"` is what the trainer runs: the distortion's draws here, the distortion in the step."""
  it = iter(pipeline.train_dataset(dataset.splits["train"], dataset.spec, batch_size=batch, seed=seed,
                                   process_index=0, process_count=1, num_workers=workers, photometric=photometric))
  # Warm-up: workers start, and the batches read ahead while the first one was awaited are drained (the loop waits
  # on the pipeline from then on, so the timed batches are made while they are timed).
  for _ in range(4 + 2 * workers):
    next(it)
  return _timed(lambda: next(it), batches, batch, f"training, {workers} workers")


def time_eval(dataset: registry.Dataset, examples: int) -> Rate:
  ds = pipeline.eval_dataset(dataset.splits["validation"], dataset.spec, process_index=0, process_count=1)
  _ = ds[0]
  n = min(examples, len(ds))
  index = iter(range(n))
  return _timed(lambda: ds[next(index)], n, 1, "evaluation")


# Rows of the per-stage table; rows starting with two spaces split the row above them (not added to the total).
READ, DECODE_LABEL = "read record (array_record, parse)", "decode label (PNG)"
RESCALE = "random rescale"
RESCALE_IMAGE, RESCALE_LABEL = "  of which image (bilinear, PIL)", "  of which label (nearest)"
CROP, FLIP = "random crop (with its cat_max_ratio checks)", "random flip"
PHOTOMETRIC, HSV = "photometric distortion", "  HSV round trip (one call; drawn with p = 0.75)"
PAD, LUT, BATCH = "pad + contiguous copy", "unseen-class LUT", "batch (np.stack)"


def stage_breakdown(dataset: registry.Dataset, examples: int, *, batch: int = 16,
                    seed: int = 0) -> tuple[list[tuple[str, float]], dict]:
  """[(row, ms per example)] for the first `examples` training examples, through the functions of `augment.py`
  in `augment.train_augment`'s order with `pipeline.TrainAugment`'s settings, one generator seeded by `seed`; and
  facts seen on the way (examples, crop checks, padded crops, rescaled pixels)."""
  spec, builder = dataset.spec, dataset.builder
  skip = {"image": tfds.decode.SkipDecoding(), "label": tfds.decode.SkipDecoding()}
  raw = builder.as_data_source(split="train", decoders=skip)  # records read and parsed, not decoded
  features = builder.info.features
  crop = (spec.crop_size, spec.crop_size)
  lut = label_map.unseen_lut(spec.unseen, "transductive")
  rng = np.random.default_rng(seed)
  decode_image = f"decode image ({getattr(builder, 'IMAGE_FORMAT', 'jpeg').upper()})"
  ms: dict[str, float] = collections.defaultdict(float)
  facts = {"examples": min(examples, len(raw)), "crop_checks": 0, "padded": 0, "rescaled_pixels": 0}
  checks = augment.crop_satisfies

  def counting_checks(*args, **kwargs):
    facts["crop_checks"] += 1
    return checks(*args, **kwargs)

  def timed(row: str, fn: Callable, *args):
    start = time.perf_counter()
    out = fn(*args)
    ms[row] += (time.perf_counter() - start) * 1e3
    return out

  outputs = []
  augment.crop_satisfies = counting_checks  # random_crop looks it up at each call: counts its checks
  try:
    for i in tqdm(range(facts["examples"]), desc="stages", leave=False):
      record = timed(READ, raw.__getitem__, i)
      image = timed(decode_image, features["image"].decode_example_np, record["image"])
      decoded = label = timed(DECODE_LABEL, features["label"].decode_example_np, record["label"])[..., 0]
      image, label = timed(RESCALE, augment.random_rescale, rng, image, label, tuple(spec.train_scale),
                           tuple(spec.train_ratio_range))
      timed(RESCALE_LABEL, augment.resize_label, decoded, label.shape)  # the label's part, done again alone
      facts["rescaled_pixels"] += label.size
      image, label = timed(CROP, augment.random_crop, rng, image, label, crop, pipeline.TrainAugment.cat_max_ratio,
                           IGNORE_INDEX)
      image, label = timed(FLIP, augment.random_flip, rng, image, label)
      image = timed(PHOTOMETRIC, augment.photometric_distortion, rng, image)
      timed(HSV, augment.adjust_saturation_hue, image, 1.2, 5)
      facts["padded"] += label.shape != crop
      image, label = timed(PAD, _pad_contiguous, image, label, crop)
      label = timed(LUT, lut.__getitem__, label)
      outputs.append((image, label))
      if len(outputs) == batch or i == facts["examples"] - 1:
        timed(BATCH, _stack, outputs)
        outputs = []
  finally:
    augment.crop_satisfies = checks
  ms[RESCALE_IMAGE] = ms[RESCALE] - ms[RESCALE_LABEL]
  rows = [READ, decode_image, DECODE_LABEL, RESCALE, RESCALE_IMAGE, RESCALE_LABEL, CROP, FLIP, PHOTOMETRIC, HSV, PAD,
          LUT, BATCH]
  return [(row, ms[row] / facts["examples"]) for row in rows], facts


def _pad_contiguous(image: np.ndarray, label: np.ndarray, crop: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  image, label = augment.pad_to(image, label, crop, IGNORE_INDEX)
  return np.ascontiguousarray(image), np.ascontiguousarray(label)


def _stack(outputs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
  return np.stack([o[0] for o in outputs]), np.stack([o[1] for o in outputs])


def prepare(name: str, count: int, seed: int, workdir: pathlib.Path) -> tuple[registry.Dataset, str]:
  """The dataset built in workdir (its layout generated first when it has a download layout), and what was done."""
  base, _ = registry.parse_name(name)
  start = time.perf_counter()
  if registry.is_synthetic(name):
    dataset = build.build(name, workdir / "tfds")
    return dataset, f"built {name} in {time.perf_counter() - start:.1f} s"
  if base not in make_benchmark_data.DATASETS:
    raise errors.ConfigError(f"--dataset={name}: no generated layout for it; choose one of "
                             f"{list(make_benchmark_data.DATASETS)} or a textures_zs3 config")
  manual = make_benchmark_data.write_layout(base, workdir / "manual", count, seed)
  written = time.perf_counter() - start
  start = time.perf_counter()
  dataset = build.build(name, workdir / "tfds", str(manual), allow_partial=True)
  return dataset, (f"layout written in {written:.1f} s ({make_benchmark_data.jpeg_summary(manual)}), built (partial "
                   f"build) in {time.perf_counter() - start:.1f} s")


def main(argv):
  del argv
  load = os.getloadavg()
  with tempfile.TemporaryDirectory() as workdir:
    dataset, done = prepare(_DATASET.value, _COUNT.value, _SEED.value, pathlib.Path(workdir))
    spec = dataset.spec
    sizes = {k: len(v) for k, v in dataset.splits.items()}
    train = [((w, where), time_training(dataset, workers=w, batch=_BATCH.value, batches=_BATCHES.value,
                                        seed=_SEED.value, photometric=where))
             for w, where in [(0, "host"), (0, "device")] + ([(_WORKERS.value, "device")] if _WORKERS.value else [])]
    evaluation = time_eval(dataset, _EVAL_EXAMPLES.value)
    stages, facts = stage_breakdown(dataset, _STAGE_EXAMPLES.value, batch=_BATCH.value, seed=_SEED.value)
  print(f"\n{_DATASET.value} ({sizes}): {done}")
  print(f"machine: {os.cpu_count()} CPU cores, load average {load[0]:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (other processes' load lowers the wall-clock rates)\n")
  print("| pipeline | examples/s | CPU cores busy | examples/s per core |\n|---|---|---|---|")
  for (workers, where), rate in train:
    print(f"| training, photometric distortion on the {where}{' (as the trainer)' if where == 'device' else ''}, "
          f"{workers} worker processes (batch {_BATCH.value}, {rate.examples} examples, crop "
          f"{spec.crop_size}²) | {rate.per_s:.1f} | {rate.cores:.2f} | {rate.per_core:.1f} |")
  print(f"| evaluation ({evaluation.examples} examples, short side {spec.eval_short_side}) | "
        f"{evaluation.per_s:.1f} | {evaluation.cores:.2f} | {evaluation.per_core:.1f} |")
  total = sum(v for stage, v in stages if not stage.startswith(" "))
  print(f"\nPer-stage cost on one core, {facts['examples']} training examples, ms per example "
        f"({facts['crop_checks'] / facts['examples']:.1f} crop checks per example, "
        f"{facts['padded']} of {facts['examples']} crops padded, rescaled images "
        f"{facts['rescaled_pixels'] / facts['examples'] / 1e6:.3g} Mpixel on average):\n")
  print("| stage | ms / example | share |\n|---|---|---|")
  for stage, value in stages:
    print(f"| {stage.replace('  ', '↳ ')} | {value:.2f} | {100 * value / total:.0f}% |")
  print(f"| total | {total:.2f} | 100% → {1e3 / total:.1f} examples/s per core |")
  per_core = train[1][1].per_core
  host = sum(v for stage, v in stages if stage == PHOTOMETRIC)
  print(f"\nTo feed {_IMAGES_PER_S.value:.0f} training images/s: {_IMAGES_PER_S.value / per_core:.1f} cores at the "
        f"trainer's pipeline's {per_core:.1f} examples/s per core (0 workers, distortion on the device), "
        f"{_IMAGES_PER_S.value * (total - host) / 1e3:.1f} cores at the stage sum without the distortion's "
        f"{1e3 / (total - host):.1f}.")


if __name__ == "__main__":
  cli.run(main)
