"""Class lists, zero-shot splits and label conventions of the benchmarks (docs/reading.md, mmsegmentation's orders).

Label values in every dataset built here: 0..K-1 class indices in the order below, IGNORE_INDEX (255) for
background and boundaries. At training time the pipeline marks unseen-class pixels as UNLABELLED (254) in the
transductive setting (their location is known, not their class) or as IGNORE_INDEX in the inductive one.
"""

from __future__ import annotations

import dataclasses

IGNORE_INDEX = 255
UNLABELLED = 254


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What a benchmark's builder and pipeline need to agree on."""

  name: str
  classes: tuple[str, ...]
  unseen: tuple[int, ...]  # indices into `classes`
  split_sizes: dict[str, int]  # official number of examples per split
  crop_size: int  # training crop (square)
  train_scale: tuple[int, int]  # mmseg's Resize img_scale (long, short), times U(train_ratio_range) at training
  eval_stride: int  # sliding-window stride at evaluation
  eval_short_side: int  # evaluation resize: short side (keep ratio)
  train_ratio_range: tuple[float, float] = (0.5, 2.0)  # mmseg's Resize ratio_range

  def __post_init__(self):
    bad = [i for i in self.unseen if not 0 <= i < len(self.classes)]
    if bad or len(set(self.unseen)) != len(self.unseen):
      raise ValueError(f"{self.name}: unseen indices {self.unseen} must be distinct and in 0..{len(self.classes) - 1}")
    if len(set(self.classes)) != len(self.classes):
      raise ValueError(f"{self.name}: class names repeat")
    low, high = self.train_ratio_range
    if not 0 < low <= high:
      raise ValueError(f"{self.name}: train_ratio_range={self.train_ratio_range}; expected 0 < low <= high")

  @property
  def seen(self) -> tuple[int, ...]:
    return tuple(i for i in range(len(self.classes)) if i not in self.unseen)

  @property
  def unseen_names(self) -> tuple[str, ...]:
    return tuple(self.classes[i] for i in self.unseen)

  def metadata(self) -> dict:
    """What the builders store in the dataset's metadata.json."""
    return dict(classes=list(self.classes), unseen=list(self.unseen), seen=list(self.seen),
                ignore_index=IGNORE_INDEX, unlabelled_index=UNLABELLED, crop_size=self.crop_size,
                train_scale=list(self.train_scale), train_ratio_range=list(self.train_ratio_range),
                eval_stride=self.eval_stride, eval_short_side=self.eval_short_side,
                partial={})  # split → "<built> of <official>" for a build with --allow_partial


VOC12 = DatasetSpec(
    name="voc12_zs3",
    classes=("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
             "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"),
    unseen=(15, 16, 17, 18, 19),
    split_sizes={"train": 10582, "validation": 1449},
    crop_size=512, train_scale=(2048, 512), eval_stride=426, eval_short_side=512)

PASCAL_CONTEXT59 = DatasetSpec(
    name="pascal_context59_zs3",
    classes=("aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
             "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup",
             "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard",
             "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock",
             "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree",
             "truck", "tvmonitor", "wall", "water", "window", "wood"),
    unseen=(0, 6, 7, 14, 19, 24, 31, 33, 48, 54),
    split_sizes={"train": 4996, "validation": 5104},
    crop_size=480, train_scale=(520, 520), eval_stride=80, eval_short_side=520)

COCO_STUFF171 = DatasetSpec(
    name="coco_stuff171_zs3",
    classes=(
        "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
        "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
        "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
        "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
        "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
        "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
        "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
        "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
        "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge", "building-other",
        "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes",
        "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
        "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
        "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal",
        "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other",
        "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
        "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
        "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
        "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood",
        "water-other", "waterdrops", "window-blind", "window-other", "wood"),
    unseen=(19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133, 136, 137, 157, 160),
    split_sizes={"train": 118287, "validation": 5000},
    crop_size=512, train_scale=(2048, 512), eval_stride=426, eval_short_side=512)

# COCO-Stuff's official stuffthingmaps store (COCO category id − 1) in 0..181; these 11 thing ids have no
# annotations in COCO 2017, which leaves the 171 classes above, in order.
COCO_UNUSED_IDS0 = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


def coco_stuff_lut() -> "list[int]":
  """256-entry lookup: stuffthingmaps value (0..181, 255) → class index 0..170, IGNORE_INDEX elsewhere."""
  lut = [IGNORE_INDEX] * 256
  valid = [v for v in range(182) if v not in COCO_UNUSED_IDS0]
  assert len(valid) == len(COCO_STUFF171.classes)
  for index, value in enumerate(valid):
    lut[value] = index
  return lut


SPECS = {s.name: s for s in (VOC12, PASCAL_CONTEXT59, COCO_STUFF171)}
