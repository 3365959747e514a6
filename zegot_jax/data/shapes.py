"""A synthetic "zero-shot world": named shapes on cluttered backgrounds, with exact pixel labels and captions.

Scenes hold a few objects of the categories in `CATEGORIES`, each with a named colour (`COLOURS`) and a texture
(`OBJECT_TEXTURES`), on one of the `BACKGROUNDS` plus small unlabelled clutter blobs. Each object's mask is drawn
once (PIL polygons on an "L" image, no anti-aliasing) and that same mask paints the image and writes the label,
so labels align with pixels exactly. The geometry of an object is fully given by its `ShapeObject`
(`object_mask` redraws it); its texture pattern and second colour are sampled while painting.

Every random choice comes from the `np.random.Generator` passed in: the same generator state gives
byte-identical images, labels, objects and captions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross", "ring", "diamond",
                               "hexagon", "crescent", "arrow", "bolt")
DEFAULT_UNSEEN: tuple[int, ...] = (4, 6, 10)  # heart, ring, arrow
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 220, 30),
    "orange": (245, 130, 20),
    "purple": (130, 40, 170),
    "pink": (250, 130, 190),
    "cyan": (30, 210, 220),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
OBJECT_TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "striped", "checkered", "dotted", "noisy")
IGNORE_LABEL = 255
MIN_VISIBLE_FRACTION = 0.02  # objects with fewer visible pixels (fraction of the image) are dropped

SCENE_OBJECT_SIZE = (0.10, 0.30)  # default object circumradius in scenes, as a fraction of the image side
_SCENE_MIN_AREA = 0.035  # ... raised per category so that a whole object covers at least this much of the image
OBJECT_SIZE = (0.30, 0.42)  # render_object's default circumradius; 0.42 keeps a centred disc under 60% of the image
OBJECT_JITTER = 0.05  # render_object's default largest centre offset, fraction of the side
_MIN_CONTRAST = 90.0  # RGB distance between an object's colour and its background's colours
_MIN_TEXTURE_CONTRAST = 100.0  # RGB distance between an object's two texture colours
_MAX_TILT = {CATEGORIES.index("heart"): 35.0}  # degrees; other categories rotate freely


@dataclasses.dataclass(frozen=True)
class ShapeObject:
  """One drawn object. Its mask is `object_mask(obj, size)`.

  Attributes:
    category: index into CATEGORIES.
    colour: key of COLOURS (the object's main colour).
    texture: one of OBJECT_TEXTURES.
    center: (y, x) in pixels; pixel centres are at integer coordinates.
    size: circumradius in pixels: the shape fits in the disc of this radius around `center`.
    angle: rotation in degrees (counter-clockwise on screen).
  """

  category: int
  colour: str
  texture: str
  center: tuple[float, float]
  size: float
  angle: float


# --- Unit shapes: lists of (polygon (N, 2) as (x, y) with y down, fill) inside the unit disc. ----------------


def _regular(n: int, radius: float = 1.0, start_deg: float = -90.0, center: tuple[float, float] = (0.0, 0.0)
             ) -> np.ndarray:
  """Vertices of a regular n-gon (x, y), the first one at `start_deg` (-90 = straight up)."""
  t = np.deg2rad(start_deg) + 2 * np.pi * np.arange(n) / n
  return np.stack([center[0] + radius * np.cos(t), center[1] + radius * np.sin(t)], axis=-1)


def _normalized(points: np.ndarray) -> np.ndarray:
  """Centres a polygon on its bounding box and scales it to circumradius 1."""
  points = points - (points.min(axis=0) + points.max(axis=0)) / 2
  return points / np.linalg.norm(points, axis=-1).max()


def _star() -> np.ndarray:
  radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
  t = np.deg2rad(-90.0) + np.pi * np.arange(10) / 5
  return np.stack([radii * np.cos(t), radii * np.sin(t)], axis=-1)


def _heart() -> np.ndarray:
  t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
  x = 16 * np.sin(t) ** 3
  y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
  return _normalized(np.stack([x, y], axis=-1))


def _cross() -> np.ndarray:
  w = 0.33
  a = math.sqrt(1 - w * w)  # arm length so that the arm corners lie on the unit circle
  return np.array([(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w),
                   (-a, -w), (-w, -w)])


def _arrow() -> np.ndarray:
  return _normalized(np.array([(-1.0, -0.28), (0.05, -0.28), (0.05, -0.68), (1.0, 0.0), (0.05, 0.68),
                               (0.05, 0.28), (-1.0, 0.28)]))


def _bolt() -> np.ndarray:
  return _normalized(np.array([(-0.10, -1.0), (0.65, -1.0), (0.30, -0.15), (0.75, -0.15), (-0.35, 1.0),
                               (-0.10, 0.15), (-0.60, 0.15)]))


def _unit_shapes() -> tuple[tuple[tuple[np.ndarray, int], ...], ...]:
  """Per category, the polygons to fill (1) or cut out (0), in drawing order."""
  disc = _regular(96)
  shapes = {
      "circle": ((disc, 1),),
      "square": ((_regular(4, start_deg=45.0), 1),),
      "triangle": ((_regular(3), 1),),
      "star": ((_star(), 1),),
      "heart": ((_heart(), 1),),
      "cross": ((_cross(), 1),),
      "ring": ((disc, 1), (_regular(96, 0.55), 0)),
      "diamond": ((np.array([(0.0, -1.0), (1 / 1.4, 0.0), (0.0, 1.0), (-1 / 1.4, 0.0)]), 1),),
      "hexagon": ((_regular(6), 1),),
      "crescent": ((disc, 1), (_regular(96, 0.85, center=(0.45, 0.0)), 0)),
      "arrow": ((_arrow(), 1),),
      "bolt": ((_bolt(), 1),),
  }
  return tuple(shapes[name] for name in CATEGORIES)


_UNIT_SHAPES = _unit_shapes()


# --- Masks, textures, colours. ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Read-only (y, x) pixel coordinate grids, float32."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  yy.setflags(write=False)
  xx.setflags(write=False)
  return yy, xx


def object_mask(obj: ShapeObject, size: int) -> np.ndarray:
  """The (size, size) bool mask of an object, clipped to the image; the exact mask render_scene paints."""
  theta = np.deg2rad(obj.angle)
  rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])  # CCW on screen (y down)
  offset = np.array([obj.center[1], obj.center[0]])
  canvas = Image.new("L", (size, size), 0)
  draw = ImageDraw.Draw(canvas)
  for points, fill in _UNIT_SHAPES[obj.category]:
    xy = points @ rot * obj.size + offset
    draw.polygon(xy.ravel().tolist(), fill=fill)
  return np.asarray(canvas, dtype=bool)


@functools.lru_cache(maxsize=None)
def _fill_fraction(category: int, resolution: int = 512) -> float:
  """Area of a category's unit shape over the unit disc's, measured on a fine raster."""
  radius = resolution / 2 - 2
  centre = (resolution - 1) / 2
  unit = ShapeObject(category, "white", "solid", (centre, centre), radius, 0.0)
  return float(object_mask(unit, resolution).sum()) / (math.pi * radius * radius)


def _oriented(size: int, angle: float) -> np.ndarray:
  """Pixel coordinate along the direction `angle` (radians)."""
  yy, xx = _coords(size)
  return xx * np.float32(math.cos(angle)) + yy * np.float32(math.sin(angle))


def _stripes(rng: np.random.Generator, size: int, period: float, duty: float) -> np.ndarray:
  """Bool stripes at a random angle: True on a `duty` fraction of each period."""
  u = _oriented(size, rng.uniform(0, np.pi)) + np.float32(rng.uniform(0, period))
  return np.mod(u, np.float32(period)) < np.float32(period * duty)


def _dots(rng: np.random.Generator, size: int, period: float, radius: float) -> np.ndarray:
  """Bool disc dots on a square grid with a random phase."""
  yy, xx = _coords(size)
  half = np.float32(period / 2)
  dy = np.mod(yy + np.float32(rng.uniform(0, period)), np.float32(period)) - half
  dx = np.mod(xx + np.float32(rng.uniform(0, period)), np.float32(period)) - half
  return dy * dy + dx * dx < np.float32(radius * radius)


def _checker(rng: np.random.Generator, size: int, cell: float, inset: float = 1.0) -> np.ndarray:
  """Bool checkerboard at a random angle; `inset` < 1 shrinks the True squares within their cells."""
  angle = rng.uniform(0, np.pi / 2)
  u = _oriented(size, angle) + np.float32(rng.uniform(0, cell))
  v = _oriented(size, angle + np.pi / 2) + np.float32(rng.uniform(0, cell))
  cu, cv = np.floor(u / np.float32(cell)), np.floor(v / np.float32(cell))
  pattern = np.mod(cu + cv, 2) == 1
  if inset < 1:
    limit = np.float32(cell * inset)
    pattern &= (u - cu * np.float32(cell) < limit) & (v - cv * np.float32(cell) < limit)
  return pattern


def _texture_pattern(rng: np.random.Generator, texture: str, size: int) -> np.ndarray | None:
  """Where an object shows its second colour (None for solid). The second colour covers well under half."""
  scale = size / 96
  if texture == "solid":
    return None
  if texture == "striped":
    return _stripes(rng, size, rng.uniform(5.0, 8.0) * scale, duty=rng.uniform(0.3, 0.4))
  if texture == "dotted":
    period = rng.uniform(5.0, 8.0) * scale
    return _dots(rng, size, period, radius=period * rng.uniform(0.25, 0.32))
  if texture == "checkered":
    return _checker(rng, size, rng.uniform(4.0, 7.0) * scale, inset=0.75)
  raise ValueError(f"unknown texture {texture!r}; expected one of {OBJECT_TEXTURES}")


_COLOUR_NAMES = tuple(COLOURS)
_COLOUR_VALUES = np.array([COLOURS[n] for n in _COLOUR_NAMES], np.float64)


def _segment_distances(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Euclidean distances from colours (K, 3) to the segment of colours between a and b."""
  ab = b - a
  t = np.clip((points - a) @ ab / max(float(ab @ ab), 1e-6), 0.0, 1.0)
  return np.linalg.norm(points - (a + t[:, None] * ab), axis=-1)


def _pick_colour(rng: np.random.Generator, palette: np.ndarray, used: Sequence[str]) -> str:
  """A named colour far from the background's colour segment, preferably not used yet in the scene."""
  distance = _segment_distances(_COLOUR_VALUES, palette[0], palette[1])
  far = [n for n, d in zip(_COLOUR_NAMES, distance) if d >= _MIN_CONTRAST]
  fresh = [n for n in far if n not in used]
  candidates = fresh or far or [_COLOUR_NAMES[int(np.argmax(distance))]]
  return candidates[int(rng.integers(len(candidates)))]


def _texture_colours() -> dict[str, tuple[str, ...]]:
  """Per named colour, the named colours contrasting enough with it to texture an object."""
  distance = np.linalg.norm(_COLOUR_VALUES[:, None] - _COLOUR_VALUES[None], axis=-1)
  return {name: tuple(n for n, d in zip(_COLOUR_NAMES, row) if d >= _MIN_TEXTURE_CONTRAST)
          for name, row in zip(_COLOUR_NAMES, distance)}


_TEXTURE_COLOURS = _texture_colours()


# --- Backgrounds and clutter. ----------------------------------------------------------------------------


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
  """A random colour pulled halfway to a random grey, so named object colours stand out."""
  return 0.5 * rng.integers(0, 256, size=3).astype(np.float64) + 0.5 * rng.uniform(40, 215)


def _value_noise(rng: np.random.Generator, size: int) -> np.ndarray:
  """Smooth random field in [0, 1]: a coarse random grid upsampled bilinearly."""
  cells = int(rng.integers(3, 8))
  coarse = rng.uniform(0, 1, size=(cells, cells)).astype(np.float32)
  return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR))


