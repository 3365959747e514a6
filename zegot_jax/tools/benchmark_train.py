r"""The whole trainer, measured on this machine: images/s in each phase, peak device memory, and the share of the
step spent waiting for the input pipeline, at a dataset's settings, in one command.

  python -m zegot_jax.tools.benchmark_train --dataset voc12_zs3             # batch 16, 512², bfloat16: a GPU
  python -m zegot_jax.tools.benchmark_train --dataset coco_stuff171_zs3 --steps 60
  python -m zegot_jax.tools.benchmark_train --dataset voc12_zs3 --images 8 --image_size 64 --batch 2 --steps 6 \
      --clip random-tiny --dtype float32 --workers 0                       # a minute on a CPU

What runs is what `python -m zegot_jax.train --config configs/<dataset>.py` runs, on stand-ins for the downloads:
1. data: --images real-size photos and labels in the dataset's download layout (`make_benchmark_data`; Pascal
   Context's VOC2010 layout holds VOC's generated photos and labels), built by the real builder (a partial
   build). textures_zs3 (and textures_zs3/tiny) renders itself;
2. CLIP: random weights with ViT-B/16's shapes (or the tiny CLIP's), written in transformers' format by
   `save_pretrained` with the byte-level tokenizer, and read back by the trainer;
3. `trainer.train_and_evaluate` on the config at its settings (batch, image size, dtype; the flags override
   them) for --steps steps, half in each phase, without evaluation, one checkpoint at the end, with the grain
   worker processes of --workers.

An --image_size other than the dataset's crop runs the pipeline at that crop too (its train scale, evaluation
stride and short side scaled alike): a toy size on a CPU. With --clip random-tiny (2 layers) the DFA layers are
(1, 2).

The trainer logs every `window` steps (a divisor of both phases' lengths, at least 4 windows per phase when the
steps allow): images/s, seconds per step and `data_wait_fraction`, the share of the window's wall time spent in
`next(iterator)`. A phase's images/s is its timed steps × batch over their logged seconds, the run's first
window left out (it holds the compilation; its seconds per step are shown apart). Peak device memory:
`memory_stats()["peak_bytes_in_use"]` of the first device, where the backend reports it. The table is stdout;
everything else (the trainer's progress, tfds') goes to stderr.

--time_limit N: once N seconds have passed since the start, the run stops cleanly after the current step (the
trainer's preemption path: a SIGTERM to itself, a checkpoint, a return), and the table covers the windows logged
by then, saying so. A GPU benchmark script with a fixed budget gets a table instead of nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
from absl import flags, logging

from zegot_jax import cli, config_lib, errors, from_config, trainer
from zegot_jax.data import build, registry
from zegot_jax.data.builders import BUILDERS
from zegot_jax.data.classes import DatasetSpec
from zegot_jax.models import encoder_checkpoint, prompts, tiny_clip
from zegot_jax.models.clip import vit_b16_config
from zegot_jax.tools import make_benchmark_data

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
DATASETS = ("voc12_zs3", "coco_stuff171_zs3", "pascal_context59_zs3", "textures_zs3", "textures_zs3/tiny")
CLIPS = ("random-vit-b16", tiny_clip.RANDOM_TINY)
PHASE1_FRACTION = 0.5  # both phases measured alike
TINY_DFA_LAYERS = (1, 2)  # the tiny CLIP has 2 layers


@dataclasses.dataclass(frozen=True)
class Settings:
  """What is measured: the flags, with the config's values where they were left out."""
  dataset: str
  steps: int
  batch: int
  image_size: int
  dtype: str
  workers: int
  clip: str
  images: int
  attention: str


class Window(NamedTuple):
  """One logged row of metrics.jsonl: the steps since the row before."""
  phase: int
  steps: int
  seconds: float
  wait_fraction: float


class PhaseRate(NamedTuple):
  phase: int
  steps: int  # timed steps
  total_steps: int  # steps run in the phase
  images_per_s: float
  seconds_per_step: float
  wait_fraction: float


