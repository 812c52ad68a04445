"""Builds a TFDS dataset in ArrayRecord format (random access), once, before training.

    python -m hcnet.tools.prepare --dataset=imagenet2012 --manual_dir=TARS --data_dir=DIR
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

--data_dir may be gs://BUCKET/FOLDER: the build is made in a local staging folder \\
    (--staging_dir, or a
temporary one) and uploaded, dataset_info.json last.

imagenet2012_real reads ILSVRC2012_img_val.tar and real.json
(github.com/google-research/reassessed-imagenet) from --manual_dir; imagenet_v2/<variant> reads the
variant's .tar.gz (huggingface.co/datasets/vaishaal/ ImageNetV2, e.g.
imagenetv2-matched-frequency.tar.gz) from --manual_dir. Nothing is downloaded.
"""

from absl import flags

from hcnet import tools

flags.DEFINE_string(
    "dataset",
    None,
    "imagenet2012, image_folder, hcnet_digits, hcnet_ade20k, segmentation_folder or a TFDS name",
)
flags.DEFINE_string("data_dir", None, "where TFDS datasets live (default ~/tensorflow_datasets)")
flags.DEFINE_string(
    "manual_dir",
    None,
    "the ImageNet tars (and real.json, the ImageNet-V2 archive), or the image folder's root",
)
flags.DEFINE_string("name", None, "image_folder: the dataset name (default: the root's name)")
flags.DEFINE_bool("convert", False, "convert an existing TFRecord build to ArrayRecord in place")
flags.DEFINE_string(
    "staging_dir",
    None,
    "with a gs:// --data_dir: the local folder the build is made in "
    "before the upload (room for the whole dataset; default a temporary folder)",
)
FLAGS = flags.FLAGS


def main(argv):
    from hcnet.data import prepare

    tools.require_flags(dataset=FLAGS.dataset)
    if FLAGS.convert:
        out = prepare.to_array_record(FLAGS.dataset, FLAGS.data_dir)
    else:
        out = prepare.prepare(
            FLAGS.dataset, FLAGS.data_dir, FLAGS.manual_dir, FLAGS.name, FLAGS.staging_dir
        )
    print(f"{FLAGS.dataset}: ready in {out}")


if __name__ == "__main__":
    tools.run(main)
