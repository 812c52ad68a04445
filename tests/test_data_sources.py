"""Sources through TFDS: the embedded digits, image folders, ImageNet's own builder, synthetic data."""
import numpy as np
import pytest
from sklearn.datasets import load_digits

import images
from hcnet import tools
from hcnet.data import builders, prepare, sources, transforms
from hcnet.errors import DataError
from hcnet.tools import prepare as prepare_tool


def test_digits_build_from_scikit_learn_on_first_use_and_slice(tmp_path):
    train = sources.open_split("hcnet_digits", "train", data_dir=tmp_path)
    test = sources.open_split("hcnet_digits", "test", data_dir=tmp_path, field="dataset.eval_split")
    head = sources.open_split("hcnet_digits", "train[:90%]", data_dir=tmp_path)
    assert (len(train), len(test), len(head), train.num_classes) == (1437, 360, 1293, 10)
    digits = load_digits()
    labels = sorted(int(train.records[i]["label"]) for i in range(len(train)))
    assert labels == sorted(digits.target[:1437].tolist())
    image = transforms.rgb(transforms.open_image(test.records[0]["image"]))
    pixels = np.asarray(image)[..., 0]
    matches = [i for i in range(1437, 1797) if np.array_equal(np.round(digits.images[i] * 255 / 16), pixels)]
    assert matches and all(digits.target[i] == test.records[0]["label"] for i in matches)


def test_wrong_split_unknown_and_unprepared_datasets_say_what_to_do(tmp_path):
    sources.open_split("hcnet_digits", "test", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"dataset.train_split='trian' is not a valid split.*train \(1437\)"):
        sources.open_split("hcnet_digits", "trian", data_dir=tmp_path)
    with pytest.raises(DataError, match="neither a TFDS dataset nor one prepared"):
        sources.open_split("no_such_dataset", "train", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"not prepared.*python -m hcnet.tools.prepare --dataset=imagenet2012 "
                                                r"--manual_dir"):
        sources.open_split("imagenet2012", "train", data_dir=tmp_path)
    with pytest.raises(DataError) as e:
        sources.open_split("hcnet_digits", "train[", data_dir=tmp_path)
    assert "\n" not in str(e.value)


def test_synthetic_is_deterministic_sliced_and_needs_no_files():
    s = sources.open_split("synthetic", "train[:1000]", image_size=32, num_classes=7)
    tail = sources.open_split("synthetic", "validation[-10:]", image_size=32, num_classes=7)
    assert len(s) == 1000 and len(tail) == 10 and s.records[3]["image"].shape == (32, 32, 3)
    wide = sources.open_split("synthetic", "train[:2]", image_size=(24, 40))
    assert wide.records[1]["image"].shape == (24, 40, 3)
    assert np.array_equal(s.records[3]["image"], s.records[3]["image"]) and s.records[8]["label"] == 1
    assert not np.array_equal(s.records[3]["image"], s.records[4]["image"])
    with pytest.raises(DataError, match="'test' is not a split of synthetic"):
        sources.open_split("synthetic", "test")


def test_image_folder_prepare_labels_and_awkward_files(tmp_path):
    bad = images.bad_inputs()
    root = images.image_folder(tmp_path / "flowers", bad=bad)
    tools.invoke(prepare_tool.main, ["--dataset=image_folder", f"--manual_dir={root}", f"--data_dir={tmp_path / 'tfds'}"])
    train = sources.open_split("flowers", "train", data_dir=tmp_path / "tfds")
    val = sources.open_split("flowers", "val[:50%]", data_dir=tmp_path / "tfds")
    assert (len(train), len(val), train.num_classes) == (6 + len(bad), 3, 3)
    names = {train.records[i]["file_name"].decode(): i for i in range(len(train))}
    assert train.records[names["rocket/0.jpg"]]["label"] == 2  # sorted class names: cat, coffee, rocket
    t = transforms.EvalTransform(32)
    for name, (_, decodable) in bad.items():
        i = names[f"cat/{name}"]
        out = t({**train.records[i], "index": i})
        assert bool(out["mask"]) == decodable, name
        assert out["image"].shape == (32, 32, 3) and (out["image"].any() == decodable), name


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no images in <split>/<class>/"):
        prepare.prepare("image_folder", tmp_path / "tfds", tmp_path / "empty")
    with pytest.raises(DataError, match="must be a folder"):
        prepare.prepare("image_folder", tmp_path / "tfds", tmp_path / "missing")
    assert builders.folder_files(images.image_folder(tmp_path / "x", splits=("a",))).keys() == {"a"}


