"""Segmentation data: ADE20K from a miniature ADEChallengeData2016.zip made here from real
photographs, and a segmentation folder, both through their TFDS builders and back out through
hcnet.data.sources."""

import dataclasses
import io
import zipfile

import numpy as np
import pytest
from images import encode, photo
from PIL import Image

from hcnet.data import prepare, seg_transforms, segmentation, sources
from hcnet.errors import DataError

ADE_NAMES = ["wall", "building, edifice", "sky"] + [f"class{i}" for i in range(4, 151)]


def scene(name: str, size=(48, 40), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A photograph and a mask of stored ids: 0 (other) in the top-left block, then bands of 1, 2,
    3."""
    image = photo(name, size)
    h, w = image.shape[:2]
    mask = np.full((h, w), 1 + seed % 3, np.uint8)
    mask[h // 2 :] = 2
    mask[:, w // 2 :] = 3
    mask[: h // 4, : w // 4] = 0
    return image, mask


def png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask, "L").save(buf, "PNG")
    return buf.getvalue()


def ade_zip(path, *, drop_mask=None, info=True) -> dict:
    """A miniature ADEChallengeData2016.zip: 3 training and 2 validation scenes; {member: (image,
    mask)}."""
    members, top = {}, "ADEChallengeData2016"
    with zipfile.ZipFile(path, "w") as z:
        if info:
            rows = "".join(f"{i}\t0.01\t1\t1\t{n}\n" for i, n in enumerate(ADE_NAMES, 1))
            z.writestr(f"{top}/objectInfo150.txt", "Idx\tRatio\tTrain\tVal\tName\n" + rows)
        for folder, names in (
            ("training", ("astronaut", "coffee", "chelsea")),
            ("validation", ("rocket", "coffee")),
        ):
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
    val = sources.open_segmentation(
        segmentation.ADE20K, "validation[1:]", data_dir=tmp_path / "tfds"
    )
    assert len(train) == 3 and len(val) == 1
    assert (
        train.classes[:3] == ("wall", "building", "sky") and len(train.classes) == 150
    )  # mmseg's names
    assert train.reduce_zero_label and train.ignore_index == 255
    by_name = {r["file_name"].decode(): r for r in (train.records[i] for i in range(len(train)))}
    assert sorted(by_name) == [f"ADE_train_0000000{i}.jpg" for i in (1, 2, 3)]
    record = by_name["ADE_train_00000002.jpg"]
    image, stored = members["training/ADE_train_00000002"]
    decoded = np.asarray(Image.open(io.BytesIO(record["image"])))
    assert (
        decoded.shape == image.shape and np.abs(decoded.astype(int) - image).mean() < 8
    )  # the JPEG as it was
    mask = train.mask(record)
    np.testing.assert_array_equal(
        mask, np.where(stored == 0, 255, stored - 1)
    )  # 0 -> ignored, c -> c - 1
    assert (mask == 255).sum() == (stored == 0).sum() > 0
    _, stored = members[f"validation/{val.records[0]['file_name'].decode()[:-4]}"]
    np.testing.assert_array_equal(val.mask(val.records[0]), np.where(stored == 0, 255, stored - 1))


def test_ade20k_archive_problems_are_one_line(tmp_path):
    with pytest.raises(
        DataError,
        match=r"ADEChallengeData2016.zip is missing: hcnet_ade20k needs .* in --manual_dir",
    ):
        prepare.prepare(segmentation.ADE20K, tmp_path / "tfds", tmp_path)
    (tmp_path / segmentation.ADE_ZIP).write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"is not a readable zip archive .*download it again"):
        prepare.prepare(segmentation.ADE20K, tmp_path / "tfds", tmp_path)
    ade_zip(tmp_path / segmentation.ADE_ZIP, info=False)
    with pytest.raises(
        DataError, match=r"has no ADEChallengeData2016/objectInfo150.txt.*is it the right file"
    ):
        prepare.prepare(segmentation.ADE20K, tmp_path / "tfds", tmp_path)
    ade_zip(tmp_path / segmentation.ADE_ZIP, drop_mask="ADE_val_00000001")
    with pytest.raises(
        DataError, match=r"no mask ADEChallengeData2016/annotations/validation/ADE_val_00000001.png"
    ):
        prepare.prepare(segmentation.ADE20K, tmp_path / "tfds", tmp_path)
    with pytest.raises(
        DataError,
        match=r"dataset 'hcnet_ade20k' is not prepared .*--manual_dir=DIR_WITH_"
        r"ADEChallengeData2016.zip",
    ):
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
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(record["image"]))), image
    )  # PNG: exact
    np.testing.assert_array_equal(train.mask(record), mask)
    (root / "masks" / "val" / "rocket.png").unlink()
    with pytest.raises(DataError, match=r"rocket.png has no mask: expected .*masks/val/rocket.png"):
        prepare.prepare("segmentation_folder", tmp_path / "tfds2", root, "streets")
    (root / "classes.txt").unlink()
    with pytest.raises(
        DataError, match=r"must hold images/<split>/, masks/<split>/ and classes.txt"
    ):
        prepare.prepare("segmentation_folder", tmp_path / "tfds2", root, "streets")


def test_label_map_ignores_zero_and_ids_past_the_classes():
    stored = np.array([[0, 1, 2], [3, 200, 255]], np.uint8)
    np.testing.assert_array_equal(
        segmentation.label_map(stored, True, 3), [[255, 0, 1], [2, 255, 255]]
    )
    np.testing.assert_array_equal(
        segmentation.label_map(stored, False, 3), [[0, 1, 2], [255, 255, 255]]
    )


# ---------------------------------------------------------------- the training pipeline (mmseg's,
# on the host)
def blocks(h=300, w=420, size=30, classes=6, seed=0):
    """A label of size x size blocks of random classes, and an image whose colour is its label's,
    exactly."""
    rng = np.random.default_rng(seed)
    label = np.kron(
        rng.integers(0, classes, (h // size, w // size)), np.ones((size, size), int)
    ).astype(np.uint8)
    palette = rng.integers(0, 256, (256, 3)).astype(np.uint8)
    return palette[label], label, palette


def interior(label, radius=3):
    """Pixels whose (2 radius + 1)^2 neighbourhood holds one class: there a resized image keeps the
    block's colour."""
    padded = np.pad(label, radius, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * radius + 1, 2 * radius + 1))
    return (windows.max((-1, -2)) == windows.min((-1, -2))) & (label != seg_transforms.IGNORE_INDEX)


