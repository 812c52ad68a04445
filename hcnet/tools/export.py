"""Writes a trained model out: a parameters-only checkpoint that `hcnet.load` reads, or a model for
serving.

    python -m hcnet.tools.export --workdir=/tmp/hcnet-quickstart --out=/tmp/hcnet-mu-digits \\
        [--ema] [--step=N]
    python -m hcnet.tools.export --format=stablehlo --checkpoint=CKPT_OR_WORKDIR --out=DIR \\
        [--image_size=N]
    python -m hcnet.tools.export --format=savedmodel --checkpoint=CKPT_OR_WORKDIR --out=DIR \\
        [--image_size=N]

stablehlo: DIR/model.stablehlo, serialized jax.export (batch size symbolic, for CPU, CUDA and TPU)
taking uint8 (batch, S, S, 3) images cropped as evaluation does and returning class probabilities;
DIR/serving.json says the size, crop and class names. Serving needs only jax:
jax.export.deserialize(open("DIR/model.stablehlo", "rb").read()).call(images).

torch: FILE.pth (torch.save) or FILE.safetensors, the reference's own state_dict: its names and
layouts, and for mean8 the mean_num buffers of a model built with img_size=--image_size (default:
the run's training size); torch.load it and load_state_dict(strict=True) into the reference's HcNet.
A segmentation network gives its backbone (said in one line); an option the reference does not
have (k_mode, ra_filter, mlp_ratio) is refused in one line.

    python -m hcnet.tools.export --format=torch --checkpoint=RUN_OR_EXPORT --out=FILE.pth \\
        [--ema] [--step=N] [--image_size=224]

savedmodel: DIR is a TensorFlow SavedModel whose serving_default signature takes uint8 (batch, H, W,
3) images of any size, resizes and crops them exactly as evaluation does, and returns
{"probabilities"}; tf.saved_model.load("DIR").signatures["serving_default"](images=images) or
TensorFlow Serving.
"""

from absl import flags

from hcnet import tools
from hcnet.errors import UserError

flags.DEFINE_enum(
    "format", "checkpoint", ["checkpoint", "stablehlo", "savedmodel", "torch"], "what to write"
)
for _name in ("workdir", "checkpoint", "out", "ema", "step", "image_size", "crop_pct"):
    flags.declare_key_flag(_name)
FLAGS = flags.FLAGS


def main(argv):
    from hcnet.serve import export

    tools.require_flags(out=FLAGS.out)
    if FLAGS.format == "checkpoint":
        tools.require_flags(workdir=FLAGS.workdir)
        out = export.export(FLAGS.workdir, FLAGS.out, ema=FLAGS.ema, step=FLAGS.step)
        print(f"wrote {out}; load it with hcnet.load({str(out)!r})")
        return
    source = FLAGS.checkpoint or FLAGS.workdir
    if not source:
        raise UserError(
            f"--format={FLAGS.format} needs --checkpoint=DIR (a checkpoint or a training workdir)"
        )
    if FLAGS.format == "torch":
        out, what = export.export_torch(
            source, FLAGS.out, ema=FLAGS.ema, step=FLAGS.step, image_size=FLAGS.image_size
        )
        print(f"wrote {out}: {what}")
        return
    write = export.export_stablehlo if FLAGS.format == "stablehlo" else export.export_savedmodel
    out = write(
        source,
        FLAGS.out,
        ema=FLAGS.ema,
        step=FLAGS.step,
        image_size=FLAGS.image_size,
        crop_pct=FLAGS.crop_pct,
    )
    print(
        f"wrote {out} ({FLAGS.format}; {out / export.SERVING_FILE} says the input and the classes)"
    )


if __name__ == "__main__":
    tools.run(main)
