r"""Starts the app on a run, uses it in headless Chromium as a user would, times each request from the click to
the result on the page, and saves a screenshot of the page.

  python -m zegot_jax.app.screenshot --workdir runs/demo --out docs/app_screenshot.png

Requests, in order: the first example image with the run's dataset's classes (the app compiled the model for it
at start-up), the second example (same size), a 640×480 photo-sized image (another window count: compiles), a
second 640×480 image, a threshold change (no new segmentation: the logits are kept), and the score maps of
another class. Needs the app and test extras and Debian's chromium and chromium-driver (`zegot_jax.app.browser`).
"""

from __future__ import annotations

import functools
import json
import pathlib
import tempfile
import time

import numpy as np
from absl import flags
from PIL import Image

from zegot_jax import cli
from zegot_jax.app import browser
from zegot_jax.data import textures
from zegot_jax.errors import ConfigError


def _define_flags() -> dict:
  return dict(
      workdir=flags.DEFINE_string("workdir", None, "a training run's directory"),
      out=flags.DEFINE_string("out", "app_screenshot.png", "where the screenshot goes"),
      width=flags.DEFINE_integer("width", 1400, "browser window width"),
  )


def timed(action) -> tuple[float, str]:
  """(seconds, what `action` returned)."""
  start = time.perf_counter()
  status = action()
  return time.perf_counter() - start, status


def main(argv, f: dict):
  del argv
  if (reason := browser.missing()) is not None:
    raise ConfigError(f"the screenshot needs a browser: {reason}")
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    for i in (0, 1):  # photo-sized images: textures scenes scaled up
      scene, _, _ = textures.render_scene(np.random.default_rng(100 + i), 64)
      Image.fromarray(scene[8:56]).resize((640, 480), Image.Resampling.NEAREST).save(tmp / f"photo_{i}.png")
    start = time.perf_counter()
    with browser.AppServer(f["workdir"].value, log=tmp / "app.log") as url:
      rows.append(("start: load the run, compile, serve the page", time.perf_counter() - start, ""))
      with browser.Page(url, width=f["width"].value, height=1000) as page:
        page.pick_example(0)
        rows.append(("first request: example 1, 64×64 (compiled at start-up)", *timed(page.segment)))
        page.pick_example(1)
        rows.append(("next request: example 2, same size", *timed(page.segment)))
        page.upload(tmp / "photo_0.png")
        rows.append(("a 640×480 image (2 windows: compiles)", *timed(page.segment)))
        page.upload(tmp / "photo_1.png")
        rows.append(("another 640×480 image", *timed(page.segment)))
        rows.append(("threshold 0.1 (kept logits)", *timed(lambda: page.set_threshold(0.1))))
        page.set_threshold(0)
        page.pick_example(0)
        page.segment()
        present = [line for line in page.shares().splitlines() if line.endswith(")")]  # "dots (seen)", ...
        others = [c for c in present if c != page.shown_class()]  # choosing the class already shown changes nothing
        if others:
          rows.append((f"score maps of {others[0]}", *timed(lambda: page.choose_class(others[0]))))
        page.screenshot(f["out"].value)
  for what, seconds, status in rows:
    print(f"{what:<52} {seconds:6.2f} s   {status}")
  print(json.dumps({what: round(seconds, 3) for what, seconds, _ in rows}))
  print(f"screenshot: {f['out'].value}")


if __name__ == "__main__":
  _flags = _define_flags()
  flags.mark_flags_as_required(["workdir"])
  cli.run(functools.partial(main, f=_flags))
