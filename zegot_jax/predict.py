r"""Segments any image with any list of class names, using a trained run.

  python -m zegot_jax.predict --workdir runs/demo --image photo.png --classes "star,ring,cat"
  python -m zegot_jax.predict --workdir runs/voc --image street.jpg --classes "car,person,tree" --threshold 0.3
  python -m zegot_jax.predict --workdir runs/voc --image holidays/ --image 'shots/*.jpg' --classes "car,person,sky"

--image takes a file, a folder (its image files, not its subfolders) or a quoted pattern, and may be repeated.
One image: its files go to --out. Several (a folder, a pattern, a repeated flag): the model is loaded once, a
progress bar runs, each image gets its own folder <--out or <workdir>/predictions>/<image name>-<hash>/, and one
table of the batch, a JSON line per image (its folder and each class's share, or why it could not be read), goes
to predict_<time>.jsonl beside them; an image that cannot be read is recorded and the others go on (exit code 2
at the end, naming how many failed).

Writes, in --out (default: <workdir>/predictions/<image name>-<8 hex digits of its full path>/, so that two
images of the same name never share a directory):
  overlay.png            the image with every class coloured, and a legend with the class names
  labels.png             the class index of every pixel: 8-bit with 255 where no class passed --threshold; with
                         more than 255 classes 16-bit, with 65535 there
  mask_<k>_<class>.png   one black/white mask per class (k: its index in --classes)
  summary.json           the fraction of the image each class covers, and the files written
--out must be new, empty, or a folder predict wrote before: a rerun replaces only predict's own files there (the
ones its summary.json lists); a folder holding anything else is refused, so nothing of yours is overwritten.

--max_side N (default 2048; 0: full size) downscales an image whose long side is over N pixels first (the app does
so at 1024), so the outputs have the downscaled size. At full size a 6000×4000 photo took 23.8 s and 2.5 GB and
wrote a 22.7 MB overlay (2-core CPU, 2026-12-04).

The run's config is read from <workdir>/config.json (written by training) unless --config is given, whose fields
--config.<section>.<field>=... overrides as for train and evaluate (e.g. --config.data_dir, --config.clip.attention). The image is
resized so its short side is the run's input size, segmented with sliding windows, and the per-class sigmoid
scores are resized back to the original image. 16-bit and float images are scaled to 8 bits (`data/images.py`);
a photo is turned upright by its EXIF orientation first. Images over PIL's decompression-bomb limit (178,956,970
pixels) are refused before decoding.
"""

from __future__ import annotations

import functools
import glob
import pathlib
import sys

from absl import flags, logging
from ml_collections import config_flags

from zegot_jax import cli, errors
from zegot_jax.prediction import predict, predict_many


def _define_flags() -> dict:
  """The CLI's flags, defined only when run as a program (so that importing this module defines none)."""
  return dict(
      workdir=flags.DEFINE_string("workdir", None, "a training run's directory"),
      image=flags.DEFINE_multi_string("image", None, "an image file, a folder of them or a quoted pattern; repeatable"),
      classes=flags.DEFINE_list("classes", None, "comma-separated class names, e.g. 'star,ring,cat'"),
      threshold=flags.DEFINE_float("threshold", 0.0, "pixels whose best class probability is below stay unassigned"),
      step=flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)"),
      max_side=flags.DEFINE_integer("max_side", 2048, "downscale images whose long side is over this many pixels "
                                    "(0: segment at full size)"),
      out=flags.DEFINE_string("out", None, "output folder (default: <workdir>/predictions/<image name>-<hash>); "
                              "several images: one folder per image inside it"),
      config=config_flags.DEFINE_config_file("config", None, "the run's config file (default: <workdir>/config.json); "
                                             "its fields may be overridden: --config.clip.attention=xla",
                                             lock_config=True),
  )


def _warn_unknown(words: list[str]) -> None:
  if words:
    print(f"warning: {', '.join(repr(w) for w in words)} unknown to this model (its CLIP has a closed vocabulary, "
          f"listed in its vocabulary.json): segmented, but these words mean nothing to it", file=sys.stderr)


def main(argv, f: dict):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = f["config"].value  # None: the run's config.json
  workdir = errors.path_flag(f["workdir"].value, "--workdir", "runs/demo")
  inputs = [str(errors.path_flag(i, "--image", "photo.jpg")) for i in f["image"].value]
  options = dict(config=config, step=f["step"].value, threshold=f["threshold"].value, out=f["out"].value,
                 max_side=f["max_side"].value or None)
  if len(inputs) == 1 and not glob.has_magic(inputs[0]) and not pathlib.Path(inputs[0]).is_dir():
    summary = predict(workdir, inputs[0], f["classes"].value, **options)
    _warn_unknown(summary["unknown_words"])
    for name, share in sorted(summary["coverage"].items(), key=lambda kv: -kv[1]):
      print(f"{name:<24} {100 * share:6.2f}%")
    c = summary["confidence"]
    print(f"unassigned               {100 * summary['unassigned']:6.2f}%\n"
          f"best-class probability   {c['p5']:.2f} / {c['p50']:.2f} / {c['p95']:.2f} (5th / 50th / 95th percentile of "
          f"the pixels: --threshold between them leaves the less sure pixels unassigned)\nwritten to {summary['out']}")
    return
  batch = predict_many(workdir, inputs, f["classes"].value, **options)
  _warn_unknown(batch["unknown_words"])
  for row in batch["rows"]:
    if "error" in row:
      print(f"{row['image']}: {row['error']}")
    else:
      top, share = max(row["coverage"].items(), key=lambda kv: kv[1])
      print(f"{row['image']}: {top} {100 * share:.1f}% (largest) → {row['out']}")
  print(f"{len(batch['rows'])} images, table: {batch['table']}")
  if batch["failed"]:
    raise errors.UserError(f"{batch['failed']} of {len(batch['rows'])} images could not be segmented; each is named "
                           f"above and in {batch['table']}")


if __name__ == "__main__":
  _flags = _define_flags()
  flags.mark_flags_as_required(["workdir", "image", "classes"])
  cli.run(functools.partial(main, f=_flags))
