"""Faults a real cluster produces, in training: a diverging run, two trainers in one workdir, a damaged
checkpoint, a full disk, a metrics file cut by a crash, changed resumable entries, SIGKILL at random points.
Nothing saved is ever lost or non-finite, and every resume continues exactly."""

import errno
import json
import multiprocessing
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from tests.test_train import _checkpoint, _metrics, _runlocal
from zegot_jax import checkpoints, errors, prediction, trainer
from zegot_jax.data import build, registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
  """The reference: 6 steps without a stop, checkpoints every 3 steps."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  trainer.train_and_evaluate(_runlocal(data_dir, steps=6, checkpoint_every=3), workdir)
  return workdir


def _assert_same_state(workdir_a, workdir_b, step=6):
  a, b = _checkpoint(workdir_a, step), _checkpoint(workdir_b, step)
  leaves_a, leaves_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [k for k, _ in leaves_a] == [k for k, _ in leaves_b] and len(leaves_a) > 10
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def _meta(workdir, step):
  return checkpoints.read_meta(checkpoints.manager(workdir, read_only=True), step)


def _stop_at(step):
  def on_step(done):
    if done == step:
      os.kill(os.getpid(), signal.SIGTERM)
  return on_step


def _finite(workdir, step):
  return all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(_checkpoint(workdir, step))
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def test_a_diverging_run_never_saves_a_non_finite_state_and_restarts_with_a_lower_lr(data_dir, uninterrupted,
                                                                                      tmp_path):
  config = _runlocal(data_dir, steps=6, checkpoint_every=3)
  trainer.train_and_evaluate(config, tmp_path, on_step=_stop_at(3))
  # A learning rate so large that the state overflows within two steps (blown up but finite, then not finite);
  # logged too rarely to see the loss first, and checkpointed at every step: the first non-finite state reaches a
  # save, not a log.
  diverging = _runlocal(data_dir, steps=6, checkpoint_every=1, log_every=100)
  diverging.train.lr = 1e30
  with pytest.raises(errors.ConfigError, match=r"train\.lr.*--restart_from"):  # no silent change of the lr
    trainer.train_and_evaluate(diverging, tmp_path)
  with pytest.raises(errors.DivergedError, match=r"not finite at step (\d)") as e:
    trainer.train_and_evaluate(diverging, tmp_path, restart_from=3)
  saved = checkpoints.manager(tmp_path, read_only=True).all_steps()
  assert all(_finite(tmp_path, s) for s in saved)  # nothing non-finite was written
  # Finite is not healthy: checkpoints after 3 hold parameters blown up by the learning rate; the advice skips
  # them, so that following it can work.
  blown = [s for s in saved if s > 3]
  assert blown and all(checkpoints.health(_meta(tmp_path, s))[0] is False for s in blown)
  assert checkpoints.health(_meta(tmp_path, 3))[0] is True
  assert "restart from checkpoint 3 (max |θ| " in str(e.value) and "--restart_from=3 " in str(e.value)
  assert f"skipped, finite but blown up: {blown[-1]} (max |θ| " in str(e.value)

  # Restarting from the step-3 checkpoint with the original learning rate continues exactly as if never stopped.
  trainer.train_and_evaluate(config, tmp_path, restart_from=3)
  _assert_same_state(uninterrupted, tmp_path)
  assert _metrics(uninterrupted) == _metrics(tmp_path)
  assert {p.name for p in (tmp_path / "abandoned").glob("*/*")} == {str(s) for s in saved if s > 3}  # kept


def test_a_damaged_latest_checkpoint_is_named_and_an_earlier_one_resumes_when_asked(data_dir, uninterrupted,
                                                                                    tmp_path):
  config = _runlocal(data_dir, steps=6, checkpoint_every=2)
  trainer.train_and_evaluate(config, tmp_path, on_step=_stop_at(5))  # checkpoints 2, 4 and 5 (SIGTERM)
  for f in (tmp_path / "checkpoints" / "5" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])  # truncated files, as a crashed copy leaves
  with pytest.raises(errors.DamagedFileError, match=r"checkpoint 5 .* cannot be read.*newest first: \[4, 2\].*"
                                                    r"--restart_from=4"):
    trainer.train_and_evaluate(config, tmp_path)
  trainer.train_and_evaluate(config, tmp_path, restart_from=4)
  _assert_same_state(uninterrupted, tmp_path)
  assert _metrics(uninterrupted) == _metrics(tmp_path)


def test_a_full_disk_during_a_save_names_the_intact_checkpoints(data_dir, tmp_path, monkeypatch):
  """Injected as tensorstore reports it (the resume after it: the real full disk below)."""
  config = _runlocal(data_dir, steps=6, checkpoint_every=3)
  save = ocp.CheckpointManager.save

  def full_at_6(self, step, *args, **kwargs):
    if step == 6:  # as tensorstore (under orbax) reports it: a ValueError, not an OSError
      raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "/x/d/1f2e": Failed to write: No space left on '
                       'device [OS error 28: No space left on device]')
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_at_6)
  with pytest.raises(errors.StorageError, match=r"could not save checkpoint 6 .*No space left on device.*intact: \[3\].*"
                                             r"resumes from 3"):
    trainer.train_and_evaluate(config, tmp_path)
  assert checkpoints.manager(tmp_path, read_only=True).all_steps() == [3]


@pytest.fixture
def small_disk(tmp_path):
  """A 64 MB tmpfs (mounting needs root's CAP_SYS_ADMIN: skipped where it is not granted), unmounted after."""
  mount = tmp_path / "disk"
  mount.mkdir()
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True,
                        text=True, check=False)
  if done.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
  try:
    yield mount
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory):
  """Writes a file into `directory` until its disk is full."""
  with (directory / "filler").open("wb") as f:
    try:
      while True:
        f.write(b"\0" * 2**20)
        f.flush()
    except OSError as e:
      assert e.errno == errno.ENOSPC


