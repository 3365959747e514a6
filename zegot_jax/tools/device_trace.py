"""The XLA ops a device ran while a function was traced by JAX's profiler: one `OpEvent` per execution of an HLO
instruction, with the time it took itself.

`jax.profiler.trace(dir)` writes `dir/plugins/profile/<run>/<host>.xplane.pb` (and, in the JAX versions we know,
a `<host>.trace.json.gz` beside it). Where the ops are:
- GPU: on the device's plane (`/device:GPU:0`), one line per stream, one event per kernel or copy; XLA's
  annotation gives each the stats `hlo_op` (the instruction) and `hlo_module` (the program).
- CPU: on the host's plane (`/host:CPU`), on the threads of XLA's executor, one event per instruction (a thunk)
  with the same two stats. A while loop's or a conditional's event encloses the events of its body.
So: the device planes' events that name an `hlo_op`; the host's only on the CPU backend (on a GPU they would be
the launches, not the kernels). An event's own time is its duration less that of the op events directly inside
it on the same line, so nested events are counted once. The xplane is read with `jax.profiler.ProfileData`; the
JSON trace is the fallback.
"""

from __future__ import annotations

import collections
import gzip
import json
import pathlib
import tempfile
from typing import Any, Callable, Iterable, NamedTuple

import jax


class OpEvent(NamedTuple):
  hlo_op: str  # the instruction's name
  module: str  # the program's name (`hlo_module`), "" when the event does not say
  line: str  # "<plane>/<line>": a stream or a thread
  start_ns: float
  duration_ns: float
  self_ns: float = 0.0  # the duration less the op events directly nested in it (set by `own_times`)


def trace(run: Callable[[], Any]) -> list[OpEvent]:
  """The op events of everything `run()` puts on the device (it must wait for its results)."""
  with tempfile.TemporaryDirectory(prefix="zegot_profile_") as directory:
    with jax.profiler.trace(directory):
      run()
    return read(pathlib.Path(directory), host_ops=jax.default_backend() == "cpu")


def read(directory: pathlib.Path, host_ops: bool) -> list[OpEvent]:
  """The op events of the profile that `jax.profiler.trace` wrote under `directory`, with their own times.
  `host_ops`: the ops run on the host (the CPU backend); else only a device plane's count."""
  xplanes = sorted(directory.glob("plugins/profile/*/*.xplane.pb"))
  traces = sorted(directory.glob("plugins/profile/*/*.trace.json.gz"))
  if not xplanes and not traces:
    raise FileNotFoundError(f"the profiler wrote no *.xplane.pb nor *.trace.json.gz under {directory}")
  try:
    raw = [e for path in xplanes for e in _xplane_events(path)]
  except Exception:  # pylint: disable=broad-except  (a profile format this JAX cannot read: try the JSON)
    raw = []
  if not raw:
    raw = [e for path in traces for e in _json_events(path)]
  events = _device_or_host(raw, host_ops)
  if not events:
    planes = sorted({p for p, _, _ in raw})
    raise ValueError(f"the profile holds no op events of the {'host' if host_ops else 'device'} (op events on "
                     f"{planes or 'no plane'}; a GPU needs CUPTI, which comes with the CUDA toolkit's libraries)")
  return own_times(events)


def _device_or_host(events: list[tuple[str, str, OpEvent]], host_ops: bool) -> list[OpEvent]:
  """The op events of the device planes if there are any, else (`host_ops`) the host's. Each item: (plane,
  line, event). On a device plane with stream lines, only those (other lines would be derived copies)."""
  device = [(p, l, e) for p, l, e in events if p.startswith("/device:")]
  if device:
    streams = {p for p, l, _ in device if l.startswith("Stream")}
    return [e for p, l, e in device if p not in streams or l.startswith("Stream")]
  return [e for p, _, e in events if p.startswith("/host:")] if host_ops else []


def _xplane_events(path: pathlib.Path) -> Iterable[tuple[str, str, OpEvent]]:
  profile = jax.profiler.ProfileData.from_file(str(path))
  for plane in profile.planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if stats.get("hlo_op"):
          yield plane.name, line.name, OpEvent(str(stats["hlo_op"]), str(stats.get("hlo_module", "")),
                                               f"{plane.name}/{line.name}", float(event.start_ns),
                                               float(event.duration_ns))


def _json_events(path: pathlib.Path) -> Iterable[tuple[str, str, OpEvent]]:
  """Chrome trace format: 'M' events name processes (planes) and threads (lines); 'X' events are timed, in µs."""
  with gzip.open(path, "rt") as f:
    events = json.load(f).get("traceEvents", [])
  planes, lines = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      planes[e["pid"]] = e["args"]["name"]
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      lines[e["pid"], e["tid"]] = e["args"]["name"]
  for e in events:
    args = e.get("args", {})
    if e.get("ph") == "X" and args.get("hlo_op"):
      plane, line = planes.get(e["pid"], ""), lines.get((e["pid"], e.get("tid")), str(e.get("tid")))
      yield plane, line, OpEvent(str(args["hlo_op"]), str(args.get("hlo_module", "")), f"{plane}/{line}",
                                 1e3 * float(e["ts"]), 1e3 * float(e.get("dur", 0.0)))


def own_times(events: list[OpEvent]) -> list[OpEvent]:
  """`events` with `self_ns` set: each event's duration less the durations of the events directly inside it on
  its line. The own times of a line's events add up to the time covered by its outermost events."""
  by_line = collections.defaultdict(list)
  for e in events:
    by_line[e.line].append(e)
  out = []
  for line_events in by_line.values():
    line_events.sort(key=lambda e: (e.start_ns, -e.duration_ns))
    inner = [0.0] * len(line_events)  # time of the events directly inside each event
    open_ = []  # indices of the events enclosing the current one, outermost first
    for k, e in enumerate(line_events):
      while open_ and _end(line_events[open_[-1]]) <= e.start_ns:
        open_.pop()
      if open_:  # (clipped to its parent, should the clocks let it stick out)
        inner[open_[-1]] += min(_end(e), _end(line_events[open_[-1]])) - e.start_ns
      open_.append(k)
    out += [e._replace(self_ns=e.duration_ns - t) for e, t in zip(line_events, inner)]
  return out


def _end(event: OpEvent) -> float:
  return event.start_ns + event.duration_ns
