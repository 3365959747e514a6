"""Training ZegOT: both phases in one run, one functional train state, sharded jitted steps, orbax checkpoints.

The command line is `python -m zegot_jax.train` (train.py); this module is the library it calls.

Sections, in the order `train_and_evaluate` runs them: mesh, input pipeline, CLIP and model, optimizer and state,
sharding, update step, checkpoint restore, loop (logging, evaluation, checkpoints, preemption).

A run restarted in the same workdir resumes from its latest checkpoint (parameters, optimizer state, teacher,
RNG, data iterator) and continues exactly as if never stopped. SIGTERM (preemption) saves a checkpoint and
exits cleanly. The workdir holds checkpoints/, metrics.jsonl, tb/ (TensorBoard) and config.json.
"""

from __future__ import annotations

import json
import pathlib
import signal
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from zegot_jax import evaluation, runtime, selftrain
from zegot_jax.data import pipeline
from zegot_jax.data.classes import IGNORE_INDEX
from zegot_jax.models import prompts, zegot
from zegot_jax.models.losses import segmentation_loss

# Config entries that may change between a run and its resumption without changing what it computes.
RESUMABLE_CHANGES = ("data_dir", "train.log_every", "train.checkpoint_every", "train.eval_every",
                     "train.eval_max_examples", "train.num_workers", "eval.batch_windows")
TIMING_METRICS = ("images_per_s", "seconds_per_step")


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # () int32
  params: Any  # trainable: context, Q (global_alignment), decoder
  opt_state: Any
  teacher: Any  # same structure as params: the pseudo-labelling teacher (selftrain.py)
  rng: jax.Array  # (2,) uint32 key data; step s uses fold_in(rng, s)


# ----------------------------------------------------------------------------------------------- building blocks


def training_classes(spec, setting: str) -> tuple[list[int], np.ndarray]:
  """(dataset class indices the model is trained on, 256-entry label table into that list). Inductive runs never
  see unseen class names: they train on the seen classes only."""
  indices = list(range(len(spec.classes))) if setting == "transductive" else list(spec.seen)
  lut = np.arange(256, dtype=np.uint8)
  lut[:len(spec.classes)] = IGNORE_INDEX
  lut[indices] = np.arange(len(indices))
  return indices, lut


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
  t = config.train
  warmup = min(t.warmup_steps, t.steps)
  schedule = optax.join_schedules([
      optax.linear_schedule(0.0, t.lr, max(warmup, 1)),
      optax.polynomial_schedule(t.lr, 0.0, t.poly_power, max(t.steps - warmup, 1)),
  ], [warmup])
  return optax.adamw(schedule, weight_decay=t.weight_decay), schedule


def make_schedule(config: ml_collections.ConfigDict) -> selftrain.Schedule:
  return selftrain.Schedule(total_steps=config.train.steps, phase1_fraction=config.train.phase1_fraction,
                            teacher=config.train.teacher, live_fraction=config.train.live_fraction,
                            transductive=config.setting == "transductive")


