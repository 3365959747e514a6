"""What a run's config builds: the device mesh, the frozen CLIP (placed on devices by its sharding), the model and
the dataset.

Shared by training (`trainer.py`), inference (`checkpoints.load_run`, `evaluation.py`) and the command-line tools.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from zegot_jax.data import build as data_build
from zegot_jax.errors import ConfigError, MissingFileError
from zegot_jax.data import registry
from zegot_jax.models import attention, encoder_checkpoint, encoders, prompts, tiny_clip, zegot
from zegot_jax.models.sinkhorn import SinkhornConfig


def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  attention_for(config)  # like the mesh, clip.attention must fit these devices: refused before anything is loaded
  fsdp, devices = config.mesh.fsdp, jax.device_count()
  if fsdp < 1 or devices % fsdp:
    divisors = [d for d in range(1, devices + 1) if devices % d == 0]
    raise ConfigError(f"config mesh.fsdp={fsdp} does not divide the {devices} device(s) here; set "
                      f"--config.mesh.fsdp to one of {divisors}")
  data = config.mesh.data if config.mesh.data > 0 else devices // fsdp
  if data * fsdp != devices:
    raise ConfigError(f"config mesh.data={data} × mesh.fsdp={fsdp} does not match the {devices} devices; set "
                      f"--config.mesh.data=-1 (all devices not used by fsdp)")
  # Auto axes: shardings of inputs and params are given, XLA propagates the rest through the step.
  return jax.make_mesh((data, fsdp), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def clip_sharding(mesh: jax.sharding.Mesh, leaf: Any, min_size: int = 2**16) -> NamedSharding:
  """Frozen CLIP matrices of at least `min_size` entries are split over the fsdp axis on their first dimension
  (when it divides); the rest is replicated."""
  fsdp = mesh.shape["fsdp"]
  if fsdp > 1 and leaf.ndim >= 2 and leaf.shape[0] % fsdp == 0 and leaf.size >= min_size:
    return NamedSharding(mesh, P("fsdp"))
  return NamedSharding(mesh, P())


def shard_clip_params(clip_params: Any, mesh: jax.sharding.Mesh, config: ml_collections.ConfigDict) -> Any:
  """The frozen CLIP params (host arrays, as `from_pretrained` returns them) placed on the mesh by
  `clip_sharding`: one transfer per matrix, straight into its shards, so a large tower never lands whole on one
  device first."""
  return jax.device_put(clip_params, jax.tree_util.tree_map(
      lambda a: clip_sharding(mesh, a, config.mesh.fsdp_min_size), clip_params))


def encoder_family(config: ml_collections.ConfigDict) -> str:
  """clip.family, checked: "auto" or a family of `encoders.FAMILIES`. A run saved before the entry existed reads
  as "auto"."""
  family = config.clip.get("family", "auto")
  if family not in encoders.SETTINGS:
    raise ConfigError(f"config clip.family={family!r}: expected one of {list(encoders.SETTINGS)}")
  return family


def resolve_clip_path(config: ml_collections.ConfigDict, workdir: pathlib.Path, create: bool = True) -> str:
  """clip.path, with the built-in name "random-tiny" (a tiny random encoder of clip.family, CLIP for "auto",
  written into the workdir by training; `create=False` when reading a run, which never writes into it)."""
  if config.clip.path == tiny_clip.RANDOM_TINY:
    setting = encoder_family(config)
    present = [f for f in encoders.FAMILIES if (pathlib.Path(workdir) / tiny_clip.directory_name(f)).is_dir()]
    if setting == "auto":  # the one the run holds, else CLIP's
      if len(present) > 1:
        raise ConfigError(f"clip.family=auto but {workdir} holds tiny random encoders of {present}; set "
                          f"--config.clip.family to the run's")
      family = present[0] if present else "clip"
    else:
      family = setting
    directory = pathlib.Path(workdir) / tiny_clip.directory_name(family)
    if not directory.is_dir():
      if present:  # a run of another family's tiny encoder is in this workdir: never write a second one beside it
        raise ConfigError(f"clip.family={setting} but the run in {workdir} was trained beside a tiny random "
                          f"{present[0]} ({tiny_clip.directory_name(present[0])}); set --config.clip.family="
                          f"{present[0]} (or auto)")
      if not create:
        raise MissingFileError(f"{directory} does not exist: the run in {workdir} was trained with clip.path="
                               f"{tiny_clip.RANDOM_TINY!r}, whose weights training writes there")
    return str(tiny_clip.make_random_clip(directory, family=family))
  return config.clip.path


class Run(NamedTuple):
  """What a config builds before any state: the same for training (trainer.py) and inference (checkpoints.load_run)."""

  mesh: jax.sharding.Mesh
  clip: encoder_checkpoint.LoadedEncoder  # the frozen encoder, of any family
  model: zegot.ZegOT
  tokenizer: Any  # the encoder's


def build_run(config: ml_collections.ConfigDict, workdir: pathlib.Path, *, create: bool = True,
              mesh: jax.sharding.Mesh | None = None) -> Run:
  """The mesh, the frozen encoder of clip.path (random-tiny written into `workdir` when `create`), the ZegOT model
  on it and the encoder's tokenizer."""
  mesh = make_mesh(config) if mesh is None else mesh
  clip = load_clip(config, workdir, create=create)
  return Run(mesh, clip, build_model(config, clip), prompts.load_tokenizer(clip.path))


