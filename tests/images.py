"""Small real image data for tests, made from the photographs that ship with scikit-image."""

import io
import json
import pathlib
import tarfile

import numpy as np
import skimage.data
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def photo(name: str, size=None) -> np.ndarray:
    a = getattr(skimage.data, name)()
    if size:
        a = np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BICUBIC))
    return a


def encode(a: np.ndarray, fmt: str = "JPEG", mode=None, quality: int = 90) -> bytes:
    im = Image.fromarray(a)
    im = im.convert(mode) if mode else im
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def bad_inputs() -> dict:
    """name -> (bytes, decodable?): the awkward files real datasets contain."""
    good = encode(photo("coffee"))
    return {
        "gray.JPEG": (encode(photo("camera")), True),
        "cmyk.JPEG": (encode(photo("coffee"), mode="CMYK"), True),
        "png_named.JPEG": (encode(photo("chelsea"), "PNG"), True),
        "zero.JPEG": (b"", False),
        "truncated.JPEG": (good[: len(good) // 3], False),
        "garbage.JPEG": (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, False),
    }


def _add(tar: tarfile.TarFile, name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def imagenet_tars(
    directory,
    synsets=("n01440764", "n01443537"),
    per_class: int = 3,
    val: int = 5,
    extra_train: dict | None = None,
) -> pathlib.Path:
    """Miniature ILSVRC2012_img_{train,val}.tar in the official layout (validation labels come from
    TFDS's own list, keyed by the sorted file names)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(directory / "ILSVRC2012_img_train.tar", "w") as train:
        for c, synset in enumerate(synsets):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as t:
                for i in range(per_class):
                    a = photo(PHOTOS[(c + i) % len(PHOTOS)], (160 + 16 * i, 120))
                    _add(t, f"{synset}_{i}.JPEG", encode(a[:, ::-1] if c else a))
                for name, (data, _) in (extra_train or {}).items() if c == 0 else ():
                    _add(t, f"{synset}_{name}", data)
            _add(train, f"{synset}.tar", inner.getvalue())
    with tarfile.open(directory / "ILSVRC2012_img_val.tar", "w") as tar:
        for i in range(val):
            _add(
                tar,
                f"ILSVRC2012_val_{i + 1:08d}.JPEG",
                encode(photo(PHOTOS[i % len(PHOTOS)], (140, 100))),
            )
    return directory


def image_folder(
    root,
    splits=("train", "val"),
    classes=("cat", "coffee", "rocket"),
    per_class: int = 2,
    bad: dict | None = None,
) -> pathlib.Path:
    """root/<split>/<class>/<i>.jpg from photographs; `bad` files go into the first split's first
    class."""
    root = pathlib.Path(root)
    sources = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket"}
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                a = photo(sources.get(c, "astronaut"), (96 + 8 * i, 80))
                (d / f"{i}.jpg").write_bytes(encode(a))
    for name, (data, _) in (bad or {}).items():
        (root / splits[0] / classes[0] / name).write_bytes(data)
    return root


def real_json(directory, labels) -> pathlib.Path:
    """real.json beside a miniature ILSVRC2012_img_val.tar: one list of class ids per validation
    image."""
    path = pathlib.Path(directory) / "real.json"
    path.write_text(json.dumps([list(map(int, x)) for x in labels]))
    return path


def imagenet_v2_archive(
    directory,
    classes=(0, 1, 999),
    per_class: int = 2,
    top: str = "imagenetv2-matched-frequency-format-val",
    fname: str = "imagenetv2-matched-frequency.tar.gz",
) -> pathlib.Path:
    """A miniature ImageNet-V2 archive in the published layout: TOP/<class id>/<n>.jpeg."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(directory / fname, "w:gz") as tar:
        for c in classes:
            for i in range(per_class):
                a = photo(PHOTOS[(c + i) % len(PHOTOS)], (120 + 8 * i, 96))
                _add(tar, f"{top}/{c}/{i}.jpeg", encode(a))
    return directory / fname