def test_a_really_full_disk_during_a_save_is_one_line_and_resumes_exactly(data_dir, uninterrupted, small_disk):
  """The workdir on a real small disk, filled before the save at step 6: the storage layer's own error becomes the
  one line; after freeing space the same command resumes from 3 and continues exactly."""
  workdir = small_disk / "run"
  config = _runlocal(data_dir, steps=6, checkpoint_every=3)

  def fill_at_6(done):
    if done == 6:
      _fill(small_disk)

  with pytest.raises(errors.StorageError, match=r"could not save checkpoint 6 .*No space left on device; the "
                                                r"checkpoints saved before it are intact: \[3\].*resumes from 3"):
    trainer.train_and_evaluate(config, workdir, on_step=fill_at_6)
  (small_disk / "filler").unlink()
  trainer.train_and_evaluate(config, workdir)
  _assert_same_state(uninterrupted, workdir)
  assert _metrics(uninterrupted) == _metrics(workdir)


def test_a_metrics_line_cut_by_a_crash_is_dropped_on_resume(data_dir, uninterrupted, tmp_path):
  config = _runlocal(data_dir, steps=6, checkpoint_every=3)
  trainer.train_and_evaluate(config, tmp_path, on_step=_stop_at(3))
  with (tmp_path / "metrics.jsonl").open("a") as f:
    f.write('{"step": 4, "loss": 1.2')  # the crash came mid-write
  trainer.train_and_evaluate(config, tmp_path)
  assert _metrics(uninterrupted) == _metrics(tmp_path)  # every row once, all readable


def test_every_resumable_entry_really_resumes(data_dir, uninterrupted, tmp_path, tmp_path_factory):
  """All of RESUMABLE_CHANGES changed at once between the stop and the resume: accepted, and the same run."""
  trainer.train_and_evaluate(_runlocal(data_dir, steps=6, checkpoint_every=3), tmp_path, on_step=_stop_at(2))
  other_data = tmp_path_factory.mktemp("tfds_elsewhere")
  build.build("textures_zs3/tiny", other_data)
  changed = _runlocal(other_data, steps=6, checkpoint_every=3)
  changes = {"data_dir": str(other_data), "train.log_every": 2, "train.checkpoint_every": 3,
             "train.eval_every": 0, "train.eval_max_examples": 3, "eval.batch_windows": 1, "eval.pictures": 0,
             "clip.attention": "xla",  # auto resolves to xla on a CPU: the same computation
             "clip.family": "clip"}  # auto reads clip from the checkpoint: the same encoder
  assert set(changes) == set(checkpoints.RESUMABLE_CHANGES)
  for key, value in changes.items():
    section, _, field = key.rpartition(".")
    (changed[section] if section else changed)[field] = value
  trainer.train_and_evaluate(changed, tmp_path)
  _assert_same_state(uninterrupted, tmp_path)


