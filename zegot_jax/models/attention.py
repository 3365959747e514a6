"""Which implementation runs the CLIP towers' attention: the setting `clip.attention` resolved for this machine.

  auto   cuDNN's fused (flash) attention where it can run, XLA's attention elsewhere
  xla    XLA's attention (`jax.nn.dot_product_attention` left to choose, which today means XLA), on any backend
  cudnn  cuDNN's fused attention; a ConfigError where it cannot run

JAX never picks cuDNN by itself; on an H200 it ran our ViT-B/16 image tower 1.97× faster at 512² × 16 in
bfloat16. The two compute the same attention up to rounding. cuDNN's conditions follow JAX's own checks
(`jax._src.cudnn.fused_attention_stablehlo`: `check_layout`, `check_is_flash_attention`) for what the towers
call, no bias and the padding as sequence lengths: a CUDA GPU of compute capability 8.0 (Ampere) or later,
bfloat16 or float16, head dimension a multiple of 8 and at most 128 (256 from Hopper, 9.0, on), cuDNN 9.11 or
later on compute capability 10.3. Sequence lengths are free (JAX restricts them only with a bias in training,
or in float8): the ViT's 1 + h·w tokens (197, 1025) and the text tower's 77 are fine.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from zegot_jax.errors import ConfigError

IMPLEMENTATIONS = ("auto", "xla", "cudnn")
FUSED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def cuda_gpu() -> tuple[tuple[int, int], int] | None:
  """(compute capability, cuDNN version) of the first GPU when it is an NVIDIA one whose cuDNN JAX finds, else
  None."""
  try:
    device = jax.devices("gpu")[0]
    if "cuda" not in device.client.platform_version.lower():  # e.g. ROCm
      return None
    capability = tuple(int(x) for x in device.compute_capability.split("."))
    from jax._src.lib import cuda_versions  # pylint: disable=g-import-not-at-top  (where JAX's check reads it)
    return capability, int(cuda_versions.cudnn_get_version())
  except Exception:  # pylint: disable=broad-except  (no GPU, no CUDA plugin, another jaxlib layout: no cuDNN)
    return None


def why_not_cudnn(dtype: Any, *, head_dim: int | None = None, backend: str | None = None) -> str | None:
  """Why cuDNN's fused attention cannot run the towers here, or None when it can. `head_dim` None: not checked."""
  backend = backend or jax.default_backend()
  if backend != "gpu":
    return f"it needs an NVIDIA GPU and the backend is {backend}"
  if jnp.dtype(dtype) not in FUSED_DTYPES:
    return f"it computes in bfloat16 or float16 and clip.dtype is {jnp.dtype(dtype).name}"
  gpu = cuda_gpu()
  if gpu is None:
    return "JAX finds no NVIDIA GPU with cuDNN"
  capability, cudnn_version = gpu
  if capability < (8, 0):
    return f"it needs compute capability 8.0 (Ampere) or later and this GPU has {capability[0]}.{capability[1]}"
  if capability == (10, 3) and cudnn_version < 91100:
    return f"compute capability 10.3 needs cuDNN 9.11 or later and JAX finds cuDNN {cudnn_version}"
  largest = 256 if capability >= (9, 0) else 128
  if head_dim is not None and (head_dim % 8 or head_dim > largest):
    return f"its head dimension must be a multiple of 8 up to {largest} and this CLIP's is {head_dim}"
  return None


def resolve(setting: str, dtype: Any, *, head_dim: int | None = None, backend: str | None = None) -> str:
  """`clip.attention` → "xla" or "cudnn" for attention heads of `head_dim` computed in `dtype` on `backend`
  (default: JAX's). "auto" never fails; "cudnn" where it cannot run, and an unknown value, are ConfigErrors."""
  if setting not in IMPLEMENTATIONS:
    raise ConfigError(f"config clip.attention={setting!r}: expected one of {IMPLEMENTATIONS}")
  if setting == "xla":
    return "xla"
  why = why_not_cudnn(dtype, head_dim=head_dim, backend=backend)
  if why is None:
    return "cudnn"
  if setting == "cudnn":
    raise ConfigError(f"config clip.attention='cudnn': cuDNN's fused attention cannot run here: {why}; use "
                      f"--config.clip.attention=auto (cuDNN where it can run, XLA elsewhere) or xla")
  return "xla"
