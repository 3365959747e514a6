"""The browser app (`python -m zegot_jax.app`), started on a trained smoke run and driven in a real headless
Chromium (Debian's chromium and chromium-driver, through Selenium): what the page shows equals what
`zegot_jax.predict` writes for the same input, pixel for pixel; bad inputs get a message and the app keeps serving.

Skipped where Chromium is not installed, except when ZEGOT_REQUIRE_BROWSER=1 (CI sets it): then it fails.
"""

import os
import pathlib
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from zegot_jax import checkpoints, confidence, errors, prediction
from zegot_jax.app import browser
from zegot_jax.app import session as session_lib
from zegot_jax.data import registry, textures
from zegot_jax.pictures import class_maps_row

ROOT = pathlib.Path(__file__).resolve().parents[1]
MISSING = browser.missing()
REQUIRED = os.environ.get("ZEGOT_REQUIRE_BROWSER") == "1"
needs_browser = pytest.mark.skipif(MISSING is not None and not REQUIRED, reason=f"no browser: {MISSING}")


@pytest.fixture(scope="module")
def page(smoke_run, tmp_path_factory):
  """One app server and one page for the module (each test leaves the page usable)."""
  if MISSING:
    pytest.fail(f"ZEGOT_REQUIRE_BROWSER=1 but {MISSING}")
  log = tmp_path_factory.mktemp("app") / "app.log"
  tmp = tmp_path_factory.mktemp("app_tmp")  # the app's temporary files (and Gradio's cache) go here
  server = browser.AppServer(smoke_run, "--examples=2", log=log, env={"TMPDIR": str(tmp)})
  try:
    with server as url, browser.Page(url) as opened:
      yield opened
  finally:
    print(log.read_text()[-3000:] if log.exists() else "no log")
  # SIGTERM stopped it cleanly: server closed, its temporary directory (request files, examples) deleted.
  assert server.returncode == 0 and log.read_text().rstrip().endswith("stopped"), log.read_text()[-2000:]
  assert not list(tmp.glob("zegot_app_*"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """A non-square scene, a 16-bit grey copy stored on its side with EXIF orientation 6, a large scene (over the
  app's 1024 px), and a file that is not an image."""
  d = tmp_path_factory.mktemp("uploads")
  scene, _, _ = textures.render_scene(np.random.default_rng(3), 80)
  Image.fromarray(scene[:, :72]).save(d / "scene.png")
  grey16 = (np.asarray(Image.fromarray(scene[:72, :60]).convert("L")).astype(np.uint16) * 257)
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(np.rot90(grey16, k=1).copy()).save(d / "grey16_rotated.png", exif=exif)
  Image.fromarray(scene).resize((1200, 400), Image.Resampling.NEAREST).save(d / "large.png")
  (d / "notes.txt").write_text("not an image\n")
  return d


def predicted(run, image, names, out, **kw):
  """What `zegot_jax.predict` writes for this input: (overlay, {mask file: mask}, summary)."""
  summary = prediction.predict(run, image, names, out=out, **kw)
  masks = {f: np.asarray(Image.open(out / f)) for f in summary["masks"]}
  return np.asarray(Image.open(out / "overlay.png")), masks, summary


@needs_browser
def test_the_page_shows_predicts_overlay_and_masks_pixel_for_pixel(page, smoke_run, images, tmp_path):
  names = ["zigzag", "dots", "a new class", "plain"]
  assert page.upload(images / "scene.png") == "scene.png: 72×80 as segmented"
  page.set_classes(", ".join(names))
  assert page.segment().startswith("scene.png: 72×80, segmented in ")
  overlay, masks, summary = predicted(smoke_run, images / "scene.png", names, tmp_path)
  np.testing.assert_array_equal(page.image("overlay"), overlay)
  shown = page.masks()
  assert list(shown) == list(masks) == ["mask_000_zigzag.png", "mask_001_dots.png", "mask_002_a_new_class.png",
                                        "mask_003_plain.png"]
  for file, mask in masks.items():
    np.testing.assert_array_equal(shown[file], mask)
  shares = page.shares()
  for name, share in summary["coverage"].items():  # the classes present, marked as the dataset knows them
    if share > 0:
      tag = {"zigzag": "unseen", "dots": "seen", "plain": "seen"}.get(name, "new")
      assert f"{name} ({tag})" in shares

  # The threshold, typed into the slider's box, segments again with the same files as predict --threshold.
  confidence = prediction.Predictor(smoke_run).segment(prediction.read_image(images / "scene.png"), names).confidence
  threshold = float(np.round(np.median(confidence) * 20) / 20)  # on the slider's grid (0.01)
  assert 0 < (confidence < threshold).mean() < 1
  page.set_threshold(threshold)
  overlay, masks, summary = predicted(smoke_run, images / "scene.png", names, tmp_path / "t", threshold=threshold)
  assert 0 < summary["unassigned"] < 1
  np.testing.assert_array_equal(page.image("overlay"), overlay)
  assert all(np.array_equal(page.masks()[f], m) for f, m in masks.items())
  assert "unassigned" in page.shares()
  page.set_threshold(0)


@needs_browser
def test_grey_16_bit_rotated_and_large_images_are_read_as_predict_reads_them(page, smoke_run, images, tmp_path):
  names = ["stripes", "checks", "plain"]
  page.set_classes(", ".join(names))
  assert page.upload(images / "grey16_rotated.png") == "grey16_rotated.png: 60×72 as segmented"  # upright
  page.segment()
  overlay, _, _ = predicted(smoke_run, images / "grey16_rotated.png", names, tmp_path / "a")
  np.testing.assert_array_equal(page.image("overlay"), overlay)
  page.upload(images / "large.png")
  assert page.segment().startswith("large.png: 1200×400, downscaled to 1024×341, segmented in ")
  overlay, _, summary = predicted(smoke_run, images / "large.png", names, tmp_path / "b", max_side=1024)
  assert summary["size"] == [341, 1024]
  np.testing.assert_array_equal(page.image("overlay"), overlay)


@needs_browser
def test_the_score_maps_of_a_chosen_class(page, smoke_run, images):
  names = ["zigzag", "dots", "plain"]
  page.upload(images / "scene.png")
  page.set_classes(", ".join(names))
  page.segment()
  assert page.choose_class("dots (seen)").endswith("score_maps_001_dots.png")
  predictor = prediction.Predictor(smoke_run)
  image = prediction.read_image(images / "scene.png")
  fused = predictor.score_maps(image, names)  # (h, w, K, N)
  probability = 1 / (1 + np.exp(-np.asarray(predictor.segment(image, names).logits[..., 1])))
  expected = np.asarray(class_maps_row(image, fused[:, :, 1], probability, "dots"))
  np.testing.assert_array_equal(page.image("score_maps"), expected)


@needs_browser
def test_the_examples_are_the_runs_evaluation_images_with_an_unseen_class(page, smoke_run, tmp_path):
  config = checkpoints.read_run_config(smoke_run)
  dataset = registry.load(config.dataset, config.data_dir)
  split = config.eval.split
  name = page.pick_example(1).split(":")[0]  # e.g. textures_zs3_tiny_test_0003.png
  assert name.startswith(f"{dataset.spec.name.replace('/', '_')}_{split}_")
  example = dataset.splits[split][int(name[-8:-4])]
  assert np.isin(example["label"], dataset.spec.unseen).any()
  Image.fromarray(example["image"]).save(tmp_path / name)
  page.set_classes("zigzag, dots, plain")
  page.segment()
  overlay, _, _ = predicted(smoke_run, tmp_path / name, ["zigzag", "dots", "plain"], tmp_path / "out")
  np.testing.assert_array_equal(page.image("overlay"), overlay)


@needs_browser
def test_bad_inputs_show_a_message_and_the_app_keeps_serving(page, images):
  page.upload(images / "scene.png")
  page.set_classes("")
  assert page.segment() == "error: no class names: type them separated by commas, e.g. 'zigzag, dots, plain'"
  assert page.image_urls("overlay") == []  # no earlier result beside the error
  page.set_classes("zigzag, dots, Zigzag")
  assert page.segment().startswith("error: class names: class names repeat (case-insensitively): ['Zigzag']")
  page.set_classes("zigzag, , dots")
  assert page.segment().startswith("error: class names: class names at positions [1] are empty")
  page.set_classes("zigzag, " + "very " * 80 + "long")
  assert page.segment().startswith("error: class names: prompts longer than the text tower's 77 tokens")
  message = ("error: notes.txt: not a readable image (UnidentifiedImageError); expected a PNG, JPEG, BMP, GIF, TIFF "
             "or WebP file")
  assert page.upload(images / "notes.txt") == message
  page.set_classes("zigzag, dots")
  assert page.segment() == message
  page.upload(images / "scene.png")
  assert page.segment().startswith("scene.png: 72×80")
  assert page.image("overlay").shape[1] >= 72


@needs_browser
def test_class_names_in_the_status_line_are_text_never_html(page, images):
  """A repeated name holding HTML: the status line shows its characters; no element is made of it (an <img> would
  be inserted, a <style> would swallow the text)."""
  page.upload(images / "scene.png")
  name = "<img src=x id=injected>*b*_c_ <style>#status{display:none}</style>"
  page.set_classes(f"{name}, dots, {name}")
  message = page.segment()
  assert message == f"error: class names: class names repeat (case-insensitively): [{name!r}]; type each name once, " \
                    "separated by commas, e.g. 'zigzag, dots, plain'"
  assert page.driver.find_elements("css selector", "#status img, #status style, #status em, #injected") == []
  assert page.driver.find_element("id", "status").is_displayed()


@needs_browser
def test_class_names_typed_on_new_lines_are_separate_classes_and_enter_does_not_submit(page, images):
  page.upload(images / "scene.png")
  before = page.status()
  page.set_classes("zigzag\ndots\nplain")  # selenium types each "\n" as the Enter key
  assert page.status() == before  # Enter started no request
  assert page.segment().startswith("scene.png: 72×80")
  assert list(page.masks()) == ["mask_000_zigzag.png", "mask_001_dots.png", "mask_002_plain.png"]


@needs_browser
def test_a_name_too_long_for_the_text_tower_is_named(page, images):
  page.upload(images / "scene.png")
  long = "a " + "very " * 70 + "long name"
  page.set_classes(f"zigzag, {long}")
  message = page.segment()
  assert message.startswith("error: class names: prompts longer than the text tower's 77 tokens") and long in message


@needs_browser
def test_many_classes_then_a_few_never_shows_a_gradio_error(page, images):
  """60 classes (the score maps of the 23rd chosen), 100 (over the limit: refused), then 4: each request gets its
  own line, and the last is segmented with its own class list."""
  many = [f"c{k}" for k in range(60)]
  page.upload(images / "scene.png")
  page.set_classes(", ".join(many))
  assert page.segment().startswith("scene.png: 72×80, segmented in ")
  assert page.choose_class("c22 (new)").endswith("score_maps_022_c22.png")
  page.set_classes(", ".join(f"c{k}" for k in range(100)))
  assert page.segment() == (f"error: 100 class names: the app takes at most {session_lib.MAX_CLASSES} per request "
                            "(predict takes more)")
  for names in (["zigzag", "dots", "stripes", "plain"], many, ["zigzag", "plain"]):
    page.set_classes(", ".join(names))
    assert page.segment().startswith("scene.png: 72×80")  # 60 again: kept, not segmented again
    assert len(page.masks()) == len(names)
  assert page.driver.find_elements("css selector", ".toast-body, .error") == []


@needs_browser  # needs gradio and a run; ordered with the app's tests
def test_the_server_refuses_an_upload_over_its_limit_with_a_message(page, tmp_path):
  """The server itself (not only the page) refuses a file over MAX_UPLOAD_MB: 413 and a message, before the file
  is kept; a small one is taken."""
  def upload(size):
    boundary = "zegotboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + b"\0" * size + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{page.url}/gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
      with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
      return e.code, e.read().decode()

  code, text = upload(session_lib.MAX_UPLOAD_MB * 2**20 + 1)
  assert code == 413 and "maximum allowed size" in text, (code, text)
  code, _ = upload(1000)
  assert code == 200


def test_the_threshold_slider_comes_from_the_runs_measurement(smoke_run, tmp_path):
  predictor = prediction.Predictor(smoke_run)
  assert session_lib.Session(predictor, tmp_path / "a").threshold_setting()[:2] == (0.0, 1.0)  # not measured
  measured = confidence.measure(smoke_run, split="test")
  measured["suggested"] = dict(threshold=0.37, unassigned=0.1, wrong_among_unassigned=0.7, accuracy_kept=0.5)
  measured["all"]["percentiles"]["p95"] = 0.81
  path = confidence.write(measured, smoke_run)
  try:
    default, maximum, label = session_lib.Session(predictor, tmp_path / "b").threshold_setting()
    assert (default, maximum) == (0.37, 0.85)
    assert label.endswith("; suggested threshold: 0.37: on textures_zs3 test it leaves 10.0% of the pixels "
                          f"unassigned, 70% of which were wrong (of all pixels: {100 - 100 * measured['all']['accuracy']:.0f}%)")
    measured["step"] += 1  # another checkpoint's measurement is not used
    confidence.write(measured, smoke_run)
    assert session_lib.Session(predictor, tmp_path / "c").threshold_setting()[:2] == (0.0, 1.0)
  finally:
    path.unlink()


def test_class_names_split_on_commas_and_new_lines_and_are_bounded():
  assert session_lib.parse_class_names("zigzag, dots\nstripes\n\n bricks ,plain") == ["zigzag", "dots", "stripes",
                                                                                      "bricks", "plain"]
  with pytest.raises(session_lib.InputError, match=r"65 class names: the app takes at most 64 per request"):
    session_lib.parse_class_names(",".join(f"c{k}" for k in range(65)))
  assert len(session_lib.parse_class_names(",".join(f"c{k}" for k in range(64)))) == session_lib.MAX_CLASSES == 64


def test_an_image_over_the_apps_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch):
  Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(tmp_path / "wide.png")
  monkeypatch.setattr(session_lib, "MAX_PIXELS", 10_000)
  session = session_lib.Session.__new__(session_lib.Session)  # read() needs no model
  session.max_side = 1024
  with pytest.raises(errors.UserError, match=r"wide\.png: 120×100 = 12,000 pixels, over the limit of 10,000 pixels"):
    session.read(tmp_path / "wide.png")


def test_the_cli_reports_mistakes_in_one_line(tmp_path):
  def cli(*args):
    done = subprocess.run([sys.executable, "-m", "zegot_jax.app", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-3000:]
    return done.stderr.strip()

  assert cli("--workdir", str(tmp_path), "--port", "0") == "error: --port=0: expected a port number in 1-65535"
  assert cli("--workdir", str(tmp_path), "--host", "192.0.2.1") == (  # TEST-NET-1: no machine has it
      "error: --host=192.0.2.1: not an address of this machine; use 127.0.0.1 (this machine only) or 0.0.0.0 (every "
      "interface)")
  assert cli("--workdir", str(tmp_path)) == (f"error: {tmp_path / 'config.json'} does not exist: --workdir must be a "
                                             f"training run's directory (or pass --config)")
  assert cli("--workdir", str(tmp_path), "--config", "configs/textures_zs3.py:runlocal=True",
             "--config.eval.batch_windos=1") == ("error: --config.eval.batch_windos: the config has no field "
                                                 "'batch_windos'; did you mean 'batch_windows'?")


@needs_browser  # needs gradio (the test extra) and a run, not the browser; ordered with the app's tests
def test_a_port_in_use_is_one_line(smoke_run):
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "zegot_jax.app", f"--workdir={smoke_run}", f"--port={port}",
                           "--nowarm_up", "--examples=0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2 and done.stderr.strip() == (
      f"error: cannot serve at http://127.0.0.1:{port}: the port is in use; pass another --port, or stop what uses "
      f"this one"), done.stderr[-3000:]


@needs_browser  # needs gradio (the test extra) and a run, not the browser; ordered with the app's tests
def test_a_config_override_reaches_the_model(smoke_run):
  """--config.<field>=... as for train and evaluate: cuDNN's attention asked for on a CPU is refused by the model's
  own check when the run loads, before anything is served."""
  data_dir = checkpoints.read_run_config(smoke_run).data_dir
  done = subprocess.run([sys.executable, "-m", "zegot_jax.app", f"--workdir={smoke_run}", "--port=7871",
                         "--config=configs/textures_zs3.py:runlocal=True", f"--config.data_dir={data_dir}",
                         "--config.clip.attention=cudnn", "--nowarm_up", "--examples=0"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 2 and done.stderr.strip().startswith(
      "error: config clip.attention='cudnn': cuDNN's fused attention cannot run here"), done.stderr[-3000:]
