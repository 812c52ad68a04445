"""Host-side image work: decode, RandomResizedCrop + flip (train), resize + centre crop (eval).

Output is uint8 (size, size, 3) at the model's resolution; everything else (RandAugment,
normalisation, erasing, mixing) runs on the device. Decoding uses Pillow (libjpeg-turbo) and, for
training crops, JPEG DCT scaling (`Image.draft`) so that only the resolution the crop needs is
decoded. An image that cannot be decoded becomes zeros with `mask=False`, is logged, and is counted
downstream: its position in the batch is kept, so skipping it never changes what any other example
gets.
"""

import dataclasses
import io
import math
import re
import warnings

import numpy as np
from absl import logging
from PIL import Image

MEAN, STD = (
    (0.485, 0.456, 0.406),
    (0.229, 0.224, 0.225),
)  # ImageNet's, what every task normalises by
BICUBIC = Image.Resampling.BICUBIC
PAD_INDEX = -1  # `index` of the padding examples that make evaluation batches full


def open_image(data) -> Image.Image:
    """A lazily decoded image from encoded bytes or a uint8 (H, W[, C]) array."""
    if isinstance(data, np.ndarray):
        return Image.fromarray(data[..., 0] if data.ndim == 3 and data.shape[-1] == 1 else data)
    if not data:
        raise ValueError("empty file")
    with warnings.catch_warnings():  # the size is checked here, in one line, instead
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:  # over twice the limit: says how many pixels
            raise ValueError(_too_large(re.search(r"\((\d+) pixels\)", str(e))[1])) from None
    if im.width * im.height > Image.MAX_IMAGE_PIXELS:
        raise ValueError(_too_large(f"{im.width} x {im.height} = {im.width * im.height}"))
    return im


def _too_large(pixels: str) -> str:
    """Why an image is refused before it is decoded: its header promises more pixels than Pillow's
    limit against decompression bombs (PIL.Image.MAX_IMAGE_PIXELS, which a user may raise)."""
    return (
        f"{pixels} pixels, more than the {Image.MAX_IMAGE_PIXELS} an image may have (Pillow's "
        "limit against decompression bombs, PIL.Image.MAX_IMAGE_PIXELS)"
    )


def rgb(im: Image.Image) -> Image.Image:
    """Decoded RGB (grayscale, palette, CMYK and alpha images converted)."""
    im.load()
    return im if im.mode == "RGB" else im.convert("RGB")


def random_resized_crop(
    width: int, height: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple:
    """torchvision's RandomResizedCrop box (left, top, w, h): 10 tries, then a centre crop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def train_image(
    data,
    size: int,
    rng: np.random.Generator,
    scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3),
    hflip: float = 0.5,
    draft: bool = True,
) -> np.ndarray:
    """RandomResizedCrop (bicubic) and horizontal flip, uint8 (size, size, 3)."""
    im = open_image(data)
    width, height = im.size
    left, top, w, h = random_resized_crop(width, height, rng, scale, ratio)
    flip = rng.uniform() < hflip
    if (
        draft and im.format == "JPEG"
    ):  # decode at 1/2, 1/4 or 1/8 scale while the crop keeps >= size
        im.draft("RGB", (math.ceil(width * size / w), math.ceil(height * size / h)))
    s = im.size[0] / width, im.size[1] / height
    box = (left * s[0], top * s[1], (left + w) * s[0], (top + h) * s[1])
    im = rgb(im).resize((size, size), BICUBIC, box=box)
    out = np.asarray(im)
    return out[:, ::-1] if flip else out


def eval_image(data, size: int, crop_pct: float = 0.875) -> np.ndarray:
    """Shorter side to floor(size / crop_pct) (bicubic), then the centre size x size, in one
    resample."""
    im = rgb(open_image(data))
    width, height = im.size
    short = math.floor(size / crop_pct)
    if width <= height:  # torchvision Resize: the longer side is int(short * long / short_side)
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return np.asarray(im.resize((size, size), BICUBIC, box=box))


def _example(image, label, mask, index) -> dict:
    label = np.asarray(
        label, np.bool_ if np.ndim(label) else np.int32
    )  # a class, or a multi-hot (classes,)
    return {"image": image, "label": label, "mask": np.bool_(mask), "index": np.int32(index)}


_warned = set()  # per process: each bad example is logged once, not once per epoch


def warn_skipped(record: dict, error: Exception) -> None:
    """Logs, once per example and process, that a record could not be read and is masked out of its
    batch."""
    if record["index"] not in _warned:
        _warned.add(record["index"])
        name = record.get("file_name", b"")
        name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        logging.warning(
            "skipping example %d %s: %s (counted in the batch mask)", record["index"], name, error
        )


def _failed(record: dict, size: int, error: Exception, label=0) -> dict:
    warn_skipped(record, error)
    return _example(np.zeros((size, size, 3), np.uint8), label, False, record["index"])


@dataclasses.dataclass(frozen=True)
class TrainTransform:
    """grain random map: record (with "index") -> {image uint8, label, mask, index}."""

    size: int
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    hflip: float = 0.5
    draft: bool = True

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        try:
            image = train_image(
                record["image"], self.size, rng, self.scale, self.ratio, self.hflip, self.draft
            )
        except Exception as e:  # noqa: BLE001  any decoder failure: skip this example, keep going
            return _failed(record, self.size, e)
        return _example(image, record["label"], True, record["index"])


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """grain map: record (with "index"; index -1 is padding) -> {image uint8, label, mask, index};
    with `multilabel_classes`, record[label_key] is a set of classes and label a multi-hot bool
    (classes,)."""

    size: int
    crop_pct: float = 0.875
    label_key: str = "label"
    multilabel_classes: int = 0

    def _label(self, record=None):
        if not self.multilabel_classes:
            return 0 if record is None else record[self.label_key]
        hot = np.zeros(self.multilabel_classes, np.bool_)
        if record is not None:
            hot[np.asarray(record[self.label_key], np.int64)] = True
        return hot

    def __call__(self, record: dict) -> dict:
        if record["index"] == PAD_INDEX:
            return _example(
                np.zeros((self.size, self.size, 3), np.uint8), self._label(), False, PAD_INDEX
            )
        try:
            image = eval_image(record["image"], self.size, self.crop_pct)
        except Exception as e:  # noqa: BLE001
            return _failed(record, self.size, e, self._label())
        return _example(image, self._label(record), True, record["index"])