class Report(NamedTuple):
  settings: Settings
  splits: dict[str, int]  # examples per built split
  phases: list[PhaseRate]
  first: Window | None  # the compilation window; None when the time limit came first
  peak_bytes: int | None
  prepared: str  # what the preparation did, and how long it took
  seconds: float  # the trainer's whole call
  steps_run: int  # fewer than settings.steps when the time limit stopped the run
  attention: str  # the towers' attention as resolved on this machine: "xla" or "cudnn"


# ----------------------------------------------------------------------------------------------- settings


def load_config(dataset: str) -> ml_collections.ConfigDict:
  """configs/<dataset>.py (textures_zs3/tiny: configs/textures_zs3.py on that config of the dataset)."""
  base, _ = registry.parse_name(dataset)
  config = config_lib.load_config(str(CONFIGS / f"{base}.py"))
  config.dataset = dataset
  return config


def settings_from_flags(config: ml_collections.ConfigDict, f: dict[str, flags.FlagHolder]) -> Settings:
  default_clip = tiny_clip.RANDOM_TINY if config.clip.path == tiny_clip.RANDOM_TINY else "random-vit-b16"
  value = {name: holder.value for name, holder in f.items()}
  s = Settings(dataset=value["dataset"], steps=value["steps"], batch=value["batch"] or config.train.batch_size,
               image_size=value["image_size"] or config.clip.image_size, dtype=value["dtype"] or config.clip.dtype,
               workers=min(8, os.cpu_count() or 1) if value["workers"] is None else value["workers"],
               clip=value["clip"] or default_clip, images=value["images"],
               attention=value["attention"] or config.clip.get("attention", "xla"))
  if registry.is_synthetic(s.dataset) and s.image_size != config.clip.image_size:
    raise errors.ConfigError(f"--image_size={s.image_size}: {s.dataset} renders {config.clip.image_size}² scenes; "
                             f"leave --image_size out")
  if not registry.is_synthetic(s.dataset) and s.images < s.batch:
    raise errors.ConfigError(f"--images={s.images} is fewer than a batch (--batch={s.batch}); write at least a batch")
  return s


