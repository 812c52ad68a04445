"""Builds TFDS datasets in ArrayRecord format (random access), once, before training.

    python -m hcnet.tools.prepare --dataset=imagenet2012 --manual_dir=TARS --data_dir=DIR
    # val tar, real.json
    python -m hcnet.tools.prepare --dataset=imagenet2012_real --manual_dir=DIR --data_dir=DIR
    python -m hcnet.tools.prepare --dataset=imagenet_v2/matched-frequency --manual_dir=DIR \\
        --data_dir=DIR
    python -m hcnet.tools.prepare --dataset=image_folder --manual_dir=ROOT --name=flowers \\
        --data_dir=DIR
    python -m hcnet.tools.prepare --dataset=hcnet_digits --data_dir=DIR
    # ADEChallengeData2016.zip
    python -m hcnet.tools.prepare --dataset=hcnet_ade20k --manual_dir=DIR --data_dir=DIR
    python -m hcnet.tools.prepare --dataset=segmentation_folder --manual_dir=ROOT --name=streets \\
        --data_dir=DIR
    # a TFRecord build
    python -m hcnet.tools.prepare --dataset=imagenet2012 --data_dir=DIR --convert
    python -m hcnet.tools.prepare --dataset=cifar10 --data_dir=DIR   # any TFDS dataset (downloads)

DIR may be gs://bucket/folder: the ArrayRecord writer writes local files only, so the dataset is
built in a local staging folder (a temporary one, or --staging_dir with room for the whole build)
and uploaded, shards first and dataset_info.json (which marks a build complete to TFDS) last.
"""

import os
import re
import tarfile
import tempfile

from hcnet import paths
from hcnet.errors import DataError

IMAGENET_TARS = {  # file -> (what its first member must look like, what it holds)
    "ILSVRC2012_img_train.tar": (r"n\d{8}\.tar", "one n########.tar per class"),
    "ILSVRC2012_img_val.tar": (
        r"ILSVRC2012_val_\d{8}\.JPEG",
        "50,000 ILSVRC2012_val_########.JPEG",
    ),
}


# ImageNet's companions, from files downloaded once into --manual_dir; TFDS's builders take them
# from there (by the file names and checksums they register) instead of downloading
# https://github.com/google-research/reassessed-imagenet: one label list per val image
REAL_JSON = "real.json"
# TFDS config -> (archive on huggingface.co/datasets/vaishaal/ImageNetV2, its top folder)
IMAGENET_V2 = {
    "matched-frequency": (
        "imagenetv2-matched-frequency.tar.gz",
        "imagenetv2-matched-frequency-format-val",
    ),
    "threshold-0.7": ("imagenetv2-threshold0.7.tar.gz", "imagenetv2-threshold0.7-format-val"),
    "topimages": ("imagenetv2-top-images.tar.gz", "imagenetv2-top-images-format-val"),
}


def check_imagenet_tars(
    manual_dir, tars=tuple(IMAGENET_TARS), dataset: str = "imagenet2012"
) -> None:
    """The official tars present, readable as tar archives, each holding what it should."""
    manual_dir = paths.local(
        manual_dir,
        "--manual_dir",
        "the ImageNet tars must be on this machine's disk "
        "(gcloud storage cp gs://BUCKET/ILSVRC2012_img_*.tar DIR)",
    )
    for fname in tars:
        pattern, holds = IMAGENET_TARS[fname]
        path = manual_dir / fname
        if not path.is_file():
            raise DataError(
                f"{path} is missing: {dataset} needs {' and '.join(tars)} from image-net.org in "
                "--manual_dir"
            )
        try:
            with tarfile.open(os.fspath(path), mode="r:") as tar:
                first = tar.next()
        except (tarfile.TarError, OSError) as e:
            raise DataError(
                f"{path} is not a readable tar archive ({e}); download it again"
            ) from None
        if first is None or not re.fullmatch(pattern, os.path.basename(first.name)):
            got = first.name if first else "nothing"
            raise DataError(
                f"{path} starts with {got!r}, but it should hold {holds}; is it the right file?"
            )


