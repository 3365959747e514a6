r"""Our Flax CLIP towers against transformers' PyTorch `CLIPModel` (sdpa attention), same weights, same device, in
one run: PyTorch eager and compiled (`torch.compile`), ours with each attention implementation.

  python -m zegot_jax.tools.benchmark_clip                       # float32 and bfloat16; 224² × 4 and 512² × 1
  python -m zegot_jax.tools.benchmark_clip --dtypes bfloat16 --images 224x64,512x16     # the issue's targets
  python -m zegot_jax.tools.benchmark_clip --attention xla --torch_compile=false --repeats 10

Both load one random checkpoint with openai/clip-vit-base-patch16's shapes (written by transformers, read by our
`from_pretrained`). PyTorch runs on the device JAX runs on (CUDA when JAX's backend is a GPU and torch sees one),
its inputs placed there, each call followed by `torch.cuda.synchronize()`. Image tower: the pooled, projected
embedding of a batch (transformers with `interpolate_pos_encoding` above 224²). Text tower: --prompts prompts
padded to 77 tokens with their attention mask. Ours runs with each implementation of --attention ("xla", "cudnn":
cuDNN's fused attention, skipped with its reason where it cannot run, e.g. on a CPU or in float32).

Printed as measured, slowest last (so that a time limit cuts the least): per input, ours (each implementation)
and PyTorch eager, calls interleaved after one warm-up call each (the median of --repeats), each row with the rate
on the tower's FLOPs (XLA's count of our tower), the speed against PyTorch eager (PyTorch's time over the row's:
above 1 is faster than PyTorch) and the relative difference of the outputs from PyTorch eager's, so that a fast
wrong answer shows; an implementation that fails gets "failed: ..." in its row. Then the ratios ours / PyTorch
eager, with the issue's targets for the image tower in bfloat16; (--matmuls) one matrix product of each shape the
towers spend their FLOPs in, in XLA and PyTorch: a tower cannot run faster than its matrix products; and last
PyTorch under `torch.compile`, each input compiled by its first call, with ours / compiled ("compile failed:
..." where it does not compile). Needs torch (the `test` extra).
"""

from __future__ import annotations

import functools
import pathlib
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from zegot_jax import cli, errors
from zegot_jax.models import attention, encoder_checkpoint, prompts
from zegot_jax.models.clip import CLIP
from zegot_jax.models.clip_reference import random_torch_model, save_with_tokenizer
from zegot_jax.tools import costs

# The issue's targets: our image tower in bfloat16 this many times as fast as transformers' PyTorch (sdpa, eager).
TARGETS = {(224, 64): 1.2, (512, 16): 1.5}
EAGER, COMPILED = "PyTorch sdpa, eager", "PyTorch sdpa, torch.compile"


def _is_shape(text: str, parts: int) -> bool:
  values = text.split("x")
  return len(values) == parts and all(v.isdigit() and int(v) > 0 for v in values)


class Input(NamedTuple):
  """One tower input: its name, the items per call, and each side's zero-argument call."""
  name: str
  dtype: str
  items: int  # images or prompts per call
  size: int | None  # image side; None for the text tower
  flops: float  # XLA's count of our tower (xla attention)
  ours: dict[str, Callable[[], Any] | str]  # implementation → call, or why it was skipped
  eager: Callable[[], Any]
  eager_raw: Callable[[], Any]  # the same computation, undecorated: what torch.compile compiles


class Row(NamedTuple):
  input: Input
  side: str
  seconds: float | None  # None: not measured (see note)
  difference: float | None
  note: str = ""


def vit_b16_checkpoint(directory: pathlib.Path) -> pathlib.Path:
  """A random transformers checkpoint with ViT-B/16's shapes and the byte-level tokenizer."""
  import transformers  # pylint: disable=g-import-not-at-top

  tokenizer = prompts.byte_level_tokenizer()
  config = transformers.CLIPConfig(
      text_config=dict(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                       num_attention_heads=8, eos_token_id=tokenizer.eos_token_id,
                       bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id),
      vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         image_size=224, patch_size=16),
      projection_dim=512)
  return save_with_tokenizer(random_torch_model(config, scale=0.02), directory)


