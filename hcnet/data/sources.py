"""Where examples come from: any prepared TFDS dataset by name and split string, or synthetic data.

A source is random access (`len`, `[i]`) over records `{"image": encoded bytes or uint8 (H, W, C),
"label": int}`; `label_key` names another label feature (e.g. imagenet2012_real's "real_label", a
set of classes per image: `multilabel`). Nothing downloads here: TFDS datasets must be prepared
first (`hcnet.tools.prepare`), except the embedded digits, which are built from scikit-learn on
first use. Synthetic data needs no TensorFlow or TFDS at all.
"""

import dataclasses
import re

import numpy as np

from hcnet import paths
from hcnet.errors import DataError

SYNTHETIC = "synthetic"
SYNTHETIC_SPLITS = {"train": 1_281_167, "validation": 50_000}  # ImageNet-1K's sizes


@dataclasses.dataclass(frozen=True)
class Source:
    records: object  # random access: len(records), records[i] -> {"image": ..., "label": int}
    name: str
    split: str
    num_classes: int
    label_key: str = "label"
    multilabel: bool = False  # records[i][label_key] is a (possibly empty) sequence of classes

    def __len__(self):
        return len(self.records)


class Synthetic:
    """Uniform random uint8 images with label `index % num_classes`, made from the index alone."""

    def __init__(self, start: int, stop: int, image_size, num_classes: int):
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.start, self.stop, self.shape, self.num_classes = start, stop, (*size, 3), num_classes

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, i: int) -> dict:
        i = self.start + int(i)
        rng = np.random.default_rng(i)
        image = rng.integers(0, 256, self.shape, dtype=np.uint8)
        return {"image": image, "label": i % self.num_classes}


def _slice_bounds(split: str, sizes: dict, field: str) -> tuple:
    """'train', 'train[:90%]', 'validation[100:-50]' -> (start, stop) within that split."""
    m = re.fullmatch(r"(\w+)(?:\[(-?\d*%?):(-?\d*%?)\])?", split)
    if not m or m[1] not in sizes:
        raise DataError(
            f"{field}={split!r} is not a split of {SYNTHETIC}: use one of {sorted(sizes)}, "
            "optionally sliced like 'train[:90%]' or 'train[100:200]'"
        )
    n = sizes[m[1]]

    def bound(s, default):
        if not s:
            return default
        v = int(s.rstrip("%"))
        v = round(v * n / 100) if s.endswith("%") else v
        return min(max(v + n if v < 0 else v, 0), n)

    return bound(m[2], 0), bound(m[3], n)


def open_split(
    name: str,
    split: str,
    *,
    data_dir=None,
    num_classes: int = 1000,
    image_size=224,
    field: str = "dataset.train_split",
    label_key: str = "label",
) -> Source:
    """The records of `name`/`split`; `num_classes` and `image_size` (N or (H, W)) only shape
    synthetic data."""
    if name == SYNTHETIC:
        if label_key != "label":
            raise DataError(f"label_key={label_key!r}: {SYNTHETIC} data has only 'label'")
        start, stop = _slice_bounds(split, SYNTHETIC_SPLITS, field)
        if stop <= start:
            raise DataError(f"{field}={split!r} selects no examples of {SYNTHETIC}")
        return Source(Synthetic(start, stop, image_size, num_classes), name, split, num_classes)
    return _tfds_split(name, split, data_dir, field, label_key)


def _prepare_hint(name: str, data_dir) -> str:
    where = f"--data_dir={data_dir}" if data_dir else "(default --data_dir ~/tensorflow_datasets)"
    manual = {
        "imagenet2012": " --manual_dir=DIR_WITH_THE_TWO_TARS",
        "imagenet_v2": " --manual_dir=DIR_WITH_THE_ARCHIVE",
        "imagenet2012_real": " --manual_dir=DIR_WITH_ILSVRC2012_img_val.tar_AND_real.json",
        "hcnet_ade20k": " --manual_dir=DIR_WITH_ADEChallengeData2016.zip",
    }
    manual = manual.get(name.split("/")[0], "")
    return f"python -m hcnet.tools.prepare --dataset={name}{manual} {where}"


def _tfds_records(name: str, split: str, data_dir, field: str, decoders: dict):
    """(builder, random-access records) of a prepared TFDS split; one line for whatever stands in
    the way."""
    import tensorflow_datasets as tfds

    from hcnet.data import (
        builders,
        segmentation,
    )  # registers hcnet_digits, hcnet_ade20k, hcnet_collages

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"dataset.name={name!r} is neither a TFDS dataset nor one prepared in data_dir="
            f"{data_dir or '~/tensorflow_datasets'}; use a TFDS name, '{builders.DIGITS}', "
            f"'{SYNTHETIC}', or prepare an image folder with python -m hcnet.tools.prepare "
            "--dataset=image_folder"
        ) from None
    if not builder.is_prepared():
        if name in (
            builders.DIGITS,
            segmentation.COLLAGES,
        ):  # embedded: building reads nothing from the network
            from hcnet.data import prepare

            prepare.prepare(name, data_dir)
            builder = tfds.builder(name, data_dir=data_dir)
        else:
            raise DataError(
                f"dataset {name!r} is not prepared in {builder.data_dir}; run "
                f"{_prepare_hint(name, data_dir)}"
            )
    splits = builder.info.splits
    try:
        records = tfds.data_source(
            name, split=split, data_dir=data_dir, download=False, decoders=decoders
        )
    except NotImplementedError:
        raise DataError(
            f"dataset {name!r} in {builder.data_dir} is in TFRecord format, which has no random "
            f"access; convert it in place with {_prepare_hint(name, data_dir)} --convert"
        ) from None
    except (ValueError, KeyError, AssertionError) as e:
        sizes = ", ".join(f"{s} ({splits[s].num_examples})" for s in splits)
        raise DataError(
            f"{field}={split!r} is not a valid split of {name} ({str(e).splitlines()[0]}); "
            f"splits: {sizes}; slices like 'train[:90%]' or 'train[100:]' work"
        ) from None
    if len(records) == 0:
        raise DataError(f"{field}={split!r} selects no examples of {name}")
    return builder, records


