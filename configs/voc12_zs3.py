r"""ZegOT on voc12_zs3 with the paper's settings (ViT-B/16 CLIP, N=4, C=8, DFA layers 8-12, λ=0.8, batch 16,
20000 steps, AdamW).

  python -m zegot_jax.train --config configs/voc12_zs3.py --workdir runs/voc12_zs3
  python -m zegot_jax.train --config configs/voc12_zs3.py:setting=inductive --workdir runs/voc12_zs3_inductive
  python -m zegot_jax.train --config configs/voc12_zs3.py:encoder=siglip --workdir runs/voc12_zs3_siglip
  python -m zegot_jax.train --config configs/voc12_zs3.py:runlocal=True --workdir /tmp/smoke   # seconds on a CPU
  python -m zegot_jax.evaluate --config configs/voc12_zs3.py --workdir runs/voc12_zs3

Variants (after the colon): setting, runlocal, encoder (clip: OpenAI's ViT-B/16;
siglip: google/siglip-base-patch16-224). One field: --config.model.matching=none, --config.train.steps=...
Build the dataset first: python -m zegot_jax.data.build voc12_zs3 ...
"""

from zegot_jax import config_lib as common
from zegot_jax.models.zegot import ZegOTConfig


def get_config(arg=None):
  variant = common.parse_arg(arg)
  return common.base_config(variant, dataset="voc12_zs3", steps=20000, teacher="previous", model=ZegOTConfig())