def model_config(config: ml_collections.ConfigDict) -> zegot.ZegOTConfig:
  """`ZegOTConfig(**config.model)`, its `sinkhorn` section as a `SinkhornConfig`; fields the config leaves out
  keep the model's defaults."""
  fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in config.model.to_dict().items()}
  try:
    return zegot.ZegOTConfig(**{**fields, "sinkhorn": SinkhornConfig(**fields.get("sinkhorn", {}))})
  except TypeError as e:  # an entry that is not a field of the model's configs
    known = sorted(f.name for f in dataclasses.fields(zegot.ZegOTConfig))
    raise ConfigError(f"config.model: {e}; the model's fields are {known}") from e
  except ValueError as e:  # a value the model refuses (ZegOTConfig and SinkhornConfig check their fields)
    raise ConfigError(f"config.model: {e}") from e


def attention_for(config: ml_collections.ConfigDict, clip_config: Any = None, dtype: Any = None) -> str:
  """clip.attention resolved for this machine and dtype: "cudnn" when cuDNN's fused attention can run both towers
  of `clip_config` (their head dimensions; None: not checked yet), else "xla"; a ConfigError when "cudnn" was asked
  for where it cannot run. A run saved before the entry existed reads as "auto": the implementation changes only
  the rounding, not what is computed. `dtype`: the compute dtype when not clip.dtype (the benchmarks' --dtype)."""
  setting, dtype = config.clip.get("attention", "auto"), jnp.dtype(dtype or config.clip.dtype)
  head_dims = [None] if clip_config is None else [clip_config.vision.head_dim, clip_config.text.head_dim]
  chosen = {attention.resolve(setting, dtype, head_dim=h) for h in head_dims}
  return "cudnn" if chosen == {"cudnn"} else "xla"


def load_clip(config: ml_collections.ConfigDict, workdir: pathlib.Path,
              create: bool = True) -> encoder_checkpoint.LoadedEncoder:
  path = resolve_clip_path(config, workdir, create)
  return encoder_checkpoint.from_pretrained(path, image_size=config.clip.image_size, dtype=jnp.dtype(config.clip.dtype),
                                            family=encoder_family(config))


def build_model(config: ml_collections.ConfigDict, clip: encoder_checkpoint.LoadedEncoder) -> zegot.ZegOT:
  """The model at the config's settings. Under clip.attention="auto" the text tower stays on XLA's attention: it is
  the tower training differentiates (the CoOp contexts), and cuDNN's backward was not yet verified on a GPU
  (docs/speed.md); the frozen image tower, forward only, takes cuDNN's where it can run."""
  image = attention_for(config, clip.config)
  text = image if config.clip.get("attention", "auto") == "cudnn" else "xla"
  return zegot.ZegOT(clip.config, model_config(config), dtype=jnp.dtype(config.clip.dtype), attention=image,
                     text_attention=text)


def open_dataset(config: ml_collections.ConfigDict, name: str | None = None) -> registry.Dataset:
  """The built dataset; the synthetic world is built on first use, the benchmarks must be built by the user."""
  name = name or config.dataset
  data_dir = pathlib.Path(config.data_dir).expanduser()
  if registry.is_synthetic(name) and not registry.make_builder(name, data_dir).is_prepared():
    return data_build.build(name, data_dir)
  return registry.load(name, data_dir)


def maybe_initialize_distributed() -> None:
  """jax.distributed.initialize() when launched as one of several processes (SLURM, TPU pods, or the
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables that launch/local.sh sets)."""
  import os  # pylint: disable=g-import-not-at-top

  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"], int(os.environ["JAX_NUM_PROCESSES"]),
                               int(os.environ["JAX_PROCESS_ID"]))
  elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ:
    jax.distributed.initialize()
