"""Single-image prediction with any class list, from a trained run."""

import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from zegot_jax import checkpoints, errors, evaluation, prediction
from zegot_jax.data import textures

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(smoke_run):
  return smoke_run


def evaluation_and_prediction_logits(run, indices):
  """For each evaluation image `indices`: (the logits evaluation computes, the logits predict computes for the image
  saved as a PNG, with the dataset's class list)."""
  config = checkpoints.read_run_config(run)
  trained = checkpoints.load_run(run, config)
  evaluator = evaluation.Evaluator(config, trained.model, trained.tokenizer, mesh=trained.mesh)
  evaluator.segmenter.set_params(trained.params)
  source = evaluation.evaluation_split(config, evaluator.dataset)
  path = run / "eval_image.png"
  predictor = prediction.Predictor(run)
  for i in indices:
    Image.fromarray(source[i]["image"]).save(path)
    ex = evaluator.examples[i]
    expected = np.asarray(evaluator.segmenter.logits(ex["image"], ex["label"].shape))
    got = np.asarray(predictor.logits(prediction.read_image(path), list(evaluator.spec.classes)))
    assert got.shape == expected.shape == (*ex["label"].shape, len(evaluator.spec.classes))
    yield expected, got


def test_predict_and_evaluation_give_the_same_logits(run):
  """A dataset image read from a PNG file by predict, with the dataset's class list, gets exactly the logits that
  evaluation computes for it: one Segmenter, the same resize, windows and stride."""
  for expected, got in evaluation_and_prediction_logits(run, (0, 1)):
    np.testing.assert_array_equal(got, expected)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
  image, _, _ = textures.render_scene(np.random.default_rng(3), 80)
  path = tmp_path_factory.mktemp("img") / "scene.png"
  Image.fromarray(image[:, :72]).save(path)  # non-square, not a multiple of the patch size
  return path


def test_outputs_cover_the_image(run, image_path, tmp_path):
  names = ["star", "ring", "a new class", "heart"]
  summary = prediction.predict(run, image_path, names, out=tmp_path)
  labels = np.asarray(Image.open(tmp_path / "labels.png"))
  assert labels.shape == (80, 72) and set(np.unique(labels)) <= set(range(4))
  overlay = Image.open(tmp_path / "overlay.png")
  assert overlay.mode == "RGB" and overlay.width == 160 and overlay.height > 80  # image above the legend
  masks = [np.asarray(Image.open(p)) for p in sorted(tmp_path.glob("mask_*.png"))]
  assert len(masks) == 4 and all(m.shape == (80, 72) for m in masks)
  np.testing.assert_array_equal(sum((m == 255).astype(int) for m in masks), 1)  # a partition of the pixels
  assert json.loads((tmp_path / "summary.json").read_text())["coverage"] == summary["coverage"]
  assert sum(summary["coverage"].values()) == pytest.approx(1.0)


def test_permuting_the_class_list_keeps_every_pixel_name(run, image_path, tmp_path):
  names = ["star", "ring", "heart", "square", "cross"]
  order = [3, 0, 4, 1, 2]
  prediction.predict(run, image_path, names, out=tmp_path / "a")
  prediction.predict(run, image_path, [names[i] for i in order], out=tmp_path / "b")
  a = np.asarray(Image.open(tmp_path / "a" / "labels.png"))
  b = np.asarray(Image.open(tmp_path / "b" / "labels.png"))
  np.testing.assert_array_equal(np.asarray(names)[a], np.asarray([names[i] for i in order])[b])


def test_threshold_leaves_uncertain_pixels_unassigned(run, image_path, tmp_path):
  summary = prediction.predict(run, image_path, ["star", "ring"], threshold=1.0, out=tmp_path)
  assert summary["unassigned"] == 1.0
  assert (np.asarray(Image.open(tmp_path / "labels.png")) == prediction.UNASSIGNED).all()


