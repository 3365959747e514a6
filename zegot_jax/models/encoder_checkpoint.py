"""Loading any transformers checkpoint of a supported encoder family (CLIP, SigLIP: `encoders.FAMILIES`) into its
Flax module, and saving one back.

A checkpoint is a directory with `config.json` and weights (`model.safetensors`, a sharded
`model.safetensors.index.json`, or `pytorch_model.bin` when torch is installed), or a Hugging Face hub id that
is in the local cache or can be downloaded. The family comes from config.json's model_type; transformers parses
the config; no torch is needed for safetensors. Pixel statistics come from preprocessor_config.json when present.

State-dict keys map to Flax paths by a fixed rule: `.layers.N.` → `layers_N`, and a module's `weight` becomes
`kernel` (Linear: transposed; Conv: OIHW → HWIO), `scale` (LayerNorm) or `embedding` (Embedding), whichever the
Flax module has. Every key, shape and missing entry is checked against the config before anything is used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zegot_jax.errors import UserError
from zegot_jax.models import encoders
from zegot_jax.models.pos_embed import Method, resize_position_embedding
from zegot_jax.models.transformer import Family

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
# Files a ZegOT run needs from a hub repository (weights in either format, the tokenizer and preprocessing).
HUB_FILES = ("config.json", "*.safetensors", SAFETENSORS_INDEX, "tokenizer*.json", "vocab.json", "merges.txt",
             "spiece.model", "special_tokens_map.json", "preprocessor_config.json")
# Buffers some transformers versions saved; they are not parameters.
_IGNORED_KEYS = re.compile(r"(text_model|vision_model)\.embeddings\.position_ids$")


class CheckpointError(UserError, ValueError):
  """A checkpoint that cannot be used: missing, malformed, or not matching its config."""


class LoadedEncoder(NamedTuple):
  model: Any  # the family's Flax module (`clip.CLIP`, `siglip.Siglip`)
  params: dict[str, Any]  # the Flax parameter pytree (without the "params" collection wrapper)
  config: Any  # the family's config (`clip.CLIPConfig`, `siglip.SiglipConfig`)
  path: pathlib.Path  # the resolved local directory
  family: Family


# ----------------------------------------------------------------------------------------------- locating files


def resolve_checkpoint_dir(name_or_path: str | os.PathLike, *, offline: bool | None = None) -> pathlib.Path:
  """A local directory for a checkpoint directory or a hub id (cache first, then download unless offline)."""
  path = pathlib.Path(name_or_path).expanduser()
  if path.is_dir():
    return path
  name = str(name_or_path)
  looks_like_path = path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or path.exists()
  if looks_like_path:
    raise CheckpointError(f"encoder checkpoint directory {name!r} does not exist (or is not a directory). "
                          f"It must hold config.json and {SAFETENSORS} (as written by save_pretrained).")
  import huggingface_hub  # pylint: disable=g-import-not-at-top

  if offline is None:
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
  errors = []
  for local_only in ((True,) if offline else (True, False)):
    try:
      directory = pathlib.Path(huggingface_hub.snapshot_download(name, allow_patterns=list(HUB_FILES),
                                                                 local_files_only=local_only))
      if not list(directory.glob("*.safetensors")):  # an older repository with PyTorch pickles only
        directory = pathlib.Path(huggingface_hub.snapshot_download(
            name, allow_patterns=[TORCH_BIN, TORCH_BIN_INDEX, "pytorch_model-*.bin"], local_files_only=local_only))
      return directory
    except Exception as e:  # pylint: disable=broad-except  (hub raises many types; all mean "not available")
      errors.append(f"{'cache' if local_only else 'download'}: {type(e).__name__}: {e}".splitlines()[0])
  raise CheckpointError(
      f"Could not find encoder checkpoint {name!r}: it is not a local directory, not in the Hugging Face cache"
      f"{'' if offline else ', and downloading it failed'} ({'; '.join(errors)}).\n"
      f"On a machine with internet, download it with\n"
      f"    hf download {name} --include '*.json' '*.safetensors' '*.txt' --local-dir <DIR>\n"
      f"then copy <DIR> here and pass its path instead of the hub id (or set HF_HOME to a copied cache).")


def _weight_files(directory: pathlib.Path) -> tuple[str, list[pathlib.Path]]:
  """('safetensors' | 'torch', files) for the weights in `directory`."""
  for index_name, fmt in ((SAFETENSORS_INDEX, "safetensors"), (TORCH_BIN_INDEX, "torch")):
    index = directory / index_name
    if index.is_file():
      try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
      except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{index}: not a valid shard index ({e})") from e
      missing = [s for s in shards if not (directory / s).is_file()]
      if missing:
        raise CheckpointError(f"{index} names shards that are not in {directory}: {missing}")
      return fmt, [directory / s for s in shards]
  if (directory / SAFETENSORS).is_file():
    return "safetensors", [directory / SAFETENSORS]
  if (directory / TORCH_BIN).is_file():
    return "torch", [directory / TORCH_BIN]
  raise CheckpointError(f"{directory} holds no encoder weights: expected {SAFETENSORS}, {SAFETENSORS_INDEX} or "
                        f"{TORCH_BIN}; found {sorted(p.name for p in directory.iterdir())}")


def read_state_dict(directory: pathlib.Path) -> dict[str, np.ndarray]:
  """All tensors of the checkpoint as float32 numpy arrays, keyed by state-dict name."""
  fmt, files = _weight_files(directory)
  state: dict[str, np.ndarray] = {}
  for f in files:
    if fmt == "safetensors":
      from safetensors import safe_open  # pylint: disable=g-import-not-at-top

      try:
        with safe_open(f, framework="flax") as reader:  # the flax backend reads bfloat16 too
          for key in reader.keys():
            state[key] = np.asarray(reader.get_tensor(key), dtype=np.float32)
      except Exception as e:  # pylint: disable=broad-except
        raise CheckpointError(f"{f}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    else:
      try:
        import torch  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise CheckpointError(
            f"{f} is a PyTorch pickle and torch is not installed. Install torch, or convert the checkpoint "
            f"to safetensors once (transformers: AutoModel.from_pretrained(dir).save_pretrained(dir)).") from e
      try:
        tensors = torch.load(f, map_location="cpu", weights_only=True)
      except Exception as e:  # pylint: disable=broad-except
        raise CheckpointError(f"{f}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
      state.update({k: v.float().numpy() for k, v in tensors.items()})
  return state


# ----------------------------------------------------------------------------------------------- configs


def read_hf_config(directory: pathlib.Path) -> tuple[Family, dict[str, Any]]:
  """(family, config.json as a dict) of a checkpoint directory; the family from its model_type."""
  config_file = directory / "config.json"
  if not config_file.is_file():
    raise CheckpointError(f"{directory} has no config.json (a transformers checkpoint directory needs one)")
  try:
    raw = json.loads(config_file.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{config_file}: not valid JSON ({e})") from e
  try:
    return encoders.detect(raw), raw
  except ValueError as e:
    raise CheckpointError(f"{config_file}: {e}") from e


def config_from_hf(family: Family, raw: dict[str, Any], directory: pathlib.Path, **grid) -> Any:
  """The family's config of a checkpoint: config.json, and the pixel statistics of preprocessor_config.json."""
  try:
    config = family.config_from_hf(raw, **grid)
  except ValueError as e:
    raise CheckpointError(f"unsupported {family.name} config in {directory / 'config.json'}: {e}") from e
  preprocessor = directory / "preprocessor_config.json"
  if preprocessor.is_file():
    try:
      stats = json.loads(preprocessor.read_text())
    except json.JSONDecodeError as e:
      raise CheckpointError(f"{preprocessor}: not valid JSON ({e})") from e
    found = {k: tuple(float(x) for x in stats[k]) for k in ("image_mean", "image_std") if k in stats}
    for k, v in found.items():
      if len(v) != config.vision.num_channels:
        raise CheckpointError(f"{preprocessor}: {k} has {len(v)} values for {config.vision.num_channels} channels")
    config = dataclasses.replace(config, **found)
  return config


