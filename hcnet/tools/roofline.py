"""FLOPs and the fewest bytes an HcNet training step moves per image, and the floor they set per
device.

    python -m hcnet.tools.roofline --variant=T --image_size=224 [--batch=128] [--act_bytes=2] \\
        [--json]

How the bytes are tallied: hcnet.measure.roofline.
"""

import json

from absl import flags

from hcnet import tools

flags.DEFINE_integer("act_bytes", 2, "bytes per activation element: 2 for bf16, 4 for fp32")
flags.register_validator("act_bytes", lambda v: v in (1, 2, 4), "must be 1, 2 or 4")
for _name in ("variant", "image_size", "batch", "json"):
    flags.declare_key_flag(_name)
FLAGS = flags.FLAGS


def main(argv):
    from hcnet.measure.roofline import estimate

    out = estimate(FLAGS.variant, FLAGS.image_size or 224, FLAGS.batch or 128, FLAGS.act_bytes)
    if FLAGS.json:
        print(json.dumps(out))
        return
    acts = out["activation_bytes"]
    print(
        f"HcNet-{out['variant']} at {out['image_size']}, batch {out['batch']}, "
        f"{out['act_bytes']}-byte activations: "
        f"{out['train_flops_per_image'] / 1e9:.2f} GFLOP and {out['bytes_per_image'] / 1e6:.0f} MB "
        "per image "
        f"(blocks {acts['blocks'] / 1e6:.0f}, stem {acts['stem'] / 1e6:.0f}, "
        f"downsampling {acts['downsample'] / 1e6:.0f}, "
        f"parameters and AdamW {out['param_bytes_per_step'] / out['batch'] / 1e6:.0f}); "
        f"{out['arithmetic_intensity']:.0f} FLOP/byte"
    )
    print(
        f"{'device':12s} {'compute floor':>14s} {'memory floor':>13s}  bound    (training images/s "
        "per device)"
    )
    for name, d in out["devices"].items():
        print(f"{name:12s} {d['compute_img_s']:14,.0f} {d['memory_img_s']:13,.0f}  {d['bound']}")


if __name__ == "__main__":
    tools.run(main)
