"""tensorflow-datasets builders for the zero-shot segmentation benchmarks, written without TensorFlow.

Each builder reads what the user downloaded (tfds' manual_dir), checks it while building (layout, counts,
decodable images, image and label sizes, label values) and writes `array_record` files that
`tfds.data_source` reads back. Features of every example:

  image     (H, W, 3) uint8, stored as the original JPEG (or PNG) bytes when they decode to RGB
  label     (H, W, 1) uint8 PNG: class index 0..K-1 in the dataset's class order, 255 = ignore
  image_id  the file stem

Class names, the unseen split and the ignore value are stored in the dataset's metadata (`classes.DatasetSpec`).
Without TensorFlow tfds encodes only bytes, so images and labels are handed over encoded.
"""

from __future__ import annotations

import dataclasses
import io
import pathlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from zegot_jax.data import classes as classes_lib
from zegot_jax.data import images
from zegot_jax.errors import UserError
from zegot_jax.data.classes import IGNORE_INDEX, DatasetSpec


class DatasetLayoutError(UserError, FileNotFoundError):
  """The manual directory does not hold what the builder expects; the message shows the expected layout."""


class DatasetContentError(UserError, ValueError):
  """A file in the manual directory is corrupt or holds values the dataset does not allow."""


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of an (H, W, 3) image or an (H, W) / (H, W, 1) label."""
  buffer = io.BytesIO()
  Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array).save(buffer, format="PNG")
  return buffer.getvalue()


def read_image_bytes(path: pathlib.Path) -> tuple[bytes, tuple[int, int]]:
  """The file's bytes if they decode to an RGB image (re-encoded as PNG otherwise), and its (H, W)."""
  data = path.read_bytes()
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      if image.mode == "RGB":
        return data, (image.height, image.width)
      rgb = images.to_rgb8(image, str(path))  # 16-bit and float images scaled, not clipped to white
  except images.ImageModeError as e:
    raise DatasetContentError(str(e)) from e
  except Exception as e:  # pylint: disable=broad-except  (PIL raises many types for corrupt files)
    raise DatasetContentError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
  return encode_png(rgb), rgb.shape[:2]


def read_label(path: pathlib.Path) -> np.ndarray:
  """(H, W) uint8 label indices of a PNG (palette PNGs give their palette indices, as VOC's do)."""
  try:
    with Image.open(path) as image:
      if image.mode not in ("P", "L", "I", "I;16"):
        raise DatasetContentError(f"{path}: label PNG has mode {image.mode}; expected a single-channel "
                                  f"(palette or grayscale) image of class indices")
      label = np.asarray(image)
  except DatasetContentError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetContentError(f"{path}: not a readable label image ({type(e).__name__}: {e})") from e
  if label.max(initial=0) > 255:
    raise DatasetContentError(f"{path}: label values up to {label.max()}, expected at most 255")
  return label.astype(np.uint8)


def map_label(label: np.ndarray, lut: Sequence[int], allowed: set[int], path: pathlib.Path) -> np.ndarray:
  """Checks that every value is allowed, then maps values through the 256-entry lookup table."""
  values = set(np.unique(label).tolist())
  bad = sorted(values - allowed)
  if bad:
    raise DatasetContentError(f"{path}: label values {bad[:10]} are not valid for this dataset "
                              f"(allowed: {_describe(allowed)})")
  return np.asarray(lut, np.uint8)[label]


def _describe(values: set[int]) -> str:
  v = sorted(values)
  runs, start = [], v[0]
  for a, b in zip(v, v[1:] + [None]):
    if b != a + 1:
      runs.append(f"{start}" if start == a else f"{start}..{a}")
      start = b
  return ", ".join(runs)


def reduce_zero_label_lut(num_classes: int) -> list[int]:
  """0 (background) → ignore, 1..K → 0..K-1, 255 stays ignore (mmseg's reduce_zero_label)."""
  lut = [IGNORE_INDEX] * 256
  for v in range(1, num_classes + 1):
    lut[v] = v - 1
  return lut


def read_split_list(path: pathlib.Path) -> list[str]:
  return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