def check_real_labels(manual_dir) -> None:
    """ILSVRC2012_img_val.tar and real.json in manual_dir, one list of classes in real.json per val
    image."""
    import json

    check_imagenet_tars(manual_dir, ("ILSVRC2012_img_val.tar",), "imagenet2012_real")
    manual_dir = paths.path(manual_dir)
    path = manual_dir / REAL_JSON
    if not path.is_file():
        raise DataError(
            f"{path} is missing: imagenet2012_real needs real.json from "
            "https://github.com/google-research/reassessed-imagenet beside ILSVRC2012_img_val.tar"
        )
    try:
        labels = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not JSON ({e}); download real.json again") from None
    if not isinstance(labels, list) or not all(
        isinstance(x, list) and all(isinstance(c, int) and 0 <= c < 1000 for c in x) for x in labels
    ):
        raise DataError(
            f"{path} should be a list of lists of class ids in [0, 1000), one per validation image"
        )
    with tarfile.open(os.fspath(manual_dir / "ILSVRC2012_img_val.tar"), mode="r:") as tar:
        images = sum(1 for m in tar if m.isfile())
    if len(labels) != images:
        raise DataError(
            f"{path} has {len(labels)} label lists but ILSVRC2012_img_val.tar has {images} images; "
            "they must be the same set (50,000 each)"
        )


def check_imagenet_v2(manual_dir, variant: str) -> None:
    """The ImageNet-V2 archive of `variant` in manual_dir, a gzipped tar of its class folders."""
    if variant not in IMAGENET_V2:
        raise DataError(
            f"--dataset=imagenet_v2/{variant}: the variants are {', '.join(IMAGENET_V2)}"
        )
    fname, top = IMAGENET_V2[variant]
    manual_dir = paths.local(
        manual_dir, "--manual_dir", "the archive must be on this machine's disk"
    )
    path = manual_dir / fname
    if not path.is_file():
        raise DataError(
            f"{path} is missing: imagenet_v2/{variant} needs {fname} from "
            f"https://huggingface.co/datasets/vaishaal/ImageNetV2 in --manual_dir"
        )
    try:
        with tarfile.open(os.fspath(path), mode="r:gz") as tar:
            first = tar.next()
    except (tarfile.TarError, OSError) as e:
        raise DataError(
            f"{path} is not a readable .tar.gz archive ({e}); download it again"
        ) from None
    if first is None or first.name.split("/")[0] != top:
        raise DataError(
            f"{path} starts with {first.name if first else 'nothing'!r}, but everything in it "
            "should "
            f"be under {top}/; is it the right file?"
        )


