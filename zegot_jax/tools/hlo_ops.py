"""The instructions of a compiled XLA program that run on their own, read from its HLO text
(`jax.jit(f).lower(...).compile().as_text()`): for each, the JAX op names it was made from and what one execution
costs.

An HLO module is a set of computations. Some run on their own: the entry, the bodies and conditions of while loops,
the branches of conditionals, the targets of calls. Their instructions are what a profiler sees, one event (or a
few kernels) per execution, named by the instruction (its `hlo_op`). The others are embedded: a fusion's fused
computation, a reduction's reducer; their instructions run as part of the instruction that calls them.

Every instruction carries `metadata={op_name="jit(step)/jvp(ZegOT.decode)/ZegOT.match/..."}`, the JAX name stack
of the op it came from. A fusion's own op name is that of one of its ops (often the root, a reduction, a
convert), so an instruction that runs on its own is described by the op names of everything fused into it, each
weighed by its work (`Executed.op_names`).

Its cost, for a roofline: FLOPs of the matrix products, convolutions and fused attentions in it (2 per
multiply-add, also where the GPU backend calls cuBLAS or cuDNN for them; elementwise FLOPs are not counted), and
bytes accessed as the sizes of its operands and its result, as XLA's cost analysis counts them for a loop-free
program (a fusion that reads a slice of an operand is charged the whole operand; a library call's scratch space,
the trailing arrays of its result, is not counted).
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from zegot_jax.tools.costs import Cost

# Instructions that move no data of their own: bookkeeping, or control flow whose bodies are counted themselves.
FREE = frozenset({"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional", "call",
                  "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency", "domain"})
# (attribute, computation that runs on its own?) for the attributes that name called computations.
_CALLS = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_CALL_LISTS = re.compile(r"\b(branch_computations|called_computations)=\{([^}]*)\}")
_OWN = {"body", "condition", "true_computation", "false_computation", "branch_computations"}  # + call's to_apply
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s+=\s+(.*)$")
_ARRAY = re.compile(r"\b(pred|token|[a-z]+\d+[a-z0-9]*)\[([^\]]*)\]")
_OP_NAME = re.compile(r'metadata=\{[^{}]*?op_name="((?:[^"\\]|\\.)*)"')


class Instruction(NamedTuple):
  name: str
  opcode: str
  computation: str
  shape: str  # the result's shape, e.g. "f32[16,16]{1,0}" or a tuple "(f32[2]{0}, s32[])"
  operands: tuple[str, ...]
  attributes: str  # everything after the operands
  op_name: str  # "" when it has none


class Executed(NamedTuple):
  """An instruction that runs on its own: what a profiler event names."""

  name: str
  computation: str
  op_names: tuple[tuple[str, float], ...]  # (op name, weight: FLOPs, or elements written) of it and its fusion
  cost: Cost  # one execution


class HloModule(NamedTuple):
  name: str
  entry: str
  instructions: dict[str, Instruction]  # every instruction, by name (names are unique in a module)
  computations: dict[str, list[str]]  # computation → its instructions' names, in order
  own: frozenset[str]  # the computations that run on their own (the entry and those reached by control flow)

  def op_names(self) -> list[str]:
    return [i.op_name for i in self.instructions.values() if i.op_name]

  def executed(self) -> dict[str, Executed]:
    """Every instruction of the computations that run on their own, with its op names and cost."""
    return {name: Executed(name, i.computation, tuple(self._weighed_op_names(i)), self._cost(i))
            for name, i in self.instructions.items() if i.computation in self.own}

  def _embedded(self, instruction: Instruction) -> list[Instruction]:
    """The instructions run as part of `instruction` (those of its fused or reducer computations), recursively."""
    inner = []
    for computation, runs_alone in called_computations(instruction):
      if not runs_alone:
        for name in self.computations.get(computation, []):
          inner.append(self.instructions[name])
          inner.extend(self._embedded(self.instructions[name]))
    return inner

  def _weighed_op_names(self, instruction: Instruction) -> list[tuple[str, float]]:
    members = [instruction] + [i for i in self._embedded(instruction) if i.opcode not in FREE]
    return [(i.op_name, max(self._flops(i), elements(i.shape), 1.0)) for i in members if i.op_name]

  def _cost(self, instruction: Instruction) -> Cost:
    if instruction.opcode in FREE:
      return Cost(0.0, 0.0)
    flops = sum(self._flops(i) for i in [instruction] + self._embedded(instruction))
    read = sum(nbytes(self.instructions[o].shape) for o in instruction.operands if o in self.instructions)
    result = first_array(instruction.shape) if instruction.opcode == "custom-call" else instruction.shape
    return Cost(flops, read + nbytes(result))

  def _flops(self, instruction: Instruction) -> float:
    """2 × multiply-adds of a matrix product or convolution (also as a GPU library call); 0 for anything else,
    and for an instruction whose operands cannot be read."""
    try:
      return self._product_flops(instruction)
    except (KeyError, IndexError):
      return 0.0

  def _product_flops(self, instruction: Instruction) -> float:
    operand = lambda k: self.instructions[instruction.operands[k]].shape  # noqa: E731
    target = re.search(r'custom_call_target="([^"]*)"', instruction.attributes)
    target = target.group(1) if target and instruction.opcode == "custom-call" else ""
    result = elements(first_array(instruction.shape))
    if instruction.opcode == "dot" or target.startswith("__cublas"):  # (batch ×) rows × columns × contracted
      contracted = _dims(r"lhs_contracting_dims=\{([\d,]*)\}" if instruction.opcode == "dot"
                         else r'"lhs_contracting_dimensions":\[([^\]]*)\]', instruction.attributes)
      return 2.0 * result * math.prod(dims(operand(0))[d] for d in contracted)
    if instruction.opcode == "convolution" or (target and "dim_labels=" in instruction.attributes):
      return 2.0 * result * _kernel_taps(instruction.attributes, operand(1))
    if target.startswith("__cudnn$fmha"):  # Q·Kᵀ and P·V forward; 4 products and Q·Kᵀ again backward
      scores = _dims(r'"intermediate_tensor_shape":\{[^{}]*?"dimensions":\[([^\]]*)\]', instruction.attributes)
      products = 5 if "Backward" in target else 2
      return 2.0 * products * math.prod(scores) * dims(operand(0))[-1]
    return 0.0


def parse(text: str) -> HloModule:
  """The module in `text`, HLO as `Compiled.as_text()` prints it."""
  header = re.match(r"\s*HloModule\s+([\w.\-]+)", text)
  if not header:
    raise ValueError("not HLO text: it does not start with 'HloModule <name>'")
  instructions, computations, entry, current = {}, {}, "", None
  for line in text.splitlines():
    if current is None:
      if m := _COMPUTATION.match(line):
        current = m.group(2)
        computations[current] = []
        entry = current if m.group(1) else entry
      continue
    if line.strip() == "}":
      current = None
    elif m := _INSTRUCTION.match(line):
      instruction = _instruction(m.group(1), m.group(2), current)
      instructions[instruction.name] = instruction
      computations[current].append(instruction.name)
  if not entry:
    raise ValueError(f"HLO module {header.group(1)} has no ENTRY computation")
  return HloModule(header.group(1), entry, instructions, computations, _runs_alone(entry, instructions, computations))


def _instruction(name: str, text: str, computation: str) -> Instruction:
  """`text`: what follows '<name> = ', i.e. '<shape> <opcode>(<operands>), <attributes>'."""
  shape_end = _closing(text, 0) + 1 if text.startswith("(") else text.index(" ")
  shape, rest = text[:shape_end], text[shape_end:].lstrip()
  opcode = rest[:rest.index("(")]
  close = _closing(rest, len(opcode))
  operands = tuple(re.findall(r"%([\w.\-]+)", rest[len(opcode):close + 1]))
  if not operands:  # printed without '%'
    operands = tuple(w for w in re.findall(r"([\w.\-]+)\s*(?:,|$)", rest[len(opcode) + 1:close]) if w)
  attributes = rest[close + 1:]
  op_name = _OP_NAME.search(attributes)
  return Instruction(name, opcode, computation, shape, operands, attributes, op_name.group(1) if op_name else "")


def _closing(text: str, start: int) -> int:
  """The index of the bracket that closes the one at `start`, skipping quoted strings."""
  depth, quoted = 0, False
  for k in range(start, len(text)):
    c = text[k]
    if c == '"' and text[k - 1] != "\\":
      quoted = not quoted
    elif not quoted and c in "({[":
      depth += 1
    elif not quoted and c in ")}]":
      depth -= 1
      if depth == 0:
        return k
  raise ValueError(f"unbalanced brackets in HLO: {text[:120]!r}")


def called_computations(instruction: Instruction) -> list[tuple[str, bool]]:
  """(computation, runs on its own?) for each computation `instruction` calls."""
  called = [(name, key in _OWN or (key == "to_apply" and instruction.opcode == "call")
             or (key == "calls" and instruction.opcode.endswith("-start")))
            for key, name in _CALLS.findall(instruction.attributes)]
  for key, names in _CALL_LISTS.findall(instruction.attributes):
    called += [(n.strip().lstrip("%"), key in _OWN) for n in names.split(",") if n.strip()]
  return called


def _runs_alone(entry: str, instructions: dict[str, Instruction], computations: dict[str, list[str]]
                ) -> frozenset[str]:
  own, todo = set(), [entry]
  while todo:
    computation = todo.pop()
    if computation in own:
      continue
    own.add(computation)
    for name in computations.get(computation, []):
      todo += [c for c, alone in called_computations(instructions[name]) if alone]
  return frozenset(own)


def dims(shape: str) -> list[int]:
  """The dimensions of the (first) array in `shape`."""
  m = _ARRAY.search(shape)
  return [int(d.lstrip("<=")) for d in m.group(2).split(",") if d] if m else []


def first_array(shape: str) -> str:
  """A library call's result is often (result, scratch space): its first array."""
  m = _ARRAY.search(shape)
  return m.group(0) if m else shape