def make_train_step(model: zegot.ZegOT, optimizer: optax.GradientTransformation, lr_schedule: optax.Schedule,
                    schedule: selftrain.Schedule, unseen: list[int]) -> Callable:
  """(state, clip_params, tokens, images, labels) → (state, metrics). Pure; jitted with the state donated."""

  def apply(trainable, clip_params, *args, method):
    return model.apply({"params": zegot.merge_params(trainable, clip_params)}, *args, method=method)

  def train_step(state: TrainState, clip_params, tokens, images, labels):
    labels = labels.astype(jnp.int32)
    features = apply(state.params, clip_params, images, method="encode_images")  # frozen: once per step

    def teacher_labels():  # Algorithm 2, line 11, with the teacher of the train state
      text = apply(state.teacher, clip_params, tokens, method="encode_classes")
      out, _ = apply(state.teacher, clip_params, features, text, method="decode")
      return selftrain.pseudo_label(labels, jax.lax.stop_gradient(out.logits), unseen)

    if unseen:
      labels = jax.lax.cond(schedule.self_training(state.step), teacher_labels,
                            lambda: selftrain.ignore_unlabelled(labels))
    else:
      labels = selftrain.ignore_unlabelled(labels)

    def loss_fn(params):
      text = apply(params, clip_params, tokens, method="encode_classes")  # once per step, for every image
      out, aux = apply(params, clip_params, features, text, method="decode")
      score = segmentation_loss(out.score_logits, labels)
      decoder = segmentation_loss(out.decoder_logits, labels)
      metrics = dict(loss_score=score.total, loss_decoder=decoder.total, bce=score.bce + decoder.bce,
                     focal=score.focal + decoder.focal, dice=score.dice + decoder.dice)
      if aux["sinkhorn_iterations"] is not None:
        metrics["sinkhorn_iterations"] = aux["sinkhorn_iterations"].astype(jnp.float32).mean()
      return score.total + decoder.total, metrics  # eq. 12

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    teacher = selftrain.next_teacher(schedule, state.step, state.teacher, state.params)
    labelled = (labels != IGNORE_INDEX).astype(jnp.float32).mean()
    metrics.update(loss=loss, grad_norm=optax.global_norm(grads), lr=lr_schedule(state.step),
                   labelled_fraction=labelled)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, teacher=teacher), metrics

  return train_step


# ----------------------------------------------------------------------------------------------- checkpoints


def state_to_dict(state: TrainState) -> dict:
  return dict(step=state.step, params=state.params, opt_state=state.opt_state, teacher=state.teacher,
              rng=state.rng)


def checked_config(config: ml_collections.ConfigDict) -> dict:
  """The config entries a checkpoint must agree with (everything but RESUMABLE_CHANGES)."""
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


def checkpoint_manager(workdir: pathlib.Path, max_to_keep: int = 3) -> ocp.CheckpointManager:
  # orbax writes each checkpoint to a temporary directory and renames it when complete: a crash or kill
  # during a save never damages an earlier checkpoint.
  # orbax refuses relative paths; the README's `--workdir runs/demo` is one.
  return ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False))


def restore_params(workdir: pathlib.Path, config: ml_collections.ConfigDict, model: zegot.ZegOT,
                   mesh: jax.sharding.Mesh, step: int | None = None) -> tuple[Any, int]:
  """Trainable params of a checkpoint (latest or `step`), replicated over `mesh`, after checking that the
  checkpoint matches the config's model and CLIP."""
  replicated = NamedSharding(mesh, P())
  tokens = np.zeros((1, 2 + model.config.context_length), np.int32)  # shapes only: no class list needed
  if model.config.prompts == "handcrafted":
    tokens = np.zeros((1, model.config.n_prompts, 2), np.int32)
  abstract_params = jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
      jax.eval_shape(lambda: zegot.init_trainable(model, jax.random.key(0), tokens)))
  mngr = checkpoint_manager(workdir)
  step = mngr.latest_step() if step is None else step
  if step is None or step not in mngr.all_steps():
    raise FileNotFoundError(f"no checkpoint{'' if step is None else f' at step {step}'} in {workdir}/checkpoints "
                            f"(available: {list(mngr.all_steps())})")
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  check_matches(meta["config"], config, str(workdir), prefixes=("model.", "clip."))  # what the params depend on
  target = dict(params=abstract_params)
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=target, restore_args=jax.tree_util.tree_map(
          lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), target), partial_restore=True)))
  return restored["state"]["params"], step


class TrainedRun(NamedTuple):
  """A trained run restored for inference: everything evaluation, prediction and pictures need."""

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
  mesh = runtime.make_mesh(config)
  clip = runtime.load_clip(config, workdir)
  model = runtime.build_model(config, clip)
  tokenizer = prompts.load_tokenizer(clip.path)
  if untrained_seed is None:
    trainable, step = restore_params(workdir, config, model, mesh, step)
  else:  # no parameter has the number of classes in its shape, so any class list initializes them
    tokens = zegot.class_tokens(tokenizer, ["object"], model.config)
    trainable, step = zegot.init_trainable(model, jax.random.key(untrained_seed), tokens), 0
  params = zegot.merge_params(trainable, runtime.shard_clip_params(clip.params, mesh, config))
  return TrainedRun(model, params, tokenizer, mesh, step)


