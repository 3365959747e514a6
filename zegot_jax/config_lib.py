"""The settings every ZegOT config shares, and the argument parsing of `get_config(arg)`.

A config file's `get_config(arg)` takes a comma-separated `key=value` string, given on the command line after
a colon, for what changes several fields at once: `--config configs/voc12_zs3.py:setting=inductive` or
`:runlocal=True`. Unknown keys are an error. A single field is overridden directly:
`--config.model.matching=none`, `--config.train.steps=1000`.

The model's section is the config file's `ZegOTConfig` written out field by field (`model_section`): its defaults
live in `ZegOTConfig` alone, every field can be overridden, and `ZegOTConfig(**config.model)` builds it back
(`from_config.model_config`). The training section is `TrainConfig` (train_config.py) written out the same way,
read back by `TrainConfig.from_section`. This module does not import the model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from zegot_jax.errors import ConfigError, MissingFileError
from zegot_jax.train_config import TrainConfig

# Variant keys a config file accepts in its argument, with their defaults: each changes several fields at once.
VARIANTS = dict(setting="transductive", runlocal=False, encoder="clip")
# The frozen encoder of each `encoder=` variant: (clip.path, clip.family), ViT-B/16 both. With runlocal, the
# family's tiny random encoder.
ENCODERS = {"clip": ("openai/clip-vit-base-patch16", "auto"), "siglip": ("google/siglip-base-patch16-224", "siglip")}


def parse_arg(arg: str | None) -> ml_collections.ConfigDict:
  """'setting=inductive,runlocal=True' → ConfigDict of the variants, typed like their defaults."""
  values = dict(VARIANTS)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or key not in VARIANTS:
      raise ConfigError(f"config argument {item!r}: expected key=value with key in {sorted(VARIANTS)}; set a single "
                       f"field with --config.<section>.{key or 'field'}=..., e.g. --config.model.matching=none")
    default = VARIANTS[key]
    if isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ConfigError(f"config argument {key}={value!r}: expected True or False")
      values[key] = value.lower() in ("true", "1")
    else:
      values[key] = type(default)(value)
  if values["setting"] not in ("transductive", "inductive", "supervised"):
    raise ConfigError(f"config argument setting={values['setting']!r}: expected transductive, inductive or "
                      "supervised (every class labelled: the ceiling, not zero-shot)")
  if values["encoder"] not in ENCODERS:
    raise ConfigError(f"config argument encoder={values['encoder']!r}: expected one of {sorted(ENCODERS)}; another "
                      f"checkpoint of a supported family: --config.clip.path=DIRECTORY_OR_HUB_ID")
  return ml_collections.ConfigDict(values)


def model_section(model_config: Any) -> ml_collections.ConfigDict:
  """A config dataclass (ZegOTConfig, TrainConfig) as a config section, every field written out (nested ones
  too)."""
  return ml_collections.ConfigDict(dataclasses.asdict(model_config))


def base_config(variant: ml_collections.ConfigDict, *, dataset: str, steps: int, teacher: str, model: Any,
                image_size: int = 512) -> ml_collections.ConfigDict:
  """The paper's settings (appendix B, C, F; docs/reading.md) for one dataset; `model`: the ZegOTConfig to train."""
  c = ml_collections.ConfigDict()
  c.dataset = dataset
  c.data_dir = "~/tensorflow_datasets"
  c.setting = variant.setting

  path, family = ENCODERS[variant.encoder]
  c.clip = ml_collections.ConfigDict(dict(  # the frozen encoder, of any family in models/encoders.py
      path=path,  # a checkpoint directory or hub id; "random-tiny" for smoke runs
      family=family,  # auto (from the checkpoint's config.json) | clip | siglip
      image_size=image_size, dtype="bfloat16",
      attention="auto"))  # auto | xla | cudnn; auto: cuDNN's fused attention on an NVIDIA GPU in bfloat16, else XLA
  c.model = model_section(model)
  c.train = model_section(TrainConfig(steps=steps, teacher=teacher, eval_every=steps // 4))
  c.eval = ml_collections.ConfigDict(dict(
      split="validation",  # the split evaluation reports on
      seen_bias=0.1 if variant.setting == "inductive" else 0.0,  # the peers' inductive calibration
      batch_windows=0,  # 0: all windows of an image in one call
      pictures=0))  # > 0: draw Figure 1 for this many evaluation images at each evaluation (pictures.py)
  c.mesh = ml_collections.ConfigDict(dict(
      data=-1,  # -1: all devices not used by fsdp
      fsdp=1,  # > 1 splits the frozen CLIP's large matrices over this many devices
      fsdp_min_size=2**16))  # matrices smaller than this stay replicated
  if variant.runlocal:
    apply_runlocal(c)
  return c


def apply_runlocal(c: ml_collections.ConfigDict) -> None:
  """Shrinks everything for a smoke run on a laptop CPU (seconds): a tiny random encoder (of clip.family; CLIP for
  "auto"), tiny synthetic data."""
  c.dataset = "textures_zs3/tiny"
  c.clip.path = "random-tiny"
  c.clip.image_size = 64
  c.clip.dtype = "float32"
  c.model.dfa_layers = (1, 2)
  c.model.num_prompts = 2
  c.model.context_length = 2
  c.model.decoder_features = 8
  c.train.update(dict(steps=6, batch_size=4, warmup_steps=2, num_workers=0, log_every=1, checkpoint_every=3,
                      eval_every=6, eval_max_examples=4))


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted fields, as `--config.a.b=value` does: {"model.matching": "none"}. An unknown field is an error."""
  for key, value in overrides.items():
    *path, last = key.split(".")
    node = config
    for part in path:
      node = node[part]
    if last not in node:
      raise ConfigError(f"config has no field {key!r}")
    node[last] = value
  return config


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of a config file, as `--config` reads it: 'configs/demo.py' or 'configs/demo.py:setting=inductive'.
  A file that is missing, fails to run, has no get_config, or whose get_config fails or returns something else
  than a ConfigDict is a ConfigError naming the file."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top

  path, _, arg = spec.partition(":")
  if not pathlib.Path(path).is_file():
    raise MissingFileError(f"config file {path} does not exist; give a config file's path, e.g. "
                           f"--config=configs/voc12_zs3.py (run from the repository root)")
  module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  (the file is the user's: any error in it is theirs)
    raise ConfigError(f"config file {path} fails to load ({type(e).__name__}: {e}); fix the file") from e
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(f"config file {path} defines no get_config(arg=None) function; a config file defines one that "
                      f"returns an ml_collections.ConfigDict (see configs/voc12_zs3.py)")
  try:
    config = get_config(arg) if arg else get_config()
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"config file {path}: get_config({arg!r}) fails ({type(e).__name__}: {e}); fix the file or "
                      f"its argument") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"config file {path}: get_config returned {type(config).__name__}, expected an "
                      f"ml_collections.ConfigDict; end get_config with `return config`")
  return config
