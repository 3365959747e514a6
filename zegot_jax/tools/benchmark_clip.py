r"""Our Flax CLIP towers against transformers' PyTorch `CLIPModel` (sdpa attention), same weights, in one run.

  python -m zegot_jax.tools.benchmark_clip                       # float32 and bfloat16; 224² × 4 and 512² × 1
  python -m zegot_jax.tools.benchmark_clip --dtypes float32 --repeats 10

Both load one random checkpoint with openai/clip-vit-base-patch16's shapes (written by transformers, read by our
`from_pretrained`). Image tower: the pooled, projected embedding of a batch (transformers with
`interpolate_pos_encoding` above 224²). Text tower: --prompts prompts padded to 77 tokens with their attention
mask. Calls alternate between the two, after one warm-up call each; the median of --repeats is reported. The
outputs are compared too (relative error), so a fast wrong answer shows. Needs torch (the `test` extra).

Each row also gives the rate both sides reach on the tower's FLOPs (XLA's count of our compiled tower) and the
rate a 1.5× lead over PyTorch would need. A second table times one matrix product of each shape the towers spend
their FLOPs in (--matmuls), in XLA and in PyTorch: a tower cannot run faster than its matrix products.
"""

from __future__ import annotations

import pathlib
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from zegot_jax import errors
from zegot_jax.models import clip_checkpoint, prompts
from zegot_jax.models.clip import CLIP
from zegot_jax.models.clip_reference import random_torch_clip, save_with_tokenizer
from zegot_jax.tools import costs

_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "compute dtypes to compare")
_IMAGES = flags.DEFINE_list("images", ["224x4", "512x1"], "image tower inputs, SIZExBATCH")
_PROMPTS = flags.DEFINE_integer("prompts", 80, "text tower batch (e.g. 20 classes × 4 prompts)", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls per side and input", lower_bound=1)
_MATMULS = flags.DEFINE_list("matmuls", ["788x768x3072", "1025x768x3072", "1025x3072x768", "4096x4096x4096"],
                             "matrix products MxKxN to time alone (the image tower's MLP at 224² × 4 and 512² × 1, "
                             "and a large square one); empty for none")


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
  return save_with_tokenizer(random_torch_clip(config, scale=0.02), directory)


def median_times(calls: dict[str, callable], repeats: int) -> dict[str, float]:
  """Median seconds of each zero-argument call, the calls interleaved so that load drifts hit all alike."""
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


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    directory = vit_b16_checkpoint(pathlib.Path(tmp))
    tokenizer = prompts.load_tokenizer(directory)
    names = [f"a photo of a class number {i}." for i in range(_PROMPTS.value)]
    encoded = tokenizer(names, padding="max_length", max_length=77, return_tensors="np")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    for dtype_name in _DTYPES.value:
      torch_dtype = getattr(torch, dtype_name)
      reference = transformers.CLIPModel.from_pretrained(directory, attn_implementation="sdpa",
                                                         dtype=torch_dtype).eval()
      for spec in _IMAGES.value:
        size, batch = (int(x) for x in spec.split("x"))
        loaded = clip_checkpoint.from_pretrained(directory, image_size=size, dtype=jnp.dtype(dtype_name))
        params = jax.device_put(loaded.params)  # host arrays: on the device once, not at every call
        model = CLIP(loaded.config, dtype=jnp.dtype(dtype_name))
        pixels = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
        ours_fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method=CLIP.encode_image).image_embeds)
        px = jnp.asarray(pixels)
        px_torch = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))).to(torch_dtype)

        def ours():
          return jax.block_until_ready(ours_fn(params, px))

        def theirs():
          with torch.inference_mode():
            return reference.get_image_features(pixel_values=px_torch, interpolate_pos_encoding=size != 224)

        times = median_times({"ours": ours, "torch": theirs}, _REPEATS.value)
        error = relative_error(ours().astype(jnp.float32), _pooled(theirs()).float().numpy())
        flops = costs.xla_cost(ours_fn, params, px).flops
        rows.append((f"image tower {size}² × {batch}", dtype_name, times, error, flops))
      text_fn = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, method=CLIP.encode_text).text_embeds)
      ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
      ids_t, mask_t = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))

      def ours_text():
        return jax.block_until_ready(text_fn(params, ids_j, mask_j))

      def theirs_text():
        with torch.inference_mode():
          return reference.get_text_features(input_ids=ids_t, attention_mask=mask_t)

      times = median_times({"ours": ours_text, "torch": theirs_text}, _REPEATS.value)
      error = relative_error(ours_text().astype(jnp.float32), _pooled(theirs_text()).float().numpy())
      flops = costs.xla_cost(text_fn, params, ids_j, mask_j).flops
      rows.append((f"text tower {_PROMPTS.value} × 77 tokens", dtype_name, times, error, flops))
  device = jax.devices()[0]
  print(f"Flax CLIP (ours, jax {jax.__version__}, {device.device_kind}) against transformers "
        f"{transformers.__version__} CLIPModel (torch {torch.__version__}, sdpa, {torch.get_num_threads()} threads); "
        f"ViT-B/16 shapes, medians of {_REPEATS.value} interleaved calls")
  print("| input | dtype | GFLOP | ours (ms) | PyTorch (ms) | ours faster by | relative difference | "
        "GFLOP/s: ours / PyTorch / needed for 1.5× |")
  print("|---|---|---|---|---|---|---|---|")
  for what, dtype_name, times, error, flops in rows:
    rates = " / ".join(f"{flops / t / 1e9:,.0f}" for t in (times["ours"], times["torch"], times["torch"] / 1.5))
    print(f"| {what} | {dtype_name} | {flops / 1e9:,.1f} | {1e3 * times['ours']:,.1f} | "
          f"{1e3 * times['torch']:,.1f} | {times['torch'] / times['ours']:.2f}× | {error:.1e} | {rates} |")
  if _MATMULS.value:
    print()
    print(matmul_table(_DTYPES.value, _MATMULS.value, _REPEATS.value))


def matmul_table(dtype_names: list[str], shapes: list[str], repeats: int) -> str:
  """GFLOP/s of one (M, K) @ (K, N) product in XLA and in PyTorch, per dtype and shape, medians of interleaved
  calls."""
  import torch  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  product = jax.jit(jnp.matmul)
  lines = ["| matrix product M×K×N | dtype | XLA (GFLOP/s) | PyTorch (GFLOP/s) | XLA / PyTorch |",
           "|---|---|---|---|---|"]
  for dtype_name in dtype_names:
    for shape in shapes:
      m, k, n = (int(x) for x in shape.split("x"))
      a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
      a_j, b_j = jax.device_put(a.astype(jnp.dtype(dtype_name))), jax.device_put(b.astype(jnp.dtype(dtype_name)))
      a_t, b_t = (torch.from_numpy(x).to(getattr(torch, dtype_name)) for x in (a, b))
      times = median_times({"xla": lambda: jax.block_until_ready(product(a_j, b_j)),
                            "torch": lambda: torch.matmul(a_t, b_t)}, repeats)
      gflop = 2 * m * k * n / 1e9
      lines.append(f"| {m}×{k}×{n} | {dtype_name} | {gflop / times['xla']:,.0f} | {gflop / times['torch']:,.0f} | "
                   f"{times['torch'] / times['xla']:.2f} |")
  return "\n".join(lines)


def _pooled(output):
  """transformers 5 returns a model output from get_*_features where 4 returned the tensor."""
  return getattr(output, "pooler_output", output)


if __name__ == "__main__":
  errors.run(main)
