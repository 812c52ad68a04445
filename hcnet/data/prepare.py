"""Builds TFDS datasets in ArrayRecord format (random access), once, before training.

    python -m hcnet.tools.prepare --dataset=imagenet2012 --manual_dir=TARS --data_dir=DIR
    python -m hcnet.tools.prepare --dataset=image_folder --manual_dir=ROOT --name=flowers --data_dir=DIR
    python -m hcnet.tools.prepare --dataset=hcnet_digits --data_dir=DIR
    python -m hcnet.tools.prepare --dataset=imagenet2012 --data_dir=DIR --convert   # a TFRecord build
    python -m hcnet.tools.prepare --dataset=cifar10 --data_dir=DIR   # any TFDS dataset (downloads)
"""
import pathlib
import re
import tarfile

from hcnet.errors import DataError

IMAGENET_TARS = {  # file -> (what its first member must look like, what it holds)
    "ILSVRC2012_img_train.tar": (r"n\d{8}\.tar", "one n########.tar per class"),
    "ILSVRC2012_img_val.tar": (r"ILSVRC2012_val_\d{8}\.JPEG", "50,000 ILSVRC2012_val_########.JPEG"),
}


def check_imagenet_tars(manual_dir) -> None:
    """Both official tars present, readable as tar archives, each holding what it should."""
    manual_dir = pathlib.Path(manual_dir)
    for fname, (pattern, holds) in IMAGENET_TARS.items():
        path = manual_dir / fname
        if not path.is_file():
            raise DataError(f"{path} is missing: imagenet2012 needs ILSVRC2012_img_train.tar and "
                            "ILSVRC2012_img_val.tar from image-net.org in --manual_dir")
        try:
            with tarfile.open(path, mode="r:") as tar:
                first = tar.next()
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"{path} is not a readable tar archive ({e}); download it again") from None
        if first is None or not re.fullmatch(pattern, pathlib.PurePath(first.name).name):
            got = first.name if first else "nothing"
            raise DataError(f"{path} starts with {got!r}, but it should hold {holds}; is it the right file?")


def prepare(dataset: str, data_dir=None, manual_dir=None, name=None) -> pathlib.Path:
    """Builds `dataset` under data_dir and returns the version directory."""
    import tensorflow_datasets as tfds

    from hcnet.data import builders
    download_config = None
    if dataset == "image_folder":
        if not manual_dir or not pathlib.Path(manual_dir).is_dir():
            raise DataError(f"--manual_dir={manual_dir} must be a folder laid out as ROOT/<split>/<class>/<image>")
        files = builders.folder_files(manual_dir)
        if not files:
            raise DataError(f"--manual_dir={manual_dir} has no images in <split>/<class>/ subfolders "
                            f"(suffixes {', '.join(builders.IMAGE_SUFFIXES)})")
        name = name or pathlib.Path(manual_dir).absolute().name
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise DataError(f"--name={name!r} must be snake_case (lower-case letters, digits, _) as TFDS requires")
        builder = builders.image_folder(name, manual_dir)(data_dir=data_dir, file_format="array_record")
    else:
        if dataset == "imagenet2012":
            check_imagenet_tars(manual_dir or "")
        if manual_dir:
            download_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
        try:
            builder = tfds.builder(dataset, data_dir=data_dir, file_format="array_record")
        except tfds.core.registered.DatasetNotFoundError:
            raise DataError(f"--dataset={dataset!r} is not a TFDS dataset; use a TFDS name, "
                            f"{builders.DIGITS} or image_folder") from None
    builder.download_and_prepare(download_config=download_config)
    return pathlib.Path(builder.data_dir)


def convert(dataset: str, data_dir=None) -> pathlib.Path:
    """Writes ArrayRecord shards beside an existing TFRecord build of `dataset`, in place: the same
    serialized examples, shard for shard; dataset_info.json then lists array_record first."""
    import json

    import tensorflow as tf
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import file_adapters

    dataset_dir = pathlib.Path(data_dir or tfds.core.constants.DATA_DIR).expanduser() / dataset
    infos = sorted(dataset_dir.glob("**/dataset_info.json"))
    if not infos:
        raise DataError(f"{dataset_dir} holds no TFDS build: --data_dir must hold the {dataset} build to convert")
    for info_path in infos:
        info = json.loads(info_path.read_text())
        formats = [info.get("fileFormat", "tfrecord"), *info.get("alternativeFileFormats", [])]
        if "array_record" in formats:
            continue
        for shard in sorted(info_path.parent.glob("*.tfrecord-*")):
            out = shard.with_name(shard.name.replace(".tfrecord-", ".array_record-"))
            records = ((None, r.numpy()) for r in tf.data.TFRecordDataset(str(shard)))
            file_adapters.ArrayRecordFileAdapter.write_examples(str(out) + ".tmp", records)
            pathlib.Path(str(out) + ".tmp").rename(out)
        info["fileFormat"], info["alternativeFileFormats"] = "array_record", formats
        info_path.write_text(json.dumps(info, indent=2))
    return dataset_dir
