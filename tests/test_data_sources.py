"""Sources through TFDS: the embedded digits, image folders, ImageNet's own builder, synthetic
data."""

import images
import numpy as np
import pytest
from sklearn.datasets import load_digits

from hcnet import paths, tools
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
    matches = [
        i
        for i in range(1437, 1797)
        if np.array_equal(np.round(digits.images[i] * 255 / 16), pixels)
    ]
    assert matches and all(digits.target[i] == test.records[0]["label"] for i in matches)


def test_wrong_split_unknown_and_unprepared_datasets_say_what_to_do(tmp_path):
    sources.open_split("hcnet_digits", "test", data_dir=tmp_path)
    with pytest.raises(
        DataError, match=r"dataset.train_split='trian' is not a valid split.*train \(1437\)"
    ):
        sources.open_split("hcnet_digits", "trian", data_dir=tmp_path)
    with pytest.raises(DataError, match="neither a TFDS dataset nor one prepared"):
        sources.open_split("no_such_dataset", "train", data_dir=tmp_path)
    with pytest.raises(
        DataError,
        match=r"not prepared.*python -m hcnet.tools.prepare --dataset=imagenet2012 "
        r"--manual_dir",
    ):
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
    assert (
        np.array_equal(s.records[3]["image"], s.records[3]["image"]) and s.records[8]["label"] == 1
    )
    assert not np.array_equal(s.records[3]["image"], s.records[4]["image"])
    with pytest.raises(DataError, match="'test' is not a split of synthetic"):
        sources.open_split("synthetic", "test")


def test_image_folder_prepare_labels_and_awkward_files(tmp_path):
    bad = images.bad_inputs()
    root = images.image_folder(tmp_path / "flowers", bad=bad)
    tools.invoke(
        prepare_tool.main,
        ["--dataset=image_folder", f"--manual_dir={root}", f"--data_dir={tmp_path / 'tfds'}"],
    )
    train = sources.open_split("flowers", "train", data_dir=tmp_path / "tfds")
    val = sources.open_split("flowers", "val[:50%]", data_dir=tmp_path / "tfds")
    assert (len(train), len(val), train.num_classes) == (6 + len(bad), 3, 3)
    names = {train.records[i]["file_name"].decode(): i for i in range(len(train))}
    assert (
        train.records[names["rocket/0.jpg"]]["label"] == 2
    )  # sorted class names: cat, coffee, rocket
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
    assert builders.image_folder_files(
        images.image_folder(tmp_path / "x", splits=("a",))
    ).keys() == {"a"}


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
    (tmp_path / "swapped" / "ILSVRC2012_img_val.tar").rename(
        tmp_path / "swapped" / "ILSVRC2012_img_train.tar"
    )
    with pytest.raises(
        DataError, match="starts with 'ILSVRC2012_val_00000001.JPEG'.*is it the right file"
    ):
        prepare.check_imagenet_tars(tmp_path / "swapped")


def test_imagenet2012_through_the_real_tfds_builder(tmp_path):
    tars = images.imagenet_tars(
        tmp_path / "tars", extra_train={"n01440764_gray.JPEG": images.bad_inputs()["gray.JPEG"]}
    )
    tools.invoke(
        prepare_tool.main,
        ["--dataset=imagenet2012", f"--manual_dir={tars}", f"--data_dir={tmp_path / 'tfds'}"],
    )
    train = sources.open_split("imagenet2012", "train", data_dir=tmp_path / "tfds")
    val = sources.open_split("imagenet2012", "validation", data_dir=tmp_path / "tfds")
    assert (len(train), len(val), train.num_classes) == (7, 5, 1000)
    # labels: train from the class tar's synset; validation from TFDS's list
    # (ILSVRC2012_val_00000001: n01751748)
    by_name = {val.records[i]["file_name"].decode(): int(val.records[i]["label"]) for i in range(5)}
    assert by_name["ILSVRC2012_val_00000001.JPEG"] == 65
    assert sorted({int(train.records[i]["label"]) for i in range(7)}) == [0, 1]
    crop = transforms.train_image(train.records[0]["image"], 48, np.random.default_rng(0))
    assert crop.shape == (48, 48, 3) and crop.dtype == np.uint8


