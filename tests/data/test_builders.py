"""Each benchmark builder on a miniature directory in the real layout, built and read back."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from zegot_jax.data import build, registry
from zegot_jax.data.builders import DatasetContentError, DatasetLayoutError
from zegot_jax.data.classes import COCO_UNUSED_IDS0
from zegot_jax.errors import ConfigError, DamagedFileError

ROOT = pathlib.Path(__file__).resolve().parents[2]

RNG = np.random.default_rng(0)


def _jpeg(path: pathlib.Path, h: int, w: int, mode: str = "RGB") -> np.ndarray:
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
  image = Image.fromarray(pixels)
  if mode != "RGB":
    image = image.convert(mode)
  image.save(path, format="JPEG", quality=90)
  return np.asarray(Image.open(path).convert("RGB"))  # what a reader must decode


def _label_png(path: pathlib.Path, values: np.ndarray, palette: bool = True) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.fromarray(values.astype(np.uint8), mode="L")
  if palette:  # VOC's labels are palette PNGs: the stored indices are the classes
    image = image.convert("P")
    image.putpalette([c for i in range(256) for c in (i, (i * 7) % 256, (i * 13) % 256)])
  image.save(path)


def _label_values(h, w, values):
  """A blocky label map using each of `values` at least once."""
  label = np.full((h, w), values[0], np.uint8)
  for i, v in enumerate(values):
    label[(i * 3) % h:(i * 3) % h + 3, :] = v
  return label


def _read_back(name, data_dir):
  dataset = registry.load(name, data_dir)
  out = {}
  for split, source in dataset.splits.items():
    out[split] = {ex["image_id"].decode(): ex for ex in (source[i] for i in range(len(source)))}
  return dataset, out


@pytest.fixture()
def voc_dir(tmp_path):
  root = tmp_path / "manual" / "VOCdevkit" / "VOC2012"
  expected = {}
  raw = {"2007_000001": [0, 1, 5, 255], "2007_000002": [0, 20, 16], "2008_000003": [0, 7, 255],
         "2009_000004": [0, 3, 17], "2010_000005": [0, 20, 1, 255]}
  for image_id, values in raw.items():
    h, w = 24, 32
    pixels = _jpeg(root / "JPEGImages" / f"{image_id}.jpg", h, w)
    label = _label_values(h, w, values)
    folder = "SegmentationClassAug" if image_id == "2008_000003" else "SegmentationClass"
    _label_png(root / folder / f"{image_id}.png", label)
    mapped = np.where((label == 0) | (label == 255), 255, label.astype(int) - 1).astype(np.uint8)
    expected[image_id] = (pixels, mapped)
  sets = root / "ImageSets" / "Segmentation"
  sets.mkdir(parents=True)
  (sets / "train.txt").write_text("2007_000001\n2007_000002\n")
  (sets / "aug.txt").write_text("2007_000002\n2008_000003\n")  # overlaps train.txt; union = 3 ids
  (sets / "val.txt").write_text("2009_000004\n2010_000005\n")
  return tmp_path / "manual", expected


def test_voc_builds_with_class_mapping_splits_and_labels(voc_dir, tmp_path):
  manual, expected = voc_dir
  build.build("voc12_zs3", tmp_path / "data", str(manual), allow_partial=True)
  dataset, splits = _read_back("voc12_zs3", tmp_path / "data")
  assert set(splits["train"]) == {"2007_000001", "2007_000002", "2008_000003"}
  assert set(splits["validation"]) == {"2009_000004", "2010_000005"}
  for split in splits.values():
    for image_id, ex in split.items():
      pixels, label = expected[image_id]
      np.testing.assert_array_equal(ex["image"], pixels)  # the JPEG bytes are stored as they were
      np.testing.assert_array_equal(ex["label"][..., 0], label)
  # Class 20 (tvmonitor) becomes 19, background and boundaries 255; pixel counts survive.
  ex = splits["validation"]["2010_000005"]["label"][..., 0]
  assert set(np.unique(ex)) == {0, 19, 255}
  meta = dict(dataset.builder.info.metadata)
  assert meta["classes"][15:] == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
  assert meta["unseen"] == [15, 16, 17, 18, 19] and meta["ignore_index"] == 255


def test_voc_official_counts_are_enforced(voc_dir, tmp_path):
  manual, _ = voc_dir
  with pytest.raises(DatasetContentError, match=r"split 'train' has 3 examples.*official split has 10582"):
    build.build("voc12_zs3", tmp_path / "data", str(manual))


def test_voc_bad_label_values_name_the_file(voc_dir, tmp_path):
  manual, _ = voc_dir
  bad = manual / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2009_000004.png"
  _label_png(bad, _label_values(24, 32, [0, 21, 30]))
  with pytest.raises(DatasetContentError, match=r"2009_000004\.png: label values \[21, 30\] are not valid.*0\.\.20"):
    build.build("voc12_zs3", tmp_path / "data", str(manual), allow_partial=True)


def test_corrupt_image_and_size_mismatch_name_the_file(voc_dir, tmp_path):
  manual, _ = voc_dir
  root = manual / "VOCdevkit" / "VOC2012"
  (root / "JPEGImages" / "2009_000004.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
  with pytest.raises(DatasetContentError, match=r"2009_000004\.jpg: not a readable image"):
    build.build("voc12_zs3", tmp_path / "a", str(manual), allow_partial=True)
  _jpeg(root / "JPEGImages" / "2009_000004.jpg", 20, 32)
  with pytest.raises(DatasetContentError, match=r"2009_000004\.png: label is 24x32 but image .* is 20x32"):
    build.build("voc12_zs3", tmp_path / "b", str(manual), allow_partial=True)


def test_missing_directories_show_the_expected_layout(tmp_path):
  with pytest.raises(DatasetLayoutError, match=r"(?s)does not exist.*JPEGImages/<id>\.jpg.*aug\.txt"):
    build.build("voc12_zs3", tmp_path / "data", str(tmp_path / "nowhere"), allow_partial=True)
  (tmp_path / "empty").mkdir()
  with pytest.raises(DatasetLayoutError, match=r"(?s)does not exist or is empty.*SegmentationClassContext"):
    build.build("pascal_context59_zs3", tmp_path / "data", str(tmp_path / "empty"), allow_partial=True)
  with pytest.raises(DatasetLayoutError, match=r"(?s)pass --manual_dir.*stuffthingmaps"):
    build.build("coco_stuff171_zs3", tmp_path / "data", None)
  with pytest.raises(FileNotFoundError, match=r"(?s)not built .*python -m zegot_jax\.data\.build voc12_zs3"):
    registry.load("voc12_zs3", tmp_path / "data")
  with pytest.raises(ValueError, match="unknown dataset 'voc'"):
    registry.load("voc", tmp_path / "data")


def test_pascal_context_59(tmp_path):
  root = tmp_path / "manual" / "VOCdevkit" / "VOC2010"
  ids = {"2008_000001": [0, 1, 59], "2008_000002": [0, 31, 33, 255], "2008_000003": [5, 0]}
  for image_id, values in ids.items():
    _jpeg(root / "JPEGImages" / f"{image_id}.jpg", 16, 20)
    _label_png(root / "SegmentationClassContext" / f"{image_id}.png", _label_values(16, 20, values), palette=False)
  sets = root / "ImageSets" / "SegmentationContext"
  sets.mkdir(parents=True)
  (sets / "train.txt").write_text("2008_000001\n2008_000003\n")
  (sets / "val.txt").write_text("2008_000002\n")
  build.build("pascal_context59_zs3", tmp_path / "data", str(tmp_path / "manual"), allow_partial=True)
  dataset, splits = _read_back("pascal_context59_zs3", tmp_path / "data")
  assert set(splits["train"]) == {"2008_000001", "2008_000003"} and set(splits["validation"]) == {"2008_000002"}
  assert set(np.unique(splits["train"]["2008_000001"]["label"])) == {0, 58, 255}  # aeroplane, wood, background
  assert set(np.unique(splits["validation"]["2008_000002"]["label"])) == {30, 32, 255}  # keyboard, motorbike
  assert dataset.spec.unseen_names[:3] == ("aeroplane", "bird", "boat")


def test_coco_stuff_official_and_converted_labels(tmp_path):
  root = tmp_path / "manual"
  # Official stuffthingmaps: value = COCO id − 1; 12 (id 13, stop sign) → class 11; 181 (wood) → 170.
  _jpeg(root / "images" / "train2017" / "000000000001.jpg", 12, 16)
  _label_png(root / "annotations" / "train2017" / "000000000001.png", _label_values(12, 16, [0, 12, 181, 255]),
             palette=False)
  # A grayscale JPEG (COCO has some) is stored as RGB.
  gray = _jpeg(root / "images" / "train2017" / "000000000002.jpg", 12, 16, mode="L")
  _label_png(root / "annotations" / "train2017" / "000000000002.png", _label_values(12, 16, [91, 92]),
             palette=False)
  # mmsegmentation's converted labels are used as they are.
  _jpeg(root / "images" / "val2017" / "000000000003.jpg", 12, 16)
  _label_png(root / "annotations" / "val2017" / "000000000003_labelTrainIds.png",
             _label_values(12, 16, [0, 170, 255]), palette=False)
  build.build("coco_stuff171_zs3", tmp_path / "data", str(root), allow_partial=True)
  dataset, splits = _read_back("coco_stuff171_zs3", tmp_path / "data")
  assert set(np.unique(splits["train"]["000000000001"]["label"])) == {0, 11, 170, 255}
  assert dataset.spec.classes[11] == "stop sign" and dataset.spec.classes[170] == "wood"
  np.testing.assert_array_equal(splits["train"]["000000000002"]["image"], gray)
  assert splits["train"]["000000000002"]["image"].shape == (12, 16, 3)
  assert set(np.unique(splits["train"]["000000000002"]["label"])) == {80, 81}  # banner, blanket
  assert set(np.unique(splits["validation"]["000000000003"]["label"])) == {0, 170, 255}
  # An id with no annotations in COCO 2017 is an error that names it.
  _label_png(root / "annotations" / "val2017" / "000000000003_labelTrainIds.png", _label_values(12, 16, [171]),
             palette=False)
  with pytest.raises(DatasetContentError, match=r"label values \[171\]"):
    build.build("coco_stuff171_zs3", tmp_path / "data2", str(root), allow_partial=True)
  (root / "annotations" / "val2017" / "000000000003_labelTrainIds.png").unlink()
  _label_png(root / "annotations" / "val2017" / "000000000003.png",
             _label_values(12, 16, [COCO_UNUSED_IDS0[0]]), palette=False)
  with pytest.raises(DatasetContentError, match=rf"label values \[{COCO_UNUSED_IDS0[0]}\]"):
    build.build("coco_stuff171_zs3", tmp_path / "data3", str(root), allow_partial=True)


def _build_cli(*args):
  return subprocess.run([sys.executable, "-m", "zegot_jax.data.build", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def test_a_partial_build_is_recorded_and_never_shadows_a_later_build(voc_dir, tmp_path):
  """A build with --allow_partial says so in its metadata; building again says it is already built (and partial)
  instead of pretending to build; --overwrite rebuilds."""
  manual, _ = voc_dir
  data = tmp_path / "data"
  first = _build_cli("voc12_zs3", f"--manual_dir={manual}", f"--data_dir={data}", "--allow_partial")
  assert first.returncode == 0, first.stderr[-2000:]
  dataset = registry.load("voc12_zs3", data)
  assert dict(dataset.builder.info.metadata)["partial"] == {"train": "3 of 10582", "validation": "2 of 1449"}
  assert registry.partial_note(dataset) == "train 3 of 10582, validation 2 of 1449"  # what training prints
  again = _build_cli("voc12_zs3", f"--manual_dir={manual}", f"--data_dir={data}")
  assert again.returncode == 0 and again.stdout.startswith("already built, not rebuilt: voc12_zs3")
  assert "PARTIAL build (train 3 of 10582, validation 2 of 1449)" in again.stdout and "--overwrite" in again.stdout
  (manual / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").write_text("2009_000004\n")
  rebuilt = _build_cli("voc12_zs3", f"--manual_dir={manual}", f"--data_dir={data}", "--allow_partial", "--overwrite")
  assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
  assert rebuilt.stdout.splitlines()[-1].startswith("built voc12_zs3")
  assert len(registry.load("voc12_zs3", data).splits["validation"]) == 1


def test_an_unknown_builder_config_lists_the_real_ones(tmp_path):
  with pytest.raises(ConfigError, match=r"dataset 'textures_zs3' has no config 'huge'; its configs are "
                                        r"\['default', 'tiny'\]"):
    registry.make_builder("textures_zs3/huge", tmp_path)
  done = _build_cli("textures_zs3/huge", f"--data_dir={tmp_path}")
  assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: dataset")


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_a_damaged_array_record_file_is_named_with_the_fix(tmp_path, damage):
  assert registry.partial_note(build.build("textures_zs3/tiny", tmp_path)) is None  # a full build says nothing
  (path,) = (tmp_path / "textures_zs3" / "tiny").glob("*/textures_zs3-train.array_record-*")
  data = path.read_bytes()
  if damage == "truncate":
    path.write_bytes(data[: len(data) // 3])
  else:  # the middle of the file overwritten: records decode to garbage or fail their checks
    path.write_bytes(data[:1000] + bytes(len(data) - 2000) + data[-1000:])
  with pytest.raises(DamagedFileError, match=r"textures_zs3/tiny.*cannot be read.*rebuild it.*--overwrite"):
    dataset = registry.load("textures_zs3/tiny", tmp_path)
    for i in range(len(dataset.splits["train"])):
      _ = dataset.splits["train"][i]