# ----------------------------------------------------------------------------------------------- logging


class MetricsWriter:
  """metrics.jsonl (one JSON object per logged step) and TensorBoard events, written by process 0."""

  def __init__(self, workdir: pathlib.Path, resume_step: int, enabled: bool = True):
    self.enabled = enabled
    self.path = workdir / "metrics.jsonl"
    self.tb = None
    if not enabled:
      return
    if self.path.exists():  # lines past the restored checkpoint are re-computed identically: drop them
      keep = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
      self.path.write_text("".join(line + "\n" for line in keep))
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self.tb = SummaryWriter(str(workdir / "tb"))

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": step, **{k: (float(v) if np.ndim(v) == 0 else v) for k, v in metrics.items()}}
    with self.path.open("a") as f:
      f.write(json.dumps(row) + "\n")
    for k, v in row.items():
      if k != "step" and isinstance(v, float):
        self.tb.add_scalar(k, v, step)
    self.tb.flush()

  def close(self):
    if self.tb is not None:
      self.tb.close()


# ----------------------------------------------------------------------------------------------- main loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       on_step: Callable[[int], None] | None = None) -> dict:
  """Runs (or resumes) training in `workdir`; returns the last logged metrics and the last evaluation."""
  workdir = pathlib.Path(workdir).expanduser()
  workdir.mkdir(parents=True, exist_ok=True)
  t = config.train
  is_main = jax.process_index() == 0

  # Mesh: the batch is split over every device (data × fsdp); frozen CLIP matrices over fsdp.
  mesh = runtime.make_mesh(config)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(("data", "fsdp")))
  if t.batch_size % jax.device_count() or t.batch_size % jax.process_count():
    raise ValueError(f"train.batch_size={t.batch_size} must divide over {jax.device_count()} devices and "
                     f"{jax.process_count()} processes")

  # Input pipeline: this process's shard of the dataset, batch_size / process_count examples per step.
  dataset = runtime.open_dataset(config)
  spec = dataset.spec
  classes, label_lut = training_classes(spec, config.setting)
  unseen = [classes.index(i) for i in spec.unseen] if config.setting == "transductive" else []
  data = pipeline.train_dataset(dataset.splits["train"], spec, batch_size=t.batch_size // jax.process_count(),
                                seed=t.seed, setting=config.setting, num_workers=t.num_workers)

  # CLIP and model; the class prompts are tokenized once.
  clip = runtime.load_clip(config, workdir)
  model = runtime.build_model(config, clip)
  tokenizer = prompts.load_tokenizer(clip.path)
  tokens = jax.device_put(zegot.class_tokens(tokenizer, [spec.classes[i] for i in classes], model.config),
                          replicated)
  clip_params = runtime.shard_clip_params(clip.params, mesh, config)

  # Optimizer and state, initialized directly into their (replicated) shardings.
  optimizer, lr_schedule = make_optimizer(config)
  schedule = make_schedule(config)

  def init_state(rng):
    params = zegot.init_trainable(model, rng, tokens)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      teacher=params, rng=jax.random.key_data(rng))

  abstract = jax.eval_shape(init_state, jax.random.key(t.seed))
  state_sharding = jax.tree_util.tree_map(lambda _: replicated, abstract)
  clip_shardings = jax.tree_util.tree_map(lambda a: a.sharding, clip_params)
  step_fn = jax.jit(make_train_step(model, optimizer, lr_schedule, schedule, unseen), donate_argnums=(0,),
                    in_shardings=(state_sharding, clip_shardings, replicated, batch_sharding, batch_sharding),
                    out_shardings=(state_sharding, replicated))  # fixed layouts: compiled once

  # Checkpoint restore: the latest one in the workdir, if any, after checking it matches the config.
  mngr = checkpoint_manager(workdir)
  start = mngr.latest_step()
  iterator = iter(data)
  if start is None:
    state = jax.jit(init_state, out_shardings=state_sharding)(jax.random.key(t.seed))
    start = 0
  else:
    meta = mngr.restore(start, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    check_matches(meta["config"], config, str(workdir))
    target = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                    state_to_dict(abstract), state_to_dict(state_sharding))
    restored = mngr.restore(start, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                             data=ocp.args.JsonRestore()))
    state = TrainState(**restored["state"])
    iterator.set_state(restored["data"])
  if is_main:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

  def save(step: int) -> None:
    meta = dict(config=checked_config(config), classes=[spec.classes[i] for i in classes],
                clip_path=str(clip.path))
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state_to_dict(state)),
                                            data=ocp.args.JsonSave(iterator.get_state()),
                                            meta=ocp.args.JsonSave(meta)), force=True)

  # Preemption: SIGTERM asks the loop to save and stop after the current step. With several processes, JAX's
  # coordination service receives the signal and all processes agree on the step to stop at.
  stop = {"requested": False}
  multi_process = jax.process_count() > 1
  previous_handler = signal.getsignal(signal.SIGTERM)
  if not multi_process:
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))

  writer = MetricsWriter(workdir, start, enabled=is_main)
  last_metrics, last_eval = {}, None
  pending = []  # device metrics since the last log: fetched together, so the loop never waits on the device
  bar = tqdm(total=t.steps, initial=start, disable=not is_main, desc="train", dynamic_ncols=True)
  timer, timed_steps = time.perf_counter(), 0
  try:
    for step in range(start, t.steps):
      local = next(iterator)
      images = jax.make_array_from_process_local_data(batch_sharding, local["image"])
      labels = jax.make_array_from_process_local_data(batch_sharding, label_lut[local["label"]])
      state, metrics = step_fn(state, clip_params, tokens, images, labels)
      pending.append(metrics)
      timed_steps += 1
      done = step + 1
      if on_step is not None:
        on_step(done)
      if done % t.log_every == 0 or done == t.steps:
        fetched = jax.device_get(pending)
        pending = []
        elapsed = time.perf_counter() - timer
        for offset, m in enumerate(fetched):
          s = done - len(fetched) + offset + 1
          if not np.isfinite(m["loss"]):
            raise FloatingPointError(
                f"non-finite loss {m['loss']} at step {s} (phase {schedule.phase(s - 1)}); stopping. The last "
                f"checkpoint ({mngr.latest_step()}) is intact; lower train.lr or check the data.")
        last_metrics = {**fetched[-1], "phase": schedule.phase(step),
                        "images_per_s": timed_steps * t.batch_size / elapsed,
                        "seconds_per_step": elapsed / timed_steps}
        writer.write(done, last_metrics)
        bar.set_postfix(phase=last_metrics["phase"], loss=f"{last_metrics['loss']:.4f}",
                        lr=f"{last_metrics['lr']:.2e}", img_s=f"{last_metrics['images_per_s']:.1f}")
        timer, timed_steps = time.perf_counter(), 0
      bar.update(1)
      if t.eval_every and (done % t.eval_every == 0 or done == t.steps):
        last_eval = evaluation.evaluate_dataset(config, model, zegot.merge_params(state.params, clip_params),
                                              tokenizer, mesh=mesh, max_examples=t.eval_max_examples)
        writer.write(done, {f"eval/{k}": v for k, v in last_eval.items() if isinstance(v, float)})
        timer = time.perf_counter()
      if multi_process and mngr.reached_preemption(done):
        stop["requested"] = True
      if done % t.checkpoint_every == 0 or done == t.steps or stop["requested"]:
        save(done)
      if stop["requested"]:
        print(f"\nSIGTERM: saved checkpoint {done} in {workdir}; restart the same command to resume.")
        break
  finally:
    bar.close()
    writer.close()
    mngr.wait_until_finished()
    if not multi_process:
      signal.signal(signal.SIGTERM, previous_handler)
  params = jax.tree_util.tree_map(
      lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True)) if jax.process_count() > 1
      else np.asarray(a), state.params)
  return dict(step=int(state.step), metrics=last_metrics, eval=last_eval, stopped=stop["requested"], params=params)
