"""Writes the PyTorch parity fixtures the suite checks against (needs torch).

    python -m reference.fixtures --out=tests/fixtures [--kinds=logits,steps]

logits: a randomised mu per operator form and its logits (tests/test_convert.py). steps: the
reference-initialised mu, mean8 and learned5, trained STEP_RECIPE's updates by the reference's loop
on fixed photo batches (tests/test_step_parity.py).
"""

from absl import flags

from hcnet import paths, tools
from hcnet.errors import UserError

flags.declare_key_flag("out")
KINDS = flags.DEFINE_list("kinds", ["logits", "steps"], "which fixtures to write: logits, steps")
FLAGS = flags.FLAGS


def main(argv):
    from reference import torch_model

    tools.require_flags(out=FLAGS.out)
    unknown = set(KINDS.value) - {"logits", "steps"}
    if unknown:
        raise UserError(f"--kinds={','.join(KINDS.value)}: each one of logits, steps")
    out = paths.local(
        FLAGS.out, "--out", "fixtures are written to a folder of this checkout (tests/fixtures)"
    )
    out.mkdir(parents=True, exist_ok=True)
    if "logits" in KINDS.value:
        torch_model.write_fixtures(out)
    if "steps" in KINDS.value:
        torch_model.write_step_fixtures(out)


if __name__ == "__main__":
    tools.run(main)
