"""mmcv's RoIAlign (aligned=True, average) with a fixed sampling ratio, and mmdet's mapping of RoIs
to FPN levels (SingleRoIExtractor, finest_scale 56).

Swin's config asks for sampling_ratio=0, which picks ceil(roi size / output size) points per bin
for each RoI: a shape that depends on the data. Here it is fixed (2 by default, the value
Detectron2 and mmdet's other configs use), so that the program has static shapes."""

import jax.numpy as jnp
import numpy as np

from hcnet.detection import boxes as box_ops


def _axis_taps(start, size, bins: int, ratio: int, length):
    """Per RoI, the sample points along one axis: their low and high indices and their two
    bilinear weights, zero for points mmcv leaves out (beyond one pixel outside the map). `length`:
    the map's size on this axis, one for all RoIs or one per RoI (R,)."""
    length = jnp.asarray(length)[..., None] if jnp.ndim(length) else length
    step = size / bins
    points = jnp.arange(bins * ratio)
    bin_index, sub = points // ratio, points % ratio
    pos = start[:, None] + bin_index * step[:, None] + (sub + 0.5) * step[:, None] / ratio
    inside = (pos >= -1.0) & (pos <= length)
    pos = jnp.clip(pos, 0.0, None)
    low = jnp.floor(pos).astype(jnp.int32)
    at_edge = low >= length - 1
    low = jnp.where(at_edge, length - 1, low).astype(jnp.int32)
    high = jnp.where(at_edge, length - 1, low + 1).astype(jnp.int32)
    pos = jnp.where(at_edge, low.astype(pos.dtype), pos)
    frac = pos - low
    w_low = jnp.where(inside, 1.0 - frac, 0.0)
    w_high = jnp.where(inside, frac, 0.0)
    return low, high, w_low, w_high


def _pooled(flat, rois, *, scale, height, width, offset, output_size: int, sampling_ratio: int):
    """RoIAlign of each RoI from its own map inside `flat` (N, C), the maps' rows laid end to end:
    RoI r's map starts at offset[r] and is height[r] x width[r] at `scale[r]` of the image."""
    scaled = rois * scale[:, None] - 0.5  # aligned: pixel centres at half-integers
    y0, x0 = scaled[:, 1], scaled[:, 0]
    ylo, yhi, wyl, wyh = _axis_taps(y0, scaled[:, 3] - y0, output_size, sampling_ratio, height)
    xlo, xhi, wxl, wxh = _axis_taps(x0, scaled[:, 2] - x0, output_size, sampling_ratio, width)
    base = offset[:, None, None]
    row = width[:, None, None]
    out = 0.0
    for ys, wy in ((ylo, wyl), (yhi, wyh)):
        for xs, wx in ((xlo, wxl), (xhi, wxh)):
            taps = flat[base + ys[:, :, None] * row + xs[:, None, :]]  # (R, P, P, C)
            out = out + (wy[:, :, None] * wx[:, None, :])[..., None] * taps
    r, p = out.shape[0], output_size
    out = out.reshape(r, p, sampling_ratio, p, sampling_ratio, -1)
    return out.mean(axis=(2, 4))


def roi_align(features, rois, *, output_size: int, spatial_scale: float, sampling_ratio: int = 2):
    """features (H, W, C) of one image, rois (R, 4) in image pixels -> (R, S, S, C) (S =
    output_size), each bin the mean of sampling_ratio^2 bilinear samples."""
    height, width, channels = features.shape
    r = rois.shape[0]
    out = _pooled(
        features.reshape(-1, channels),
        rois,
        scale=jnp.full((r,), spatial_scale, rois.dtype),
        height=jnp.full((r,), height, jnp.int32),
        width=jnp.full((r,), width, jnp.int32),
        offset=jnp.zeros((r,), jnp.int32),
        output_size=output_size,
        sampling_ratio=sampling_ratio,
    )
    return out.astype(features.dtype)


def roi_levels(rois, num_levels: int = 4, finest_scale: float = 56.0):
    """mmdet's map_roi_levels: floor(log2(sqrt(area) / finest_scale + 1e-6)), clipped to the
    levels."""
    scale = jnp.sqrt(jnp.clip(box_ops.area(rois), 0.0))
    level = jnp.floor(jnp.log2(scale / finest_scale + 1e-6))
    return jnp.clip(level, 0, num_levels - 1).astype(jnp.int32)


def multilevel_roi_align(
    features, rois, *, output_size: int, strides=(4, 8, 16, 32), sampling_ratio: int = 2
):
    """features: one (H_l, W_l, C) map per level of one image; each RoI pooled from its level
    only (the levels' maps laid end to end, so each sample is one gather)."""
    levels = roi_levels(rois, len(strides))
    sizes = [f.shape[:2] for f in features]
    starts = np.cumsum([0] + [h * w for h, w in sizes[:-1]])
    flat = jnp.concatenate([f.reshape(-1, f.shape[-1]) for f in features])

    def per_level(values, dtype):
        return jnp.asarray(np.asarray(values), dtype)[levels]

    out = _pooled(
        flat,
        rois,
        scale=per_level([1.0 / s for s in strides], rois.dtype),
        height=per_level([h for h, _ in sizes], jnp.int32),
        width=per_level([w for _, w in sizes], jnp.int32),
        offset=per_level(starts, jnp.int32),
        output_size=output_size,
        sampling_ratio=sampling_ratio,
    )
    return out.astype(features[0].dtype)


def mask_targets(gt_masks, gt_index, rois, size: int = 28, ratio: int = 2):
    """(R, size, size) float {0, 1}: ground-truth mask gt_index[r] (of gt_masks (G, H, W)) inside
    RoI r, by aligned RoIAlign at full resolution, then >= 0.5 (mmdet's
    BitmapMasks.crop_and_resize). Gathers only the sampled pixels."""
    g, height, width = gt_masks.shape
    r = rois.shape[0]
    pooled = _pooled(
        gt_masks.reshape(-1, 1),
        rois,
        scale=jnp.ones((r,), jnp.float32),
        height=jnp.full((r,), height, jnp.int32),
        width=jnp.full((r,), width, jnp.int32),
        offset=gt_index.astype(jnp.int32) * (height * width),
        output_size=size,
        sampling_ratio=ratio,
    )
    return (pooled[..., 0] >= 0.5).astype(jnp.float32)
