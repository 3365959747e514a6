"""docs/quickstart.ipynb, every code cell run in order in one namespace (as a kernel runs them) on a small trained
run: what it shows equals what predict writes and what the app draws, and its training steps are the trainer's."""

import json
import os
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from zegot_jax import prediction
from zegot_jax.pictures import class_maps_row

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "quickstart.ipynb"


def run_notebook(path: pathlib.Path) -> dict:
  """Executes the notebook's code cells in order; returns their namespace."""
  cells = json.loads(path.read_text())["cells"]
  namespace = {"__name__": "__main__"}
  for number, cell in enumerate(cells):
    if cell["cell_type"] == "code":
      source = "".join(cell["source"])
      exec(compile(source, f"{path.name}, cell {number}", "exec"), namespace)  # pylint: disable=exec-used
  return namespace


@pytest.fixture(scope="module")
def notebook(smoke_run):
  before = os.environ.get("ZEGOT_RUN")
  os.environ["ZEGOT_RUN"] = str(smoke_run)
  try:
    return run_notebook(NOTEBOOK)
  finally:
    if before is None:
      del os.environ["ZEGOT_RUN"]
    else:
      os.environ["ZEGOT_RUN"] = before


def test_the_notebook_segments_as_predict_does(notebook, smoke_run, tmp_path):
  Image.fromarray(notebook["image"]).save(tmp_path / "scene.png")
  names = notebook["names"]
  prediction.predict(smoke_run, tmp_path / "scene.png", names, out=tmp_path / "out")
  np.testing.assert_array_equal(notebook["labels"], np.asarray(Image.open(tmp_path / "out" / "labels.png")))
  np.testing.assert_array_equal(np.asarray(notebook["overlay"]), np.asarray(Image.open(tmp_path / "out" / "overlay.png")))


def test_the_notebooks_score_maps_are_the_apps(notebook, smoke_run):
  predictor = prediction.Predictor(smoke_run)
  image, names = notebook["image"], notebook["names"]
  k = names.index("zigzag")
  fused = predictor.score_maps(image, names)
  probability = np.asarray(jax.nn.sigmoid(predictor.segment(image, names).logits[..., k]))
  expected = class_maps_row(image, fused[:, :, k], probability, "zigzag")
  np.testing.assert_array_equal(np.asarray(notebook["maps_row"]), np.asarray(expected))


def test_the_notebooks_training_steps_move_the_trainable_params_only(notebook):
  state, new_state, metrics = notebook["state"], notebook["new_state"], notebook["metrics"]
  assert int(new_state.step) == 2 and float(metrics["lr"]) > 0 and np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  labelled = float((np.asarray(notebook["batch_labels"]) != 255).mean())  # unseen textures' pixels: ignored
  assert float(metrics["labelled_fraction"]) == pytest.approx(labelled) and labelled < 1
  changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), state.params,
                                   new_state.params)
  assert all(jax.tree_util.tree_leaves(changed))