def test_resize_crop_flip_and_pad_keep_image_and_label_aligned_pixel_for_pixel():
    image, label, palette = blocks(size=60)
    transform = seg_transforms.TrainTransform(crop=(128, 160), scale=(1024, 256), photometric=False)
    for seed in range(12):
        out_image, out_label, valid = transform(image, label, np.random.default_rng(seed))
        assert valid == (
            128,
            160,
        )  # the image is larger than the crop at every ratio here: no padding
        assert (
            out_image.shape == (128, 160, 3)
            and out_label.shape == (128, 160)
            and out_label.dtype == np.uint8
        )
        inside = interior(out_label)
        assert inside.mean() > 0.2
        np.testing.assert_array_equal(out_image[inside], palette[out_label[inside]])
        # the same draws with and without the flip: both halves mirrored together
        kept, mirrored = (
            dataclasses.replace(transform, flip=p)(image, label, np.random.default_rng(seed))
            for p in (0.0, 1.0)
        )
        np.testing.assert_array_equal(mirrored[1], kept[1][:, ::-1])
        np.testing.assert_array_equal(mirrored[0], kept[0][:, ::-1])
    # a small image is padded: the image with 0, the label with the ignore value
    small_image, small_label = image[:40, :50], label[:40, :50]
    out_image, out_label, valid = seg_transforms.TrainTransform(
        crop=(64, 64), scale=(50, 40), ratio_range=(1.0, 1.0), flip=0.0, photometric=False
    )(small_image, small_label, np.random.default_rng(0))
    np.testing.assert_array_equal(out_label[:40, :50], small_label)
    assert (
        (out_label[40:] == 255).all()
        and (out_label[:, 50:] == 255).all()
        and (out_image[40:] == 0).all()
    )
    assert valid == (40, 50)


def test_rescale_size_is_mmcvs_keep_ratio_rule():
    assert seg_transforms.rescale_size(683, 512, (2048, 512)) == (683, 512)
    assert seg_transforms.rescale_size(1000, 250, (2048, 512)) == (2048, 512)  # the long side binds
    assert seg_transforms.rescale_size(300, 400, (1024, 256)) == (256, 341)  # the short side binds


def test_random_crop_rejects_crops_that_one_class_fills():
    label = np.zeros((100, 200), np.uint8)  # the left half one class
    label[:, 100:] = np.arange(100)[None, :] % 2 + 1  # the right half stripes of two others
    image = np.zeros((100, 200, 3), np.uint8)

    def share(lb):
        return np.unique(lb, return_counts=True)[1].max() / lb.size

    for ratio, most in ((1.0, None), (0.75, 0)):
        full = sum(
            share(
                seg_transforms.random_crop(
                    image, label, (100, 60), np.random.default_rng(s), ratio
                )[1]
            )
            >= 0.75
            for s in range(60)
        )
        if most is None:
            assert full > 15  # plain random crops often fall in the left half
        else:
            assert (
                full == most
            )  # with cat_max_ratio a redraw (10 at most) always found a mixed crop here


def test_photometric_distortion_hsv_round_trip_and_hue_units():
    rgb = np.random.default_rng(0).integers(0, 256, (50, 3)).astype(np.float32)
    np.testing.assert_allclose(
        seg_transforms._hsv_to_rgb(seg_transforms._rgb_to_hsv(rgb)), rgb, atol=1e-3
    )
    red = seg_transforms._rgb_to_hsv(np.array([[255.0, 0, 0]]))
    red[..., 0] += 60  # OpenCV's 8-bit hue: 180 units a turn, so 60 is a third
    np.testing.assert_allclose(seg_transforms._hsv_to_rgb(red), [[0, 255, 0]], atol=1e-3)
    image = blocks(60, 60)[0]
    outs = [
        seg_transforms.photometric_distortion(image, np.random.default_rng(s)) for s in range(40)
    ]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
    changed = sum(not np.array_equal(o, image) for o in outs)
    assert (
        30 <= changed < 40
    )  # each of 4 changes with probability 1/2: all four skipped 1 time in 16