def test_a_changed_worker_count_is_refused_not_resumed_wrongly(data_dir, tmp_path):
  """grain's iterator state depends on the worker processes: resuming with another count is refused by name."""
  trainer.train_and_evaluate(_runlocal(data_dir, steps=4, checkpoint_every=2), tmp_path, on_step=_stop_at(2))
  with pytest.raises(errors.ConfigError, match=r"train\.num_workers: checkpoint has 0, config has 1"):
    trainer.train_and_evaluate(_runlocal(data_dir, steps=4, checkpoint_every=2, num_workers=1), tmp_path)
  assert not multiprocessing.active_children()  # the refused run's input workers are gone, not left to exit


def test_a_run_closes_its_input_workers_and_checkpoint_manager(data_dir, tmp_path, monkeypatch):
  """Finished or failed, a run ends its grain worker processes and closes its orbax manager (its threads and
  metadata stores), rather than leaving them to the interpreter's exit."""
  closed = []
  real_manager = checkpoints.manager

  def manager(*args, **kwargs):
    mngr = real_manager(*args, **kwargs)
    real_close = mngr.close
    mngr.close = lambda: closed.append(mngr) or real_close()
    return mngr

  monkeypatch.setattr(checkpoints, "manager", manager)
  config = _runlocal(data_dir, steps=2, checkpoint_every=2, num_workers=1)
  trainer.train_and_evaluate(config, tmp_path / "a")
  assert len(closed) == 1 and not multiprocessing.active_children()
  with pytest.raises(errors.DivergedError):  # a failure inside the loop
    trainer.train_and_evaluate(config, tmp_path / "b", on_step=_raise_diverged)
  assert len(closed) == 2 and not multiprocessing.active_children()


def _raise_diverged(done):
  raise errors.DivergedError(f"stopped at step {done} by the test")