# ----------------------------------------------------------------------------------------------- timing


def median_times(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
  """Median seconds of each zero-argument call, the calls interleaved so that load drifts hit all alike. Each call
  must wait for its device (block_until_ready, torch.cuda.synchronize)."""
  for call in calls.values():
    call()
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      start = time.perf_counter()
      call()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def relative_error(ours, reference) -> float:
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def torch_device(torch) -> tuple[Any, str]:
  """The device PyTorch runs on (JAX's kind), and a note when it cannot be JAX's."""
  if jax.default_backend() != "gpu":
    return torch.device("cpu"), ""
  if torch.cuda.is_available():
    return torch.device("cuda"), ""
  return torch.device("cpu"), "; JAX runs on the GPU but torch sees no CUDA device: PyTorch on the CPU"


def synchronized(torch, device, fn: Callable[[], Any]) -> Callable[[], Any]:
  """fn in inference mode, returning only once the device has finished it."""

  def call():
    with torch.inference_mode():
      out = fn()
    if device.type == "cuda":
      torch.cuda.synchronize()
    return out

  return call


def compiled_call(torch, device, fn: Callable[[], Any]) -> tuple[Callable[[], Any] | None, str]:
  """(torch.compile of fn, synchronized, already compiled and run once, "") or (None, "compile failed: ...")."""
  try:
    call = synchronized(torch, device, torch.compile(fn, dynamic=False))  # static shapes, no recompiling
    call()  # compiles
    return call, ""
  except Exception as e:  # pylint: disable=broad-except  (dynamo and inductor fail in many ways; report, go on)
    return None, f"compile failed: {errors.one_line(f'{type(e).__name__}: {e}')[:160]}"


# ----------------------------------------------------------------------------------------------- the inputs


def our_calls(implementations: list[str], model_for: Callable[[str], CLIP], method: Callable, dtype_name: str,
              head_dim: int, *args) -> tuple[dict[str, Callable[[], Any] | str], float]:
  """Implementation → zero-argument call of our tower (or why it is skipped here), and XLA's FLOP count."""
  calls = {}
  for implementation in implementations:
    why = attention.why_not_cudnn(dtype_name, head_dim=head_dim) if implementation == "cudnn" else None
    if why:
      calls[implementation] = f"skipped: {why}"
      continue
    fn = jax.jit(lambda *a, m=model_for(implementation): method(m, *a))
    calls[implementation] = lambda fn=fn: jax.block_until_ready(fn(*args))
  lowered = jax.jit(lambda *a: method(model_for("xla"), *a)).lower(*args)
  return calls, costs.compiled_cost(lowered.compile()).flops  # the lowered form's analysis is None on a GPU


def image_input(directory, reference, torch, device, implementations: list[str], dtype_name: str, size: int,
                batch: int, rng: np.random.Generator) -> Input:
  loaded = encoder_checkpoint.from_pretrained(directory, image_size=size, dtype=jnp.dtype(dtype_name))
  params = jax.device_put(loaded.params)  # host arrays: on the device once, not at every call
  pixels = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
  px_torch = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))).to(device, reference.dtype)

  def encode(model, p, x):
    return model.apply({"params": p}, x, method=CLIP.encode_image).image_embeds

  ours, flops = our_calls(implementations, lambda a: CLIP(loaded.config, dtype=jnp.dtype(dtype_name), attention=a),
                          encode, dtype_name, loaded.config.vision.head_dim, params, jax.device_put(pixels))

  def theirs():
    return _pooled(reference.get_image_features(pixel_values=px_torch, interpolate_pos_encoding=size != 224))

  return Input(f"image tower {size}² × {batch}", dtype_name, batch, size, flops, ours,
               synchronized(torch, device, theirs), theirs)


