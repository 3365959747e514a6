r"""The offline demo: ZegOT on the textures world with the shipped mini-CLIP, on a laptop CPU.

  python -m zegot_jax.demo --workdir runs/demo                       # this config, the baseline and the figure
  python -m zegot_jax.train --config configs/demo.py --workdir runs/demo
  python -m zegot_jax.train --config configs/demo.py:setting=inductive --workdir runs/demo_inductive
  python -m zegot_jax.train --config configs/demo.py --config.model.matching=none --workdir runs/demo_no_mpot

Both training phases (seen labels, then self-training on the unseen classes) and the evaluation (mIoU(S),
mIoU(U), hIoU) on the test split. The CLIP was pretrained on captions of this world by
`python -m zegot_jax.demo.pretrain`, from other seeds than the dataset's. Zigzag, bricks and rings are never
labelled. Variants (after the colon): setting, runlocal (the same demo, 160 steps).
"""

from zegot_jax import config_lib as common
from zegot_jax.demo import mini_clip, probe
from zegot_jax.models.mpot import SinkhornConfig
from zegot_jax.models.zegot import ZegOTConfig


def get_config(arg=None):
  variant = common.parse_arg(arg)
  runlocal, variant.runlocal = variant.runlocal, False  # runlocal here: the same demo, fewer steps
  # DFA layers chosen on the validation split (docs/demo.md); hand-crafted prompts: the frames of the mini-CLIP's
  # captions.
  # ott-jax with unrolled gradients: the solver docs/demo.md's results were measured with (the batched default
  # gives the same plans; its implicit gradients differ from unrolled ones short of convergence).
  model = ZegOTConfig(dfa_layers=(2, 3, 4), num_prompts=4, context_length=4, templates=probe.TEMPLATES,
                      sinkhorn=SinkhornConfig(solver="ott", gradient="unrolled"))
  c = common.base_config(variant, dataset="textures_zs3", steps=400, teacher="previous", model=model,
                         image_size=mini_clip.IMAGE_SIZE)
  c.clip.path = str(mini_clip.shipped_path())
  c.clip.dtype = "float32"  # bfloat16 is slower than float32 on CPUs
  c.train.update(dict(
      batch_size=8, lr=1e-3, warmup_steps=30, num_workers=0, log_every=25, checkpoint_every=200,
      phase1_fraction=0.5,  # a short run: phase 1 needs enough steps for the pseudo-labels to be worth using
      eval_every=400))  # and at the last step, whatever train.steps is
  c.eval.split = "test"  # the README's numbers; settings were chosen on "validation"
  c.eval.pictures = 4  # Figure 1 for 4 test images, in <workdir>/pictures
  if runlocal:
    c.train.update(dict(steps=160, checkpoint_every=80, eval_every=160))
  return c
