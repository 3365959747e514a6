"""Checkpoints of a training run: the orbax manager, the check that a checkpoint matches its config, and one
restore used by training (resume) and by inference (evaluation, prediction, pictures).

A checkpoint in <workdir>/checkpoints/<step>/ holds three items: `state` (the train state as a dict: step,
params, opt_state, teacher), `data` (the input iterator's state) and `meta` (the checked config entries,
the class list and the CLIP path). orbax writes each checkpoint to a temporary directory and renames it when it
is complete, so a crash or a kill during a save never damages an earlier checkpoint.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from zegot_jax import from_config
from zegot_jax.models import prompts, zegot

# Config entries that may change between a run and its resumption without changing what it computes.
RESUMABLE_CHANGES = ("data_dir", "train.log_every", "train.checkpoint_every", "train.eval_every",
                     "train.eval_max_examples", "train.num_workers", "eval.batch_windows", "eval.pictures")
# What the trainable params depend on: a checkpoint restored for inference must agree with the config on these.
INFERENCE_CHECKED = ("model.", "clip.")


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
                  prefixes: tuple[str, ...] = ("",)) -> None:
  """Raises with every differing entry (among those starting with one of `prefixes`)."""
  current = checked_config(config)
  keys = [k for k in sorted(set(saved) | set(current)) if k.startswith(prefixes)]
  diffs = [f"  {k}: checkpoint has {saved.get(k)!r}, config has {current.get(k)!r}"
           for k in keys if saved.get(k) != current.get(k)]
  if diffs:
    raise ValueError(f"the checkpoint in {where} does not match the config; these entries differ:\n"
                     + "\n".join(diffs) + "\nUse another --workdir, or the config the checkpoint was trained with.")


def manager(workdir: pathlib.Path, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """The run's checkpoint manager (synchronous saves). orbax refuses relative paths; `--workdir runs/demo` is one."""
  return ocp.CheckpointManager((pathlib.Path(workdir) / "checkpoints").absolute(),
                               options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                                     enable_async_checkpointing=False))


def save(mngr: ocp.CheckpointManager, step: int, state: dict, data_state: Any, meta: dict) -> None:
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                                          meta=ocp.args.JsonSave(meta)), force=True)


def restore(mngr: ocp.CheckpointManager, step: int, target: Any, *, config: ml_collections.ConfigDict, where: str,
            check: tuple[str, ...] = ("",), partial: bool = False, data: bool = False) -> tuple[Any, Any]:
  """(state, data state or None) of checkpoint `step`, after checking its config entries that start with one of
  `check` against `config`. `target`: the abstract state (jax.ShapeDtypeStruct leaves with their shardings);
  `partial`: `target` is a part of the saved state (e.g. {"params": ...} for inference); `data`: also restore
  the input iterator's state."""
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  check_matches(meta["config"], config, where, prefixes=check)
  if partial:
    state_args = ocp.args.PyTreeRestore(item=target, partial_restore=True, restore_args=jax.tree_util.tree_map(
        lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), target))
  else:
    state_args = ocp.args.StandardRestore(target)
  args = dict(state=state_args, **(dict(data=ocp.args.JsonRestore()) if data else {}))
  restored = mngr.restore(step, args=ocp.args.Composite(**args))
  return restored["state"], restored["data"] if data else None


def existing_step(mngr: ocp.CheckpointManager, workdir: pathlib.Path, step: int | None = None) -> int:
  """`step`, or the latest one when None; FileNotFoundError naming the available steps when there is none."""
  chosen = mngr.latest_step() if step is None else step
  if chosen is None or chosen not in mngr.all_steps():
    raise FileNotFoundError(f"no checkpoint{'' if step is None else f' at step {step}'} in {workdir}/checkpoints "
                            f"(available: {list(mngr.all_steps())})")
  return chosen


def restore_trainable(workdir: pathlib.Path, config: ml_collections.ConfigDict, model: zegot.ZegOT,
                      mesh: jax.sharding.Mesh, step: int | None = None) -> tuple[Any, int]:
  """Trainable params of a checkpoint (latest or `step`), replicated over `mesh`, after checking that the
  checkpoint matches the config's model and CLIP."""
  replicated = NamedSharding(mesh, P())
  abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                                    zegot.abstract_trainable(model))
  mngr = manager(workdir)
  step = existing_step(mngr, workdir, step)
  state, _ = restore(mngr, step, dict(params=abstract), config=config, where=str(workdir),
                     check=INFERENCE_CHECKED, partial=True)
  return state["params"], step


def read_run_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """The config a run was trained with (<workdir>/config.json, written by training)."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist: --workdir must be a training run's directory "
                            f"(or pass --config)")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


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
  mesh = from_config.make_mesh(config)
  clip = from_config.load_clip(config, workdir)
  model = from_config.build_model(config, clip)
  tokenizer = prompts.load_tokenizer(clip.path)
  if untrained_seed is None:
    trainable, step = restore_trainable(workdir, config, model, mesh, step)
  else:
    trainable, step = zegot.init_trainable(model, jax.random.key(untrained_seed)), 0
  params = zegot.merge_params(trainable, from_config.shard_clip_params(clip.params, mesh, config))
  return TrainedRun(model, params, tokenizer, mesh, step)
