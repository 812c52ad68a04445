"""Segmentation datasets as TFDS builders: ADE20K (the 150-class SceneParsing benchmark that mmseg,
Swin and the paper use) from its archive, people's own image + mask folders, and `hcnet_collages`,
an embedded dataset of collages cut from real photographs (the segmentation quickstart's; it builds
itself on first use).

Each example holds `image` (the encoded photo as it was), `segmentation` (a one-channel PNG of class
ids as stored) and `file_name`. What the stored ids mean travels in the dataset's metadata
(metadata.json): `classes` (the names of the ids the model predicts), `reduce_zero_label` and
`ignore_index`. ADE20K stores 0 for "other" and 1-150 for its classes; as mmseg does
(reduce_zero_label), 0 becomes the ignored value and c becomes c - 1 when the masks are read
(`label_map`).

TFDS's own `scene_parse150` is built from the 2017 full-annotation release, not from
ADEChallengeData2016, the archive mmseg and the paper's Table 4 use; hence a builder of our own:

    # DIR holds ADEChallengeData2016.zip
    python -m hcnet.tools.prepare --dataset=hcnet_ade20k --manual_dir=DIR
    python -m hcnet.tools.prepare --dataset=segmentation_folder --manual_dir=ROOT --name=NAME

A segmentation folder is ROOT/images/<split>/<name>.<jpg|png|...>, ROOT/masks/<split>/<name>.png
(one-channel class ids, the same names) and ROOT/classes.txt (one class name per line: line i names
id i); ids not listed (255 by convention) are ignored.
"""

import io
import os
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from hcnet import paths
from hcnet.errors import DataError

ADE20K = "hcnet_ade20k"
ADE_ZIP = "ADEChallengeData2016.zip"
ADE_URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
ADE_SPLITS = {"train": "training", "validation": "validation"}  # TFDS split -> the archive's folder
ADE_SIZES = {"train": 20_210, "validation": 2_000}
IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
CLASSES_FILE = "classes.txt"


def _features():
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(),
            "segmentation": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "file_name": tfds.features.Text(),
        }
    )


def label_map(
    mask: np.ndarray, reduce_zero_label: bool, num_classes: int, ignore_index: int = IGNORE_INDEX
):
    """Stored ids -> training labels: with reduce_zero_label 0 -> ignore_index and c -> c - 1; ids
    past the classes -> ignore_index. uint8 in, uint8 out."""
    m = mask.astype(np.int32)
    if reduce_zero_label:
        m = np.where(m == 0, ignore_index, m - 1)
    return np.where((m >= 0) & (m < num_classes), m, ignore_index).astype(np.uint8)


def ade_members(zip_path) -> tuple[list[str], dict]:
    """(the 150 class names, {split: [(image member, mask member), ...]}) of
    ADEChallengeData2016.zip; one line if the file is missing, unreadable or not that archive."""
    path = os.fspath(zip_path)
    if not os.path.isfile(path):
        raise DataError(f"{path} is missing: {ADE20K} needs {ADE_ZIP} ({ADE_URL}) in --manual_dir")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            info = (
                z.read("ADEChallengeData2016/objectInfo150.txt").decode()
                if "ADEChallengeData2016/objectInfo150.txt" in names
                else None
            )
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path} is not a readable zip archive ({e}); download it again") from None
    if info is None:
        raise DataError(
            f"{path} has no ADEChallengeData2016/objectInfo150.txt: it should be {ADE_ZIP} "
            f"from {ADE_URL}; is it the right file?"
        )
    rows = [line.split("\t") for line in info.strip().splitlines()[1:]]
    classes = [
        row[-1].split(",")[0].strip() for row in rows
    ]  # "building, edifice" -> "building", as mmseg
    if len(classes) != 150:
        raise DataError(
            f"{path}: objectInfo150.txt lists {len(classes)} classes, not 150; download it again"
        )
    splits = {}
    for split, folder in ADE_SPLITS.items():
        images = sorted(
            n
            for n in names
            if n.startswith(f"ADEChallengeData2016/images/{folder}/") and n.lower().endswith(".jpg")
        )
        pairs = [(n, n.replace("/images/", "/annotations/")[:-4] + ".png") for n in images]
        missing = [m for _, m in pairs if m not in names]
        if not images or missing:
            raise DataError(
                f"{path}: {'no images' if not images else f'no mask {missing[0]}'} in "
                f"ADEChallengeData2016/images/{folder}; download {ADE_ZIP} again"
            )
        splits[split] = pairs
    return classes, splits