# ----------------------------------------------------------------------------------------------- key mapping


def _flax_path(key: str, expected: Mapping[tuple[str, ...], Any]) -> tuple[str, ...] | None:
  parts = re.sub(r"\.layers\.(\d+)\.", r".layers_\1.", key).split(".")
  if parts[-1] != "weight":
    return tuple(parts)
  for leaf in ("kernel", "scale", "embedding"):
    if (*parts[:-1], leaf) in expected:
      return (*parts[:-1], leaf)
  return None


def _to_flax_layout(path: tuple[str, ...], array: np.ndarray) -> np.ndarray:
  if path[-1] == "kernel" and array.ndim == 2:  # Linear (out, in) → Dense (in, out)
    return array.T
  if path[-1] == "kernel" and array.ndim == 4:  # Conv OIHW → HWIO
    return array.transpose(2, 3, 1, 0)
  return array


def _to_torch_layout(path: tuple[str, ...], array: np.ndarray) -> np.ndarray:
  if path[-1] == "kernel" and array.ndim == 2:
    return array.T
  if path[-1] == "kernel" and array.ndim == 4:  # HWIO → OIHW
    return array.transpose(3, 2, 0, 1)
  return array


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  flat = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      flat.update(_flatten(v, (*prefix, k)))
    else:
      flat[(*prefix, k)] = v
  return flat


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def abstract_params(config: Any) -> dict[str, Any]:
  """The parameter tree of the family's module for `config` as ShapeDtypeStructs (nothing allocated)."""
  v = config.vision
  gh, gw = v.grid
  pixels = jax.ShapeDtypeStruct((1, gh * v.patch_size, gw * v.patch_size, v.num_channels), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  module = encoders.family_of(config).module(config)
  return jax.eval_shape(module.init, jax.random.key(0), pixels, ids)["params"]


def params_from_state_dict(state: Mapping[str, np.ndarray], config: Any,
                           source: str = "checkpoint") -> dict[str, Any]:
  """Flax params from a transformers state dict; every mismatch is reported with its key and shapes."""
  expected = _flatten(abstract_params(config))
  flat, unexpected, mismatched = {}, [], []
  for key, array in state.items():
    if _IGNORED_KEYS.match(key):
      continue
    path = _flax_path(key, expected)
    if path is None or path not in expected:
      unexpected.append(key)
      continue
    array = _to_flax_layout(path, np.asarray(array))
    if array.shape != tuple(expected[path].shape):
      torch_shape = tuple(_to_torch_layout(path, np.zeros(expected[path].shape, np.int8)).shape)
      mismatched.append(f"{key}: checkpoint has {tuple(state[key].shape)}, config expects {torch_shape}")
      continue
    flat[path] = array
  missing = [".".join(p).replace("layers_", "layers.") for p in expected if p not in flat]
  problems = []
  if mismatched:
    problems.append(f"{len(mismatched)} tensors do not match the config's shapes:\n  " + "\n  ".join(mismatched[:20]))
  if missing:
    problems.append(f"{len(missing)} parameters missing from the checkpoint, e.g. {missing[:10]}")
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected tensors, e.g. {sorted(unexpected)[:10]}")
  if problems:
    raise CheckpointError(f"{source} does not match its {config.family} config:\n" + "\n".join(problems))
  return _unflatten(flat)


def state_dict_from_params(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The transformers state dict of Flax params (inverse of `params_from_state_dict`)."""
  state = {}
  for path, leaf in _flatten(params).items():
    name = list(path)
    if name[-1] in ("kernel", "scale", "embedding"):
      name[-1] = "weight"
    key = ".".join(name).replace(".layers_", ".layers.")
    state[key] = _to_torch_layout(path, np.asarray(leaf, dtype=np.float32)).copy(order="C")
  return state


# ----------------------------------------------------------------------------------------------- public API


def _grid_for(image_size: int | tuple[int, int], patch_size: int) -> tuple[int, int]:
  h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  if h % patch_size or w % patch_size:
    raise CheckpointError(f"image_size {(h, w)} is not a multiple of the patch size {patch_size}")
  return h // patch_size, w // patch_size


def from_pretrained(name_or_path: str | os.PathLike, *, image_size: int | tuple[int, int] | None = None,
                    dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                    pos_resize_method: Method = "bicubic", offline: bool | None = None,
                    family: str = "auto") -> LoadedEncoder:
  """Loads a transformers checkpoint (local directory or hub id) of any supported family as its Flax module and
  params.

  image_size: when given (int or (H, W)), the position embedding is resized once, here, to that input's patch
    grid; inputs of other sizes are still accepted and resized on the fly.
  dtype: compute dtype (float32 or bfloat16); param_dtype: dtype the params are stored in.
  family: "auto" (from config.json's model_type) or the family the caller expects; another is an error.
  """
  directory = resolve_checkpoint_dir(name_or_path, offline=offline)
  found, raw = read_hf_config(directory)
  if family not in ("auto", found.name):
    raise CheckpointError(f"{directory} holds a {found.name} checkpoint (config.json's model_type "
                          f"{raw.get('model_type')!r}), but family {family!r} was asked for; set clip.family to "
                          f"{found.name!r} or 'auto', or point clip.path at a {family} checkpoint")
  config = config_from_hf(found, raw, directory, pos_resize_method=pos_resize_method)
  params = params_from_state_dict(read_state_dict(directory), config, source=str(directory))
  if image_size is not None:
    grid = _grid_for(image_size, config.vision.patch_size)
    if grid != config.vision.grid:
      pos = params["vision_model"]["embeddings"]["position_embedding"]
      pos["embedding"] = resize_position_embedding(pos["embedding"], config.vision.grid, grid, pos_resize_method,
                                                   class_tokens=found.class_tokens)
      config = config_from_hf(found, raw, directory, pos_grid=grid, pos_resize_method=pos_resize_method)
  params = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=param_dtype), params)  # host arrays: the caller
  # places them (`from_config.shard_clip_params` puts each matrix straight into its shards)
  model = found.module(config, dtype=dtype, param_dtype=param_dtype)
  return LoadedEncoder(model, params, config, directory, found)


def save_pretrained(params: Mapping[str, Any], config: Any, directory: str | os.PathLike) -> pathlib.Path:
  """Writes `config.json` and `model.safetensors` that transformers' model class of the family (`CLIPModel`,
  `SiglipModel`) loads."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  params_from_state_dict(state_dict_from_params(params), config, source="params to save")  # same checks
  try:
    hf_config = encoders.family_of(config).config_to_hf(config)
  except ValueError as e:
    raise CheckpointError(f"cannot save this {config.family} model in transformers' format: {e}") from e
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  hf_config.save_pretrained(directory)
  tmp = directory / (SAFETENSORS + ".tmp")
  save_file(state_dict_from_params(params), str(tmp), metadata={"format": "pt"})
  os.replace(tmp, directory / SAFETENSORS)  # never leave a half-written weights file under the real name
  return directory