def test_a_tfrecord_build_is_refused_then_converted(tmp_path):
    import tensorflow_datasets as tfds

    tars = images.imagenet_tars(tmp_path / "tars", per_class=1, val=2)
    tfds.builder("imagenet2012", data_dir=tmp_path / "tfds").download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tars))
    )
    with pytest.raises(DataError, match="TFRecord format.*--convert"):
        sources.open_split("imagenet2012", "train", data_dir=tmp_path / "tfds")
    tools.invoke(
        prepare_tool.main,
        ["--dataset=imagenet2012", f"--data_dir={tmp_path / 'tfds'}", "--convert"],
    )
    val = sources.open_split("imagenet2012", "validation", data_dir=tmp_path / "tfds")
    assert len(val) == 2 and transforms.eval_image(val.records[1]["image"], 32).shape == (32, 32, 3)


def test_prepare_cli_stops_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"^error: .*ILSVRC2012_img_train.tar is missing[^\n]*$"):
        tools.invoke(
            prepare_tool.main,
            [
                "--dataset=imagenet2012",
                f"--manual_dir={tmp_path}",
                f"--data_dir={tmp_path / 'tfds'}",
            ],
        )
    with pytest.raises(SystemExit, match=r"^error: .*holds no TFDS build"):
        tools.invoke(
            prepare_tool.main,
            ["--dataset=imagenet2012", f"--data_dir={tmp_path / 'tfds'}", "--convert"],
        )


