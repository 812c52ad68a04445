"""Parameters, conv+linear MACs per image and XLA's FLOP estimate of an HcNet's forward pass.

python -m hcnet.tools.count --variant=T --heat_operator=mean8 [--image_size=224] [--image_width=W]
    [--depths=3,8,18,3] [--num_classes=1000] [--noxla] [--json]
# UperNet at 512x2048, as mmseg counts
python -m hcnet.tools.count --segmentation --variant=T [--num_classes=150]
# Mask R-CNN at 800x1280, as mmdet's get_flops counts
python -m hcnet.tools.count --detection --variant=T [--num_classes=80]
"""

import json

from absl import flags

from hcnet import tools

flags.DEFINE_integer(
    "image_width", None, "image width when it differs from --image_size", lower_bound=32
)
flags.DEFINE_integer("num_classes", 1000, "classes of the head (0: none)", lower_bound=0)
flags.DEFINE_bool("xla", True, "also XLA's FLOP estimate (--noxla skips the compile)")
flags.DEFINE_bool(
    "segmentation",
    False,
    "UperNet on the variant (hcnet.upernet): parameters by part and the "
    "MACs of backbone + decode head at --image_size x --image_width (default 512 x 2048)",
)
flags.DEFINE_bool(
    "detection",
    False,
    "Mask R-CNN on the variant (hcnet.detection.maskrcnn): parameters by part and the MACs of "
    "mmdet's get_flops pass at --image_size x --image_width (default 800 x 1280)",
)
for _name in ("variant", "heat_operator", "depths", "image_size", "json"):
    flags.declare_key_flag(_name)
FLAGS = flags.FLAGS


def main(argv):
    from hcnet.measure.count import classifier_counts
    from hcnet.model import model_spec

    if FLAGS.segmentation:
        return _segmentation()
    if FLAGS.detection:
        return _detection()
    height = FLAGS.image_size or 224  # each side at least 32: the flags' own bounds
    width = FLAGS.image_width or height
    spec = model_spec(
        FLAGS.variant,
        heat_operator=FLAGS.heat_operator,
        depths=tools.depths(),
        num_classes=FLAGS.num_classes,
    )
    out = classifier_counts(spec, height, width, with_xla=FLAGS.xla)
    if FLAGS.json:
        print(json.dumps(out))
        return
    print(
        f"HcNet-{FLAGS.variant} ({FLAGS.heat_operator}, depths {list(spec['depths'])}, "
        f"dims {list(spec['dims'])}) at {height}x{width}"
    )
    print(f"  params            {out['params']:,}")
    print(f"  conv+linear MACs  {out['macs']:,} ({out['macs'] / 1e9:.3f} G)")
    if "xla_flops" in out:
        print(
            f"  XLA FLOPs         {out['xla_flops']:,.0f} ({out['xla_flops'] / 1e9:.3f} G; "
            "2 per MAC plus elementwise work)"
        )


def _segmentation():
    from hcnet.measure.count import segmentation_counts

    height, width = FLAGS.image_size or 512, FLAGS.image_width or 2048
    classes = 150 if FLAGS.num_classes == 1000 else FLAGS.num_classes  # ADE20K's unless given
    out = segmentation_counts(FLAGS.variant, classes, height, width)
    if FLAGS.json:
        print(json.dumps(out))
        return
    print(f"UperNet + HcNet-{FLAGS.variant}, {classes} classes, at {height}x{width}")
    for part, name in (
        ("backbone", "backbone"),
        ("decode", "decode head"),
        ("aux", "auxiliary head"),
        ("params", "total"),
    ):
        print(f"  params {name:15s} {out[part]:,} ({out[part] / 1e6:.2f}M)")
    print(f"  MACs (backbone + decode head)  {out['macs']:,} ({out['macs'] / 1e9:.1f} G)")


def _detection():
    from hcnet.measure.count import detection_counts

    height, width = FLAGS.image_size or 800, FLAGS.image_width or 1280
    classes = 80 if FLAGS.num_classes == 1000 else FLAGS.num_classes  # COCO's unless given
    out = detection_counts(FLAGS.variant, classes, height, width)
    if FLAGS.json:
        print(json.dumps(out))
        return
    print(f"Mask R-CNN + HcNet-{FLAGS.variant}, {classes} classes, at {height}x{width}")
    for part in ("backbone", "fpn", "rpn", "box_head", "mask_head", "params"):
        name = "total" if part == "params" else part.replace("_", " ")
        print(f"  params {name:15s} {out[part]:,} ({out[part] / 1e6:.2f}M)")
    print(f"  MACs (1000 RoIs in the box head, 100 in the mask head)  {out['macs'] / 1e9:.1f} G")


if __name__ == "__main__":
    tools.run(main)
