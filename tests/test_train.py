"""Training and evaluation: exact resume after SIGTERM, 8 devices vs 1, two processes, configs, the CLIs."""

import importlib.util
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from zegot_jax import checkpoints, config_lib, evaluation, from_config, trainer
from zegot_jax.models import prompts, zegot

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMING_METRICS = ("images_per_s", "seconds_per_step", "data_wait_fraction")  # machine-dependent, not state
CONFIGS = sorted((ROOT / "configs").glob("*.py"))
PYTHON = sys.executable


def _load_config_module(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _runlocal(data_dir, **train):
  config = _load_config_module(ROOT / "configs" / "textures_zs3.py").get_config("runlocal=True")
  config.data_dir = str(data_dir)
  config.train.update({"eval_every": 0, **train})
  return config


def _checkpoint(workdir, step):
  return ocp.StandardCheckpointer().restore(pathlib.Path(workdir) / "checkpoints" / str(step) / "state")


def _metrics(workdir):
  rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in r.items() if k not in TIMING_METRICS} for r in rows]


@pytest.mark.slow  # exact resume is also proven by every fault test (tests/test_faults.py)
def test_resume_after_sigterm_is_bit_exact(data_dir, tmp_path):
  config = _runlocal(data_dir, steps=6, checkpoint_every=4)
  full = trainer.train_and_evaluate(config, tmp_path / "full")
  assert full["step"] == 6 and not full["stopped"]

  def preempt(step):
    if step == 3:  # between two periodic checkpoints: the SIGTERM save is the only one at step 3
      os.kill(os.getpid(), signal.SIGTERM)

  first = trainer.train_and_evaluate(config, tmp_path / "killed", on_step=preempt)
  assert first["stopped"] and first["step"] == 3
  assert (tmp_path / "killed" / "checkpoints" / "3").is_dir()
  resumed = trainer.train_and_evaluate(config, tmp_path / "killed")
  assert resumed["step"] == 6 and not resumed["stopped"]

  a, b = _checkpoint(tmp_path / "full", 6), _checkpoint(tmp_path / "killed", 6)
  leaves_a, leaves_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [k for k, _ in leaves_a] == [k for k, _ in leaves_b] and len(leaves_a) > 10
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))  # params, opt_state, teacher
  assert _metrics(tmp_path / "full") == _metrics(tmp_path / "killed")  # identical, no duplicated lines


@pytest.mark.slow
def test_a_run_opens_its_dataset_once_and_evaluates_with_one_compilation(data_dir, tmp_path, monkeypatch):
  """Training and its periodic evaluations share one opened dataset; every evaluation after the first reuses the
  evaluator's compiled programs (no new compilation of the segmentation)."""
  opened = []
  open_dataset = from_config.open_dataset
  monkeypatch.setattr(from_config, "open_dataset", lambda *a, **k: opened.append(a) or open_dataset(*a, **k))
  evaluations = []
  monkeypatch.setattr(evaluation.Evaluator, "__call__", _recording(evaluation.Evaluator.__call__, evaluations))
  result = trainer.train_and_evaluate(_runlocal(data_dir, steps=6, checkpoint_every=6, eval_every=2,
                                                eval_max_examples=2), tmp_path)
  assert len(opened) == 1 and len(evaluations) == 3
  assert len({id(e) for e in evaluations}) == 1  # one evaluator for the run
  windows = evaluations[0].segmenter._windows  # pylint: disable=protected-access
  assert windows._cache_size() == 1  # pylint: disable=protected-access
  assert result["eval"]["examples"] == 2


def _recording(method, calls):
  def wrapper(self, *args, **kwargs):
    calls.append(self)
    return method(self, *args, **kwargs)
  return wrapper


