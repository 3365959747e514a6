"""The synthetic "stuff" world: scenes tiled by regions of named textures, with exact pixel labels and captions.

A scene is a randomly warped Voronoi partition of the image into 2-4 regions. Each region shows one texture
category (`CATEGORIES`: stripes, dots, checks, ...) drawn in two random colours, at a random period,
orientation and phase; every pixel belongs to exactly one region, so every pixel has a label (there is no
background). A category is recognisable from local appearance alone, which is what a small ViT pretrained on
a CPU can learn (its linear patch embedding sees a period-4..10 texture inside one 8×8 patch).

The world's parameters (fixed before any tuning; the README's numbers are measured on them):

- image side 64 (any size works); 2-4 regions per dataset scene (`num_regions`), 1-4 in pretraining;
- Voronoi sites uniform over the image; the coordinates are warped by two random sinusoids per axis of
  amplitude up to `WARP` of the side before the nearest-site assignment, so boundaries are curved;
  a partition whose smallest region has under `MIN_REGION` of the image is redrawn (up to 20 times);
- the categories of a scene are distinct; each region's texture has its own foreground and background colour,
  each a named colour (`COLOURS`) jittered by up to ±`COLOUR_JITTER` per channel, at least `MIN_CONTRAST`
  apart in RGB; "plain" shows its foreground colour only;
- period (pixels per repeat) uniform in `LINE_PERIOD` for line textures and in `CELL_PERIOD` for textures of
  repeated cells (dots, crosses, rings, triangles), orientation uniform in [0, π), phase uniform;
- Gaussian pixel noise of standard deviation `NOISE` (uint8, clipped).

Every random choice comes from the `np.random.Generator` passed in: the same generator state gives
byte-identical images, labels and captions. Labels are written from the same region map that paints the pixels.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np

CATEGORIES: tuple[str, ...] = ("stripes", "dots", "checks", "zigzag", "waves", "grid", "bricks", "crosses", "rings",
                               "speckles", "triangles", "plain")
DEFAULT_UNSEEN: tuple[int, ...] = (3, 6, 8)  # zigzag, bricks, rings: never labelled in training
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 210),
    "yellow": (235, 215, 40),
    "orange": (240, 135, 30),
    "purple": (130, 50, 170),
    "pink": (245, 140, 190),
    "cyan": (40, 200, 210),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
CELL_CATEGORIES = frozenset({"dots", "crosses", "rings", "triangles"})
LINE_PERIOD = (4.0, 8.0)
CELL_PERIOD = (6.0, 10.0)
WARP = 0.08
MIN_REGION = 0.04
COLOUR_JITTER = 20
MIN_CONTRAST = 110.0
NOISE = 6.0
CAPTION_PREFIXES = ("", "a picture of ", "a pattern of ", "a texture of ")  # also the demo's prompt templates
NAME_COLOUR = 0.5  # how often a caption names a region's colour


@dataclasses.dataclass(frozen=True)
class Region:
  """One region of a scene: its category (index into CATEGORIES), its colours' names and its share of pixels."""

  category: int
  colour: str
  second_colour: str
  area: float


@functools.lru_cache(maxsize=8)
def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Read-only (y, x) pixel-centre coordinate grids, float64."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
  yy.setflags(write=False)
  xx.setflags(write=False)
  return yy, xx


def _frac(x: np.ndarray) -> np.ndarray:
  return x - np.floor(x)