def log_window(steps: int, phase1_steps: int) -> int:
  """Steps per logged window: the largest divisor of both phases' lengths that leaves each phase at least 4
  windows (1 when none does), so that no window straddles the phases."""
  common = math.gcd(phase1_steps, steps - phase1_steps)
  shorter = min(phase1_steps, steps - phase1_steps)
  return max((d for d in range(1, common + 1) if common % d == 0 and shorter // d >= 4), default=1)


def run_config(config: ml_collections.ConfigDict, s: Settings, data_dir: pathlib.Path,
               clip_dir: pathlib.Path) -> ml_collections.ConfigDict:
  """The config at the benchmark's settings: both phases, no evaluation, one checkpoint at the end."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.data_dir = str(data_dir)
  config.clip.update(dict(path=str(clip_dir), image_size=s.image_size, dtype=s.dtype, attention=s.attention))
  if s.clip == tiny_clip.RANDOM_TINY:
    config.model.dfa_layers = TINY_DFA_LAYERS
  phase1 = int(round(PHASE1_FRACTION * s.steps))
  config.train.update(dict(
      steps=s.steps, batch_size=s.batch, num_workers=s.workers, phase1_fraction=PHASE1_FRACTION,
      live_fraction=max(config.train.live_fraction, PHASE1_FRACTION), log_every=log_window(s.steps, phase1),
      checkpoint_every=s.steps, eval_every=0))
  trainer.validate(config)
  return config


# ----------------------------------------------------------------------------------------------- data and CLIP


def scaled_spec(spec: DatasetSpec, size: int) -> DatasetSpec:
  """The dataset's pipeline at crop `size`: its train scale, evaluation stride and short side scaled alike."""
  r = size / spec.crop_size
  return dataclasses.replace(spec, crop_size=size, train_scale=tuple(max(1, round(x * r)) for x in spec.train_scale),
                             eval_stride=max(1, round(spec.eval_stride * r)),
                             eval_short_side=max(size, round(spec.eval_short_side * r)))


@contextlib.contextmanager
def crop_at(dataset: str, size: int) -> Iterator[None]:
  """Inside, the dataset's builder (and so its spec, which the pipeline crops by) has crop `size`."""
  builder = BUILDERS.get(registry.parse_name(dataset)[0])
  if builder is None or builder.SPEC.crop_size == size:  # textures_zs3 crops at its scenes' size
    yield
    return
  original = builder.SPEC
  builder.SPEC = scaled_spec(original, size)
  try:
    yield
  finally:
    builder.SPEC = original


def context_layout(root: pathlib.Path) -> pathlib.Path:
  """VOC's generated layout under `root` rearranged, in place, into Pascal Context's (VOC2010/, labels in
  SegmentationClassContext/, ImageSets/SegmentationContext/): VOC's values (0 background, 1..20, 255) are valid
  Context labels. Returns `root`."""
  devkit = root / "VOCdevkit"
  voc = (devkit / "VOC2012").rename(devkit / "VOC2010")
  labels = voc / "SegmentationClassContext"
  labels.mkdir()
  for folder in ("SegmentationClass", "SegmentationClassAug"):
    for png in (voc / folder).glob("*.png"):
      png.rename(labels / png.name)
  lists, context = voc / "ImageSets" / "Segmentation", voc / "ImageSets" / "SegmentationContext"
  context.mkdir()
  (context / "train.txt").write_text((lists / "train.txt").read_text() + (lists / "aug.txt").read_text())
  (context / "val.txt").write_text((lists / "val.txt").read_text())
  return root


def prepare_data(s: Settings, root: pathlib.Path) -> tuple[registry.Dataset, str]:
  """The dataset built under root/tfds (from --images generated train examples and a quarter as many validation
  ones, or rendered by itself), and what was done."""
  base, _ = registry.parse_name(s.dataset)
  start = time.perf_counter()
  if registry.is_synthetic(s.dataset):
    dataset = build.build(s.dataset, root / "tfds")
    return dataset, f"{s.dataset} rendered and built in {time.perf_counter() - start:.1f} s"
  context = base == "pascal_context59_zs3"
  manual = make_benchmark_data.write_layout("voc12_zs3" if context else base, root / "manual", s.images)
  if context:
    context_layout(manual)
  written = time.perf_counter() - start
  start = time.perf_counter()
  dataset = build.build(s.dataset, root / "tfds", str(manual), allow_partial=True)
  return dataset, (f"layout written in {written:.1f} s ({make_benchmark_data.jpeg_summary(manual)}"
                   f"{'; VOC photos and labels in Context layout' if context else ''}), built (a partial build) in "
                   f"{time.perf_counter() - start:.1f} s")


def random_clip(kind: str, directory: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """A random CLIP checkpoint with ViT-B/16's shapes (or the tiny CLIP that smoke runs use, `tiny_clip`) in
  transformers' format, with the byte-level tokenizer. ViT-B/16: layer norms at 1, biases at 0, CLIP's initial
  logit scale, every other weight N(0, 0.02²), drawn on the host (nothing is compiled)."""
  if kind == tiny_clip.RANDOM_TINY:
    return tiny_clip.make_random_clip(directory, seed)
  tokenizer = prompts.byte_level_tokenizer()
  config = vit_b16_config(224, eos_token_id=tokenizer.eos_token_id)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name in ("scale", "bias"):
      return np.full(leaf.shape, 1.0 if name == "scale" else 0.0, np.float32)
    if name == "logit_scale":
      return np.full(leaf.shape, np.log(1 / 0.07), np.float32)
    return 0.02 * rng.standard_normal(leaf.shape, np.float32)

  params = jax.tree_util.tree_map_with_path(draw, encoder_checkpoint.abstract_params(config))
  tokenizer.save_pretrained(directory)
  return encoder_checkpoint.save_pretrained(params, config, directory)


# ----------------------------------------------------------------------------------------------- measuring


def read_windows(metrics_path: pathlib.Path) -> list[Window]:
  """The trainer's logged windows, in order (rows without timing, e.g. evaluations, skipped); none when the run
  stopped before its first log."""
  windows, previous = [], 0
  for line in (metrics_path.read_text().splitlines() if metrics_path.exists() else []):
    row = json.loads(line)
    if "images_per_s" not in row:
      continue
    steps = row["step"] - previous
    previous = row["step"]
    windows.append(Window(int(row["phase"]), steps, row["seconds_per_step"] * steps, row["data_wait_fraction"]))
  return windows


def phase_rates(windows: list[Window], batch: int) -> list[PhaseRate]:
  """Per phase, over its windows less the run's first: images/s, seconds per step, and the share of the wall time
  spent waiting for input (NaN where a phase has no timed window)."""
  rates = []
  for phase in sorted({w.phase for w in windows}):
    timed = [w for w in windows[1:] if w.phase == phase]
    steps, seconds = sum(w.steps for w in timed), sum(w.seconds for w in timed)
    waited = sum(w.wait_fraction * w.seconds for w in timed)
    rates.append(PhaseRate(phase, steps, sum(w.steps for w in windows if w.phase == phase),
                           steps * batch / seconds if seconds else math.nan,
                           seconds / steps if steps else math.nan, waited / seconds if seconds else math.nan))
  return rates


def peak_device_bytes() -> int | None:
  """Peak bytes in use on the first device since the process started; None where the backend does not say."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except  (backends without memory statistics raise or return None)
    return None
  return (stats or {}).get("peak_bytes_in_use")


def stop_after(deadline: float | None) -> Callable[[int], None] | None:
  """The trainer's `on_step`: past `deadline` (perf_counter seconds), a SIGTERM to this process, which the trainer
  answers as a preemption: it saves after the current step and returns."""
  if deadline is None:
    return None

  def on_step(_):
    if time.perf_counter() > deadline:
      os.kill(os.getpid(), signal.SIGTERM)

  return on_step


def run(config: ml_collections.ConfigDict, s: Settings, root: pathlib.Path, deadline: float | None = None) -> Report:
  """Prepares the data and the CLIP under root, trains in root/run (stopping cleanly past `deadline`), and reads
  what the trainer logged. What the trainer prints goes to stderr: stdout is the table's."""
  with crop_at(s.dataset, s.image_size), contextlib.redirect_stdout(sys.stderr):
    print(f"benchmark_train: preparing {s.dataset} in {root}")
    dataset, prepared = prepare_data(s, root)
    if len(dataset.splits["train"]) < s.batch:
      raise errors.ConfigError(f"{s.dataset} has {len(dataset.splits['train'])} train examples, fewer than a batch "
                               f"(--batch={s.batch})")
    start = time.perf_counter()
    clip_dir = random_clip(s.clip, root / "clip")
    prepared += f"; CLIP ({s.clip}) written in {time.perf_counter() - start:.1f} s"
    start = time.perf_counter()
    run_cfg = run_config(config, s, root / "tfds", clip_dir)
    result = trainer.train_and_evaluate(run_cfg, root / "run", on_step=stop_after(deadline))
    seconds = time.perf_counter() - start
  windows = read_windows(root / "run" / "metrics.jsonl")
  return Report(s, {k: len(v) for k, v in dataset.splits.items()}, phase_rates(windows, s.batch),
                windows[0] if windows else None,
                peak_device_bytes(), prepared, seconds, result["step"], from_config.attention_for(run_cfg))


def format_report(r: Report) -> str:
  s, device = r.settings, jax.devices()[0]
  number = lambda x, spec: "n/a" if math.isnan(x) else format(x, spec)  # noqa: E731
  memory = "n/a" if r.peak_bytes is None else f"{r.peak_bytes / 2**30:.2f} GiB"
  stopped = (f" STOPPED at step {r.steps_run} of {s.steps} by --time_limit: the phases' rates cover the windows "
             f"logged by then." if r.steps_run < s.steps else "")
  lines = [f"Trainer end to end: {s.dataset} ({', '.join(f'{k} {v}' for k, v in r.splits.items())} examples), "
           f"batch {s.batch} × {s.image_size}², {s.dtype}, CLIP {s.clip}, {s.workers} grain workers, "
           f"{s.steps} steps, attention {s.attention} ({r.attention}); {device.device_kind} ({device.platform}), jax "
           f"{jax.__version__}.{stopped}", "",
           "| phase | steps timed (of the phase's) | images/s | s/step | waiting for input |",
           "|---|---|---|---|---|"]
  lines += [f"| {p.phase} | {p.steps} of {p.total_steps} | {number(p.images_per_s, ',.1f')} | "
            f"{number(p.seconds_per_step, '.4f')} | {number(100 * p.wait_fraction, '.1f')}% |" for p in r.phases]
  first = ("no window was logged before the time limit" if r.first is None else
           f"{r.first.steps} step{'s' * (r.first.steps > 1)} at {r.first.seconds / r.first.steps:.2f} s/step")
  lines += ["", f"First window (compilation, not timed): {first}. Peak device memory: {memory}. The trainer's call "
            f"took {r.seconds:.1f} s (opening the data, loading the CLIP, compiling, training, checkpointing).",
            f"Prepared: {r.prepared}."]
  return "\n".join(lines)


@contextlib.contextmanager
def work_directory(path: str | None) -> Iterator[pathlib.Path]:
  """--workdir (new or empty; kept), or a temporary directory deleted at the end."""
  if path is None:
    root = pathlib.Path(tempfile.mkdtemp(prefix="benchmark_train."))
    try:
      yield root
    finally:
      shutil.rmtree(root, ignore_errors=True)
    return
  root = pathlib.Path(path).expanduser()
  if root.exists() and (not root.is_dir() or any(root.iterdir())):
    raise errors.ConfigError(f"--workdir={path} exists and is not an empty directory (a run there would resume); "
                             f"give a new directory")
  root.mkdir(parents=True, exist_ok=True)
  yield root


def define_flags() -> dict[str, flags.FlagHolder]:
  """The command line's flags: defined only when this module is the program, as tests import it beside other
  tools whose flags share these names."""
  return dict(
      dataset=flags.DEFINE_enum("dataset", "voc12_zs3", DATASETS, "the dataset, and configs/<dataset>.py"),
      steps=flags.DEFINE_integer("steps", 80, "train steps, half in each phase", lower_bound=2),
      batch=flags.DEFINE_integer("batch", None, "images per step (default: the config's)", lower_bound=1),
      image_size=flags.DEFINE_integer("image_size", None, "input and crop size (default: the config's)",
                                      lower_bound=16),
      dtype=flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "compute dtype (default: the config's)"),
      workers=flags.DEFINE_integer("workers", None, "grain worker processes (default: min(8, CPU cores))",
                                   lower_bound=0),
      clip=flags.DEFINE_enum("clip", None, CLIPS, "the random CLIP (default: the config's: random-tiny for "
                             "textures_zs3, else ViT-B/16)"),
      images=flags.DEFINE_integer("images", 128, "train images written (validation: a quarter); not for "
                                  "textures_zs3", lower_bound=1),
      attention=flags.DEFINE_enum("attention", None, ["auto", "xla", "cudnn"], "the CLIP's attention "
                                  "(clip.attention; default: the config's)"),
      time_limit=flags.DEFINE_integer("time_limit", None, "seconds from the start after which training stops "
                                      "cleanly, as on preemption; the table covers the windows logged by then",
                                      lower_bound=1),
      workdir=flags.DEFINE_string("workdir", None, "a new or empty directory that keeps the data, CLIP and run "
                                  "(default: a temporary directory, deleted at the end)"))


def main(argv, f: dict[str, flags.FlagHolder]):
  del argv
  start = time.perf_counter()
  logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO, as in train.py
  config = load_config(f["dataset"].value)
  settings = settings_from_flags(config, f)
  limit = f["time_limit"].value
  with work_directory(f["workdir"].value) as root:
    report = run(config, settings, root, None if limit is None else start + limit)
  print(format_report(report))


if __name__ == "__main__":
  cli.run(functools.partial(main, f=define_flags()))