def test_bad_inputs_are_named(run, image_path, tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing.png does not exist"):
    prediction.predict(run, tmp_path / "nothing.png", ["star"])
  (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
  with pytest.raises(ValueError, match=r"broken\.png: not a readable image"):
    prediction.predict(run, tmp_path / "broken.png", ["star"])
  with pytest.raises(ValueError, match="repeat"):
    prediction.predict(run, image_path, ["star", "Star"])
  with pytest.raises(FileNotFoundError, match=r"config\.json does not exist"):
    prediction.predict(tmp_path, image_path, ["star"])


def test_a_threshold_outside_0_1_is_refused(run, image_path):
  with pytest.raises(errors.ConfigError, match=r"--threshold=1\.5: expected a probability in \[0, 1\]"):
    prediction.predict(run, image_path, ["star"], threshold=1.5)


def test_images_of_the_same_name_and_reruns_never_mix_outputs(run, image_path, tmp_path):
  """Two files called scene.png get two directories; a rerun with another class list leaves no mask of the old one."""
  other = tmp_path / "elsewhere" / image_path.name
  other.parent.mkdir()
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(other)
  first = prediction.predict(run, image_path, ["star", "ring", "cross"])
  second = prediction.predict(run, other, ["star", "ring", "cross"])
  assert first["out"] != second["out"] and pathlib.Path(first["out"]).name.startswith("scene-")
  again = prediction.predict(run, image_path, ["plain"])
  assert again["out"] == first["out"]
  assert sorted(p.name for p in pathlib.Path(again["out"]).glob("mask_*.png")) == ["mask_000_plain.png"]


def test_a_16_bit_image_is_segmented_as_its_8_bit_copy(run, image_path, tmp_path):
  """predict scales a 16-bit PNG to 8 bits (PIL alone would clip it to white): same labels as the 8-bit image."""
  gray8 = np.asarray(Image.open(image_path).convert("L"))
  Image.fromarray(gray8).save(tmp_path / "gray8.png")
  Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "gray16.png")  # 255 → 65535
  np.testing.assert_array_equal(prediction.read_image(tmp_path / "gray16.png"), prediction.read_image(tmp_path / "gray8.png"))
  names = ["star", "ring", "cross"]
  prediction.predict(run, tmp_path / "gray8.png", names, out=tmp_path / "a")
  prediction.predict(run, tmp_path / "gray16.png", names, out=tmp_path / "b")
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / "labels.png")),
                                np.asarray(Image.open(tmp_path / "b" / "labels.png")))


def test_the_cli_reports_mistakes_in_one_line(run, image_path, tmp_path):
  def cli(*args):
    done = subprocess.run([sys.executable, "-m", "zegot_jax.predict", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-3000:]
    return done.stderr.strip()

  assert cli("--workdir", str(run), "--image", str(image_path), "--classes", "star", "--threshold", "1.5") == (
      "error: --threshold=1.5: expected a probability in [0, 1] (0 assigns every pixel)")
  assert cli("--workdir", str(run), "--image", str(tmp_path / "none.png"), "--classes", "star") == (
      f"error: image {tmp_path / 'none.png'} does not exist")
  broken = tmp_path / "broken_run"
  broken.mkdir()
  (broken / "config.json").write_text((run / "config.json").read_text()[:100])  # cut by a crash or a full disk
  assert cli("--workdir", str(broken), "--image", str(image_path), "--classes", "star").startswith(
      f"error: {broken / 'config.json'} is damaged (")


def test_the_cli_takes_config_overrides_as_train_and_evaluate_do(run, image_path, tmp_path):
  """--config FILE with --config.<field>=... as for train and evaluate: a misspelt field is named, an override
  reaches the model (cuDNN asked for on a CPU is refused by the model's own check), and a harmless one segments
  exactly as the run's own config.json does."""
  config = ["--config", "configs/textures_zs3.py:runlocal=True",
            f"--config.data_dir={checkpoints.read_run_config(run).data_dir}"]

  def cli(*args):
    return subprocess.run([sys.executable, "-m", "zegot_jax.predict", "--workdir", str(run), "--image",
                           str(image_path), "--classes", "star,ring", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)

  wrong = cli(*config, "--config.eval.batch_windos=1")
  assert wrong.returncode == 2 and wrong.stderr.strip() == (
      "error: --config.eval.batch_windos: the config has no field 'batch_windos'; did you mean 'batch_windows'?")
  cudnn = cli(*config, "--config.clip.attention=cudnn")
  assert cudnn.returncode == 2 and cudnn.stderr.strip().startswith(
      "error: config clip.attention='cudnn': cuDNN's fused attention cannot run here"), cudnn.stderr[-2000:]
  done = cli(*config, "--config.eval.batch_windows=1", "--out", str(tmp_path / "overridden"))
  assert done.returncode == 0, done.stderr[-2000:]
  plain = cli("--out", str(tmp_path / "plain"))
  assert plain.returncode == 0, plain.stderr[-2000:]
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "overridden" / "labels.png")),
                                np.asarray(Image.open(tmp_path / "plain" / "labels.png")))


