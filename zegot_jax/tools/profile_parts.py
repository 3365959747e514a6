"""Where a compiled ZegOT step spends its device time, part by part, from one profile of the whole step: nothing
is compiled but the step itself (`benchmark.py --profile`).

Each op the device ran is an HLO instruction (`device_trace`); each instruction carries the JAX name stacks of the
ops it was made from (`hlo_ops`); the name stack says which part of the model made it. The model's methods are
Flax scopes (`ZegOT.encode_images`, `ZegOT.align`, `ZegOT.match`, `ZegOT.head`, ...), CLIP's towers are
`vision_model` and `text_model`, the loss is the `losses` scope and the optimizer's update the `optimizer` scope.
JAX writes the backward pass's ops as `transpose(jvp(<scope>))`: they are the backward of that part. The teacher's
forward (phase 2) is the branch of the step's `lax.cond` that runs the model (`cond/branch_<i>_fun/ZegOT...`).
What no scope claims (the photometric distortion, label bookkeeping, the parameter update, metrics) is "other".

An instruction fused from ops of several parts goes to the part with most of its work (FLOPs, or elements
written). Its cost for the roofline (`hlo_ops.Executed.cost`) is counted once per execution the profile saw:
the Sinkhorn's while loop as many times as it ran.
"""

from __future__ import annotations

import collections
import re
import time
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
from tqdm import tqdm

from zegot_jax.tools import device_trace, hlo_ops
from zegot_jax.tools.bench import OPTIMIZER_SCOPE
from zegot_jax.tools.costs import ROOFLINES, Cost, compiled_cost, roofline


class Part(NamedTuple):
  name: str
  backward: bool = False  # the backward pass of `name`


OTHER = "other"
TEACHER = "teacher (phase 2)"
# (part, the name scopes that make an op that part's), in the order they are tried: the first that matches wins.
ZEGOT_SCOPES = (
    ("optimizer (AdamW)", (OPTIMIZER_SCOPE,)),
    ("losses", ("losses",)),
    ("image tower", ("vision_model", "ZegOT.encode_images")),
    ("text tower", ("text_model", "ZegOT.encode_classes")),
    ("GA + DFA", ("ZegOT.align",)),
    ("MPOT", ("ZegOT.match",)),
    ("decoder", ("decoder",)),
    ("fusion + ensemble", ("ZegOT.head",)),
)
_TRANSFORM = re.compile(r"^[\w\-]+\((.*)\)$")  # jvp(...), transpose(...), vmap(...), jit(...)
_BRANCH = re.compile(r"^(.*?cond/branch_\d+_fun)/")


def scopes(op_name: str) -> list[str]:
  """The name scopes of an op name, transformations removed: "jit(step)/transpose(jvp(ZegOT.decode))/ZegOT.match/
  mul" → ["step", "ZegOT.decode", "ZegOT.match", "mul"]."""
  out = []
  for component in op_name.split("/"):
    while m := _TRANSFORM.match(component):
      component = m.group(1)
    out.append(component)
  return out


def teacher_branches(op_names: Sequence[str]) -> frozenset[str]:
  """The name-stack prefixes of the `lax.cond` branches that run the model: the teacher's forward."""
  return frozenset(m.group(1) for op in op_names if (m := _BRANCH.match(op)) and "ZegOT." in op[m.end():])


def classify(op_name: str, table: Sequence[tuple[str, Sequence[str]]] = ZEGOT_SCOPES,
             teacher: frozenset[str] = frozenset()) -> Part:
  """The part an op belongs to, by its name stack. XLA joins the op names of merged ops with ';': the first that
  names a part decides."""
  for name in op_name.split(";"):
    if any(name.startswith(branch + "/") for branch in teacher):
      return Part(TEACHER)
    found = set(scopes(name))
    for part, names in table:
      if found.intersection(names):
        return Part(part, backward="transpose(" in name)
  return Part(OTHER, backward="transpose(" in op_name)


def instruction_part(executed: hlo_ops.Executed, classify_op: Callable[[str], Part]) -> Part:
  """The part with most of the instruction's work among the op names fused into it."""
  votes = collections.Counter()
  for op_name, weight in executed.op_names:
    votes[classify_op(op_name)] += weight
  return votes.most_common(1)[0][0] if votes else Part(OTHER)


class PartTime(NamedTuple):
  seconds: float  # device time per step
  cost: Cost  # FLOPs and bytes per step, every execution counted


class Attribution(NamedTuple):
  parts: dict[Part, PartTime]
  unattributed_seconds: float  # per step: ops of this program that name no instruction of its HLO
  unattributed_ops: tuple[str, ...]  # the names of the longest of those, for a reader to look up
  events: int  # op events of this program
  foreign_events: int  # op events of other programs, left out
  steps: int
  lines: tuple[str, ...]  # the streams or threads the events were on

  def total_seconds(self) -> float:
    return sum(p.seconds for p in self.parts.values()) + self.unattributed_seconds


