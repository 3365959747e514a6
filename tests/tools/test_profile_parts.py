"""The per-part profile of a compiled step (`benchmark.py --profile`): op events read from JAX's profiler, mapped to
HLO instructions and their op names, summed per part of the model."""

import gzip
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zegot_jax import config_lib
from zegot_jax.models import clip as clip_lib
from zegot_jax.tools import device_trace, hlo_ops, profile_parts
from zegot_jax.tools.bench import Bench
from zegot_jax.tools.costs import compiled_cost
from zegot_jax.tools.profile_parts import OTHER, TEACHER, Part

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCOPES = (("big", ("big",)), ("small", ("small",)))


def two_matmuls(a, b):
  """A large and a small product under two name scopes, and an unscoped loop of small products."""
  with jax.named_scope("big"):
    x = jnp.tanh(a @ a)
  with jax.named_scope("small"):
    y = jnp.tanh(b @ b)
  _, z = jax.lax.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, c[1] @ b), (0, y))
  return x.sum() + z.sum()


def test_the_bigger_scope_gets_most_of_the_time_and_every_op_a_part():
  a, b = jnp.ones((512, 512)), jnp.ones((16, 16))
  compiled = jax.jit(two_matmuls).lower(a, b).compile()
  module = hlo_ops.parse(compiled.as_text())
  steps = 3
  events = device_trace.trace(lambda: [jax.block_until_ready(compiled(a, b)) for _ in range(steps)])
  result = profile_parts.attribute(events, module, steps, lambda op: profile_parts.classify(op, SCOPES))

  assert result.unattributed_seconds == 0.0 and result.foreign_events == 0  # every op event names an instruction
  assert set(result.parts) <= {Part("big"), Part("small"), Part(OTHER)}
  assert result.parts[Part("big")].seconds > 0.8 * result.total_seconds()
  # the sum of the parts is the total own time of the events: nothing counted twice, nothing lost
  np.testing.assert_allclose(result.total_seconds(), 1e-9 * sum(e.self_ns for e in events) / steps, rtol=1e-9)
  # FLOPs per step: each product once, the loop's as many times as it ran
  assert result.parts[Part("big")].cost.flops == 2 * 512**3
  assert result.parts[Part("small")].cost.flops == 2 * 16**3
  assert result.parts[Part(OTHER)].cost.flops == 5 * 2 * 16**3


def test_own_times_count_nested_events_once():
  """A loop's event encloses its body's: each event keeps the time no event inside it took."""
  line = "/host:CPU/thread"
  events = [device_trace.OpEvent("while", "m", line, 0, 100), device_trace.OpEvent("body.1", "m", line, 10, 20),
            device_trace.OpEvent("body.2", "m", line, 40, 10), device_trace.OpEvent("after", "m", line, 120, 5),
            device_trace.OpEvent("other_thread", "m", "/host:CPU/t2", 0, 50)]
  own = {e.hlo_op: e.self_ns for e in device_trace.own_times(events)}
  assert own == {"while": 70, "body.1": 20, "body.2": 10, "after": 5, "other_thread": 50}
  assert sum(own.values()) == 100 + 5 + 50  # the time the outermost events cover


