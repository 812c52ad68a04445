"""Top-5 labels of image files from a checkpoint or a training workdir.

    python -m hcnet.tools.predict --checkpoint=/tmp/hcnet-quickstart digit.png photo.jpg [--ema] [--top=5] [--json]

Images get the evaluation preprocessing (shorter side to size / crop_pct, bicubic, centre crop). The
size and crop_pct come from the run's config.json when the checkpoint has one, else 224 and 0.875;
flags override both. Class names: ImageNet's (WordNet lemmas) for a 1000-class head, the dataset's
own when its TFDS metadata is prepared, else "class N". A file that cannot be read is reported in
one line and skipped; the others are still predicted, and the exit code is 1 if any was skipped.
"""

import jax
import numpy as np
from flax import nnx

from hcnet import checkpoint, paths, run_files

IMAGENET_CLASSES = paths.PACKAGE / "imagenet_classes.tsv"


def _imagenet_rows() -> list[list[str]]:
    lines = [l for l in IMAGENET_CLASSES.read_text().splitlines() if l and not l.startswith("#")]
    return [l.split("\t") for l in lines]


def imagenet_names() -> list[str]:
    """The 1000 ImageNet-1K class names in TFDS label order: each synset's WordNet lemmas, e.g. 'tench, Tinca tinca'."""
    return [row[1] for row in _imagenet_rows()]


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1K WordNet synsets in TFDS label order, e.g. 'n01440764'."""
    return [row[0] for row in _imagenet_rows()]


def run_dataset(path):
    """The dataset section of the config.json a training run wrote (and export copies), or None."""
    return run_files.read_config(path).dataset if (paths.path(path) / run_files.CONFIG_FILE).is_file() else None


def class_names(path, num_classes: int) -> list[str]:
    """Names for the head's classes: ImageNet, the run's TFDS dataset, or 'class N'."""
    if num_classes == 1000:
        return imagenet_names()
    dataset = run_dataset(path)
    if dataset is not None and dataset.name != "synthetic":
        try:
            import tensorflow_datasets as tfds

            from hcnet.data import builders  # noqa: F401  registers the project's datasets
            builder = tfds.builder(dataset.name, data_dir=dataset.data_dir or None)
            names = list(builder.info.features["label"].names) if builder.is_prepared() else []
            if len(names) == num_classes:
                return names
        except Exception:  # noqa: BLE001  metadata unavailable: fall back to numbers
            pass
    return [f"class {i}" for i in range(num_classes)]


def preprocessing(path, image_size: int | None = None, crop_pct: float | None = None) -> tuple[int, float]:
    dataset = run_dataset(path)
    return (image_size or (dataset.image_size if dataset is not None else 224),
            crop_pct or (dataset.crop_pct if dataset is not None else 0.875))


def read_images(files, image_size: int, crop_pct: float):
    """(uint8 (N, S, S, 3) of the readable files, their paths, [(path, reason)] of the others)."""
    from hcnet.data.transforms import eval_image
    images, ok, failed = [], [], []
    for f in files:
        try:
            images.append(eval_image(paths.path(f).read_bytes(), image_size, crop_pct))
            ok.append(str(f))
        except Exception as e:  # noqa: BLE001  unreadable or not an image: say so, keep going
            failed.append((str(f), _reason(e)))
    shape = (0, image_size, image_size, 3)
    return (np.stack(images) if images else np.zeros(shape, np.uint8)), ok, failed


def _reason(e: Exception) -> str:
    from PIL import UnidentifiedImageError
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "a directory, not an image file"
    if isinstance(e, UnidentifiedImageError):
        return "not an image Pillow can decode (JPEG, PNG, BMP, GIF, WebP, TIFF are)"
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"


def probabilities(model, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """Softmax over classes of uint8 images (N >= 1, S, S, 3), in batches, on the default device."""
    from hcnet.data.augment import normalize
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: jax.nn.softmax(nnx.merge(graphdef, s)(normalize(x)), axis=-1))
    return np.concatenate([np.asarray(forward(state, images[i:i + batch])) for i in range(0, len(images), batch)])


def top_k(probs: np.ndarray, names: list[str], k: int = 5) -> list[list[dict]]:
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [[{"class": int(c), "name": names[c], "probability": float(p[c])} for c in row]
            for p, row in zip(probs, order)]


def predict(path, files, *, ema: bool = False, top: int = 5, image_size: int | None = None,
            crop_pct: float | None = None) -> tuple[dict, list]:
    """({file: top-k list}, [(file, reason) skipped])."""
    model = checkpoint.load(path, ema=ema)
    size, crop = preprocessing(path, image_size, crop_pct)
    images, ok, failed = read_images(files, size, crop)
    if not ok:
        return {}, failed
    probs = probabilities(model, images)
    names = class_names(path, probs.shape[-1])
    return dict(zip(ok, top_k(probs, names, top))), failed


# ---------------------------------------------------------------- segmentation checkpoints
def is_segmentation(path) -> bool:
    """Whether the checkpoint (or run) at `path` is a segmentation network (its model.json has a decoder)."""
    return "decoder" in checkpoint.read_spec(path)


def segmentation_options(path) -> dict:
    """The run's single-scale test (config.segmentation: mode, crop, stride, scale), or the defaults' (mmseg's)."""
    from hcnet import config as config_lib
    c = run_files.read_config(path) if (paths.path(path) / run_files.CONFIG_FILE).is_file() else config_lib.defaults()
    s = c.segmentation
    return {"mode": s.eval_mode, "crop": tuple(s.crop), "stride": tuple(s.eval_stride), "scale": tuple(s.scale)}


def segmentation_names(path, num_classes: int) -> list[str]:
    """The run's dataset's class list (its TFDS metadata, when prepared), else 'class N'."""
    dataset = run_dataset(path)
    if dataset is not None:
        try:
            from hcnet.data import sources
            classes = sources.open_segmentation(dataset.name, dataset.eval_split, data_dir=dataset.data_dir or None).classes
            if len(classes) == num_classes:
                return list(classes)
        except Exception:  # noqa: BLE001  metadata unavailable: fall back to numbers
            pass
    return [f"class {i}" for i in range(num_classes)]


def segment(path, files, out, *, ema: bool = False) -> tuple[dict, list]:
    """Per-pixel classes of image files at their own size, as the run's single-scale test infers them
    (hcnet.seg_inference). Writes <out>/<stem>_mask.png (class ids, one channel) and <stem>_overlay.png (the
    mask's colours over the image, with a legend). ({file: {"mask", "overlay", "classes"}}, [(file, reason)]);
    "classes": the predicted classes by their share of the pixels."""
    from hcnet import seg_inference, visualize
    from hcnet.data import augment, transforms
    model = checkpoint.load(path, ema=ema)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(augment.normalize(x)))
    options = segmentation_options(path)
    out = paths.path(out)
    paths.check(out, write=True)
    out.mkdir(parents=True, exist_ok=True)
    names, written, failed = None, {}, []
    for f in files:
        try:
            image = np.asarray(transforms.rgb(transforms.open_image(paths.path(f).read_bytes())))
        except Exception as e:  # noqa: BLE001  unreadable or not an image: say so, keep going
            failed.append((str(f), _reason(e)))
            continue
        probs = seg_inference.probabilities(lambda x: forward(state, x), image, **options)
        if names is None:
            names = segmentation_names(path, probs.shape[-1])
        pred = probs.argmax(-1).astype(np.uint8)
        stem = paths.path(f).stem
        files_out = {"mask": out / f"{stem}_mask.png", "overlay": out / f"{stem}_overlay.png"}
        visualize.write_png(pred, files_out["mask"])
        visualize.plot_segmentation(image, pred, names, files_out["overlay"])
        share = np.bincount(pred.ravel(), minlength=len(names)) / pred.size
        classes = [{"class": int(c), "name": names[c], "share": float(share[c])}
                   for c in np.argsort(-share, kind="stable") if share[c] > 0]
        written[str(f)] = {**{k: str(v) for k, v in files_out.items()}, "classes": classes}
    return written, failed
