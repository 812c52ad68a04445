"""Train and evaluate HcNet: python train.py --config=configs/hcnet_t.py --workdir=DIR.

The same command runs on one CPU, a GPU host or a TPU pod. Several processes join through JAX's
own runtime (hcnet/cluster.py): automatically on Cloud TPU and under SLURM or Open MPI, or with the
--coordinator flags anywhere else (one command per process). Run again with the same --workdir to
resume. Exit status: 0 done, 1 a problem with what was given (one line), 75 stopped early by
SIGTERM, preemption or a fault (docs/reliability.md): the same command resumes.
"""

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


def main(argv):
    if FLAGS.verbosity == 0:
        logging.set_verbosity(
            logging.WARNING
        )  # Orbax logs every file it writes at INFO; -v=1 shows all
    import jax  # global toggles first, before any computation

    jax.config.update("jax_threefry_partitionable", True)
    from hcnet import checkpoint, cluster, paths, trainer
    from hcnet.errors import FAULT_EXIT, FaultError, UserError, no_arguments

    try:
        no_arguments(argv)
        joined = cluster.join(
            coordinator=FLAGS.coordinator,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
            peer_timeout=FLAGS.config.peer_timeout,
        )
        if joined.num_processes > 1:
            print(cluster.summary(joined), flush=True)
        paths.configure_gcs()
        paths.RETRY_S = FLAGS.config.storage_retry_s
        checkpoint.configure_orbax()
        result = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (UserError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
    except FaultError as e:
        cluster.stop_now(str(e))  # at once: a failed save leaves threads that would print more
    except Exception:
        cluster.settle()  # a lost peer ends the process here, in one line
        raise
    cluster.leave()
    if result["preempted"]:
        sys.exit(FAULT_EXIT)


if __name__ == "__main__":
    from hcnet import hostenv, supervise

    hostenv.cpu_only()  # before JAX starts: no plugin errors on a CPU host
    hostenv.reexec_on_cpu()  # before JAX starts; see hcnet/hostenv.py
    supervise.run_in_child()  # several processes: see hcnet/supervise.py
    from hcnet.errors import parse_flags

    app.run(main, flags_parser=parse_flags)