def test_the_teacher_keeps_its_own_text_embeddings(data_dir, tmp_path):
  """The train state carries the teacher's class embeddings instead of running the text tower for the teacher:
  at a checkpoint where the teacher is frozen (frozen_then_live), they are the teacher's, not the student's."""
  config = _runlocal(data_dir, steps=4, checkpoint_every=2, teacher="frozen_then_live", live_fraction=0.5, lr=0.05,
                    warmup_steps=0)
  trainer.train_and_evaluate(config, tmp_path)  # phase 1 = step 0; frozen at step 1; live from step 2
  state = _checkpoint(tmp_path, 2)
  clip = from_config.load_clip(config, tmp_path, create=False)
  model = from_config.build_model(config, clip)
  spec = from_config.open_dataset(config).spec
  tokens = zegot.class_tokens(prompts.load_tokenizer(clip.path), spec.classes, model.config)

  def text(params):
    return model.apply({"params": zegot.merge_params(params, clip.params)}, tokens, method="encode_classes")

  teacher, student = text(state["teacher"]), text(state["params"])
  assert float(np.abs(teacher - student).max()) > 1e-3  # the student has moved on
  np.testing.assert_allclose(state["teacher_text"], teacher, rtol=0, atol=1e-5)


def test_checkpoint_that_does_not_match_the_config_is_refused(data_dir, tmp_path):
  trainer.train_and_evaluate(_runlocal(data_dir, steps=2, checkpoint_every=2), tmp_path)
  other = _runlocal(data_dir, steps=4, checkpoint_every=2)
  other.model.ensemble_lambda = 0.5
  with pytest.raises(ValueError, match=r"(?s)these entries differ:.*model.ensemble_lambda: checkpoint has 0.8, "
                                       r"config has 0.5.*train.steps: checkpoint has 2, config has 4"):
    trainer.train_and_evaluate(other, tmp_path)


def test_a_checkpoint_from_before_an_added_entry_matches_its_old_behaviour(data_dir):
  """Checkpoints written before train.phase1_unseen existed behaved as "negatives": they resume under that value
  and are refused under the other."""
  config = _runlocal(data_dir, steps=2, checkpoint_every=2)
  saved = checkpoints.checked_config(config)
  del saved["train.phase1_unseen"]
  checkpoints.check_matches(saved, config, "old")
  config.train.phase1_unseen = "excluded"
  with pytest.raises(ValueError, match=r"train.phase1_unseen: checkpoint has 'negatives', config has 'excluded'"):
    checkpoints.check_matches(saved, config, "old")


def test_a_run_from_before_the_score_scale_reads_back_as_it_was_trained(data_dir, tmp_path):
  """A run's config.json written before model.score_scale existed is read as τ = 1 (what it was trained with), not
  as today's default; its checkpoint is refused under another τ."""
  config = _runlocal(data_dir, steps=2, checkpoint_every=2)
  config.model.score_scale = 10.0
  old = json.loads(config.to_json())
  for key in ("score_scale", "score_scale_learnable", "score_scale_at"):
    del old["model"][key]
  (tmp_path / "config.json").write_text(json.dumps(old))
  read = checkpoints.read_run_config(tmp_path)
  assert (read.model.score_scale, read.model.score_scale_learnable, read.model.score_scale_at) == (1.0, False,
                                                                                                   "logits")
  saved = {k: v for k, v in checkpoints.checked_config(config).items() if not k.startswith("model.score_scale")}
  with pytest.raises(ValueError, match=r"model.score_scale: checkpoint has 1.0, config has 10.0"):
    checkpoints.check_matches(saved, config, "old")


def _run_worker(workdir, data_dir, *overrides, env=None):
  return subprocess.Popen([PYTHON, str(ROOT / "tests" / "train_worker.py"), str(workdir), str(data_dir),
                           *overrides], env={**os.environ, **(env or {})}, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process, timeout=600):
  out, _ = process.communicate(timeout=timeout)
  assert process.returncode == 0, out[-3000:]
  return out


def _params(path):
  with np.load(path) as f:
    return {k: f[k] for k in f}


def test_eight_devices_equal_one_device(data_dir, tmp_path):
  """data=4 × fsdp=2 (the frozen CLIP really split over fsdp) against one device, same global batch of 8.

  Tolerance: Adam divides by the gradient's magnitude, so parameters whose gradient is float noise around 0
  (a bias that barely matters) move by ±lr either way; everything else agrees to rtol 1e-3.
  """
  common = ["train.batch_size=8", "train.steps=3", "mesh.fsdp_min_size=0"]
  eight = _run_worker(tmp_path / "eight", data_dir, *common, "mesh.fsdp=2",
                      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert "devices 8" in _finish(eight)
  one = _run_worker(tmp_path / "one", data_dir, *common)
  assert "devices 1" in _finish(one)
  a, b = _params(tmp_path / "eight" / "params_0.npz"), _params(tmp_path / "one" / "params_0.npz")
  for k in b:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=3 * 2e-4 * 3, err_msg=k)
  losses = lambda w: [m["loss"] for m in _metrics(w)]
  np.testing.assert_allclose(losses(tmp_path / "eight"), losses(tmp_path / "one"), rtol=1e-5)


