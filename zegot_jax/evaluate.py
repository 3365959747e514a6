r"""Evaluates a trained ZegOT run from its orbax checkpoint: mIoU(S), mIoU(U), hIoU and per-class IoU.

  python -m zegot_jax.evaluate --config configs/voc12_zs3.py --workdir runs/voc
  python -m zegot_jax.evaluate --config configs/voc12_zs3.py --workdir runs/voc --step 10000
  python -m zegot_jax.evaluate --config configs/coco_stuff171_zs3.py --workdir runs/coco \
      --dataset pascal_context59_zs3        # cross-dataset: the other dataset's class list (Table 3)

Protocol (DESIGN.md): short side resized to the dataset's size (ratio kept), sliding windows of the crop size
with the dataset's stride, logits resized back to the label's resolution, per-class sigmoid scores, argmax
(seen classes lowered by eval.seen_bias in the inductive setting), intersection and union summed over the whole
split. The text embeddings are computed once. Writes eval_<dataset>_<step>.json in the workdir, and the
pictures of Figure 1 in <workdir>/pictures/ when the config asks for them (`--config.eval.pictures=4`).
"""

from __future__ import annotations

import json
import pathlib

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from zegot_jax import evaluation, from_config, metrics

_CONFIG = config_flags.DEFINE_config_file("config", None, "the run's config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "the training run's workdir")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
_DATASET = flags.DEFINE_string("dataset", None, "evaluate on another dataset's classes and images")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 0, "evaluate only the first N images (0: all)")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO; --verbosity=0 brings them back
  from_config.maybe_initialize_distributed()
  config, workdir = _CONFIG.value, pathlib.Path(_WORKDIR.value).expanduser()
  result = evaluation.evaluate_run(workdir, config, _STEP.value, dataset_name=_DATASET.value,
                                   max_examples=_MAX_EXAMPLES.value)
  if jax.process_index() == 0:
    step = result["step"]
    out = workdir / f"eval_{result['dataset']}_{step}.json"
    out.write_text(json.dumps(result, indent=2))
    print(metrics.format_table(result["report"]))
    print(f"step {step}, {result['examples']} images; written to {out}")
    if "pictures" in result:
      print(f"figure: {result['pictures']}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