def text_input(directory, reference, torch, device, implementations: list[str], dtype_name: str,
               count: int) -> Input:
  loaded = encoder_checkpoint.from_pretrained(directory, dtype=jnp.dtype(dtype_name))
  params = jax.device_put(loaded.params)
  tokenizer = prompts.load_tokenizer(directory)
  names = [f"a photo of a class number {i}." for i in range(count)]
  encoded = tokenizer(names, padding="max_length", max_length=77, return_tensors="np")
  ids, mask = encoded["input_ids"], encoded["attention_mask"]

  def encode(model, p, i, m):
    return model.apply({"params": p}, i, m, method=CLIP.encode_text).text_embeds

  ours, flops = our_calls(implementations, lambda a: CLIP(loaded.config, dtype=jnp.dtype(dtype_name), attention=a),
                          encode, dtype_name, loaded.config.text.head_dim, params, jax.device_put(ids),
                          jax.device_put(mask))
  ids_t, mask_t = (torch.from_numpy(x.astype(np.int64)).to(device) for x in (ids, mask))

  def theirs():
    return _pooled(reference.get_text_features(input_ids=ids_t, attention_mask=mask_t))

  return Input(f"text tower {count} × 77 tokens", dtype_name, count, None, flops, ours,
               synchronized(torch, device, theirs), theirs)


def _pooled(output):
  """transformers 5 returns a model output from get_*_features where 4 returned the tensor."""
  return getattr(output, "pooler_output", output)


def _numpy(output) -> np.ndarray:
  return output.float().cpu().numpy() if hasattr(output, "cpu") else np.asarray(output, np.float32)


# ----------------------------------------------------------------------------------------------- measuring


def eager_rows(item: Input, repeats: int) -> tuple[list[Row], np.ndarray]:
  """Ours (each implementation) and PyTorch eager, interleaved; and PyTorch's output. An implementation that fails
  here (its first call compiles it) gets its row with the failure, and the others are timed."""
  ours = {}
  for name, call in item.ours.items():
    try:
      ours[name] = (call, call()) if callable(call) else call
    except Exception as e:  # pylint: disable=broad-except  (e.g. a fused kernel refused at run time: report it)
      ours[name] = f"failed: {errors.one_line(f'{type(e).__name__}: {e}')[:160]}"
  runnable = {f"ours, {name}": entry[0] for name, entry in ours.items() if isinstance(entry, tuple)}
  times = median_times({**runnable, EAGER: item.eager}, repeats)
  reference = _numpy(item.eager())
  rows = [Row(item, f"ours, {name}", times[f"ours, {name}"], relative_error(_numpy(entry[1]), reference))
          if isinstance(entry, tuple) else Row(item, f"ours, {name}", None, None, entry)
          for name, entry in ours.items()]
  rows.append(Row(item, EAGER, times[EAGER], 0.0))
  return rows, reference


def compiled_row(item: Input, reference: np.ndarray, torch, device, repeats: int) -> Row:
  call, failure = compiled_call(torch, device, item.eager_raw)
  if call is None:
    return Row(item, COMPILED, None, None, failure)
  seconds = median_times({COMPILED: call}, repeats)[COMPILED]
  return Row(item, COMPILED, seconds, relative_error(_numpy(call()), reference))


HEADER = ("| tower and input | dtype | implementation | median ms | items/s | TFLOP/s | speed vs PyTorch eager | "
          "relative difference to PyTorch eager |\n|---|---|---|---|---|---|---|---|")
COMPILED_HEADER = ("| tower and input | dtype | median ms | items/s | speed vs PyTorch eager | ours (fastest) / "
                   "torch.compile | relative difference to PyTorch eager |\n|---|---|---|---|---|---|---|")