def _write_json_trace(directory, events):
  run = directory / "plugins" / "profile" / "run"
  run.mkdir(parents=True)
  with gzip.open(run / "host.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)


def test_json_trace_prefers_the_device_streams(tmp_path):
  """A GPU-shaped trace, as JSON: kernels on the device's stream lines, launches on the host's threads (their op
  events must not be counted again), and a derived line beside the streams."""
  meta = [dict(ph="M", pid=1, name="process_name", args=dict(name="/device:GPU:0")),
          dict(ph="M", pid=1, tid=7, name="thread_name", args=dict(name="Stream #7(Kernel)")),
          dict(ph="M", pid=1, tid=99, name="thread_name", args=dict(name="XLA Ops")),
          dict(ph="M", pid=2, name="process_name", args=dict(name="/host:CPU")),
          dict(ph="M", pid=2, tid=3, name="thread_name", args=dict(name="python"))]
  kernel = lambda tid, op, ts: dict(ph="X", pid=1, tid=tid, ts=ts, dur=2.0, name=op,  # noqa: E731
                                    args=dict(hlo_op=op, hlo_module="jit_step"))
  launch = dict(ph="X", pid=2, tid=3, ts=0.0, dur=1.0, name="launch", args=dict(hlo_op="fusion.1"))
  _write_json_trace(tmp_path, meta + [kernel(7, "fusion.1", 1.0), kernel(7, "gemm.2", 4.0), kernel(99, "fusion.1", 1.0),
                                      launch])
  events = device_trace.read(tmp_path, host_ops=False)
  assert [(e.hlo_op, e.module, e.line, e.self_ns) for e in events] == [
      ("fusion.1", "jit_step", "/device:GPU:0/Stream #7(Kernel)", 2000.0),
      ("gemm.2", "jit_step", "/device:GPU:0/Stream #7(Kernel)", 2000.0)]


def test_a_profile_with_no_op_events_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no .*xplane.pb"):
    device_trace.read(tmp_path, host_ops=True)
  host = [dict(ph="M", pid=2, name="process_name", args=dict(name="/host:CPU")),
          dict(ph="X", pid=2, tid=3, ts=0.0, dur=1.0, name="launch", args=dict(hlo_op="fusion.1"))]
  _write_json_trace(tmp_path, host)
  assert len(device_trace.read(tmp_path, host_ops=True)) == 1  # the CPU backend: its ops run on the host
  with pytest.raises(ValueError, match="no op events of the device"):  # a GPU's launches are no kernel times
    device_trace.read(tmp_path, host_ops=False)


def test_hlo_flops_and_bytes_match_xla_on_products_and_convolutions():
  def f(a, b, x, k):
    y = jnp.tanh(a @ b) @ b
    z = jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.sum() + z.sum()

  args = jnp.ones((256, 128)), jnp.ones((128, 128)), jnp.ones((2, 16, 16, 8)), jnp.ones((3, 3, 8, 16))
  compiled = jax.jit(f).lower(*args).compile()
  ours = sum((x.cost for x in hlo_ops.parse(compiled.as_text()).executed().values()), hlo_ops.Cost(0.0, 0.0))
  assert ours.flops == 2 * 256 * 128 * 128 * 2 + 2 * (2 * 14 * 14 * 16) * (3 * 3 * 8)
  xla = compiled_cost(compiled)
  np.testing.assert_allclose(ours.flops, xla.flops, rtol=0.01)  # XLA adds the elementwise FLOPs
  np.testing.assert_allclose(ours.bytes, xla.bytes, rtol=0.05)


# What XLA's GPU backend prints (abridged): matrix products and convolutions become library calls whose results
# carry scratch space, and a while loop's body runs on its own.
GPU_HLO = """HloModule jit_f, is_scheduled=true, entry_computation_layout={(f32[256,128]{1,0})->f32[256,64]{1,0}}

%fused_tanh (param_0: f32[256,64]) -> f32[256,64] {
  %param_0 = f32[256,64]{1,0} parameter(0)
  ROOT %tanh.1 = f32[256,64]{1,0} tanh(%param_0), metadata={op_name="jit(f)/small/tanh" stack_frame_id=3}
}

%body (p.1: (s32[], f32[256,64])) -> (s32[], f32[256,64]) {
  %p.1 = (s32[], f32[256,64]{1,0}) parameter(0)
  %gte.1 = f32[256,64]{1,0} get-tuple-element(%p.1), index=1
  %gte.2 = s32[] get-tuple-element(%p.1), index=0
  %fusion.2 = f32[256,64]{1,0} fusion(%gte.1), kind=kLoop, calls=%fused_tanh, \
    metadata={op_name="jit(f)/while/body/small/tanh"}
  ROOT %tuple.1 = (s32[], f32[256,64]{1,0}) tuple(%gte.2, %fusion.2)
}

%cond (p.2: (s32[], f32[256,64])) -> pred[] {
  %p.2 = (s32[], f32[256,64]{1,0}) parameter(0)
  %gte.3 = s32[] get-tuple-element(%p.2), index=0
  %constant.3 = s32[] constant(5)
  ROOT %lt.1 = pred[] compare(%gte.3, %constant.3), direction=LT, metadata={op_name="jit(f)/while/cond/lt"}
}

ENTRY %main.5 (a.1: f32[256,128], x.1: f32[2,16,16,8], k.1: f32[3,3,8,16], q.1: bf16[2,197,12,64]) -> f32[256,64] {
  %a.1 = f32[256,128]{1,0} parameter(0), metadata={op_name="a"}
  %x.1 = f32[2,16,16,8]{3,2,1,0} parameter(1), metadata={op_name="x"}
  %k.1 = f32[3,3,8,16]{3,2,1,0} parameter(2), metadata={op_name="k"}
  %q.1 = bf16[2,197,12,64]{3,2,1,0} parameter(3), metadata={op_name="q"}
  %fmha.1 = (bf16[2,197,12,64]{3,2,1,0}, u8[0]{0}) custom-call(%q.1, %q.1, %q.1), \
    custom_call_target="__cudnn$fmhaSoftmax", metadata={op_name="jit(f)/big/dot_product_attention"}, \
    backend_config={"operation_queue_id":"0","cudnn_fmha_backend_config":{"fmha_scale":0.125, \
    "intermediate_tensor_shape":{"element_type":"BF16","dimensions":["2","12","197","197"],"tuple_shapes":[]}, \
    "is_flash_attention":true,"bmm1_dot_dimension_numbers":{"lhs_contracting_dimensions":["3"], \
    "rhs_contracting_dimensions":["3"],"lhs_batch_dimensions":["0","2"],"rhs_batch_dimensions":["0","2"]}}}
  %b.1 = f32[128,64]{1,0} constant({...})
  %custom-call.1 = (f32[256,64]{1,0}, s8[4194304]{0}) custom-call(%a.1, %b.1), custom_call_target="__cublas$gemm", \
    metadata={op_name="jit(f)/big/dot_general" stack_frame_id=2}, backend_config={"operation_queue_id":"0", \
    "gemm_backend_config":{"alpha_real":1,"beta":0,"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"], \
    "rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]},"epilogue":"DEFAULT"}}
  %cudnn-conv.1 = (f32[2,14,14,16]{3,2,1,0}, u8[0]{0}) custom-call(%x.1, %k.1), window={size=3x3}, \
    dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convForward", \
    metadata={op_name="jit(f)/big/conv_general_dilated"}
  %get-tuple-element.1 = f32[256,64]{1,0} get-tuple-element(%custom-call.1), index=0
  %constant.1 = s32[] constant(0)
  %tuple.2 = (s32[], f32[256,64]{1,0}) tuple(%constant.1, %get-tuple-element.1)
  %while.1 = (s32[], f32[256,64]{1,0}) while(%tuple.2), condition=%cond, body=%body, metadata={op_name="jit(f)/while"}
  ROOT %get-tuple-element.2 = f32[256,64]{1,0} get-tuple-element(%while.1), index=1
}
"""


def test_gpu_library_calls_and_loop_bodies_are_read_from_the_hlo():
  module = hlo_ops.parse(GPU_HLO)
  assert (module.name, module.entry, module.own) == ("jit_f", "main.5", {"main.5", "body", "cond"})
  executed = module.executed()
  assert "tanh.1" not in executed  # fused: it runs as part of fusion.2
  gemm, conv, fusion = executed["custom-call.1"], executed["cudnn-conv.1"], executed["fusion.2"]
  assert gemm.cost == hlo_ops.Cost(2 * 256 * 64 * 128, 4 * (256 * 128 + 128 * 64 + 256 * 64))  # no scratch space
  assert conv.cost.flops == 2 * (2 * 14 * 14 * 16) * (3 * 3 * 8)
  assert executed["fmha.1"].cost.flops == 4 * (2 * 12 * 197 * 197) * 64  # Q·Kᵀ and P·V
  assert fusion.computation == "body" and fusion.cost == hlo_ops.Cost(0, 2 * 4 * 256 * 64)
  assert [op for op, _ in fusion.op_names] == ["jit(f)/while/body/small/tanh", "jit(f)/small/tanh"]
  assert profile_parts.instruction_part(gemm, lambda op: profile_parts.classify(op, SCOPES)) == Part("big")


# ---------------------------------------------------------------------------------- the ZegOT train step


@pytest.fixture(scope="module")
def tiny_step():
  """VOC's transductive train step with the tiny CLIP, compiled once: (bench, compiled, module)."""
  config = config_lib.load_config(str(ROOT / "configs" / "voc12_zs3.py") + ":runlocal=True")
  config.dataset = "voc12_zs3"  # 15 seen + 5 unseen classes: phase 2 has a teacher
  bench = Bench(config, 1, jnp.float32, clip_config=clip_lib.tiny_config())
  compiled = jax.jit(bench.train_step(), donate_argnums=0).lower(*bench.train_args(1)).compile()
  return bench, compiled, hlo_ops.parse(compiled.as_text())


def test_op_names_of_the_train_step_go_to_their_parts(tiny_step):
  """Real op names of the compiled step: each kind goes to its part, backward ops (transpose(...)) to the backward
  of theirs, the teacher's branch of the step's cond to the teacher."""
  module = tiny_step[2]
  teacher = profile_parts.teacher_branches(module.op_names())
  parts = {op: profile_parts.classify(op, teacher=teacher) for op in module.op_names()
           if op.startswith("jit(train_step)/") and ";" not in op}  # ops, not the arguments' names

  def parts_of(*words, absent=()):
    found = {p for op, p in parts.items() if all(w in op for w in words) and not any(w in op for w in absent)}
    assert found, f"no op name with {words} in the compiled step"
    return found

  student, forward = ("cond/branch",), ("cond/branch", "transpose(")
  assert parts_of("vision_model") == {Part("image tower")}  # frozen: no backward, computed once for both
  assert parts_of("ZegOT.encode_images/") == {Part("image tower")}  # normalization, pooled embedding
  assert parts_of("text_model", absent=forward) == {Part("text tower")}
  assert parts_of("text_model", "transpose(") == {Part("text tower", backward=True)}
  assert parts_of("ZegOT.align/", absent=forward) == {Part("GA + DFA")}
  assert parts_of("ZegOT.match/", absent=forward) == {Part("MPOT")}
  assert parts_of("ZegOT.match/", "transpose(") == {Part("MPOT", backward=True)}
  assert parts_of("ZegOT.head/decoder/", absent=forward) == {Part("decoder")}
  assert parts_of("ZegOT.head/decoder/", "transpose(") == {Part("decoder", backward=True)}
  assert parts_of("losses", absent=forward) == {Part("losses")}
  assert parts_of("losses", "transpose(") == {Part("losses", backward=True)}
  assert parts_of("optimizer/", absent=student) == {Part("optimizer (AdamW)")}
  assert parts_of("cond/branch", "ZegOT.decode/ZegOT.match/") == {Part(TEACHER)}
  assert Part(OTHER) in parts.values()  # what no scope claims: the photometric distortion, metrics, ...


def test_profile_of_the_train_step_accounts_for_every_op(tiny_step):
  bench, compiled, module = tiny_step
  [phase2] = profile_parts.profile(compiled, {"phase 2": lambda: bench.train_args(2)},
                                   lambda args, out: (out[0], *args[1:]), calls=1, warmup=1)  # a generator
  assert phase2.failure == "" and phase2.wall_seconds > 0
  result = phase2.attribution
  assert result.unattributed_seconds == 0.0 and result.steps == 1
  for name in profile_parts.FORWARD + (TEACHER,):
    assert result.parts[Part(name)].seconds > 0, name
  assert result.parts[Part("MPOT")].cost.bytes > 0
  table = "\n".join(profile_parts.format_phase(phase2))
  assert "| **all ops** |" in table and "| teacher (phase 2) |" in table
  ms = float(table.split("| **all ops** | ")[1].split(" |")[0].replace(",", ""))
  np.testing.assert_allclose(ms, 1e3 * result.total_seconds(), atol=0.01)


def test_a_failed_attribution_still_reports_the_step():
  failed = profile_parts.PhaseProfile("train step, phase 1", 0.0615, None, "ValueError: no op events")
  assert profile_parts.format_phase(failed) == [
      "### train step, phase 1: 61.5 ms per step (wall clock, the fastest call)",
      "per-part attribution failed: ValueError: no op events"]


def test_profile_refuses_cost_only_mode_in_one_line():
  run = subprocess.run([sys.executable, "-m", "zegot_jax.tools.benchmark", "--config", "configs/voc12_zs3.py",
                        "--profile", "--cost_only_iterations", "3"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1].startswith("error: --profile runs the step")
