"""Training ZegOT: both phases in one run, one functional train state, sharded jitted steps, orbax checkpoints.

The command line is `python -m zegot_jax.train` (train.py); this module is the library it calls.

A run's steps are `_Training`'s methods, in the order `train_and_evaluate` calls them: build (mesh, input pipeline
and label mapping, the run as inference builds it: `from_config.build_run`, optimizer, the jitted update step),
start (restore or initialize the state), loop (each step, then log, evaluate and save where due; preemption).

A run restarted in the same workdir resumes from its latest checkpoint (parameters, optimizer state, teacher,
data iterator) and continues exactly as if never stopped. SIGTERM (preemption) saves a checkpoint and
exits cleanly. A non-finite state is never saved: the run stops naming the last (finite) checkpoint, from which
`restart_from` restarts it, e.g. with a lower learning rate. One trainer at a time holds a workdir (a lock).
The workdir holds checkpoints/, metrics.jsonl, tb/ (TensorBoard), config.json and, when the config asks for them
(`eval.pictures`), the pictures of the last evaluation in pictures/.
"""

from __future__ import annotations

import contextlib
import functools
import json
import pathlib
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from zegot_jax import checkpoints, errors, evaluation, from_config, selftrain
from zegot_jax.data import label_map, photometric, pipeline, registry
from zegot_jax.data.classes import IGNORE_INDEX
from zegot_jax.errors import ConfigError, DamagedFileError, DivergedError
from zegot_jax.models import zegot
from zegot_jax.models.losses import segmentation_loss
from zegot_jax.train_config import TrainConfig



@flax.struct.dataclass
class TrainState:
  step: jax.Array  # () int32
  params: Any  # trainable: context, Q (global_alignment), decoder
  opt_state: Any
  teacher: Any  # same structure as params: the pseudo-labelling teacher (selftrain.py)
  teacher_text: jax.Array  # (K, N, D) the teacher's class embeddings g: kept, not recomputed by the teacher


# ----------------------------------------------------------------------------------------------- building blocks


def train_config(config: ml_collections.ConfigDict) -> TrainConfig:
  """The config's `train` section as the dataclass, checked (one ConfigError naming the entry)."""
  try:
    return TrainConfig.from_section(config.train)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config {e}") from e


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
  t = train_config(config)
  warmup = min(t.warmup_steps, t.steps)
  schedule = optax.join_schedules([
      optax.linear_schedule(0.0, t.lr, max(warmup, 1)),
      optax.polynomial_schedule(t.lr, 0.0, t.poly_power, max(t.steps - warmup, 1)),
  ], [warmup])
  return optax.adamw(schedule, weight_decay=t.weight_decay), schedule


def make_schedule(config: ml_collections.ConfigDict) -> selftrain.Schedule:
  return selftrain.Schedule.of(train_config(config), transductive=config.setting == "transductive")


def validate(config: ml_collections.ConfigDict) -> None:
  """Refuses settings that would train nothing or fail later (one ConfigError naming the entry)."""
  train_config(config)  # the training section's own checks
  for field in ("pictures", "batch_windows"):
    value = config.eval.get(field, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ConfigError(f"config eval.{field}={value!r}: expected an integer >= 0")
  if config.setting not in label_map.SETTINGS:
    raise ConfigError(f"config setting={config.setting!r}: expected one of {label_map.SETTINGS}")
  registry.parse_name(config.dataset)
  from_config.model_config(config)  # the model's own checks, before anything is loaded
  from_config.make_mesh(config)  # the mesh must fit these devices


def all_finite(tree: Any) -> jax.Array:
  """() bool: every floating-point leaf of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def initial_state(model: zegot.ZegOT, optimizer: optax.GradientTransformation, rng: jax.Array, clip_params: Any,
                  tokens: jax.Array) -> TrainState:
  """Step 0: fresh trainable params, which the teacher starts from, and the teacher's text embeddings."""
  params = zegot.init_trainable(model, rng)
  text = model.apply({"params": zegot.merge_params(params, clip_params)}, tokens, method="encode_classes")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), teacher=params,
                    teacher_text=text)