def _cli(*args, timeout=300):
  return subprocess.run([PYTHON, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_trainers_never_share_a_workdir(data_dir, tmp_path):
  args = ["zegot_jax.train", "--config", "configs/textures_zs3.py:runlocal=True", f"--config.data_dir={data_dir}",
          "--config.train.steps=100000", "--config.train.checkpoint_every=100000", "--workdir", str(tmp_path)]
  first = subprocess.Popen([PYTHON, "-m", *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while not ((tmp_path / ".lock").is_file() and (tmp_path / ".lock").read_text()) and time.time() < deadline:
      time.sleep(0.2)
    second = _cli(*args)
    assert second.returncode == 2, second.stderr[-2000:]
    assert second.stderr.strip() == (
        f"error: {tmp_path} is in use by another trainer (pid {first.pid} on host {os.uname().nodename}); wait for "
        f"it to finish, stop it, or use another --workdir")
    assert first.poll() is None  # the first one is untouched
  finally:
    first.kill()
    first.wait()
  # A killed holder leaves no lock behind: the next trainer takes the workdir (and stops itself after a step).
  done = _cli(*args[:-4], "--config.train.steps=1", "--workdir", str(tmp_path))
  assert "in use" not in done.stderr


KILL_TRIALS = int(os.environ.get("ZEGOT_KILL_TRIALS", "10" if os.environ.get("ZEGOT_SLOW") else "2"))


def _logged_step(workdir: pathlib.Path) -> int:
  try:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["step"] if lines else 0
  except (FileNotFoundError, json.JSONDecodeError, KeyError):
    return 0


@pytest.mark.slow
def test_sigkill_at_random_points_resumes_bit_identically(data_dir, tmp_path):
  """kill -9 at random moments while steps run and checkpoints are written (one every step, the oldest deleted),
  then the same command again, until the run finishes: the end state equals the uninterrupted run's, and every
  metrics row appears once. ZEGOT_KILL_TRIALS runs (2 by default, 10 under ZEGOT_SLOW), 2 kills each."""
  steps = 12
  args = ["zegot_jax.train", "--config", "configs/textures_zs3.py:runlocal=True", f"--config.data_dir={data_dir}",
          f"--config.train.steps={steps}", "--config.train.checkpoint_every=1", "--config.train.eval_every=0"]
  reference = _cli(*args, "--workdir", str(tmp_path / "reference"))
  assert reference.returncode == 0, reference.stderr[-2000:]
  rng = random.Random(0)
  for trial in range(KILL_TRIALS):
    workdir = tmp_path / f"killed{trial}"
    for _ in range(2):
      target = rng.randint(_logged_step(workdir) + 1, steps - 1)  # a step still to come
      process = subprocess.Popen([PYTHON, "-m", *args, "--workdir", str(workdir)], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
      deadline = time.time() + 300
      while _logged_step(workdir) < target and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
      time.sleep(rng.uniform(0.0, 0.3))  # somewhere in the next steps and saves
      process.send_signal(signal.SIGKILL)
      process.wait()
      if _logged_step(workdir) >= steps - 1:
        break
    finished = _cli(*args, "--workdir", str(workdir))
    assert finished.returncode == 0, finished.stderr[-2000:]
    _assert_same_state(tmp_path / "reference", workdir, steps)
    assert _metrics(workdir) == _metrics(tmp_path / "reference")  # every row once, the same numbers


def _records(n, seed=0):
  rng = np.random.default_rng(seed)
  return [dict(image=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), label=rng.integers(0, 4, (8, 8), dtype=np.uint8))
          for _ in range(n)]


def _fake_dataset(records, classes=("a", "b", "c", "d")):
  spec = types.SimpleNamespace(classes=list(classes), unseen=[3])
  return registry.Dataset(spec, {"train": records}, None)


def test_the_data_fingerprint_tells_builds_apart():
  records = _records(50)
  same = registry.fingerprint(_fake_dataset(records))
  assert registry.fingerprint(_fake_dataset([dict(r) for r in records])) == same  # a rebuild of the same files
  assert same["examples"] == 50
  changed = [dict(r) for r in records]
  changed[49] = dict(changed[49], image=changed[49]["image"].copy())
  changed[49]["image"][0, 0, 0] ^= 1  # one pixel of the last record
  others = [_records(50, seed=1), records[:49], changed, None]
  fingerprints = [registry.fingerprint(_fake_dataset(r)) for r in others[:3]]
  fingerprints.append(registry.fingerprint(_fake_dataset(records, classes=("a", "b", "c", "e"))))
  assert all(f != same for f in fingerprints) and len({f["sha256"] for f in fingerprints}) == 4


def test_a_resumed_run_on_another_build_of_the_data_is_refused(data_dir, uninterrupted, tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  saved = _meta(workdir, 6)["data"]
  assert saved["examples"] > 0 and len(saved["sha256"]) == 64
  other = dict(saved, examples=saved["examples"] - 1, sha256="f" * 64)
  monkeypatch.setattr(registry, "fingerprint", lambda dataset, **kwargs: other)
  with pytest.raises(errors.ConfigError, match=rf"the run in {workdir} was trained on another build of "
                                               rf"textures_zs3/tiny: its train split had {saved['examples']} records "
                                               rf"\(fingerprint {saved['sha256'][:12]}, in {data_dir}\); the one in "
                                               rf"data_dir={data_dir} has {other['examples']} \(fingerprint ffffffffffff\)"
                                               r"\. Resume on the data it started on"):
    trainer.train_and_evaluate(_runlocal(data_dir, steps=6, checkpoint_every=3), workdir)


@pytest.mark.parametrize("workdir,expected", [
    ("", "--workdir is empty; give a path, e.g. --workdir=runs/voc"),
    ("a_file", "--workdir=a_file is a file; give a folder for the run (it is created if missing)"),
])
def test_a_workdir_that_is_empty_or_a_file_is_refused_and_nothing_is_written(workdir, expected, data_dir, tmp_path,
                                                                            monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "a_file").write_text("mine")
  with pytest.raises(errors.ConfigError) as e:
    trainer.train_and_evaluate(_runlocal(data_dir), workdir)
  assert str(e.value) == expected
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"] and (tmp_path / "a_file").read_text() == "mine"


def test_inference_on_a_damaged_checkpoint_is_one_line_that_names_its_own_flag(data_dir, uninterrupted, tmp_path):
  """A checkpoint with its manifest deleted: evaluate prints one line (no tracebacks of the storage layer's threads
  after it) and points to the other checkpoint with --step, the flag it takes."""
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  for manifest in (workdir / "checkpoints" / "6").rglob("manifest.ocdbt"):
    manifest.unlink()
  done = subprocess.run([PYTHON, "-m", "zegot_jax.evaluate", "--config", "configs/textures_zs3.py:runlocal=True",
                         f"--config.data_dir={data_dir}", "--workdir", str(workdir)], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, check=False)
  # The whole of stderr is the one line: tensorstore's late callbacks into orbax's closed event loop (5-48
  # "Event loop is closed" tracebacks before) are dropped.
  assert done.returncode == 2, done.stderr[-3000:]
  assert re.fullmatch(rf"error: checkpoint 6 in {re.escape(str(workdir))}/checkpoints cannot be read \(.*\); the other "
                   r"checkpoints, newest first: \[3\]; use one of them with --step=3\n", done.stderr), done.stderr[-3000:]


@pytest.fixture
def read_only_copy(uninterrupted, tmp_path):
  """The uninterrupted run, copied and bind-mounted read-only (needs root's CAP_SYS_ADMIN: skipped elsewhere)."""
  copy, view = tmp_path / "copy", tmp_path / "read_only"
  shutil.copytree(uninterrupted, copy)
  view.mkdir()
  for command in (["mount", "--bind", str(copy), str(view)], ["mount", "-o", "remount,ro,bind", str(view)]):
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
      subprocess.run(["umount", "-l", str(view)], check=False)
      pytest.skip(f"cannot mount read-only here: {done.stderr.strip()}")
  try:
    yield view
  finally:
    subprocess.run(["umount", "-l", str(view)], check=False)


def test_a_run_on_a_read_only_disk_is_one_line_for_training_and_inference(data_dir, read_only_copy, tmp_path):
  before = sorted(p.name for p in read_only_copy.rglob("*"))
  with pytest.raises(errors.StorageError, match=rf"--workdir={read_only_copy}: cannot write the run's lock file: "
                                                r"Read-only file system; the file system is read-only"):
    trainer.train_and_evaluate(_runlocal(data_dir, steps=9, checkpoint_every=3), read_only_copy)
  with pytest.raises(errors.StorageError, match=rf"--workdir={read_only_copy / 'new'}: cannot create the run's "
                                                r"folder: Read-only file system"):
    trainer.train_and_evaluate(_runlocal(data_dir), read_only_copy / "new")
  image = tmp_path / "image.png"
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
  with pytest.raises(errors.StorageError, match=r"the output folder \(another one: --out\) .*/predictions/image-\w+: "
                                                rf"{read_only_copy} is not writable .*give a folder you can write to"):
    prediction.predict(read_only_copy, image, ["star", "ring"])
  assert prediction.predict(read_only_copy, image, ["star", "ring"], out=tmp_path / "out")["step"] == 6
  assert sorted(p.name for p in read_only_copy.rglob("*")) == before


def test_only_closed_event_loop_errors_are_dropped_from_unraisable_exceptions(monkeypatch):
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable.exc_value))
  checkpoints._quiet_closed_event_loops()
  checkpoints._quiet_closed_event_loops()  # a second restore does not wrap it twice
  others = [RuntimeError("Event loop is running"), ValueError("Event loop is closed"), OSError("disk")]
  for error in [RuntimeError("Event loop is closed"), *others]:
    sys.unraisablehook(types.SimpleNamespace(exc_value=error))
  assert seen == others
