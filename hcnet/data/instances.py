"""Instance data for detection: COCO 2017 (or any dataset in COCO's format) read from its own files
with pycocotools, `hcnet_instances` (collages of real photographs with exact instance masks, made
in memory: the detection quickstart's and the tests' data), and mmdetection's training and test
pipelines on the host, with static shapes.

TFDS's `coco/2017` carries boxes but no masks, so COCO is read from the files a user downloads once
(`train2017/`, `val2017/`, `annotations/instances_{train,val}2017.json`), as mmdetection reads them:
crowd regions are not trained on (COCOeval ignores them), boxes under a pixel wide or high are
dropped, and training leaves out images without an object and those under 32 pixels a side.

Every example comes out on one padded canvas (config.detection.canvas) with its image's own size,
`image_hw`; ground truth is padded to max_instances rows with `gt_valid`, and an image with more is
cut and said once. Masks are kept at the canvas's full resolution, as mmdet keeps them at the
image's: the mask targets are cropped from them.
"""

import dataclasses
import io
import json

import numpy as np
from absl import logging
from PIL import Image

from hcnet import paths
from hcnet.errors import DataError

INSTANCES = "hcnet_instances"
INSTANCE_SIZES = {"train": 400, "val": 80}
INSTANCE_SHAPE = (96, 128)  # (h, w)
INSTANCE_CLASSES = ("cat", "coffee", "astronaut", "rocket")  # the photographs objects are cut from


@dataclasses.dataclass
class Instances:
    """One image and its objects: boxes (n, 4) x1 y1 x2 y2, labels (n,) 0-based, masks (n, h, w)
    uint8 at the image's size."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    image_id: int


def instance_collage(index: int, split: str, photos: list[np.ndarray]) -> Instances:
    """Collage `index`: a background cut from one photograph (class ignored) and one to four
    ellipses or rectangles cut from the other three, each an object of its photograph's class;
    later objects hide earlier ones, and an object left under 24 visible pixels is dropped.
    Deterministic in (split, index)."""
    rng = np.random.default_rng([index, 0 if split == "train" else 1, 7])
    h, w = INSTANCE_SHAPE

    def cut(c):
        oy = rng.integers(0, photos[c].shape[0] - h + 1)
        ox = rng.integers(0, photos[c].shape[1] - w + 1)
        return photos[c][oy : oy + h, ox : ox + w]

    background = int(rng.integers(len(photos)))
    image = cut(background).copy()
    yy, xx = np.mgrid[:h, :w]
    masks, labels = [], []
    for _ in range(rng.integers(1, 5)):
        c = int(rng.choice([p for p in range(len(photos)) if p != background]))
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        ry, rx = rng.uniform(0.12, 0.35) * h, rng.uniform(0.12, 0.35) * w
        inside = (
            (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)
            if rng.integers(2)
            else ((np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx))
        )
        image[inside] = cut(c)[inside]
        masks = [m & ~inside for m in masks]
        masks.append(inside)
        labels.append(c)
    keep = [i for i, m in enumerate(masks) if m.sum() >= 24]
    masks = np.stack([masks[i] for i in keep]).astype(np.uint8)
    return Instances(
        image,
        np.stack([mask_box(m) for m in masks]).astype(np.float32),
        np.asarray([labels[i] for i in keep], np.int32),
        masks,
        index + 1,
    )


def mask_box(mask: np.ndarray) -> np.ndarray:
    """The tight box (x1, y1, x2, y2) of a mask's pixels, edges on pixel borders."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


class CollageSource:
    """`hcnet_instances` split as a random-access source of Instances, made on demand."""

    def __init__(self, split: str):
        from hcnet.data.segmentation import collage_photos

        if split not in INSTANCE_SIZES:
            raise DataError(f"{INSTANCES} has splits {', '.join(INSTANCE_SIZES)}; got {split!r}")
        self.name, self.split, self.photos = INSTANCES, split, collage_photos(160)
        self.class_names = list(INSTANCE_CLASSES)

    def __len__(self):
        return INSTANCE_SIZES[self.split]

    def __getitem__(self, i: int) -> Instances:
        return instance_collage(int(i), self.split, self.photos)

    def ground_truth(self):
        """The split's ground truth as a pycocotools COCO (category ids 1..4), for COCOeval."""
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = self.coco_dict()
        with _quiet():
            coco.createIndex()
        return coco

    def coco_dict(self) -> dict:
        """The split's ground truth in COCO's format (category ids 1..4)."""
        from pycocotools import mask as mask_utils

        images, annotations = [], []
        for i in range(len(self)):
            item = self[i]
            h, w = item.image.shape[:2]
            images.append({"id": item.image_id, "height": h, "width": w})
            for box, label, mask in zip(item.boxes, item.labels, item.masks):
                rle = mask_utils.encode(np.asfortranarray(mask))
                rle["counts"] = rle["counts"].decode("ascii")
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": item.image_id,
                        "category_id": int(label) + 1,
                        "bbox": [
                            float(box[0]),
                            float(box[1]),
                            float(box[2] - box[0]),
                            float(box[3] - box[1]),
                        ],
                        "area": float(mask.sum()),
                        "segmentation": rle,
                        "iscrowd": 0,
                    }
                )
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def category_ids(self) -> list[int]:
        return list(range(1, len(self.class_names) + 1))