def test_a_photo_is_read_upright_by_its_exif_orientation(tmp_path):
  """Orientation 6 (the camera was turned a quarter clockwise): the pixels are stored on their side and shown
  rotated 90° clockwise; predict reads them as shown."""
  stored = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(stored).save(tmp_path / "photo.png", exif=exif)
  np.testing.assert_array_equal(prediction.read_image(tmp_path / "photo.png"), np.rot90(stored, k=-1))


def test_an_image_over_max_side_is_downscaled_not_refused(run, image_path, tmp_path):
  big = np.asarray(Image.open(image_path).resize((144, 160), Image.Resampling.NEAREST))  # (160, 144)
  Image.fromarray(big).save(tmp_path / "big.png")
  summary = prediction.predict(run, tmp_path / "big.png", ["star", "ring"], max_side=100, out=tmp_path / "out")
  assert summary["size"] == [100, 90]
  assert np.asarray(Image.open(tmp_path / "out" / "labels.png")).shape == (100, 90)
  assert prediction.fit_within(big, 200) is big


def test_one_predictor_serves_class_lists_and_images_without_recompiling(run, image_path):
  """Switching class lists keeps each list's logits exact (text embeddings cached per list), and a second request
  of the same size and number of classes compiles nothing."""
  import jax.monitoring

  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, duration, **_: compiles.append(event) if event.endswith("backend_compile_duration") else None)
  predictor = prediction.Predictor(run)
  image = prediction.read_image(image_path)
  first = np.asarray(predictor.logits(image, ["star", "ring", "cross"]))
  other = np.asarray(predictor.logits(image, ["dots", "plain", "waves"]))
  before = len(compiles)
  again = np.asarray(predictor.logits(image[::-1].copy(), ["star", "ring", "cross"]))  # another image, same size
  assert len(compiles) == before
  np.testing.assert_array_equal(np.asarray(predictor.logits(image, ["star", "ring", "cross"])), first)
  assert not np.array_equal(again, first)
  fresh = prediction.Predictor(run)
  np.testing.assert_array_equal(np.asarray(fresh.logits(image, ["dots", "plain", "waves"])), other)


def test_a_class_name_too_long_for_the_text_tower_is_named_and_changes_nothing(run, image_path):
  predictor = prediction.Predictor(run)
  image = prediction.read_image(image_path)
  before = np.asarray(predictor.logits(image, ["star", "ring"]))
  too_long = "a " * 80 + "star"
  with pytest.raises(prediction.ClassNamesError, match="prompts longer than the text tower's 77 tokens"):
    predictor.segment(image, ["ring", too_long])
  assert predictor.segmenter(["star", "ring"]).class_names == ["star", "ring"]
  np.testing.assert_array_equal(np.asarray(predictor.logits(image, ["star", "ring"])), before)
  with pytest.raises(errors.ConfigError, match=r"^--classes: prompts longer than the text tower's 77 tokens"):
    prediction.predict(run, image_path, ["ring", too_long])


def _segmentation(best, confidence=None, names=None):
  """A Segmentation of a grey image with the given class indices (no model): write_outputs alone."""
  best = np.asarray(best, np.int32)
  names = names or [f"class{k}" for k in range(int(best.max()) + 1)]
  confidence = np.ones(best.shape, np.float32) if confidence is None else confidence
  return prediction.Segmentation(np.zeros((*best.shape, 3), np.uint8), names, None, best, confidence)


@pytest.mark.parametrize("num_classes,dtype,none", [(255, np.uint8, 255), (256, np.uint16, 65535),
                                                    (500, np.uint16, 65535)])
def test_labels_hold_every_class_index_whatever_the_class_count(num_classes, dtype, none, tmp_path):
  """labels.png holds class num_classes - 1 as itself (256 classes: class 255 is not "unassigned"), in 8 bits up to
  255 classes and 16 bits above; the summary's shares count every class."""
  best = np.arange(num_classes * 2).reshape(2, num_classes) % num_classes  # every class twice
  confidence = np.ones(best.shape, np.float32)
  confidence[0, 0] = 0.1  # one pixel below the threshold
  summary = prediction.write_outputs(_segmentation(best, confidence), tmp_path, threshold=0.5)
  labels = np.asarray(Image.open(tmp_path / "labels.png"))
  assert labels.dtype == dtype
  expected = best.copy()
  expected[0, 0] = none
  np.testing.assert_array_equal(labels, expected)
  assert summary["coverage"][f"class{num_classes - 1}"] == pytest.approx(2 / best.size)
  assert summary["coverage"]["class0"] == pytest.approx(1 / best.size) and summary["unassigned"] == 1 / best.size
  mask = np.asarray(Image.open(tmp_path / summary["masks"][-1]))
  np.testing.assert_array_equal(mask == 255, best == num_classes - 1)


