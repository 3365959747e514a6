"""The generated VOC and COCO-Stuff layouts: built through the real builders and read back, labels and all."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from zegot_jax import errors
from zegot_jax.data import build, registry
from zegot_jax.data.classes import IGNORE_INDEX, coco_stuff_lut
from zegot_jax.tools import benchmark_data, make_benchmark_data

SIZES = {"voc12_zs3": {(375, 500), (500, 375)}, "coco_stuff171_zs3": {(480, 640), (640, 480)}}
JPEG_KB = {"voc12_zs3": (70, 140), "coco_stuff171_zs3": (110, 220)}  # real averages: about 105 and 155 KB


def _written(dataset: str, manual: pathlib.Path) -> dict[str, dict[str, tuple[pathlib.Path, pathlib.Path]]]:
  """split → image id → (JPEG, label PNG) as written, found from the layout's own lists and folders."""
  if dataset == "voc12_zs3":
    voc = manual / "VOCdevkit" / "VOC2012"
    sets = voc / "ImageSets" / "Segmentation"
    lines = {name: (sets / f"{name}.txt").read_text().split() for name in ("train", "aug", "val")}
    assert lines["train"] and lines["aug"] and not set(lines["train"]) & set(lines["aug"])
    folder = {**{i: "SegmentationClass" for i in lines["train"] + lines["val"]},
              **{i: "SegmentationClassAug" for i in lines["aug"]}}
    return {split: {i: (voc / "JPEGImages" / f"{i}.jpg", voc / folder[i] / f"{i}.png") for i in ids}
            for split, ids in (("train", lines["train"] + lines["aug"]), ("validation", lines["val"]))}
  out = {}
  for split, folder in (("train", "train2017"), ("validation", "val2017")):
    out[split] = {p.stem: (p, manual / "annotations" / folder / f"{p.stem}.png")
                  for p in (manual / "images" / folder).glob("*.jpg")}
  return out


def _expected_label(dataset: str, raw: np.ndarray) -> np.ndarray:
  """The builders' documented mapping: VOC 0 and 255 → 255, v → v − 1; COCO's stuffthingmaps through the LUT."""
  if dataset == "voc12_zs3":
    return np.where((raw == 0) | (raw == 255), IGNORE_INDEX, raw.astype(int) - 1).astype(np.uint8)
  return np.asarray(coco_stuff_lut(), np.uint8)[raw]


@pytest.fixture(scope="module", params=["voc12_zs3", "coco_stuff171_zs3"])
def built(request, tmp_path_factory):
  dataset = request.param
  tmp = tmp_path_factory.mktemp(dataset)
  manual = make_benchmark_data.write_layout(dataset, tmp / "manual", 6, seed=0, validation_count=2)
  return dataset, manual, build.build(dataset, tmp / "data", str(manual), allow_partial=True)


def test_layout_round_trips_through_the_real_builder(built):
  dataset, manual, loaded = built
  written = _written(dataset, manual)
  assert {k: len(v) for k, v in written.items()} == {"train": 6, "validation": 2}
  assert {k: len(v) for k, v in loaded.splits.items()} == {"train": 6, "validation": 2}
  assert registry.partial_note(loaded)  # built as a partial copy
  kb = [p.stat().st_size / 1e3 for files in written.values() for p, _ in files.values()]
  assert JPEG_KB[dataset][0] < np.mean(kb) < JPEG_KB[dataset][1]
  for split, source in loaded.splits.items():
    for example in source:
      image_id = example["image_id"].decode()
      jpeg, png = written[split][image_id]
      with Image.open(jpeg) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        pixels = np.asarray(image)
      assert example["image"].shape[:2] in SIZES[dataset]
      np.testing.assert_array_equal(example["image"], pixels)  # the JPEG is stored as written
      with Image.open(png) as label_image:
        mode, raw = label_image.mode, np.asarray(label_image)
      label = example["label"][..., 0]
      np.testing.assert_array_equal(label, _expected_label(dataset, raw))
      assert len(np.unique(label[label != IGNORE_INDEX])) >= 1  # every example shows a class
      if dataset == "voc12_zs3":  # VOC's palette PNGs have boundaries, SBD's grayscale ones do not
        assert (mode, IGNORE_INDEX in raw) in {("P", True), ("L", False)}
        assert set(np.unique(raw)) <= set(range(21)) | {IGNORE_INDEX}
      else:
        assert mode == "L" and (raw < 91).any() and (raw >= 91).any()  # things on stuff


def test_stage_breakdown_runs_on_the_built_dataset(built):
  _, _, loaded = built
  rows, facts = benchmark_data.stage_breakdown(loaded, 2, batch=2)
  assert facts["examples"] == 2 and facts["crop_checks"] >= 2
  assert rows[1][0] == "decode image (JPEG)" and all(ms >= 0 for _, ms in rows)
  assert sum(ms for row, ms in rows if not row.startswith(" ")) > 0


def test_layouts_are_a_function_of_the_seed(tmp_path):
  def files(seed, name):
    root = make_benchmark_data.write_layout("voc12_zs3", tmp_path / name, 2, seed, validation_count=1)
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

  first, again, other = files(0, "a"), files(0, "b"), files(1, "c")
  assert first == again
  assert first.keys() == other.keys() and first != other


def test_refuses_a_non_empty_output_and_other_datasets(tmp_path):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "old.txt").write_text("x")
  with pytest.raises(make_benchmark_data.OutputNotEmptyError, match="not an empty directory"):
    make_benchmark_data.write_layout("voc12_zs3", tmp_path / "out", 2)
  with pytest.raises(errors.ConfigError, match="no synthetic layout for dataset 'pascal_context59_zs3'"):
    make_benchmark_data.write_layout("pascal_context59_zs3", tmp_path / "new", 2)
