"""Input throughput: host decode + crop per core on real JPEGs, and the device augmentation's share
of a step.

python -m hcnet.tools.data_bench [--image_size=224] [--batch=32] [--variant=T] [--seconds=10] \\
    [--nodevice] [--json]
"""

import json

from absl import flags

from hcnet import hostenv, tools

flags.DEFINE_float("seconds", 10.0, "per host measurement (above 0)", lower_bound=0.01)
flags.DEFINE_bool(
    "device",
    True,
    "also time the device augmentation against a training step (--nodevice: host only)",
)
for _name in ("image_size", "batch", "variant", "repeats", "json"):
    flags.declare_key_flag(_name)
FLAGS = flags.FLAGS


def main(argv):
    from hcnet.measure.data_bench import device_costs, host_rates
    from hcnet.model import model_spec

    if FLAGS.device:
        model_spec(FLAGS.variant)  # a wrong variant said now, not after the host's measurement
    size, batch, repeats = FLAGS.image_size or 224, FLAGS.batch or 32, FLAGS.repeats or 3
    result = host_rates(size, FLAGS.seconds)
    if FLAGS.device:
        result.update(device_costs(batch, size, FLAGS.variant, repeats))
    if FLAGS.json:
        print(json.dumps(result))
        return
    print(
        f"host, one core, {size}px from ImageNet-sized JPEGs (decode + RandomResizedCrop + flip): "
        f"{result['train_images_per_s_per_core']:.0f} images/s "
        f"({result['train_no_draft_images_per_s_per_core']:.0f} without DCT-scaled decoding); "
        f"eval resize + centre crop: {result['eval_images_per_s_per_core']:.0f} images/s"
    )
    if FLAGS.device:
        print(
            f"device ({result['device']}), batch {batch}: augmentation "
            f"{result['augment_s'] * 1e3:.1f} ms, "
            f"HcNet-{FLAGS.variant} training step {result['step_s'] * 1e3:.1f} ms: "
            f"augmentation = {100 * result['augment_share']:.1f}% of a step"
        )


if __name__ == "__main__":
    # the training step it times runs as train.py would; see hcnet/hostenv.py
    hostenv.reexec_on_cpu()
    tools.run(main)