def texture_mask(rng: np.random.Generator, category: int, size: int) -> np.ndarray:
  """(size, size) bool: where a texture of `category` shows its foreground colour, over the whole image, at a
  random period, orientation and phase."""
  name = CATEGORIES[category]
  if name == "plain":
    return np.ones((size, size), bool)
  if name == "speckles":  # random flecks of 1-2 pixels, about 30% of the area
    grain = int(rng.integers(1, 3))
    cells = rng.uniform(size=(-(-size // grain),) * 2) < 0.3
    return np.repeat(np.repeat(cells, grain, 0), grain, 1)[:size, :size]
  period = rng.uniform(*(CELL_PERIOD if name in CELL_CATEGORIES else LINE_PERIOD))
  theta = rng.uniform(0.0, math.pi)
  yy, xx = _coords(size)
  u = (xx * math.cos(theta) + yy * math.sin(theta)) / period + rng.uniform()
  v = (-xx * math.sin(theta) + yy * math.cos(theta)) / period + rng.uniform()
  fu, fv = _frac(u), _frac(v)
  cu, cv = np.abs(fu - 0.5), np.abs(fv - 0.5)  # offsets from the cell centre
  if name == "stripes":
    return fu < 0.5
  if name == "dots":
    return cu * cu + cv * cv < 0.3 ** 2
  if name == "checks":
    return (np.floor(u) + np.floor(v)) % 2 == 0
  if name == "zigzag":  # stripes along u, bent into a triangle wave of amplitude 0.6 periods
    return _frac(v + 0.6 * np.abs(2 * _frac(u / 2) - 1)) < 0.5
  if name == "waves":  # the same stripes bent into a sine wave
    return _frac(v + 0.3 * np.sin(math.pi * u)) < 0.5
  if name == "grid":
    return (fu < 0.25) | (fv < 0.25)
  if name == "bricks":  # mortar lines: rows of bricks two periods long, every other row shifted by one period
    row = np.floor(v)
    return (fv < 0.22) | (_frac(u / 2 + 0.5 * (row % 2)) < 0.11)
  if name == "crosses":
    return ((cu < 0.1) & (cv < 0.36)) | ((cv < 0.1) & (cu < 0.36))
  if name == "rings":
    r = np.sqrt(cu * cu + cv * cv)
    return np.abs(r - 0.3) < 0.1
  if name == "triangles":  # one upright triangle per cell
    return (fv > 0.2) & (fv < 0.85) & (cu < 0.55 * (fv - 0.2))
  raise ValueError(f"unknown category {category}")


def partition(rng: np.random.Generator, size: int, num_regions: int) -> np.ndarray:
  """(size, size) int: region index 0..num_regions-1 of every pixel, each region at least MIN_REGION of the image
  when 20 draws allow it (otherwise the last draw, whose regions may be smaller)."""
  yy, xx = _coords(size)
  for _ in range(20):
    sites = rng.uniform(0, size, (num_regions, 2))  # (R, 2) as (y, x)
    wy, wx = yy.copy(), xx.copy()
    for _ in range(2):
      amplitude, frequency, phase = rng.uniform(0, WARP * size, 2), rng.uniform(0.5, 2.0, 2), rng.uniform(0, 2 * np.pi, 2)
      wy += amplitude[0] * np.sin(2 * np.pi * frequency[0] * xx / size + phase[0])
      wx += amplitude[1] * np.sin(2 * np.pi * frequency[1] * yy / size + phase[1])
    distance = (wy[..., None] - sites[:, 0]) ** 2 + (wx[..., None] - sites[:, 1]) ** 2  # (size, size, R)
    regions = np.argmin(distance, axis=-1)
    areas = np.bincount(regions.ravel(), minlength=num_regions) / regions.size
    if areas.min() >= MIN_REGION:
      break
  return regions


_COLOUR_NAMES = tuple(COLOURS)
_COLOUR_VALUES = np.array([COLOURS[n] for n in _COLOUR_NAMES], np.float64)
_CONTRASTING = {i: tuple(j for j in range(len(_COLOUR_NAMES))
                         if np.linalg.norm(_COLOUR_VALUES[i] - _COLOUR_VALUES[j]) >= MIN_CONTRAST)
                for i in range(len(_COLOUR_NAMES))}


def _jittered(rng: np.random.Generator, colour: int) -> np.ndarray:
  return np.clip(_COLOUR_VALUES[colour] + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255)


def render_scene(rng: np.random.Generator, size: int = 64, num_regions: tuple[int, int] = (2, 4),
                 categories: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, list[Region]]:
  """One scene: (image (size, size, 3) uint8, label (size, size) uint8 category indices, regions).

  num_regions: inclusive range of the number of regions; `categories` fixes the regions' categories instead
  (distinct, in region order)."""
  if categories is None:
    count = int(rng.integers(num_regions[0], num_regions[1] + 1))
    categories = rng.choice(len(CATEGORIES), count, replace=False)
  categories = [int(c) for c in categories]
  regions = partition(rng, size, len(categories)) if len(categories) > 1 else np.zeros((size, size), np.int64)
  image = np.zeros((size, size, 3), np.float64)
  label = np.zeros((size, size), np.uint8)
  described = []
  for r, category in enumerate(categories):
    inside = regions == r
    fore = int(rng.integers(len(_COLOUR_NAMES)))
    back = int(rng.choice(_CONTRASTING[fore]))
    mask = texture_mask(rng, category, size)
    painted = np.where(mask[..., None], _jittered(rng, fore), _jittered(rng, back))
    image[inside] = painted[inside]
    label[inside] = category
    described.append(Region(category, _COLOUR_NAMES[fore], _COLOUR_NAMES[back], float(inside.mean())))
  image += rng.normal(0.0, NOISE, image.shape)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8), label, described


def caption(regions: Sequence[Region], rng: np.random.Generator) -> str:
  """"a pattern of red zigzag, bricks and blue dots.": the regions' categories in random order, each with its
  foreground colour named with probability NAME_COLOUR, after one of CAPTION_PREFIXES."""
  order = rng.permutation(len(regions))
  names = [(f"{regions[i].colour} " if rng.uniform() < NAME_COLOUR else "") + CATEGORIES[regions[i].category]
           for i in order]
  listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
  return CAPTION_PREFIXES[int(rng.integers(len(CAPTION_PREFIXES)))] + listed + "."


def caption_words() -> tuple[str, ...]:
  """Every word a caption can use, sorted."""
  prefix_words = {w for p in CAPTION_PREFIXES for w in p.split()}
  return tuple(sorted(set(CATEGORIES) | set(COLOURS) | prefix_words | {"and"}))
