r"""Segments any image with any list of class names, using a trained run.

  python -m zegot_jax.predict --workdir runs/demo --image photo.png --classes "star,ring,cat"
  python -m zegot_jax.predict --workdir runs/voc --image street.jpg --classes "car,person,tree" --threshold 0.3

Writes, in --out (default: <workdir>/predictions/<image name>-<8 hex digits of its full path>/, so that two
images of the same name never share a directory):
  overlay.png            the image with every class coloured, and a legend with the class names
  labels.png             the class index of every pixel: 8-bit with 255 where no class passed --threshold; with
                         more than 255 classes 16-bit, with 65535 there
  mask_<k>_<class>.png   one black/white mask per class (k: its index in --classes)
  summary.json           the fraction of the image each class covers, and the files written
--out must be new, empty, or a folder predict wrote before: a rerun replaces only predict's own files there (the
ones its summary.json lists); a folder holding anything else is refused, so nothing of yours is overwritten.

--max_side N downscales an image whose long side is over N pixels first (the app does so at 1024), so the outputs
have the downscaled size; without it the image is segmented at its full size.

The run's config is read from <workdir>/config.json (written by training) unless --config is given. The image is
resized so its short side is the run's input size, segmented with sliding windows, and the per-class sigmoid
scores are resized back to the original image. 16-bit and float images are scaled to 8 bits (`data/images.py`);
a photo is turned upright by its EXIF orientation first. Images over PIL's decompression-bomb limit (178,956,970
pixels) are refused before decoding.
"""

from __future__ import annotations

import functools

from absl import flags, logging

from zegot_jax import cli, config_lib, errors
from zegot_jax.prediction import predict


def _define_flags() -> dict:
  """The CLI's flags, defined only when run as a program (so that importing this module defines none)."""
  return dict(
      workdir=flags.DEFINE_string("workdir", None, "a training run's directory"),
      image=flags.DEFINE_string("image", None, "the image to segment"),
      classes=flags.DEFINE_list("classes", None, "comma-separated class names, e.g. 'star,ring,cat'"),
      threshold=flags.DEFINE_float("threshold", 0.0, "pixels whose best class probability is below stay unassigned"),
      step=flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)"),
      max_side=flags.DEFINE_integer("max_side", None, "downscale images whose long side is over this many pixels"),
      out=flags.DEFINE_string("out", None, "output directory (default: <workdir>/predictions/<image name>-<hash>)"),
      config=flags.DEFINE_string("config", None, "config file (default: <workdir>/config.json)"),
  )


def main(argv, f: dict):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = None
  if f["config"].value:
    config = config_lib.load_config(f["config"].value)
  workdir = errors.path_flag(f["workdir"].value, "--workdir", "runs/demo")
  summary = predict(workdir, errors.path_flag(f["image"].value, "--image", "photo.jpg"), f["classes"].value, config=config, step=f["step"].value,
                    threshold=f["threshold"].value, out=f["out"].value, max_side=f["max_side"].value)
  for name, share in sorted(summary["coverage"].items(), key=lambda kv: -kv[1]):
    print(f"{name:<24} {100 * share:6.2f}%")
  print(f"unassigned               {100 * summary['unassigned']:6.2f}%\nwritten to {summary['out']}")


if __name__ == "__main__":
  _flags = _define_flags()
  flags.mark_flags_as_required(["workdir", "image", "classes"])
  cli.run(functools.partial(main, f=_flags))