def test_300_classes_label_every_pixel_with_its_logits_argmax(run, image_path, tmp_path):
  names = [f"class{k}" for k in range(300)]
  predictor = prediction.Predictor(run)
  expected = np.argmax(np.asarray(predictor.logits(prediction.read_image(image_path), names)), axis=-1)
  prediction.predict(run, image_path, names, out=tmp_path)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "labels.png")), expected)


def _contents(folder):
  return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_an_output_folder_with_the_users_files_is_refused_and_left_as_it_was(tmp_path):
  users = tmp_path / "mine"
  users.mkdir()
  for name, data in (("labels.png", b"my labels"), ("summary.json", b'{"mine": 1}'), ("mask_of_my_cat.png", b"cat")):
    (users / name).write_bytes(data)
  before = _contents(users)
  with pytest.raises(errors.ConfigError, match=rf"--out={users} holds files that predict did not write "
                                               r"\(labels\.png, mask_of_my_cat\.png, summary\.json\); give a new"):
    prediction.write_outputs(_segmentation(np.zeros((4, 4))), users)
  assert _contents(users) == before
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(errors.ConfigError, match=r"a_file is a file; give a folder"):
    prediction.write_outputs(_segmentation(np.zeros((4, 4))), tmp_path / "a_file")


def test_a_rerun_replaces_only_predicts_own_files(tmp_path):
  """In a folder predict wrote, a rerun with another class list removes the old masks, and a file the user put
  there since stays."""
  out = tmp_path / "out"
  prediction.write_outputs(_segmentation(np.arange(6).reshape(2, 3)), out)
  (out / "my_notes.txt").write_text("keep me")
  prediction.write_outputs(_segmentation(np.zeros((2, 3)), names=["sky"]), out)
  assert sorted(p.name for p in out.iterdir()) == ["labels.png", "mask_000_sky.png", "my_notes.txt", "overlay.png",
                                                   "summary.json"]


def test_a_full_disk_while_writing_is_one_line(tmp_path, monkeypatch):
  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(Image.Image, "save", full)
  with pytest.raises(errors.StorageError, match=r"--out=.*: could not write the outputs: No space left on device; "
                                                r"free space on that disk or write elsewhere"):
    prediction.write_outputs(_segmentation(np.zeros((2, 3))), tmp_path / "out")


def test_paths_that_are_not_image_files_are_named_as_what_they_are(run, tmp_path):
  with pytest.raises(errors.MissingFileError, match=rf"image {tmp_path} is a folder, not an image file"):
    prediction.read_image(tmp_path)
  fifo = tmp_path / "pipe"
  os.mkfifo(fifo)
  with pytest.raises(errors.MissingFileError, match=r"pipe is not a regular file \(a pipe, socket or device\)"):
    prediction.read_image(fifo)


def test_an_image_over_the_pixel_limit_is_refused_before_decoding_naming_the_limit(image_path, monkeypatch):
  with pytest.raises(errors.UserError, match=r"scene\.png: 72×80 = 5,760 pixels, over the limit of 1,000 pixels"):
    prediction.read_image(image_path, max_pixels=1000)
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's own guard refuses at open (over twice its limit)
  with pytest.raises(errors.UserError, match=r"scene\.png: 5,760 pixels, over the limit of 2,000 pixels"):
    prediction.read_image(image_path)


@pytest.mark.parametrize("suffix,kind", [(".png", "PNG"), (".jpg", "JPEG")])
def test_a_truncated_image_is_named_as_its_format_cut_short(suffix, kind, tmp_path):
  whole = tmp_path / f"whole{suffix}"
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(whole)
  cut = tmp_path / f"cut{suffix}"
  cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
  with pytest.raises(errors.DamagedFileError, match=rf"cut\{suffix}: a {kind} file that cannot be decoded \(OSError: "
                                                    r"image file is truncated.*\); it may be truncated"):
    prediction.read_image(cut)


