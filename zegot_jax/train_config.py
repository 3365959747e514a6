"""The training settings (appendix B, C, F; docs/reading.md) as one dataclass: the one source of their defaults.

A config file's `train` section is `TrainConfig` written out field by field (`config_lib.base_config`), as its
`model` section is `ZegOTConfig`; the trainer reads it back with `from_section`, which checks every value. A
checkpoint written before a field existed resumes when the config holds that field's default
(`checkpoints.check_matches` reads what a checkpoint lacks from these defaults; a field whose default later changed
is listed in `checkpoints.BEHAVED_BEFORE` with what the runs before it did).

Adding a training switch: a field here, whose default is what every run did before it, and the code that reads it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

TEACHER_POLICIES = ("previous", "frozen_then_live")
# What phase 1 of a transductive run does with the unseen classes' channels: "negatives" trains them towards 0 on
# every labelled (seen) pixel; "excluded" leaves them out of the loss until phase 2 ("the rest labels are ignored
# for calculating losses", appendix B), so they stay as the frozen CLIP and the learned prompts make them.
PHASE1_UNSEEN = ("negatives", "excluded")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One run's training: optimizer, the two phases, and how often it logs, saves and evaluates."""

  steps: int = 20000  # VOC's; Context 40k, COCO-Stuff 80k (appendix F)
  batch_size: int = 16  # over all devices and processes
  lr: float = 2e-4  # AdamW's peak learning rate
  weight_decay: float = 0.01
  warmup_steps: int = 1500  # linear warm-up, then poly(poly_power) decay to 0
  poly_power: float = 0.9
  phase1_fraction: float = 0.2  # phase 1 (seen labels only) is the first 20% of the steps (appendix B)
  teacher: str = "previous"  # TEACHER_POLICIES: the pseudo-labelling teacher of phase 2 (selftrain.py)
  live_fraction: float = 0.5  # frozen_then_live: the frozen teacher is used until this fraction of the steps
  phase1_unseen: str = "negatives"  # PHASE1_UNSEEN
  seed: int = 0  # parameters' initialization and the data order
  num_workers: int = 2  # grain worker processes (0: in the main process)
  log_every: int = 50  # steps between metrics rows
  checkpoint_every: int = 2000
  eval_every: int = 5000  # steps between evaluations (0: none; the paper configs use steps // 4)
  eval_max_examples: int = 0  # evaluate on the first N images only (0: all)

  def __post_init__(self):
    for name, low in (("steps", 1), ("batch_size", 1), ("log_every", 1), ("checkpoint_every", 1), ("eval_every", 0),
                      ("eval_max_examples", 0), ("warmup_steps", 0), ("num_workers", 0), ("seed", 0)):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"train.{name}={value!r}: expected an integer >= {low}")
    if not self.lr > 0:
      raise ValueError(f"train.lr={self.lr!r}: expected a positive learning rate")
    if self.teacher not in TEACHER_POLICIES:
      raise ValueError(f"train.teacher={self.teacher!r}: expected a teacher policy of {TEACHER_POLICIES}")
    if self.phase1_unseen not in PHASE1_UNSEEN:
      raise ValueError(f"train.phase1_unseen={self.phase1_unseen!r}: expected one of {PHASE1_UNSEEN}")
    if not 0 <= self.phase1_fraction <= self.live_fraction <= 1:
      raise ValueError(f"train: need 0 <= phase1_fraction ({self.phase1_fraction}) <= live_fraction "
                       f"({self.live_fraction}) <= 1")

  @classmethod
  def from_section(cls, section: Any) -> TrainConfig:
    """The dataclass of a config's `train` section (a ConfigDict or dict); fields it lacks keep their defaults,
    a field the dataclass does not have is an error naming it. ValueError naming the entry."""
    values = dict(section)
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f"train has no field {unknown[0]!r}; its fields are {[f.name for f in dataclasses.fields(cls)]}")
    return cls(**values)


def defaults(config_class: type, prefix: str) -> dict[str, Any]:
  """{"prefix.field": default} of a config dataclass whose fields all have defaults, nested dataclasses flattened
  ("model.sinkhorn.epsilon"), tuples as lists (as a checkpoint's JSON holds them)."""
  return _flatten(config_class(), prefix)


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
  out = {}
  for field in dataclasses.fields(value):
    item, key = getattr(value, field.name), f"{prefix}.{field.name}"
    if dataclasses.is_dataclass(item):
      out.update(_flatten(item, key))
    else:
      out[key] = list(item) if isinstance(item, tuple) else item
  return out
