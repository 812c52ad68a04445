"""TFDS builders of the project's own datasets: the embedded digits and people's image folders.

Both write ArrayRecord files that `tfds.data_source` reads like any other TFDS dataset. Importing
this module registers `hcnet_digits`; image folders get a builder class per dataset name (see
`image_folder`).
"""

import numpy as np
import tensorflow_datasets as tfds

from hcnet import paths

DIGITS = "hcnet_digits"
DIGITS_TRAIN = 1437  # the first 80% of scikit-learn's 1,797 digits; the rest is `test`
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class HcnetDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's handwritten digits (8x8, 17 grey levels, 43 writers) as PNGs: no download."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "train = first 1437 digits, test = last 360."}

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(0, DIGITS_TRAIN),
            "test": self._generate_examples(DIGITS_TRAIN, None),
        }

    def _generate_examples(self, start, stop):
        from sklearn.datasets import load_digits

        digits = load_digits()
        for i in range(start, stop or len(digits.target)):
            image = np.round(digits.images[i] * (255 / 16)).astype(np.uint8)[..., None]
            yield i, {"image": image, "label": int(digits.target[i])}


def write_digit_folder(
    root, digits, splits=(("train", 0, DIGITS_TRAIN), ("test", DIGITS_TRAIN, None))
) -> paths.Path:
    """scikit-learn's digits of the classes `digits` as PNGs in `root/<split>/<digit>/<index>.png`
    (the image-folder layout), split as hcnet_digits splits them; for transfer demonstrations and
    tests."""
    from PIL import Image
    from sklearn.datasets import load_digits

    data, root = load_digits(), paths.path(root)
    for split, start, stop in splits:
        for i in range(start, stop or len(data.target)):
            if int(data.target[i]) in digits:
                f = root / split / str(data.target[i]) / f"{i}.png"
                f.parent.mkdir(parents=True, exist_ok=True)
                with f.open("wb") as out:
                    Image.fromarray(np.round(data.images[i] * (255 / 16)).astype(np.uint8)).save(
                        out, format="PNG"
                    )
    return root


def image_folder_files(root) -> dict:
    """{split: [(path, class name), ...]} of `root/<split>/<class>/<image>`, sorted."""
    root = paths.path(root)
    splits = {}
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = [
            (f, c.name)
            for c in sorted(split_dir.iterdir())
            if c.is_dir() and not c.name.startswith(".")
            for f in sorted(c.iterdir())
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
        ]
        if files:
            splits[split_dir.name] = files
    return splits


class _ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images of `root/<split>/<class>/*` stored as they are (bytes), labels from sorted class
    names."""

    VERSION = tfds.core.Version("1.0.0")
    ROOT: paths.Path

    def _info(self):
        classes = sorted({c for files in image_folder_files(self.ROOT).values() for _, c in files})
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(),
                    "label": tfds.features.ClassLabel(names=classes),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            description=f"Image folder {self.ROOT}",
        )

    def _split_generators(self, dl_manager):
        return {
            split: self._generate_examples(files)
            for split, files in image_folder_files(self.ROOT).items()
        }

    def _generate_examples(self, files):
        for path, label in files:
            rel = f"{path.parent.name}/{path.name}"
            yield rel, {"image": path.read_bytes(), "label": label, "file_name": rel}


def image_folder(name: str, root) -> type:
    """A builder class named `name` for the folder `root`; reading it later needs only the files."""
    root = paths.path(root)
    return type(
        name,
        (_ImageFolder,),
        {"name": name, "ROOT": root, "__module__": __name__},
        skip_registration=True,
    )
