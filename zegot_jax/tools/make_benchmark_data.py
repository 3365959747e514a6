r"""Synthetic manual directories in the real layouts of VOC 2012 (with SBD) and COCO-Stuff 164k, at the datasets'
real image sizes: what `zegot_jax.data.build` reads, to measure the data pipeline without the downloads.

  python -m zegot_jax.tools.make_benchmark_data --dataset voc12_zs3 --out /tmp/voc --count 300
  python -m zegot_jax.tools.make_benchmark_data --dataset coco_stuff171_zs3 --out /tmp/coco --count 300
  python -m zegot_jax.data.build voc12_zs3 --manual_dir /tmp/voc --data_dir /tmp/tfds --allow_partial

--count train images and count // 4 validation images (at least 1), in the layout the builder documents:

  voc12_zs3          <out>/VOCdevkit/VOC2012/
                       JPEGImages/<id>.jpg               500×375, a quarter of them portrait 375×500
                       SegmentationClass/<id>.png        palette PNGs: 0 background, 1..20, 255 on 5-px object
                                                         boundaries; for train.txt's and val.txt's ids
                       SegmentationClassAug/<id>.png     grayscale PNGs, 0..20 (SBD has no boundaries), for
                                                         aug.txt's ids
                       ImageSets/Segmentation/{train,aug,val}.txt   train.txt: 1 train id in 7 (1,464 of 10,582)
  coco_stuff171_zs3  <out>/images/{train,val}2017/<id>.jpg         640×480, a quarter of them portrait 480×640
                     <out>/annotations/{train,val}2017/<id>.png    official stuffthingmaps values (COCO id − 1):
                                                                   stuff 91..181 everywhere, things 0..90 (less
                                                                   the 11 unused ids) on top, 255 unlabelled bands

Photos: per region a smooth random colour field with mid- and fine-scale texture, regions shaped as the label's
polygons and ellipses, then luminance and colour noise; JPEG quality 90. They come out at about 95 KB (VOC) and
155 KB (COCO), near the real datasets' averages (about 105 KB and 155 KB: the archives' sizes over their image
counts), so that JPEG decoding costs what it costs on the real files. Labels: VOC has 1-3 object classes per image
(1.5 on average, about as the real one), COCO 2-4 stuff and 1-3 thing classes. Everything is a function of the
seed: example i of a split draws from its own generator, seeded by (seed, split, i).
"""

from __future__ import annotations

import functools
import pathlib
import time
from collections.abc import Sequence

import numpy as np
from absl import flags
from PIL import Image, ImageDraw, ImageFilter

from zegot_jax import cli, errors
from zegot_jax.data.classes import COCO_UNUSED_IDS0, IGNORE_INDEX

DATASETS = ("voc12_zs3", "coco_stuff171_zs3")
SPLIT_STREAMS = {"train": 0, "validation": 1}  # split → generator stream
JPEG_QUALITY = 90
PORTRAIT_SHARE = 0.25
SIZES = {"voc12_zs3": (375, 500), "coco_stuff171_zs3": (480, 640)}  # landscape (h, w)
VOC_TRAIN_TXT_EVERY = 7  # train.txt holds 1,464 of the 10,582 train ids; SBD's aug.txt the rest
VOC_BOUNDARY = 5  # width of VOC's void band around objects, pixels
COCO_THINGS = tuple(v for v in range(91) if v not in COCO_UNUSED_IDS0)
COCO_STUFF = tuple(range(91, 182))

Shape = tuple[str, list]  # ("ellipse", [x0, y0, x1, y1]) or ("polygon", [(x, y), ...])


class OutputNotEmptyError(errors.UserError, FileExistsError):
  """The output directory already holds files (a layout written over another would mix the two)."""


# ---------------------------------------------------------------------------------------------------------------
# Drawing.


