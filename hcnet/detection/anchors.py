"""mmdetection 2.x's AnchorGenerator as Swin's Mask R-CNN config sets it: one scale (8) and three
ratios (0.5, 1, 2) at strides 4 to 64, centred on the grid points (center offset 0)."""

import jax.numpy as jnp
import numpy as np

STRIDES = (4, 8, 16, 32, 64)
RATIOS = (0.5, 1.0, 2.0)
SCALES = (8.0,)


def base_anchors(stride: int, ratios=RATIOS, scales=SCALES) -> np.ndarray:
    """(len(ratios) * len(scales), 4) anchors around (0, 0): ratio-major, as scale_major orders
    them."""
    h_ratios = np.sqrt(np.asarray(ratios, np.float64))
    w_ratios = 1.0 / h_ratios
    scales = np.asarray(scales, np.float64)
    ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
    return np.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], axis=-1).astype(np.float32)


def grid_anchors(height: int, width: int, stride: int, ratios=RATIOS, scales=SCALES):
    """(height * width * A, 4) anchors of a feature map: row by row, then column, then anchor."""
    xs = np.arange(width, dtype=np.float32) * stride
    ys = np.arange(height, dtype=np.float32) * stride
    xx, yy = np.meshgrid(xs, ys)
    shifts = np.stack([xx, yy, xx, yy], axis=-1).reshape(-1, 1, 4)
    return (shifts + base_anchors(stride, ratios, scales)[None]).reshape(-1, 4)


def level_sizes(height: int, width: int, levels: int = len(STRIDES)) -> list[tuple[int, int]]:
    """Feature map sizes of a padded (height, width) canvas at strides 4, 8, ...: each stride-2 step
    rounds up, as the backbone's convolutions and FPN's stride-2 max-pool for P6 do."""
    h, w = -(-height // 4), -(-width // 4)
    sizes = [(h, w)]
    for _ in range(levels - 1):
        h, w = -(-h // 2), -(-w // 2)
        sizes.append((h, w))
    return sizes


def all_anchors(height: int, width: int, strides=STRIDES) -> list[np.ndarray]:
    """Each level's anchors for a padded (height, width) canvas."""
    return [
        grid_anchors(h, w, s)
        for (h, w), s in zip(level_sizes(height, width, len(strides)), strides)
    ]


def anchor_valid(image_hw, canvas):
    """(B, N) bool: mmdet's valid flags of every level's anchors for each image's own size."""
    out = []
    for (h, w), stride in zip(level_sizes(*canvas), STRIDES):
        vh = jnp.minimum(jnp.ceil(image_hw[:, 0] / stride), h)
        vw = jnp.minimum(jnp.ceil(image_hw[:, 1] / stride), w)
        inside = (jnp.arange(h)[None, :, None] < vh[:, None, None]) & (
            jnp.arange(w)[None, None, :] < vw[:, None, None]
        )
        out.append(jnp.repeat(inside.reshape(inside.shape[0], -1), len(RATIOS), axis=1))
    return jnp.concatenate(out, axis=1)
