"""Parameters, conv+linear MACs per image and XLA's FLOP estimate of an HcNet's forward pass.

    python -m hcnet.tools.count --variant=T --heat_operator=mean8 [--image_size=224] [--image_width=W]
        [--depths=3,8,18,3] [--num_classes=1000] [--noxla] [--json]
"""
import json

from absl import flags

from hcnet import tools
from hcnet.errors import UserError

flags.DEFINE_integer("image_width", None, "image width when it differs from --image_size")
flags.DEFINE_integer("num_classes", 1000, "classes of the head")
flags.DEFINE_bool("xla", True, "also XLA's FLOP estimate (--noxla skips the compile)")
for _name in ("variant", "heat_operator", "depths", "image_size", "json"):
    flags.declare_key_flag(_name)
FLAGS = flags.FLAGS


def main(argv):
    from hcnet.count import summary
    from hcnet.model import model_spec
    height = FLAGS.image_size or 224
    width = FLAGS.image_width or height
    if min(height, width) < 32:
        raise UserError(f"--image_size={height} --image_width={width}: each side must be at least 32")
    spec = model_spec(FLAGS.variant, heat_operator=FLAGS.heat_operator, depths=tools.depths(),
                      num_classes=FLAGS.num_classes)
    out = summary(spec, height, width, with_xla=FLAGS.xla)
    if FLAGS.json:
        print(json.dumps(out))
        return
    print(f"HcNet-{FLAGS.variant} ({FLAGS.heat_operator}, depths {list(spec['depths'])}, "
          f"dims {list(spec['dims'])}) at {height}x{width}")
    print(f"  params            {out['params']:,}")
    print(f"  conv+linear MACs  {out['macs']:,} ({out['macs'] / 1e9:.3f} G)")
    if "xla_flops" in out:
        print(f"  XLA FLOPs         {out['xla_flops']:,.0f} ({out['xla_flops'] / 1e9:.3f} G; "
              "2 per MAC plus elementwise work)")


if __name__ == "__main__":
    tools.run(main)