def make_train_step(model: zegot.ZegOT, optimizer: optax.GradientTransformation, lr_schedule: optax.Schedule,
                    schedule: selftrain.Schedule, unseen: list[int]) -> Callable:
  """(state, clip_params, tokens, images, labels[, photometric]) → (state, metrics). Pure; jitted with the state
  donated. `photometric`: the pipeline's drawn photometric distortion, applied here on the device."""

  def apply(trainable, clip_params, *args, method):
    return model.apply({"params": zegot.merge_params(trainable, clip_params)}, *args, method=method)

  def train_step(state: TrainState, clip_params, tokens, images, labels, photometric_params=None):
    if photometric_params is not None:
      images = photometric.distort(images, photometric_params)  # mmseg's distortion, drawn by the pipeline
    labels = labels.astype(jnp.int32)
    features = apply(state.params, clip_params, images, method="encode_images")  # frozen: once per step

    def teacher_labels():  # Algorithm 2, line 11, with the teacher of the train state and its text embeddings;
      # only the unseen classes' logits are needed, so only they are upsampled to full resolution
      out, _ = apply(state.teacher, clip_params, features, state.teacher_text, tuple(unseen), method="decode")
      return selftrain.pseudo_label(labels, jax.lax.stop_gradient(out.logits), unseen)

    if unseen:
      labels = jax.lax.cond(schedule.self_training(state.step), teacher_labels,
                            lambda: label_map.ignore_unlabelled(labels))
    else:
      labels = label_map.ignore_unlabelled(labels)

    classes = schedule.loss_classes(state.step, tokens.shape[0], unseen)  # (K,) bool or None: all classes

    def loss_fn(params):
      text = apply(params, clip_params, tokens, method="encode_classes")  # once per step, for every image
      out, aux = apply(params, clip_params, features, text, method="decode")
      score = segmentation_loss(out.score_logits, labels, classes=classes)
      decoder = segmentation_loss(out.decoder_logits, labels, classes=classes)
      metrics = dict(loss_score=score.total, loss_decoder=decoder.total, bce=score.bce + decoder.bce,
                     focal=score.focal + decoder.focal, dice=score.dice + decoder.dice)
      if aux["sinkhorn_iterations"] is not None:
        metrics["sinkhorn_iterations"] = aux["sinkhorn_iterations"].astype(jnp.float32).mean()
      return score.total + decoder.total, (metrics, text)  # eq. 12

    (loss, (metrics, text)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # The teacher of step + 1 takes these pre-update params or keeps its own; its text embeddings follow it, and
    # are this step's: the text tower runs once per step, for the student.
    teacher, teacher_text = selftrain.next_teacher(schedule, state.step, (state.teacher, state.teacher_text),
                                                   (state.params, jax.lax.stop_gradient(text)))
    labelled = (labels != IGNORE_INDEX).astype(jnp.float32).mean()
    metrics.update(loss=loss, grad_norm=optax.global_norm(grads), lr=lr_schedule(state.step),
                   labelled_fraction=labelled)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, teacher=teacher,
                         teacher_text=teacher_text), metrics

  return train_step


def state_to_dict(state: TrainState) -> dict:
  """The train state as a checkpoint's `state` item."""
  return dict(step=state.step, params=state.params, opt_state=state.opt_state, teacher=state.teacher,
              teacher_text=state.teacher_text)


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
      keep = [line for line in self._rows() if json.loads(line)["step"] <= resume_step]
      self.path.write_text("".join(line + "\n" for line in keep))
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self.tb = SummaryWriter(str(workdir / "tb"))

  def _rows(self) -> list[str]:
    """The file's rows; a last row cut short by a crash is dropped (it is re-computed), a damaged earlier one is
    an error."""
    lines = self.path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
      try:
        json.loads(line)
        rows.append(line)
      except json.JSONDecodeError as e:
        if i < len(lines) - 1:
          raise DamagedFileError(f"{self.path} line {i + 1} is not JSON ({e}); fix or delete that line, then rerun "
                                 f"to resume") from e
    return rows

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
                       on_step: Callable[[int], None] | None = None, restart_from: int | None = None) -> dict:
  """Runs (or resumes) training in `workdir`; returns the last logged metrics and the last evaluation.

  `restart_from`: restart from this earlier checkpoint (its later ones are moved to <workdir>/abandoned/), with
  RESTART_CHANGES (e.g. the learning rate) allowed to differ from the checkpoint's config."""
  validate(config)
  workdir = errors.path_flag(None if workdir is None else str(workdir), "--workdir", "runs/voc")
  if workdir.exists() and not workdir.is_dir():
    raise ConfigError(f"--workdir={workdir} is a file; give a folder for the run (it is created if missing)")
  with errors.storage(f"--workdir={workdir}: cannot create the run's folder"):
    workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  with checkpoints.WorkdirLock(workdir) if is_main else contextlib.nullcontext():
    return _train_and_evaluate(config, workdir, on_step, restart_from)


