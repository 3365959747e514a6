"""A run with another encoder family (SigLIP) through every program: training, evaluation, prediction and the app
agree on its logits; the page says which encoder it is; a run is never read beside another family's encoder."""

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.test_prediction import evaluation_and_prediction_logits
from tests.test_train import _runlocal
from zegot_jax import checkpoints, config_lib, prediction, trainer
from zegot_jax.app import session as session_lib
from zegot_jax.data import textures
from zegot_jax.models import encoders, siglip, tiny_clip

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUNLOCAL = "configs/textures_zs3.py:runlocal=True"


def _cli(*args):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
  config = config_lib.load_config(f"{RUNLOCAL},encoder=siglip")
  assert (config.clip.path, config.clip.family) == ("random-tiny", "siglip")
  config.data_dir = str(data_dir)
  config.train.update(dict(steps=2, checkpoint_every=2, eval_every=0))
  workdir = tmp_path_factory.mktemp("siglip_run")
  trainer.train_and_evaluate(config, workdir)
  return workdir


def test_the_run_holds_a_siglip_encoder(run):
  """random-tiny with clip.family=siglip is a SigLIP: no CLS position, an attention-pooling head, the text tower's
  prompts padded to its 64 positions; the checkpoint records the family."""
  config = checkpoints.read_run_config(run)
  trained = checkpoints.load_run(run, config)
  assert encoders.family_of(trained.model.clip_config) is siglip.FAMILY
  frozen = trained.params["clip"]
  assert "head" in frozen["vision_model"] and "class_embedding" not in frozen["vision_model"]["embeddings"]
  grid = trained.model.clip_config.vision.grid
  assert frozen["vision_model"]["embeddings"]["position_embedding"]["embedding"].shape[0] == grid[0] * grid[1]
  mngr = checkpoints.manager(run, read_only=True)
  assert checkpoints.read_meta(mngr, 2)["encoder_family"] == "siglip"


def test_prediction_gives_the_logits_evaluation_computes(run):
  [(expected, got)] = evaluation_and_prediction_logits(run, (0,))
  np.testing.assert_array_equal(got, expected)
  assert np.ptp(got) > 0  # not a constant map


def test_the_app_segments_with_it_and_names_it(run, tmp_path):
  predictor = prediction.Predictor(run)
  session = session_lib.Session(predictor, tmp_path / "app")
  assert "Its SigLIP (random_tiny_siglip)" in session.describe()
  image, _, _ = textures.render_scene(np.random.default_rng(3), 64)
  path = tmp_path / "scene.png"
  Image.fromarray(image).save(path)
  session.segment(str(path), "zigzag, dots")
  [request] = [d for d in (tmp_path / "app").iterdir() if d.is_dir()]
  labels = np.asarray(Image.open(request / "labels.png"))
  logits = np.asarray(predictor.logits(prediction.read_image(path), ["zigzag", "dots"]))
  np.testing.assert_array_equal(labels, logits.argmax(-1))  # the page shows the SigLIP run's own argmax


