"""Detections back onto the original image, on the host: boxes divided by the resize factor and
clipped, and each 28x28 mask probability map pasted into its box as mmdet's _do_paste_mask does
(bilinear, torch's grid_sample with align_corners=False and zeros outside), then >= 0.5."""

import numpy as np


def paste_mask(probs: np.ndarray, box, height: int, width: int, threshold: float = 0.5):
    """(height, width) bool: the (S, S) mask `probs` of a box (x1, y1, x2, y2) in the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    out = np.zeros((height, width), bool)
    c0, c1 = max(int(np.floor(x1)) - 1, 0), min(int(np.ceil(x2)) + 1, width)
    r0, r1 = max(int(np.floor(y1)) - 1, 0), min(int(np.ceil(y2)) + 1, height)
    if c1 <= c0 or r1 <= r0 or x2 <= x1 or y2 <= y1:
        return out
    size = probs.shape[0]
    # pixel centres -> grid_sample's [-1, 1] -> the mask's pixel coordinates
    u = ((np.arange(c0, c1) + 0.5 - x1) / (x2 - x1) * 2 - 1 + 1) * size / 2 - 0.5
    v = ((np.arange(r0, r1) + 0.5 - y1) / (y2 - y1) * 2 - 1 + 1) * size / 2 - 0.5

    def taps(t):
        lo = np.floor(t).astype(int)
        frac = t - lo
        return [(lo, 1 - frac), (lo + 1, frac)]

    value = np.zeros((r1 - r0, c1 - c0))
    for ry, wy in taps(v):
        for cx, wx in taps(u):
            ok = ((ry >= 0) & (ry < size))[:, None] & ((cx >= 0) & (cx < size))[None, :]
            picked = probs[np.clip(ry, 0, size - 1)][:, np.clip(cx, 0, size - 1)]
            value += np.where(ok, wy[:, None] * wx[None, :] * picked, 0.0)
    out[r0:r1, c0:c1] = value >= threshold
    return out


def to_image(detections: dict, i: int, scale, height: int, width: int, with_masks: bool = True):
    """Image i's valid detections of a batch (numpy), in its original pixels: (boxes, scores,
    labels, masks or None)."""
    ok = np.asarray(detections["valid"][i], bool)
    boxes = np.asarray(detections["boxes"][i], np.float32)[ok] / np.asarray(scale, np.float32)
    boxes = np.clip(boxes, 0, [width, height, width, height])
    scores = np.asarray(detections["scores"][i])[ok]
    labels = np.asarray(detections["labels"][i])[ok]
    masks = None
    if with_masks:
        probs = np.asarray(detections["masks"][i])[ok]
        masks = (
            np.stack([paste_mask(p, b, height, width) for p, b in zip(probs, boxes)])
            if len(boxes)
            else np.zeros((0, height, width), bool)
        )
    return boxes, scores, labels, masks
