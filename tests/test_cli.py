"""What a user types: every mistake is one line `error: ...` and exit code 2, nothing silently ignored or changed;
evaluation checks the run it reads and records what its numbers depend on; the launch scripts pass every
argument through as given."""

import json
import os
import pathlib
import stat
import subprocess
import sys

import pytest

from tests.test_train import _runlocal
from zegot_jax import checkpoints, errors, trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYTHON = sys.executable
RUNLOCAL = "configs/textures_zs3.py:runlocal=True"


def _cli(*args, env=None, timeout=300):
  return subprocess.run([PYTHON, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, **(env or {})})


def _one_line_error(done) -> str:
  assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
  lines = [line for line in done.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
  return lines[0]


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  trainer.train_and_evaluate(_runlocal(data_dir, steps=2, checkpoint_every=2), workdir)
  return workdir


TRAIN_MISTAKES = [
    (["--config.train.stpes=3"], "error: --config.train.stpes: the config has no field 'stpes'; did you mean 'steps'?"),
    (["--config.trian.steps=3"], "error: --config.trian.steps: the config has no field 'trian'; did you mean 'train'?"),
    (["--config.train.steps=abc"], "error: flag --config.train.steps=abc: invalid literal for int() with base 10: 'abc'"),
    (["--config.train.steps=0"], "error: config train.steps=0: expected an integer >= 1"),
    (["--config.train.checkpoint_every=0"], "error: config train.checkpoint_every=0: expected an integer >= 1"),
    (["--config.model.num_prompts=0"], "error: config.model: ZegOTConfig: num_prompts=0 must be >= 1 and "
                                       "context_length=2 >= 0"),
    (["--config.dataset=textures_zs3/huge"], "error: dataset 'textures_zs3' has no config 'huge'; its configs are "
                                             "['default', 'tiny']"),
    (["run2"], "error: unexpected argument(s) 'run2': every option is a flag (--name=value); quote values that "
               "contain spaces"),
    (["--config.mesh.fsdp=3"], "error: config mesh.fsdp=3 does not divide the 1 device(s) here; set "
                               "--config.mesh.fsdp to one of [1]"),
]


@pytest.mark.parametrize("extra,expected", TRAIN_MISTAKES, ids=[m[1][7:40] for m in TRAIN_MISTAKES])
def test_train_mistakes_are_one_line(extra, expected, data_dir, tmp_path):
  workdir = tmp_path / "never_created"
  done = _cli("zegot_jax.train", "--config", RUNLOCAL, f"--config.data_dir={data_dir}", "--workdir", str(workdir),
              *extra)
  assert _one_line_error(done) == expected
  assert not workdir.exists()  # nothing trained anywhere, nothing created


@pytest.mark.parametrize("config,expected", [
    ("configs/nope.py", "error: config file configs/nope.py does not exist; give a config file's path, e.g. "
                        "--config=configs/voc12_zs3.py (run from the repository root)"),
    ("configs/textures_zs3.py:runlocal=yes", "error: --config=configs/textures_zs3.py:runlocal=yes: config argument "
                                             "runlocal='yes': expected True or False"),
    ("configs/textures_zs3.py:num_prompts=4", "error: --config=configs/textures_zs3.py:num_prompts=4: config "
                                              "argument 'num_prompts=4': expected key=value with key in ['encoder', "
                                              "'runlocal', 'setting']; set a single field with --config.<section>.num_prompts=..., "
                                              "e.g. --config.model.matching=none"),
])
def test_config_file_mistakes_are_one_line(config, expected, tmp_path):
  assert _one_line_error(_cli("zegot_jax.train", "--config", config, "--workdir", str(tmp_path / "w"))) == expected


@pytest.mark.parametrize("body,expected", [
    ("def get_config(arg=None):\n  config = 1\n", "get_config returned NoneType, expected an ml_collections.ConfigDict; "
                                                  "end get_config with `return config`"),
    ("x = 1\n", "defines no get_config(arg=None) function; a config file defines one that returns an "
                "ml_collections.ConfigDict (see configs/voc12_zs3.py)"),
    ("import not_a_module\n", "fails to load (ModuleNotFoundError: No module named 'not_a_module'); fix the file"),
], ids=["returns_none", "no_get_config", "missing_import"])
def test_a_config_file_that_gives_no_config_is_named(body, expected, tmp_path):
  path = tmp_path / "mine.py"
  path.write_text(body)
  for program in ("zegot_jax.train", "zegot_jax.evaluate"):
    done = _cli(program, "--config", str(path), "--workdir", str(tmp_path / "w"))
    assert _one_line_error(done) == f"error: config file {path}{':' if body.startswith('def') else ''} {expected}"


def test_show_traceback_shows_it(tmp_path):
  done = _cli("zegot_jax.train", "--config", RUNLOCAL, "--config.train.steps=0", "--workdir", str(tmp_path),
              "--show_traceback")
  assert done.returncode != 0 and "Traceback (most recent call last)" in done.stderr and "ConfigError" in done.stderr


@pytest.mark.slow
def test_a_single_field_overrides_a_variant(data_dir, tmp_path):
  """runlocal=True sets 2 prompts; --config.model.num_prompts=4 after it gives 4 (the trained context has 4)."""
  done = _cli("zegot_jax.train", "--config", RUNLOCAL, "--config.model.num_prompts=4", "--config.train.steps=1",
              "--config.train.eval_every=0", f"--config.data_dir={data_dir}", "--workdir", str(tmp_path))
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.loads((tmp_path / "config.json").read_text())["model"]["num_prompts"] == 4
  config = checkpoints.read_run_config(tmp_path)
  loaded = checkpoints.load_run(tmp_path, config)
  assert loaded.params["context"].shape[0] == 4  # (N, C, width)


def test_reading_a_run_creates_nothing_in_it(run, tmp_path):
  before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
  config = checkpoints.read_run_config(run)
  checkpoints.load_run(run, config)
  assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
  empty = tmp_path / "not_a_run"
  empty.mkdir()
  with pytest.raises(errors.MissingFileError, match="checkpoints does not exist"):
    checkpoints.load_run(empty, config)
  assert list(empty.iterdir()) == []  # no checkpoints/ or random_tiny_clip/ made in it


def test_evaluate_checks_the_setting_records_it_and_names_its_result(run, data_dir):
  wrong = _cli("zegot_jax.evaluate", "--config", "configs/textures_zs3.py:runlocal=True,setting=inductive",
               f"--config.data_dir={data_dir}", "--workdir", str(run))
  assert "setting: checkpoint has 'transductive', config has 'inductive'" in _one_line_error(wrong)
  done = _cli("zegot_jax.evaluate", "--config", RUNLOCAL, f"--config.data_dir={data_dir}", "--workdir", str(run),
              "--config.eval.seen_bias=0.1", "--max_examples=3")
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((run / "eval_textures_zs3_validation_transductive_2_bias0.1_first3.json").read_text())
  assert result["settings"] == dict(setting="transductive", seen_bias=0.1, max_examples=3, crop_size=64, stride=64,
                                    eval_short_side=64)
  assert (result["step"], result["dataset"], result["split"], result["examples"]) == (2, "textures_zs3", "validation", 3)


def test_evaluate_refuses_a_folder_as_its_output_before_evaluating(run, data_dir, tmp_path):
  done = _cli("zegot_jax.evaluate", "--config", RUNLOCAL, f"--config.data_dir={data_dir}", "--workdir", str(run),
              "--out", str(tmp_path))
  assert _one_line_error(done) == (f"error: --out={tmp_path} is a folder; give the result file's path, e.g. "
                                   f"--out={tmp_path / 'result.json'}")
  assert list(tmp_path.iterdir()) == []


def test_evaluate_refuses_an_unwritable_output_before_evaluating(run, data_dir, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  done = _cli("zegot_jax.evaluate", "--config", RUNLOCAL, f"--config.data_dir={data_dir}", "--workdir", str(run),
              "--out", str(blocker / "result.json"))
  assert _one_line_error(done).startswith(f"error: cannot write the result in {blocker} (")
  assert "eval textures_zs3" not in done.stderr  # refused before the evaluation started
  if os.geteuid() != 0:  # a read-only workdir (root writes anywhere, so only checked as a user)
    os.chmod(run, stat.S_IRUSR | stat.S_IXUSR)
    try:
      done = _cli("zegot_jax.evaluate", "--config", RUNLOCAL, f"--config.data_dir={data_dir}", "--workdir",
                  str(run))
      assert _one_line_error(done).startswith(f"error: cannot write the result in {run}")
    finally:
      os.chmod(run, stat.S_IRWXU)


def _launch_env(tmp_path, data_dir):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  # srun stand-in: drop srun's own options, run the task command as srun would (one task, SLURM_LOCALID=0).
  (bin_dir / "srun").write_text('#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
                                'SLURM_LOCALID=0 exec "$@"\n')
  (bin_dir / "srun").chmod(0o755)
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": PYTHON}


@pytest.mark.parametrize("script", ["local.sh", pytest.param("slurm.sbatch", marks=pytest.mark.slow)])
def test_launch_scripts_pass_a_workdir_with_spaces_through(script, data_dir, tmp_path):
  workdir = tmp_path / "my runs" / "a 'quoted' run"
  args = ["--config", RUNLOCAL, f"--config.data_dir={data_dir}", "--config.train.steps=1",
          "--config.train.eval_every=0", "--workdir", str(workdir)]
  command = ["bash", str(ROOT / "launch" / script), *(["1"] if script == "local.sh" else []), *args]
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, **_launch_env(tmp_path, data_dir)})
  assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
  assert (workdir / "checkpoints" / "1").is_dir()  # trained exactly there
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "my runs"]  # and nowhere else


def test_the_tpu_script_quotes_the_remote_command(tmp_path):
  """The command gcloud would run on every worker, run here by bash with stand-ins for git, pip and python3:
  python3 receives exactly the arguments given to the script."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("pip", "git"):
    (bin_dir / tool).write_text("#!/usr/bin/env bash\nexit 0\n")
  (bin_dir / "python3").write_text(f"#!{PYTHON}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
  (bin_dir / "gcloud").write_text('#!/usr/bin/env bash\nwhile [ "$1" != --command ]; do shift; done\n'
                                  'mkdir -p zegot_jax_repo && exec bash -c "$2"\n')
  for tool in bin_dir.iterdir():
    tool.chmod(0o755)
  args = ["--config", "configs/coco_stuff171_zs3.py", "--workdir", "/mnt/shared/my runs/it's here"]
  done = subprocess.run(["bash", str(ROOT / "launch" / "tpu_pod.sh"), *args], cwd=tmp_path, capture_output=True,
                        text=True, timeout=60, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                                                    "TPU_NAME": "t", "ZONE": "z", "REPO_URL": "/some repo"})
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout.splitlines()[-1]) == ["-m", "zegot_jax.train", *args]