def attribute(events: Sequence[device_trace.OpEvent], module: hlo_ops.HloModule, steps: int,
              classify_op: Callable[[str], Part]) -> Attribution:
  """Own time and cost per part, per step, of `steps` calls of `module` profiled as `events`."""
  executed = module.executed()
  ours = [e for e in events if e.module in ("", module.name)]
  if not ours:  # the program named otherwise in the profile: its ops are those that name its instructions
    ours = [e for e in events if e.hlo_op in executed]
  if not ours:
    raise ValueError(f"the profile holds no op events of {module.name}: {len(events)} op events of the programs "
                     f"{sorted({e.module for e in events})[:5]}")
  part_of = {name: instruction_part(x, classify_op) for name, x in executed.items()}
  runs = _executions(ours, executed, steps)
  seconds, unattributed = collections.defaultdict(float), collections.Counter()
  for e in ours:
    if e.hlo_op in part_of:
      seconds[part_of[e.hlo_op]] += 1e-9 * e.self_ns / steps
    else:
      unattributed[e.hlo_op] += 1e-9 * e.self_ns / steps
  costs = collections.defaultdict(lambda: Cost(0.0, 0.0))
  for name, x in executed.items():
    costs[part_of[name]] += x.cost * runs.get(x.computation, 0.0)
  parts = {p: PartTime(seconds.get(p, 0.0), costs[p]) for p in set(seconds) | set(costs)}
  return Attribution(parts, sum(unattributed.values()), tuple(op for op, _ in unattributed.most_common(3)),
                     len(ours), len(events) - len(ours), steps, tuple(sorted({e.line for e in ours})))


def _executions(events: Sequence[device_trace.OpEvent], executed: dict[str, hlo_ops.Executed],
                steps: int) -> dict[str, float]:
  """Executions per step of each computation that runs on its own: the fewest events any of its instructions
  has (an instruction may launch more than one kernel, none fewer than one); 0 if none ran."""
  counts = collections.Counter(e.hlo_op for e in events if e.hlo_op in executed)
  runs = {}
  for name, count in counts.items():
    computation = executed[name].computation
    runs[computation] = min(runs.get(computation, count), count)
  return {c: n / steps for c, n in runs.items()}


class PhaseProfile(NamedTuple):
  name: str
  wall_seconds: float  # the fastest of the timed calls, host clock, waiting for the result
  attribution: Attribution | None
  failure: str = ""  # why there is no attribution


class _Calls:
  """Calls of a compiled step, each on the arguments the one before left (`next_args(args, outputs)`)."""

  def __init__(self, compiled, args: tuple, next_args: Callable[[tuple, Any], tuple], bar: tqdm):
    self.compiled, self.args, self.next_args, self.bar = compiled, args, next_args, bar

  def __call__(self, n: int) -> None:
    for _ in range(n):
      outputs = jax.block_until_ready(self.compiled(*self.args))
      self.args = self.next_args(self.args, outputs)
      self.bar.update(1)

  def timed(self) -> float:
    start = time.perf_counter()
    self(1)
    return time.perf_counter() - start


def profile(compiled: jax.stages.Compiled, phases: dict[str, Callable[[], tuple]],
            next_args: Callable[[tuple, Any], tuple], calls: int, warmup: int = 2) -> Iterator[PhaseProfile]:
  """Each phase, yielded as soon as it is measured: `warmup` calls, `calls` timed calls, then `calls` calls under
  the profiler, each call's arguments from the one before (a train step's state moves on). `phases`: name → a
  function that makes the first call's arguments."""
  try:
    module = hlo_ops.parse(compiled.as_text())
    classify_op, unreadable = _model_classifier(module), ""
  except Exception as e:  # pylint: disable=broad-except  (the steps are still timed)
    module, classify_op, unreadable = None, None, f"the compiled step's HLO text cannot be read: {e}"
  bar = tqdm(total=len(phases) * (warmup + 2 * calls), desc="profile", leave=False)
  for name, first_args in phases.items():
    run = _Calls(compiled, first_args(), next_args, bar)
    run(warmup)
    wall = min(run.timed() for _ in range(calls))
    try:  # the step's time stands whatever happens here; the table says why the parts are missing
      if unreadable:
        raise ValueError(unreadable)
      measured = PhaseProfile(name, wall, attribute(device_trace.trace(lambda: run(calls)), module, calls,
                                                    classify_op))
    except Exception as e:  # pylint: disable=broad-except
      measured = PhaseProfile(name, wall, None, f"{type(e).__name__}: {e}")
    bar.clear()
    yield measured
  bar.close()