@pytest.mark.slow
def test_two_processes_train_to_identical_params(data_dir, tmp_path):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  workers = [_run_worker(tmp_path, data_dir, "train.steps=2",
                         env={"JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
                              "JAX_PROCESS_ID": str(i)}) for i in range(2)]
  outs = [_finish(w) for w in workers]
  assert all("processes 2 step 2" in o for o in outs)
  a, b = _params(tmp_path / "params_0.npz"), _params(tmp_path / "params_1.npz")
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
@pytest.mark.parametrize("arg,overrides", [("", {}), ("setting=inductive", {}), ("setting=supervised", {}),
                                           ("runlocal=True", {}),
                                           ("", {"model.matching": "none", "model.prompts": "handcrafted"})])
def test_every_config_builds(path, arg, overrides):
  """Each config's model initializes (shapes only, jax.eval_shape) with the CLIP it names: ViT-B/16 shapes for
  the benchmarks (no download needed for shapes), the tiny CLIP for runlocal."""
  from zegot_jax.models import clip as clip_lib, tiny_clip  # pylint: disable=g-import-not-at-top
  from zegot_jax.models.clip import vit_b16_config  # pylint: disable=g-import-not-at-top

  config = config_lib.apply_overrides(_load_config_module(path).get_config(arg), overrides)
  assert {f: getattr(from_config.model_config(config), f.split(".")[1]) for f in overrides} == overrides
  clip_config = (clip_lib.tiny_config() if config.clip.path == tiny_clip.RANDOM_TINY
                 else vit_b16_config(config.clip.image_size))
  model = zegot.ZegOT(clip_config, from_config.model_config(config))
  k = 5
  tokens = (jax.ShapeDtypeStruct((k, 16), np.int32) if model.config.prompts == "learnable"
            else jax.ShapeDtypeStruct((k, model.config.n_prompts, 16), np.int32))
  size = config.clip.image_size
  images = jax.ShapeDtypeStruct((1, size, size, 3), np.uint8)
  variables = jax.eval_shape(model.init, jax.random.key(0), images, tokens)
  out, _ = jax.eval_shape(model.apply, variables, images, tokens)
  assert out.logits.shape == (1, size, size, k)
  assert config.train.steps > 0 and config.setting == (arg.partition("setting=")[2] or "transductive")