class HcnetAde20k(tfds.core.GeneratorBasedBuilder):
    """ADE20K SceneParsing (ADEChallengeData2016): 20,210 training and 2,000 validation images, 150
    classes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "ADEChallengeData2016.zip as released; masks as stored (0 = other)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Download {ADE_URL} into --manual_dir; it is read without unpacking."
    )

    def _info(self):
        return self.dataset_info_from_configs(
            features=_features(),
            metadata=tfds.core.MetadataDict(),
            homepage="http://sceneparsing.csail.mit.edu/",
        )

    def _split_generators(self, dl_manager):
        zip_path = os.path.join(os.fspath(dl_manager.manual_dir), ADE_ZIP)
        classes, splits = ade_members(zip_path)
        self.info.metadata.update(
            classes=classes, reduce_zero_label=True, ignore_index=IGNORE_INDEX
        )
        return {split: self._generate_examples(zip_path, pairs) for split, pairs in splits.items()}

    def _generate_examples(self, zip_path, pairs):
        with zipfile.ZipFile(zip_path) as z:
            for image, mask in pairs:
                name = os.path.basename(image)
                yield (
                    name,
                    {
                        "image": z.read(image),
                        "segmentation": _mask_png(z.read(mask), mask),
                        "file_name": name,
                    },
                )


def _mask_png(data: bytes, where: str) -> np.ndarray:
    """A mask file's class ids as (H, W, 1) uint8; one line if it is not a one-channel 8-bit
    image."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in ("L", "P"):
                raise DataError(
                    f"{where}: a mask must be a one-channel 8-bit PNG of class ids, not mode "
                    f"{im.mode}"
                )
            return np.asarray(im)[..., None]
    except OSError as e:
        raise DataError(f"{where}: not a readable image ({e})") from None