def _background(rng: np.random.Generator, kind: str, size: int) -> tuple[np.ndarray, np.ndarray]:
  """(float32 (size, size, 3) image, (2, 3) palette): every pixel lies near the palette's colour segment."""
  c1, c2 = _muted_colour(rng), _muted_colour(rng)
  scale = size / 96
  if kind == "plain":
    t, c2 = np.zeros((size, size), np.float32), c1
  elif kind == "gradient":
    u = _oriented(size, rng.uniform(0, 2 * np.pi))
    t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
  elif kind == "striped":
    t = _stripes(rng, size, rng.uniform(6.0, 18.0) * scale, duty=0.5).astype(np.float32)
  elif kind == "checkered":
    t = _checker(rng, size, rng.uniform(5.0, 14.0) * scale).astype(np.float32)
  elif kind == "dotted":
    period = rng.uniform(6.0, 14.0) * scale
    t = _dots(rng, size, period, radius=period * rng.uniform(0.2, 0.35)).astype(np.float32)
  elif kind == "noisy":
    t = _value_noise(rng, size)
  else:
    raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")
  image = c1.astype(np.float32) + t[..., None] * (c2 - c1).astype(np.float32)
  if kind == "noisy":
    image = image + rng.normal(0.0, 10.0, size=image.shape).astype(np.float32)
  return image, np.stack([c1, c2])