def measured(rows: list[Row], item: Input) -> dict[str, Row]:
  """side → the rows of the input (by name and dtype) that have a time."""
  return {r.side: r for r in rows if (r.input.name, r.input.dtype) == (item.name, item.dtype) and r.seconds}


def fastest_ours(rows: list[Row], item: Input) -> Row | None:
  return min((r for side, r in measured(rows, item).items() if side.startswith("ours")), key=lambda r: r.seconds,
             default=None)


def format_row(row: Row, rows: list[Row]) -> str:
  item = row.input
  head = f"| {item.name} | {item.dtype} | {row.side} |"
  if row.seconds is None:
    return f"{head} {row.note} | | | | |"
  speed = measured(rows, item)[EAGER].seconds / row.seconds
  return (f"{head} {1e3 * row.seconds:,.2f} | {item.items / row.seconds:,.0f} | {item.flops / row.seconds / 1e12:.3g} "
          f"| {speed:.2f}× | {row.difference:.1e} |")


def format_compiled(row: Row, rows: list[Row]) -> str:
  item = row.input
  head = f"| {item.name} | {item.dtype} |"
  if row.seconds is None:
    return f"{head} {row.note} | | | | |"
  best = fastest_ours(rows, item)
  ours = "n/a" if best is None else f"{row.seconds / best.seconds:.2f}× ({best.side.removeprefix('ours, ')})"
  return (f"{head} {1e3 * row.seconds:,.2f} | {item.items / row.seconds:,.0f} | "
          f"{measured(rows, item)[EAGER].seconds / row.seconds:.2f}× | {ours} | {row.difference:.1e} |")


def ratio_table(rows: list[Row]) -> str:
  """Per input: our fastest implementation over PyTorch eager, and the target where there is one."""
  lines = ["| tower and input | dtype | ours, fastest | ours / PyTorch eager | target |", "|---|---|---|---|---|"]
  for item in {(r.input.name, r.input.dtype): r.input for r in rows}.values():
    best, eager = fastest_ours(rows, item), measured(rows, item).get(EAGER)
    if best is None or eager is None:
      continue
    ratio = eager.seconds / best.seconds
    target = TARGETS.get((item.size, item.items)) if item.dtype == "bfloat16" else None
    verdict = "" if target is None else f"≥ {target}×: {'met' if ratio >= target else 'not met'}"
    lines.append(f"| {item.name} | {item.dtype} | {best.side.removeprefix('ours, ')} | {ratio:.2f}× | {verdict} |")
  return "\n".join(lines)


def define_flags() -> dict[str, flags.FlagHolder]:
  """The command line's flags: defined only when this module is the program, as tests import it beside other
  tools whose flags share these names."""
  f = dict(
      dtypes=flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "compute dtypes to compare"),
      images=flags.DEFINE_list("images", ["224x4", "512x1"], "image tower inputs, SIZExBATCH"),
      prompts=flags.DEFINE_integer("prompts", 80, "text tower batch (e.g. 20 classes × 4 prompts)", lower_bound=1),
      repeats=flags.DEFINE_integer("repeats", 5, "timed calls per side and input", lower_bound=1),
      attention=flags.DEFINE_list("attention", ["xla", "cudnn"], "our towers' attention implementations to time"),
      torch_compile=flags.DEFINE_bool("torch_compile", True, "also time PyTorch under torch.compile"),
      matmuls=flags.DEFINE_list("matmuls", ["788x768x3072", "1025x768x3072", "1025x3072x768", "4096x4096x4096"],
                                "matrix products MxKxN to time alone (the image tower's MLP at 224² × 4 and 512² × "
                                "1, and a large square one); empty for none"))
  flags.register_validator("images", lambda v: all(_is_shape(x, 2) for x in v), "expected SIZExBATCH, e.g. 224x64")
  flags.register_validator("matmuls", lambda v: all(_is_shape(x, 3) for x in v),
                           "expected MxKxN, e.g. 1025x768x3072")
  flags.register_validator("dtypes", lambda v: bool(v) and set(v) <= {"float32", "bfloat16"},
                           "expected float32 and/or bfloat16")
  flags.register_validator("attention", lambda v: bool(v) and set(v) <= {"xla", "cudnn"},
                           "expected xla and/or cudnn")
  return f