def test_imagenet_tars_are_checked_before_tfds_runs(tmp_path):
    with pytest.raises(DataError, match="ILSVRC2012_img_train.tar is missing"):
        prepare.check_imagenet_tars(tmp_path)
    images.imagenet_tars(tmp_path)
    prepare.check_imagenet_tars(tmp_path)
    (tmp_path / "ILSVRC2012_img_val.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(DataError, match="ILSVRC2012_img_val.tar is not a readable tar"):
        prepare.check_imagenet_tars(tmp_path)
    images.imagenet_tars(tmp_path / "swapped")
    (tmp_path / "swapped" / "ILSVRC2012_img_train.tar").rename(tmp_path / "swapped" / "t")
    (tmp_path / "swapped" / "ILSVRC2012_img_val.tar").rename(tmp_path / "swapped" / "ILSVRC2012_img_train.tar")
    with pytest.raises(DataError, match="starts with 'ILSVRC2012_val_00000001.JPEG'.*is it the right file"):
        prepare.check_imagenet_tars(tmp_path / "swapped")


def test_imagenet2012_through_the_real_tfds_builder(tmp_path):
    tars = images.imagenet_tars(tmp_path / "tars", extra_train={"n01440764_gray.JPEG": images.bad_inputs()["gray.JPEG"]})
    tools.invoke(prepare_tool.main, ["--dataset=imagenet2012", f"--manual_dir={tars}", f"--data_dir={tmp_path / 'tfds'}"])
    train = sources.open_split("imagenet2012", "train", data_dir=tmp_path / "tfds")
    val = sources.open_split("imagenet2012", "validation", data_dir=tmp_path / "tfds")
    assert (len(train), len(val), train.num_classes) == (7, 5, 1000)
    # labels: train from the class tar's synset; validation from TFDS's list (ILSVRC2012_val_00000001: n01751748)
    by_name = {val.records[i]["file_name"].decode(): int(val.records[i]["label"]) for i in range(5)}
    assert by_name["ILSVRC2012_val_00000001.JPEG"] == 65
    assert sorted({int(train.records[i]["label"]) for i in range(7)}) == [0, 1]
    crop = transforms.train_image(train.records[0]["image"], 48, np.random.default_rng(0))
    assert crop.shape == (48, 48, 3) and crop.dtype == np.uint8


def test_a_tfrecord_build_is_refused_then_converted(tmp_path):
    import tensorflow_datasets as tfds
    tars = images.imagenet_tars(tmp_path / "tars", per_class=1, val=2)
    tfds.builder("imagenet2012", data_dir=tmp_path / "tfds").download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tars)))
    with pytest.raises(DataError, match="TFRecord format.*--convert"):
        sources.open_split("imagenet2012", "train", data_dir=tmp_path / "tfds")
    tools.invoke(prepare_tool.main, ["--dataset=imagenet2012", f"--data_dir={tmp_path / 'tfds'}", "--convert"])
    val = sources.open_split("imagenet2012", "validation", data_dir=tmp_path / "tfds")
    assert len(val) == 2 and transforms.eval_image(val.records[1]["image"], 32).shape == (32, 32, 3)


def test_prepare_cli_stops_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"^error: .*ILSVRC2012_img_train.tar is missing[^\n]*$"):
        tools.invoke(prepare_tool.main, ["--dataset=imagenet2012", f"--manual_dir={tmp_path}", f"--data_dir={tmp_path / 'tfds'}"])
    with pytest.raises(SystemExit, match=r"^error: .*holds no TFDS build"):
        tools.invoke(prepare_tool.main, ["--dataset=imagenet2012", f"--data_dir={tmp_path / 'tfds'}", "--convert"])
