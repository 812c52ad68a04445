"""Segmentation data: ADE20K from a miniature ADEChallengeData2016.zip made here from real photographs, and a
segmentation folder, both through their TFDS builders and back out through hcnet.data.sources."""
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from hcnet.data import prepare, segmentation, sources
from hcnet.errors import DataError
from images import encode, photo

ADE_NAMES = ["wall", "building, edifice", "sky"] + [f"class{i}" for i in range(4, 151)]


def scene(name: str, size=(48, 40), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A photograph and a mask of stored ids: 0 (other) in the top-left block, then bands of 1, 2, 3."""
    image = photo(name, size)
    h, w = image.shape[:2]
    mask = np.full((h, w), 1 + seed % 3, np.uint8)
    mask[h // 2:] = 2
    mask[:, w // 2:] = 3
    mask[: h // 4, : w // 4] = 0
    return image, mask


def png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask, "L").save(buf, "PNG")
    return buf.getvalue()


def ade_zip(path, *, drop_mask=None, info=True) -> dict:
    """A miniature ADEChallengeData2016.zip: 3 training and 2 validation scenes; {member: (image, mask)}."""
    members, top = {}, "ADEChallengeData2016"
    with zipfile.ZipFile(path, "w") as z:
        if info:
            rows = "".join(f"{i}\t0.01\t1\t1\t{n}\n" for i, n in enumerate(ADE_NAMES, 1))
            z.writestr(f"{top}/objectInfo150.txt", "Idx\tRatio\tTrain\tVal\tName\n" + rows)
        for folder, names in (("training", ("astronaut", "coffee", "chelsea")), ("validation", ("rocket", "coffee"))):
            for i, name in enumerate(names, 1):
                stem = f"ADE_{'train' if folder == 'training' else 'val'}_{i:08d}"
                image, mask = scene(name, seed=i)
                z.writestr(f"{top}/images/{folder}/{stem}.jpg", encode(image))
                if stem != drop_mask:
                    z.writestr(f"{top}/annotations/{folder}/{stem}.png", png(mask))
                members[f"{folder}/{stem}"] = (image, mask)
    return members


def test_ade20k_builds_from_its_zip_and_reads_back_with_mmsegs_reduce_zero_label(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    members = ade_zip(manual / segmentation.ADE_ZIP)
    prepare.prepare(segmentation.ADE20K, tmp_path / "tfds", manual)
    train = sources.open_segmentation(segmentation.ADE20K, "train", data_dir=tmp_path / "tfds")
    val = sources.open_segmentation(segmentation.ADE20K, "validation[1:]", data_dir=tmp_path / "tfds")
    assert len(train) == 3 and len(val) == 1
    assert train.classes[:3] == ("wall", "building", "sky") and len(train.classes) == 150  # mmseg's names
    assert train.reduce_zero_label and train.ignore_index == 255
    by_name = {r["file_name"].decode(): r for r in (train.records[i] for i in range(len(train)))}
    assert sorted(by_name) == [f"ADE_train_0000000{i}.jpg" for i in (1, 2, 3)]
    record = by_name["ADE_train_00000002.jpg"]
    image, stored = members["training/ADE_train_00000002"]
    decoded = np.asarray(Image.open(io.BytesIO(record["image"])))
    assert decoded.shape == image.shape and np.abs(decoded.astype(int) - image).mean() < 8  # the JPEG as it was
    mask = train.mask(record)
    np.testing.assert_array_equal(mask, np.where(stored == 0, 255, stored - 1))  # 0 -> ignored, c -> c - 1
    assert (mask == 255).sum() == (stored == 0).sum() > 0
    _, stored = members[f"validation/{val.records[0]['file_name'].decode()[:-4]}"]
    np.testing.assert_array_equal(val.mask(val.records[0]), np.where(stored == 0, 255, stored - 1))


def test_ade20k_archive_problems_are_one_line(tmp_path):
    with pytest.raises(DataError, match=r"ADEChallengeData2016.zip is missing: hcnet_ade20k needs .* in --manual_dir"):
        prepare.prepare(segmentation.ADE20K, tmp_path / "tfds", tmp_path)
    (tmp_path / segmentation.ADE_ZIP).write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"is not a readable zip archive .*download it again"):
        prepare.prepare(segmentation.ADE20K, tmp_path / "tfds", tmp_path)
    ade_zip(tmp_path / segmentation.ADE_ZIP, info=False)
    with pytest.raises(DataError, match=r"has no ADEChallengeData2016/objectInfo150.txt.*is it the right file"):
        prepare.prepare(segmentation.ADE20K, tmp_path / "tfds", tmp_path)
    ade_zip(tmp_path / segmentation.ADE_ZIP, drop_mask="ADE_val_00000001")
    with pytest.raises(DataError, match=r"no mask ADEChallengeData2016/annotations/validation/ADE_val_00000001.png"):
        prepare.prepare(segmentation.ADE20K, tmp_path / "tfds", tmp_path)
    with pytest.raises(DataError, match=r"dataset 'hcnet_ade20k' is not prepared .*--manual_dir=DIR_WITH_"
                                        r"ADEChallengeData2016.zip"):
        sources.open_segmentation(segmentation.ADE20K, "train", data_dir=tmp_path / "tfds")


def test_a_segmentation_folder_builds_with_its_class_list_and_ignore_value(tmp_path):
    root = tmp_path / "streets"
    for split, names in (("train", ("astronaut", "coffee")), ("val", ("rocket",))):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i, name in enumerate(names):
            image, mask = scene(name, seed=i)
            mask[0, 0] = 255  # an ignored pixel, as people mark them
            (root / "images" / split / f"{name}.png").write_bytes(encode(image, "PNG"))
            (root / "masks" / split / f"{name}.png").write_bytes(png(mask))
    (root / "classes.txt").write_text("background\nroad\ncar\nperson\n")
    prepare.prepare("segmentation_folder", tmp_path / "tfds", root, "streets")
    train = sources.open_segmentation("streets", "train", data_dir=tmp_path / "tfds")
    assert train.classes == ("background", "road", "car", "person") and not train.reduce_zero_label
    image, mask = scene("coffee", seed=1)
    mask[0, 0] = 255
    by_name = {r["file_name"].decode(): r for r in (train.records[i] for i in range(len(train)))}
    assert sorted(by_name) == ["train/astronaut.png", "train/coffee.png"]
    record = by_name["train/coffee.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(record["image"]))), image)  # PNG: exact
    np.testing.assert_array_equal(train.mask(record), mask)
    (root / "masks" / "val" / "rocket.png").unlink()
    with pytest.raises(DataError, match=r"rocket.png has no mask: expected .*masks/val/rocket.png"):
        prepare.prepare("segmentation_folder", tmp_path / "tfds2", root, "streets")
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"must hold images/<split>/, masks/<split>/ and classes.txt"):
        prepare.prepare("segmentation_folder", tmp_path / "tfds2", root, "streets")


def test_label_map_ignores_zero_and_ids_past_the_classes():
    stored = np.array([[0, 1, 2], [3, 200, 255]], np.uint8)
    np.testing.assert_array_equal(segmentation.label_map(stored, True, 3), [[255, 0, 1], [2, 255, 255]])
    np.testing.assert_array_equal(segmentation.label_map(stored, False, 3), [[0, 1, 2], [255, 255, 255]])
