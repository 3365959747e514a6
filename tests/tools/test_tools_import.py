"""The tool modules that tests and notebooks import go together in one process with any one of the programs that
define their flags at import (absl refuses a second --batch): those define their flags only when run."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Programs whose flags are still defined at import; each may be imported beside the modules below, not beside
# another of them.
PROGRAMS = ("benchmark", "benchmark_data", "benchmark_mpot", "clip_parity")


@pytest.mark.parametrize("program", PROGRAMS)
def test_the_tools_import_beside_a_program(program):
  modules = sorted(p.stem for p in (ROOT / "zegot_jax" / "tools").glob("*.py")
                   if p.stem not in ("__init__", *PROGRAMS))
  assert {"attention_parity", "benchmark_clip", "benchmark_train"} <= set(modules)
  code = "import importlib\n" + "".join(f"importlib.import_module('zegot_jax.tools.{m}')\n"
                                         for m in (program, *modules))
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                        check=False)
  assert done.returncode == 0, done.stderr[-3000:]
