"""Train and evaluate HcNet: python train.py --config=configs/hcnet_t.py --workdir=DIR.

The same command runs on one CPU, a GPU host or a TPU pod. Several processes join through JAX's
own runtime: automatically on Cloud TPU and under SLURM or Open MPI, or with the --coordinator
flags anywhere else (one command per process). Run again with the same --workdir to resume.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file(
    "config", None, "configs/*.py[:arg], then --config.field=value overrides"
)
flags.DEFINE_string("workdir", None, "checkpoints, metrics and the resolved config go here")
flags.DEFINE_string("coordinator", None, "host:port of process 0, for several processes off TPU")
flags.DEFINE_integer("num_processes", None, "with --coordinator: how many processes")
flags.DEFINE_integer("process_id", None, "with --coordinator: this process's index")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _cluster() -> bool:
    """True where JAX's runtime can find its peers alone (a multi-host TPU slice, SLURM, Open
    MPI)."""

    def value(name):
        return os.environ.get(name, "")

    return (
        "," in value("TPU_WORKER_HOSTNAMES")
        or value("SLURM_NTASKS") not in ("", "1")
        or value("OMPI_COMM_WORLD_SIZE") not in ("", "1")
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.verbosity == 0:
        logging.set_verbosity(
            logging.WARNING
        )  # Orbax logs every file it writes at INFO; -v=1 shows all
    import jax  # global toggles first, before any computation

    jax.config.update("jax_threefry_partitionable", True)
    if FLAGS.coordinator:
        jax.distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    elif _cluster():
        jax.distributed.initialize()

    from hcnet import checkpoint, paths, trainer
    from hcnet.errors import UserError

    paths.configure_gcs()
    checkpoint.configure_orbax()
    try:
        trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (UserError, FloatingPointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    from hcnet import hostenv

    hostenv.reexec_on_cpu()  # before JAX starts; see hcnet/hostenv.py
    app.run(main)