def test_evaluate_reads_it_and_refuses_another_family(run, data_dir):
  done = _cli("zegot_jax.evaluate", "--config", RUNLOCAL, f"--config.data_dir={data_dir}", "--workdir", str(run),
              "--config.clip.family=siglip", "--max_examples=2")
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((run / "eval_textures_zs3_validation_transductive_2_bias0_first2.json").read_text())
  assert (result["step"], result["examples"]) == (2, 2)
  wrong = _cli("zegot_jax.evaluate", "--config", RUNLOCAL, f"--config.data_dir={data_dir}", "--workdir", str(run),
               "--config.clip.family=clip")
  assert wrong.returncode == 2, wrong.stderr[-3000:]
  lines = [line for line in wrong.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and "siglip" in lines[0] and "--config.clip.family=siglip" in lines[0], wrong.stderr[-3000:]


def test_resuming_beside_another_family_is_refused_before_writing(run, data_dir):
  config = _runlocal(data_dir, steps=4, checkpoint_every=2)
  config.clip.family = "clip"
  before = sorted(p.name for p in run.iterdir())
  with pytest.raises(checkpoints.ConfigError, match=r"clip.family=clip but the run in .* was trained beside a tiny "
                                                    r"random siglip \(random_tiny_siglip\); set "
                                                    r"--config.clip.family=siglip \(or auto\)"):
    trainer.train_and_evaluate(config, run)
  assert sorted(p.name for p in run.iterdir()) == before  # no random_tiny_clip beside it, no checkpoint


def test_a_checkpoint_is_never_restored_beside_another_family(run):
  """The checkpoint's own record of its encoder (what catches a mix-up the paths do not, e.g. two checkpoints of
  one shape): restoring it for a CLIP is refused by name, for its SigLIP accepted."""
  config = checkpoints.read_run_config(run)
  meta = checkpoints.read_meta(checkpoints.manager(run, read_only=True), 2)
  checkpoints.check_same_encoder(meta, "siglip", config, str(run))
  with pytest.raises(checkpoints.ConfigError, match=r"trained beside a siglip encoder, but clip.family=siglip loads "
                                                    r"a clip one"):
    checkpoints.check_same_encoder(meta, "clip", config, str(run))
  checkpoints.check_same_encoder({k: v for k, v in meta.items() if k != "encoder_family"}, "clip", config, str(run))


@pytest.mark.parametrize("dataset", ["voc12_zs3", "pascal_context59_zs3", "coco_stuff171_zs3"])
def test_each_datasets_config_takes_the_siglip_encoder(dataset):
  """encoder=siglip: google/siglip-base-patch16-224 (ViT-B/16: the same DFA layers 8-12 of 12), at the paper's crop;
  everything else as the CLIP config."""
  clip_config = config_lib.load_config(f"configs/{dataset}.py")
  config = config_lib.load_config(f"configs/{dataset}.py:encoder=siglip")
  assert (config.clip.path, config.clip.family) == ("google/siglip-base-patch16-224", "siglip")
  assert (clip_config.clip.path, clip_config.clip.family) == ("openai/clip-vit-base-patch16", "auto")
  config.clip.path, config.clip.family = clip_config.clip.path, clip_config.clip.family
  assert config.to_dict() == clip_config.to_dict()


def test_the_hub_siglips_shapes_are_base_patch16():
  """What the config names, as transformers describes it (SiglipConfig's defaults are google/siglip-base-patch16-224),
  read by our config reader: ViT-B/16, 12 layers each, the 224 px grid of 14 x 14, a 64-token text tower."""
  import transformers  # pylint: disable=import-outside-toplevel

  ours = siglip.config_from_hf(transformers.SiglipConfig().to_dict(), pos_grid=(14, 14))
  assert ours == siglip.base_patch16_config(224)
  assert (ours.vision.num_hidden_layers, ours.vision.grid, ours.text.max_position_embeddings) == (12, (14, 14), 64)


@pytest.mark.parametrize("arg,expected", [
    ("encoder=bert", "error: --config=configs/voc12_zs3.py:encoder=bert: config argument encoder='bert': expected one of ['clip', 'siglip']; another checkpoint "
                     "of a supported family: --config.clip.path=DIRECTORY_OR_HUB_ID"),
])
def test_an_unknown_encoder_is_one_line(arg, expected):
  done = _cli("zegot_jax.train", "--config", f"configs/voc12_zs3.py:{arg}", "--workdir", "/nonexistent/never")
  assert done.returncode == 2 and done.stderr.strip() == expected, done.stderr[-2000:]


def test_the_demo_refuses_another_encoder_naming_the_smoke_config():
  with pytest.raises(config_lib.ConfigError, match=r"the demo's encoder is its shipped mini-CLIP; for a siglip "
                                                   r"smoke run use configs/textures_zs3.py:encoder=siglip"):
    config_lib.load_config("configs/demo.py:encoder=siglip")


def test_a_run_is_refused_beside_an_encoder_of_another_family_at_its_own_path(data_dir, tmp_path):
  """What no path tells: clip.path names a directory whose SigLIP was replaced by a CLIP (same path, clip.family
  auto, so the config still matches). Resuming and reading the run are refused by the checkpoint's own record."""
  encoder = tmp_path / "encoder"
  tiny_clip.make_random_clip(encoder, family="siglip")
  config = _runlocal(data_dir, steps=2, checkpoint_every=2)
  config.clip.path = str(encoder)
  trainer.train_and_evaluate(config, tmp_path / "run")
  shutil.rmtree(encoder)
  tiny_clip.make_random_clip(encoder, family="clip")
  refusal = r"trained beside a siglip encoder, but clip.family=auto loads a clip one from clip.path="
  with pytest.raises(checkpoints.ConfigError, match=refusal):
    trainer.train_and_evaluate(config, tmp_path / "run")
  with pytest.raises(checkpoints.ConfigError, match=refusal):
    checkpoints.load_run(tmp_path / "run", config)