def prepare(
    dataset: str, data_dir=None, manual_dir=None, name=None, staging_dir=None
) -> paths.Path:
    """Builds `dataset` under data_dir (local or gs://) unless it is there already; returns the
    version directory."""
    if paths.is_remote(data_dir or ""):
        paths.check(data_dir, write=True)  # before TFDS looks there
    builder, download_config = _builder(dataset, data_dir, manual_dir, name)
    if builder.is_prepared():
        return paths.path(builder.data_dir)
    if not paths.is_remote(data_dir or ""):
        builder.download_and_prepare(download_config=download_config)
        return paths.path(builder.data_dir)
    if staging_dir:
        staging_dir = os.fspath(
            paths.local(staging_dir, "--staging_dir", "the build is made on this machine's disk")
        )
        os.makedirs(staging_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hcnet-prepare-", dir=staging_dir) as tmp:
        local = paths.path(prepare(dataset, tmp, manual_dir, name))
        out = paths.path(data_dir) / os.path.relpath(local, tmp)
        paths.copy_tree(local, out, last="dataset_info.json")
    return out


def _builder(dataset: str, data_dir, manual_dir, name):
    """(TFDS builder writing ArrayRecord into data_dir, its download config)."""
    import tensorflow_datasets as tfds

    from hcnet.data import builders, segmentation

    download_config = None
    if dataset == "segmentation_folder":
        segmentation.segmentation_folder_files(manual_dir or "")  # the layout, before TFDS is asked
        name = _snake_case(name or paths.path(manual_dir).name)
        builder = segmentation.segmentation_folder(name, manual_dir)(
            data_dir=data_dir, file_format="array_record"
        )
    elif dataset == "image_folder":
        if not manual_dir or not paths.path(manual_dir).is_dir():
            raise DataError(
                f"--manual_dir={manual_dir} must be a folder laid out as "
                "ROOT/<split>/<class>/<image>"
            )
        files = builders.image_folder_files(manual_dir)
        if not files:
            raise DataError(
                f"--manual_dir={manual_dir} has no images in <split>/<class>/ subfolders "
                f"(suffixes {', '.join(builders.IMAGE_SUFFIXES)})"
            )
        name = _snake_case(name or paths.path(manual_dir).name)
        builder = builders.image_folder(name, manual_dir)(
            data_dir=data_dir, file_format="array_record"
        )
    else:
        if dataset == segmentation.ADE20K:
            segmentation.ade_members(
                os.path.join(
                    os.fspath(
                        paths.local(
                            manual_dir or ".",
                            "--manual_dir",
                            "the archive must be on this machine's disk",
                        )
                    ),
                    segmentation.ADE_ZIP,
                )
            )
        elif dataset == "imagenet2012":
            check_imagenet_tars(manual_dir or "")
        elif dataset == "imagenet2012_real":
            check_real_labels(manual_dir or "")
        elif dataset.split("/")[0] == "imagenet_v2":
            check_imagenet_v2(manual_dir or "", dataset.partition("/")[2] or "matched-frequency")
        if manual_dir:
            download_config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
        try:
            builder = tfds.builder(dataset, data_dir=data_dir, file_format="array_record")
        except tfds.core.registered.DatasetNotFoundError:
            raise DataError(
                f"--dataset={dataset!r} is not a TFDS dataset; use a TFDS name, "
                f"{builders.DIGITS} or image_folder"
            ) from None
    return builder, download_config


def _snake_case(name: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise DataError(
            f"--name={name!r} must be snake_case (lower-case letters, digits, _) as TFDS requires"
        )
    return name


def to_array_record(dataset: str, data_dir=None) -> paths.Path:
    """Writes ArrayRecord shards beside an existing TFRecord build of `dataset`, in place: the same
    serialized examples, shard for shard; dataset_info.json then lists array_record first."""
    import json

    import tensorflow as tf
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import file_adapters

    where = paths.local(
        data_dir or tfds.core.constants.DATA_DIR,
        "--data_dir",
        "converting writes ArrayRecord files, which only a local folder takes: copy the build "
        "here (gcloud storage cp -r), convert it, and upload it (gcloud storage cp -r)",
    )
    dataset_dir = where / dataset
    infos = sorted(
        root / "dataset_info.json"
        for root, _, files in paths.walk(dataset_dir)
        if "dataset_info.json" in files
    )
    if not infos:
        raise DataError(
            f"{dataset_dir} holds no TFDS build: --data_dir must hold the {dataset} build to "
            "convert"
        )
    for info_path in infos:
        info = json.loads(info_path.read_text())
        formats = [info.get("fileFormat", "tfrecord"), *info.get("alternativeFileFormats", [])]
        if "array_record" in formats:
            continue
        for shard in sorted(info_path.parent.glob("*.tfrecord-*")):
            out = shard.with_name(shard.name.replace(".tfrecord-", ".array_record-"))
            tmp = shard.with_name(out.name + ".tmp")
            records = ((None, r.numpy()) for r in tf.data.TFRecordDataset(os.fspath(shard)))
            file_adapters.ArrayRecordFileAdapter.write_examples(os.fspath(tmp), records)
            tmp.rename(out)
        info["fileFormat"], info["alternativeFileFormats"] = "array_record", formats
        info_path.write_text(json.dumps(info, indent=2))
    return dataset_dir