def _add_clutter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
  """Draws 2-6 small random ellipses and lines (background, never labelled) on a uint8 image."""
  size = image.shape[0]
  canvas = Image.fromarray(image)
  draw = ImageDraw.Draw(canvas)
  for _ in range(int(rng.integers(2, 7))):
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    y, x = rng.uniform(0, size - 1, size=2)
    if rng.uniform() < 0.5:
      ry, rx = rng.uniform(0.015, 0.04, size=2) * size
      draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=colour)
    else:
      length, angle = rng.uniform(0.05, 0.15) * size, rng.uniform(0, 2 * np.pi)
      end = (x + length * math.cos(angle), y + length * math.sin(angle))
      draw.line([(x, y), end], fill=colour, width=int(rng.integers(1, 3)))
  return np.array(canvas)


def _scene_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, str]:
  """(uint8 image with clutter, palette, background name)."""
  kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
  image, palette = _background(rng, kind, size)
  image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
  return _add_clutter(rng, image), palette, kind


# --- Objects and composition. ----------------------------------------------------------------------------


def _sample_object(rng: np.random.Generator, category: int, center: tuple[float, float], radius: float,
                   palette: np.ndarray, used: Sequence[str]) -> ShapeObject:
  """Random colour (contrasting with the background, unused if possible), texture and rotation."""
  colour = _pick_colour(rng, palette, used)
  texture = OBJECT_TEXTURES[int(rng.integers(len(OBJECT_TEXTURES)))]
  tilt = _MAX_TILT.get(category, 180.0)
  angle = float(rng.uniform(-tilt, tilt))
  return ShapeObject(category=int(category), colour=colour, texture=texture,
                     center=(float(center[0]), float(center[1])), size=float(radius), angle=angle)


