"""Checkpoints of a training run: the orbax manager, the check that a checkpoint matches its config, and one
restore used by training (resume) and by inference (evaluation, prediction, pictures).

A checkpoint in <workdir>/checkpoints/<step>/ holds three items: `state` (the train state as a dict: step,
params, opt_state, teacher, teacher_text), `data` (the input iterator's state) and `meta` (the checked config
entries, the class list, the encoder's path and family, the data's fingerprint and data_dir, and the parameters' health: max |θ|
now and at the start). orbax writes each checkpoint to a temporary directory and renames it when it
is complete, so a crash or a kill during a save never damages an earlier checkpoint. Training never saves a
non-finite state (trainer.py), and holds a `WorkdirLock` so that two trainers never share a workdir.

Reading a run (`load_run`, `read_run_config`) never creates anything in its workdir.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import shutil
import socket
import sys
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from zegot_jax import errors, from_config, train_config
from zegot_jax.errors import ConfigError, DamagedFileError, MissingFileError, UserError
from zegot_jax.models import encoders, zegot
from zegot_jax.train_config import TrainConfig

# Config entries that may change between a run and its resumption without changing what it computes (each is
# tested to resume bit for bit). Not train.num_workers: grain's iterator state differs with and without worker
# processes, so a run resumes with the worker count it was saved with. clip.attention picks who computes the same
# attention (XLA or cuDNN): a change changes the rounding at most, and nothing where it resolves as before.
# clip.family only checks what clip.path holds ("auto" reads it from the checkpoint; loading refuses a mismatch).
RESUMABLE_CHANGES = ("data_dir", "train.log_every", "train.checkpoint_every", "train.eval_every",
                     "train.eval_max_examples", "eval.batch_windows", "eval.pictures", "clip.attention", "clip.family")
# Entries that may also change when a run is restarted from an earlier checkpoint on purpose (--restart_from), e.g.
# with a lower learning rate after the run diverged.
RESTART_CHANGES = ("train.lr", "train.warmup_steps")
# What inference depends on: a checkpoint restored for inference must agree with the config on these (the setting
# changes the class list and the calibration; the dataset, the class list of the result).
INFERENCE_CHECKED = ("model.", "clip.", "setting", "dataset")


# Fields whose default changed after they existed (or whose default was never what runs before them did): what a
# checkpoint without them ran. Before 2026-12-02 the Sinkhorn was ott-jax's, differentiated through its iterations
# (the batched solver and implicit gradients became the defaults when `solver` came); before 2026-11-28, Q started
# random. Every other field's default is what the runs before it did (the rule for a new field).
BEHAVED_BEFORE = {"model.sinkhorn.solver": "ott", "model.sinkhorn.gradient": "unrolled", "model.ga_init": "random"}


def defaults() -> dict:
  """Today's default of every model and training field (`ZegOTConfig`, `TrainConfig`), flattened as
  `checked_config` flattens ("model.sinkhorn.epsilon", tuples as lists): what a config that leaves a field out
  gets."""
  return {**train_config.defaults(zegot.ZegOTConfig, "model"), **train_config.defaults(TrainConfig, "train")}


def behaved_before() -> dict:
  """What a checkpoint or config.json written before a field existed ran with: its default, except BEHAVED_BEFORE."""
  return {**defaults(), **BEHAVED_BEFORE}


def checked_config(config: ml_collections.ConfigDict) -> dict:
  """The config entries a checkpoint must agree with (everything but RESUMABLE_CHANGES), flattened."""
  flat = {}

  def walk(prefix, node):
    for k, v in node.items():
      key = f"{prefix}{k}"
      if isinstance(v, ml_collections.ConfigDict):
        walk(key + ".", v)
      elif key not in RESUMABLE_CHANGES:
        flat[key] = list(v) if isinstance(v, tuple) else v
  walk("", config)
  return flat


def check_matches(saved: dict, config: ml_collections.ConfigDict, where: str,
                  prefixes: tuple[str, ...] = ("",), allowed: tuple[str, ...] = ()) -> None:
  """Raises with every differing entry (among those starting with one of `prefixes`, except `allowed`)."""
  current = checked_config(config)
  saved = {**{k: v for k, v in behaved_before().items() if k in current}, **saved}  # an older checkpoint's
  current = {**{k: v for k, v in defaults().items() if k in saved}, **current}  # a config leaving fields out
  keys = [k for k in sorted(set(saved) | set(current)) if k.startswith(prefixes) and k not in allowed]
  diffs = [f"{k}: checkpoint has {saved.get(k)!r}, config has {current.get(k)!r}"
           for k in keys if saved.get(k) != current.get(k)]
  if diffs:
    raise ConfigError(f"the checkpoint in {where} does not match the config; these entries differ: "
                      + "; ".join(diffs) + ". Use another --workdir, or the config the checkpoint was trained with"
                      + (" (to restart from an earlier checkpoint with another learning rate: --restart_from=STEP)"
                         if any(d.startswith(RESTART_CHANGES) for d in diffs) else ""))


def manager(workdir: pathlib.Path, max_to_keep: int = 3, *, read_only: bool = False) -> ocp.CheckpointManager:
  """The run's checkpoint manager (synchronous saves). orbax refuses relative paths; `--workdir runs/demo` is one.
  `read_only`: for inference; the checkpoints directory must exist and nothing is created."""
  directory = (pathlib.Path(workdir) / "checkpoints").absolute()
  if read_only:
    _require_run(workdir)
  return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, enable_async_checkpointing=False))


def _require_run(workdir: pathlib.Path) -> None:
  directory = (pathlib.Path(workdir) / "checkpoints").absolute()
  if not directory.is_dir():
    raise MissingFileError(f"{directory} does not exist: --workdir {workdir} is not a training run's directory "
                           f"(or it has saved no checkpoint yet)")


def save(mngr: ocp.CheckpointManager, step: int, state: dict, data_state: Any, meta: dict) -> None:
  """Saves checkpoint `step`; a failed write (a full disk, as an OSError or as tensorstore's ValueError) is one
  error naming the checkpoints still intact."""
  intact = [s for s in _step_dirs(pathlib.Path(mngr.directory)) if s != step]
  advice = (f"the checkpoints saved before it are intact: {intact or 'none'}. Free space (or fix the directory), then "
            f"rerun the same command: it resumes from {intact[-1] if intact else 'the start'}")
  with errors.storage(f"could not save checkpoint {step} in {mngr.directory}", advice):
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)),
              force=True)


def _step_dirs(directory: pathlib.Path) -> list[int]:
  """The finished checkpoints' steps in a checkpoints directory (orbax's temporary ones excluded), sorted."""
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def abandon_after(workdir: pathlib.Path, step: int) -> list[int]:
  """Moves the checkpoints later than `step` to <workdir>/abandoned/<time>/ (kept, not deleted), so a restart
  from `step` continues from it; returns their steps. Call before opening the manager."""
  directory = pathlib.Path(workdir) / "checkpoints"
  steps = _step_dirs(directory)
  if step not in steps:
    raise MissingFileError(f"--restart_from={step}: {directory} has no checkpoint {step} (it has {steps})")
  later = [s for s in steps if s > step]
  if later:
    target = pathlib.Path(workdir) / "abandoned" / time.strftime("%Y%m%d-%H%M%S")
    target.mkdir(parents=True, exist_ok=True)
    for s in later:
      shutil.move(str(directory / str(s)), str(target / str(s)))
  return later


class WorkdirLock:
  """An exclusive lock on a workdir (<workdir>/.lock, flock), held while a trainer runs there; released when the
  process ends, even by SIGKILL. A second trainer in the same workdir fails naming the holder."""

  def __init__(self, workdir: pathlib.Path):
    self.path = pathlib.Path(workdir) / ".lock"
    self.file = None

  def __enter__(self) -> "WorkdirLock":
    with errors.storage(f"--workdir={self.path.parent}: cannot write the run's lock file"):
      self.file = open(self.path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      self.file.seek(0)
      holder = self.file.read().strip() or "another process"
      self.file.close()
      raise UserError(f"{self.path.parent} is in use by another trainer ({holder}); wait for it to finish, stop it, "
                      f"or use another --workdir") from None
    self.file.seek(0)
    self.file.truncate()
    self.file.write(f"pid {os.getpid()} on host {socket.gethostname()}")
    self.file.flush()
    return self

  def __exit__(self, *exc) -> None:
    self.file.seek(0)
    self.file.truncate()
    fcntl.flock(self.file, fcntl.LOCK_UN)
    self.file.close()


def restore(mngr: ocp.CheckpointManager, step: int, target: Any, *, config: ml_collections.ConfigDict, where: str,
            check: tuple[str, ...] = ("",), partial: bool = False, data: bool = False,
            allowed: tuple[str, ...] = (), data_fingerprint: dict | None = None,
            encoder: str | None = None) -> tuple[Any, Any]:
  """(state, data state or None) of checkpoint `step`, after checking its config entries that start with one of
  `check` against `config` (and, given `data_fingerprint`, that it was trained on that build of the data).
  `target`: the abstract state (jax.ShapeDtypeStruct leaves with their shardings);
  `partial`: `target` is a part of the saved state (e.g. {"params": ...} for inference); `data`: also restore
  the input iterator's state; `allowed`: entries that may differ (RESTART_CHANGES on an explicit restart);
  `encoder`: the family of the frozen encoder loaded beside it (see `check_same_encoder`). A checkpoint that
  cannot be read is a DamagedFileError naming the others."""
  meta = read_meta(mngr, step, training=data)
  check_matches(meta["config"], config, where, prefixes=check, allowed=allowed)
  if encoder is not None:
    check_same_encoder(meta, encoder, config, where)
  if data_fingerprint is not None:
    check_same_data(meta, data_fingerprint, config, where)
  if partial:
    state_args = ocp.args.PyTreeRestore(item=target, partial_restore=True, restore_args=jax.tree_util.tree_map(
        lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), target))
  else:
    state_args = ocp.args.StandardRestore(target)
  args = dict(state=state_args, **(dict(data=ocp.args.JsonRestore()) if data else {}))
  _quiet_closed_event_loops()
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(**args))
  except Exception as e:  # pylint: disable=broad-except
    raise _damaged(mngr, step, e, training=data) from e
  return restored["state"], restored["data"] if data else None


def _quiet_closed_event_loops() -> None:
  """When a restore fails, tensorstore's reads still in flight call back into orbax's event loop after it closed;
  each callback's RuntimeError('Event loop is closed') would print a traceback (as an unraisable exception) around
  the one error line. Those, and only those, are dropped; every other unraisable exception goes on as before."""
  previous = sys.unraisablehook
  if getattr(previous, "quiet_closed_loops", False):
    return

  def hook(unraisable: Any) -> None:
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      previous(unraisable)

  hook.quiet_closed_loops = True  # type: ignore[attr-defined]
  sys.unraisablehook = hook


def read_meta(mngr: ocp.CheckpointManager, step: int, training: bool = True) -> dict:
  """The `meta` item of checkpoint `step` (config entries, classes, CLIP path, data fingerprint, health);
  `training` picks the advice of a damaged one (--restart_from, else --step)."""
  _quiet_closed_event_loops()
  try:
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
      raise ValueError("its meta item holds no config entries (edited by hand?)")
    return meta
  except Exception as e:  # pylint: disable=broad-except  (orbax raises many types for damaged files)
    raise _damaged(mngr, step, e, training) from e


def check_same_encoder(meta: dict, family: str, config: ml_collections.ConfigDict, where: str) -> None:
  """ConfigError when the checkpoint was trained beside another encoder family than the one loaded now. clip.family
  may change between runs (RESUMABLE_CHANGES: "auto" and the family it reads are the same run), but with
  clip.path=random-tiny each family is another encoder, which could have the same shapes: this is what tells
  them apart. A checkpoint written before the family was kept was trained beside a CLIP (the only family then)."""
  saved = meta.get("encoder_family", "clip")
  if saved != family:
    raise ConfigError(f"the checkpoint in {where} was trained beside a {saved} encoder, but "
                      f"clip.family={config.clip.get('family', 'auto')} loads a {family} one from "
                      f"clip.path={config.clip.path}; set --config.clip.family={saved} (or auto), or use another "
                      f"--workdir")


def check_same_data(meta: dict, fingerprint: dict, config: ml_collections.ConfigDict, where: str) -> None:
  """ConfigError when the checkpoint was trained on another build of the dataset than `fingerprint`'s (a
  checkpoint written before fingerprints were kept is not checked)."""
  saved = meta.get("data")
  if saved is None or saved == fingerprint:
    return
  raise ConfigError(
      f"the run in {where} was trained on another build of {config.dataset}: its {saved['split']} split had "
      f"{saved['examples']} records (fingerprint {saved['sha256'][:12]}, in {meta.get('data_dir', '?')}); the one "
      f"in data_dir={config.data_dir} has {fingerprint['examples']} (fingerprint {fingerprint['sha256'][:12]}). "
      f"Resume on the data it started on (--config.data_dir=...), or start a new run in another --workdir")


# A checkpoint is offered as a restart point when its parameters are at most this many times as large (max |θ|) as
# at initialization: a run that diverges leaves finite but blown-up parameters from which no learning rate recovers
# (the smoke run: 2.04 at the start and after 3 steps at lr 2e-4; 7.8e29 after one more step at lr 1e30).
HEALTHY_GROWTH = 1000.0


def health(meta: dict) -> tuple[bool | None, str]:
  """(healthy, how): whether a checkpoint's parameters stayed within HEALTHY_GROWTH of their initial size (None:
  not recorded, a checkpoint older than the record), and the numbers."""
  record = meta.get("health") or {}
  now, start = record.get("params_max_abs"), record.get("initial_params_max_abs")
  if now is None or not start:
    return None, "health not recorded"
  return now <= HEALTHY_GROWTH * start, f"max |θ| {now:.3g}, {now / start:.3g}× its start"


def restart_advice(mngr: ocp.CheckpointManager, before: int | None = None) -> str:
  """Which checkpoint to restart from, newest first, skipping those whose parameters blew up (`health`)."""
  steps = [s for s in reversed(mngr.all_steps()) if before is None or s < before]
  skipped = []
  for step in steps:
    healthy, how = health(read_meta(mngr, step))
    if healthy is False:
      skipped.append(f"{step} ({how})")
      continue
    note = f"; skipped, finite but blown up: {', '.join(skipped)}" if skipped else ""
    return (f"restart from checkpoint {step} ({how}) with a lower learning rate: --restart_from={step} "
            f"--config.train.lr=...{note}")
  if skipped:
    return (f"every checkpoint is finite but blown up ({', '.join(skipped)}; healthy is at most {HEALTHY_GROWTH:g}× "
            f"the initial size): start again in a new --workdir with a lower --config.train.lr")
  return "no checkpoint was saved before; lower train.lr (--config.train.lr=...) or check the data, and start again"


def _damaged(mngr: ocp.CheckpointManager, step: int, error: Exception, training: bool = True) -> DamagedFileError:
  others = [s for s in reversed(_step_dirs(pathlib.Path(mngr.directory))) if s != step]
  first_line = (str(error).strip().splitlines() or [""])[0][:200]
  if not others:
    hint = "there is no other checkpoint"
  elif training:
    hint = (f"the other checkpoints, newest first: {others}; resume from one of them with --restart_from={others[0]} "
            f"(later ones are moved to abandoned/, not deleted)")
  else:
    hint = f"the other checkpoints, newest first: {others}; use one of them with --step={others[0]}"
  return DamagedFileError(f"checkpoint {step} in {mngr.directory} cannot be read ({type(error).__name__}: "
                          f"{first_line}); {hint}")


def existing_step(mngr: ocp.CheckpointManager, workdir: pathlib.Path, step: int | None = None) -> int:
  """`step`, or the latest one when None; FileNotFoundError naming the available steps when there is none."""
  chosen = mngr.latest_step() if step is None else step
  if chosen is None or chosen not in mngr.all_steps():
    raise MissingFileError(f"no checkpoint{'' if step is None else f' at step {step}'} in {workdir}/checkpoints "
                            f"(available: {list(mngr.all_steps())})")
  return chosen


def restore_trainable(workdir: pathlib.Path, config: ml_collections.ConfigDict, model: zegot.ZegOT,
                      mesh: jax.sharding.Mesh, step: int | None = None) -> tuple[Any, int]:
  """Trainable params of a checkpoint (latest or `step`), replicated over `mesh`, after checking that the
  checkpoint matches the config's model and CLIP."""
  replicated = NamedSharding(mesh, P())
  abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                                    zegot.abstract_trainable(model))
  mngr = manager(workdir, read_only=True)
  step = existing_step(mngr, workdir, step)
  state, _ = restore(mngr, step, dict(params=abstract), config=config, where=str(workdir),
                     check=INFERENCE_CHECKED, partial=True, encoder=encoders.family_of(model.clip_config).name)
  return state["params"], step


