"""The command-line tools, apart from the library: `python -m hcnet.tools.NAME --flag=value ...
[files]`.

    count  convert  export  predict  visualize  bench  roofline  prepare  data_bench  aot  aot_table

Every tool, like train.py and eval.py, takes absl flags (`--image_size=224`, `--json`/`--nojson`;
`--help` lists a tool's own). Flags that several tools share are defined here, once. A problem the
user can fix (hcnet.errors.UserError, a missing or existing file) ends the command with one line,
`error: ...`, and exit status 1.
"""

import sys

from absl import app, flags, logging

from hcnet.errors import UserError, parse_flags

FLAGS = flags.FLAGS
# the flags several tools take; a tool lists those it uses with flags.declare_key_flag
flags.DEFINE_string("variant", "T", "HcNet variant: mu, T, S or B")
flags.DEFINE_string(
    "heat_operator", "mean8", "the form of the heat operator: mean8, learned3 or learned5"
)
flags.DEFINE_list("depths", None, "four block counts replacing the variant's, e.g. 3,8,18,3")
flags.DEFINE_integer("image_size", None, "image side in pixels")
flags.DEFINE_float("crop_pct", None, "evaluation centre crop fraction")
flags.DEFINE_string("checkpoint", None, "a checkpoint directory or a training workdir")
flags.DEFINE_string("workdir", None, "a training run's --workdir, or the folder a tool works in")
flags.DEFINE_bool("ema", False, "a training run's EMA weights (runs with optim.ema_decay > 0)")
flags.DEFINE_integer("step", None, "a training run's checkpoint step (default: the latest)")
flags.DEFINE_string("out", None, "where the output goes")
flags.DEFINE_integer("batch", None, "global batch")
flags.DEFINE_integer("repeats", None, "timed repeats (the median is reported)")
flags.DEFINE_bool("json", False, "print one JSON object instead of text")


def depths() -> tuple | None:
    """--depths as integers, or None."""
    try:
        return tuple(int(d) for d in FLAGS.depths) if FLAGS.depths else None
    except ValueError:
        raise UserError(
            f"--depths={','.join(FLAGS.depths)}: four integers, e.g. 3,8,18,3"
        ) from None


def require_flags(**values) -> None:
    """One line for a required flag left unset."""
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise UserError(f"--{missing[0]} is required")


def _one_line(main):
    def wrapped(argv):
        if FLAGS.verbosity == 0:  # Orbax logs every file it reads at INFO; -v=1 shows all
            logging.set_verbosity(logging.WARNING)
        try:
            return main(argv)
        except (UserError, FileNotFoundError, FileExistsError) as e:
            sys.exit(f"error: {e}")

    return wrapped


def run(main, *, cluster: bool = False) -> None:
    """absl's app.run(main) with the tools' one-line errors, after the process-wide settings every
    command makes (Cloud Storage through gcsfs: hcnet.paths.configure_gcs). With `cluster` (a
    command a TPU slice or a GPU cluster runs on every host: eval.py, bench), XLA:CPU's malloc
    setting first (hcnet.hostenv), then the process joins its peers (hcnet.cluster, under
    hcnet.supervise) before `main`."""
    from hcnet import hostenv, paths

    hostenv.cpu_only()  # before JAX starts: no plugin errors on a CPU host
    if cluster:
        from hcnet import supervise

        hostenv.reexec_on_cpu()
        supervise.run_in_child()
        main = _joined(main)
    paths.configure_gcs()
    app.run(_one_line(main), flags_parser=parse_flags)


def _joined(main):
    def wrapped(argv):
        from hcnet import cluster

        cluster.join()
        result = main(argv)
        cluster.leave()
        return result

    return wrapped


def invoke(main, argv: list[str]):
    """Runs a tool's main in this process with `argv` (flags and files), as the command line would;
    for tests and notebooks. Flag values are restored afterwards."""
    from absl.testing import flagsaver

    with flagsaver.flagsaver():
        rest = FLAGS(["hcnet", *argv])
        return _one_line(main)(rest)
