r"""Where a ZegOT train or eval step spends its FLOPs, bytes, time and memory, at a config's settings.

  python -m zegot_jax.tools.benchmark --config configs/coco_stuff171_zs3.py                 # train step, batch 16
  python -m zegot_jax.tools.benchmark --config configs/voc12_zs3.py --mode eval
  python -m zegot_jax.tools.benchmark --config configs/voc12_zs3.py --batch 2 --dtype float32   # a CPU
  python -m zegot_jax.tools.benchmark --config configs/coco_stuff171_zs3.py --profile       # a GPU, in minutes

The CLIP is random with ViT-B/16's shapes at the config's image size: costs and times do not depend on the
weights, Sinkhorn iteration counts do (they are printed). The K classes are the dataset's, tokenized with the
byte-level tokenizer (at most a few tokens longer than CLIP's BPE). Nothing is downloaded or read from disk.

One row per part of the step, each part jitted alone on the outputs of the part before it:
- GFLOP and GB accessed: XLA's cost analysis of that part on this backend. XLA counts a while loop's body once;
  the batched Sinkhorn's loop is counted here once per block of iterations it ran (`costs.loop_corrected`).
- time: measured on this device, the best of --repeats calls after compilation.
- roofline: max(FLOPs / peak FLOP/s, bytes / HBM bandwidth) on an H100 and an H200 (`ROOFLINES`).
Then the whole jitted step (phase 1, and phase 2 with its teacher): time, and peak memory per device by XLA's
memory analysis (arguments + outputs + temporaries − donated) at the per-device batches --memory_batches.
With --cost_only_iterations N nothing runs (abstract inputs, N Sinkhorn iterations assumed): FLOPs, bytes and
memory at any batch on any machine. docs/speed.md has the results at the paper's settings.

With --profile only the whole step is compiled, once (on a GPU the per-part compilations above take longer than
the measurements): each phase runs a few times, then --repeats times under JAX's profiler, and the device time of
every op it ran goes to the part of the model whose name scopes made it (`profile_parts`). One table per phase:
device time per part and its share of the step, FLOPs and bytes per part counted from the compiled step's HLO
(every execution of a loop counted), and the rooflines; then the whole step's wall time, the sum of the ops'
times (what is left is the device idle or waiting), and XLA's cost analysis of the whole step.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from ml_collections import config_flags

from zegot_jax import cli, errors, selftrain, trainer
from zegot_jax.data import label_map, photometric
from zegot_jax.models.losses import segmentation_loss
from zegot_jax.tools import profile_parts
from zegot_jax.tools.bench import Bench
from zegot_jax.tools.costs import (ROOFLINES, Cost, best_time, compiled_memory, loop_corrected, peak_memory, roofline,
                                   xla_cost)

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/coco_stuff171_zs3.py",
                                          lock_config=True)
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "the train step (both phases) or an eval forward")
_BATCH = flags.DEFINE_integer("batch", None, "images per measured step (default: the config's train.batch_size)",
                              lower_bound=1)
_MEMORY_BATCHES = flags.DEFINE_list("memory_batches", ["4", "16"], "per-device batches whose peak memory is shown")
flags.register_validator("memory_batches", lambda v: all(x.isdigit() and int(x) > 0 for x in v),
                         "expected positive integers, e.g. 4,16")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "compute dtype (default: the config's)")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls per part (with --profile: timed, then profiled, calls "
                                "of the whole step per phase)", lower_bound=1)
_PROFILE = flags.DEFINE_bool("profile", False, "compile the whole step once and attribute its device time to the "
                             "parts from one profile, instead of jitting every part alone")
_COST_ONLY = flags.DEFINE_integer("cost_only_iterations", None, "count FLOPs, bytes and memory without running "
                                  "anything (e.g. batch 16 on a CPU), assuming this many Sinkhorn iterations")


class Row(NamedTuple):
  part: str
  cost: Cost
  seconds: float
  nested: bool = False  # a share of the row above it ("of which ..."), not a part of its own


def account(bench: Bench, mode: str, repeats: int, cost_only_iterations: int | None = None
            ) -> tuple[list[Row], dict[str, Any]]:
  """The parts of one step, each jitted and measured alone, in the order the step runs them. Every array is an
  argument (a closed-over array would be a compile-time constant that XLA may fold away). With
  `cost_only_iterations` nothing runs: inputs and outputs are shapes, and times are NaN."""
  params, clip, tokens, images, labels = bench.params, bench.clip_params, bench.tokens, bench.images, bench.labels
  if cost_only_iterations:
    repeats = 0
    images, labels = (jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (images, labels))

  def run(fn, *args):
    return jax.eval_shape(fn, *args) if cost_only_iterations else jax.jit(fn)(*args)

  apply = bench.apply
  rows = []

  def part(name, fn, *args, iterations=None, problems=0):
    cost = xla_cost(fn, *args)
    if iterations is not None and bench.model_config.matching in ("mpot", "bipartite"):
      m, n = scores.shape[2] * scores.shape[3], scores.shape[-1]
      cost = loop_corrected(cost, bench.model_config.sinkhorn, (problems, m, n), iterations)
    rows.append(Row(name, cost, best_time(fn, *args, repeats=repeats)))
    return run(fn, *args)

  if mode == "train":  # the pipeline draws it; the step applies it
    part("photometric distortion", photometric.distort, images, bench.distortion)
  features = part("image tower", lambda c, im: apply(params, c, "encode_images", im), clip, images)
  f, f_bar = features.f, features.f_bar
  text = part("text tower", lambda p, c, t: apply(p, c, "encode_classes", t), params, clip, tokens)
  scores, g_ga = part("GA + DFA", lambda p, c, f, fb, t: apply(p, c, "align", bench.features(f, fb), t),
                      params, clip, f, f_bar, text)
  match = lambda p, c, s, f, g: apply(p, c, "match", s, f, g)[0]  # noqa: E731
  _, _, iters = run(lambda p, c, s, f, g: apply(p, c, "match", s, f, g), params, clip, scores, f, g_ga)
  if iters is not None and cost_only_iterations:
    iters = np.full(iters.shape, cost_only_iterations)
  iterations = None if iters is None else int(np.asarray(iters).max())
  problems = int(np.prod(scores.shape[:-1])) // (scores.shape[2] * scores.shape[3])  # layers × images × classes
  refined = part("MPOT", match, params, clip, scores, f, g_ga, iterations=iterations, problems=problems)
  size = (bench.config.clip.image_size,) * 2  # static (features.image_size is a shape in cost-only mode)
  out, _ = part("fusion + decoder", lambda p, c, s, r: apply(p, c, "head", s, r, size), params, clip, scores, refined)
  info = dict(sinkhorn_iterations=iters, problems=problems)
  if mode == "eval":
    return rows, info

  def losses(o, y):
    y = label_map.ignore_unlabelled(y.astype(jnp.int32))
    return segmentation_loss(o.score_logits, y).total + segmentation_loss(o.decoder_logits, y).total

  part("losses", losses, out, labels)

  def backward(name, fn, *args):  # (forward + backward) − forward; XLA's loop counts cancel in the difference
    both = jax.value_and_grad(lambda *a: jnp.sum(fn(*a)))
    rows.append(Row(name, xla_cost(both, *args) - xla_cost(fn, *args),
                    max(best_time(both, *args, repeats=repeats) - best_time(fn, *args, repeats=repeats), 0.0),
                    nested=name.startswith("of which")))

  def loss_fn(p, c, t, f, fb, y):  # the trainable part of the step, as trainer.make_train_step has it
    out, _ = apply(p, c, "decode", bench.features(f, fb), apply(p, c, "encode_classes", t))
    return losses(out, y)

  backward("backward, all of it", loss_fn, params, clip, tokens, f, f_bar, labels)
  if iterations is not None:
    weights = jax.ShapeDtypeStruct(scores.shape, jnp.float32)  # a cotangent for the refined maps
    weights = weights if cost_only_iterations else jax.random.normal(jax.random.key(1), scores.shape)
    backward("of which MPOT's backward", lambda s, p, c, f, g, w: match(p, c, s, f, g) * w,
             scores, params, clip, f, g_ga, weights)
  grads = run(jax.grad(loss_fn), params, clip, tokens, f, f_bar, labels)
  part("optimizer update (AdamW)",
       lambda g, s, p: optax.apply_updates(p, bench.optimizer.update(g, s, p)[0]),
       grads, bench.optimizer.init(params), params)

  def teacher(p, c, t, f, fb, y):  # phase 2: Algorithm 2, line 11, as trainer.make_train_step has it
    out, _ = apply(p, c, "decode", bench.features(f, fb), t, tuple(bench.unseen))
    return selftrain.pseudo_label(y.astype(jnp.int32), out.logits, bench.unseen)

  if bench.unseen:
    part("teacher (phase 2 only)", teacher, params, clip, text, f, f_bar, labels, iterations=iterations,
         problems=problems)
    if iterations is not None:
      mpot = next(r for r in rows if r.part == "MPOT")  # the teacher solves the same problems again
      rows.append(Row("of which the teacher's MPOT", mpot.cost, mpot.seconds, nested=True))
  return rows, info


def whole_step(bench: Bench, mode: str, repeats: int) -> dict[str, float]:
  """{step: seconds} of the whole jitted step (train: phase 1, and phase 2 with its teacher when there is one);
  NaN with repeats = 0."""
  if mode == "eval":
    return {"eval forward": best_time(bench.eval_forward(), *bench.eval_args(), repeats=repeats)}
  step = bench.train_step()
  return {f"train step, phase {phase}": best_time(step, *bench.train_args(phase), repeats=repeats)
          for phase in bench.phases()}


def step_memory(bench: Bench, mode: str, batch: int) -> int:
  """Peak bytes per device of the whole step at `batch` images (compiled, not run)."""
  images, labels = (jax.ShapeDtypeStruct((batch, *x.shape[1:]), x.dtype) for x in (bench.images, bench.labels))
  if mode == "eval":
    return peak_memory(bench.eval_forward(), bench.params, bench.clip_params, bench.tokens, images)
  distortion = jax.ShapeDtypeStruct((batch, bench.distortion.shape[1]), jnp.float32)
  return peak_memory(bench.train_step(), bench.state(2), bench.clip_params, bench.tokens, images, labels, distortion,
                     donate=(0,))


def describe(bench: Bench, mode: str) -> str:
  """One line: what is measured, and where."""
  device = jax.devices()[0]
  c, mc = bench.config, bench.model_config
  return (f"ZegOT {mode} step, {c.dataset} ({len(bench.class_indices)} classes, {c.setting}), batch {bench.batch} × "
          f"{c.clip.image_size}², ViT-B/16 (random), N = {mc.n_prompts}, DFA layers {tuple(mc.dfa_layers)}, "
          f"{jnp.dtype(bench.dtype).name}; measured on {device.device_kind} ({device.platform})")


def format_report(bench: Bench, mode: str, rows: list[Row], whole: dict[str, float], memory: dict[int, int],
                  info: dict) -> str:
  device = jax.devices()[0]
  mc = bench.model_config
  iters = info["sinkhorn_iterations"]
  lines = [describe(bench, mode)]
  if iters is not None:
    lines.append(f"MPOT: {info['problems']} problems, solver {mc.sinkhorn.solver}, gradient {mc.sinkhorn.gradient}; "
                 f"Sinkhorn iterations max {int(np.max(iters))}, mean {float(np.mean(iters)):.1f}")
  names = list(ROOFLINES)
  roofs = lambda cost: " | ".join(f"{1e3 * roofline(cost, *ROOFLINES[n]):,.2f}" for n in names)  # noqa: E731
  lines += ["", "| part | GFLOP | GB accessed | time here (ms) | " + " | ".join(f"{n} roofline (ms)" for n in names)
            + " |", "|---|---|---|---|" + "---|" * len(names)]
  for r in rows:
    name = f"  {r.part}" if r.nested else r.part
    lines.append(f"| {name} | {r.cost.flops / 1e9:,.1f} | {r.cost.bytes / 1e9:,.2f} | {1e3 * r.seconds:,.0f} | "
                 f"{roofs(r.cost)} |")
  parts = [r for r in rows if not r.nested]
  steps = {"eval forward": parts} if mode == "eval" else {
      "train step, phase 1": [r for r in parts if not r.part.startswith("teacher")], "train step, phase 2": parts}
  steps = {name: members for name, members in steps.items() if name in whole}
  mpot_parts = {"MPOT", "of which MPOT's backward"} | ({"of which the teacher's MPOT"} if mode == "train" else set())
  def roof(members, n):  # each part at its own roofline, one after another
    return sum(roofline(r.cost, *ROOFLINES[n]) for r in members)

  for name, members in steps.items():
    cost = sum((r.cost for r in members), Cost(0.0, 0.0))
    lines.append(f"| **{name}**: parts summed; time: the whole jitted step | {cost.flops / 1e9:,.1f} | "
                 f"{cost.bytes / 1e9:,.2f} | {1e3 * whole[name]:,.0f} | "
                 + " | ".join(f"{1e3 * roof(members, n):,.2f}" for n in names) + " |")
  lines.append("")
  for name, members in steps.items():
    if iters is None:
      break
    in_step = [r for r in rows if r.part in mpot_parts and (r.part != "of which the teacher's MPOT" or
                                                            name.endswith("2"))]
    shares = ", ".join(f"{n} {100 * roof(in_step, n) / roof(members, n):.1f}%" for n in names)
    parts = " + ".join(r.part.replace("of which ", "") for r in in_step)
    lines.append(f"MPOT's share of the {name} at the roofline ({parts}): {shares}")
  lines += [f"peak memory per device, {mode} step at batch {b}: {m / 2**30:.2f} GiB (XLA's memory analysis on "
            f"{device.platform})" for b, m in memory.items()]
  lines.append("roofline peaks: " + "; ".join(f"{n}: {f / 1e12:.0f} TFLOP/s bf16 dense, {bw / 1e12:.2f} TB/s HBM"
                                              for n, (f, bw) in ROOFLINES.items()))
  return "\n".join(lines)


def print_profile(bench: Bench, mode: str, calls: int) -> None:
  """The whole step compiled once, profiled per phase, its device time split into the parts (`profile_parts`).
  Printed as it is measured: a run cut short keeps what it printed."""
  if mode == "eval":
    fn, donate, phases = bench.eval_forward(), (), {"eval forward": bench.eval_args}
    next_args = lambda args, outputs: args  # noqa: E731
  else:  # the trainer's step, its state donated; each call's state is the last one's (the phase holds)
    fn, donate = bench.train_step(), (0,)
    phases = {f"train step, phase {p}": functools.partial(bench.train_args, p) for p in bench.phases()}
    next_args = lambda args, outputs: (outputs[0], *args[1:])  # noqa: E731
  print(describe(bench, mode), flush=True)
  print(f"compiling the whole {mode} step once ...", file=sys.stderr, flush=True)
  compiled = jax.jit(fn, donate_argnums=donate).lower(*next(iter(phases.values()))()).compile()
  print("\n".join(profile_parts.format_whole(compiled)), flush=True)
  print(f"peak memory per device, {mode} step at batch {bench.batch}: {compiled_memory(compiled) / 2**30:.2f} GiB "
        f"(XLA's memory analysis on {jax.devices()[0].platform})", flush=True)
  for measured in profile_parts.profile(compiled, phases, next_args, calls):
    print("\n".join(["", *profile_parts.format_phase(measured)]), flush=True)


def main(argv):
  del argv
  config = _CONFIG.value
  trainer.validate(config)
  if _PROFILE.value and _COST_ONLY.value:
    errors.fail("--profile runs the step and --cost_only_iterations runs nothing: give one of them")
  dtype = jnp.dtype(_DTYPE.value or config.clip.dtype)
  mode = _MODE.value
  bench = Bench(config, _BATCH.value or config.train.batch_size, dtype)
  if _PROFILE.value:
    print_profile(bench, mode, _REPEATS.value)
    return
  repeats = 0 if _COST_ONLY.value else _REPEATS.value
  rows, info = account(bench, mode, repeats, _COST_ONLY.value)
  whole = whole_step(bench, mode, repeats)
  memory = {int(b): step_memory(bench, mode, int(b)) for b in _MEMORY_BATCHES.value}
  print(format_report(bench, mode, rows, whole, memory, info))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
