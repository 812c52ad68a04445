"""Checkpoints: parameters-only directories and a training run's checkpoints (hcnet.trained opens
either).

    DIR/model.json  DIR/params/                          `save`: convert and export write these
    WORKDIR/model.json  WORKDIR/checkpoints/<step>/{params, ema, train, data}    a training run

In a run's checkpoint, `params`, `ema` and `train` (optimizer state, step, first non-finite step)
are Orbax pytrees restored onto whatever mesh the caller gives; `data` is the grain iterator state
as JSON. Locally Orbax writes each step into a temporary directory and renames it when complete; on
gs:// (no renames there) it writes in place and marks the step complete with a last file
(commit_success.txt). Either way a save cut short by a kill is never listed; a step that lists but
does not read is skipped with a warning and the one before used. Every directory may be gs://.
"""

import contextlib
import json

import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from orbax.checkpoint import checkpoint_managers as policies

from hcnet import nets, paths
from hcnet.errors import UserError, described

SPEC_FILE, PARAMS_DIR, CHECKPOINTS = "model.json", "params", "checkpoints"
TRAIN_KEYS = (
    "opt",
    "step",
    "nonfinite_step",
)  # the "train" item: optimizer state, updates done, first bad step


def configure_orbax(min_replica_slice_bytes: int = 2**24) -> None:
    """Replicated arrays under 16 MiB are written whole by one replica (a process-wide Orbax
    setting).

    Orbax splits every replicated array across its replicas to write in parallel, and the slicing
    compiles one small program per array and replica: seconds per save for nothing on arrays this
    small. train.py calls this at the top of main().
    """
    ocp.type_handlers.register_type_handler(
        jax.Array,
        ocp.type_handlers.ArrayHandler(
            min_slice_bytes_for_replica_parallel=min_replica_slice_bytes
        ),
        override=True,
    )


def write_spec(directory, spec: dict) -> None:
    (paths.path(directory) / SPEC_FILE).write_text(
        json.dumps(nets.spec_json(spec), indent=2) + "\n"
    )


def read_spec(directory) -> dict:
    file = paths.path(directory) / SPEC_FILE
    try:
        spec = json.loads(file.read_text())
    except ValueError as e:
        spec = e
    if not isinstance(spec, dict):
        raise UserError(
            f"{file}: damaged ({spec if isinstance(spec, Exception) else type(spec).__name__}); "
            "hcnet.tools.convert, hcnet.tools.export and train.py write it as a JSON object"
        )
    return spec


def _is_run_dir(path) -> bool:
    """A training run's directory: model.json and checkpoints/."""
    return (path / CHECKPOINTS).is_dir() and (path / SPEC_FILE).is_file()


def save(directory, model: nnx.Module, spec: dict) -> paths.Path:
    """Writes spec and weights (parameters, and BatchNorm's running statistics where the network has
    them) to a new directory; refuses to overwrite one."""
    directory = paths.new_dir(directory)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / PARAMS_DIR, nets.weights_of(model))
    write_spec(directory, spec)
    return directory


def _reader(directory) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        paths.path(directory) / CHECKPOINTS, options=ocp.CheckpointManagerOptions(create=False)
    )  # read_only=True logs warnings


def choose_step(run_dir, step: int | None = None) -> int:
    """`step` if the run has a complete checkpoint there, else (None) its latest; one line if
    neither."""
    with _reader(run_dir) as manager:
        steps = sorted(manager.all_steps())
    if not steps or (step is not None and step not in steps):
        raise FileNotFoundError(
            f"{paths.path(run_dir) / CHECKPOINTS}: no checkpoint "
            f"{f'at step {step} ' if step is not None else ''}(steps there: {steps or 'none'})"
        )
    return steps[-1] if step is None else step


def restore_params(path, target: dict, *, ema: bool = False, step: int | None = None) -> dict:
    """The parameters (a pure dict) of a checkpoint directory or of a run's checkpoint (`step`,
    default the latest; `ema` its EMA weights), restored onto `target`'s shapes, dtypes and
    shardings."""
    path = paths.path(path)
    if not _is_run_dir(path):
        with ocp.StandardCheckpointer() as ckptr, _damaged(path / PARAMS_DIR):
            return ckptr.restore(path / PARAMS_DIR, target)
    item, step = "ema" if ema else "params", choose_step(path, step)
    where = path / CHECKPOINTS / str(step)
    if not (where / item).is_dir():
        raise FileNotFoundError(
            f"{where} has no {item!r} weights" + (" (the run had optim.ema_decay=0)" if ema else "")
        )
    with _reader(path) as manager, _damaged(where / item, "; give another --step"):
        return manager.restore(
            step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)})
        )[item]


@contextlib.contextmanager
def _damaged(where, advice: str = ""):
    """A checkpoint whose files do not parse or do not hold what its model.json says, in one line
    (a storage fault is not caught here: it stays a fault)."""
    try:
        yield
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{where}: a damaged checkpoint, or not this model's ({described(e)}){advice}"
        ) from None


class Checkpoints:
    """A run's CheckpointManager: async saves, the latest `keep` steps plus the best `best_metric`
    (highest, or lowest for a metric whose name ends in 'loss')."""

    def __init__(
        self, workdir, *, keep: int = 3, async_save: bool = True, best_metric: str = "eval/top1"
    ):
        self.best_metric = best_metric
        keep_last = policies.LatestN(n=keep or None)
        keep_best = policies.BestN(
            get_metric_fn=lambda m: m[best_metric],
            reverse=best_metric.endswith("loss"),
            n=1,
            keep_checkpoints_without_metrics=False,
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy([keep_last, keep_best]),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self.directory = paths.path(workdir) / CHECKPOINTS
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def _items(self, state: dict, wrap) -> dict:
        items = {"params": wrap(state["params"]), "train": wrap({k: state[k] for k in TRAIN_KEYS})}
        if "ema" in state:
            items["ema"] = wrap(state["ema"])
        return items

    def save(self, step: int, state: dict, data_state: dict, metrics: dict | None = None) -> None:
        items = {**self._items(state, ocp.args.StandardSave), "data": ocp.args.JsonSave(data_state)}
        best = (
            {self.best_metric: float(metrics[self.best_metric])}
            if metrics and metrics.get(self.best_metric) is not None
            else None
        )
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=best, force=True)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, abstract_state: dict):
        """(step, state, data state) of the newest readable checkpoint, or None; onto the given
        shardings."""
        items = {
            **self._items(abstract_state, ocp.args.StandardRestore),
            "data": ocp.args.JsonRestore(),
        }
        for step in reversed(self.steps()):
            try:
                got = self.manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:  # a damaged step: say so, fall back to the one before
                logging.warning(
                    "checkpoint %s/%d is unreadable (%s: %s); trying the previous one",
                    self.directory,
                    step,
                    type(e).__name__,
                    str(e).splitlines()[0][:200],
                )
                continue
            state = {"params": got["params"], **got["train"]}
            if "ema" in abstract_state:
                state["ema"] = got["ema"]
            return step, state, got["data"]
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
