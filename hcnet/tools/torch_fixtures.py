"""Writes the PyTorch parity fixtures the suite checks the converter against (needs torch).

    python -m hcnet.tools.torch_fixtures --out=tests/fixtures
"""
import pathlib

from absl import flags

from hcnet import tools

flags.declare_key_flag("out")
FLAGS = flags.FLAGS


def main(argv):
    from hcnet.torch_model import write_fixtures
    tools.require(out=FLAGS.out)
    write_fixtures(pathlib.Path(FLAGS.out))


if __name__ == "__main__":
    tools.run(main)
