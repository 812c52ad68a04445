"""Boxes (x1, y1, x2, y2) in pixels, as mmdetection 2.x handles them (no +1 in widths): areas, IoU,
and the delta coding of its DeltaXYWHBBoxCoder. Pure jnp, float32, any leading axes."""

import math

import jax.numpy as jnp

# mmdet's wh_ratio_clip: a predicted log-scale is clipped to |log(16 / 1000)|
MAX_LOG_RATIO = abs(math.log(16 / 1000))


def area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def iou(a, b, eps: float = 1e-6):
    """Pairwise IoU (..., N, M) of boxes a (..., N, 4) and b (..., M, 4); the union is at least eps,
    as mmdet's bbox_overlaps keeps it."""
    lt = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = jnp.clip(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = area(a)[..., :, None] + area(b)[..., None, :] - inter
    return inter / jnp.maximum(union, eps)


def _centre_size(boxes):
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode(proposals, targets, stds=(1.0, 1.0, 1.0, 1.0)):
    """mmdet's bbox2delta (means 0): (dx, dy, dw, dh) / stds of `targets` relative to
    `proposals`."""
    px, py, pw, ph = _centre_size(proposals)
    gx, gy, gw, gh = _centre_size(targets)
    deltas = jnp.stack(
        [(gx - px) / pw, (gy - py) / ph, jnp.log(gw / pw), jnp.log(gh / ph)], axis=-1
    )
    return deltas / jnp.asarray(stds, deltas.dtype)


def decode(proposals, deltas, stds=(1.0, 1.0, 1.0, 1.0), max_shape=None):
    """mmdet's delta2bbox (means 0): boxes from `deltas` relative to `proposals`, the log-scales
    clipped to MAX_LOG_RATIO and, with max_shape (height, width), the corners to the image."""
    d = deltas * jnp.asarray(stds, deltas.dtype)
    dw = jnp.clip(d[..., 2], -MAX_LOG_RATIO, MAX_LOG_RATIO)
    dh = jnp.clip(d[..., 3], -MAX_LOG_RATIO, MAX_LOG_RATIO)
    px, py, pw, ph = _centre_size(proposals)
    gw, gh = pw * jnp.exp(dw), ph * jnp.exp(dh)
    gx, gy = px + pw * d[..., 0], py + ph * d[..., 1]
    boxes = jnp.stack([gx - 0.5 * gw, gy - 0.5 * gh, gx + 0.5 * gw, gy + 0.5 * gh], axis=-1)
    if (
        max_shape is not None
    ):  # (height, width): scalars, or arrays that broadcast with boxes[..., 0]
        height, width = max_shape
        boxes = jnp.stack(
            [
                jnp.clip(boxes[..., 0], 0.0, width),
                jnp.clip(boxes[..., 1], 0.0, height),
                jnp.clip(boxes[..., 2], 0.0, width),
                jnp.clip(boxes[..., 3], 0.0, height),
            ],
            axis=-1,
        )
    return boxes
