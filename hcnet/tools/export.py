"""Writes a training run's weights as a parameters-only checkpoint that `hcnet.load` reads.

    python -m hcnet.tools.export --workdir=/tmp/hcnet-quickstart --out=/tmp/hcnet-mu-digits [--ema] [--step=N]
"""
from absl import flags

from hcnet import tools

for _name in ("workdir", "out", "ema", "step"):
    flags.declare_key_flag(_name)
FLAGS = flags.FLAGS


def main(argv):
    from hcnet.export import export
    tools.require(workdir=FLAGS.workdir, out=FLAGS.out)
    out = export(FLAGS.workdir, FLAGS.out, ema=FLAGS.ema, step=FLAGS.step)
    print(f"wrote {out}; load it with hcnet.load({str(out)!r})")


if __name__ == "__main__":
    tools.run(main)