def segmentation_folder_files(root) -> tuple[list[str], dict]:
    """(class names from classes.txt, {split: [(image, mask), ...]}) of a segmentation folder; one
    line when the layout is wrong or an image has no mask."""
    root = paths.path(root)
    classes_file, images = root / CLASSES_FILE, root / "images"
    if not classes_file.is_file() or not images.is_dir() or not (root / "masks").is_dir():
        raise DataError(
            f"--manual_dir={root} must hold images/<split>/, masks/<split>/ and {CLASSES_FILE} "
            "(one class name per line, line i naming mask value i)"
        )
    classes = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
    if not 1 <= len(classes) < IGNORE_INDEX:
        raise DataError(
            f"{classes_file}: {len(classes)} classes; list 1 to {IGNORE_INDEX - 1}, one per line"
        )
    splits = {}
    for split_dir in sorted(
        p for p in images.iterdir() if p.is_dir() and not p.name.startswith(".")
    ):
        pairs = []
        for f in sorted(split_dir.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                mask = root / "masks" / split_dir.name / (f.name[: -len(f.suffix)] + ".png")
                if not mask.is_file():
                    raise DataError(f"{f} has no mask: expected {mask}")
                pairs.append((f, mask))
        if pairs:
            splits[split_dir.name] = pairs
    if not splits:
        raise DataError(
            f"--manual_dir={root} has no images in images/<split>/ (suffixes "
            f"{', '.join(IMAGE_SUFFIXES)})"
        )
    return classes, splits


class _SegmentationFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images and masks of a segmentation folder, stored as they are."""

    VERSION = tfds.core.Version("1.0.0")
    ROOT: paths.Path

    def _info(self):
        return self.dataset_info_from_configs(
            features=_features(),
            metadata=tfds.core.MetadataDict(),
            description=f"Segmentation folder {self.ROOT}",
        )

    def _split_generators(self, dl_manager):
        classes, splits = segmentation_folder_files(self.ROOT)
        self.info.metadata.update(
            classes=classes, reduce_zero_label=False, ignore_index=IGNORE_INDEX
        )
        return {split: self._generate_examples(pairs) for split, pairs in splits.items()}

    def _generate_examples(self, pairs):
        for image, mask in pairs:
            rel = f"{image.parent.name}/{image.name}"
            yield (
                rel,
                {
                    "image": image.read_bytes(),
                    "segmentation": _mask_png(mask.read_bytes(), str(mask)),
                    "file_name": rel,
                },
            )


def segmentation_folder(name: str, root) -> type:
    """A builder class named `name` for the segmentation folder `root`."""
    return type(
        name,
        (_SegmentationFolder,),
        {"name": name, "ROOT": paths.path(root), "__module__": __name__},
        skip_registration=True,
    )


COLLAGES = "hcnet_collages"
COLLAGE_PHOTOS = (
    "chelsea",
    "coffee",
    "astronaut",
    "rocket",
)  # scikit-image's photographs; class i is photo i
COLLAGE_SIZES = {"train": 600, "test": 120}
COLLAGE_SHAPE = (72, 96)  # (h, w)


def collage(
    index: int, split: str, photos: list[np.ndarray], shape=COLLAGE_SHAPE
) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (h, w, 3), mask uint8 (h, w)) of collage `index`: a background cut from one
    photograph and one to three ellipses or rectangles cut from others, each at its own random place
    in its photograph; the mask names each pixel's photograph. Deterministic in (split, index)."""
    rng = np.random.default_rng([index, 0 if split == "train" else 1])
    h, w = shape

    def cut(c):
        return photos[c][
            (oy := rng.integers(0, photos[c].shape[0] - h + 1)) : oy + h,
            (ox := rng.integers(0, photos[c].shape[1] - w + 1)) : ox + w,
        ]

    background = int(rng.integers(len(photos)))
    image, mask = cut(background).copy(), np.full(shape, background, np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(rng.integers(1, 4)):
        c = int(rng.integers(len(photos)))
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.15, 0.45) * h, rng.uniform(0.15, 0.45) * w
        inside = (
            (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)
            if rng.integers(2)
            else ((np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx))
        )
        image[inside], mask[inside] = cut(c)[inside], c
    return image, mask


def collage_photos(short_side: int = 128) -> list[np.ndarray]:
    """The photographs of COLLAGE_PHOTOS, resized (bicubic) to `short_side` pixels on their shorter
    side."""
    import skimage.data
    from PIL import Image

    out = []
    for name in COLLAGE_PHOTOS:
        im = Image.fromarray(getattr(skimage.data, name)())
        f = short_side / min(im.size)
        out.append(
            np.asarray(
                im.resize((round(im.width * f), round(im.height * f)), Image.Resampling.BICUBIC)
            )
        )
    return out


class HcnetCollages(tfds.core.GeneratorBasedBuilder):
    """Collages of four real photographs (scikit-image's chelsea, coffee, astronaut, rocket) with
    masks that name each pixel's photograph: 600 training and 120 test images of 96x72; nothing
    downloads."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "600 train, 120 test collages; JPEG quality 90 images, PNG masks."}

    def _info(self):
        return self.dataset_info_from_configs(
            features=_features(), metadata=tfds.core.MetadataDict()
        )

    def _split_generators(self, dl_manager):
        self.info.metadata.update(
            classes=list(COLLAGE_PHOTOS), reduce_zero_label=False, ignore_index=IGNORE_INDEX
        )
        photos = collage_photos()
        return {
            split: self._generate_examples(split, n, photos) for split, n in COLLAGE_SIZES.items()
        }

    def _generate_examples(self, split, n, photos):
        from PIL import Image

        for i in range(n):
            image, mask = collage(i, split, photos)
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, "JPEG", quality=90)
            yield (
                i,
                {
                    "image": buf.getvalue(),
                    "segmentation": mask[..., None],
                    "file_name": f"{split}/{i:04d}.jpg",
                },
            )