class CocoSource:
    """A COCO-format split read with pycocotools: ROOT/annotations/instances_<split>.json and the
    images in ROOT/<split>/ (local or gs://). Training splits drop images without objects and under
    32 pixels a side, as mmdet's CocoDataset does."""

    def __init__(self, root, split: str, *, training: bool):
        from pycocotools.coco import COCO

        root = paths.path(root)
        annotations = root / "annotations" / f"instances_{split}.json"
        if not annotations.exists():
            raise DataError(
                f"{annotations} is missing: COCO needs ROOT/annotations/instances_{split}.json and "
                f"ROOT/{split}/ (download annotations_trainval2017.zip and {split}.zip from "
                "cocodataset.org into ROOT and unzip them)"
            )
        self.name, self.root, self.split = root.name, root, split
        with _quiet():
            self.coco = COCO()
            self.coco.dataset = json.loads(annotations.read_text())
            self.coco.createIndex()
        cats = sorted(self.coco.getCatIds())
        self.class_names = [self.coco.cats[c]["name"] for c in cats]
        self._label = {c: i for i, c in enumerate(cats)}
        self._cats = cats
        ids = sorted(self.coco.getImgIds())
        if training:
            with_objects = {a["image_id"] for a in self.coco.dataset["annotations"]}
            ids = [
                i
                for i in ids
                if i in with_objects
                and min(self.coco.imgs[i]["width"], self.coco.imgs[i]["height"]) >= 32
            ]
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def category_ids(self) -> list[int]:
        return list(self._cats)

    def image_id(self, i: int) -> int:
        return int(self.ids[int(i)])

    def ground_truth(self):
        return self.coco

    def __getitem__(self, i: int) -> Instances:
        image_id = self.ids[int(i)]
        info = self.coco.imgs[image_id]
        data = (self.root / self.split / info["file_name"]).read_bytes()
        image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        boxes, labels, masks = [], [], []
        for a in self.coco.imgToAnns[image_id]:
            x, y, w, h = a["bbox"]
            if a.get("iscrowd", 0) or w < 1 or h < 1 or a.get("area", 1) <= 0:
                continue
            if a["category_id"] not in self._label:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(self._label[a["category_id"]])
            masks.append(self.coco.annToMask(a))
        shape = image.shape[:2]
        return Instances(
            image,
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(labels, np.int32),
            np.stack(masks).astype(np.uint8) if masks else np.zeros((0, *shape), np.uint8),
            image_id,
        )


class _quiet:
    """pycocotools prints while it indexes; the run's console stays the run's."""

    def __enter__(self):
        import contextlib

        self._redirect = contextlib.redirect_stdout(io.StringIO())
        self._redirect.__enter__()

    def __exit__(self, *exc):
        self._redirect.__exit__(*exc)


def open_source(name: str, split: str, data_dir=None, *, training: bool):
    """`hcnet_instances`, or a COCO-format dataset in data_dir (its split folder and annotation
    file)."""
    if name == INSTANCES:
        return CollageSource(split)
    if not data_dir:
        raise DataError(
            f"dataset.name={name!r}: a COCO-format dataset needs dataset.data_dir (the folder with "
            f"annotations/ and {split}/), or use {INSTANCES!r}"
        )
    return CocoSource(data_dir, split, training=training)


# --- the host pipeline --------------------------------------------------------------------------


def rescale_size(h: int, w: int, scale) -> tuple[tuple[int, int], float]:
    """mmcv's keep-ratio rescale to img_scale (long, short): ((new h, new w), factor)."""
    long, short = max(scale), min(scale)
    factor = min(long / max(h, w), short / min(h, w))
    return (int(h * factor + 0.5), int(w * factor + 0.5)), factor


def _resize(image: np.ndarray, size, resample) -> np.ndarray:
    h, w = size
    return np.asarray(Image.fromarray(image).resize((w, h), resample))


# Swin's crop branch (its AutoAugment's second policy): resize to one of these, crop, resize again
CROP_SCALES = ((1333, 400), (1333, 500), (1333, 600))
CROP_SIZE = (384, 600)  # mmdet's RandomCrop, crop_type="absolute_range"


def _resized(item: Instances, scale) -> tuple[Instances, np.ndarray]:
    """item at mmcv's keep-ratio rescale to `scale`: the image bilinear, masks nearest, boxes by
    the exact factor of each axis, clipped; (item, factor (4,))."""
    h, w = item.image.shape[:2]
    (nh, nw), _ = rescale_size(h, w, scale)
    factor = np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
    masks = [_resize(m, (nh, nw), Image.Resampling.NEAREST) for m in item.masks]
    return Instances(
        _resize(item.image, (nh, nw), Image.Resampling.BILINEAR),
        np.clip(item.boxes * factor, 0, [nw, nh, nw, nh]).astype(np.float32),
        item.labels,
        np.stack(masks) if masks else np.zeros((0, nh, nw), np.uint8),
        item.image_id,
    ), factor