def _scene_radius(rng: np.random.Generator, category: int, size: int, object_size: tuple[float, float]) -> float:
  """Circumradius in pixels: uniform in `object_size` (fractions of the side), the low end raised for shapes that
  fill little of it."""
  low = max(object_size[0], math.sqrt(_SCENE_MIN_AREA / (math.pi * _fill_fraction(category))))
  high = max(object_size[1], low + 0.05)
  return float(rng.uniform(low, high) * size)


def _paint(rng: np.random.Generator, image: np.ndarray, objects: Sequence[ShapeObject]) -> np.ndarray:
  """Paints objects in order onto `image` (in place); returns the instance map (0 = background, i + 1 = i-th)."""
  size = image.shape[0]
  instances = np.zeros((size, size), np.int16)
  for i, obj in enumerate(objects):
    mask = object_mask(obj, size)
    image[mask] = COLOURS[obj.colour]
    pattern = _texture_pattern(rng, obj.texture, size)
    if pattern is not None:
      choices = _TEXTURE_COLOURS[obj.colour]
      second = choices[int(rng.integers(len(choices)))]
      image[mask & pattern] = COLOURS[second]
    instances[mask] = i + 1
  return instances


def _labels(instances: np.ndarray, objects: Sequence[ShapeObject]) -> tuple[np.ndarray, list[ShapeObject]]:
  """Label map and kept objects: objects under MIN_VISIBLE_FRACTION visible pixels go back to IGNORE_LABEL."""
  counts = np.bincount(instances.ravel(), minlength=len(objects) + 1)[1:]
  min_pixels = MIN_VISIBLE_FRACTION * instances.size
  lut = np.full(len(objects) + 1, IGNORE_LABEL, np.uint8)
  kept = []
  for i, (obj, count) in enumerate(zip(objects, counts)):
    if count >= min_pixels:
      lut[i + 1] = obj.category
      kept.append(obj)
  return lut[instances], kept


def _check_categories(categories: Sequence[int] | None) -> tuple[int, ...]:
  if categories is None:
    return tuple(range(len(CATEGORIES)))
  chosen = tuple(int(c) for c in categories)
  if not chosen or any(not 0 <= c < len(CATEGORIES) for c in chosen):
    raise ValueError(f"categories must be a non-empty sequence of indices in [0, {len(CATEGORIES)}), "
                     f"got {categories}")
  return chosen