def _tfds_split(name: str, split: str, data_dir, field: str, label_key: str) -> Source:
    import tensorflow_datasets as tfds

    builder, records = _tfds_records(
        name, split, data_dir, field, {"image": tfds.decode.SkipDecoding()}
    )
    features = builder.info.features
    labels = [
        k
        for k, f in features.items()
        if isinstance(getattr(f, "feature", f), tfds.features.ClassLabel)
    ]
    if label_key not in labels:
        raise DataError(
            f"label_key={label_key!r} is not a label feature of {name}; it has {', '.join(labels)}"
        )
    label = features[label_key]
    multilabel = isinstance(label, tfds.features.Sequence)
    num_classes = label.feature.num_classes if multilabel else label.num_classes
    return Source(records, name, split, int(num_classes), label_key, multilabel)


@dataclasses.dataclass(frozen=True)
class SegmentationSource:
    """Records {"image": encoded bytes, "segmentation": encoded PNG of stored ids, "file_name"};
    what the ids mean comes from the dataset's metadata (hcnet.data.segmentation)."""

    records: object
    name: str
    split: str
    classes: tuple
    reduce_zero_label: bool
    ignore_index: int

    def __len__(self):
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def mask(self, record) -> np.ndarray:
        """A record's training labels (H, W) uint8: class ids, ignore_index where nothing is to be
        learnt."""
        import io

        from PIL import Image

        from hcnet.data import segmentation

        with Image.open(io.BytesIO(record["segmentation"])) as im:
            stored = np.asarray(im)
        stored = stored[..., 0] if stored.ndim == 3 else stored
        return segmentation.label_map(
            stored, self.reduce_zero_label, self.num_classes, self.ignore_index
        )


def open_segmentation(
    name: str, split: str, *, data_dir=None, field: str = "dataset.train_split"
) -> SegmentationSource:
    """A split of a prepared segmentation dataset (hcnet_ade20k or a segmentation folder)."""
    import tensorflow_datasets as tfds

    skip = tfds.decode.SkipDecoding()
    builder, records = _tfds_records(
        name, split, data_dir, field, {"image": skip, "segmentation": skip}
    )
    meta = builder.info.metadata or {}
    if "segmentation" not in builder.info.features or "classes" not in meta:
        raise DataError(
            f"dataset.name={name!r} is not a segmentation dataset (no segmentation masks and class "
            "list); prepare one with --dataset=hcnet_ade20k or --dataset=segmentation_folder"
        )
    return SegmentationSource(
        records,
        name,
        split,
        tuple(meta["classes"]),
        bool(meta["reduce_zero_label"]),
        int(meta["ignore_index"]),
    )


# ---------------------------------------------------------------- class names
IMAGENET_CLASSES = (
    "imagenet_classes.tsv"  # in the package: synset and WordNet lemmas, TFDS label order
)


def _imagenet_rows() -> list[list[str]]:
    text = (paths.PACKAGE / IMAGENET_CLASSES).read_text()
    return [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]


def imagenet_names() -> list[str]:
    """The 1000 ImageNet-1K class names in TFDS label order: WordNet lemmas, e.g. 'tench, Tinca
    tinca'."""
    return [row[1] for row in _imagenet_rows()]


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1K WordNet synsets in TFDS label order, e.g. 'n01440764'."""
    return [row[0] for row in _imagenet_rows()]


def class_names(
    dataset, num_classes: int, *, segmentation: bool = False, detection: bool = False
) -> list[str]:
    """Names for a head's classes: ImageNet's for 1000 classifier classes, else those of `dataset`
    (a config's dataset section, or None) when its metadata is prepared and has that many, else
    'class N'."""
    if num_classes == 1000 and not (segmentation or detection):
        return imagenet_names()
    names = []
    if dataset is not None and dataset.name != SYNTHETIC:
        try:
            names = (
                _detection_names(dataset) if detection else _dataset_names(dataset, segmentation)
            )
        except Exception:  # noqa: BLE001  metadata unavailable: numbers instead
            names = []
    return names if len(names) == num_classes else [f"class {i}" for i in range(num_classes)]


def _detection_names(dataset) -> list[str]:
    from hcnet.data import instances

    split = instances.open_source(
        dataset.name, dataset.eval_split, dataset.data_dir or None, training=False
    )
    return list(split.class_names)


def _dataset_names(dataset, segmentation: bool) -> list[str]:
    data_dir = dataset.data_dir or None
    if segmentation:
        return list(open_segmentation(dataset.name, dataset.eval_split, data_dir=data_dir).classes)
    import tensorflow_datasets as tfds

    from hcnet.data import builders  # noqa: F401  registers the project's datasets

    builder = tfds.builder(dataset.name, data_dir=data_dir)
    return list(builder.info.features["label"].names) if builder.is_prepared() else []
