"""Segmentation inference as mmsegmentation's EncoderDecoder does it: whole-image or sliding-window
logits, single- or multi-scale with flip, resized back to the image's own size.

`logits_fn` maps a batch of images (N, h, w, 3) float32 to logits at the same size (N, h, w,
classes) (the model with its output resized to its input, as mmseg's encode_decode). Sliding windows
of one image are one batch, so a jitted `logits_fn` over a sharded batch spreads them over the
devices.

    slide: windows of `crop` every `stride` (mmseg's grid: the last window of a row or column ends
    at the
           border), their logits summed where they overlap and divided by how many windows cover
           each pixel
    whole: the image at once
    multi-scale + flip (mmseg's aug_test): for each ratio r the image is resized to fit r x `scale`
    (keep
           ratio) and inferred; its logits are resized to the image's size (bilinear, torch's
           align_corners=False) and made probabilities; the flipped image likewise, its output
           flipped back; the probabilities are averaged.
"""

import jax
import jax.numpy as jnp
import numpy as np

from hcnet.data import seg_transforms


def windows(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """mmseg's slide_inference grid: (y0, y1, x0, x1) for each window; windows are crop-sized, or
    the image's size along a side shorter than the crop."""
    rows = max(height - crop[0] + stride[0] - 1, 0) // stride[0] + 1
    cols = max(width - crop[1] + stride[1] - 1, 0) // stride[1] + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * stride[0] + crop[0], height), min(c * stride[1] + crop[1], width)
            boxes.append((max(y1 - crop[0], 0), y1, max(x1 - crop[1], 0), x1))
    return boxes


def slide_logits(
    logits_fn, image: np.ndarray, crop=(512, 512), stride=(341, 341), pad_to: int = 1
) -> np.ndarray:
    """(H, W, classes) float32: overlapping windows' logits averaged per pixel. `pad_to` rounds the
    batch of windows up (repeating the last) to a multiple, e.g. the device count."""
    h, w = image.shape[:2]
    boxes = windows(h, w, crop, stride)
    batch = np.stack([image[y0:y1, x0:x1] for y0, y1, x0, x1 in boxes])
    extra = -len(boxes) % pad_to
    if extra:
        batch = np.concatenate([batch, np.repeat(batch[-1:], extra, 0)])
    out = np.asarray(logits_fn(batch.astype(np.float32)))[: len(boxes)]
    total = np.zeros((h, w, out.shape[-1]), np.float32)
    count = np.zeros((h, w, 1), np.float32)
    for (y0, y1, x0, x1), logits in zip(boxes, out):
        total[y0:y1, x0:x1] += logits
        count[y0:y1, x0:x1] += 1
    return total / count


def whole_logits(logits_fn, image: np.ndarray, pad_to: int = 1) -> np.ndarray:
    """(H, W, classes) of the image at once (repeated `pad_to` times to fill a batch over the
    devices)."""
    return np.asarray(logits_fn(np.repeat(image[None].astype(np.float32), pad_to, 0)))[0]


def probability_map(
    logits_fn,
    image: np.ndarray,
    *,
    scale=(2048, 512),
    ratios=(1.0,),
    flip: bool = False,
    mode: str = "slide",
    crop=(512, 512),
    stride=(341, 341),
    pad_to: int = 1,
) -> np.ndarray:
    """(H, W, classes) class probabilities of a uint8 image (H, W, 3) at its own size; single-scale
    is ratios=(1.0,) without flip, mmseg's multi-scale test is ratios=(0.5, 0.75, 1.0, 1.25, 1.5,
    1.75), flip."""
    if mode not in ("slide", "whole"):
        raise ValueError(f"mode={mode!r}: 'slide' or 'whole'")
    h, w = image.shape[:2]
    total = None
    for ratio in ratios:
        sw, sh = seg_transforms.rescale_size(w, h, (int(scale[0] * ratio), int(scale[1] * ratio)))
        scaled = seg_transforms.resize_image(image, sh, sw)
        for flipped in (False, True) if flip else (False,):
            x = np.ascontiguousarray(scaled[:, ::-1]) if flipped else scaled
            logits = (
                slide_logits(logits_fn, x, crop, stride, pad_to)
                if mode == "slide"
                else whole_logits(logits_fn, x, pad_to)
            )
            if logits.shape[:2] != (h, w):
                logits = seg_transforms.resize_bilinear(logits, h, w)
            p = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
            p = p[:, ::-1] if flipped else p
            total = p if total is None else total + p
    return total / (len(ratios) * (2 if flip else 1))
