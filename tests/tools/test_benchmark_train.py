"""benchmark_train end to end at a toy size (the real builder, the real trainer), its table checked against what
the trainer logged, and its parts alone."""

import json
import math
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from zegot_jax import errors
from zegot_jax.data import build, classes, registry
from zegot_jax.tools import benchmark_train, make_benchmark_data

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOY = ["--dataset", "voc12_zs3", "--images", "8", "--image_size", "64", "--batch", "2", "--steps", "6",
       "--clip", "random-tiny", "--dtype", "float32", "--workers", "0"]


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "zegot_jax.tools.benchmark_train", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("benchmark_train") / "work"
  result = _cli(*TOY, "--workdir", str(workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout, workdir


def _table(stdout: str) -> dict[int, list[str]]:
  """phase → the cells of its row."""
  rows = [line.strip("|").split("|") for line in stdout.splitlines() if re.match(r"\| \d \|", line)]
  return {int(cells[0]): [c.strip() for c in cells[1:]] for cells in rows}


def test_table_is_what_the_trainer_logged(toy_run):
  stdout, workdir = toy_run
  rows = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # one window per step: 3 steps per phase
  assert all(0 <= r["data_wait_fraction"] <= 1 for r in rows)
  table = _table(stdout)
  assert sorted(table) == [1, 2]
  for phase, cells in table.items():
    timed = [r for r in rows[1:] if r["phase"] == phase]  # the first window (compilation) left out
    assert cells[0] == f"{len(timed)} of 3"
    seconds = sum(r["seconds_per_step"] for r in timed)  # windows of one step each
    assert float(cells[1].replace(",", "")) == pytest.approx(2 * len(timed) / seconds, abs=0.051)
    waited = sum(r["data_wait_fraction"] * r["seconds_per_step"] for r in timed) / seconds
    assert float(cells[3].rstrip("%")) == pytest.approx(100 * waited, abs=0.051)
  assert "train 8, validation 2 examples" in stdout
  assert re.search(r"Peak device memory: (n/a|[\d.]+ GiB)", stdout)


def test_the_built_dataset_holds_the_images_written(toy_run):
  _, workdir = toy_run
  jpegs = sorted(p.stem for p in (workdir / "manual").rglob("*.jpg"))
  dataset = registry.load("voc12_zs3", workdir / "tfds")
  built = sorted(ex["image_id"].decode() for split in dataset.splits.values() for ex in split)
  assert len(jpegs) == 10 and built == jpegs
  assert (workdir / "run" / "checkpoints" / "6").is_dir()  # one checkpoint, at the end


def test_refuses_a_used_workdir(toy_run):
  _, workdir = toy_run
  result = _cli(*TOY, "--workdir", str(workdir))
  assert result.returncode == errors.EXIT_USER_ERROR
  assert result.stderr.strip().splitlines()[-1].startswith("error: --workdir=")


@pytest.mark.parametrize("steps, phase1, window", [(80, 40, 10), (6, 3, 1), (60, 30, 6), (7, 4, 1), (200, 100, 25)])
def test_windows_never_straddle_the_phases(steps, phase1, window):
  assert benchmark_train.log_window(steps, phase1) == window
  assert phase1 % window == 0 and (steps - phase1) % window == 0


def test_phase_rates_leave_out_the_first_window():
  windows = [benchmark_train.Window(1, 2, 50.0, 0.0), benchmark_train.Window(1, 2, 1.0, 0.5),
             benchmark_train.Window(2, 2, 2.0, 0.0), benchmark_train.Window(2, 2, 2.0, 0.25)]
  one, two = benchmark_train.phase_rates(windows, batch=4)
  assert (one.steps, one.total_steps, one.images_per_s, one.wait_fraction) == (2, 4, 8.0, 0.5)
  assert (two.steps, two.total_steps, two.images_per_s, two.seconds_per_step) == (4, 4, 4.0, 1.0)
  assert two.wait_fraction == pytest.approx(0.125)
  only_compile = benchmark_train.phase_rates(windows[:1], batch=4)[0]
  assert only_compile.steps == 0 and math.isnan(only_compile.images_per_s)


def test_a_toy_crop_scales_the_pipeline_and_is_undone():
  original = classes.VOC12
  with benchmark_train.crop_at("voc12_zs3", 64):
    spec = registry.ALL_BUILDERS["voc12_zs3"].SPEC
    assert (spec.crop_size, spec.train_scale, spec.classes) == (64, (256, 64), original.classes)
  assert registry.ALL_BUILDERS["voc12_zs3"].SPEC is original


def test_context_layout_builds_through_the_real_builder(tmp_path):
  manual = make_benchmark_data.write_layout("voc12_zs3", tmp_path / "manual", 3, validation_count=1)
  benchmark_train.context_layout(manual)
  dataset = build.build("pascal_context59_zs3", tmp_path / "tfds", str(manual), allow_partial=True)
  assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 3, "validation": 1}
  labels = np.concatenate([ex["label"].ravel() for ex in dataset.splits["train"]])
  assert set(np.unique(labels)) <= set(range(20)) | {classes.IGNORE_INDEX}  # VOC's 1..20 as Context's first 20


def test_random_vit_b16_has_the_real_shapes(tmp_path):
  from zegot_jax.models import encoder_checkpoint  # pylint: disable=import-outside-toplevel

  loaded = encoder_checkpoint.from_pretrained(benchmark_train.random_clip("random-vit-b16", tmp_path), image_size=512)
  v, t = loaded.config.vision, loaded.config.text
  assert (v.hidden_size, v.num_hidden_layers, v.patch_size, v.grid) == (768, 12, 16, (32, 32))
  assert (t.hidden_size, t.num_hidden_layers, loaded.config.projection_dim) == (512, 12, 512)
  qkv = loaded.params["vision_model"]["encoder"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
  assert qkv.shape == (768, 768) and 0.015 < qkv.std() < 0.025


def test_past_its_deadline_the_run_is_asked_to_stop_as_on_preemption():
  import signal  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel

  received = []
  previous = signal.signal(signal.SIGTERM, lambda *_: received.append(True))
  try:
    assert benchmark_train.stop_after(None) is None
    benchmark_train.stop_after(time.perf_counter() + 60)(1)
    assert not received
    benchmark_train.stop_after(time.perf_counter() - 1)(1)
    assert received == [True]
  finally:
    signal.signal(signal.SIGTERM, previous)