def main(argv, f: dict[str, flags.FlagHolder]):
  del argv
  value = {name: holder.value for name, holder in f.items()}
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  device, device_note = torch_device(torch)
  jax_device = jax.devices()[0]
  print(f"Flax CLIP (ours, jax {jax.__version__}) on {jax_device.device_kind} ({jax_device.platform}) against "
        f"transformers {transformers.__version__} CLIPModel (torch {torch.__version__}, sdpa) on {device}"
        f"{device_note}; ViT-B/16 shapes, random weights; medians of {value['repeats']} interleaved calls\n")
  print(HEADER)
  rng = np.random.default_rng(0)
  rows, pending = [], []
  with tempfile.TemporaryDirectory() as tmp:
    directory = vit_b16_checkpoint(pathlib.Path(tmp))
    for dtype_name in value["dtypes"]:
      reference = transformers.CLIPModel.from_pretrained(directory, attn_implementation="sdpa",
                                                         dtype=getattr(torch, dtype_name)).eval().to(device)
      items = [image_input(directory, reference, torch, device, value["attention"], dtype_name,
                           *(int(x) for x in spec.split("x")), rng) for spec in value["images"]]
      items.append(text_input(directory, reference, torch, device, value["attention"], dtype_name, value["prompts"]))
      for item in items:
        new, output = eager_rows(item, value["repeats"])
        rows += new
        for row in new:
          print(format_row(row, rows), flush=True)
        pending.append((item, output))
  print("\nOurs (the fastest implementation) over PyTorch eager: PyTorch's time / ours; above 1, ours is faster; "
        "the issue's targets for the image tower in bfloat16\n")
  print(ratio_table(rows))
  if value["matmuls"]:
    print()
    print(matmul_table(torch, device, value["dtypes"], value["matmuls"], value["repeats"]), flush=True)
  if value["torch_compile"]:  # last: its compilations take the longest
    print("\nPyTorch under torch.compile (static shapes, compiled by each input's first call)\n")
    print(COMPILED_HEADER)
    for item, output in pending:
      row = compiled_row(item, output, torch, device, value["repeats"])
      rows.append(row)
      print(format_compiled(row, rows), flush=True)


def matmul_table(torch, device, dtype_names: list[str], shapes: list[str], repeats: int) -> str:
  """TFLOP/s of one (M, K) @ (K, N) product in XLA and in PyTorch (on `device`), per dtype and shape, medians of
  interleaved calls."""
  rng = np.random.default_rng(0)
  product = jax.jit(jnp.matmul)
  lines = ["| matrix product M×K×N | dtype | XLA (TFLOP/s) | PyTorch (TFLOP/s) | XLA / PyTorch |",
           "|---|---|---|---|---|"]
  for dtype_name in dtype_names:
    for shape in shapes:
      m, k, n = (int(x) for x in shape.split("x"))
      a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
      a_j, b_j = jax.device_put(a.astype(jnp.dtype(dtype_name))), jax.device_put(b.astype(jnp.dtype(dtype_name)))
      a_t, b_t = (torch.from_numpy(x).to(device, getattr(torch, dtype_name)) for x in (a, b))
      times = median_times({"xla": lambda: jax.block_until_ready(product(a_j, b_j)),
                            "torch": synchronized(torch, device, lambda: torch.matmul(a_t, b_t))}, repeats)
      tflop = 2 * m * k * n / 1e12
      lines.append(f"| {m}×{k}×{n} | {dtype_name} | {tflop / times['xla']:,.2f} | {tflop / times['torch']:,.2f} | "
                   f"{times['torch'] / times['xla']:.2f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  cli.run(functools.partial(main, f=define_flags()))
