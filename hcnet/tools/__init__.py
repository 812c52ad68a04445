"""The command-line tools, apart from the library: `python -m hcnet.tools.NAME --flag=value ...
[files]`.

    count  convert  export  predict  visualize  bench  roofline  prepare  data_bench  aot  aot_table

Every tool, like train.py and eval.py, takes absl flags (`--image_size=224`, `--json`/`--nojson`;
`--help` lists a tool's own). Flags that several tools share are defined here, once. A problem the
user can fix (hcnet.errors.UserError, a missing or existing file) ends the command with one line,
`error: ...`, and exit status 1.
"""

import functools
import pathlib
import sys

from absl import app, flags, logging

from hcnet.errors import UserError, no_arguments, parse_flags

FLAGS = flags.FLAGS
# the flags several tools take; a tool lists those it uses with flags.declare_key_flag
flags.DEFINE_string("variant", "T", "HcNet variant: mu, T, S or B")
flags.DEFINE_string(
    "heat_operator", "mean8", "the form of the heat operator: mean8, learned3 or learned5"
)
flags.DEFINE_list("depths", None, "four block counts replacing the variant's, e.g. 3,8,18,3")
flags.DEFINE_integer("image_size", None, "image side in pixels (at least 32)", lower_bound=32)
flags.DEFINE_float("crop_pct", None, "evaluation centre crop fraction, in (0, 1]", upper_bound=1)
flags.DEFINE_string("checkpoint", None, "a checkpoint directory or a training workdir")
flags.DEFINE_string("workdir", None, "a training run's --workdir, or the folder a tool works in")
flags.DEFINE_bool("ema", False, "a training run's EMA weights (runs with optim.ema_decay > 0)")
flags.DEFINE_integer(
    "step", None, "a training run's checkpoint step (default: the latest)", lower_bound=0
)
flags.DEFINE_string("out", None, "where the output goes")
flags.DEFINE_integer("batch", None, "global batch", lower_bound=1)
flags.DEFINE_integer("repeats", None, "timed repeats (the median is reported)", lower_bound=1)
flags.DEFINE_bool("json", False, "print one JSON object instead of text")
flags.register_validator("crop_pct", lambda v: v is None or v > 0, "must be in (0, 1]")


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


def report_skipped(failed: list[tuple[str, str]], total: int, done: str) -> None:
    """`skipped FILE: reason` for each file that could not be used, then, if any was, a last line
    and exit status 1: a command that produced nothing, or less than it was asked for, says so."""
    for f, reason in failed:
        print(f"skipped {f}: {reason}", file=sys.stderr)
    if len(failed) == total:
        sys.exit(f"error: none of the {total} files could be used (above: why); nothing {done}")
    if failed:
        sys.exit(f"error: {len(failed)} of the {total} files skipped (above: why)")


def _one_line(main, files: bool = True):
    def wrapped(argv):
        if FLAGS.verbosity == 0:  # Orbax logs every file it reads at INFO; -v=1 shows all
            logging.set_verbosity(logging.WARNING)
        try:
            _refuse_flags_not_taken(main.__module__)
            if not files:
                no_arguments(argv)
            return main(argv)
        except (UserError, FileNotFoundError, FileExistsError) as e:
            sys.exit(f"error: {e}")
        except (PermissionError, IsADirectoryError, NotADirectoryError) as e:
            sys.exit(f"error: {e.filename}: {e.strerror}; give a path one may write or read")

    return wrapped


def _refuse_flags_not_taken(module: str) -> None:
    """One line for a shared flag (defined here for every tool) that this tool does not take:
    absl would accept `predict --step=3` and ignore it."""
    taken = {f.name for f in FLAGS.get_key_flags_for_module(module)}
    given = [f.name for f in FLAGS.get_flags_for_module(__name__) if f.present]
    for name in given:
        if name not in taken:
            raise UserError(f"--{name}: {_command(module)} does not take it (see its --help)")


def run(main, *, cluster: bool = False, files: bool = False) -> None:
    """absl's app.run(main) with the tools' one-line errors, after the process-wide settings every
    command makes (Cloud Storage through gcsfs: hcnet.paths.configure_gcs). With `cluster` (a
    command a TPU slice or a GPU cluster runs on every host: eval.py, bench), XLA:CPU's malloc
    setting first (hcnet.hostenv), then the process joins its peers (hcnet.cluster, under
    hcnet.supervise) before `main`. Arguments after the flags are refused unless the command takes
    `files`."""
    from hcnet import hostenv, paths

    hostenv.cpu_only()  # before JAX starts: no plugin errors on a CPU host
    if cluster:
        from hcnet import supervise

        hostenv.reexec_on_cpu()
        supervise.run_in_child()
        main = _joined(main)
    paths.configure_gcs()
    app.run(_one_line(main, files), flags_parser=parse_flags)


def _command(module: str) -> str:
    """The command a module is, as the user typed it: hcnet.tools.NAME or eval.py."""
    if module != "__main__":
        return module
    script = pathlib.Path(sys.argv[0])
    return f"{__name__}.{script.stem}" if script.parent.name == "tools" else script.name


def _joined(main):
    @functools.wraps(main)  # its module: the flags it takes are looked up by it
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