def test_config_argument_and_override_typos_are_errors(tmp_path):
  module = _load_config_module(ROOT / "configs" / "voc12_zs3.py")
  with pytest.raises(ValueError, match=r"config argument 'settting=inductive'"):
    module.get_config("settting=inductive")
  with pytest.raises(ValueError, match="expected transductive, inductive or supervised"):
    module.get_config("setting=semi")
  with pytest.raises(ValueError, match=r"--config.<section>.matching=.*--config.model.matching=none"):
    module.get_config("matching=none")  # one field: --config.model.matching=none, not a variant
  loaded = subprocess.run([PYTHON, "-c", "import sys, zegot_jax.config_lib, importlib.util\n"
                           "print(sorted(m for m in sys.modules if m.startswith('zegot_jax.models')))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded  # config_lib does not import the model
  result = subprocess.run([PYTHON, "-m", "zegot_jax.train", "--config", "configs/voc12_zs3.py",
                           "--config.train.stpes=5", "--workdir", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode != 0 and "stpes" in result.stderr


def test_train_then_evaluate_through_both_clis(data_dir, tmp_path):
  """The evaluate CLI, given only the run's folder, reproduces the in-training evaluation exactly, numbers and
  pictures (eval.pictures), and draws its pictures into a folder of its own, beside training's."""
  args = ["--config", "configs/textures_zs3.py:runlocal=True", f"--config.data_dir={data_dir}",
          "--config.eval.pictures=2", "--workdir", str(tmp_path)]
  trained = subprocess.run([PYTHON, "-m", "zegot_jax.train", *args], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert "hIoU" in trained.stdout
  drawn = {p.name: p.read_bytes() for p in (tmp_path / "pictures").iterdir()}
  assert json.loads(drawn["pictures.json"])["step"] == 6 and len(drawn) == 4  # 2 rows, the figure, the index
  evaluated = subprocess.run([PYTHON, "-m", "zegot_jax.evaluate", "--workdir", str(tmp_path), "--max_examples=4"],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  result = json.loads((tmp_path / "eval_textures_zs3_validation_transductive_6_bias0_first4.json").read_text())
  logged = [r for r in _metrics(tmp_path) if "eval/hIoU" in r][-1]
  # The CLI restored from orbax what training evaluated in memory: the same images give the same numbers.
  for key in ("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU"):
    assert result[key] == pytest.approx(logged[f"eval/{key}"], abs=1e-9)
  assert set(result["report"]["per_class"]) == set(result["report"]["split"])
  # ... and the same pictures, drawn again from the checkpoint, to the byte, in their own folder: training's stay.
  own = tmp_path / "pictures" / "eval_textures_zs3_validation_transductive_6_bias0_first4"
  assert {p.name: p.read_bytes() for p in own.iterdir()} == drawn
  assert {p.name: p.read_bytes() for p in (tmp_path / "pictures").iterdir() if p.is_file()} == drawn


def test_a_checkpoint_lacking_any_field_is_matched_against_what_it_ran(data_dir):
  """For every model and training field (a field added later, as the next one will be): a checkpoint written
  without it matches a config holding what such checkpoints ran (the field's dataclass default, unless the default
  changed since), and is refused, by name, under another value; a config leaving the field out reads as today's
  default. No list to keep for a new field: the defaults are ZegOTConfig's and TrainConfig's."""
  config = _runlocal(data_dir, steps=2, checkpoint_every=2)
  saved = checkpoints.checked_config(config)
  before, today = checkpoints.behaved_before(), checkpoints.defaults()
  fields = [k for k in saved if k.startswith(("model.", "train.")) and k in before]
  assert len(fields) > 30 and "train.phase1_unseen" in fields and "model.sinkhorn.epsilon" in fields
  for key in fields:
    without = {k: v for k, v in saved.items() if k != key}
    if saved[key] == before[key]:
      checkpoints.check_matches(without, config, "old")
    else:  # e.g. runlocal's dfa_layers (1, 2): a checkpoint without the field ran the default, not this
      with pytest.raises(ValueError, match=re.escape(f"{key}: checkpoint has {before[key]!r}, config has")):
        checkpoints.check_matches(without, config, "old")
  assert today["train.seed"] == 0 and today["model.sinkhorn.solver"] == "batched"
  del config.train.seed  # a config file that leaves a field out trains with its default: the same run
  checkpoints.check_matches(saved, config, "new")


def test_checkpoints_from_before_the_batched_solver_ran_ott_jax_unrolled(data_dir):
  """The fields whose default changed after they came: a checkpoint without model.sinkhorn.solver / .gradient
  (before 2026-12-02) ran ott-jax differentiated through its iterations, so it matches the demo's config (which
  pins those) and is refused under today's default solver; one without model.ga_init (before 2026-11-28) started
  Q at random."""
  demo = config_lib.load_config(str(ROOT / "configs" / "demo.py"))
  assert (demo.model.sinkhorn.solver, demo.model.sinkhorn.gradient) == ("ott", "unrolled")
  saved = {k: v for k, v in checkpoints.checked_config(demo).items()
           if k not in ("model.sinkhorn.solver", "model.sinkhorn.gradient")}
  checkpoints.check_matches(saved, demo, "old")
  default = _runlocal(data_dir, steps=2, checkpoint_every=2)
  saved = {k: v for k, v in checkpoints.checked_config(default).items() if k != "model.sinkhorn.solver"}
  with pytest.raises(ValueError, match=r"model.sinkhorn.solver: checkpoint has 'ott', config has 'batched'"):
    checkpoints.check_matches(saved, default, "old")
  saved = {k: v for k, v in checkpoints.checked_config(default).items() if k != "model.ga_init"}
  with pytest.raises(ValueError, match=r"model.ga_init: checkpoint has 'random', config has 'identity'"):
    checkpoints.check_matches(saved, default, "old")
