r"""Evaluates a trained ZegOT run from its orbax checkpoint: mIoU(S), mIoU(U), hIoU and per-class IoU.

  python -m zegot_jax.evaluate --workdir runs/demo                     # the run's own config (config.json)
  python -m zegot_jax.evaluate --config configs/voc12_zs3.py --workdir runs/voc
  python -m zegot_jax.evaluate --workdir runs/voc --step 10000
  python -m zegot_jax.evaluate --config configs/coco_stuff171_zs3.py --workdir runs/coco \
      --dataset pascal_context59_zs3        # cross-dataset: the other dataset's class list (Table 3)
  python -m zegot_jax.evaluate --workdir /read/only/run --out results/voc.json

Protocol (docs/design.md): short side resized to the dataset's size (ratio kept), sliding windows of the crop size
with the dataset's stride, logits resized back to the label's resolution, per-class sigmoid scores, argmax
(seen classes lowered by eval.seen_bias in the inductive setting), intersection and union summed over the whole
split. The text embeddings are computed once.

Without --config the run's own config.json is used; a --config given must be the run's (model, CLIP, setting and
dataset are checked against the checkpoint), and its overrides (--config.eval.seen_bias=0.1) change only what
evaluation may change. The result is printed, then written to --out (default
<workdir>/eval_<dataset>_<split>_<setting>_<step>_bias<b>[_first<N>].json: every setting that changes the numbers is
in its name and in the file), and the pictures of Figure 1 go to pictures/<that name without .json>/ beside it
when the config asks for them (`--config.eval.pictures=4`), so that no evaluation overwrites another's. Where the
output cannot be written, the evaluation does not start.
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import jax
from absl import flags, logging
from ml_collections import config_flags

from zegot_jax import checkpoints, cli, errors, evaluation, from_config, metrics
from zegot_jax.data import registry

_CONFIG = config_flags.DEFINE_config_file("config", None, "the run's config file (default: <workdir>/config.json)",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "the training run's workdir")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
_DATASET = flags.DEFINE_string("dataset", None, "evaluate on another dataset's classes and images")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 0, "evaluate only the first N images (0: all)", lower_bound=0)
_OUT = flags.DEFINE_string("out", None, "the result file (default: in the workdir, named by its settings)")


def result_name(config, dataset: str, step: int, max_examples: int) -> str:
  """eval_<dataset>_<split>_<setting>_<step>_bias<seen bias>[_first<N>].json: what changes the numbers."""
  first = f"_first{max_examples}" if max_examples else ""
  return (f"eval_{dataset.replace('/', '-')}_{config.eval.split}_{config.setting}_{step}"
          f"_bias{config.eval.seen_bias:g}{first}.json")


def _writable(directory: pathlib.Path) -> None:
  """Fails now, before the evaluation, where the result could not be written after it."""
  try:
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory):
      pass
  except OSError as e:
    raise errors.StorageError(f"cannot write the result in {directory} ({e.strerror or e}); pass --out PATH in a "
                              f"writable place") from e


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and tfds are chatty at INFO; --verbosity=0 brings them back
  from_config.maybe_initialize_distributed()
  workdir = errors.path_flag(_WORKDIR.value, "--workdir", "runs/voc")
  if not workdir.is_dir():
    raise errors.MissingFileError(f"--workdir {workdir} does not exist")
  config = _CONFIG.value or checkpoints.read_run_config(workdir)
  step = checkpoints.existing_step(checkpoints.manager(workdir, read_only=True), workdir, _STEP.value)
  dataset = registry.parse_name(_DATASET.value or config.dataset)[0]
  name = result_name(config, dataset, step, _MAX_EXAMPLES.value)
  out = errors.path_flag(_OUT.value, "--out", "results/voc.json") if _OUT.value is not None else None
  if out is not None and out.is_dir():
    raise errors.ConfigError(f"--out={out} is a folder; give the result file's path, e.g. --out={out / 'result.json'}")
  out_dir = out.parent if out is not None else workdir
  _writable(out_dir)  # before the evaluation, not after it
  result = evaluation.evaluate_run(workdir, config, step, dataset_name=_DATASET.value,
                                   max_examples=_MAX_EXAMPLES.value,
                                   pictures_dir=out_dir / "pictures" / name.removesuffix(".json"))
  if jax.process_index() != 0:
    return
  print(metrics.format_table(result["report"]))
  out = out or workdir / name
  with errors.storage(f"could not write the result to {out}"):
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
  print(f"step {step}, {result['examples']} images; written to {out}")
  if "pictures" in result:
    print(f"figure: {result['pictures']}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