def _model_classifier(module: hlo_ops.HloModule) -> Callable[[str], Part]:
  teacher = teacher_branches(module.op_names())
  return lambda op_name: classify(op_name, ZEGOT_SCOPES, teacher)


# ------------------------------------------------------------------------------------------------- report

FORWARD = ("image tower", "text tower", "GA + DFA", "MPOT", "fusion + ensemble", "decoder", "losses")
AFTER = ("optimizer (AdamW)", TEACHER, OTHER)


def format_phase(p: PhaseProfile) -> list[str]:
  """A markdown table of one phase: device time, its share of the step, FLOPs, bytes and rooflines per part. A
  row of several parts is at the roofline when each of its parts is at its own, one after another."""
  head = f"### {p.name}: {1e3 * p.wall_seconds:,.1f} ms per step (wall clock, the fastest call)"
  if p.attribution is None:
    return [head, f"per-part attribution failed: {p.failure}"]
  a, wall, names = p.attribution, p.wall_seconds, list(ROOFLINES)
  lines = [head, f"{a.steps} profiled steps, {a.events:,} op events on {', '.join(_planes(a.lines))}"
           + (f"; {a.foreign_events:,} events of other programs left out" if a.foreign_events else ""), "",
           "| part | device time (ms per step) | share of the step | GFLOP | GB accessed | "
           + " | ".join(f"{n} roofline (ms)" for n in names) + " |", "|---|---|---|---|---|" + "---|" * len(names)]

  def row(label: str, members: Sequence[Part], seconds: float | None = None) -> str:
    members = [q for q in members if q in a.parts]
    seconds = sum(a.parts[q].seconds for q in members) if seconds is None else seconds
    cost = sum((a.parts[q].cost for q in members), Cost(0.0, 0.0))
    roofs = " | ".join(f"{1e3 * sum(roofline(a.parts[q].cost, *ROOFLINES[n]) for q in members):,.2f}" for n in names)
    return (f"| {label} | {1e3 * seconds:,.2f} | {100 * seconds / wall:.1f}% | {cost.flops / 1e9:,.1f} | "
            f"{cost.bytes / 1e9:,.2f} | {roofs} |")

  backward = sorted((q for q in a.parts if q.backward), key=lambda q: _order(q.name))
  shown = {Part(name) for name in FORWARD + AFTER} | set(backward)
  lines += [row(name, [Part(name)]) for name in FORWARD]
  lines.append(row("backward", backward))
  lines += [row(f"  of which {q.name}", [q]) for q in backward if a.parts[q].seconds or a.parts[q].cost.flops]
  lines += [row(name, [Part(name)] + ([q for q in a.parts if q not in shown] if name == OTHER else []))
            for name in AFTER]
  unknown = f" ({', '.join(a.unattributed_ops)})" if a.unattributed_ops else ""
  lines.append(f"| ops not in the step's HLO{unknown} | {1e3 * a.unattributed_seconds:,.2f} | "
               f"{100 * a.unattributed_seconds / wall:.1f}% | | | " + " | ".join("" for _ in names) + " |")
  lines.append(row("**all ops**", list(a.parts), a.total_seconds()))
  gap = wall - a.total_seconds()
  lines.append(f"between ops (launch gaps, host work, waiting): {1e3 * gap:,.2f} ms per step ({100 * gap / wall:.1f}%)"
               if gap >= 0 else f"the ops' times add up to more than the step: they overlapped on {len(a.lines)} "
               "streams or threads")
  return lines


def _order(name: str) -> int:
  return FORWARD.index(name) if name in FORWARD else len(FORWARD)


def _planes(lines: Sequence[str]) -> list[str]:
  planes = collections.Counter(line.rsplit("/", 1)[0] for line in lines)
  return [f"{plane} ({n} {'lines' if n > 1 else 'line'})" for plane, n in planes.items()]


def format_whole(compiled: jax.stages.Compiled) -> list[str]:
  """XLA's own count of the whole compiled step, and how the tables count."""
  try:
    cost = compiled_cost(compiled)
    roofs = ", ".join(f"{n} {1e3 * roofline(cost, *ROOFLINES[n]):,.2f} ms" for n in ROOFLINES)
    whole = (f"XLA's cost analysis of the whole compiled step (while loops counted once): {cost.flops / 1e9:,.1f} "
             f"GFLOP, {cost.bytes / 1e9:,.2f} GB; roofline {roofs}")
  except Exception as e:  # pylint: disable=broad-except
    whole = f"XLA's cost analysis of the whole step is not available here: {type(e).__name__}: {e}"
  return [whole, "In the tables, parts: by the op names (JAX name stacks) of the instructions the device ran; "
          "GFLOP: matrix products and convolutions; GB: operands + results of each instruction run; both every "
          "execution counted (loops as often as they ran)."]
