r"""ZegOT on the synthetic shapes_zs3 world (builds itself on first use).

  python -m zegot_jax.train --config configs/shapes_zs3.py --workdir runs/shapes
  python -m zegot_jax.train --config configs/shapes_zs3.py:runlocal=True --workdir /tmp/smoke

The CLIP defaults to a tiny random one ("random-tiny"); the offline demo ships a small CLIP pretrained on this
world. Variants as in configs/common.py.
"""

from zegot_jax import config_lib as common


def get_config(arg=None):
  variant = common.parse_arg(arg)
  c = common.base_config(variant, dataset="shapes_zs3", steps=2000, teacher="previous", image_size=96)
  if not variant.runlocal:
    c.clip.path = "random-tiny"
    c.clip.dtype = "float32"
    c.model.dfa_layers = (1, 2)
    c.train.update(dict(batch_size=16, warmup_steps=100, log_every=20, checkpoint_every=500, eval_every=500,
                        eval_max_examples=0))
  return c