def elements(shape: str) -> float:
  return float(sum(math.prod(int(d.lstrip("<=")) for d in m.group(2).split(",") if d)
                   for m in _ARRAY.finditer(shape)))


def nbytes(shape: str) -> float:
  """Bytes of every array in `shape` (tuples summed): pred is a byte, others their bit width / 8."""
  total = 0.0
  for m in _ARRAY.finditer(shape):
    dtype = m.group(1)
    width = 8 if dtype == "pred" else 0 if dtype == "token" else int(re.search(r"\d+", dtype).group())
    total += math.prod(int(d.lstrip("<=")) for d in m.group(2).split(",") if d) * width / 8
  return total


def _dims(pattern: str, attributes: str) -> list[int]:
  m = re.search(pattern, attributes)
  return [int(d.strip().strip('"')) for d in m.group(1).split(",") if d.strip()] if m else []


def _kernel_taps(attributes: str, kernel_shape: str) -> float:
  """Multiply-adds per output element of a convolution: the kernel's size over all but its output features."""
  labels = re.search(r"dim_labels=[^_]+_([^-]+)->", attributes)
  kernel = dims(kernel_shape)
  if not labels or len(labels.group(1)) != len(kernel):
    return float(math.prod(kernel))
  return float(math.prod(size for label, size in zip(labels.group(1), kernel) if label != "o"))
