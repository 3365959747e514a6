r"""ZegOT on the synthetic textures_zs3 world (builds itself on first use), with a tiny random CLIP.

  python -m zegot_jax.train --config configs/textures_zs3.py --workdir runs/textures
  python -m zegot_jax.train --config configs/textures_zs3.py:runlocal=True --workdir /tmp/smoke

A smoke and development config: the CLIP is random ("random-tiny"), so it learns nothing zero-shot. The offline
demo (configs/demo.py) runs on the same world with the mini-CLIP pretrained on it. Variants (after the colon):
setting, runlocal, encoder (siglip: a tiny random SigLIP); one field: --config.model.matching=none.
"""

from zegot_jax import config_lib as common
from zegot_jax.models.zegot import ZegOTConfig


def get_config(arg=None):
  variant = common.parse_arg(arg)
  c = common.base_config(variant, dataset="textures_zs3", steps=2000, teacher="previous", model=ZegOTConfig(),
                         image_size=64)
  if not variant.runlocal:
    c.clip.path = "random-tiny"
    c.clip.dtype = "float32"
    c.model.dfa_layers = (1, 2)
    c.train.update(dict(batch_size=16, warmup_steps=100, log_every=20, checkpoint_every=500, eval_every=500,
                        eval_max_examples=0))
  return c
