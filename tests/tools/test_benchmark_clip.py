"""benchmark_clip: PyTorch on JAX's device, a torch.compile failure reported in its row, the ratios against the
targets, and the whole tool at a toy size (its outputs checked against PyTorch's)."""

import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from zegot_jax.tools import benchmark_clip

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_pytorch_runs_where_jax_runs():
  device, note = benchmark_clip.torch_device(torch)
  expected = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  assert device.type == expected and (note == "") == (jax.default_backend() != "gpu" or expected == "cuda")


class _Torch:
  """torch whose compile is `compile` (a real one takes minutes on a CPU)."""
  inference_mode = torch.inference_mode

  def __init__(self, compile_fn):
    self.compile = lambda fn, **_: compile_fn(fn)


def test_a_compile_failure_is_one_line_in_its_row():
  def broken(fn):
    def fails():
      raise RuntimeError("inductor: no C++ compiler\n  while compiling\n  graph 0")
    return fails

  call, failure = benchmark_clip.compiled_call(_Torch(broken), torch.device("cpu"), lambda: torch.ones(2))
  assert call is None and failure == "compile failed: RuntimeError: inductor: no C++ compiler while compiling graph 0"
  compiled = []
  call, failure = benchmark_clip.compiled_call(_Torch(lambda fn: compiled.append(fn) or fn), torch.device("cpu"),
                                               lambda: torch.ones(2) * 3)
  assert failure == "" and len(compiled) == 1 and call().tolist() == [3.0, 3.0]


def _row(name, size, items, side, seconds):
  item = benchmark_clip.Input(name, "bfloat16", items, size, 1e9, {}, None, None)
  return benchmark_clip.Row(item, side, seconds, 0.0)


def test_ratios_take_our_fastest_implementation_and_the_targets():
  rows = [_row("image 224", 224, 64, "ours, xla", 1.0), _row("image 224", 224, 64, "ours, cudnn", 0.5),
          _row("image 224", 224, 64, benchmark_clip.EAGER, 0.55),
          _row("image 512", 512, 16, "ours, xla", 1.0), _row("image 512", 512, 16, benchmark_clip.EAGER, 1.6),
          _row("text", None, 80, "ours, xla", 1.0), _row("text", None, 80, "ours, cudnn", None),
          _row("text", None, 80, benchmark_clip.EAGER, 0.5)]
  assert benchmark_clip.ratio_table(rows).splitlines()[2:] == [
      "| image 224 | bfloat16 | cudnn | 1.10× | ≥ 1.2×: not met |", "| image 512 | bfloat16 | xla | 1.60× | ≥ 1.5×: met |",
      "| text | bfloat16 | xla | 0.50× |  |"]
  compiled = _row("image 512", 512, 16, benchmark_clip.COMPILED, 0.8)
  assert benchmark_clip.format_compiled(compiled, rows + [compiled]).split(" | ")[2:5] == ["800.00", "20", "2.00×"]
  assert "0.80× (xla)" in benchmark_clip.format_compiled(compiled, rows + [compiled])


def test_toy_run_matches_pytorch_and_skips_what_cannot_run_here():
  result = subprocess.run(
      [sys.executable, "-m", "zegot_jax.tools.benchmark_clip", "--dtypes", "float32", "--images", "32x2",
       "--prompts", "3", "--repeats", "1", "--matmuls", "", "--torch_compile=false"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = {(cells[1], cells[3]): cells for cells in
          (line.split("|") for line in result.stdout.splitlines() if line.startswith("| image") or
           line.startswith("| text"))}
  for tower in ("image tower 32² × 2", "text tower 3 × 77 tokens"):
    ours = rows[f" {tower} ", " ours, xla "]
    assert float(ours[8]) < 1e-4  # float32: our tower computes what transformers' does
    assert rows[f" {tower} ", f" {benchmark_clip.EAGER} "][7].strip() == "1.00×"
    if jax.default_backend() != "gpu":
      assert rows[f" {tower} ", " ours, cudnn "][4].strip().startswith("skipped: it needs an NVIDIA GPU")
  ratio = re.compile(r"\| image tower 32² × 2 \| float32 \| xla \| [\d.]+× \|")
  ratios = [line for line in result.stdout.splitlines() if ratio.match(line)]
  assert len(ratios) == 1 and np.isfinite(float(ratios[0].split("|")[4].strip().rstrip("×")))
  assert benchmark_clip.COMPILED not in result.stdout


def test_bad_shapes_are_one_line_and_exit_2():
  result = subprocess.run([sys.executable, "-m", "zegot_jax.tools.benchmark_clip", "--images", "224"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "SIZExBATCH" in result.stderr


def test_an_implementation_failing_at_run_time_is_reported_and_the_others_timed():
  def refused():
    raise RuntimeError("cuDNN refused the fused attention\n  (shape)")

  item = benchmark_clip.Input("image tower 32² × 2", "bfloat16", 2, 32, 1e9,
                              {"xla": lambda: np.ones(4, np.float32), "cudnn": refused},
                              lambda: np.full(4, 1.01, np.float32), None)
  rows, reference = benchmark_clip.eager_rows(item, repeats=2)
  assert [r.side for r in rows] == ["ours, xla", "ours, cudnn", benchmark_clip.EAGER]
  assert rows[0].seconds > 0 and rows[0].difference == pytest.approx(0.01 / 1.01, rel=1e-5)
  assert rows[1].seconds is None and rows[1].note == "failed: RuntimeError: cuDNN refused the fused attention (shape)"
  np.testing.assert_allclose(reference, 1.01, rtol=1e-6)