def miniature_checksums(monkeypatch, dataset: str, files: dict) -> None:
    """Lets TFDS's own builder take miniature files for the URLs it registers checksums for: the
    real files' sizes and sha256 are in TFDS's checksums.tsv; these are the miniatures'."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import checksums

    cls = tfds.builder_cls(dataset)
    infos = {
        **cls.url_infos,
        **{url: checksums.compute_url_info(path) for url, path in files.items()},
    }
    monkeypatch.setattr(cls, "url_infos", infos)


REAL_URL = "https://raw.githubusercontent.com/google-research/reassessed-imagenet/master/real.json"
V2_URL = "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/imagenetv2-matched-frequency.tar.gz"


def test_real_labels_are_scored_as_real_does_through_the_real_tfds_builder(tmp_path, monkeypatch):
    """imagenet2012_real from a miniature val tar and real.json; top-1 counts hits among labeled
    images only."""
    import tarfile

    import jax
    from flax import nnx

    from hcnet import checks, sharding, tasks
    from hcnet import config as config_lib
    from hcnet.data.augment import normalize
    from hcnet.evaluators import multilabel
    from hcnet.model import model_spec
    from hcnet.nets import ModelDef, predict_fn

    tars = images.imagenet_tars(tmp_path / "tars", per_class=1, val=5)
    spec = model_spec("mu", num_classes=1000, dtype="float32")
    model_def, shapes = ModelDef.from_spec(spec)
    rng = np.random.default_rng(0)  # any parameters will do: this is about the scoring
    params = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(s.dtype), shapes)
    logits = jax.jit(lambda p, x: nnx.view(model_def.bind(p), deterministic=True)(normalize(x)))
    with tarfile.open(tars / "ILSVRC2012_img_val.tar") as tar:
        crops = np.stack(
            [
                transforms.eval_image(tar.extractfile(m).read(), 32)
                for m in sorted(tar, key=lambda m: m.name)
            ]
        )
    ranked = np.argsort(-np.asarray(logits(params, crops)), axis=-1)
    # hits: the top class is in the set (sets of the top 3, so no near tie decides); misses: the
    # bottom classes
    labels = [ranked[0, :3], [*ranked[1, :3], ranked[1, -1]], ranked[2, -2:], [], ranked[4, -1:]]
    images.real_json(tars, labels)
    miniature_checksums(monkeypatch, "imagenet2012_real", {REAL_URL: tars / "real.json"})
    tools.invoke(
        prepare_tool.main,
        ["--dataset=imagenet2012_real", f"--manual_dir={tars}", f"--data_dir={tmp_path / 'tfds'}"],
    )
    real = sources.open_split(
        "imagenet2012_real", "validation", data_dir=tmp_path / "tfds", label_key="real_label"
    )
    assert (len(real), real.num_classes, real.multilabel) == (5, 1000, True)
    # through config.evals and the task, as training and eval.py build it
    c = config_lib.from_file(str(paths.REPO / "configs/smoke.py"))
    c.dataset.update(name="synthetic", num_classes=1000, eval_split="validation[:4]")
    c.evals = (
        dict(
            name="real",
            dataset="imagenet2012_real",
            data_dir=str(tmp_path / "tfds"),
            split="validation",
            label_key="real_label",
            image_size=32,
            crop_pct=0.875,
        ),
    )
    c.eval_batch_size = 4  # 5 images in 2 batches of 4 over 2 devices: 3 padding rows
    checks.validate(c, num_devices=2, training=False)
    mesh = sharding.make_mesh(devices=jax.devices()[:2])
    _, evaluator = tasks.create(c).evaluators(mesh, predict_fn(model_def))
    assert isinstance(evaluator, multilabel.Evaluator) and evaluator.metrics == (
        "top1",
        "count",
        "unlabeled",
    )
    assert evaluator(jax.device_put(params, sharding.replicated(mesh))) == {
        "top1": 0.5,
        "count": 4,
        "unlabeled": 1,
    }


def test_real_and_imagenet_v2_files_are_checked_in_one_line_before_tfds_runs(tmp_path):
    tars = images.imagenet_tars(tmp_path, per_class=1, val=3)
    with pytest.raises(
        DataError, match=r"real.json is missing: imagenet2012_real needs real.json from"
    ):
        prepare.check_real_labels(tmp_path)
    images.real_json(tmp_path, [[1], [2, 3]])
    with pytest.raises(
        DataError, match=r"has 2 label lists but ILSVRC2012_img_val.tar has 3 images"
    ):
        prepare.check_real_labels(tmp_path)
    images.real_json(tmp_path, [[1], [2, 3], [1000]])
    with pytest.raises(DataError, match=r"lists of class ids in \[0, 1000\)"):
        prepare.check_real_labels(tmp_path)
    images.real_json(tmp_path, [[1], [2, 3], []])
    prepare.check_real_labels(tars)
    with pytest.raises(
        DataError, match=r"imagenetv2-matched-frequency.tar.gz is missing: .*huggingface"
    ):
        prepare.check_imagenet_v2(tmp_path, "matched-frequency")
    images.imagenet_v2_archive(tmp_path, top="imagenetv2-top-images-format-val")
    with pytest.raises(
        DataError, match=r"should be under imagenetv2-matched-frequency-format-val/"
    ):
        prepare.check_imagenet_v2(tmp_path, "matched-frequency")
    with pytest.raises(
        DataError, match=r"the variants are matched-frequency, threshold-0.7, topimages"
    ):
        prepare.check_imagenet_v2(tmp_path, "matched")


def test_imagenet_v2_through_the_real_tfds_builder(tmp_path, monkeypatch):
    archive = images.imagenet_v2_archive(tmp_path / "v2", classes=(0, 7, 999))
    miniature_checksums(monkeypatch, "imagenet_v2", {V2_URL: archive})
    tools.invoke(
        prepare_tool.main,
        [
            "--dataset=imagenet_v2/matched-frequency",
            f"--manual_dir={archive.parent}",
            f"--data_dir={tmp_path / 'tfds'}",
        ],
    )
    v2 = sources.open_split("imagenet_v2/matched-frequency", "test", data_dir=tmp_path / "tfds")
    assert (len(v2), v2.num_classes, v2.multilabel) == (6, 1000, False)
    by_name = {v2.records[i]["file_name"].decode(): int(v2.records[i]["label"]) for i in range(6)}
    assert by_name == {f"{c}/{i}.jpeg": c for c in (0, 7, 999) for i in range(2)}
    with pytest.raises(
        DataError, match=r"label_key='real_label' is not a label feature of .*; it has label"
    ):
        sources.open_split(
            "imagenet_v2/matched-frequency",
            "test",
            data_dir=tmp_path / "tfds",
            label_key="real_label",
        )
