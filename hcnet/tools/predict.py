"""Top-k classes of image files from a checkpoint or a training workdir.

    python -m hcnet.tools.predict --checkpoint=/tmp/hcnet-quickstart digit.png photo.jpg [--ema] [--top=5] [--json]

A file that cannot be read is reported in one line (`skipped FILE: reason`) and the others are still
predicted; the exit status is then 1.
"""
import json
import sys

from absl import flags

from hcnet import tools
from hcnet.errors import UserError

flags.DEFINE_integer("top", 5, "how many classes per image")
for _name in ("checkpoint", "ema", "image_size", "crop_pct", "json"):
    flags.declare_key_flag(_name)
FLAGS = flags.FLAGS


def main(argv):
    from hcnet.predict import predict
    tools.require(checkpoint=FLAGS.checkpoint)
    if len(argv) < 2:
        raise UserError("give one or more image files after the flags")
    results, failed = predict(FLAGS.checkpoint, argv[1:], ema=FLAGS.ema, top=FLAGS.top,
                              image_size=FLAGS.image_size, crop_pct=FLAGS.crop_pct)
    for f, reason in failed:
        print(f"skipped {f}: {reason}", file=sys.stderr)
    if FLAGS.json:
        print(json.dumps({"predictions": results, "skipped": dict(failed)}))
    else:
        for f, rows in results.items():
            print(f)
            for r in rows:
                print(f"  {r['probability']:7.2%}  {r['name']}  ({r['class']})")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    tools.run(main)
