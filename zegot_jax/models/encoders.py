"""The frozen encoder families ZegOT runs on, by name: the seam's registry.

A family is one module (its config, its Flax towers with `encode_image` / `encode_text` / `encode_prompts`, the
mapping from and to transformers' config) ending with `FAMILY = transformer.Family(...)`, and one line here.
Everything else (checkpoint loading, the model, prompts, the tools) reads the family from here or from the
config's `family` attribute.
"""

from __future__ import annotations

from typing import Any

from zegot_jax.models import clip, siglip
from zegot_jax.models.transformer import Family

FAMILIES: dict[str, Family] = {f.name: f for f in (clip.FAMILY, siglip.FAMILY)}
SETTINGS = ("auto", *FAMILIES)  # clip.family's values; "auto": from the checkpoint's config.json


def family_of(config: Any) -> Family:
  """The family of an encoder config (CLIPConfig, SiglipConfig, ...)."""
  return FAMILIES[config.family]


def detect(raw: dict[str, Any]) -> Family:
  """The family of a checkpoint from its config.json (as a dict), by model_type; ValueError when none matches."""
  model_type = raw.get("model_type")
  for family in FAMILIES.values():
    if family.model_type == model_type:
      return family
  known = sorted(f.model_type for f in FAMILIES.values())
  raise ValueError(f"model_type is {model_type!r}; the supported encoder families are {known} (a transformers "
                   f"checkpoint with both towers: vision-only or text-only models and other architectures are not "
                   f"supported)")
