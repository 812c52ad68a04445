"""A run's training step compiled ahead of time for a Cloud TPU slice (on any machine with libtpu:
requirements-tpu.txt) or a node of NVIDIA GPUs (with JAX's CUDA plugin: requirements-gpu.txt), a CPU
one included: per-chip memory against HBM, XLA's flops and bytes per image, the compile time and a
verdict (what each figure is: hcnet.measure.aot).

    pip install -r requirements-tpu.txt   # or requirements-gpu.txt for --topology=h100-8
    python -m hcnet.tools.aot --config=configs/hcnet_t.py --topology=v5e-64 \\
        [--config.optim.accum_steps=2 ...]
        [--out=F.json] [--parts=eval,augmentation] [--json] [--breakdown]

--breakdown: where the train step's bytes go, by the layer they come from (heat, groupnorm, ra_mlp,
...), layout copies and collectives, and its largest instructions (hcnet.measure.hlo).

Exits 1 with the one-line verdict when the step does not fit.
"""

import json
import os
import tempfile

from absl import flags
from ml_collections import config_flags

from hcnet import tools
from hcnet.errors import UserError
from hcnet.measure import hlo, targets

config_flags.DEFINE_config_file(
    "config", None, "configs/*.py[:arg], then --config.field=value overrides"
)
flags.DEFINE_string("topology", None, targets.topology_names())
flags.DEFINE_list(
    "parts",
    ["eval", "augmentation"],
    "what else to compile beside the train step: the eval "
    "step, the augmentation alone (empty for neither)",
)
flags.DEFINE_bool(
    "breakdown",
    False,
    "also where the train step's bytes and flops go: by layer kind and the largest instructions",
)
flags.mark_flags_as_required(["config", "topology"])
for _name in ("out", "json"):
    flags.declare_key_flag(_name)
FLAGS = flags.FLAGS


def main(argv):
    from hcnet import paths
    from hcnet.measure import aot

    parts = set(FLAGS.parts)
    if not parts <= {"eval", "augmentation"}:
        raise UserError(
            f"--parts={','.join(FLAGS.parts)}: any of eval, augmentation (the train step is "
            "always compiled)"
        )
    report = aot.compile_train_step(
        FLAGS.config,
        FLAGS.topology,
        eval_step="eval" in parts,
        augmentation="augmentation" in parts,
        breakdown=FLAGS.breakdown,
    )
    report = {"config": config_flags.get_config_filename(FLAGS["config"]), **report}
    line = aot.verdict(report)
    text = json.dumps({**report, "verdict": line}, indent=1)
    if FLAGS.out:
        paths.path(FLAGS.out).write_text(text + "\n")
    print(text if FLAGS.json else aot.describe(report, line))
    if not report["fits"]:
        raise UserError(line)


if __name__ == "__main__":
    # compile-only devices need no chip: stay off any local TPU (a training job may hold it), and
    # let several compiling processes share libtpu (by default it takes a lock file for its first
    # process alone)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    # JAX's CUDA plugin checks for a GPU when JAX starts; compiling for a described one needs none
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    # each optimised program's text as the compiler prints it, for the programs jax cannot print
    # (libtpu 0.0.52's v6e and TPU7x steps): read per instruction from there
    was = os.environ.get("XLA_FLAGS", "")
    with tempfile.TemporaryDirectory(prefix="hcnet-aot-") as dump:
        os.environ["XLA_FLAGS"] = f"{was} {hlo.dump_flags(dump)}".strip()
        os.environ[hlo.DUMP_ENV] = dump
        try:
            tools.run(main)
        finally:
            os.environ["XLA_FLAGS"] = was
            del os.environ[hlo.DUMP_ENV]
