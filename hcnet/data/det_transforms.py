"""mmdetection's host pipeline for detection, with static shapes: keep-ratio resize to one of the
scales, Swin's crop branch, flip and padding of `Instances` (hcnet.data.instances) onto one canvas.

Every example comes out on one padded canvas (config.detection.canvas) with its image's own size,
`image_hw`; ground truth is padded to max_instances rows with `gt_valid`, and an image with more is
cut and said once. Masks are kept at the canvas's full resolution, as mmdet keeps them at the
image's: the mask targets are cropped from them.
"""

import dataclasses

import numpy as np
from absl import logging
from PIL import Image

from hcnet.data.instances import Instances
from hcnet.errors import DataError


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

    def place(self, image: np.ndarray, image_id: int = 0) -> dict:
        """An image without annotations (testing, predicting) as an example on the canvas."""
        h, w = image.shape[:2]
        empty = Instances(
            image,
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.int32),
            np.zeros((0, h, w)),
            image_id,
        )
        return self(empty)


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