def _diverged(step: int, phase: str, what: str, mngr) -> DivergedError:
  """The divergence as one line, with the newest checkpoint that is a sensible restart point (finite is not
  enough: checkpoints.restart_advice)."""
  return DivergedError(f"{what} at step {step} (phase {phase}): not saved (a non-finite state is never saved); "
                       f"{checkpoints.restart_advice(mngr)}")


def params_max_abs(params: Any) -> jax.Array:
  """() float32: the largest |θ| over the trainable parameters (a checkpoint's health, checkpoints.health)."""
  return jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(jnp.float32) for x in jax.tree_util.tree_leaves(params)]))


class _Training:
  """One call of `train_and_evaluate`, in the steps a reader follows: `__init__` builds the run from the config
  (mesh, data, frozen encoder, model, optimizer, the jitted step), `start` restores the latest checkpoint or
  initializes the state, `loop` runs the steps, each followed where due by `log`, `evaluate` and `save`."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path, on_step, restart_from: int | None):
    self.config, self.workdir, self.on_step, self.restart_from = config, workdir, on_step, restart_from
    self.mngr = self.iterator = None  # opened by `start`, closed by `close`
    self.t = t = train_config(config)
    self.is_main = jax.process_index() == 0
    self.multi_process = jax.process_count() > 1

    # Mesh: the batch is split over every device (data × fsdp); frozen encoder matrices over fsdp.
    mesh = from_config.make_mesh(config)
    replicated = NamedSharding(mesh, P())
    self.batch_sharding = NamedSharding(mesh, P(("data", "fsdp")))
    if t.batch_size % jax.device_count() or t.batch_size % jax.process_count():
      raise ConfigError(f"config train.batch_size={t.batch_size} must divide over {jax.device_count()} devices "
                        f"and {jax.process_count()} processes")

    # Input pipeline: this process's shard of the dataset, batch_size / process_count examples per step; the
    # zero-shot label mapping of the setting (data/label_map.py).
    self.dataset = dataset = from_config.open_dataset(config)
    self.spec = spec = dataset.spec
    partial = registry.partial_note(dataset)
    if partial and self.is_main:
      print(f"warning: {spec.name} is a partial build ({partial} examples): its numbers are not comparable with "
            f"the full dataset's", file=sys.stderr)
    self.classes, self.label_lut = label_map.training_classes(spec, config.setting)
    unseen = label_map.unseen_positions(spec, config.setting)
    self.data = pipeline.train_dataset(dataset.splits["train"], spec, batch_size=t.batch_size // jax.process_count(),
                                       seed=t.seed, setting=config.setting, num_workers=t.num_workers,
                                       photometric="device")

    # The run (mesh, frozen encoder, model, tokenizer: as inference builds it); the class prompts tokenized once.
    self.run = run = from_config.build_run(config, workdir, mesh=mesh)
    self.tokens = jax.device_put(zegot.class_tokens(run.tokenizer, [spec.classes[i] for i in self.classes],
                                                    run.model.config, run.model.clip_config), replicated)
    self.clip_params = from_config.shard_clip_params(run.clip.params, mesh, config)

    # Optimizer, schedule and the jitted step, with the state's (replicated) shardings fixed: compiled once.
    optimizer, lr_schedule = make_optimizer(config)
    self.schedule = make_schedule(config)
    self.init_state = functools.partial(initial_state, run.model, optimizer)
    self.abstract = jax.eval_shape(self.init_state, jax.random.key(t.seed), self.clip_params, self.tokens)
    self.state_sharding = jax.tree_util.tree_map(lambda _: replicated, self.abstract)
    clip_shardings = jax.tree_util.tree_map(lambda a: a.sharding, self.clip_params)
    self.step_fn = jax.jit(make_train_step(run.model, optimizer, lr_schedule, self.schedule, unseen),
                           donate_argnums=(0,),
                           in_shardings=(self.state_sharding, clip_shardings, replicated, self.batch_sharding,
                                         self.batch_sharding, self.batch_sharding),
                           out_shardings=(self.state_sharding, replicated))
    self.health = jax.jit(lambda state: (all_finite(state), params_max_abs(state["params"])))
    self.evaluator = None  # built at the first evaluation, on the dataset already open: opened once per run

  def start(self) -> int:
    """The latest checkpoint in the workdir restored after checking it matches the config (or, asked explicitly,
    an earlier one: the later ones are moved aside first), or a fresh state. Returns the step to start from."""
    config, workdir, t = self.config, self.workdir, self.t
    if self.restart_from is not None:
      if self.is_main:
        checkpoints.abandon_after(workdir, self.restart_from)
      if self.multi_process:
        multihost_utils.sync_global_devices("zegot_restart_from")
    with errors.storage(f"--workdir={workdir}: cannot create checkpoints/"):
      self.mngr = mngr = checkpoints.manager(workdir)
    start = mngr.latest_step()
    self.iterator = iter(self.data)
    self.data_fingerprint = registry.fingerprint(self.dataset)  # checked at every resume: a run continues on its data
    if start is None:
      self.state = jax.jit(self.init_state, out_shardings=self.state_sharding)(
          jax.random.key(t.seed), self.clip_params, self.tokens)
      start, self.initial_max_abs = 0, float(params_max_abs(self.state.params))
    else:
      target = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                      state_to_dict(self.abstract), state_to_dict(self.state_sharding))
      restored, data_state = checkpoints.restore(
          mngr, start, target, config=config, where=str(workdir), data=True, data_fingerprint=self.data_fingerprint,
          allowed=checkpoints.RESTART_CHANGES if self.restart_from is not None else (),
          encoder=self.run.clip.family.name)
      self.state = TrainState(**restored)
      self.iterator.set_state(data_state)
      meta = checkpoints.read_meta(mngr, start)
      self.initial_max_abs = (meta.get("health") or {}).get("initial_params_max_abs")
      healthy, how = checkpoints.health(meta)
      if self.restart_from is not None and healthy is False and self.is_main:
        print(f"warning: checkpoint {start} is finite but blown up ({how}); a lower learning rate may not recover "
              f"it: {checkpoints.restart_advice(mngr, before=start)}", file=sys.stderr)
    if self.is_main:
      with errors.storage(f"--workdir={workdir}: cannot write config.json"):
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    return start

  def close(self) -> None:
    """Ends what the run started in the background, finished or failed: the input pipeline's worker processes and
    the checkpoint manager (its pending writes are awaited first)."""
    if self.iterator is not None:
      self.iterator.close()
    if self.mngr is not None:
      self.mngr.close()

  def save(self, step: int) -> None:
    """Checkpoint `step`: never a non-finite state; its meta holds what a resume and an inference check."""
    finite, max_abs = jax.device_get(self.health(state_to_dict(self.state)))  # one host sync per save
    if not finite:
      raise _diverged(step, self.schedule.phase(step - 1), "the train state is not finite", self.mngr)
    clip = self.run.clip
    meta = dict(config=checkpoints.checked_config(self.config), classes=[self.spec.classes[i] for i in self.classes],
                clip_path=str(clip.path), encoder_family=clip.family.name, data=self.data_fingerprint,
                data_dir=str(self.config.data_dir),
                health=dict(params_max_abs=float(max_abs), initial_params_max_abs=self.initial_max_abs))
    checkpoints.save(self.mngr, step, state_to_dict(self.state), self.iterator.get_state(), meta)

  def log(self, done: int, step: int, pending: list, timed_steps: int, timer: float, waited: float) -> dict:
    """The metrics of the steps since the last log (`timer`: when the window began), fetched together (the loop
    never waits on the device otherwise), checked finite, written with the window's throughput."""
    fetched = jax.device_get(pending)
    elapsed = time.perf_counter() - timer  # the window's steps, finished on the device
    for offset, m in enumerate(fetched):
      s = done - len(fetched) + offset + 1
      if not np.isfinite(m["loss"]):
        raise _diverged(s, self.schedule.phase(s - 1), f"the loss is {m['loss']}", self.mngr)
    metrics = {**fetched[-1], "phase": self.schedule.phase(step),
               "images_per_s": timed_steps * self.t.batch_size / elapsed,
               "seconds_per_step": elapsed / timed_steps, "data_wait_fraction": waited / elapsed}
    self.writer.write(done, metrics)
    self.bar.set_postfix(phase=metrics["phase"], loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                         img_s=f"{metrics['images_per_s']:.1f}")
    return metrics

  def evaluate(self, done: int) -> dict:
    if self.evaluator is None:
      self.evaluator = evaluation.Evaluator(self.config, self.run.model, self.run.tokenizer, mesh=self.run.mesh,
                                            dataset=self.dataset, max_examples=self.t.eval_max_examples,
                                            pictures_dir=self.workdir / "pictures")
    result = self.evaluator(zegot.merge_params(self.state.params, self.clip_params), done)
    self.writer.write(done, {f"eval/{k}": v for k, v in result.items() if isinstance(v, float)})
    return result

  def loop(self, start: int) -> dict:
    """Steps start..t.steps; SIGTERM (preemption) asks it to save and stop after the current step. With several
    processes, JAX's coordination service receives the signal and all processes agree on the step to stop at."""
    t, workdir = self.t, self.workdir
    self.writer = MetricsWriter(workdir, start, enabled=self.is_main)  # may refuse a damaged metrics.jsonl: first
    self.bar = tqdm(total=t.steps, initial=start, disable=not self.is_main, desc="train", dynamic_ncols=True)
    stop = {"requested": False}
    previous_handler = signal.getsignal(signal.SIGTERM)
    if not self.multi_process:
      signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    last_metrics, last_eval = {}, None
    pending = []  # device metrics since the last log
    timer, timed_steps, waited = time.perf_counter(), 0, 0.0  # waited: seconds in next(iterator) since the log
    try:
      for step in range(start, t.steps):
        asked = time.perf_counter()
        local = next(self.iterator)
        waited += time.perf_counter() - asked
        images = jax.make_array_from_process_local_data(self.batch_sharding, local["image"])
        labels = jax.make_array_from_process_local_data(self.batch_sharding, self.label_lut[local["label"]])
        distortion = jax.make_array_from_process_local_data(self.batch_sharding, local["photometric"])
        self.state, metrics = self.step_fn(self.state, self.clip_params, self.tokens, images, labels, distortion)
        pending.append(metrics)
        timed_steps += 1
        done = step + 1
        if self.on_step is not None:
          self.on_step(done)
        if done % t.log_every == 0 or done == t.steps:
          last_metrics = self.log(done, step, pending, timed_steps, timer, waited)
          pending = []
          timer, timed_steps, waited = time.perf_counter(), 0, 0.0
        self.bar.update(1)
        if t.eval_every and (done % t.eval_every == 0 or done == t.steps):
          last_eval = self.evaluate(done)
          timer, waited = time.perf_counter(), 0.0
        if self.multi_process and self.mngr.reached_preemption(done):
          stop["requested"] = True
        if done % t.checkpoint_every == 0 or done == t.steps or stop["requested"]:
          self.save(done)
        if stop["requested"]:
          print(f"\nSIGTERM: saved checkpoint {done} in {workdir}; restart the same command to resume.")
          break
    finally:
      self.bar.close()
      self.writer.close()
      self.mngr.wait_until_finished()
      if not self.multi_process:
        signal.signal(signal.SIGTERM, previous_handler)
    params = jax.tree_util.tree_map(
        lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True)) if self.multi_process
        else np.asarray(a), self.state.params)
    return dict(step=int(self.state.step), metrics=last_metrics, eval=last_eval, stopped=stop["requested"],
                params=params)


def _train_and_evaluate(config, workdir: pathlib.Path, on_step, restart_from: int | None) -> dict:
  training = _Training(config, workdir, on_step, restart_from)
  try:
    return training.loop(training.start())
  finally:
    training.close()
