"""mmsegmentation's ADE20K training pipeline (the one Swin's and the paper's UperNet runs use), on
the host:

    Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0)) -> RandomCrop(512, cat_max_ratio=0.75)
    -> RandomFlip(0.5) -> PhotoMetricDistortion -> (Normalize on the device) -> Pad(512, 0 / 255)

Image and label move together: every geometric step is applied to both, the image with bilinear
interpolation, the label with nearest (a label is never blended), both by OpenCV's rules as mmcv
calls them (bilinear with half-pixel centres and no antialiasing, nearest taking source pixel
floor(x * scale)). Where this differs from mmseg: OpenCV computes the bilinear weights in 11-bit
fixed point (here float32, then rounded: a grey level apart at most), and the hue and saturation
changes are computed in floating-point HSV rather than through OpenCV's 8-bit HSV tables (a grey
level or so apart). The random draws follow mmseg's order and ranges.
"""

import dataclasses

import numpy as np

IGNORE_INDEX = 255


def rescale_size(w: int, h: int, scale) -> tuple[int, int]:
    """mmcv's rescale_size with keep_ratio: the largest (w, h) of the same shape whose long side
    fits max(scale) and short side fits min(scale)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)


def _bilinear_taps(n_in: int, n_out: int):
    """Source indices and weights of half-pixel-centred bilinear sampling (OpenCV's INTER_LINEAR,
    torch's align_corners=False): source x = (x + 0.5) n_in / n_out - 0.5, clamped to the edge."""
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (x - lo).astype(np.float32)


def resize_bilinear(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) -> (height, width, C) float32, bilinear without antialiasing."""
    y0, y1, wy = _bilinear_taps(a.shape[0], height)
    x0, x1, wx = _bilinear_taps(a.shape[1], width)
    a = a.astype(np.float32)
    rows = a[y0] * (1 - wy)[:, None, None] + a[y1] * wy[:, None, None]
    return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3) bilinear, rounded back to uint8."""
    if image.shape[:2] == (height, width):
        return image
    return np.clip(np.rint(resize_bilinear(image, height, width)), 0, 255).astype(np.uint8)


def resize_nearest(label: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV's INTER_NEAREST: output pixel x takes source pixel floor(x * W / width)."""
    ys = np.minimum(
        np.floor(np.arange(height) * (label.shape[0] / height)).astype(np.int64), label.shape[0] - 1
    )
    xs = np.minimum(
        np.floor(np.arange(width) * (label.shape[1] / width)).astype(np.int64), label.shape[1] - 1
    )
    return label[ys[:, None], xs[None, :]]


def resize_pair(image: np.ndarray, label: np.ndarray, size: tuple[int, int]):
    """(image bilinear, label nearest) at size (w, h)."""
    w, h = size
    if image.shape[:2] == (h, w):
        return image, label
    return resize_image(image, h, w), resize_nearest(label, h, w)


def crop_box(h: int, w: int, crop: tuple[int, int], rng) -> tuple[int, int, int, int]:
    """mmseg's RandomCrop.get_crop_bbox: (y0, y1, x0, x1), uniform offsets within the margins."""
    oy = rng.integers(0, max(h - crop[0], 0) + 1)
    ox = rng.integers(0, max(w - crop[1], 0) + 1)
    return oy, oy + crop[0], ox, ox + crop[1]


def random_crop(
    image, label, crop, rng, cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX
):
    """mmseg's RandomCrop: up to 10 draws until no class covers cat_max_ratio of the crop's labelled
    pixels (and more than one class is there); the last draw otherwise."""
    box = crop_box(*label.shape, crop, rng)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            y0, y1, x0, x1 = box
            classes, counts = np.unique(label[y0:y1, x0:x1], return_counts=True)
            counts = counts[classes != ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = crop_box(*label.shape, crop, rng)
    y0, y1, x0, x1 = box
    return image[y0:y1, x0:x1], label[y0:y1, x0:x1]


def _convert(x, alpha=1.0, beta=0.0):
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def _rgb_to_hsv(rgb):
    """float RGB in [0, 255] -> H in [0, 180) (OpenCV's 8-bit convention), S and V in [0, 255]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    diff = v - rgb.min(-1)
    s = np.where(v > 0, 255.0 * diff / np.maximum(v, 1e-12), 0.0)
    safe = np.maximum(diff, 1e-12)
    h = np.where(
        v == r, (g - b) / safe, np.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)
    )
    h = np.where(diff > 0, (h * 30.0) % 180.0, 0.0)
    return np.stack([h, s, v], -1)


def _hsv_to_rgb(hsv):
    h, s, v = hsv[..., 0] / 30.0, hsv[..., 1] / 255.0, hsv[..., 2]
    i = np.floor(h).astype(np.int32) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(hsv.shape, np.float32)
    for k, (r, g, b) in enumerate(choices):
        sel = i == k
        out[sel] = np.stack([r, g, b], -1)[sel]
    return out


def photometric_distortion(
    image: np.ndarray,
    rng,
    brightness_delta: int = 32,
    contrast=(0.5, 1.5),
    saturation=(0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """mmseg's PhotoMetricDistortion: brightness, then contrast first or last (a coin), saturation,
    hue; each applied with probability 1/2, each rounded back to uint8 as mmseg does."""
    if rng.integers(2):
        image = _convert(image, beta=rng.uniform(-brightness_delta, brightness_delta))
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):
        image = _convert(image, alpha=rng.uniform(*contrast))
    if rng.integers(2):
        hsv = _rgb_to_hsv(image.astype(np.float32))
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(*saturation), 0, 255)
        image = _convert(_hsv_to_rgb(hsv))
    if rng.integers(2):
        hsv = _rgb_to_hsv(image.astype(np.float32))
        hsv[..., 0] = (hsv[..., 0] + rng.integers(-hue_delta, hue_delta + 1)) % 180.0
        image = _convert(_hsv_to_rgb(hsv))
    if mode == 0 and rng.integers(2):
        image = _convert(image, alpha=rng.uniform(*contrast))
    return image


def pad_pair(image, label, size: tuple[int, int], ignore_index: int = IGNORE_INDEX):
    """mmseg's Pad to (h, w) at the bottom and right: image with 0, label with ignore_index."""
    h, w = label.shape
    if (h, w) == tuple(size):
        return image, label
    im = np.zeros((*size, image.shape[2]), image.dtype)
    lb = np.full(size, ignore_index, label.dtype)
    im[:h, :w], lb[:h, :w] = image, label
    return im, lb


@dataclasses.dataclass(frozen=True)
class TrainTransform:
    """The whole training pipeline: (image uint8 (H, W, 3), label uint8 (H, W), rng) -> (image,
    label) at the crop size and (h, w), how much of them is image before the padding."""

    crop: tuple = (512, 512)  # (h, w)
    scale: tuple = (2048, 512)  # mmseg's img_scale: long side 2048, short side 512
    ratio_range: tuple = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip: float = 0.5
    photometric: bool = True
    ignore_index: int = IGNORE_INDEX

    def __call__(self, image, label, rng):
        ratio = rng.uniform(*self.ratio_range)
        scale = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        image, label = resize_pair(
            image, label, rescale_size(image.shape[1], image.shape[0], scale)
        )
        image, label = random_crop(
            image, label, self.crop, rng, self.cat_max_ratio, self.ignore_index
        )
        if rng.random() < self.flip:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.photometric:
            image = photometric_distortion(np.ascontiguousarray(image), rng)
        valid = label.shape
        return (
            *pad_pair(
                np.ascontiguousarray(image),
                np.ascontiguousarray(label),
                self.crop,
                self.ignore_index,
            ),
            valid,
        )
