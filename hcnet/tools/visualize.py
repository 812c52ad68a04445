"""Figures of what the heat conduction does inside a trained HcNet, per image (see
hcnet.serve.visualize).

python -m hcnet.tools.visualize --checkpoint=/tmp/hcnet-quickstart digit.png \\
    --out=/tmp/hcnet-figures [--ema]
    [--target_class=N]
"""

import os

from absl import flags

from hcnet import tools
from hcnet.errors import UserError

flags.DEFINE_integer(
    "target_class",
    None,
    "the class Grad-CAM explains (default: the predicted one)",
    lower_bound=0,
)
for _name in ("checkpoint", "out", "ema", "image_size", "crop_pct"):
    flags.declare_key_flag(_name)
FLAGS = flags.FLAGS


def main(argv):
    from hcnet import trained
    from hcnet.serve.visualize import visualize

    tools.require_flags(checkpoint=FLAGS.checkpoint, out=FLAGS.out)
    if len(argv) < 2:
        raise UserError("give one or more image files after the flags")
    source = trained.open(FLAGS.checkpoint)
    written, failed = visualize(
        source,
        argv[1:],
        FLAGS.out,
        ema=FLAGS.ema,
        target=FLAGS.target_class,
        image_size=FLAGS.image_size,
        crop_pct=FLAGS.crop_pct,
    )
    for f, files in written.items():
        print(f"{f}: " + ", ".join(os.path.basename(v) for v in files.values()))
    tools.report_skipped(failed, len(argv) - 1, "was drawn")


if __name__ == "__main__":
    tools.run(main, files=True)