def test_a_folder_and_a_pattern_are_segmented_image_by_image_with_one_table(run, image_path, tmp_path):
  """Folder + pattern + a repeated file: each image once, in its own folder, with the labels predict gives it
  alone; a file that is not an image is recorded in the table and the others go on."""
  photos = tmp_path / "photos"
  photos.mkdir()
  (photos / "sub").mkdir()  # not looked into
  Image.open(image_path).save(photos / "a.png")
  Image.open(image_path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photos / "b.jpg")
  (photos / "notes.txt").write_text("not an image, not an image suffix")
  (photos / "c.png").write_text("not an image either")
  names = ["star", "ring", "cross"]
  batch = prediction.predict_many(run, [photos, str(photos / "*.png"), photos / "a.png"], names,
                                  out=tmp_path / "out", progress=False)
  assert [pathlib.Path(r["image"]).name for r in batch["rows"]] == ["a.png", "b.jpg", "c.png"]
  assert batch["failed"] == 1 and "c.png: not a readable image" in batch["rows"][2]["error"]
  table = [json.loads(line) for line in pathlib.Path(batch["table"]).read_text().splitlines()]
  assert table == batch["rows"] and pathlib.Path(batch["table"]).parent == tmp_path / "out"
  for row in batch["rows"][:2]:
    alone = prediction.predict(run, row["image"], names, out=tmp_path / "alone" / pathlib.Path(row["image"]).stem)
    np.testing.assert_array_equal(np.asarray(Image.open(pathlib.Path(row["out"]) / "labels.png")),
                                  np.asarray(Image.open(pathlib.Path(alone["out"]) / "labels.png")))
    assert row["coverage"] == alone["coverage"] and pathlib.Path(row["out"]).parent == tmp_path / "out"
  with pytest.raises(errors.MissingFileError, match=r"the folder holds no image files"):
    prediction.predict_many(run, [photos / "sub"], names)
  with pytest.raises(errors.MissingFileError, match=r"the pattern matches no file"):
    prediction.predict_many(run, [str(photos / "*.gif")], names)


def test_the_cli_takes_a_folder_and_exits_2_naming_the_images_it_could_not_read(run, image_path, tmp_path):
  photos = tmp_path / "photos"
  photos.mkdir()
  Image.open(image_path).save(photos / "a.png")
  (photos / "broken.png").write_bytes(b"\x89PNG not really")
  done = subprocess.run([sys.executable, "-m", "zegot_jax.predict", "--workdir", str(run), "--image", str(photos),
                         "--classes", "star,ring", "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 2, done.stderr[-3000:]
  assert f"{photos / 'broken.png'}: {photos / 'broken.png'}: not a readable image" in done.stdout
  assert "2 images, table: " in done.stdout and (tmp_path / "out").is_dir()
  assert done.stderr.strip().splitlines()[-1].startswith("error: 1 of 2 images could not be segmented")


def test_a_closed_vocabulary_names_the_words_the_model_lacks(run, image_path, tmp_path):
  """The smoke run's random CLIP has no vocabulary.json (open: nothing is flagged); the same run with one names each
  unknown word in the summary, and still segments, with the same labels."""
  names = ["star ring", "car", "sun"]
  open_summary = prediction.predict(run, image_path, names, out=tmp_path / "open")
  assert open_summary["unknown_words"] == []
  closed = tmp_path / "closed_run"
  shutil.copytree(run, closed)
  (closed / "random_tiny_clip" / "vocabulary.json").write_text(json.dumps({"words": ["star", "ring", "sun"]}))
  predictor = prediction.Predictor(closed)
  assert "knows only the 3 words it was trained on: star, ring, sun" in predictor.describe_model()
  summary = prediction.predict(closed, image_path, names, out=tmp_path / "closed")
  assert summary["unknown_words"] == ["car"]
  assert summary["coverage"] == open_summary["coverage"]


def test_the_reported_probability_percentiles_are_thresholds_that_leave_that_share_unassigned(tmp_path):
  confidence = np.random.default_rng(0).uniform(0.1, 0.6, (40, 50)).astype(np.float32)
  summary = prediction.write_outputs(_segmentation(np.zeros((40, 50)), confidence), tmp_path / "a")
  c = summary["confidence"]
  assert 0.1 < c["p5"] < c["p50"] < c["p95"] < 0.6
  for key, share in (("p5", 0.05), ("p50", 0.5), ("p95", 0.95)):
    again = prediction.write_outputs(_segmentation(np.zeros((40, 50)), confidence), tmp_path / key, threshold=c[key])
    assert again["unassigned"] == pytest.approx(share, abs=1 / confidence.size)