def _cropped(item: Instances, rng: np.random.Generator) -> Instances:
    """mmdet's RandomCrop (absolute_range 384-600, negative crops allowed): a random window; boxes
    shifted and clipped to it, those left empty dropped with their masks."""
    h, w = item.image.shape[:2]
    ch = int(rng.integers(min(h, CROP_SIZE[0]), min(h, CROP_SIZE[1]) + 1))
    cw = int(rng.integers(min(w, CROP_SIZE[0]), min(w, CROP_SIZE[1]) + 1))
    oy, ox = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    boxes = np.clip(item.boxes - [ox, oy, ox, oy], 0, [cw, ch, cw, ch]).astype(np.float32)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return Instances(
        item.image[oy : oy + ch, ox : ox + cw],
        boxes[keep],
        item.labels[keep],
        item.masks[keep][:, oy : oy + ch, ox : ox + cw],
        item.image_id,
    )


@dataclasses.dataclass(frozen=True)
class Transform:
    """Instances -> one example on the canvas: keep-ratio resize to one of `scales` (drawn per
    image; the test scale in evaluation), with `crop_branch` half the time Swin's crop branch first
    (resize to one of CROP_SCALES, random crop, then the resize), horizontal flip with probability
    `flip`, padding. Boxes scale with the image (by its exact new size) and flip with it; masks are
    resized by nearest neighbour, flipped and padded with the image."""

    canvas: tuple
    scales: tuple
    flip: float = 0.0
    max_instances: int = 100
    crop_branch: bool = False

    def __call__(self, item: Instances, rng: np.random.Generator | None = None) -> dict:
        h, w = item.image.shape[:2]
        first = np.ones(4, np.float32)
        if rng is not None and self.crop_branch and rng.uniform() < 0.5:
            item, first = _resized(item, CROP_SCALES[int(rng.integers(len(CROP_SCALES)))])
            item = _cropped(item, rng)
        scale = self.scales[int(rng.integers(len(self.scales)))] if rng else self.scales[0]
        nh, nw = rescale_size(*item.image.shape[:2], scale)[0]
        if nh > self.canvas[0] or nw > self.canvas[1]:
            raise DataError(
                f"an image of {h}x{w} resized to {nh}x{nw} does not fit the {self.canvas} canvas; "
                "raise config.detection.canvas"
            )
        item, factor = _resized(item, scale)
        image, boxes, masks = item.image, item.boxes, list(item.masks)
        if rng is not None and rng.uniform() < self.flip:
            image = image[:, ::-1]
            boxes = np.stack([nw - boxes[:, 2], boxes[:, 1], nw - boxes[:, 0], boxes[:, 3]], 1)
            masks = [m[:, ::-1] for m in masks]
        g = self.max_instances
        if len(boxes) > g:
            logging.warning(
                "image %s has %d instances; the first %d are kept (config.detection.max_instances)",
                item.image_id,
                len(boxes),
                g,
            )
        n = min(len(boxes), g)
        out_image = np.zeros((*self.canvas, 3), np.uint8)
        out_image[:nh, :nw] = image
        out_masks = np.zeros((g, *self.canvas), np.uint8)
        for i in range(n):
            out_masks[i, :nh, :nw] = masks[i]
        out_boxes = np.zeros((g, 4), np.float32)
        out_boxes[:n] = boxes[:n]
        labels = np.zeros(g, np.int32)
        labels[:n] = item.labels[:n]
        return {
            "image": out_image,
            "image_hw": np.array([nh, nw], np.int32),
            "scale": factor * first,  # original pixels -> canvas pixels (no crop branch: exact)
            "gt_boxes": out_boxes,
            "gt_labels": labels,
            "gt_masks": out_masks,
            "gt_valid": np.arange(g) < n,
            "image_id": np.int32(item.image_id),
        }


@dataclasses.dataclass(frozen=True)
class TrainExample:
    """grain random map: a record (with `index`) of `source` -> Transform's example, `mask` and
    `index`; an unreadable image is skipped and counted in the batch mask."""

    source: object
    transform: Transform

    def __call__(self, record, rng: np.random.Generator) -> dict:
        index = int(record["index"]) if isinstance(record, dict) else int(record)
        try:
            out = self.transform(self.source[index], rng)
            ok = True
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001  a bad file: zeros, masked, said once
            logging.warning("skipping example %d: %s (counted in the batch mask)", index, e)
            out, ok = self.blank(), False
        return {**out, "mask": np.bool_(ok), "index": np.int32(index)}

    def blank(self) -> dict:
        t = self.transform
        g = t.max_instances
        return {
            "image": np.zeros((*t.canvas, 3), np.uint8),
            "image_hw": np.array(t.canvas, np.int32),
            "scale": np.ones(4, np.float32),
            "gt_boxes": np.zeros((g, 4), np.float32),
            "gt_labels": np.zeros(g, np.int32),
            "gt_masks": np.zeros((g, *t.canvas), np.uint8),
            "gt_valid": np.zeros(g, bool),
            "image_id": np.int32(-1),
        }
