"""Predictions of a trained network (hcnet.trained.Trained) for image files: arrays in, arrays out.

Images get the evaluation preprocessing (shorter side to size / crop_pct, bicubic, centre crop) at
the run's size and crop (224 and 0.875 without a config; arguments override both) for a classifier,
or are taken at their own size by the run's single-scale test for a segmentation network. A file
that cannot be read is reported with its reason and skipped; the others are still predicted.
"""

import jax
import numpy as np

from hcnet import paths, seg_inference
from hcnet.data import det_transforms, transforms
from hcnet.detection import postprocess


def read_images(files, image_size: int, crop_pct: float):
    """(uint8 (N, S, S, 3) of the readable files, their paths, [(path, reason)] of the others)."""
    images, ok, failed = [], [], []
    for f in files:
        try:
            images.append(transforms.eval_image(paths.path(f).read_bytes(), image_size, crop_pct))
            ok.append(str(f))
        except Exception as e:  # noqa: BLE001  unreadable or not an image: say so, keep going
            failed.append((str(f), reason(e)))
    if not images:
        return np.zeros((0, image_size, image_size, 3), np.uint8), ok, failed
    return np.stack(images), ok, failed


def read_image(f) -> np.ndarray:
    """A file as uint8 RGB (H, W, 3) at its own size."""
    return np.asarray(transforms.rgb(transforms.open_image(paths.path(f).read_bytes())))


def reason(e: Exception) -> str:
    """Why a file could not be read, in a few words."""
    from PIL import UnidentifiedImageError

    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "a directory, not an image file"
    if isinstance(e, UnidentifiedImageError):
        return "not an image Pillow can decode (JPEG, PNG, BMP, GIF, WebP, TIFF are)"
    first = str(e).splitlines()[0] if str(e) else "unreadable"
    return f"{type(e).__name__}: {first}"


def softmax_fn(predict):
    """`predict` (hcnet.nets.predict_fn) followed by a softmax over classes, float32."""

    def probabilities(weights, images):
        return jax.nn.softmax(predict(weights, images).astype(np.float32), axis=-1)

    return probabilities


def class_probabilities(predict, weights, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """Softmax over classes of uint8 images (N >= 1, S, S, 3), in batches, on the default device."""
    fn = jax.jit(softmax_fn(predict))
    parts = [np.asarray(fn(weights, images[i : i + batch])) for i in range(0, len(images), batch)]
    return np.concatenate(parts)


def top_k(probs: np.ndarray, names: list[str], k: int = 5) -> list[list[dict]]:
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [
        [{"class": int(c), "name": names[c], "probability": float(p[c])} for c in row]
        for p, row in zip(probs, order)
    ]


def classify(
    source,
    files,
    *,
    ema: bool = False,
    top: int = 5,
    image_size: int | None = None,
    crop_pct: float | None = None,
) -> tuple[dict, list]:
    """({file: top-k list}, [(file, reason) skipped]) of a classifier."""
    size, crop = source.preprocessing(image_size, crop_pct)
    images, ok, failed = read_images(files, size, crop)
    if not ok:
        return {}, failed
    predict, weights = source.predictor(ema=ema)
    probs = class_probabilities(predict, weights, images)
    return dict(zip(ok, top_k(probs, source.class_names(), top))), failed


def segmenter(source, *, ema: bool = False):
    """`segment(image)`: per-pixel classes uint8 (H, W) of a uint8 image (H, W, 3) at its own size,
    as the run's single-scale test infers them (hcnet.seg_inference)."""
    predict, weights = source.predictor(ema=ema)
    fn = jax.jit(predict)
    options = source.segmentation_test()

    def logits(x):
        return fn(weights, x)

    def segment(image):
        return seg_inference.probability_map(logits, image, **options).argmax(-1).astype(np.uint8)

    return segment


def class_shares(pred: np.ndarray, names: list[str]) -> list[dict]:
    """The classes present in a class map by their share of its pixels, largest first."""
    share = np.bincount(pred.ravel(), minlength=len(names)) / pred.size
    order = [c for c in np.argsort(-share, kind="stable") if share[c] > 0]
    return [{"class": int(c), "name": names[c], "share": float(share[c])} for c in order]


def detector(source, *, ema: bool = False):
    """`detect(image)`: a Mask R-CNN's detections of a uint8 image (H, W, 3) at its own size, as
    the run's test pipeline makes them (keep-ratio resize to the test scale on the canvas): (boxes
    (n, 4) x1 y1 x2 y2, scores (n,), labels (n,), masks (n, H, W) bool), best first."""
    predict, weights = source.predictor(ema=ema)
    fn = jax.jit(predict)
    test = source.detection_test()
    transform = det_transforms.Transform(canvas=test["canvas"], scales=(test["scale"],))

    def detect(image):
        h, w = image.shape[:2]
        example = transform.place(image)
        out = fn(weights, example["image"][None], example["image_hw"][None].astype(np.float32))
        out = jax.tree.map(np.asarray, out)
        return postprocess.to_image(out, 0, example["scale"], h, w)

    return detect