@dataclasses.dataclass(frozen=True)
class Pair:
  image: pathlib.Path
  label: pathlib.Path


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder):
  """Shared machinery: features, metadata, checks. Subclasses list (image, label) pairs per split."""

  VERSION = tfds.core.Version("1.0.0")
  SPEC: DatasetSpec
  LAYOUT: str  # the expected manual_dir layout, shown in every layout error
  IMAGE_FORMAT = "jpeg"

  def __init__(self, *, verify_counts: bool = True, **kwargs):
    """verify_counts: require the official number of examples per split (off for partial copies and tests)."""
    self._verify_counts = verify_counts
    super().__init__(**kwargs)

  @property
  def spec(self) -> DatasetSpec:
    return self.SPEC

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{self.spec.name}: zero-shot semantic segmentation ({len(self.spec.classes)} classes, "
                    f"unseen: {', '.join(self.spec.unseen_names)}).",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format=self.IMAGE_FORMAT),
            "label": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "image_id": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(self.spec.metadata()),
    )

  # --- subclasses implement these ---------------------------------------------------------------------------
  def _pairs(self, root: pathlib.Path, split: str) -> list[tuple[str, Pair]]:
    raise NotImplementedError

  def _label_lut(self, path: pathlib.Path) -> tuple[Sequence[int], set[int]]:
    """(lookup table, allowed raw values) for a label file."""
    raise NotImplementedError

  def _root(self, manual_dir: pathlib.Path) -> pathlib.Path:
    return manual_dir

  def _voc_root(self, manual_dir: pathlib.Path, year_dir: str) -> pathlib.Path:
    """<manual_dir>/VOCdevkit/<year_dir>, or <manual_dir> itself when it is that directory."""
    for candidate in (manual_dir / "VOCdevkit" / year_dir, manual_dir):
      if (candidate / "JPEGImages").is_dir():
        return candidate
    raise self.layout_error(f"no JPEGImages/ in {manual_dir}/VOCdevkit/{year_dir} or {manual_dir}")

  # --- shared --------------------------------------------------------------------------------------------------
  def layout_error(self, what: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{self.spec.name}: {what}.\nExpected layout of --manual_dir:\n{self.LAYOUT}")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = pathlib.Path(dl_manager.manual_dir)
    if not manual_dir.is_dir():
      raise self.layout_error(f"manual directory {manual_dir} does not exist")
    root = self._root(manual_dir)
    generators, partial = {}, {}
    for split, official in self.spec.split_sizes.items():
      pairs = self._pairs(root, split)
      if self._verify_counts and len(pairs) != official:
        raise DatasetContentError(
            f"{self.spec.name}: split {split!r} has {len(pairs)} examples in {root}, the official split has "
            f"{official}. Check the download, or build a partial copy with --allow_partial.")
      if not pairs:
        raise self.layout_error(f"split {split!r} has no examples in {root}")
      if len(pairs) != official:
        partial[split] = f"{len(pairs)} of {official}"
      generators[split] = self._generate_examples(pairs)
    self.info.metadata["partial"] = partial  # stored in metadata.json: training says when a dataset is partial
    return generators

  def _generate_examples(self, pairs: list[tuple[str, Pair]]) -> Iterator[tuple[str, dict]]:
    for image_id, pair in pairs:
      image_bytes, image_size = read_image_bytes(pair.image)
      lut, allowed = self._label_lut(pair.label)
      label = map_label(read_label(pair.label), lut, allowed, pair.label)
      if label.shape != image_size:
        raise DatasetContentError(f"{pair.label}: label is {label.shape[0]}x{label.shape[1]} but image "
                                  f"{pair.image} is {image_size[0]}x{image_size[1]}")
      yield image_id, {"image": image_bytes, "label": encode_png(label[..., None]), "image_id": image_id}


def _require(path: pathlib.Path, error: Callable[[str], Exception], what: str) -> pathlib.Path:
  if not path.exists():
    raise error(f"{what} {path} is missing")
  return path


def _pairs_from_list(ids: Sequence[str], image_dir: pathlib.Path, label_for: Callable[[str], pathlib.Path],
                     error: Callable[[str], Exception], image_suffix: str = ".jpg") -> list[tuple[str, Pair]]:
  pairs = []
  missing = []
  for image_id in ids:
    pair = Pair(image_dir / f"{image_id}{image_suffix}", label_for(image_id))
    if not pair.image.is_file() or not pair.label.is_file():
      missing.append(str(pair.image if not pair.image.is_file() else pair.label))
      continue
    pairs.append((image_id, pair))
  if missing:
    raise error(f"{len(missing)} files named in the split lists are missing, e.g. {missing[:3]}")
  return pairs


class Voc12Zs3(SegmentationBuilder):
  """PASCAL VOC 2012 with the SBD augmented labels: 20 classes, background and boundaries ignored."""

  name = "voc12_zs3"
  SPEC = classes_lib.VOC12
  LAYOUT = """\
  <manual_dir>/VOCdevkit/VOC2012/          (or <manual_dir> itself being VOC2012/)
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png             VOC labels: 0 background, 1..20 classes, 255 boundary
    SegmentationClassAug/<id>.png          SBD labels converted by mmsegmentation's tools/dataset_converters/voc_aug.py
    ImageSets/Segmentation/train.txt       1,464 ids
    ImageSets/Segmentation/aug.txt         SBD ids (written by voc_aug.py); train = train.txt ∪ aug.txt = 10,582
    ImageSets/Segmentation/val.txt         1,449 ids
  Download: VOCtrainval_11-May-2012.tar from the PASCAL VOC site and SBD's benchmark.tgz, then run voc_aug.py."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT

  def _root(self, manual_dir):
    return self._voc_root(manual_dir, "VOC2012")

  def _pairs(self, root, split):
    sets = root / "ImageSets" / "Segmentation"
    if split == "validation":
      ids = read_split_list(_require(sets / "val.txt", self.layout_error, "split list"))
      return _pairs_from_list(ids, root / "JPEGImages", lambda i: root / "SegmentationClass" / f"{i}.png",
                              self.layout_error)
    ids = read_split_list(_require(sets / "train.txt", self.layout_error, "split list"))
    if (sets / "aug.txt").is_file():
      ids = sorted(set(ids) | set(read_split_list(sets / "aug.txt")))
    elif self._verify_counts:
      raise self.layout_error(f"{sets / 'aug.txt'} (the SBD augmented split) is missing")
    aug = root / "SegmentationClassAug"
    return _pairs_from_list(
        ids, root / "JPEGImages",
        lambda i: aug / f"{i}.png" if (aug / f"{i}.png").is_file() else root / "SegmentationClass" / f"{i}.png",
        self.layout_error)

  def _label_lut(self, path):
    return reduce_zero_label_lut(20), set(range(21)) | {IGNORE_INDEX}


class PascalContext59Zs3(SegmentationBuilder):
  """PASCAL Context, 59 classes, from mmsegmentation's conversion; background ignored."""

  name = "pascal_context59_zs3"
  SPEC = classes_lib.PASCAL_CONTEXT59
  LAYOUT = """\
  <manual_dir>/VOCdevkit/VOC2010/          (or <manual_dir> itself being VOC2010/)
    JPEGImages/<id>.jpg
    SegmentationClassContext/<id>.png      59-class labels: 0 background, 1..59 classes (mmsegmentation's
                                           tools/dataset_converters/pascal_context.py output)
    ImageSets/SegmentationContext/train.txt   4,996 ids
    ImageSets/SegmentationContext/val.txt     5,104 ids
  Download: VOCtrainval_03-May-2010.tar and trainval_merged.json (PASCAL Context), then run pascal_context.py."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT

  def _root(self, manual_dir):
    return self._voc_root(manual_dir, "VOC2010")

  def _pairs(self, root, split):
    name = {"train": "train.txt", "validation": "val.txt"}[split]
    ids = read_split_list(_require(root / "ImageSets" / "SegmentationContext" / name, self.layout_error,
                                   "split list"))
    return _pairs_from_list(ids, root / "JPEGImages",
                            lambda i: root / "SegmentationClassContext" / f"{i}.png", self.layout_error)

  def _label_lut(self, path):
    return reduce_zero_label_lut(59), set(range(60)) | {IGNORE_INDEX}


class CocoStuff171Zs3(SegmentationBuilder):
  """COCO-Stuff 164k: 171 classes from the official stuffthingmaps or mmsegmentation's converted labels."""

  name = "coco_stuff171_zs3"
  SPEC = classes_lib.COCO_STUFF171
  LAYOUT = """\
  <manual_dir>/
    images/train2017/<id>.jpg              118,287 images
    images/val2017/<id>.jpg                5,000 images
    annotations/train2017/<id>.png         official stuffthingmaps_trainval2017 labels (values 0..181, 255)
    annotations/val2017/<id>.png           ... or mmsegmentation's converted <id>_labelTrainIds.png (0..170, 255)
  Download: train2017.zip and val2017.zip (COCO) and stuffthingmaps_trainval2017.zip (COCO-Stuff)."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT

  def _pairs(self, root, split):
    folder = {"train": "train2017", "validation": "val2017"}[split]
    image_dir = _require(root / "images" / folder, self.layout_error, "image directory")
    label_dir = _require(root / "annotations" / folder, self.layout_error, "annotation directory")
    ids = sorted(p.stem for p in image_dir.glob("*.jpg"))

    def label_for(image_id):
      converted = label_dir / f"{image_id}_labelTrainIds.png"
      return converted if converted.is_file() else label_dir / f"{image_id}.png"

    return _pairs_from_list(ids, image_dir, label_for, self.layout_error)

  def _label_lut(self, path):
    if path.name.endswith("_labelTrainIds.png"):
      return list(range(171)) + [IGNORE_INDEX] * 85, set(range(171)) | {IGNORE_INDEX}
    lut = classes_lib.coco_stuff_lut()
    return lut, {v for v in range(182) if lut[v] != IGNORE_INDEX} | {IGNORE_INDEX}


BUILDERS: dict[str, type[SegmentationBuilder]] = {
    b.name: b for b in (Voc12Zs3, PascalContext59Zs3, CocoStuff171Zs3)}