def render_scene(rng: np.random.Generator, size: int = 96, num_objects: tuple[int, int] = (1, 4),
                 categories: Sequence[int] | None = None, object_size: tuple[float, float] = SCENE_OBJECT_SIZE
                 ) -> tuple[np.ndarray, np.ndarray, list[ShapeObject], str]:
  """Renders a scene of several objects on a cluttered background.

  Args:
    rng: the only source of randomness.
    size: image side in pixels.
    num_objects: inclusive range of the number of objects drawn (uniform).
    categories: the category indices that may be drawn (default: all).
    object_size: inclusive range of the objects' circumradius, as fractions of `size` (uniform).

  Returns:
    (image (size, size, 3) uint8, label (size, size) uint8, visible objects in drawing order, background name).
    label holds the category of the object seen at each pixel (later objects occlude earlier ones) and
    IGNORE_LABEL where only background shows. Objects left with fewer than MIN_VISIBLE_FRACTION of the image's
    pixels are dropped from the list and their pixels relabelled IGNORE_LABEL (they stay painted, as clutter).
  """
  allowed = _check_categories(categories)
  low, high = num_objects
  if not 0 <= low <= high:
    raise ValueError(f"num_objects must be (low, high) with 0 <= low <= high, got {num_objects}")
  if not 0 < object_size[0] <= object_size[1] <= 1:
    raise ValueError(f"object_size must be (low, high) with 0 < low <= high <= 1 (fractions of the image side), "
                     f"got {object_size}")
  image, palette, background = _scene_background(rng, size)
  objects: list[ShapeObject] = []
  for _ in range(int(rng.integers(low, high + 1))):
    category = allowed[int(rng.integers(len(allowed)))]
    center = rng.uniform(0, size - 1, size=2)
    radius = _scene_radius(rng, category, size, object_size)
    objects.append(_sample_object(rng, category, (center[0], center[1]), radius, palette,
                                  [o.colour for o in objects]))
  label, kept = _labels(_paint(rng, image, objects), objects)
  return image, label, kept, background


def render_object(rng: np.random.Generator, category: int, size: int = 96, *,
                  object_size: tuple[float, float] = OBJECT_SIZE, jitter: float = OBJECT_JITTER
                  ) -> tuple[np.ndarray, np.ndarray, ShapeObject, str]:
  """One object of `category` on a random background: by default large and roughly centred (for zero-shot
  classification).

  The circumradius is uniform in `object_size` (fractions of the image side; default 30-42%) and the centre is
  offset from the image centre by up to `jitter` of the side in each direction (default 5%).

  Returns:
    (image (size, size, 3) uint8, label (size, size) uint8, the object, background name).
  """
  (category,) = _check_categories([category])
  image, palette, background = _scene_background(rng, size)
  center = (size - 1) / 2 + rng.uniform(-jitter, jitter, size=2) * size
  radius = float(rng.uniform(*object_size) * size)
  obj = _sample_object(rng, category, (center[0], center[1]), radius, palette, [])
  instances = _paint(rng, image, [obj])
  label = np.where(instances > 0, np.uint8(category), np.uint8(IGNORE_LABEL))
  return image, label, obj, background


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def caption(objects: Sequence[ShapeObject], background: str | None, rng: np.random.Generator | None = None,
            *, colours: bool = True) -> str:
  """Describes a scene, e.g. 'a red star, a blue cross and a green ring on a plain background'.

  Args:
    objects: the visible objects; each is named by its category, after its colour when `colours`.
    background: the background's name; None leaves the background out ('a red star and a green ring').
    rng: when given, the objects are named in a random order; otherwise in drawing order.
    colours: name each object's colour.

  Returns:
    The caption; 'nothing on a <background> background' (or 'nothing') when there are no objects.
  """
  order = list(objects) if rng is None else [objects[i] for i in rng.permutation(len(objects))]
  names = [f"{o.colour} {CATEGORIES[o.category]}" if colours else CATEGORIES[o.category] for o in order]
  phrases = [f"{_article(n)} {n}" for n in names]
  if not phrases:
    subject = "nothing"
  elif len(phrases) == 1:
    subject = phrases[0]
  else:
    subject = ", ".join(phrases[:-1]) + " and " + phrases[-1]
  return subject if background is None else f"{subject} on a {background} background"