def read_run_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """The config a run was trained with (<workdir>/config.json, written by training)."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    raise MissingFileError(f"{path} does not exist: --workdir must be a training run's directory "
                           f"(or pass --config)")
  try:
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DamagedFileError(f"{path} is damaged ({e}); pass the run's config file with --config instead") from e
  for key, value in behaved_before().items():  # a run older than a field ran as it did then
    *path, field = key.split(".")
    node = config
    for part in path:
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if isinstance(node, ml_collections.ConfigDict) and field not in node:
      node[field] = tuple(value) if isinstance(value, list) else value
  return config


class TrainedRun(NamedTuple):
  """A trained run restored for inference: what evaluation, prediction and pictures need."""

  model: zegot.ZegOT
  params: Any  # the full tree (trainable + "clip"), on `mesh`
  tokenizer: Any
  mesh: jax.sharding.Mesh
  step: int


def load_run(workdir: str | pathlib.Path, config: ml_collections.ConfigDict, step: int | None = None, *,
             untrained_seed: int | None = None) -> TrainedRun:
  """The frozen CLIP and the trainable params of a checkpoint (latest or `step`) of the run in `workdir`; with
  `untrained_seed`, freshly initialized trainable params instead (for baselines that train nothing; step 0)."""
  workdir = pathlib.Path(workdir).expanduser()
  if untrained_seed is None:
    _require_run(workdir)  # before anything is read from it
  run = from_config.build_run(config, workdir, create=untrained_seed is not None)  # as training builds it
  if untrained_seed is None:
    trainable, step = restore_trainable(workdir, config, run.model, run.mesh, step)
  else:
    trainable, step = zegot.init_trainable(run.model, jax.random.key(untrained_seed)), 0
  params = zegot.merge_params(trainable, from_config.shard_clip_params(run.clip.params, run.mesh, config))
  return TrainedRun(run.model, params, run.tokenizer, run.mesh, step)