def _field(rng: np.random.Generator, size: tuple[int, int], cells: tuple[int, int], lo: float,
           hi: float) -> np.ndarray:
  """(h, w, 3) float32 in [lo, hi]: a random grid of cells (rows, cols) upsampled bicubically."""
  grid = rng.integers(0, 256, (max(cells[0], 1), max(cells[1], 1), 3), dtype=np.uint8)
  smooth = np.asarray(Image.fromarray(grid).resize((size[1], size[0]), Image.Resampling.BICUBIC), np.float32)
  return np.float32(lo) + np.float32((hi - lo) / 255.0) * smooth


def _texture(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
  """A region's look: a smooth colour field, mid-scale colour texture and fine luminance texture."""
  h, w = size
  coarse = _field(rng, size, tuple(rng.integers(2, 5, 2)), 0, 255)
  mid = _field(rng, size, (h // 16, w // 16), -25, 25)  # cells of 16 pixels
  fine = _field(rng, size, (h // 3, w // 3), -40, 40).mean(axis=-1, keepdims=True)  # 3 pixels
  return coarse + mid + fine


def _blob(rng: np.random.Generator, size: tuple[int, int], radius: tuple[float, float]) -> Shape:
  """An ellipse or a star-shaped polygon somewhere in the image, radius a share of the short side."""
  h, w = size
  cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
  r = rng.uniform(*radius) * min(h, w)
  if rng.random() < 0.4:
    rx, ry = r * rng.uniform(0.6, 1.4), r * rng.uniform(0.6, 1.4)
    return "ellipse", [cx - rx, cy - ry, cx + rx, cy + ry]
  n = int(rng.integers(4, 11))
  angles = np.sort(rng.uniform(0, 2 * np.pi, n))
  radii = r * rng.uniform(0.5, 1.2, n)
  return "polygon", [(float(cx + a * np.cos(t)), float(cy + a * np.sin(t))) for a, t in zip(radii, angles)]


def _band(rng: np.random.Generator, size: tuple[int, int]) -> Shape:
  """A full-width region below a jagged line (ground, water, a wall's lower part)."""
  h, w = size
  top = rng.uniform(0.2, 0.8) * h
  xs = np.linspace(0, w, int(rng.integers(3, 9)))
  ys = np.clip(top + rng.normal(0, 0.08 * h, len(xs)), 0, h)
  return "polygon", [(float(x), float(y)) for x, y in zip(xs, ys)] + [(float(w), float(h)), (0.0, float(h))]


def _draw(draw: ImageDraw.ImageDraw, shape: Shape, fill: int) -> None:
  kind, points = shape
  if kind == "ellipse":
    draw.ellipse(points, fill=fill)
  else:
    draw.polygon(points, fill=fill)


def _render(rng: np.random.Generator, size: tuple[int, int], background: int,
            regions: Sequence[tuple[int, Shape]]) -> tuple[np.ndarray, np.ndarray]:
  """(photo (h, w, 3) uint8, raw label (h, w) uint8): each region, in order, covers what it is drawn over, in the
  label with its value, in the photo with its own texture; noise on top."""
  h, w = size
  label = Image.new("L", (w, h), background)
  label_draw = ImageDraw.Draw(label)
  photo = _texture(rng, size)
  for value, shape in regions:
    mask = Image.new("L", (w, h), 0)
    _draw(ImageDraw.Draw(mask), shape, 255)  # the same pixels as in the label: same shape, same rasteriser
    _draw(label_draw, shape, value)
    box = mask.getbbox()
    if box is None:  # drawn outside the image
      continue
    x0, y0, x1, y1 = box
    inside = np.asarray(mask.crop(box))[..., None] > 0
    photo[y0:y1, x0:x1] = np.where(inside, _texture(rng, (y1 - y0, x1 - x0)), photo[y0:y1, x0:x1])
  photo += rng.normal(0, 14, (h, w, 1)).astype(np.float32)  # luminance noise: fine detail, as in photos
  photo += rng.normal(0, 3, (h, w, 3)).astype(np.float32)
  return np.clip(photo, 0, 255).astype(np.uint8), np.asarray(label)


def _boundaries(label: np.ndarray, width: int) -> np.ndarray:
  """True on a band of about `width` pixels wherever the label changes value."""
  image = Image.fromarray(label)
  grown, shrunk = image.filter(ImageFilter.MaxFilter(width)), image.filter(ImageFilter.MinFilter(width))
  return np.asarray(grown) != np.asarray(shrunk)


def _image_size(rng: np.random.Generator, dataset: str) -> tuple[int, int]:
  h, w = SIZES[dataset]
  return (w, h) if rng.random() < PORTRAIT_SHARE else (h, w)


# ---------------------------------------------------------------------------------------------------------------
# Scenes in each dataset's raw label encoding.


def voc_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """(photo, label 0..20): background 0 and 1-3 object classes (1.5 on average), 1-2 objects each."""
  size = _image_size(rng, "voc12_zs3")
  num_classes = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
  classes = rng.choice(np.arange(1, 21), num_classes, replace=False)
  regions = [(int(c), _blob(rng, size, (0.12, 0.4))) for c in classes for _ in range(int(rng.integers(1, 3)))]
  order = rng.permutation(len(regions))
  return _render(rng, size, 0, [regions[i] for i in order])


def coco_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """(photo, stuffthingmaps label): 2-4 stuff classes covering the image, 1-3 thing classes (1-3 objects each) on
  top, and in half of the images a 3-px unlabelled (255) band around the objects."""
  size = _image_size(rng, "coco_stuff171_zs3")
  stuff = [int(v) for v in rng.choice(COCO_STUFF, int(rng.integers(2, 5)), replace=False)]
  things = [int(v) for v in rng.choice(COCO_THINGS, int(rng.integers(1, 4)), replace=False)]
  regions = [(v, _band(rng, size) if rng.random() < 0.6 else _blob(rng, size, (0.3, 0.6))) for v in stuff[1:]]
  regions += [(v, _blob(rng, size, (0.05, 0.25))) for v in things for _ in range(int(rng.integers(1, 4)))]
  photo, label = _render(rng, size, stuff[0], regions)
  if rng.random() < 0.5:
    things_mask = np.isin(label, things)
    label = np.where(_boundaries(things_mask.astype(np.uint8), 3), IGNORE_INDEX, label).astype(np.uint8)
  return photo, label


# ---------------------------------------------------------------------------------------------------------------
# Files.


def _voc_palette() -> list[int]:
  """VOC's colour map: the bits of the index spread over R, G, B from the most significant bit down."""
  palette = []
  for i in range(256):
    r = g = b = 0
    c = i
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    palette += [r, g, b]
  return palette


def _save_jpeg(photo: np.ndarray, path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(photo).save(path, format="JPEG", quality=JPEG_QUALITY)


def _save_label(label: np.ndarray, path: pathlib.Path, palette: list[int] | None = None) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  h, w = label.shape
  if palette is None:
    Image.fromarray(label).save(path)
  else:  # a palette PNG whose indices are the label values, as VOC's
    image = Image.frombytes("P", (w, h), np.ascontiguousarray(label).tobytes())
    image.putpalette(palette)
    image.save(path)


def _write_lines(path: pathlib.Path, ids: Sequence[str]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(f"{i}\n" for i in ids))


def _write_voc(root: pathlib.Path, counts: dict[str, int], seed: int) -> None:
  voc = root / "VOCdevkit" / "VOC2012"
  palette = _voc_palette()
  lists: dict[str, list[str]] = {"train": [], "aug": [], "val": []}
  offset = 0
  for split, count in counts.items():
    for i in range(count):
      image_id = f"{2007 + (offset + i) % 6}_{offset + i:06d}"
      photo, label = voc_scene(np.random.default_rng([seed, SPLIT_STREAMS[split], i]))
      _save_jpeg(photo, voc / "JPEGImages" / f"{image_id}.jpg")
      if split == "train" and i % VOC_TRAIN_TXT_EVERY != 0:  # SBD: grayscale, no boundaries
        lists["aug"].append(image_id)
        _save_label(label, voc / "SegmentationClassAug" / f"{image_id}.png")
      else:  # VOC's own: palette, 255 on object boundaries
        lists["train" if split == "train" else "val"].append(image_id)
        voc_label = np.where(_boundaries(label, VOC_BOUNDARY), IGNORE_INDEX, label).astype(np.uint8)
        _save_label(voc_label, voc / "SegmentationClass" / f"{image_id}.png", palette)
    offset += count
  for name, ids in lists.items():
    _write_lines(voc / "ImageSets" / "Segmentation" / f"{name}.txt", ids)


def _write_coco(root: pathlib.Path, counts: dict[str, int], seed: int) -> None:
  for split, count in counts.items():
    folder = {"train": "train2017", "validation": "val2017"}[split]
    for i in range(count):
      image_id = f"{(1 if split == 'train' else 900_001) + i:012d}"
      photo, label = coco_scene(np.random.default_rng([seed, SPLIT_STREAMS[split], i]))
      _save_jpeg(photo, root / "images" / folder / f"{image_id}.jpg")
      _save_label(label, root / "annotations" / folder / f"{image_id}.png")


def write_layout(dataset: str, root: pathlib.Path, count: int, seed: int = 0, *,
                 validation_count: int | None = None) -> pathlib.Path:
  """Writes `count` train and `validation_count` (default count // 4, at least 1) validation examples of `dataset`
  in its builder's manual-directory layout under `root` (created; must be empty) and returns the directory to pass
  as --manual_dir (`root`)."""
  if dataset not in DATASETS:
    raise errors.ConfigError(f"no synthetic layout for dataset {dataset!r}; choose one of {list(DATASETS)}")
  if count < 1 or (validation_count is not None and validation_count < 1):
    raise errors.ConfigError(f"count={count}, validation_count={validation_count}: each split needs an example")
  root = pathlib.Path(root)
  if root.exists() and (not root.is_dir() or any(root.iterdir())):
    raise OutputNotEmptyError(f"{root} already exists and is not an empty directory; give a new directory")
  root.mkdir(parents=True, exist_ok=True)
  counts = {"train": count, "validation": max(1, count // 4) if validation_count is None else validation_count}
  (_write_voc if dataset == "voc12_zs3" else _write_coco)(root, counts, seed)
  return root


def jpeg_summary(root: pathlib.Path) -> str:
  """'150 JPEGs, mean 101 KB; 500×375: 113, 375×500: 37' for the JPEGs under root."""
  sizes, shapes = [], {}
  for path in sorted(pathlib.Path(root).rglob("*.jpg")):
    sizes.append(path.stat().st_size)
    with Image.open(path) as image:
      key = f"{image.width}×{image.height}"
    shapes[key] = shapes.get(key, 0) + 1
  if not sizes:
    return "no JPEGs"
  listed = ", ".join(f"{k}: {v}" for k, v in sorted(shapes.items(), key=lambda kv: -kv[1]))
  return f"{len(sizes)} JPEGs, mean {np.mean(sizes) / 1e3:.0f} KB; {listed}"


def main(argv, f: dict) -> None:
  del argv
  start = time.perf_counter()
  out = write_layout(f["dataset"].value, pathlib.Path(f["out"].value), f["count"].value, f["seed"].value,
                     validation_count=f["validation"].value)
  print(f"wrote {f['dataset'].value} to {out} in {time.perf_counter() - start:.1f} s ({jpeg_summary(out)}); build "
        f"it with: python -m zegot_jax.data.build {f['dataset'].value} --manual_dir {out} --data_dir DATA_DIR "
        f"--allow_partial")


if __name__ == "__main__":
  _flags = dict(
      dataset=flags.DEFINE_enum("dataset", None, list(DATASETS), "whose layout to write"),
      out=flags.DEFINE_string("out", None, "a new (or empty) directory: the manual directory to build from"),
      count=flags.DEFINE_integer("count", 300, "train images", lower_bound=1),
      validation=flags.DEFINE_integer("validation", None, "validation images (default: count // 4, at least 1)",
                                      lower_bound=1),
      seed=flags.DEFINE_integer("seed", 0, "everything written is a function of the seed"))
  flags.mark_flags_as_required(["dataset", "out"])
  cli.run(functools.partial(main, f=_flags))
